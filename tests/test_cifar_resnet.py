"""The CIFAR ResNets as a transformers model: same computation as the reference definition, config-driven
widths that reload, ONNX export, and the converted shared checkpoints' accuracy."""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from hfcompress.errors import ConfigError, ModelError
from hfcompress.models.cifar_resnet import DEPTHS, CifarResNetConfig, CifarResNetForImageClassification
from hfcompress.models.cifar_resnet.conversion import convert_reference_checkpoint, rename_reference_key
from tests.conftest import REPO, SHARED, _require

RESNET_DIR = SHARED / "models" / "resnet-cifar10"
CIFAR10 = SHARED / "data" / "cifar10"
# checkpoint file and the top-1 the asset's README measured on all 10,000 JPEG test images
CHECKPOINTS = {20: ("resnet20-12fca82f.th", 0.8103), 56: ("resnet56-4bfd9763.th", 0.8320)}


@pytest.fixture(scope="module")
def reference():
    """The shared resnet.py, imported by path: the definition the checkpoints were trained with."""
    path = _require(RESNET_DIR / "resnet.py")
    spec = importlib.util.spec_from_file_location("reference_cifar_resnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> CifarResNetConfig:
    return CifarResNetConfig(**{"blocks_per_stage": [1, 1, 1], "num_labels": 3, **overrides})


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_same_logits_as_the_reference_definition_at_every_depth(reference, depth):
    torch.manual_seed(depth)
    ref = getattr(reference, f"resnet{depth}")()
    with torch.no_grad():  # random BN statistics, so that eval-mode BN is not the identity
        for module in ref.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2), module.bias.uniform_(-0.2, 0.2)
    ours = CifarResNetForImageClassification(CifarResNetConfig.for_depth(depth, num_labels=10))
    ours.load_state_dict({rename_reference_key(k): v for k, v in ref.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.eval()(pixel_values=x).logits, ref.eval()(x))  # the same operations in the same order
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_init_is_kaiming_normal_like_the_reference():
    model = CifarResNetForImageClassification(CifarResNetConfig.for_depth(56))
    conv = model.resnet.stages[2][0].conv2.weight  # 64 x 64 x 3 x 3: fan in 576
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert torch.equal(model.resnet.stem.bn.weight, torch.ones(16))


def test_labels_give_a_loss_and_outputs_follow_the_transformers_conventions():
    model = CifarResNetForImageClassification(tiny_config(id2label={0: "a", 1: "b", 2: "c"}))
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    out = model(pixel_values=x, labels=labels, output_hidden_states=True)
    assert isinstance(out, ImageClassifierOutput) and out.logits.shape == (4, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert [h.shape[1:] for h in out.hidden_states] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model(pixel_values=x).loss is None
    assert model(pixel_values=x, return_dict=False)[0].shape == (4, 3)
    assert model.config.id2label[2] == "c"


def test_pruned_widths_save_and_reload_through_the_auto_classes(tmp_path):
    # what filter pruning writes: narrower stages (option-A padding then adds 6 and 12 channels) and inner widths per block
    config = tiny_config(stage_widths=[12, 24, 48], block_widths=[5, 17, 30])
    config.architectures = [CifarResNetForImageClassification.__name__]
    model = CifarResNetForImageClassification(config).eval()
    assert model.resnet.stages[1][0].conv1.weight.shape == (17, 12, 3, 3)
    assert model.resnet.stages[2][0].conv2.weight.shape == (48, 30, 3, 3)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).block_widths == [5, 17, 30]
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CifarResNetForImageClassification
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage_widths": [16, 32]}, "one entry per stage"),
        ({"stage_widths": [32, 16, 64]}, "decrease"),
        ({"block_widths": [16, 32]}, "one width per block"),
        ({"block_widths": [16, 0, 64]}, "must be positive"),
    ],
)
def test_inconsistent_widths_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_unknown_depth_is_a_config_error():
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNetConfig.for_depth(50)


def test_exports_to_onnx_with_a_dynamic_batch_and_matches_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    model = CifarResNetForImageClassification(tiny_config(stage_widths=[8, 16, 32], block_widths=[4, 16, 8])).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, (), str(path), kwargs={"pixel_values": torch.randn(2, 3, 32, 32)}, dynamo=True,
        input_names=["pixel_values"], output_names=["logits"], dynamic_shapes={"pixel_values": {0: "batch_size"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"] and [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_inputs()[0].shape[0] == "batch_size"
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(pixel_values=x).logits.numpy(), rtol=1e-4, atol=1e-5)


def test_a_foreign_checkpoint_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "other.th"
    torch.save({"state_dict": {"module.features.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelError, match="not a parameter of the reference CIFAR ResNet"):
        convert_reference_checkpoint(path)
    with pytest.raises(ModelError, match="does not exist"):
        convert_reference_checkpoint(tmp_path / "missing.th")


# --- the shared checkpoints (integration) ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(CHECKPOINTS))
def test_converted_checkpoint_gives_the_reference_logits(reference, depth):
    checkpoint = _require(RESNET_DIR / "pretrained_models" / CHECKPOINTS[depth][0])
    ref = getattr(reference, f"resnet{depth}")()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    ref.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(convert_reference_checkpoint(checkpoint, depth)(pixel_values=x).logits, ref.eval()(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match=f"pass --depth {depth}"):
        convert_reference_checkpoint(checkpoint, 110)


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(CHECKPOINTS))
def test_conversion_script_scores_the_readme_accuracy_on_1000_test_images(tmp_path, depth):
    name, full_test_accuracy = CHECKPOINTS[depth]
    checkpoint, data = _require(RESNET_DIR / "pretrained_models" / name), _require(CIFAR10)
    out, n = tmp_path / f"resnet{depth}", 1000
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_cifar_resnet.py"), "--checkpoint", str(checkpoint), "--depth", str(depth),
         "--out", str(out), "--classes", str(data / "classes.txt"), "--eval-data", str(data), "--eval-limit", str(n)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval_results.json").read_text())
    assert result["eval_samples"] == n
    # the first 1,000 rows are a (shuffled) sample of the test set: 3 binomial standard errors (about 3.6 points) around the full-set figure
    tolerance = 3 * math.sqrt(full_test_accuracy * (1 - full_test_accuracy) / n)
    assert abs(result["eval_accuracy"] - full_test_accuracy) <= tolerance
    config = AutoConfig.from_pretrained(out)
    assert config.id2label[0] == "airplane" and config.block_widths == [16] * (depth // 6) + [32] * (depth // 6) + [64] * (depth // 6)
    assert json.loads((out / "preprocessor_config.json").read_text())["image_mean"] == [0.485, 0.456, 0.406]


def test_conversion_script_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    # in-process (the slow test above runs the script as a command): main's return value is the exit status
    spec = importlib.util.spec_from_file_location("convert_cifar_resnet", REPO / "scripts" / "convert_cifar_resnet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--checkpoint", str(tmp_path / "none.th"), "--out", str(tmp_path / "o")]) == 1
    stderr = capsys.readouterr().err
    assert stderr.strip().startswith("error:") and "does not exist" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("first_import", ["hfcompress.models.cifar_resnet", "transformers", "hfcompress"])
def test_auto_classes_know_the_model_whatever_is_imported_first(first_import):
    code = (f"import {first_import}, hfcompress\n"
            "from transformers import AutoConfig, AutoModelForImageClassification\n"
            "print(type(AutoModelForImageClassification.from_config(AutoConfig.for_model('cifar-resnet'))).__name__)")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "CifarResNetForImageClassification"
