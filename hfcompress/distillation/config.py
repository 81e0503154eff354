"""Arguments of :class:`DistillationTrainer`: ``TrainingArguments`` plus the distillation fields.

Every field has help text, so ``HfArgumentParser(DistillationTrainingArguments)`` makes a CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..errors import ConfigError


def parse_layer_map(spec: str) -> list[tuple[int, int]]:
    """Parse 'student:teacher,...' (e.g. '0:1,1:3,2:5') into pairs."""
    pairs = []
    for part in spec.split(","):
        try:
            s, t = part.split(":")
            pairs.append((int(s), int(t)))
        except ValueError:
            raise ConfigError(
                f"layer_map entry '{part.strip()}' is not 'student:teacher' with integers: write e.g. '0:1,1:3,2:5'"
            ) from None
    return pairs


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i learns from teacher layer (i + 1) * k - 1, k = teacher/student ("every k-th")."""
    k = max(teacher_layers // student_layers, 1)
    return [(i, min((i + 1) * k - 1, teacher_layers - 1)) for i in range(student_layers)]


def layer_count(config) -> int:
    """Transformer layers of a model (0 for models without, such as CNNs)."""
    return getattr(config, "num_hidden_layers", 0) or 0


def resolve_layer_map(spec: Optional[str], student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """The layer pairs of ``spec`` (or the uniform map; none when a model has no layers), checked against both models' layer counts."""
    if not spec and not (student_layers and teacher_layers):
        return []
    pairs = parse_layer_map(spec) if spec else uniform_layer_map(student_layers, teacher_layers)
    for s, t in pairs:
        if not (0 <= s < student_layers and 0 <= t < teacher_layers):
            raise ConfigError(
                f"layer_map pair {s}:{t} names a layer that does not exist (student has {student_layers} layers, "
                f"teacher {teacher_layers}): use indices 0..{student_layers - 1} and 0..{teacher_layers - 1}"
            )
    return pairs


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for knowledge distillation from a frozen teacher."""

    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Teacher: Hub id or local directory (scripts load it; the trainer takes a model)."}
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the hard-label cross-entropy; the KD term gets 1 - alpha. In [0, 1]."},
    )
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T for the KL term, which is scaled by T^2. Must be > 0."}
    )
    hidden_distill_weight: float = field(
        default=0.0, metadata={"help": "Weight of the intermediate hidden-state loss between mapped layers (0 = off)."}
    )
    hidden_distill_loss: str = field(default="mse", metadata={"help": "Hidden-state loss: 'mse' or 'cosine'."})
    attention_distill_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the attention-map KL between mapped layers (0 = off). Switches both models to eager attention."},
    )
    layer_map: Optional[str] = field(
        default=None,
        metadata={"help": "Student:teacher layer pairs, e.g. '0:1,1:3,2:5'. Default: every k-th teacher layer."},
    )
    teacher_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Cache teacher logits here, keyed by teacher and dataset fingerprints, and reuse them across epochs and runs."},
    )
    teacher_cache_dtype: str = field(
        default="float32", metadata={"help": "Storage dtype of cached logits: 'float32' or 'float16' (half the disk)."}
    )
    teacher_cache_top_k: Optional[int] = field(
        default=None,
        metadata={
            "help": "Cache only the k largest teacher logits per token (None: every logit). Full logits take 4 bytes x vocab "
            "per token (196 KB for a 49,152-token vocabulary); top-k takes 4k + 4 bytes (float16 values, uint16 ids up to "
            "65,536 tokens, a float32 log-sum-exp) or 6k + 4 (int32 ids), 260 bytes at k = 64. The KD loss then runs over "
            "those k tokens plus one tail bucket."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Divergence of the KD term, GKD's generalized Jensen-Shannon: 0 = forward KL(teacher || student) "
            "(classic KD), 1 = reverse KL(student || teacher), between = JSD with that teacher weight. In [0, 1]."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy distillation (GKD, causal LMs): fraction of training batches whose continuation the student "
            "samples itself (max_new_tokens after each training text), scored by the live teacher. In [0, 1]; 0 = off."
        },
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per sequence in on-policy and seq_kd batches."})
    seq_kd: bool = field(
        default=False,
        metadata={"help": "Sequence-level KD: the teacher samples the continuations of batches the student does not generate."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha} is outside [0, 1]: it weights the hard-label loss, e.g. 0.5")
        if not 0 < self.temperature < math.inf:  # also rejects NaN
            raise ConfigError(f"temperature={self.temperature} must be > 0 and finite: typical values are 1 to 8, e.g. 2.0")
        for name in ("hidden_distill_weight", "attention_distill_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0 turns it off)")
        if self.hidden_distill_loss not in ("mse", "cosine"):
            raise ConfigError(f"hidden_distill_loss='{self.hidden_distill_loss}' must be 'mse' or 'cosine'")
        if self.teacher_cache_dtype not in ("float32", "float16"):
            raise ConfigError(f"teacher_cache_dtype='{self.teacher_cache_dtype}' must be 'float32' or 'float16'")
        if self.layer_map is not None:
            parse_layer_map(self.layer_map)
        if self.teacher_cache_top_k is not None and self.teacher_cache_top_k < 1:
            raise ConfigError(f"teacher_cache_top_k={self.teacher_cache_top_k} must be >= 1, e.g. 64 (or unset it to cache every logit)")
        for name in ("beta", "lmbda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} is outside [0, 1]")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens} must be >= 1, e.g. 64")
        if self.teacher_cache_dir and (self.lmbda > 0 or self.seq_kd):
            raise ConfigError(
                "teacher_cache_dir holds the teacher's logits on the training texts, but on-policy (lmbda > 0) and seq_kd batches "
                "are generated during training and need the live teacher: unset teacher_cache_dir, or set lmbda to 0 and seq_kd to false"
            )
        if self.teacher_cache_dir and (self.hidden_distill_weight > 0 or self.attention_distill_weight > 0):
            raise ConfigError(
                "teacher_cache_dir caches logits only, but intermediate-layer distillation needs the live teacher: "
                "unset teacher_cache_dir or set hidden/attention_distill_weight to 0"
            )
