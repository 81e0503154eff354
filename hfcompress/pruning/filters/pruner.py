"""Filter pruning: find the channel groups of a CNN, rank their channels, mask the least important, then remove them.

Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023) finds which layers share a channel
dimension (a conv's outputs, its BatchNorm, the depthwise convs after it, every consumer's inputs,
and the convs a residual addition ties together) and cuts them consistently; hfcompress decides
which channels go. Removed channels are first masked (every parameter that writes them set to
zero, so they output exactly zero through BatchNorm and ReLU-like activations), which a Trainer
callback keeps during training; :meth:`FilterPruner.remove` then cuts them out, and the smaller
model computes what the masked one did.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ...errors import ModelError
from ...evaluation import count_macs, macs_by_module
from ...targets import select_modules
from .config import FilterPruningConfig
from .importance import channel_scores, taylor_terms
from .persistence import record_channels

logger = logging.getLogger("hfcompress")


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Run ``model`` in eval mode (BatchNorm statistics untouched) and restore its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def example_inputs(model, image_size: Optional[int] = None) -> dict[str, torch.Tensor]:
    """One zero image for tracing and counting MACs: ``image_size`` square, else the size the model's config names, else 224."""
    size = image_size or getattr(model.config, "image_size", None) or 224
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    param = next(model.parameters())
    channels = getattr(model.config, "num_channels", 3)
    return {"pixel_values": torch.zeros(1, channels, height, width, device=param.device, dtype=param.dtype)}


def num_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _logits(output):
    return output.logits if hasattr(output, "logits") else output[0]


@dataclass
class ChannelGroup:
    """Channels that are removed together: the output channels of ``producers`` and of every layer in ``channel_layers``."""

    name: str  # the first producing conv, which names the group in reports
    root: nn.Module
    handler: Callable  # Torch-Pruning's function that removes the root's output channels
    producers: dict[str, nn.Conv2d]  # full convs whose outputs are these channels (more than one: tied by a residual addition)
    channel_layers: dict[str, nn.Module]  # every Conv2d/BatchNorm2d whose output channels these are (depthwise convs included)
    layers: list[str] = field(default_factory=list)  # every layer whose shape changes when a channel goes
    scaled: list[str] = field(default_factory=list)  # convs/linears whose MACs shrink with the channels: outputs, then inputs

    @property
    def channels(self) -> int:
        return self.root.out_channels

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1


def require_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The model's Conv2d layers by name; a ModelError naming the fix when it has none."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ModelError(f"{type(model).__name__} has no Conv2d layers, so filter pruning has nothing to remove: "
                         "use magnitude or structured pruning for it")
    return convs


def check_supported(config, task) -> None:
    """Pre-flight: a ModelError now, before any stage trains, when a model of ``config`` has no convolutions to prune."""
    from ...modeling import empty_model

    require_convs(empty_model(config, task))


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def channel_groups(model: nn.Module, inputs: dict, config: FilterPruningConfig):
    """Torch-Pruning's dependency graph of ``model`` and the groups ``config`` lets filter pruning act on.

    Returns ``(graph, groups, coupled_skipped)``: groups tied by residual additions are left out
    (their names listed) unless ``config.coupled == 'prune'``, and groups tied across layers of
    different widths always are.
    """
    import torch_pruning as tp

    convs = require_convs(model)
    selected = select_modules(model, config.target_modules, config.exclude_modules, types=(nn.Conv2d,))
    names = {m: name for name, m in model.named_modules()}
    try:
        with evaluating(model):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, output_transform=_logits)
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways on code it does not know
        raise ModelError(f"Torch-Pruning could not trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
                         "filter pruning supports CNN image classifiers that take pixel_values (ResNet, MobileNetV2, CIFAR ResNets)") from None
    # Layers never pruned: classifier outputs (the labels), and convs the targets leave whole.
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear)] + [m for n, m in convs.items() if n not in selected]
    groups, skipped = [], []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        outputs = [dep.target.module for dep, _ in tp_group if graph.is_out_channel_pruning_fn(dep.handler)]
        layers = [dep.target.module for dep, _ in tp_group]
        # A depthwise conv's inputs are its outputs: its MACs shrink once, with them.
        inputs_cut = [dep.target.module for dep, _ in tp_group if graph.is_in_channel_pruning_fn(dep.handler)
                      and not (isinstance(dep.target.module, nn.Conv2d) and _is_depthwise(dep.target.module))]
        producers = {names[m]: m for m in outputs if isinstance(m, nn.Conv2d) and not _is_depthwise(m)}
        group = ChannelGroup(
            name=next(iter(producers), names[tp_group[0].dep.target.module]),
            root=tp_group[0].dep.target.module,
            handler=tp_group[0].dep.handler,
            producers=producers,
            channel_layers={names[m]: m for m in outputs if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))},
            layers=sorted({names[m] for m in layers if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}),
            scaled=[names[m] for m in outputs + inputs_cut if isinstance(m, (nn.Conv2d, nn.Linear))],
        )
        # Producers of different widths are tied through an op Torch-Pruning maps wrongly (the zero-padded option-A shortcuts
        # of CIFAR ResNets join 16-, 32- and 64-channel stages into one group): those channels are never pruned.
        mismatched = len({conv.out_channels for conv in producers.values()}) > 1
        if mismatched or (group.coupled and config.coupled == "skip"):
            skipped.append(group.name)
        else:
            groups.append(group)
    if not groups:
        raise ModelError(f"no channels of {type(model).__name__} can be pruned: every selected conv's outputs are tied by residual additions "
                         "(set coupled: prune) or excluded by target_modules/exclude_modules")
    return graph, groups, skipped


