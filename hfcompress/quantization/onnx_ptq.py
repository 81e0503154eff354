"""Post-training int8 quantization of an ONNX export with ``onnxruntime.quantization``.

The presets are Optimum's ``AutoQuantizationConfig.<preset>`` settings, spelled out for
``quantize_dynamic``/``quantize_static`` (:func:`ort_quantizer_arguments`), so the graphs are the ones
Optimum's ORTQuantizer writes (tests/test_optimum_parity.py) without needing Optimum.

Dynamic mode quantizes weights ahead of time and activations per batch at run time (MatMulInteger).
Static mode calibrates activation ranges on examples drawn from a dataset split (MinMax, Percentile
or Entropy) and writes a QDQ graph, by default trimmed to the Linear layers' inputs and weights (what
QAT simulates; :func:`keep_linear_input_qdq`); ranges learned by QAT (``qat_ranges.safetensors`` beside the
model) replace the calibrated ranges of the Linear layers' (and Convs') inputs (ONNX Runtime's ``TensorQuantOverrides``),
so the shipped model uses the ranges it was trained with.

A graph with Conv nodes (a CNN) is pre-processed by ONNX Runtime first (``quant_pre_process``: shape
inference, BatchNormalization folded into the Conv before it), every operator ONNX Runtime quantizes
is quantized, and the QDQ graph is kept as ONNX Runtime writes it, so that it runs as QLinearConv;
:func:`check_conv_qdq` verifies the result. Dynamic quantization covers MatMul/Gemm only and is refused
for graphs whose weights are mostly in Convs (:func:`check_dynamic_fits`).
"""

from __future__ import annotations

import ast
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..data import TaskData
from ..errors import ConfigError, DataError, ModelError
from ..modeling import load_processor
from ..utils.disk import check_free_space, model_bytes
from ..utils.io import atomic_output_dir
from .config import PTQConfig, write_quantization_report
from .qat import load_qat_ranges
from ..export.decoder import empty_graph_past, is_past_input
from ..generation.genai import carry_genai_config
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


def weights_by_op_type(onnx_path: Path) -> dict[str, int]:
    """Number of weight values (initializers read by the node) per operator type."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + sum(sizes.get(name, 0) for name in node.input[1:])
    return counts


def is_convolutional(onnx_path: Path) -> bool:
    """The graph has Conv nodes (a CNN, or a conv stem)."""
    import onnx

    return any(node.op_type == "Conv" for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def check_dynamic_fits(onnx_path: Path) -> None:
    """Refuse dynamic int8 for a graph whose weights are mostly in Conv layers: it would quantize none of them.

    ONNX Runtime's dynamic quantization has integer kernels for MatMul/Gemm (and Attention, LSTM)
    only; Convs stay fp32, so a CNN would come out barely smaller and no faster while labelled int8.
    A graph with a conv stem and mostly MatMul weights (a ViT) is quantized, with a warning.
    """
    counts = weights_by_op_type(onnx_path)
    conv, total = counts.get("Conv", 0), sum(counts.values())
    if conv == 0:
        return
    share = conv / max(total, 1)
    if share > 0.5:
        raise ConfigError(
            f"dynamic int8 quantizes MatMul/Gemm only, and {share:.0%} of the weights of {onnx_path.name} are in Conv layers, which would stay fp32: "
            "set mode: static with a calibration split (calibration_method, calibration_samples)"
        )
    logger.warning("hfcompress: dynamic int8 leaves the Conv layers of %s in fp32 (%.0f%% of its weights); mode: static quantizes them", onnx_path.name, 100 * share)


def check_conv_qdq(onnx_path: Path, excluded: list[str]) -> int:
    """Check that a static CNN graph has no BatchNormalization left and every Conv reads dequantized int8 input and weight.

    Returns the number of quantized Convs; raises ModelError naming a Conv ONNX Runtime left in float.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    if any(node.op_type == "BatchNormalization" for node in graph.node):
        raise ModelError(f"{onnx_path.name} still has BatchNormalization nodes after ONNX Runtime's pre-processing: export the model in eval mode")
    convs = [node for node in graph.node if node.op_type == "Conv" and node.name not in excluded]
    float_convs = [node.name for node in convs if any(producer.get(name) != "DequantizeLinear" for name in node.input[:2])]
    if float_convs:
        raise ModelError(f"{len(float_convs)} Conv nodes of {onnx_path.name} were left in float (e.g. {float_convs[0]}): check operators and exclude_nodes")
    return len(convs)


