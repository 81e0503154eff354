"""Unstructured and N:M magnitude pruning of Linear weights, as a Trainer callback or in one shot."""

from __future__ import annotations

from typing import Optional

import torch
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError
from ..targets import ModulePatterns, select_modules
from .config import MagnitudePruningConfig, parse_pattern
from .masks import MaskedPruningCallback, apply_masks, unwrap
from .schedules import Schedule


def prunable_weights(model, target_modules: ModulePatterns, exclude_modules: ModulePatterns = None) -> dict[str, torch.nn.Parameter]:
    """Weights of the Linear/Conv1D modules the patterns select (see :mod:`hfcompress.targets`), by parameter name."""
    return {f"{name}.weight": module.weight for name, module in select_modules(model, target_modules, exclude_modules).items()}


def _inputs_last(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """The weight with the input dimension last: Linear is [out, in], GPT-2's Conv1D is [in, out]."""
    return weight.t() if conv1d else weight


def nm_mask(weight: torch.Tensor, n: int, m: int, conv1d: bool = False) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights in every group of ``m`` consecutive inputs."""
    w = _inputs_last(weight, conv1d)
    if w.shape[-1] % m:
        raise ConfigError(f"a weight with {w.shape[-1]} inputs cannot be split into groups of {m}: exclude that layer or use another M")
    groups = w.detach().abs().reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1).indices, True)
    return _inputs_last(keep.reshape(w.shape), conv1d)


def _smallest_mask(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask that drops exactly the ``count`` smallest entries (ties broken by position)."""
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if count > 0:
        keep[magnitudes.topk(count, largest=False, sorted=False).indices] = False
    return keep


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global",
                    pattern: str = "unstructured", conv1d: frozenset = frozenset()) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the smallest-magnitude fraction ``sparsity`` of the weights.

    ``scope="global"`` ranks all weights together (one threshold), ``"per_layer"`` each weight on its own.
    The count removed is ``round(sparsity * numel)``, so the sparsity is exact up to rounding.
    """
    nm = parse_pattern(pattern)
    if nm is not None:
        return {k: nm_mask(w, *nm, conv1d=k in conv1d) for k, w in weights.items()}
    if scope == "per_layer":
        return {
            k: _smallest_mask(w.detach().abs().flatten(), round(sparsity * w.numel())).reshape(w.shape)
            for k, w in weights.items()
        }
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    keep = _smallest_mask(flat, round(sparsity * flat.numel())).split([w.numel() for w in weights.values()])
    return {k: m.reshape(w.shape) for (k, w), m in zip(weights.items(), keep)}


def sparsity_of(weights: dict[str, torch.Tensor]) -> dict:
    """Measured fraction of exact zeros: ``{"global_sparsity", "layers": {module: sparsity}}``."""
    zeros = {k: int((w == 0).sum()) for k, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return {
        "global_sparsity": round(sum(zeros.values()) / max(1, total), 6),
        "layers": {k.removesuffix(".weight"): round(zeros[k] / w.numel(), 6) for k, w in weights.items()},
    }


def _conv1d_names(model, names) -> frozenset:
    modules = dict(model.named_modules())
    return frozenset(n for n in names if isinstance(modules[n.removesuffix(".weight")], Conv1D))


def _report(cfg: MagnitudePruningConfig, weights, schedule: Optional[dict]) -> dict:
    return {
        "method": "magnitude",
        "pattern": cfg.pattern,
        "scope": cfg.scope,
        "target_sparsity": round(cfg.target_sparsity, 6),
        **sparsity_of(weights),
        "schedule": schedule,
        "target_modules": cfg.target_modules,
        "exclude_modules": cfg.exclude_modules,
    }


@torch.no_grad()
def magnitude_prune(model, config: Optional[MagnitudePruningConfig] = None, **kwargs) -> dict:
    """Prune ``model`` in place, at once, to ``config.target_sparsity``; returns the measured sparsity report."""
    cfg = config or MagnitudePruningConfig(schedule="one_shot", **kwargs)
    model = unwrap(model)
    weights = prunable_weights(model, cfg.target_modules, cfg.exclude_modules)
    masks = magnitude_masks(weights, cfg.target_sparsity, cfg.scope, cfg.pattern, _conv1d_names(model, weights))
    apply_masks(weights, masks)
    return _report(cfg, weights, {"kind": "one_shot", "target_sparsity": cfg.target_sparsity})


class MagnitudePruningCallback(MaskedPruningCallback):
    """Magnitude pruning inside any ``Trainer`` (``DistillationTrainer`` included).

    >>> trainer = DistillationTrainer(..., callbacks=[MagnitudePruningCallback(target_sparsity=0.5, end_step=0.7)])

    One-shot or cubic (Zhu & Gupta 2017) schedule over optimizer steps; global or per-layer threshold;
    unstructured or N:M. Pruned weights are zeroed again after every optimizer step, masks are saved in
    each checkpoint and restored by ``resume_from_checkpoint``, and at the end of training the zeros are
    simply the weights: ``save_model`` writes a plain checkpoint and ``sparsity_report.json`` goes to
    ``args.output_dir`` (``write_artifacts(dir)`` puts it next to the saved model).
    """

    method = "magnitude"

    def __init__(self, config: Optional[MagnitudePruningConfig] = None, **kwargs):
        if config is not None and kwargs:
            raise ConfigError("give MagnitudePruningCallback a config or keyword arguments, not both")
        super().__init__(config or MagnitudePruningConfig(**kwargs))
        self._conv1d: frozenset = frozenset()

    def setup(self, model):
        weights = prunable_weights(model, self.config.target_modules, self.config.exclude_modules)
        self._conv1d = _conv1d_names(model, weights)
        return weights

    def schedule_for(self, max_steps: int) -> Schedule:
        return Schedule.from_config(self.config, max_steps)

    def prune(self, step: int) -> None:
        sparsity = self.schedule.sparsity_at(step)
        self.masks = magnitude_masks(self.params, sparsity, self.config.scope, self.config.pattern, self._conv1d)

    def layer_logs(self) -> dict[str, float]:
        return {f"sparsity/{k}": v for k, v in sparsity_of(self.params)["layers"].items()}

    def finalize(self, model) -> dict:
        # The masks are already in the weights (zeros); nothing else holds them, so the checkpoint is plain.
        return _report(self.config, self.params, self.schedule.as_dict())
