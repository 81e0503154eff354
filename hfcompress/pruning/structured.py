"""Structured pruning: remove attention heads and FFN neurons by importance, then slim the model physically.

During training, removed heads/neurons are masked (their weights zeroed, like magnitude masks); at the
end the model is slimmed: heads by cutting their rows from the query/key/value projections and their
columns from the attention output projection, FFN neurons by cutting the two FFN Linear layers to the
same number of neurons in every layer, so only ``intermediate_size`` changes. A masked head or neuron
contributes exactly zero, so the slimmed model computes what the masked one did.

The removed heads are recorded in ``config.pruned_heads`` ({layer: [original head indices]}), the
format transformers 4 re-applies in ``from_pretrained``. Transformers 5 dropped head pruning and
ignores the field, so :func:`hfcompress.modeling.load_model` gives the model those shapes itself
(:func:`remove_recorded_heads`) before the weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import ModelError
from ..targets import replace_module
from .config import StructuredPruningConfig
from .masks import MaskedPruningCallback, unwrap
from .schedules import Schedule


@dataclass
class Block:
    """One transformer block's prunable parts: q/k/v/output projections and the two FFN layers."""

    prefix: str  # module path of the block, e.g. "bert.encoder.layer.0"
    q: str
    k: str
    v: str
    o: str
    fc_in: str
    fc_out: str
    attention: str  # module that owns the head count


# Module names inside a block, per layout; BERT covers RoBERTa, XLM-R, ELECTRA and other BERT-likes.
# heads_attr/width_attr: the attention module's head count and q/k/v width (heads x head size), by the
# names transformers 4.57 and 5.x both use; forward reads them to reshape.
_LAYOUTS = {
    "bert": dict(q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
                 fc_in="intermediate.dense", fc_out="output.dense", attention="attention.self", heads_attr="num_attention_heads",
                 width_attr="all_head_size", ffn_config="intermediate_size"),
    "distilbert": dict(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin",
                       fc_in="ffn.lin1", fc_out="ffn.lin2", attention="attention", heads_attr="n_heads", width_attr="dim",
                       ffn_config="hidden_dim"),
}


def _layout(model) -> tuple[dict, str, list]:
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer") and hasattr(base.encoder.layer[0], "intermediate"):
        return _LAYOUTS["bert"], f"{model.base_model_prefix}.encoder.layer", list(base.encoder.layer)
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer") and hasattr(base.transformer.layer[0], "ffn"):
        return _LAYOUTS["distilbert"], f"{model.base_model_prefix}.transformer.layer", list(base.transformer.layer)
    raise ModelError(
        f"structured pruning supports BERT-like encoders (BERT, RoBERTa, MiniLM, ...) and DistilBERT, not "
        f"'{model.config.model_type}': use unstructured magnitude pruning for this model"
    )


def check_supported(config, task) -> None:
    """Pre-flight: a ModelError now, before any stage trains, when a model of ``config`` has no layout structured pruning knows."""
    from ..modeling import empty_model

    _layout(empty_model(config, task))


def blocks(model) -> list[Block]:
    layout, prefix, layers = _layout(model)
    names = {k: v for k, v in layout.items() if k not in ("heads_attr", "width_attr", "ffn_config")}
    return [Block(prefix=f"{prefix}.{i}", **{k: f"{prefix}.{i}.{v}" for k, v in names.items()}) for i in range(len(layers))]


def _heads_and_size(model, block: Block) -> tuple[int, int]:
    layout = _layout(model)[0]
    attention = model.get_submodule(block.attention)
    heads = getattr(attention, layout["heads_attr"])
    return heads, model.get_submodule(block.q).out_features // heads