def ort_quantizer_arguments(config: PTQConfig, onnx_path: Optional[Path] = None) -> dict:
    """Keyword arguments of ``onnxruntime.quantization.quantize_dynamic`` (or ``quantize_static``) for ``config``.

    They are what Optimum's ``AutoQuantizationConfig.<preset>`` hands ONNX Runtime, derived from the
    config's :func:`~hfcompress.quantization.config.ort_scheme` (what QAT simulates); ``onnx_path``
    names the attention MatMuls to leave in fp32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    scheme = config.scheme
    exclude = list(config.exclude_nodes)
    if onnx_path is not None and not config.quantize_attention_matmuls:
        exclude += attention_matmuls(onnx_path)
    tensorrt = config.preset == "tensorrt"

    def qtype(grid) -> QuantType:
        return QuantType.QUInt8 if grid.dtype == "uint8" else QuantType.QInt8

    arguments = dict(
        op_types_to_quantize=config.operator_types(convolutional=onnx_path is not None and is_convolutional(onnx_path)),
        per_channel=scheme.per_channel,
        reduce_range=False,  # every preset uses the full 8-bit range
        weight_type=qtype(scheme.weights),
        nodes_to_exclude=exclude,
        extra_options={
            "WeightSymmetric": scheme.weights.symmetric,
            "ActivationSymmetric": scheme.activations.symmetric,
            "ForceSymmetric": scheme.weights.symmetric and scheme.activations.symmetric,
            "EnableSubgraph": onnx_path is not None and has_subgraphs(onnx_path),
            # TensorRT wants a Q/DQ pair on every weight and a dedicated pair per consumer
            "AddQDQPairToWeight": tensorrt,
            "DedicatedQDQPair": tensorrt,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            # quantize_dynamic would skip activation-by-activation MatMuls; attention_matmuls() decides that instead
            "MatMulConstBOnly": False,
        },
    )
    if config.mode == "static":
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
        arguments.update(quant_format=QuantFormat.QDQ, activation_type=qtype(scheme.activations), calibrate_method=methods[config.calibration_method])
        # the calibrators' settings as Optimum's AutoCalibrationConfig sets them (histogram bins: ONNX Runtime's defaults, the same)
        arguments["extra_options"].update(CalibTensorRangeSymmetric=False, CalibMovingAverage=False, CalibMovingAverageConstant=0.01)
        if config.calibration_method == "percentile":
            arguments["extra_options"]["CalibPercentile"] = config.percentile
    return arguments


def describe_arguments(function: str, arguments: dict) -> dict:
    """``arguments`` as JSON for quantization.json: ONNX Runtime's enums by name."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return getattr(value, "name", value)

    return {"function": f"onnxruntime.quantization.{function}", **plain(arguments)}


def has_subgraphs(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type in ("If", "Loop", "Scan", "SequenceMap") for node in graph.node)


def find_onnx_file(directory: Path) -> Optional[Path]:
    files = sorted(directory.glob("*.onnx"))
    preferred = [f for f in files if f.name == "model.onnx"]
    return (preferred or files or [None])[0]


