"""Filter pruning inside any ``Trainer``: channels masked at given steps, removed physically when training ends.

Between pruning steps the model trains (fine-tunes, or distils with :class:`DistillationTrainer`)
with the removed channels held at zero; that is the iterative prune / fine-tune loop of Li et al.
(2017), run on the full-size model so that the optimizer's state and checkpoints keep their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...artifacts import FILTER_PRUNING_FILE, CompressionSummary, set_entries, write_method_report
from ..masks import MaskedPruningCallback
from ..schedules import resolve_step
from .config import FilterPruningConfig
from .pruner import FilterPruner


def summarize_filter_pruning(report: dict) -> CompressionSummary:
    """The compression summary of a filter pruning report: settings, parameters and MACs, channels kept per group."""
    rows = {name: f"{report['channels_after'][name]} / {before}" for name, before in report["channels_before"].items()}
    return CompressionSummary(
        method="filters", title="Filter pruning", applied="filter-pruned",
        summary="Whole convolution filters (output channels) were removed with their BatchNorm and the inputs that read them, "
                "so the model is smaller and faster with dense kernels.",
        details_file=FILTER_PRUNING_FILE,
        settings=set_entries(report, ("importance", "scope", "amount", "target_macs_reduction", "coupled", "iterations", "min_channels", "round_to")),
        results=set_entries(report, ("channels_removed_fraction", "num_parameters_before", "num_parameters", "macs_before", "macs",
                                     "macs_reduction", "input_shape")),
        tables=[{"columns": ["channel group (first conv)", "channels kept"], "rows": rows}],
        tags=["pruning", "filter-pruning"],
    )


def write_filter_report(directory, report: dict) -> None:
    """``filter_pruning.json`` and its compression summary."""
    write_method_report(directory, report, summarize_filter_pruning(report))


@dataclass(frozen=True)
class PruningSteps:
    """``count`` pruning steps spread evenly from ``start`` to ``end``; step i of n removes i/n of the target."""

    start: int
    end: int
    count: int

    @classmethod
    def from_config(cls, cfg: FilterPruningConfig, max_steps: int) -> "PruningSteps":
        start = resolve_step(cfg.start_step, max_steps)
        if cfg.importance == "taylor":
            start = max(start, 1)  # Taylor scores need the gradients of at least one optimizer step
        return cls(start, max(start, resolve_step(cfg.end_step, max_steps)), cfg.iterations)

    def steps(self) -> list[int]:
        if self.count == 1:
            return [self.start]
        return [self.start + round(i * (self.end - self.start) / (self.count - 1)) for i in range(self.count)]

    def is_pruning_step(self, step: int) -> bool:
        return step in self.steps()

    def sparsity_at(self, step: int) -> float:
        """The fraction of the target reached at ``step``."""
        return sum(s <= step for s in self.steps()) / self.count

    def as_dict(self) -> dict:
        return {"kind": "filter_steps", "start_step": self.start, "end_step": self.end, "steps": self.steps()}


class FilterPruningCallback(MaskedPruningCallback):
    """Mask the least important filters at ``iterations`` steps between ``start_step`` and ``end_step``; remove them at the end.

    Importance is re-ranked at each step: from the weights ('l1', 'l2', 'bn_scale') or from
    |sum(grad * weight)| accumulated over every optimizer step so far ('taylor'). ``on_train_end``
    cuts the channels out, so ``trainer.save_model`` writes a smaller checkpoint whose config
    records its layer sizes.
    """

    method = "filters"

    def __init__(self, config: Optional[FilterPruningConfig] = None, **kwargs):
        super().__init__(config or FilterPruningConfig(**kwargs))
        self.pruner: Optional[FilterPruner] = None

    def setup(self, model):
        self.pruner = FilterPruner(model, self.config)
        return self.pruner.maskable_parameters()

    def schedule_for(self, max_steps: int) -> PruningSteps:
        return PruningSteps.from_config(self.config, max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.config.importance == "taylor" and state.global_step + 1 <= self.schedule.end:
            self.pruner.accumulate_taylor()

    def prune(self, step: int) -> None:
        self.pruner.select(self.schedule.sparsity_at(step))
        self.masks = self.pruner.masks()

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"taylor.{name}": t for name, t in self.pruner.taylor.items()}

    def restored(self, extra):
        self.pruner.taylor = {k[len("taylor."):]: v for k, v in extra.items() if k.startswith("taylor.")}
        self.pruner.removed = self.pruner.removed_from_masks(self.masks)

    def layer_logs(self) -> dict[str, float]:
        return {f"channels_kept/{name}": c - len(self.pruner.removed[name]) for name, c in self.pruner.channels_before.items()}

    def finalize(self, model) -> dict:
        return self.pruner.remove()

    def write_artifacts(self, directory) -> None:
        if self.report is None:
            super().write_artifacts(directory)  # its error: no report before training ends
        write_filter_report(directory, self.report)
