"""int8 for CNNs: static QDQ quantization of an exported ResNet calibrated on images, dynamic mode refused, presets from the CPU, QAT of Conv2d with BatchNorm folding."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hfcompress.errors import ConfigError
from hfcompress.quantization import PTQConfig, QATCallback, QATConfig, prepare_qat, quantize_onnx
from hfcompress.quantization.config import cpu_preset
from hfcompress.quantization.qat import QUANTIZATION_FILE, FakeQuantConv2d, fake_quant_modules, load_qat_ranges
from tests.conftest import assert_compression_summary

IMAGE_SIZE = 32


def tiny_resnet(seed: int = 0):
    """A tiny random ResNet with non-trivial BatchNorm statistics (so that folding them changes the Conv weights)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    model = ResNetForImageClassification(config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


class _PixelValuesToLogits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def export_cnn(model, directory):
    """``model`` exported with torch.onnx.export(dynamo=True) as ``model.onnx`` (input ``pixel_values``), with its config and image processor."""
    from transformers import ConvNextImageProcessor

    directory.mkdir(parents=True, exist_ok=True)
    sample = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        _PixelValuesToLogits(model).eval(), (sample,), dynamo=True, input_names=["pixel_values"], output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, verbose=False,
    )
    program.save(str(directory / "model.onnx"))
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it: the task is read from it
    model.config.save_pretrained(directory)
    ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, do_resize=False).save_pretrained(directory)
    return directory


def images(count: int, seed: int, contrast: float = 1.0) -> np.ndarray:
    """Normalised float32 images [N, 3, H, W], as an image processor gives them: smooth random blobs, not white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((count, 3, IMAGE_SIZE // 8, IMAGE_SIZE // 8)).astype(np.float32)
    return contrast * np.kron(coarse, np.ones((1, 1, 8, 8), dtype=np.float32)) + 0.1 * rng.standard_normal((count, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def run_onnx(path, pixel_values):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixel_values})[0]


def initializers(path) -> dict:
    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def input_scale(path) -> float:
    """The scale of the Q/DQ pair that quantizes the graph input (the first Conv's activation)."""
    graph = onnx.load(str(path)).graph
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values")
    return float(initializers(path)[node.input[1]])


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return export_cnn(tiny_resnet(), tmp_path_factory.mktemp("cnn") / "onnx")


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_cnn_graph_is_conv_qdq_with_folded_batchnorm_and_int8_weights(cnn_dir, tmp_path, method):
    config = PTQConfig(mode="static", preset="avx512_vnni", calibration_method=method, percentile=99.99)
    path = quantize_onnx(cnn_dir, tmp_path / method, config, calibration_inputs={"pixel_values": images(32, seed=1)})
    graph = onnx.load(str(path)).graph
    values = initializers(path)
    producer = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 6 and not any(n.op_type == "BatchNormalization" for n in graph.node)
    for conv in convs:
        activation, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        # per-channel symmetric int8 weights: one scale per output channel, zero points 0
        assert values[weight.input[0]].dtype == np.int8 and values[weight.input[1]].shape == (values[weight.input[0]].shape[0],)
        assert not values[weight.input[2]].any()
        assert any(n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0] for n in graph.node)  # its output requantized: QLinearConv
    info = json.loads((tmp_path / method / QUANTIZATION_FILE).read_text())
    assert info["calibration"]["method"] == method and info["calibration"]["samples"] == 32 and info["convs_quantized"] == 6
    assert info["qdq"] == "onnxruntime, float outputs" and "Conv" in info["operators"] and "BatchNormalization folded" in info["calibration"]["preprocessing"]
    assert (method == "percentile") == (info["calibration"].get("percentile") == 99.99)
    summary = assert_compression_summary(tmp_path / method, "static")
    assert summary.settings["calibration"]["method"] == method and summary.results["convs_quantized"] == 6
    # held-out images: int8 agrees with fp32 on the tiny model (logits within 10% of their spread, same top-1 on >= 90%)
    held_out = images(64, seed=2)
    fp32, int8 = run_onnx(cnn_dir / "model.onnx", held_out), run_onnx(path, held_out)
    assert np.abs(int8 - fp32).max() <= 0.1 * (fp32.max() - fp32.min())
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_onnxruntime_runs_the_static_cnn_graph_as_qlinearconv(cnn_dir, tmp_path):
    import onnxruntime as ort

    path = quantize_onnx(cnn_dir, tmp_path / "q", PTQConfig(mode="static", preset="avx2"), calibration_inputs={"pixel_values": images(8, seed=1)})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 6 and "Conv" not in ops
    # the avx2 preset stores weights as uint8 (zero point 128), its own arithmetic on AVX2 without VNNI
    assert json.loads((tmp_path / "q" / QUANTIZATION_FILE).read_text())["weights"] == "uint8 symmetric per-channel"