def calibration_features(data: TaskData, tokenizer, config: PTQConfig, seed: int, input_names: list[str]) -> dict[str, list]:
    """A seeded random subset of ``config.calibration_split`` (default: the training split), as the graph's inputs.

    The task tokenizes it as the model was trained (pairs, pre-split words) and only the inputs the
    ONNX graph has are kept, padded to the longest row: the histogram calibrators need equal shapes.
    """
    split = config.calibration_split or data.cfg.train_split
    if split not in data.raw:
        raise DataError(f"calibration split '{split}' is not loaded (splits: {sorted(data.raw)}): set calibration_split to one of them")
    raw = data.raw[split].shuffle(seed=seed).select(range(min(config.calibration_samples, len(data.raw[split]))))
    return data.task.calibration_features(raw, tokenizer, data.cfg, input_names)


def calibration_reader(features: dict[str, list], onnx_path: Path):
    """An ONNX Runtime CalibrationDataReader feeding ``features`` one row at a time, in the graph inputs' dtypes."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype
    from onnxruntime.quantization import CalibrationDataReader

    graph_inputs = onnx.load(str(onnx_path), load_external_data=False).graph.input
    dtypes = {i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in graph_inputs}
    empty = empty_graph_past(graph_inputs)  # a decoder's past keys and values are empty: each row calibrates the prefill

    class RowReader(CalibrationDataReader):
        def __init__(self):
            rows = len(next(iter(features.values())))
            self.batches = iter([{**empty, **{name: np.asarray(column[i : i + 1], dtype=dtypes[name]) for name, column in features.items()}} for i in range(rows)])

        def get_next(self):
            return next(self.batches, None)

    return RowReader()


# The aten ops whose ONNX node computes a weight layer: a Linear as MatMul/Gemm; a Conv2d as Conv.
WEIGHT_LAYER_ATEN_OPS = {"MatMul": ("aten.linear.default",), "Gemm": ("aten.linear.default",), "Conv": ("aten.conv2d.default", "aten.convolution.default")}


def module_of(node) -> Optional[str]:
    """The PyTorch module path a MatMul/Gemm (Linear) or Conv (Conv2d) node computes, or None.

    The dynamo exporter records the module scopes in the node's metadata (its node names say nothing);
    Optimum's (TorchScript) exporter names the node after the path: ``/bert/encoder/layer.0/attention/self/query/MatMul``.
    """
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        # the innermost scope is the aten op; the module calling it is the layer
        return scopes[-2] if len(scopes) >= 2 and classes[-1:] and classes[-1] in WEIGHT_LAYER_ATEN_OPS.get(node.op_type, ()) else None
    if node.name.startswith("/"):
        return node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
    return None


def linear_input_tensors(onnx_path: Path) -> dict[str, str]:
    """Map the module path of each Linear (or Conv2d) layer in the graph to the ONNX tensor feeding its MatMul/Gemm (or Conv).

    Paths are as the exporter saw them: the dynamo exporter's start with its wrapper's attribute (``model.bert...``).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = {}
    for node in graph.node:
        module = module_of(node) if node.op_type in WEIGHT_LAYER_ATEN_OPS else None
        if node.op_type == "Conv" and node.input[1] in weights and node.input[1].endswith(".weight"):
            # the dynamo exporter folds an eval BatchNorm into the Conv before it (the node then carries the BatchNorm's
            # scope) and keeps the conv's parameter name on the folded weight
            module = node.input[1][: -len(".weight")]
        if module is not None:
            inputs[module] = node.input[0]
    return inputs


def qat_range_overrides(qat: dict[str, tuple[float, float]], tensor_of_module: dict[str, str]) -> tuple[dict, list[str]]:
    """ONNX Runtime ``TensorQuantOverrides`` giving the tensors that feed QAT layers their QAT ranges, and the QAT layers found in no node.

    A graph module matches the QAT layer whose name is its longest dotted suffix (the exporter may wrap
    the model, prefixing every path).
    """
    per_tensor: dict[str, tuple[float, float]] = {}
    used = set()
    for path, tensor in tensor_of_module.items():
        matches = [name for name in qat if path == name or path.endswith(f".{name}")]
        if not matches:
            continue
        name = max(matches, key=len)
        used.add(name)
        lo, hi = qat[name]
        old = per_tensor.get(tensor, (lo, hi))
        per_tensor[tensor] = (min(lo, old[0]), max(hi, old[1]))  # q/k/v share their input: cover all three
    overrides = {
        tensor: [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}] for tensor, (lo, hi) in per_tensor.items()
    }
    return overrides, sorted(set(qat) - used)


