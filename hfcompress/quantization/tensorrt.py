"""TensorRT-ready int8: a QDQ graph in the form TensorRT's explicit quantization consumes, and how to build the engine.

TensorRT wants symmetric int8 (zero point 0) QuantizeLinear/DequantizeLinear pairs on both inputs of
every quantized MatMul/Gemm, per-channel scales on weights, and no ONNX Runtime-only integer operators
(MatMulInteger, DynamicQuantizeLinear, QLinear*). Optimum's ``tensorrt`` preset (``PTQConfig(mode="static",
preset="tensorrt")``) writes such a graph; :func:`check_tensorrt_qdq` verifies it, and
:func:`trtexec_command` / :func:`tensorrt_provider_options` say how to build and run the engine.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import Optional

from ..errors import ModelError

ORT_ONLY_INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "QLinearAdd", "QAttention")
INT8 = 3  # onnx.TensorProto.INT8


def restore_float_biases(onnx_path: str | Path) -> int:
    """Replace ONNX Runtime's int32-quantized Gemm biases by their float values, in place; returns how many.

    TensorRT's Q/DQ support is int8 (and fp8/int4): an int32 DequantizeLinear on a bias does not parse,
    and TensorRT fuses the float bias into the int8 GEMM itself.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    replaced = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        if initializers[node.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        q = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        zero_point = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
        graph.initializer.append(numpy_helper.from_array(((q - zero_point) * scale).astype(np.float32), node.output[0]))
        replaced.append(node)
    for node in replaced:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for name in list(initializers):
        if name not in used and name in {n for node in replaced for n in node.input}:
            graph.initializer.remove(initializers[name])
    onnx.save(model, str(onnx_path))
    return len(replaced)


def check_tensorrt_qdq(onnx_path: str | Path) -> dict:
    """Check that an ONNX graph is explicit symmetric int8 QDQ as TensorRT consumes it; return what it found.

    Raises :class:`ModelError` naming the first problem.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    ops = Counter(node.op_type for node in graph.node)
    ort_only = sorted(op for op in ORT_ONLY_INTEGER_OPS if ops[op])
    if ort_only:
        raise ModelError(f"{onnx_path} has ONNX Runtime-only integer operators {ort_only}: quantize with mode='static', preset='tensorrt'")
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None or zero_point.data_type != INT8 or numpy_helper.to_array(zero_point).any():
            raise ModelError(f"{onnx_path}: {node.op_type} '{node.name}' is not symmetric int8 (zero point must be an int8 zero): use preset='tensorrt'")
    quantized, float_matmuls, per_channel = 0, [], 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        sources = [producer.get(name) for name in node.input[:2]]
        if not all(src is not None and src.op_type == "DequantizeLinear" for src in sources):
            float_matmuls.append(node.name)
            continue
        quantized += 1
        for src in sources:
            scale = initializers.get(src.input[1])
            if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
                per_channel += 1
    if quantized == 0:
        raise ModelError(f"{onnx_path} has no MatMul/Gemm fed by DequantizeLinear on both inputs: it is not a QDQ int8 graph")
    return {
        "quantized_matmuls": quantized,
        "float_matmuls": float_matmuls,
        "per_channel_weights": per_channel,
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
    }


def onnx_input_names(onnx_path: str | Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def trtexec_command(
    onnx_path: str | Path,
    engine_path: Optional[str | Path] = None,
    max_batch: int = 32,
    max_length: int = 128,
    opt_batch: int = 1,
    opt_length: int = 64,
    fp16: bool = True,
    input_names: Optional[list[str]] = None,
) -> str:
    """The ``trtexec`` line that builds an int8 engine from a QDQ graph with dynamic (batch, sequence) inputs.

    ``--int8`` lets TensorRT use the graph's explicit Q/DQ scales (no calibration cache is read);
    ``--fp16`` lets the layers left in floating point (softmax, layer norm) run in half precision.
    ``input_names`` default to the graph's inputs (read from ``onnx_path``).
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".plan")

    names = input_names if input_names is not None else onnx_input_names(onnx_path)

    def shapes(batch: int, length: int) -> str:
        return ",".join(f"{name}:{batch}x{length}" for name in names)

    parts = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--int8", *(["--fp16"] if fp16 else []),
        f"--minShapes={shapes(1, 1)}", f"--optShapes={shapes(opt_batch, opt_length)}", f"--maxShapes={shapes(max_batch, max_length)}",
    ]
    return " ".join(shlex.quote(p) for p in parts)


def tensorrt_provider_options(engine_cache_dir: str | Path = "trt_cache", fp16: bool = True) -> dict:
    """ONNX Runtime TensorRT execution-provider options for a QDQ int8 graph (scales come from the graph, no calibration table)."""
    return {
        "trt_int8_enable": True,
        "trt_int8_use_native_calibration_table": False,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_cache_dir),
    }


def build_tensorrt_engine(onnx_path: str | Path, engine_path: str | Path, max_batch: int = 32, max_length: int = 128) -> Path:
    """Build a serialized int8 engine with TensorRT's Python API (needs a GPU and the ``tensorrt`` package)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ModelError("building a TensorRT engine needs the 'tensorrt' package and an NVIDIA GPU: run the trtexec_command() line on such a machine") from e
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ModelError(f"TensorRT could not parse {onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, (1, 1), (1, min(64, max_length)), (max_batch, max_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path
