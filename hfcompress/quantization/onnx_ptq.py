"""Post-training int8 quantization of an ONNX export with ONNX Runtime, through Optimum's ORTQuantizer.

Dynamic mode quantizes weights ahead of time and activations per batch at run time (MatMulInteger).
Static mode calibrates activation ranges on examples drawn from a dataset split (MinMax, Percentile
or Entropy) and writes a QDQ graph, by default trimmed to the Linear layers' inputs and weights (what
QAT simulates; :func:`keep_linear_input_qdq`); ranges learned by QAT (``qat_ranges.safetensors`` beside the
model) replace the calibrated ranges of the Linear layers' inputs, so the shipped model uses the
ranges it was trained with.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..data import TaskData
from ..errors import ConfigError, DataError, ModelError
from ..utils.io import atomic_output_dir
from .config import PTQConfig, write_quantization_report
from .qat import load_qat_ranges
from .tensorrt import check_tensorrt_qdq, onnx_input_names, restore_float_biases, tensorrt_provider_options, trtexec_command

logger = logging.getLogger("hfcompress")


def attention_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes whose inputs are both activations (attention scores and context), not a Linear layer's weight."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def from_weight(name: str) -> bool:  # the exporter may put a Transpose/Identity between the initializer and the MatMul
        while name not in weights and name in producer and producer[name].op_type in ("Transpose", "Identity", "Cast"):
            name = producer[name].input[0]
        return name in weights

    return [node.name for node in graph.node if node.op_type == "MatMul" and not any(from_weight(i) for i in node.input)]


def optimum_quantization_config(config: PTQConfig, onnx_path: Optional[Path] = None):
    """Optimum's ``AutoQuantizationConfig.<preset>`` for ``config`` (``onnx_path`` names the attention MatMuls to leave in fp32)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    exclude = list(config.exclude_nodes)
    if onnx_path is not None and not config.quantize_attention_matmuls:
        exclude += attention_matmuls(onnx_path)
    kwargs = dict(per_channel=config.per_channel, operators_to_quantize=config.operator_types(), nodes_to_exclude=exclude)
    if config.preset == "tensorrt":
        return AutoQuantizationConfig.tensorrt(**kwargs)
    return getattr(AutoQuantizationConfig, config.preset)(is_static=config.mode == "static", **kwargs)


def find_onnx_file(directory: Path) -> Optional[Path]:
    files = sorted(directory.glob("*.onnx"))
    preferred = [f for f in files if f.name == "model.onnx"]
    return (preferred or files or [None])[0]


def calibration_dataset(data: TaskData, tokenizer, config: PTQConfig, seed: int, input_names: list[str]):
    """A seeded random subset of ``config.calibration_split`` (default: the training split), as the graph's inputs.

    The task tokenizes it as the model was trained (pairs, pre-split words) and only the inputs the
    ONNX graph has are kept, padded to the longest row: the histogram calibrators need equal shapes.
    """
    import datasets

    split = config.calibration_split or data.cfg.train_split
    if split not in data.raw:
        raise DataError(f"calibration split '{split}' is not loaded (splits: {sorted(data.raw)}): set calibration_split to one of them")
    raw = data.raw[split].shuffle(seed=seed).select(range(min(config.calibration_samples, len(data.raw[split]))))
    return datasets.Dataset.from_dict(data.task.calibration_features(raw, tokenizer, data.cfg, input_names))


def calibration_config(dataset, config: PTQConfig):
    from optimum.onnxruntime.configuration import AutoCalibrationConfig

    if config.calibration_method == "minmax":
        return AutoCalibrationConfig.minmax(dataset)
    if config.calibration_method == "percentile":
        return AutoCalibrationConfig.percentiles(dataset, percentile=config.percentile)
    return AutoCalibrationConfig.entropy(dataset)


