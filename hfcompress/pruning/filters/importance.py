"""How much each output channel of a group matters: filter norms, BatchNorm scales, or first-order Taylor terms.

A group's score for a channel sums its producers' terms: one conv for a plain channel, every conv
whose outputs a residual addition ties together for a coupled one.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ModelError


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """One row per output channel (a 1-D bias or scale becomes a column)."""
    return tensor.detach().float().reshape(tensor.shape[0], -1)


def filter_norm(group, p: int) -> torch.Tensor:
    """Li et al. (2017): the L1 (``p=1``) or L2 norm of each filter, summed over the group's producing convs."""
    return sum(_rows(conv.weight).norm(p=p, dim=1) for conv in group.producers.values())


def bn_scale(group) -> torch.Tensor:
    """Network slimming (Liu et al. 2017): |gamma| of each channel's BatchNorm, summed over the group's BatchNorms."""
    norms = [m for m in group.channel_layers.values() if isinstance(m, nn.BatchNorm2d) and m.affine]
    if not norms:
        raise ModelError(f"importance 'bn_scale' needs a BatchNorm after conv '{group.name}', which has none: use importance 'l1'")
    return sum(m.weight.detach().float().abs() for m in norms)


def taylor_terms(group) -> torch.Tensor:
    """Molchanov et al. (2019): |sum(grad * weight)| over every parameter of each channel, from the gradients now in the model."""
    total = None
    for module in group.channel_layers.values():
        for param in (module.weight, module.bias):
            if param is None or param.grad is None:
                continue
            term = _rows(param.grad * param).sum(1)
            total = term if total is None else total + term
    if total is None:
        raise ModelError("importance 'taylor' needs gradients: compute it after loss.backward() on calibration or training batches")
    return total.abs()


def channel_scores(group, kind: str) -> torch.Tensor:
    """The importance of each output channel of ``group`` (higher: keep), by ``kind``: l1, l2, bn_scale or taylor."""
    if kind in ("l1", "l2"):
        return filter_norm(group, 1 if kind == "l1" else 2)
    if kind == "bn_scale":
        return bn_scale(group)
    return taylor_terms(group)
