"""What to prune: configs for unstructured magnitude pruning and for structured (head/neuron) slimming."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ..errors import ConfigError
from ..targets import PATTERNS_HELP, ModulePatterns, check_module_patterns
from .schedules import check_step_fields

# Linear (and GPT-2 Conv1D) layers inside numbered blocks: BERT/RoBERTa ``encoder.layer.N``,
# DistilBERT ``transformer.layer.N``, GPT-2 ``transformer.h.N``, T5/BART/Llama ``block.N``/``layers.N``.
# Embeddings, norms, poolers and classification heads have no block index and are left dense.
DEFAULT_TARGETS = r".*\.(layer|layers|h|block|blocks)\.\d+\..*"


def parse_pattern(pattern: str) -> Optional[tuple[int, int]]:
    """``"2:4"`` -> (2, 4); ``"unstructured"`` -> None."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ConfigError(f"pattern '{pattern}' is neither 'unstructured' nor N:M with 0 < N < M (e.g. '2:4')")
    return int(match[1]), int(match[2])


@dataclass
class MagnitudePruningConfig:
    """Unstructured (or N:M) magnitude pruning of Linear weights, on a schedule of optimizer steps.

    Step fields take an optimizer step (int) or a fraction of the run's total steps (float in [0, 1]),
    so one config fits runs of any length.
    """

    target_sparsity: float = field(
        default=0.5, metadata={"help": "Final fraction of zero weights over the targets (N:M patterns imply 1 - N/M)."}
    )
    schedule: Literal["one_shot", "cubic"] = field(
        default="cubic",
        metadata={"help": "'one_shot': prune to target_sparsity at start_step. 'cubic': Zhu & Gupta (2017) gradual schedule "
                  "s_t = s_f + (s_i - s_f)(1 - (t - start)/(end - start))^3 from start_step to end_step."},
    )
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity at start_step of the cubic schedule."})
    start_step: Union[int, float] = field(default=0, metadata={"help": "First pruning step (int) or fraction of training (float)."})
    end_step: Union[int, float] = field(
        default=0.75, metadata={"help": "Cubic schedule: step (int) or fraction of training (float) where target_sparsity is reached."}
    )
    frequency: int = field(default=10, metadata={"help": "Cubic schedule: prune every this many optimizer steps."})
    scope: Literal["global", "per_layer"] = field(
        default="global", metadata={"help": "'global': one magnitude threshold across all targets; 'per_layer': each layer pruned to the sparsity."}
    )
    pattern: str = field(default="unstructured", metadata={"help": "'unstructured' or N:M semi-structured, e.g. '2:4' (N kept in each group of M inputs)."})
    target_modules: ModulePatterns = field(
        default=DEFAULT_TARGETS,
        metadata={"help": f"Linear/Conv1D layers to prune: {PATTERNS_HELP}. Default: the layers inside numbered blocks; null: every layer."},
    )
    exclude_modules: ModulePatterns = field(
        default=None, metadata={"help": "Layers kept dense even if target_modules selects them (same syntax)."}
    )
    log_per_layer: bool = field(default=True, metadata={"help": "Log each layer's sparsity (after every pruning step) besides the global one."})

    def __post_init__(self):
        nm = parse_pattern(self.pattern)
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.schedule != "one_shot":
                raise ConfigError(f"pattern '{self.pattern}' is applied at once: use schedule: one_shot")
            self.target_sparsity = implied
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ConfigError(f"target_sparsity {self.target_sparsity} must be in [0, 1): it is the fraction of zero weights")
        if not 0.0 <= self.initial_sparsity <= self.target_sparsity:
            raise ConfigError(f"initial_sparsity {self.initial_sparsity} must be in [0, target_sparsity={self.target_sparsity}]")
        if self.frequency < 1:
            raise ConfigError(f"frequency {self.frequency} must be at least 1 optimizer step")
        check_step_fields(self)
        check_module_patterns(self.target_modules, self.exclude_modules)


@dataclass
class StructuredPruningConfig:
    """Remove attention heads and FFN intermediate neurons by importance, then slim the model physically."""

    heads_fraction: float = field(default=0.0, metadata={"help": "Fraction of attention heads to remove (over all layers)."})
    ffn_fraction: float = field(default=0.0, metadata={"help": "Fraction of FFN intermediate neurons to remove in every layer."})
    importance: Literal["weight_norm", "taylor"] = field(
        default="weight_norm",
        metadata={"help": "'weight_norm': L2 norm of each head's/neuron's weights. 'taylor': first-order Taylor "
                  "|sum(grad * weight)| over the group (Molchanov et al. 2019), accumulated over training or calibration batches."},
    )
    heads_scope: Literal["per_layer", "global"] = field(
        default="per_layer",
        metadata={"help": "'per_layer': the same number of heads removed in every layer; 'global': ranked across layers "
                  "(uneven heads, recorded in config.pruned_heads: hfcompress's load_model, and transformers 4's from_pretrained, re-apply them)."},
    )
    schedule: Literal["one_shot", "cubic"] = field(
        default="one_shot", metadata={"help": "During training: mask everything at start_step, or grow the removed fraction with the cubic schedule."}
    )
    start_step: Union[int, float] = field(default=0, metadata={"help": "First pruning step (int) or fraction of training (float)."})
    end_step: Union[int, float] = field(default=0.5, metadata={"help": "Cubic schedule: step or fraction of training where the fractions are reached."})
    frequency: int = field(default=10, metadata={"help": "Cubic schedule: prune every this many optimizer steps."})
    min_heads: int = field(default=1, metadata={"help": "Never remove the last heads of a layer below this count."})

    def __post_init__(self):
        for name in ("heads_fraction", "ffn_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} {getattr(self, name)} must be in [0, 1): it is the fraction removed")
        if self.heads_fraction == 0 and self.ffn_fraction == 0:
            raise ConfigError("structured pruning removes nothing: set heads_fraction and/or ffn_fraction above 0")
        if self.frequency < 1:
            raise ConfigError(f"frequency {self.frequency} must be at least 1 optimizer step")
        if self.min_heads < 1:
            raise ConfigError(f"min_heads {self.min_heads} must be at least 1: a layer without heads cannot be exported")