def linear_input_tensors(onnx_path: Path) -> dict[str, str]:
    """Map PyTorch Linear module names to the ONNX tensor feeding their MatMul/Gemm.

    Optimum's exporter names nodes after the module path: ``/bert/encoder/layer.0/attention/self/query/MatMul``
    is module ``bert.encoder.layer.0.attention.self.query``.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.name.startswith("/"):
            module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            inputs[module] = node.input[0]
    return inputs


def apply_qat_ranges(ranges, qat: dict[str, tuple[float, float]], tensor_of_module: dict[str, str]) -> int:
    """Replace calibrated ranges by QAT ranges for the tensors feeding QAT layers; returns how many were replaced."""
    from onnxruntime.quantization.calibrate import TensorData

    per_tensor: dict[str, tuple[float, float]] = {}
    for module, (lo, hi) in qat.items():
        tensor = tensor_of_module.get(module)
        if tensor is None:
            continue
        old = per_tensor.get(tensor, (lo, hi))
        per_tensor[tensor] = (min(lo, old[0]), max(hi, old[1]))  # q/k/v share their input: cover all three
    for tensor, (lo, hi) in per_tensor.items():
        ranges.data[tensor] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
    return len(per_tensor)


def keep_linear_input_qdq(onnx_path: Path) -> int:
    """Rewrite a static QDQ graph, in place, to compute what QAT simulates: quantized Linear inputs and weights, float elsewhere.

    ONNX Runtime's QDQ quantizer also requantizes every MatMul/Gemm output (the logits included) and hands
    the dequantized copy of a Linear input to all of that tensor's consumers, residual additions included.
    Here every consumer of an activation's DequantizeLinear other than a MatMul/Gemm reads the float tensor
    again, and the Q/DQ pairs left without a consumer are removed (ONNX Runtime then runs the Linear layers
    as integer MatMuls with a float output). Quantized embedding lookups (DQ -> Gather) are left as they are.
    Returns the number of node inputs moved back to float.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in initializers:
            continue  # a weight: stored quantized, dequantized directly
        float_name = q.input[0]
        if dq.output[0] in graph_outputs:  # e.g. requantized logits: the float producer takes over the output's name
            graph.node.remove(dq)
            source = producer[float_name]
            source.output[list(source.output).index(float_name)] = dq.output[0]
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if name == float_name:
                        node.input[i] = dq.output[0]
            rewired += 1
            continue  # the Q now has no consumer and is removed below
        for node in graph.node:
            if node.op_type in ("MatMul", "Gemm"):
                continue
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[i] = float_name
                    rewired += 1
    # drop Q/DQ nodes (and their scales) that nothing reads any more; DQ first, then the Q that fed it
    for op_type in ("DequantizeLinear", "QuantizeLinear"):
        used = {name for node in graph.node for name in node.input} | graph_outputs
        for node in [n for n in graph.node if n.op_type == op_type and not any(o in used for o in n.output)]:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return rewired


