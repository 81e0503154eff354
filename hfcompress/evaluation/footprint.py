"""What a model costs to store: parameter count, size on disk, zipped size and weight sparsity.

Sparsity is the share of exactly-zero weights in the linear layers (``nn.Linear`` and GPT-2's
``Conv1D``; in ONNX, the weight matrices of MatMul/Gemm nodes, quantized ones compared with their
zero point). Unstructured sparsity does not make a dense weights file smaller, but it does make it
compress: ``zipped_size_mb`` is the zip-deflate size of the weights file(s), which is what such a
model costs to download.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..utils.hashing import weight_files

# ONNX ops whose second input is a weight matrix, and ops that sit between an initializer and them
_MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_PASS_THROUGH_OPS = {"DequantizeLinear", "Transpose", "Cast"}
_WEIGHT_DTYPES = {"float32", "float16", "bfloat16", "float64", "int8", "uint8", "int4", "uint4"}


def zipped_size_bytes(files: Iterable[Path], chunk: int = 1 << 22) -> int:
    """Bytes of the files compressed with zip's deflate (level 6), streamed without writing a zip."""
    total = 0
    for path in files:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate, as stored in a .zip entry
        with open(path, "rb") as f:
            while block := f.read(chunk):
                total += len(compressor.compress(block))
        total += len(compressor.flush())
    return total


def files_footprint(files: list[Path]) -> dict:
    return {
        "size_mb": round(sum(p.stat().st_size for p in files) / 1e6, 3),
        "zipped_size_mb": round(zipped_size_bytes(files) / 1e6, 3),
    }


def linear_weight_sparsity(model) -> float:
    """Share of exactly-zero entries over all linear-layer weight matrices of a PyTorch model."""
    import torch
    from transformers.pytorch_utils import Conv1D

    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return round(zeros / total, 6) if total else 0.0


def pytorch_footprint(model, directory: Optional[str | os.PathLike] = None) -> dict:
    """Parameters, sparsity and the size of the weights files (``directory``'s, or the model saved to a temporary one)."""
    result = {"num_parameters": int(model.num_parameters()), "sparsity": linear_weight_sparsity(model)}
    if directory is not None and Path(directory).is_dir() and weight_files(directory):
        return {**result, **files_footprint(weight_files(directory))}
    with tempfile.TemporaryDirectory(prefix="hfc-size-") as tmp:
        model.save_pretrained(tmp)
        return {**result, **files_footprint(weight_files(tmp))}


def onnx_footprint(onnx_path: str | os.PathLike) -> dict:
    """Parameters (elements of the weight initializers), linear-weight sparsity and size of an ONNX model with its external data."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name], base_dir=str(onnx_path.parent))

    num_parameters = sum(
        int(np.prod(t.dims)) for t in graph.initializer if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name in _WEIGHT_DTYPES
    )
    zeros = total = 0
    for name, zero_point in _matmul_weights(graph, initializers):
        weight = array(name)
        if weight.ndim != 2:
            continue
        zp = array(zero_point[0]) if zero_point and zero_point[0] in initializers else np.zeros((), weight.dtype)
        if zp.ndim == 1 and zp.size == weight.shape[zero_point[1]] and zero_point[1] == 0:
            zp = zp[:, None]  # per-row zero point (DequantizeLinear axis=0)
        zeros += int((weight == zp).sum())
        total += weight.size
    return {
        "num_parameters": num_parameters,
        "sparsity": round(zeros / total, 6) if total else 0.0,
        **files_footprint(onnx_files_of(onnx_path, graph)),
    }


def onnx_files_of(onnx_path: str | os.PathLike, graph=None) -> list[Path]:
    """An ONNX model file and the external data files its initializers point to."""
    import onnx

    onnx_path = Path(onnx_path)
    graph = graph if graph is not None else onnx.load(str(onnx_path), load_external_data=False).graph
    external = {
        onnx_path.parent / entry.value
        for t in graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    return [onnx_path, *sorted(external)]


def _matmul_weights(graph, initializers) -> list[tuple[str, Optional[tuple[str, int]]]]:
    """(initializer name, (zero-point initializer name, axis) or None) for each weight matrix of a MatMul-like node."""
    producers = {out: node for node in graph.node for out in node.output}
    found: dict[str, Optional[tuple[str, int]]] = {}
    for node in graph.node:
        if node.op_type not in _MATMUL_OPS:
            continue
        for position, name in enumerate(node.input):
            zero_point = None
            if node.op_type == "MatMulInteger" and position == 1 and len(node.input) > 3:
                zero_point = (node.input[3], -1)
            producer = producers.get(name)
            while producer is not None and producer.op_type in _PASS_THROUGH_OPS and name not in initializers:
                if producer.op_type == "DequantizeLinear" and len(producer.input) > 2:
                    axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
                    zero_point = (producer.input[2], axis)
                name = producer.input[0]
                producer = producers.get(name)
            if name in initializers and len(initializers[name].dims) == 2:
                found.setdefault(name, zero_point)
    return list(found.items())