# ONNX Runtime's QDQ quantizer gives these operators' output the quantization of their input (MaxPool, and the
# 8-bit data movers), so a range meant for their output must be set on their input.
RANGE_SHARING_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def share_ranges_upstream(overrides: dict, onnx_path: Path) -> dict:
    """``overrides`` plus, for each tensor made by a range-sharing operator, the same range on that operator's input."""
    producer = {out: node for node in _graph_nodes(onnx_path) for out in node.output}
    shared = dict(overrides)
    for tensor, ranges in overrides.items():
        node = producer.get(tensor)
        while node is not None and node.op_type in RANGE_SHARING_OPS and node.input[0] not in shared:
            shared[node.input[0]] = ranges
            node = producer.get(node.input[0])
    return shared


def keep_linear_input_qdq(onnx_path: Path, other_consumers_float: bool = True) -> int:
    """Rewrite a static QDQ graph, in place, to compute what QAT simulates: quantized Linear inputs and weights, float elsewhere.

    ONNX Runtime's QDQ quantizer also requantizes every MatMul/Gemm output (the logits included) and hands
    the dequantized copy of a Linear input to all of that tensor's consumers, residual additions included.
    Here every consumer of an activation's DequantizeLinear other than a MatMul/Gemm reads the float tensor
    again, and the Q/DQ pairs left without a consumer are removed (ONNX Runtime then runs the Linear layers
    as integer MatMuls with a float output). Quantized embedding lookups (DQ -> Gather) are left as they are.
    With ``other_consumers_float=False`` only the graph outputs go back to float (a CNN, whose Conv outputs
    ONNX Runtime needs quantized to run QLinearConv, keeps float logits: requantizing them with calibrated
    ranges clips every logit beyond the calibration's). Returns the number of node inputs moved back to float.
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
        for node in graph.node if other_consumers_float else ():
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


def qdq_layout(linear_inputs_only: bool, convolutional: bool) -> str:
    """How the static graph's Q/DQ were left, for quantization.json."""
    if linear_inputs_only:
        return "linear inputs only"
    return "onnxruntime, float outputs" if convolutional else "onnxruntime"


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


def static_calibration(
    onnx_file: Path, calibration_file: Path, quantized: Path, arguments: dict, features: dict, config: PTQConfig, source: Path
) -> dict:
    """Calibrate and write the static QDQ graph of ``calibration_file`` (``onnx_file`` pre-processed, or itself); returns what the calibration used.

    Ranges learned by QAT, saved beside ``source``, replace the calibrated ranges of the inputs of the
    layers they name (found through ``onnx_file``'s module scopes).
    """
    from onnxruntime.quantization import quantize_static

    qat = load_qat_ranges(source) if config.qat_ranges and source.is_dir() else None
    qat_used, unmatched = 0, []
    if qat:
        overrides, unmatched = qat_range_overrides(qat, linear_input_tensors(onnx_file))
        present = set(onnx_input_names(calibration_file)) | {out for node in _graph_nodes(calibration_file) for out in node.output}
        overrides = {tensor: ranges for tensor, ranges in overrides.items() if tensor in present}
        if not overrides:
            raise ModelError(
                f"none of the {len(qat)} QAT ranges in {source} names a Linear or Conv layer of {onnx_file.name} (e.g. {sorted(qat)[0]}): "
                "re-export the QAT checkpoint with hfcompress export, or set qat_ranges: false to calibrate every range"
            )
        if unmatched:
            logger.warning("hfcompress: %d QAT layers have no MatMul/Gemm/Conv in %s and keep calibrated ranges: %s", len(unmatched), onnx_file.name, unmatched)
        arguments["extra_options"]["TensorQuantOverrides"] = share_ranges_upstream(overrides, calibration_file)
        qat_used = len(overrides)
        logger.info("hfcompress: %d activation ranges taken from QAT (%s)", qat_used, source)
    quantize_static(calibration_file, quantized, calibration_reader(features, calibration_file), **arguments)
    arguments["extra_options"].pop("TensorQuantOverrides", None)  # recorded as qat_ranges_used
    return {
        "method": config.calibration_method,
        "samples": len(next(iter(features.values()))),
        **({"percentile": config.percentile} if config.calibration_method == "percentile" else {}),
        "qat_ranges_used": qat_used,
        **({"qat_layers_unmatched": unmatched} if unmatched else {}),
    }