def quantize_embeddings_4bit(onnx_path: Path, block_size: int) -> int:
    """Rewrite every Gather of a constant table (the embeddings) as blockwise symmetric int4 GatherBlockQuantized, in place.

    Runs after the int8 pass: ONNX Runtime's int8 quantizer cannot infer types through the contrib op.
    Returns the number of tables quantized.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    algo = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),)
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(onnx_path)), algo_config=algo)
    quantizer.process()
    model = quantizer.model.model
    count = sum(node.op_type == "GatherBlockQuantized" for node in model.graph.node)
    if count == 0:
        raise ModelError(f"{onnx_path.name} has no embedding table (Gather of a constant) to quantize to 4 bits: use embedding_bits 8")
    onnx.save(model, str(onnx_path))
    return count


def quantize_onnx(
    model: str | Path,
    output_dir: str | Path,
    config: Optional[PTQConfig] = None,
    data: Optional[TaskData] = None,
    seed: int = 42,
    overwrite: bool = False,
) -> Path:
    """Quantize ``model`` (a directory with an ``.onnx`` file, or a PyTorch checkpoint directory/Hub id, exported first) to int8.

    Writes ``output_dir/model_quantized.onnx`` with the config, tokenizer, Optimum's ``ort_config.json``
    and ``quantization.json``; returns the path of the ``.onnx`` file. Static mode needs ``data``.
    """
    from optimum.onnxruntime import ORTQuantizer
    from transformers import AutoTokenizer

    config = config or PTQConfig()
    model = Path(str(model))
    if config.mode == "static" and data is None:
        raise ConfigError("static quantization needs calibration data: pass data=TaskData(...) (a recipe's data), or use mode='dynamic'")
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="hfc-ptq-") as work, atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        onnx_file = find_onnx_file(model) if model.is_dir() else None
        source = model
        if onnx_file is None:
            from ..export import export_onnx

            onnx_file = export_onnx(model, Path(work) / "onnx")
        onnx_dir = onnx_file.parent
        quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=onnx_file.name)
        ort_config = optimum_quantization_config(config, onnx_file)
        ranges, calibration, qat_used = None, None, 0
        if config.mode == "static":
            tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
            dataset = calibration_dataset(data, tokenizer, config, seed, onnx_input_names(onnx_file))
            ranges = quantizer.fit(
                dataset, calibration_config(dataset, config), onnx_augmented_model_name=Path(work) / "augmented.onnx",
                operators_to_quantize=ort_config.operators_to_quantize,
            )
            qat = load_qat_ranges(source) if config.qat_ranges and source.is_dir() else None
            if qat:
                qat_used = apply_qat_ranges(ranges, qat, linear_input_tensors(onnx_file))
                logger.info("hfcompress: %d activation ranges taken from QAT (%s)", qat_used, source)
            calibration = {
                "method": config.calibration_method,
                "split": config.calibration_split or data.cfg.train_split,
                "samples": len(dataset),
                "seed": seed,
                **({"percentile": config.percentile} if config.calibration_method == "percentile" else {}),
                "qat_ranges_used": qat_used,
            }
        quantizer.quantize(ort_config, save_dir=staging, calibration_tensors_range=ranges)
        quantized = staging / f"{onnx_file.stem}_quantized.onnx"
        if not quantized.is_file():
            raise ModelError(f"ONNX Runtime wrote no quantized model for {onnx_file}: check the export")
        linear_inputs_only = config.mode == "static" and config.preset != "tensorrt" and config.linear_inputs_only
        if linear_inputs_only:
            keep_linear_input_qdq(quantized)
        if config.quantize_embeddings and config.embedding_bits == 4:
            quantize_embeddings_4bit(quantized, config.embedding_block_size)
        tensorrt = None
        if config.preset == "tensorrt":
            restore_float_biases(quantized)
            tensorrt = {
                **check_tensorrt_qdq(quantized),
                "trtexec": trtexec_command(
                    output_dir / quantized.name, max_length=data.cfg.max_length, input_names=onnx_input_names(quantized)
                ),
                "onnxruntime_provider_options": tensorrt_provider_options(),
            }
        write_quantization_report(
            staging,
            {
                "method": config.mode,
                **config.scheme.describe(),
                "preset": config.preset,
                "calibration": calibration,
                "operators": list(ort_config.operators_to_quantize),
                "embeddings_quantized": config.quantize_embeddings,
                **({"embedding_bits": config.embedding_bits, "embedding_block_size": config.embedding_block_size} if config.quantize_embeddings else {}),
                "attention_matmuls_quantized": config.quantize_attention_matmuls,
                **({"qdq": "linear inputs only" if linear_inputs_only else "onnxruntime"} if config.mode == "static" else {}),
                "onnx_file": quantized.name,
                "source": str(source),
                **({"tensorrt": tensorrt} if tensorrt else {}),
            },
        )
    return output_dir / quantized.name