def group_slices(model) -> tuple[list[dict], list[dict]]:
    """For every block, the parameter slices of each head and each FFN neuron.

    Returns ``(heads, neurons)``: per block, ``{param_name: (dim, size_per_group)}``: group ``g`` is
    ``param.narrow(dim, g * size, size)``.
    """
    heads, neurons = [], []
    for block in blocks(model):
        _, d = _heads_and_size(model, block)
        h = {f"{m}.{p}": (0, d) for m in (block.q, block.k, block.v) for p in ("weight", "bias")}
        h[f"{block.o}.weight"] = (1, d)
        heads.append(h)
        neurons.append({f"{block.fc_in}.weight": (0, 1), f"{block.fc_in}.bias": (0, 1), f"{block.fc_out}.weight": (1, 1)})
    return heads, neurons


def _group_sums(values: dict[str, torch.Tensor], slices: dict, per_group) -> torch.Tensor:
    """Sum ``per_group(tensor)`` over each group's slices of every parameter, as a vector over groups."""
    total = None
    for name, (dim, size) in slices.items():
        t = values[name]
        t = t.unsqueeze(1) if t.dim() == 1 else t
        t = t.transpose(0, 1) if dim == 1 else t  # groups along dim 0
        groups = per_group(t.reshape(t.shape[0] // size, -1).float())
        total = groups if total is None else total + groups
    return total


@torch.no_grad()
def importance_scores(model, kind: str = "weight_norm") -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[layers, heads]`` and ``[layers, neurons]`` from the current weights (and gradients for 'taylor').

    'weight_norm': L2 norm of the group's weights. 'taylor': |sum(grad * weight)| over the group, the
    first-order estimate of the loss change when the group is removed (needs ``.grad`` populated).
    """
    head_slices, neuron_slices = group_slices(model)
    names = set().union(*head_slices, *neuron_slices)
    params = {k: p for k, p in model.named_parameters() if k in names}
    if kind == "weight_norm":
        values, reduce = {k: p.detach() for k, p in params.items()}, lambda g: g.pow(2).sum(1)
    else:
        if all(p.grad is None for p in params.values()):
            raise ModelError("taylor importance needs gradients: call it after loss.backward()")
        values = {k: (p.grad * p.detach()) if p.grad is not None else torch.zeros_like(p) for k, p in params.items()}
        reduce = lambda g: g.sum(1)  # noqa: E731
    heads = torch.stack([_group_sums(values, s, reduce) for s in head_slices])
    neurons = torch.stack([_group_sums(values, s, reduce) for s in neuron_slices])
    if kind == "weight_norm":
        return heads.sqrt(), neurons.sqrt()
    return heads.abs(), neurons.abs()


def taylor_scores_from_batches(model, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order Taylor scores averaged over ``batches`` (dicts with labels), for one-shot pruning without training."""
    model.train(False)
    total_h = total_n = None
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        h, n = importance_scores(model, "taylor")
        total_h, total_n = (h, n) if total_h is None else (total_h + h, total_n + n)
        count += 1
    model.zero_grad(set_to_none=True)
    if not count:
        raise ModelError("taylor importance got no batches: give at least one calibration batch")
    return total_h / count, total_n / count


def select_removed(head_scores: torch.Tensor, neuron_scores: torch.Tensor, heads_fraction: float, ffn_fraction: float,
                   heads_scope: str = "per_layer", min_heads: int = 1) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Lowest-scoring heads (per layer, or across layers with per-layer-normalised scores) and FFN neurons (same count per layer).

    Scores of ``-inf`` mark groups already removed; they are always among the removed.
    """
    layers, num_heads = head_scores.shape
    heads: dict[int, list[int]] = {}
    if heads_scope == "per_layer":
        k = min(round(heads_fraction * num_heads), num_heads - min_heads)
        for layer in range(layers):
            heads[layer] = sorted(head_scores[layer].topk(k, largest=False).indices.tolist()) if k else []
    else:
        # Normalise per layer (Michel et al. 2019) so layers with larger weights do not keep all their heads.
        finite = torch.where(head_scores.isfinite(), head_scores, torch.zeros_like(head_scores))
        norm = head_scores / finite.norm(dim=1, keepdim=True).clamp_min(1e-12)
        k = round(heads_fraction * layers * num_heads)
        heads = {layer: [] for layer in range(layers)}
        for flat in norm.flatten().argsort().tolist():
            if k == 0:
                break
            layer, head = divmod(flat, num_heads)
            if num_heads - len(heads[layer]) > min_heads:
                heads[layer].append(head)
                k -= 1
        heads = {layer: sorted(h) for layer, h in heads.items()}
    n = round(ffn_fraction * neuron_scores.shape[1])
    neurons = {layer: sorted(neuron_scores[layer].topk(n, largest=False).indices.tolist()) if n else []
               for layer in range(neuron_scores.shape[0])}
    return heads, neurons


def group_masks(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """Keep-masks over parameters that zero the given heads and neurons (indices in the current model)."""
    params = dict(model.named_parameters())
    masks = {}
    for groups, slices in ((heads, group_slices(model)[0]), (neurons, group_slices(model)[1])):
        for layer, removed in groups.items():
            if not removed:
                continue
            for name, (dim, size) in slices[layer].items():
                mask = masks.get(name, torch.ones_like(params[name], dtype=torch.bool))
                for g in removed:
                    mask.narrow(dim, g * size, size).fill_(False)
                masks[name] = mask
    return masks


def recorded_heads(config) -> dict[int, list[int]]:
    """``config.pruned_heads`` with int layer keys: the heads removed so far, by their original index ({} when none).

    Transformers 4 turns the JSON's string keys back into ints when loading; transformers 5 no longer
    knows the field and leaves them strings.
    """
    return {int(layer): sorted(heads) for layer, heads in (getattr(config, "pruned_heads", None) or {}).items() if heads}


def check_recorded_heads(config) -> None:
    """A ModelError, before a model is built, when ``config.pruned_heads`` names a layer or head the config does not have."""
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    for layer, removed in recorded_heads(config).items():
        if not 0 <= layer < layers or not set(removed) < set(range(heads)):
            raise ModelError(
                f"config.pruned_heads names heads {removed} of layer {layer}, but the model has {layers} layers of {heads} heads "
                "and keeps at least one per layer: fix pruned_heads in config.json, or slim and save the model again"
            )


@torch.no_grad()
def _kept_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear with only the ``keep`` rows (``dim=0``, outputs) or columns (``dim=1``, inputs) of ``layer``, on its device and in its dtype.

    (transformers' ``prune_linear_layer`` returns float32 layers, which would leave a bf16 model mixed.)
    """
    weight = layer.weight.index_select(dim, keep)
    kept = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    kept.weight.copy_(weight)
    if layer.bias is not None:
        kept.bias.copy_(layer.bias if dim == 1 else layer.bias[keep])
    return kept


def _remove_heads(model, block: Block, removed: list[int]) -> None:
    """Cut heads (current indices) out of a block: rows of q/k/v, columns of the output projection, and the head count."""
    layout = _layout(model)[0]
    heads, size = _heads_and_size(model, block)
    kept = sorted(set(range(heads)) - set(removed))
    keep = torch.tensor([h * size + i for h in kept for i in range(size)], device=model.get_submodule(block.q).weight.device)
    for name in (block.q, block.k, block.v):
        replace_module(model, name, _kept_linear(model.get_submodule(name), keep, dim=0))
    replace_module(model, block.o, _kept_linear(model.get_submodule(block.o), keep, dim=1))
    attention = model.get_submodule(block.attention)
    setattr(attention, layout["heads_attr"], len(kept))
    setattr(attention, layout["width_attr"], len(kept) * size)


@torch.no_grad()
def slim(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> None:
    """Physically remove heads (current indices, per layer) and FFN neurons (the same count in every layer) in place.

    The removed heads join ``config.pruned_heads`` by their original index, as transformers 4's ``prune_heads`` recorded them.
    """
    layout = _layout(model)[0]
    block_list = blocks(model)
    counts = {len(neurons.get(layer, [])) for layer in range(len(block_list))}
    if len(counts) > 1:
        raise ModelError(f"remove the same number of FFN neurons in every layer (got {sorted(counts)}) so the config keeps one intermediate_size")
    for layer, removed in neurons.items():
        if not removed:
            continue
        fc_in, fc_out = block_list[layer].fc_in, block_list[layer].fc_out
        fc_in_module = model.get_submodule(fc_in)
        keep = torch.tensor(sorted(set(range(fc_in_module.out_features)) - set(removed)), device=fc_in_module.weight.device)
        replace_module(model, fc_in, _kept_linear(fc_in_module, keep, dim=0))
        replace_module(model, fc_out, _kept_linear(model.get_submodule(fc_out), keep, dim=1))
        setattr(model.config, layout["ffn_config"], len(keep))
    recorded = recorded_heads(model.config)
    for layer, removed in heads.items():
        if removed:
            remaining = [h for h in range(model.config.num_attention_heads) if h not in recorded.get(layer, [])]
            _remove_heads(model, block_list[layer], removed)
            recorded[layer] = sorted(recorded.get(layer, []) + [remaining[h] for h in removed])
    if recorded:
        model.config.pruned_heads = recorded


@torch.no_grad()
def remove_recorded_heads(model) -> None:
    """Give a model just built from its config, with all heads, the attention shapes that ``config.pruned_heads`` records.

    Transformers 4 does this itself while building the model; transformers 5 no longer does.
    """
    block_list = blocks(model)
    for layer, removed in recorded_heads(model.config).items():
        _remove_heads(model, block_list[layer], removed)


def structure_report(model, config: Optional[StructuredPruningConfig] = None, params_before: Optional[int] = None) -> dict:
    """``sparsity_report.json`` for a slimmed model: heads kept per layer, FFN size, parameter counts."""
    layout = _layout(model)[0]
    return {
        "method": "structured",
        "pattern": "structured",
        "importance": config.importance if config else None,
        "heads_fraction": config.heads_fraction if config else None,
        "ffn_fraction": config.ffn_fraction if config else None,
        "heads_kept": {i: _heads_and_size(model, b)[0] for i, b in enumerate(blocks(model))},
        "pruned_heads": recorded_heads(model.config),
        "intermediate_size": getattr(model.config, layout["ffn_config"]),
        "num_parameters_before": params_before,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "global_sparsity": 0.0,
    }


def structured_prune(model, config: Optional[StructuredPruningConfig] = None, calibration_batches: Optional[Iterable[dict]] = None, **kwargs) -> dict:
    """Score, select and slim ``model`` in place at once; returns the report.

    ``importance='taylor'`` needs ``calibration_batches`` (model inputs with labels).
    """
    cfg = config or StructuredPruningConfig(**kwargs)
    model = unwrap(model)
    before = int(sum(p.numel() for p in model.parameters()))
    if cfg.importance == "taylor":
        if calibration_batches is None:
            raise ModelError("importance 'taylor' needs calibration batches (inputs with labels): pass calibration_batches")
        head_scores, neuron_scores = taylor_scores_from_batches(model, calibration_batches)
    else:
        head_scores, neuron_scores = importance_scores(model, "weight_norm")
    heads, neurons = select_removed(head_scores, neuron_scores, cfg.heads_fraction, cfg.ffn_fraction, cfg.heads_scope, cfg.min_heads)
    slim(model, heads, neurons)
    return structure_report(model, cfg, before)


class StructuredPruningCallback(MaskedPruningCallback):
    """Gradual (or one-shot) head and FFN-neuron pruning inside any ``Trainer``, slimming the model at the end.

    Importance is recomputed at each pruning step: from the weights ('weight_norm'), or from
    |sum(grad * weight)| accumulated over every optimizer step since training began ('taylor').
    Removed groups are masked to zero until ``on_train_end``, which slims the model in place, so
    ``trainer.save_model`` writes a smaller standard checkpoint.
    """

    method = "structured"

    def __init__(self, config: Optional[StructuredPruningConfig] = None, **kwargs):
        super().__init__(config or StructuredPruningConfig(**kwargs))
        self.taylor_heads: Optional[torch.Tensor] = None
        self.taylor_neurons: Optional[torch.Tensor] = None
        self.removed: tuple[dict, dict] = ({}, {})
        self._params_before: Optional[int] = None

    def setup(self, model):
        self._params_before = int(sum(p.numel() for p in model.parameters()))
        self._model = model
        self.removed, self.taylor_heads, self.taylor_neurons = ({}, {}), None, None
        heads, neurons = group_slices(model)
        names = set().union(*heads, *neurons)
        return {k: p for k, p in model.named_parameters() if k in names}

    def schedule_for(self, max_steps: int) -> Schedule:
        return Schedule.from_config(self.config, max_steps, target=1.0)  # the fraction of the final removal

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.config.importance == "taylor" and self.schedule.start <= state.global_step + 1 <= self.schedule.end:
            h, n = importance_scores(self._model, "taylor")
            self.taylor_heads = h if self.taylor_heads is None else self.taylor_heads + h
            self.taylor_neurons = n if self.taylor_neurons is None else self.taylor_neurons + n

    def prune(self, step: int) -> None:
        progress = self.schedule.sparsity_at(step)
        if self.config.importance == "taylor" and self.taylor_heads is not None:
            h, n = self.taylor_heads.clone(), self.taylor_neurons.clone()
        else:
            h, n = importance_scores(self._model, "weight_norm")
        # Removed groups stay removed: the masks only grow.
        for layer, removed in self.removed[0].items():
            h[layer, removed] = float("-inf")
        for layer, removed in self.removed[1].items():
            n[layer, removed] = float("-inf")
        self.removed = select_removed(h, n, self.config.heads_fraction * progress, self.config.ffn_fraction * progress,
                                      self.config.heads_scope, self.config.min_heads)
        self.masks = group_masks(self._model, *self.removed)

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.taylor_heads is None:
            return {}
        return {"taylor_heads": self.taylor_heads, "taylor_neurons": self.taylor_neurons}

    def restored(self, extra):
        self.taylor_heads, self.taylor_neurons = extra.get("taylor_heads"), extra.get("taylor_neurons")
        self.removed = removed_from_masks(self._model, self.masks)
        self.masks = group_masks(self._model, *self.removed)

    def layer_logs(self) -> dict[str, float]:
        logs = {f"heads_removed/layer_{i}": len(r) for i, r in self.removed[0].items()}
        logs["ffn_neurons_removed_per_layer"] = max(map(len, self.removed[1].values()), default=0)
        return logs

    def finalize(self, model) -> dict:
        slim(model, *self.removed)
        return structure_report(model, self.config, self._params_before)


def removed_from_masks(model, masks: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The heads and neurons whose groups a set of masks zeroes (to resume a structured run)."""
    head_slices, neuron_slices = group_slices(model)
    out = []
    for slices_per_layer in (head_slices, neuron_slices):
        removed = {}
        for layer, slices in enumerate(slices_per_layer):
            name, (dim, size) = next(iter(slices.items()))
            mask = masks.get(name)
            if mask is None:
                removed[layer] = []
                continue
            t = mask.transpose(0, 1) if dim == 1 else mask
            t = t.unsqueeze(1) if t.dim() == 1 else t
            alive = t.reshape(t.shape[0] // size, -1).any(1)
            removed[layer] = [g for g in range(alive.numel()) if not alive[g]]
        out.append(removed)
    return out[0], out[1]
