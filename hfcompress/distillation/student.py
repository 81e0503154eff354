"""Build a shallower student from a teacher by keeping some of its layers (as DistilBERT did)."""

from __future__ import annotations

import copy
import re
from typing import Sequence, Union

import torch
from transformers import PreTrainedModel

from ..errors import ConfigError
from ..modeling import remove_heads_transformers_kept
from ..pruning.structured import recorded_heads


def find_layer_list(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList holding the transformer blocks (``bert.encoder.layer``, ``transformer.h``, ...)."""
    n = model.config.num_hidden_layers
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not candidates:
        raise ConfigError(f"cannot find the {n} transformer blocks of {type(model).__name__}: build the student by hand")
    return candidates[0]


def spread_layers(count: int, total: int) -> list[int]:
    """``count`` of ``total`` layer indices: the first and the last, the rest evenly spaced between.

    The first layer turns embeddings into what the stack works on and the last one shapes what the
    head reads, so dropping either hurts most (as layer-pruning studies of Llama models find);
    spreading the others keeps a bit of every depth's function, as DistilBERT's every-other-layer
    initialisation does. ``spread_layers(15, 30)`` keeps 0, 2, ..., 14, 17, ..., 27, 29.
    """
    if not 1 <= count <= total:
        raise ConfigError(f"a student of {count} layers cannot be cut from a teacher of {total}: choose 1..{total}")
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def build_student_from_teacher(teacher: PreTrainedModel, layers: Union[int, Sequence[int]]) -> PreTrainedModel:
    """A copy of ``teacher`` that keeps only ``layers`` (e.g. [0, 2, 4] of 6, or a count such as 15:
    see :func:`spread_layers`), with the teacher's embeddings, head and those layers' weights. The result
    is a standard Transformers model (BERT-style encoders, GPT-2, Llama-family decoders): its attention
    modules are numbered afresh (``layer_idx``, used by the KV cache), per-layer config lists such as
    ``layer_types`` keep the kept layers' entries, and tied embeddings stay tied."""
    total = teacher.config.num_hidden_layers
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = spread_layers(layers, total)
    layers = list(layers)
    if not layers or any(not isinstance(i, int) or not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError(
            f"student layers {layers} must be distinct integers in [0, {total - 1}] (the teacher has {total} layers), e.g. [0, 2, 4]"
        )
    prefix, _ = find_layer_list(teacher)
    new_index = {old: new for new, old in enumerate(layers)}
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding window, full) of Qwen3, Gemma, ...
        config.layer_types = [config.layer_types[i] for i in layers]
    if recorded_heads(teacher.config):  # a slimmed teacher: its kept layers' removed heads, under their new numbers
        config.pruned_heads = {new_index[layer]: heads for layer, heads in recorded_heads(teacher.config).items() if layer in new_index}
    student = type(teacher)(config)  # built afresh, so each attention module's layer_idx is its new position
    remove_heads_transformers_kept(student)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    state = {}
    for key, value in teacher.state_dict().items():
        m = pattern.match(key)
        if m is None:
            state[key] = value.clone()
        elif int(m.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(m.group(1))]}.{m.group(2)}"] = value.clone()
    student.load_state_dict(state, strict=True)
    return student