def _graph_nodes(onnx_path: Path):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.node


def quantize_onnx(
    model: str | Path,
    output_dir: str | Path,
    config: Optional[PTQConfig] = None,
    data: Optional[TaskData] = None,
    seed: int = 42,
    overwrite: bool = False,
    calibration_inputs: Optional[dict[str, np.ndarray]] = None,
) -> Path:
    """Quantize ``model`` (a directory with an ``.onnx`` file, or a PyTorch checkpoint directory/Hub id, exported first).

    Writes ``output_dir/model_quantized.onnx`` with the config, the tokenizer or image processor (and a
    causal LM's generation config) and ``quantization.json`` (the scheme, the calibration and ONNX Runtime's
    quantizer arguments); returns the path of the ``.onnx`` file. Static mode calibrates on ``data`` (a seeded
    subset of a split, prepared by its task) or on ``calibration_inputs`` (arrays by graph input name, e.g.
    ``{"pixel_values": images}`` with images float32 ``[N, 3, H, W]``, used as given). Mode ``weight_only``
    writes int4/int8 MatMulNBits weights (:mod:`~hfcompress.quantization.weight_only`); its GPTQ calibrates on ``data``.
    """
    from transformers import AutoConfig

    config = config or PTQConfig()
    model = Path(str(model))
    if config.mode == "static" and data is None and calibration_inputs is None:
        raise ConfigError(
            "static quantization needs calibration data: pass data=TaskData(...) (a recipe's data) or calibration_inputs={input name: array}, or use mode='dynamic'"
        )
    output_dir = Path(output_dir)
    onnx_file = find_onnx_file(model) if model.is_dir() else None
    # the quantized graph is smaller than its input; a PyTorch checkpoint is exported to a float32 graph first
    check_free_space(output_dir, model_bytes(model) * (1 if onnx_file else 2), f"quantizing {model}")
    with tempfile.TemporaryDirectory(prefix="hfc-ptq-") as work, atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        source = model
        if onnx_file is None:
            from ..export import export_onnx

            onnx_file = export_onnx(model, Path(work) / "onnx")
        onnx_dir = onnx_file.parent
        try:
            model_config = AutoConfig.from_pretrained(onnx_dir)
        except (OSError, ValueError) as e:
            raise ModelError(f"{onnx_dir} has no readable config beside {onnx_file.name} ({str(e).splitlines()[0][:160]}): export with hfcompress export, which writes it") from e
        preprocessor = load_processor(str(onnx_dir))
        quantized = staging / f"{onnx_file.stem}_quantized.onnx"
        if config.mode == "weight_only":
            from .weight_only import quantize_weight_only

            details = quantize_weight_only(onnx_file, quantized, config, data, preprocessor, model_config, seed)
        else:
            details = _quantize_int8(onnx_file, quantized, Path(work), config, data, calibration_inputs, preprocessor, seed, source, output_dir)
        model_config.save_pretrained(staging)
        preprocessor.save_pretrained(staging)
        if (onnx_dir / "generation_config.json").is_file():  # what generation reads beside a causal LM's graph
            shutil.copy2(onnx_dir / "generation_config.json", staging)
        carry_genai_config(onnx_dir, staging, quantized.name)
        write_quantization_report(staging, {**details, "onnx_file": quantized.name, "source": str(source)})
    return output_dir / quantized.name


