"""A causal LM as one ONNX decoder graph with a KV cache, in the layout of Optimum's causal-LM export with past.

The graph takes ``input_ids``, ``attention_mask`` (over past and new tokens), ``position_ids`` and,
per layer, ``past_key_values.{i}.key`` / ``.value`` [batch_size, num_key_value_heads,
past_sequence_length, head_dim]; it returns ``logits`` and ``present.{i}.key`` / ``.value``. Feeding
an empty past (past length 0) is the prefill; feeding the presents back is a decode step, so one
graph serves both. On transformers 5 it is traced by ``torch.onnx.export(dynamo=True)`` through a
wrapper that rebuilds the model's ``DynamicCache`` from flat tensors, as Optimum and transformers'
ExecuTorch integration do.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
PAST_AXES = {0: "batch_size", 2: "past_sequence_length"}
TOTAL_LENGTH = "past_sequence_length + sequence_length"  # Optimum's name of the attention mask's and presents' length


def past_names(num_layers: int, prefix: str = PAST_PREFIX) -> list[str]:
    """``past_key_values.0.key``, ``past_key_values.0.value``, ... (``prefix="present."``: the outputs)."""
    return [f"{prefix}{layer}.{kind}" for layer in range(num_layers) for kind in ("key", "value")]


def is_past_input(name: str) -> bool:
    return name.startswith(PAST_PREFIX)


def kv_cache_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of a decoder config: grouped-query attention keeps fewer KV heads than query heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


def empty_graph_past(graph_inputs, model_config=None) -> dict[str, np.ndarray]:
    """Zero-length past tensors (batch 1, the graph's dtypes) for every past input of an ONNX graph's inputs: a
    calibration row's prefill feed. Heads and head size come from the graph's static dims, else from ``model_config``."""
    from onnx.helper import tensor_dtype_to_np_dtype

    from ..errors import ModelError

    feeds = {}
    for graph_input in graph_inputs:
        if not is_past_input(graph_input.name):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise ModelError(f"graph input {graph_input.name} has {len(dims)} dimensions, not [batch, heads, past length, head size]: export with hfcompress export")
        heads = dims[1] or getattr(model_config, "num_key_value_heads", None) or getattr(model_config, "num_attention_heads", None)
        head_size = dims[3] or getattr(model_config, "head_dim", None) or (model_config.hidden_size // model_config.num_attention_heads)
        feeds[graph_input.name] = np.zeros((1, heads, 0, head_size), dtype=tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type))
    return feeds


def empty_past(session_inputs, batch_size: int) -> dict[str, np.ndarray]:
    """Zero-length past tensors for every past input of an ONNX Runtime session (the prefill's feed).

    The head count and head dim are read from the graph's static dims, so no config is needed.
    """
    feeds = {}
    for node in session_inputs:
        if is_past_input(node.name):
            _, heads, _, head_dim = node.shape
            feeds[node.name] = np.zeros((batch_size, heads, 0, head_dim), dtype=np.float32)
    return feeds


def graph_input_names(model, input_names: Sequence[str]) -> list[str]:
    """The graph's inputs in the order of ``model.forward``'s parameters, the past in place of ``past_key_values``: Optimum's order.

    (GPT-2 takes its past before the attention mask, Llama after the position ids.)
    """
    import inspect

    names = []
    for parameter in inspect.signature(model.forward).parameters:
        if parameter in input_names:
            names.append(parameter)
        elif parameter == "past_key_values":
            names.extend(past_names(model.config.num_hidden_layers))
    return names


class DecoderWithPast(torch.nn.Module):
    """A causal LM called with the graph's inputs as positional tensors (past flat), returning the logits and flat presents."""

    def __init__(self, model, graph_inputs: Sequence[str]):
        super().__init__()
        self.model, self.graph_inputs = model, list(graph_inputs)

    def forward(self, *inputs):
        from transformers import DynamicCache

        named = dict(zip(self.graph_inputs, inputs))
        past = [named.pop(name) for name in self.graph_inputs if is_past_input(name)]
        cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        outputs = self.model(**named, past_key_values=cache, use_cache=True)
        presents = [tensor for layer in outputs.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (outputs.logits, *presents)


def export_decoder_with_past(model, input_names: Sequence[str], opset: Optional[int]):
    """Trace ``model`` with a KV cache through the dynamo exporter; return the ONNX program (not yet saved).

    The sample has batch 2, 3 new tokens and 5 past tokens: sizes above 1 keep every dynamic
    dimension symbolic (torch.export specialises sizes 0 and 1), and the graph computes the same
    for a past of length 0.
    """
    num_layers = model.config.num_hidden_layers
    kv_heads, head_dim = kv_cache_shape(model.config)
    batch, new, past_length = 2, 3, 5
    generator = torch.Generator().manual_seed(0)
    samples = {
        "input_ids": torch.randint(0, model.config.vocab_size, (batch, new), generator=generator),
        "attention_mask": torch.ones(batch, past_length + new, dtype=torch.long),
        "position_ids": torch.arange(past_length, past_length + new).expand(batch, new).contiguous(),
    }
    for name in past_names(num_layers):
        samples[name] = torch.randn(batch, kv_heads, past_length, head_dim, generator=generator)
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "attention_mask": {0: "batch_size", 1: torch.export.Dim.DYNAMIC},
            "position_ids": {0: "batch_size", 1: "sequence_length"}}
    graph_inputs = graph_input_names(model, input_names)
    program = torch.onnx.export(
        DecoderWithPast(model, graph_inputs).eval(), tuple(samples[n] for n in graph_inputs), dynamo=True, input_names=graph_inputs,
        output_names=["logits", *past_names(num_layers, PRESENT_PREFIX)], opset_version=opset, verbose=False,
        dynamic_shapes=(tuple(PAST_AXES if is_past_input(n) else axes[n] for n in graph_inputs),),
    )
    _name_total_length(program.model.graph)
    return program


def _name_total_length(graph) -> None:
    """Give the attention mask's and presents' length Optimum's name (torch calls it s<N>, or the sum in another order)."""
    import onnx_ir as ir

    for value in graph.inputs:
        if value.name == "attention_mask":
            value.shape = ir.Shape([value.shape[0], TOTAL_LENGTH])
    for value in graph.outputs:
        if value.name.startswith(PRESENT_PREFIX):
            value.shape = ir.Shape([value.shape[0], value.shape[1], TOTAL_LENGTH, value.shape[3]])
