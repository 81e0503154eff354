"""The ``prune`` stage, and the ``magnitude_pruning`` / ``structured_pruning`` callbacks for training stages.

With ``training``, the model is pruned on the schedule while it trains: distilled from ``teacher`` if
given, else fine-tuned on the labels. Without it, the model is pruned at once (no training) and saved.
Either way ``sparsity_report.json`` is written next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import Trainer, TrainingArguments

from ...distillation import DistillationTrainer, DistillationTrainingArguments
from ...errors import ConfigError
from ...pruning import (
    MagnitudePruningCallback,
    MagnitudePruningConfig,
    StructuredPruningCallback,
    StructuredPruningConfig,
    magnitude_prune,
    structured_prune,
)
from ...pruning.masks import write_pruning_report
from ...pruning.structured import check_supported as check_structured_support
from ..context import RunContext
from ..registry import StageConfig, register_callback, register_stage
from ..schema import to_dict
from .train import _load_for_task, train_and_publish, validate_training

register_callback("magnitude_pruning", MagnitudePruningConfig)(MagnitudePruningCallback)
register_callback("structured_pruning", StructuredPruningConfig)(StructuredPruningCallback)


@dataclass
class PruneStageConfig(StageConfig):
    """Prune a model: unstructured/N:M magnitude pruning or structured head/FFN slimming, with or without training."""

    model: str = field(metadata={"help": "Model to prune: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    name: str = field(default="pruned", metadata={"help": "Stage name; also its output sub-directory."})
    magnitude: Optional[MagnitudePruningConfig] = field(default=None, metadata={"help": "Magnitude pruning settings (MagnitudePruningConfig fields)."})
    structured: Optional[StructuredPruningConfig] = field(default=None, metadata={"help": "Head/FFN slimming settings (StructuredPruningConfig fields)."})
    teacher: Optional[str] = field(
        default=None, metadata={"help": "Distil from this teacher while pruning (needs training); default: train on labels.", "model_ref": True}
    )
    training: dict = field(
        default_factory=dict,
        metadata={"help": "(Distillation)TrainingArguments fields; empty: prune at once without training."},
    )
    calibration_samples: int = field(default=256, metadata={"help": "Training examples for 'taylor' importance when pruning without training."})
    trust_remote_code: bool = False

    def __post_init__(self):
        if (self.magnitude is None) == (self.structured is None):
            raise ConfigError("give exactly one of 'magnitude' (sparse weights) or 'structured' (fewer heads/neurons)")
        if self.teacher is not None and not self.training:
            raise ConfigError("'teacher' distils while pruning, which needs 'training' (e.g. num_train_epochs: 1)")
        self.training = validate_training(self.training, DistillationTrainingArguments if self.teacher else TrainingArguments)
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration_samples {self.calibration_samples} must be at least 1")

    def preflight(self, ctx: RunContext) -> None:
        for ref in self.inputs():
            ctx.planned_model(ref, self.trust_remote_code)  # a missing model fails here, before earlier stages train
        planned = ctx.planned_model(self.model, self.trust_remote_code)
        if self.structured is not None and planned is not None:
            check_structured_support(planned.config, ctx.data().task)

    @property
    def callbacks(self) -> list[dict]:
        """The pruning callback spec that ``train_and_publish`` builds."""
        if self.magnitude is not None:
            return [{"type": "magnitude_pruning", **to_dict(self.magnitude)}]
        return [{"type": "structured_pruning", **to_dict(self.structured)}]


def _calibration_batches(ctx: RunContext, tokenizer, model, count: int, batch_size: int = 16):
    data = ctx.data()
    dataset = data.tokenize(tokenizer, data.cfg.train_split)
    dataset = dataset.select(range(min(count, len(dataset))))
    collate = data.collator(tokenizer)
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        yield {k: v.to(model.device) for k, v in batch.items()}


@register_stage("prune", PruneStageConfig)
def run_prune(cfg: PruneStageConfig, ctx: RunContext):
    model, tokenizer, _ = _load_for_task(ctx, cfg.model, cfg.trust_remote_code)
    if cfg.training:
        if cfg.teacher:
            teacher = _load_for_task(ctx, cfg.teacher, cfg.trust_remote_code)[0]
            return train_and_publish(ctx, cfg, model, tokenizer, DistillationTrainer, DistillationTrainingArguments, teacher_model=teacher)[0]
        return train_and_publish(ctx, cfg, model, tokenizer, Trainer, TrainingArguments)[0]
    if cfg.magnitude is not None:
        report = magnitude_prune(model, cfg.magnitude)
    else:
        batches = _calibration_batches(ctx, tokenizer, model, cfg.calibration_samples) if cfg.structured.importance == "taylor" else None
        report = structured_prune(model, cfg.structured, calibration_batches=batches)
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_pruning_report(staging, report)
    return ctx.publish(staging, cfg.name)
