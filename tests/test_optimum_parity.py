"""Without Optimum, the same graphs as Optimum: ``quantize_onnx`` against ORTQuantizer, ``optimize_onnx`` against ORTOptimizer.

Both sides quantize (or optimise) the same export, from either exporter; the graphs must be node for
node the same, with equal initializers. Optimum's side is its documented API with the settings
hfcompress used to pass it.
"""

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hfcompress.data import DataConfig, TaskData
from hfcompress.export import export_onnx, optimize_onnx
from hfcompress.quantization import PTQConfig, QATConfig, quantize_onnx
from hfcompress.quantization.onnx_ptq import (
    attention_matmuls,
    calibration_features,
    keep_linear_input_qdq,
    linear_input_tensors,
    ort_quantizer_arguments,
    qat_range_overrides,
)
from hfcompress.quantization.qat import load_qat_ranges
from hfcompress.quantization.tensorrt import onnx_input_names, restore_float_biases

from tests.conftest import tiny_bert_config
from tests.test_quantization_ptq import save_fixed_qat_ranges

pytestmark = pytest.mark.requires_optimum

PRESET_MODES = [(p, m) for p in ("avx2", "avx512", "avx512_vnni", "arm64") for m in ("dynamic", "static")] + [("tensorrt", "static")]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer):
    """The tiny random BERT classifier, with the files QAT (avx2, static) saves beside it: every Linear input range [-8, 4]."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    out = tmp_path_factory.mktemp("tiny") / "checkpoint"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_fixed_qat_ranges(model, out)
    return out


@pytest.fixture(scope="module", params=["optimum", "dynamo"])
def onnx_dir(request, tiny_checkpoint, tmp_path_factory):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp(request.param) / "onnx", backend=request.param, batch_sizes=[2], sequence_lengths=[8]).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory, sst2_path):
    out = tmp_path_factory.mktemp("sst2")
    for name, rows in (("train.tsv", 64), ("dev.tsv", 16)):
        (out / name).write_text("\n".join((sst2_path / name).read_text().splitlines()[: rows + 1]) + "\n")
    return TaskData(DataConfig(path=str(out), eval_split="dev"))


def assert_same_graph(ours, theirs):
    """Node for node the same graph (names, inputs, outputs, attributes), the same inputs, outputs, opsets and initializers."""
    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    assert len(a.graph.node) == len(b.graph.node)
    for x, y in zip(a.graph.node, b.graph.node):
        assert x == y, f"first differing node: {x.name} ({x.op_type}) against {y.name} ({y.op_type})"
    assert list(a.graph.input) == list(b.graph.input) and list(a.graph.output) == list(b.graph.output)
    assert list(a.opset_import) == list(b.opset_import)
    tensors = [{t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in (a, b)]
    assert tensors[0].keys() == tensors[1].keys()
    for name, value in tensors[0].items():
        other = tensors[1][name]
        assert value.dtype == other.dtype and value.shape == other.shape and np.array_equal(value, other), name


def optimum_quantize(onnx_dir, out, config: PTQConfig, data=None, qat=None):
    """What quantize_onnx did through Optimum: ORTQuantizer with AutoQuantizationConfig.<preset>, then the same graph edits."""
    import datasets
    from onnxruntime.quantization.calibrate import TensorData
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
    from transformers import AutoTokenizer

    path = onnx_dir / "model.onnx"
    kwargs = dict(per_channel=config.per_channel, operators_to_quantize=config.operator_types(), nodes_to_exclude=attention_matmuls(path))
    if config.preset == "tensorrt":
        quantization = AutoQuantizationConfig.tensorrt(**kwargs)
    else:
        quantization = getattr(AutoQuantizationConfig, config.preset)(is_static=config.mode == "static", **kwargs)
    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    ranges = None
    if config.mode == "static":
        features = calibration_features(data, AutoTokenizer.from_pretrained(onnx_dir), config, 42, onnx_input_names(path))
        dataset = datasets.Dataset.from_dict(features)
        calibration = {
            "minmax": lambda: AutoCalibrationConfig.minmax(dataset),
            "percentile": lambda: AutoCalibrationConfig.percentiles(dataset, percentile=config.percentile),
            "entropy": lambda: AutoCalibrationConfig.entropy(dataset),
        }[config.calibration_method]()
        ranges = quantizer.fit(dataset, calibration, onnx_augmented_model_name=out.parent / "augmented.onnx",
                               operators_to_quantize=quantization.operators_to_quantize)
        if qat:  # what hfcompress did: edit the calibrated ranges of the tensors feeding QAT layers
            overrides, _ = qat_range_overrides(qat, linear_input_tensors(path))
            assert overrides
            for tensor, [override] in overrides.items():
                ranges.data[tensor] = TensorData(lowest=override["rmin"], highest=override["rmax"])
    quantizer.quantize(quantization, save_dir=out, calibration_tensors_range=ranges)
    quantized = out / "model_quantized.onnx"
    if config.preset == "tensorrt":
        restore_float_biases(quantized)
    elif config.mode == "static" and config.linear_inputs_only:
        keep_linear_input_qdq(quantized)
    return quantized


@pytest.mark.parametrize("preset, mode", PRESET_MODES)
def test_quantizer_arguments_are_optimums_preset(preset, mode):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = PTQConfig(preset=preset, mode=mode)
    ours = ort_quantizer_arguments(config)
    kwargs = dict(per_channel=config.per_channel, operators_to_quantize=config.operator_types())
    theirs = AutoQuantizationConfig.tensorrt(**kwargs) if preset == "tensorrt" else getattr(AutoQuantizationConfig, preset)(is_static=mode == "static", **kwargs)
    extra = ours["extra_options"]
    assert ours["weight_type"] == theirs.weights_dtype and extra["WeightSymmetric"] == theirs.weights_symmetric
    assert ours.get("activation_type", theirs.activations_dtype) == theirs.activations_dtype  # dynamic: always uint8
    assert extra["ActivationSymmetric"] == theirs.activations_symmetric and extra["ForceSymmetric"] == theirs.use_symmetric_calibration
    assert ours["per_channel"] == theirs.per_channel and ours["reduce_range"] == theirs.reduce_range
    assert ("quant_format" in ours) == theirs.is_static and ours.get("quant_format", theirs.format) == theirs.format
    assert extra["AddQDQPairToWeight"] == theirs.qdq_add_pair_to_weight and extra["DedicatedQDQPair"] == theirs.qdq_dedicated_pair
    assert extra["QDQOpTypePerChannelSupportToAxis"] == theirs.qdq_op_type_per_channel_support_to_axis
    assert ours["op_types_to_quantize"] == list(theirs.operators_to_quantize)
    assert QATConfig(preset=preset, mode=mode).scheme == config.scheme  # and QAT simulates what these arguments ship


@pytest.mark.parametrize("preset, mode", PRESET_MODES)
def test_quantized_graph_is_optimums(onnx_dir, data, tmp_path, preset, mode):
    config = PTQConfig(preset=preset, mode=mode, calibration_samples=8, qat_ranges=False)
    ours = quantize_onnx(onnx_dir, tmp_path / "ours", config, data if mode == "static" else None)
    assert_same_graph(ours, optimum_quantize(onnx_dir, tmp_path / "optimum", config, data))


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_is_optimums(onnx_dir, data, tmp_path, method):
    config = PTQConfig(mode="static", calibration_method=method, calibration_samples=8, qat_ranges=False, linear_inputs_only=False)
    ours = quantize_onnx(onnx_dir, tmp_path / "ours", config, data)
    assert_same_graph(ours, optimum_quantize(onnx_dir, tmp_path / "optimum", config, data))


def test_qat_ranges_give_optimums_graph(onnx_dir, data, tmp_path):
    """QAT ranges through ONNX Runtime's TensorQuantOverrides: the graph hfcompress made by editing Optimum's calibrated ranges."""
    config = PTQConfig(mode="static", calibration_samples=8)
    ours = quantize_onnx(onnx_dir, tmp_path / "ours", config, data)
    assert_same_graph(ours, optimum_quantize(onnx_dir, tmp_path / "optimum", config, data, qat=load_qat_ranges(onnx_dir)))


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_optimized_graph_is_optimums(onnx_dir, tmp_path, level):
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    ours, theirs = (shutil.copytree(onnx_dir, tmp_path / name) for name in ("ours", "optimum"))
    ORTOptimizer.from_pretrained(theirs, file_names=["model.onnx"]).optimize(
        save_dir=theirs, optimization_config=AutoOptimizationConfig.with_optimization_level(level), file_suffix="optimized"
    )
    assert_same_graph(optimize_onnx(ours, level), theirs / "model_optimized.onnx")
