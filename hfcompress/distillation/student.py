"""Build a shallower student from a teacher by keeping some of its layers (as DistilBERT did)."""

from __future__ import annotations

import copy
import re
from typing import Sequence

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


def build_student_from_teacher(teacher: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A copy of ``teacher`` that keeps only ``layers`` (e.g. [0, 2, 4] of 6), with the teacher's
    embeddings, head and those layers' weights. The result is a standard Transformers model."""
    total = teacher.config.num_hidden_layers
    layers = list(layers)
    if not layers or any(not isinstance(i, int) or not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError(
            f"student layers {layers} must be distinct integers in [0, {total - 1}] (the teacher has {total} layers), e.g. [0, 2, 4]"
        )
    prefix, _ = find_layer_list(teacher)
    new_index = {old: new for new, old in enumerate(layers)}
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if recorded_heads(teacher.config):  # a slimmed teacher: its kept layers' removed heads, under their new numbers
        config.pruned_heads = {new_index[layer]: heads for layer, heads in recorded_heads(teacher.config).items() if layer in new_index}
    student = type(teacher)(config)
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