def test_calibration_data_sets_the_activation_ranges(cnn_dir, tmp_path):
    """Ranges come from the calibration images: three times the contrast gives a wider input range; the same images the same one."""
    config = PTQConfig(mode="static", preset="avx512_vnni")
    scales = [
        input_scale(quantize_onnx(cnn_dir, tmp_path / name, config, calibration_inputs={"pixel_values": images(16, seed=1, contrast=contrast)}))
        for name, contrast in (("a", 1.0), ("b", 3.0), ("c", 1.0))
    ]
    assert scales[1] > 2 * scales[0] and scales[2] == scales[0]


def test_dynamic_int8_is_refused_for_a_cnn(cnn_dir, tmp_path):
    with pytest.raises(ConfigError, match="Conv layers, which would stay fp32: set mode: static"):
        quantize_onnx(cnn_dir, tmp_path / "dyn", PTQConfig(mode="dynamic"))
    assert not (tmp_path / "dyn").exists()
    assert "refused for CNNs" in PTQConfig.__dataclass_fields__["mode"].metadata["help"]


def test_static_cnn_settings_that_cannot_work_name_the_fix(cnn_dir, tmp_path):
    with pytest.raises(ConfigError, match="calibration_inputs"):
        quantize_onnx(cnn_dir, tmp_path / "q", PTQConfig(mode="static"))
    with pytest.raises(ConfigError, match="use a CPU preset"):
        quantize_onnx(cnn_dir, tmp_path / "q", PTQConfig(mode="static", preset="tensorrt"), calibration_inputs={"pixel_values": images(2, seed=1)})


@pytest.mark.parametrize(
    "isa, machine, preset",
    [
        (["avx2", "fma"], "x86_64", "avx2"),
        (["avx2", "avx512f"], "x86_64", "avx512"),
        (["avx2", "avx512f", "avx512_vnni"], "x86_64", "avx512_vnni"),
        (["avx2", "avx_vnni"], "x86_64", "avx512_vnni"),
        (["asimd", "asimddp"], "aarch64", "arm64"),
    ],
)
def test_cpu_preset_follows_the_isa(isa, machine, preset):
    assert cpu_preset(isa, machine)[0] == preset


def test_auto_preset_is_this_cpus_and_recorded(cnn_dir, tmp_path):
    config = PTQConfig(mode="static", preset="auto")
    assert config.preset == cpu_preset()[0] and config.preset_reason.startswith("chosen for this CPU")
    quantize_onnx(cnn_dir, tmp_path / "q", config, calibration_inputs={"pixel_values": images(4, seed=1)})
    info = json.loads((tmp_path / "q" / QUANTIZATION_FILE).read_text())
    assert info["preset"] == config.preset and info["preset_reason"] == config.preset_reason


# --- QAT for Conv2d with BatchNorm folding ---


def _image_train_set(count: int = 32):
    pixels = images(count, seed=5)
    labels = np.random.default_rng(5).integers(0, 4, count)
    return [{"pixel_values": torch.from_numpy(p), "labels": int(label)} for p, label in zip(pixels, labels)]


def _train_with_qat(model, output_dir, config, max_steps=4, save_steps=2):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=0.05,
                             save_strategy="steps", save_steps=save_steps, report_to="none", disable_tqdm=True, use_cpu=True)
    callback = QATCallback(config)
    Trainer(model=model, args=args, train_dataset=_image_train_set(), callbacks=[callback]).train()
    return callback, args


