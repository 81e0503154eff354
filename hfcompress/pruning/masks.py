"""Masks kept by a Trainer callback: re-applied after every optimizer step, saved with checkpoints, restored on resume."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ..artifacts import PRUNING_MASKS_FILE as MASKS_FILE
from ..artifacts import SPARSITY_REPORT_FILE as REPORT_FILE
from ..artifacts import CompressionSummary, set_entries, write_method_report
from ..errors import ConfigError
from .schedules import Schedule

logger = logging.getLogger("hfcompress")


def summarize_pruning(report: dict) -> CompressionSummary:
    """The compression summary of a ``sparsity_report.json`` (magnitude or structured pruning)."""
    if report.get("method") == "structured":
        settings = set_entries(report, ("importance", "heads_fraction", "ffn_fraction"))
        results = set_entries(report, ("intermediate_size", "num_parameters_before", "num_parameters"))
        sentence = "Whole attention heads and FFN neurons were removed, so the model is smaller and faster with dense kernels."
        table = {"columns": ["layer", "attention heads kept"], "rows": report.get("heads_kept") or {}}
    else:
        settings = set_entries(report, ("pattern", "scope", "target_sparsity", "schedule", "target_modules", "exclude_modules"))
        results = set_entries(report, ("global_sparsity",))
        sentence = (f"The smallest-magnitude weights were set to zero ({report.get('pattern', 'unstructured')}); "
                    "the zeros only save space or time with a sparse runtime or compression.")
        table = {"columns": ["layer", "sparsity"], "rows": report.get("layers") or {}}
    return CompressionSummary(
        method=str(report.get("method")), title="Pruning", applied="pruned", summary=sentence, details_file=REPORT_FILE,
        settings=settings, results=results, tables=[table] if table["rows"] else [], tags=["pruning", "sparse"],
    )


def write_pruning_report(directory, report: dict) -> None:
    """``sparsity_report.json`` and its compression summary."""
    write_method_report(directory, report, summarize_pruning(report))


def unwrap(model):
    """The model under DDP/accelerate wrappers (they share its parameters)."""
    while hasattr(model, "module"):
        model = model.module
    return model


@torch.no_grad()
def apply_masks(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        params[name].mul_(mask)


class MaskedPruningCallback(TrainerCallback):
    """Shared mechanics of the pruning callbacks; subclasses decide which entries the masks remove.

    Masks are boolean tensors keyed by parameter name, owned by the callback (the model keeps its plain
    parameters, so optimizer state, checkpoints and the final save are those of an unpruned model).
    ``on_train_begin`` resolves the schedule, restores the masks of the checkpoint being resumed, or
    prunes if step 0 is a pruning step; ``on_step_end`` prunes on the schedule's steps;
    ``on_optimizer_step`` re-applies the masks so pruned entries stay exactly zero; ``on_save`` writes
    the masks (and the subclass's extra state) into the checkpoint folder.
    """

    method = "base"

    def __init__(self, config):
        self.config = config
        self.schedule: Optional[Schedule] = None
        self.params: dict[str, torch.nn.Parameter] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.report: Optional[dict] = None
        self._pending_layer_log = False

    # --- subclass hooks ---------------------------------------------------------------------------

    def setup(self, model) -> dict[str, torch.nn.Parameter]:
        """Find the parameters that masks may cover (checks the model fits before any training)."""
        raise NotImplementedError

    def schedule_for(self, max_steps: int) -> Schedule:
        raise NotImplementedError

    def prune(self, step: int) -> None:
        """Recompute ``self.masks`` for the schedule's value at ``step``."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors besides the masks that a resumed run needs (saved in the checkpoint's masks file)."""
        return {}

    def restored(self, extra: dict[str, torch.Tensor]) -> None:
        """Called after the masks of a resumed checkpoint are back, with the saved extra state (empty if rebuilt from zeros)."""

    def layer_logs(self) -> dict[str, float]:
        """Per-layer values logged after a pruning step."""
        raise NotImplementedError

    def finalize(self, model) -> dict:
        """Make the pruning permanent in ``model`` at the end of training; return the measured report."""
        raise NotImplementedError

    # --- TrainerCallback events -------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = self.setup(unwrap(model))
        self.schedule = self.schedule_for(state.max_steps)
        if self.schedule.end > state.max_steps:
            logger.warning(
                "%s: the schedule ends at step %d but training stops at step %d, so the target is not reached: "
                "lower end_step (a float is a fraction of training)", type(self).__name__, self.schedule.end, state.max_steps,
            )
        if state.global_step > 0:
            self._restore(args, state)
        elif self.schedule.is_pruning_step(0):
            self._prune(0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        apply_masks(self.params, self.masks)

    def on_step_end(self, args, state, control, **kwargs):
        if self.schedule.is_pruning_step(state.global_step):
            self._prune(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            return
        tensors = {f"mask.{k}": v.to(torch.uint8).cpu().contiguous() for k, v in self.masks.items()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extra_state().items()})
        tmp = os.path.join(folder, f".{MASKS_FILE}.tmp")
        save_file(tensors, tmp, metadata={"method": self.method, "schedule": json.dumps(self.schedule.as_dict())})
        os.replace(tmp, os.path.join(folder, MASKS_FILE))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self.params:
            return
        added = {"sparsity": round(self._global_sparsity(), 6)}
        if self._pending_layer_log and getattr(self.config, "log_per_layer", True):
            added.update(self.layer_logs())
            self._pending_layer_log = False
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        apply_masks(self.params, self.masks)
        self.report = self.finalize(unwrap(model))
        self.masks, self.params = {}, {}
        target = self.report.get("target_sparsity")
        if target is not None and self.report["global_sparsity"] < target - 0.01:
            logger.warning(
                "measured sparsity %.4f is below the target %.4f: the run stopped before the schedule's end, or "
                "load_best_model_at_end loaded an earlier checkpoint", self.report["global_sparsity"], target,
            )
        if state.is_world_process_zero:
            self.write_artifacts(args.output_dir)

    # --- helpers ----------------------------------------------------------------------------------

    def write_artifacts(self, directory) -> None:
        """Write ``sparsity_report.json`` (measured at the end of training) and its summary into ``directory``."""
        if self.report is None:
            raise ConfigError(f"{type(self).__name__}: no report yet; it is written at the end of training")
        write_pruning_report(directory, self.report)

    def _prune(self, step: int) -> None:
        self.prune(step)
        apply_masks(self.params, self.masks)
        self._pending_layer_log = True

    def _global_sparsity(self) -> float:
        zeros = sum(int((p == 0).sum()) for p in self.params.values())
        return zeros / max(1, sum(p.numel() for p in self.params.values()))

    def _restore(self, args, state) -> None:
        """Masks of the checkpoint being resumed: from its masks file, or else from the zeros in its restored weights.

        The file is exact. Without it (a checkpoint copied from elsewhere), the zeros are the masks: pruned
        entries were zeroed after every optimizer step before the save, and a trained weight that is exactly
        0.0 by chance would be the next one pruned anyway.
        """
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", MASKS_FILE)
        if os.path.exists(path):
            tensors = load_file(path)
            masks = {k[len("mask."):]: v for k, v in tensors.items() if k.startswith("mask.")}
            unknown = set(masks) - set(self.params)
            if unknown:
                raise ConfigError(
                    f"{path} masks parameters this model does not have ({sorted(unknown)[:3]}): resume with the same model and targets"
                )
            device = {k: self.params[k].device for k in masks}
            self.masks = {k: v.to(device[k], dtype=torch.bool) for k, v in masks.items()}
            extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        else:
            logger.warning("no %s in checkpoint-%d: rebuilding the masks from the zeros of the restored weights", MASKS_FILE, state.global_step)
            self.masks = {k: p.detach() != 0 for k, p in self.params.items() if bool((p == 0).any())}
            extra = {}
        self.restored(extra)
        apply_masks(self.params, self.masks)