def _quantize_int8(
    onnx_file: Path, quantized: Path, work: Path, config: PTQConfig, data, calibration_inputs, preprocessor, seed: int, source: Path, output_dir: Path
) -> dict:
    """Write the dynamic or static int8 graph of ``onnx_file`` to ``quantized``; returns what quantization.json records."""
    from onnxruntime.quantization import quantize_dynamic

    convolutional = is_convolutional(onnx_file)
    if config.mode == "dynamic":
        check_dynamic_fits(onnx_file)
    elif convolutional and config.preset == "tensorrt":
        raise ConfigError("preset 'tensorrt' writes trtexec shapes for text inputs; for a CNN graph use a CPU preset (or 'auto')")
    arguments = ort_quantizer_arguments(config, onnx_file)
    calibration = None
    if config.mode == "static":
        to_calibrate = onnx_file
        if convolutional:  # folds BatchNormalization into the Conv before it and infers shapes, as ONNX Runtime advises for CNNs
            from onnxruntime.quantization.shape_inference import quant_pre_process

            to_calibrate = work / f"{onnx_file.stem}_preprocessed.onnx"
            quant_pre_process(str(onnx_file), str(to_calibrate))
        if calibration_inputs is not None:
            features, origin = {name: np.asarray(array) for name, array in calibration_inputs.items()}, {"split": "given arrays"}
        else:
            features = calibration_features(data, preprocessor, config, seed, [n for n in onnx_input_names(onnx_file) if not is_past_input(n)])
            origin = {"split": config.calibration_split or data.cfg.train_split, "seed": seed}
        calibration = {**static_calibration(onnx_file, to_calibrate, quantized, arguments, features, config, source), **origin}
        if convolutional:
            calibration["preprocessing"] = "onnxruntime.quantization.shape_inference.quant_pre_process (BatchNormalization folded into Conv)"
    else:
        quantize_dynamic(onnx_file, quantized, **arguments)
    if not quantized.is_file():
        raise ModelError(f"ONNX Runtime wrote no quantized model for {onnx_file}: check the export")
    convs_quantized = check_conv_qdq(quantized, arguments["nodes_to_exclude"]) if convolutional and config.mode == "static" else None
    linear_inputs_only = config.mode == "static" and config.preset != "tensorrt" and config.linear_inputs_only and not convolutional
    if linear_inputs_only or (convolutional and config.mode == "static"):
        keep_linear_input_qdq(quantized, other_consumers_float=linear_inputs_only)
    if config.quantize_embeddings and config.embedding_bits == 4:
        quantize_embeddings_4bit(quantized, config.embedding_block_size)
    tensorrt = None
    if config.preset == "tensorrt":
        restore_float_biases(quantized)
        tensorrt = {
            **check_tensorrt_qdq(quantized),
            "trtexec": trtexec_command(output_dir / quantized.name, max_length=data.cfg.max_length, input_names=onnx_input_names(quantized)),
            "onnxruntime_provider_options": tensorrt_provider_options(),
        }
    return {
        "method": config.mode,
        **config.scheme.describe(),
        "preset": config.preset,
        **({"preset_reason": config.preset_reason} if config.preset_reason else {}),
        "calibration": calibration,
        "operators": list(arguments["op_types_to_quantize"]),
        **({"convs_quantized": convs_quantized} if convs_quantized is not None else {}),
        "embeddings_quantized": config.quantize_embeddings,
        **({"embedding_bits": config.embedding_bits, "embedding_block_size": config.embedding_block_size} if config.quantize_embeddings else {}),
        "attention_matmuls_quantized": config.quantize_attention_matmuls,
        **({"qdq": qdq_layout(linear_inputs_only, convolutional)} if config.mode == "static" else {}),
        "quantizer": describe_arguments(f"quantize_{config.mode}", arguments),
        **({"tensorrt": tensorrt} if tensorrt else {}),
    }