def _batch_norms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_qat_folds_batchnorm_into_conv_and_keeps_the_float_logits(tmp_path):
    """After QAT and folding, the model computes what the unfolded checkpoint of the same step computes, with plain modules."""
    from transformers import ResNetForImageClassification

    model = tiny_resnet()
    callback, _ = _train_with_qat(model, tmp_path / "out", QATConfig(preset="avx512_vnni", mode="static", freeze_bn_step=2))
    assert not fake_quant_modules(model) and all(type(m) is torch.nn.BatchNorm2d for m in _batch_norms(model).values())
    for bn in _batch_norms(model).values():  # only the shift is left in the BatchNorm: the scale is in the conv
        assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)
    unfolded = ResNetForImageClassification.from_pretrained(tmp_path / "out" / "checkpoint-4").eval()
    assert set(unfolded.state_dict()) == set(model.state_dict())
    pixels = torch.from_numpy(images(8, seed=9))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(pixels).logits, unfolded(pixels).logits, atol=1e-5, rtol=1e-4)
    # the ranges kept cover every Conv2d and the classifier, with the folded weights' per-channel scales
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert {k.rsplit(".", 1)[0] for k in callback.ranges} == {*convs, "classifier.1"}
    weight = model.get_submodule(convs[0]).weight
    torch.testing.assert_close(callback.ranges[f"{convs[0]}.weight_scale"], weight.abs().flatten(1).amax(1) / 127)


def test_batchnorm_statistics_move_until_freeze_bn_step_then_stay(tmp_path):
    model = tiny_resnet()
    prepare_qat(model, QATConfig(preset="avx512_vnni", mode="static"))
    conv = next(m for m in fake_quant_modules(model).values() if isinstance(m, FakeQuantConv2d))
    model.train()
    before = conv.batch_norm.running_mean.clone()
    model(torch.from_numpy(images(8, seed=3)))
    assert not torch.equal(conv.batch_norm.running_mean, before)
    for m in fake_quant_modules(model).values():
        m.bn_frozen = True
    frozen = conv.batch_norm.running_mean.clone()
    logits = model(torch.from_numpy(images(8, seed=4))).logits
    assert torch.equal(conv.batch_norm.running_mean, frozen)
    logits.sum().backward()  # the folded form trains: gradients reach the conv weights and the BatchNorm's affine parameters
    assert conv.weight.grad is not None and conv.batch_norm.weight.grad is not None


