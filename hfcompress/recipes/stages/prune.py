"""The ``prune`` stage, and the ``magnitude_pruning`` / ``structured_pruning`` / ``filter_pruning`` callbacks for training stages.

One stage, one method key: ``magnitude`` (sparse weights), ``structured`` (attention heads and FFN
neurons) or ``filters`` (CNN output channels). With ``training``, the model is pruned on the schedule
while it trains: distilled from ``teacher`` if given, else fine-tuned on the labels (for ``filters``,
that is the iterative prune / fine-tune loop: ``iterations`` pruning steps with training between).
Without it, the model is pruned at once (no training) and saved. Either way the method's report
(``sparsity_report.json``, or ``filter_pruning.json``) is written next to the model.
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
from ...pruning.filters import FilterPruningCallback, FilterPruningConfig, prune_filters, write_filter_report
from ...pruning.filters.pruner import check_supported as check_filters_support
from ...pruning.masks import write_pruning_report
from ...pruning.structured import check_supported as check_structured_support
from ..context import RunContext
from ..registry import StageConfig, register_callback, register_stage
from ..schema import to_dict
from .train import _load_for_task, train_and_publish, training_disk_bytes, validate_training

register_callback("magnitude_pruning", MagnitudePruningConfig)(MagnitudePruningCallback)
register_callback("structured_pruning", StructuredPruningConfig)(StructuredPruningCallback)
register_callback("filter_pruning", FilterPruningConfig)(FilterPruningCallback)


@dataclass
class PruneStageConfig(StageConfig):
    """Prune a model: unstructured/N:M magnitude pruning, structured head/FFN slimming or CNN filter pruning, with or without training."""

    model: str = field(metadata={"help": "Model to prune: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    teacher: Optional[str] = field(
        default=None, metadata={"help": "Distil from this teacher while pruning (needs training); default: train on labels.", "model_ref": True}
    )
    name: str = field(default="pruned", metadata={"help": "Stage name; also its output sub-directory."})
    magnitude: Optional[MagnitudePruningConfig] = field(default=None, metadata={"help": "Magnitude pruning settings (MagnitudePruningConfig fields)."})
    structured: Optional[StructuredPruningConfig] = field(default=None, metadata={"help": "Head/FFN slimming settings (StructuredPruningConfig fields)."})
    filters: Optional[FilterPruningConfig] = field(default=None, metadata={"help": "CNN filter pruning settings (FilterPruningConfig fields)."})
    training: dict = field(
        default_factory=dict,
        metadata={"help": "(Distillation)TrainingArguments fields; empty: prune at once without training."},
    )
    calibration_samples: int = field(
        default=256, metadata={"help": "Training examples for 'taylor' importance when pruning without training (filters: the first also sets the input size MACs are counted at)."}
    )
    trust_remote_code: bool = False

    def __post_init__(self):
        if sum(method is not None for method in (self.magnitude, self.structured, self.filters)) != 1:
            raise ConfigError("give exactly one of 'magnitude' (sparse weights), 'structured' (fewer heads/neurons) or 'filters' (fewer CNN channels)")
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
        if self.filters is not None and planned is not None:
            check_filters_support(planned.config, ctx.data().task)

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        size = ctx.model_bytes(self.model)
        return training_disk_bytes(ctx, self.name, self.training, size) if self.training else (size, size)

    @property
    def callbacks(self) -> list[dict]:
        """The pruning callback spec that ``train_and_publish`` builds."""
        if self.magnitude is not None:
            return [{"type": "magnitude_pruning", **to_dict(self.magnitude)}]
        if self.filters is not None:
            return [{"type": "filter_pruning", **to_dict(self.filters)}]
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
            return train_and_publish(
                ctx, cfg, model, tokenizer, DistillationTrainer, DistillationTrainingArguments,
                teacher_model=teacher, teacher_name=cfg.teacher, student_origin=f"`{cfg.model}`, pruned while it learned",
            )[0]
        return train_and_publish(ctx, cfg, model, tokenizer, Trainer, TrainingArguments)[0]
    write_report = write_pruning_report
    if cfg.magnitude is not None:
        report = magnitude_prune(model, cfg.magnitude)
    elif cfg.filters is not None:
        first = next(_calibration_batches(ctx, tokenizer, model, 1))  # MACs are counted on one image of the data's size
        inputs = {k: v[:1] for k, v in first.items() if k != "labels"}
        batches = _calibration_batches(ctx, tokenizer, model, cfg.calibration_samples) if cfg.filters.importance == "taylor" else None
        report, write_report = prune_filters(model, cfg.filters, calibration_batches=batches, inputs=inputs), write_filter_report
    else:
        batches = _calibration_batches(ctx, tokenizer, model, cfg.calibration_samples) if cfg.structured.importance == "taylor" else None
        report = structured_prune(model, cfg.structured, calibration_batches=batches)
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_report(staging, report)
    return ctx.publish(staging, cfg.name)