def kept_count(channels: int, wanted: int, min_channels: int, round_to: int) -> int:
    """How many of ``channels`` a layer keeps: ``wanted``, at least ``min_channels``, rounded to a multiple of ``round_to``."""
    kept = max(wanted, min_channels)
    if round_to > 1:
        kept = max(round_to, round(kept / round_to) * round_to)
    return min(channels, kept)


class FilterPruner:
    """Filter pruning of one model: scores, the channels removed so far (as masks), and their physical removal.

    ``select(progress)`` chooses the channels to remove for ``progress`` (0..1) of the config's target,
    keeping everything chosen before; ``apply_masks()`` zeroes them; ``remove()`` cuts them out of the
    model, records the new sizes in its config and returns the report.
    """

    def __init__(self, model: nn.Module, config: FilterPruningConfig, inputs: Optional[dict] = None):
        self.model, self.config = model, config
        self.inputs = inputs if inputs is not None else example_inputs(model, config.image_size)
        self.graph, self.groups, self.skipped = channel_groups(model, self.inputs, config)
        self.removed: dict[str, list[int]] = {g.name: [] for g in self.groups}
        self.taylor: dict[str, torch.Tensor] = {}
        self.channels_before = {g.name: g.channels for g in self.groups}
        self.macs_before, self.layer_macs = macs_by_module(model, self.inputs)
        self.params_before = num_parameters(model)

    # --- importance -----------------------------------------------------------------------------

    def accumulate_taylor(self) -> None:
        """Add the Taylor terms of the gradients now in the model (after a backward pass)."""
        for g in self.groups:
            term = taylor_terms(g)
            self.taylor[g.name] = term if g.name not in self.taylor else self.taylor[g.name] + term

    def calibrate(self, batches: Iterable[dict]) -> None:
        """Taylor terms from calibration batches (model inputs with labels), gradients cleared after."""
        from tqdm.auto import tqdm

        count = 0
        with evaluating(self.model):
            for batch in tqdm(batches, desc="taylor importance", unit="batch"):
                self.model.zero_grad(set_to_none=True)
                self.model(**batch).loss.backward()
                self.accumulate_taylor()
                count += 1
        self.model.zero_grad(set_to_none=True)
        if not count:
            raise ModelError("importance 'taylor' got no calibration batches: give at least one batch of training data with labels")

    def scores(self) -> dict[str, torch.Tensor]:
        """Each group's channel scores; channels already removed score -inf, so they stay removed."""
        if self.config.importance == "taylor" and not self.taylor:
            raise ModelError("importance 'taylor' needs gradients: calibrate() on training batches, or prune during training")
        out = {}
        for g in self.groups:
            s = (self.taylor[g.name] if self.config.importance == "taylor" else channel_scores(g, self.config.importance)).clone()
            s[self.removed[g.name]] = float("-inf")
            out[g.name] = s.cpu()
        return out

    # --- selection ------------------------------------------------------------------------------

    def _kept(self, name: str, wanted: int) -> int:
        return kept_count(self.channels_before[name], wanted, self.config.min_channels, self.config.round_to)

    def removal_for(self, fraction: float, scores: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        """The lowest-scoring channels that remove ``fraction`` of every group's channels (local) or of all of them (global)."""
        if self.config.scope == "local":
            counts = {n: c - self._kept(n, c - round(fraction * c)) for n, c in self.channels_before.items()}
        else:
            counts = self._global_counts(fraction, scores)
        return {n: sorted(scores[n].argsort()[:k].tolist()) for n, k in counts.items()}

    def _global_counts(self, fraction: float, scores: dict[str, torch.Tensor]) -> dict[str, int]:
        # Scores divided by their group's mean, so that groups with larger weights do not keep every channel.
        normalised = []
        for n, s in scores.items():
            finite = s[s.isfinite()]
            scale = finite.abs().mean().clamp_min(1e-12) if finite.numel() else torch.tensor(1.0)
            normalised += [(v, n) for v in (s / scale).tolist()]
        budget = round(fraction * sum(self.channels_before.values()))
        counts = dict.fromkeys(scores, 0)
        for _, n in sorted(normalised, key=lambda item: item[0]):
            if budget == 0:
                break
            if self.channels_before[n] - counts[n] > self.config.min_channels:
                counts[n] += 1
                budget -= 1
        return {n: c - self._kept(n, c - counts[n]) for n, c in self.channels_before.items()}

    def estimated_macs(self, removed: dict[str, list[int]]) -> float:
        """MACs of the model with ``removed`` cut out: each conv's and linear's counted MACs scaled by the fraction of its
        input and output channels kept (exact for them: their MACs are proportional to both), the rest as counted."""
        factors = dict.fromkeys(self.layer_macs, 1.0)
        for g in self.groups:
            kept = 1 - len(removed.get(g.name, ())) / self.channels_before[g.name]
            for name in g.scaled:
                factors[name] *= kept
        return self.macs_before - sum(self.layer_macs.values()) + sum(m * factors[n] for n, m in self.layer_macs.items())

    def select(self, progress: float = 1.0) -> None:
        """Choose the channels removed at ``progress`` (0..1) of the target, re-ranking those still there."""
        scores = self.scores()
        if not self.config.by_macs:
            self.removed = self.removal_for(self.config.amount * progress, scores)
        else:
            self.removed = self._removal_for_macs(self.config.target_macs_reduction * progress, scores)
        if progress >= 1.0 and not any(self.removed.values()):
            raise ModelError("filter pruning would remove no channel: min_channels or round_to keep every layer whole; lower them or raise the target")

    def _removal_for_macs(self, reduction: float, scores: dict[str, torch.Tensor], steps: int = 12) -> dict[str, list[int]]:
        """Bisect the channel fraction until the pruned model's MACs drop by ``reduction``."""
        if reduction <= 0:
            return self.removal_for(0.0, scores)
        wanted = self.macs_before * (1 - reduction)
        most = self.removal_for(1.0, scores)
        least_macs = self.estimated_macs(most)
        if least_macs > wanted:
            raise ModelError(
                f"target_macs_reduction {reduction:.3f} cannot be reached: removing all but min_channels={self.config.min_channels} channels of "
                f"every prunable layer leaves {least_macs / self.macs_before:.1%} of the MACs ({len(self.skipped)} residual groups skipped); "
                "lower the target, or set coupled: prune"
            )
        low, high, best = 0.0, 1.0, most
        for _ in range(steps):
            middle = (low + high) / 2
            candidate = self.removal_for(middle, scores)
            if self.estimated_macs(candidate) <= wanted:
                high, best = middle, candidate
            else:
                low = middle
        return best

    # --- masks and removal ----------------------------------------------------------------------

    def maskable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters that write the prunable channels, by name (what a training callback keeps masked)."""
        names = {m: n for n, m in self.model.named_modules()}
        params = {}
        for g in self.groups:
            for module in g.channel_layers.values():
                for kind in ("weight", "bias"):
                    if getattr(module, kind, None) is not None:
                        params[f"{names[module]}.{kind}"] = getattr(module, kind)
        return params

    def masks(self) -> dict[str, torch.Tensor]:
        """Keep-masks over :meth:`maskable_parameters` that zero the removed channels."""
        masks = {}
        for g in self.groups:
            removed = self.removed[g.name]
            if not removed:
                continue
            for name, module in g.channel_layers.items():
                for kind in ("weight", "bias"):
                    param = getattr(module, kind, None)
                    if param is not None:
                        mask = torch.ones_like(param, dtype=torch.bool)
                        mask[removed] = False
                        masks[f"{name}.{kind}"] = mask
        return masks

    @torch.no_grad()
    def apply_masks(self) -> None:
        params = self.maskable_parameters()
        for name, mask in self.masks().items():
            params[name].mul_(mask)

    def removed_from_masks(self, masks: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        """The channels a set of masks zeroes (to resume a training run from its checkpoint)."""
        removed = {}
        for g in self.groups:
            mask = masks.get(f"{g.name}.weight")
            removed[g.name] = [] if mask is None else (~mask.reshape(mask.shape[0], -1).any(1)).nonzero().flatten().tolist()
        return removed

    def _cut(self, removed: dict[str, list[int]]) -> list[str]:
        """Cut the ``removed`` channels out of every layer of their groups; returns the layers whose shapes changed."""
        changed = []
        for g in self.groups:
            if removed.get(g.name):
                self.graph.get_pruning_group(g.root, g.handler, removed[g.name]).prune()
                changed += g.layers
        return changed

    def remove(self) -> dict:
        """Cut the removed channels out of the model, record its new sizes in its config, and return the report."""
        self.apply_masks()
        record_channels(self.model, self._cut(self.removed))
        return self.report()

    def report(self) -> dict:
        after = {g.name: g.channels for g in self.groups}
        before_total, after_total = sum(self.channels_before.values()), sum(after.values())
        macs = count_macs(self.model, self.inputs)
        cfg = self.config
        return {
            "method": "filters",
            "importance": cfg.importance, "scope": cfg.scope, "amount": cfg.amount, "target_macs_reduction": cfg.target_macs_reduction,
            "coupled": cfg.coupled, "iterations": cfg.iterations, "min_channels": cfg.min_channels, "round_to": cfg.round_to,
            "channels_before": self.channels_before, "channels_after": after, "coupled_groups_skipped": self.skipped,
            "channels_removed_fraction": round(1 - after_total / before_total, 6),
            "num_parameters_before": self.params_before, "num_parameters": num_parameters(self.model),
            "macs_before": self.macs_before, "macs": macs, "macs_reduction": round(1 - macs / self.macs_before, 6),
            "input_shape": list(self.inputs["pixel_values"].shape),
        }


def prune_filters(model, config: Optional[FilterPruningConfig] = None, calibration_batches: Optional[Iterable[dict]] = None,
                  inputs: Optional[dict] = None, **kwargs) -> dict:
    """Rank, select and remove filters of ``model`` in place, in ``config.iterations`` steps; returns the report.

    ``importance='taylor'`` needs ``calibration_batches`` (model inputs with labels); ``inputs`` are
    what tracing and MAC counts run on (default: one zero image of ``config.image_size`` or the model config's size).
    """
    cfg = config or FilterPruningConfig(**kwargs)
    pruner = FilterPruner(model, cfg, inputs)
    if cfg.importance == "taylor":
        if calibration_batches is None:
            raise ModelError("importance 'taylor' needs calibration batches (inputs with labels): pass calibration_batches")
        pruner.calibrate(calibration_batches)
    for step in range(1, cfg.iterations + 1):
        pruner.select(step / cfg.iterations)
        pruner.apply_masks()
    report = pruner.remove()
    logger.info("filter pruning: %.1f%% of the MACs and %.1f%% of the prunable channels removed",
                100 * report["macs_reduction"], 100 * report["channels_removed_fraction"])
    return report
