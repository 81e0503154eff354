"""Multiply-accumulate operations (MACs) of a forward pass, counted by PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the matrix products and convolutions
the model runs (2 per multiply-accumulate), from the shapes it actually sees, so a pruned model,
a depthwise conv or a text model at a given sequence length is counted as it runs. Normalisation,
activations, additions and pooling are not counted: as in the usual tables (ResNet-56: 125 M).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..errors import ModelError


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels, not the one scaled_dot_product_attention runs on CPU,
# so a transformer with SDPA attention would be counted without its attention products
_UNCOUNTED_KERNELS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def _counted(model: torch.nn.Module, example_inputs: Any) -> FlopCounterMode:
    """One forward pass of ``model`` (in eval mode, without gradients) under the FLOP counter; its mode is restored after."""
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise ModelError(f"count_macs: example inputs of type {type(example_inputs).__name__} cannot be passed to the model: "
                         "give a mapping of keyword arguments, a tensor or a tuple of tensors")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_KERNELS)
    try:
        with torch.no_grad(), counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return counter


def count_macs(model: torch.nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass of ``model`` (in eval mode, without gradients) on ``example_inputs``.

    ``example_inputs`` is what the model is called with: a mapping of keyword arguments (a task's batch:
    ``{"pixel_values": ...}`` or a tokenizer's output), a tensor, or a tuple of positional tensors. The
    count is for the whole batch; give one example (batch 1) for the per-example figure reports show.
    """
    return _counted(model, example_inputs).get_total_flops() // 2


def macs_by_module(
    model: torch.nn.Module, example_inputs: Any, types: tuple[type[torch.nn.Module], ...] = (torch.nn.Conv2d, torch.nn.Linear)
) -> tuple[int, dict[str, int]]:
    """The MACs of :func:`count_macs`, and those of each submodule of ``types`` by module name, from the same single pass.

    A module called more than once is counted over all its calls; one that never runs counts 0.
    """
    counter = _counted(model, example_inputs)
    # the counter names modules by their path under the root module's class name
    counts, prefix = counter.get_flop_counts(), f"{type(model).__name__}."
    by_module = {name: sum(counts.get(prefix + name, {}).values()) // 2
                 for name, module in model.named_modules() if name and isinstance(module, types)}
    return counter.get_total_flops() // 2, by_module