def test_conv_qat_ranges_are_the_static_graphs_ranges(tmp_path):
    """The folded QAT model's export, statically quantized, takes each Conv input's range from QAT, not from calibration."""
    from hfcompress.quantization.config import UINT8_ASYMMETRIC
    from hfcompress.quantization.onnx_ptq import linear_input_tensors
    from hfcompress.quantization.qat import activation_qparams

    model = tiny_resnet()
    config = QATConfig(preset="avx512_vnni", mode="static")
    callback, _ = _train_with_qat(model, tmp_path / "out", config, max_steps=2, save_steps=10)
    onnx_dir = export_cnn(model, tmp_path / "onnx")
    callback.write_artifacts(onnx_dir)
    qat = load_qat_ranges(onnx_dir)
    # calibrated on images ten times brighter than the training ones: a calibrated range would be far wider
    path = quantize_onnx(onnx_dir, tmp_path / "int8", PTQConfig(mode="static", preset="avx512_vnni"),
                         calibration_inputs={"pixel_values": images(8, seed=1, contrast=10.0)})
    tensors = linear_input_tensors(onnx_dir / "model.onnx")
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(convs) <= {module.removeprefix("model.") for module in tensors}
    graph = onnx.load(str(path)).graph
    values = initializers(path)
    scales = {n.input[0]: float(values[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in values}
    for module, tensor in tensors.items():  # the stem conv reads the image, the others a ReLU or the MaxPool (which shares its input's range)
        lo, hi = qat[module.removeprefix("model.")]
        assert scales[tensor] == pytest.approx(float(activation_qparams(torch.tensor(lo), torch.tensor(hi), UINT8_ASYMMETRIC)[0]), rel=1e-6), module
    info = json.loads((tmp_path / "int8" / QUANTIZATION_FILE).read_text())
    # every Conv2d and the classifier found; one range per tensor: the second stage's first conv and its shortcut read the same ReLU
    assert len(tensors) == len(convs) + 1 and info["calibration"]["qat_ranges_used"] == len(set(tensors.values())) == len(tensors) - 1
    assert "qat_layers_unmatched" not in info["calibration"]


def test_resumed_conv_qat_takes_its_ranges_back(tmp_path):
    from types import SimpleNamespace

    from transformers import TrainerControl

    model = tiny_resnet()
    config = QATConfig(preset="avx512_vnni", mode="static", freeze_bn_step=3)
    _, args = _train_with_qat(model, tmp_path / "out", config, max_steps=4, save_steps=3)
    saved = load_qat_ranges(tmp_path / "out" / "checkpoint-3")
    resumed, callback = tiny_resnet(), QATCallback(config)
    callback.on_train_begin(args, SimpleNamespace(global_step=3), TrainerControl(), model=resumed)
    callback.on_step_begin(args, SimpleNamespace(global_step=3), TrainerControl())
    modules = fake_quant_modules(resumed)
    assert saved.keys() == modules.keys() and any(isinstance(m, FakeQuantConv2d) for m in modules.values())
    assert all((float(m.input_min), float(m.input_max)) == pytest.approx(saved[name]) for name, m in modules.items())
    assert all(m.bn_frozen for m in modules.values())  # past freeze_bn_step on resume, the statistics stay frozen


def test_conv_qat_settings_that_cannot_work_name_the_fix():
    with pytest.raises(ConfigError, match="freeze_bn_step"):
        QATConfig(mode="static", start_step=10, freeze_bn_step=5)
    with pytest.raises(ConfigError, match="set mode: static"):
        prepare_qat(tiny_resnet(), QATConfig(mode="dynamic"))
    assert prepare_qat(tiny_resnet(), QATConfig(mode="dynamic", target_modules=["classifier.1"])) == ["classifier.1"]


# --- the quantize stage and the CLI ---


def _recipe(tmp_path, data, onnx_settings, model):
    import yaml

    recipe = {"name": "cnn-int8", "output_dir": str(tmp_path / "run"), "seed": 0, "data": data,
              "stages": [{"stage": "quantize", "name": "int8", "model": str(model), "onnx": onnx_settings}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def cifar10_data():
    """The recipe data of the shared CIFAR-10 images (the image-classification task reads them; runs skip without it)."""
    from hfcompress.tasks import TASKS
    from tests.conftest import SHARED, _require

    if "image-classification" not in TASKS:
        pytest.skip("the image-classification task is not registered in this checkout")
    return {"task": "image-classification", "path": str(_require(SHARED / "data" / "cifar10")), "train_split": "test", "eval_split": "test"}


def test_cli_refuses_dynamic_int8_of_a_cnn_in_one_line(cnn_dir, cifar10_data, tmp_path, capsys):
    from hfcompress.cli import main

    assert main(["run", str(_recipe(tmp_path, cifar10_data, {"mode": "dynamic"}, cnn_dir))]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the datasets progress bars
    assert error.startswith("hfcompress: error:") and "are in Conv layers, which would stay fp32: set mode: static" in error


def test_quantize_stage_calibrates_a_cnn_on_the_image_split(cnn_dir, cifar10_data, tmp_path):
    """A recipe's static quantize stage on an image graph: calibration images drawn by the image-classification task."""
    from hfcompress.recipes import run_recipe

    settings = {"mode": "static", "preset": "auto", "calibration_method": "entropy", "calibration_samples": 16}
    outputs = run_recipe(_recipe(tmp_path, cifar10_data, settings, cnn_dir))
    info = json.loads((outputs["int8"] / QUANTIZATION_FILE).read_text())
    assert info["calibration"]["method"] == "entropy" and info["calibration"]["samples"] == 16 and info["calibration"]["split"] == "test"
    assert info["convs_quantized"] == 6 and info["preset_reason"].startswith("chosen for this CPU")
