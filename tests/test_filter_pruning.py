"""Filter pruning of CNNs: removal equals masking, importance, targets, reload and ONNX export, the callback, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    BertConfig,
    BertForSequenceClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hfcompress.artifacts import FILTER_PRUNING_FILE
from hfcompress.errors import ConfigError, ModelError
from hfcompress.modeling import empty_model, load_config, load_model
from hfcompress.models.cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification
from hfcompress.evaluation.macs import count_macs
from hfcompress.pruning.filters import FilterPruner, FilterPruningCallback, FilterPruningConfig, prune_filters
from hfcompress.pruning.filters.callback import PruningSteps, write_filter_report
from hfcompress.pruning.filters.persistence import record_channels
from hfcompress.pruning.filters.pruner import kept_count
from hfcompress.recipes.schema import from_dict
from hfcompress.recipes.stages.prune import PruneStageConfig
from hfcompress.tasks import get_task
from tests.conftest import assert_compression_summary

pytest.importorskip("torch_pruning")

IMAGE = 32
IMAGE_TASK = get_task("image-classification")


def _randomise_norms(model):
    """Random BatchNorm statistics and affine terms, so a channel left at its initial values would still show."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def resnet():
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic", num_labels=3)
    return _randomise_norms(ResNetForImageClassification(config))


def mobilenet():
    torch.manual_seed(0)
    config = MobileNetV2Config(image_size=IMAGE, depth_multiplier=0.25, min_depth=4, num_labels=3)
    return _randomise_norms(MobileNetV2ForImageClassification(config))


def cifar_resnet():
    """The shape of the shared ResNet-20/56, smaller: stem 8, a block 8 -> 8, then 8 -> 16 (option-A shortcut) and 16 -> 16."""
    torch.manual_seed(0)
    return _randomise_norms(CifarResNetForImageClassification(CifarResNetConfig(stage_widths=[8, 16], blocks_per_stage=[1, 2], num_labels=3)))


def blocks(model):
    return [block for stage in model.resnet.stages for block in stage]


def images(n=4, seed=0):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _masked_then_removed(model, config, batches=None):
    """Logits of the masked model, and of the same model after removal; and the pruner."""
    x = images()
    pruner = FilterPruner(model, config, {"pixel_values": x[:1]})
    if batches is not None:
        pruner.calibrate(batches)
    pruner.select(1.0)
    pruner.apply_masks()
    with torch.no_grad():
        masked = model(pixel_values=x).logits
    report = pruner.remove()
    with torch.no_grad():
        removed = model(pixel_values=x).logits
    return masked, removed, report, pruner


@pytest.mark.parametrize(
    "build, settings",
    [
        (resnet, dict(importance="l1")),
        (resnet, dict(importance="l2", scope="global", coupled="prune")),
        (mobilenet, dict(importance="bn_scale", coupled="prune")),
        (mobilenet, dict(importance="l1", scope="global")),
        (cifar_resnet, dict(importance="l1")),
    ],
    ids=["resnet-l1-inner", "resnet-l2-global-coupled", "mobilenet-bn-coupled", "mobilenet-l1-global", "cifar-l1-inner"],
)
def test_removal_equals_masking(build, settings):
    model = build()
    params_before = sum(p.numel() for p in model.parameters())
    masked, removed, report, _ = _masked_then_removed(model, FilterPruningConfig(amount=0.5, **settings))
    assert removed.shape == masked.shape
    torch.testing.assert_close(removed, masked, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == report["num_parameters"] < params_before
    assert 0 < report["macs"] < report["macs_before"]
    assert 0.3 < report["channels_removed_fraction"] <= 0.6


def test_default_prunes_only_channels_inside_blocks():
    """coupled: skip (the default) leaves channels tied by residual additions whole, as Li et al. do for CIFAR ResNets."""
    model = cifar_resnet()
    pruner = FilterPruner(model, FilterPruningConfig(amount=0.5), {"pixel_values": images(1)})
    assert sorted(g.name for g in pruner.groups) == ["resnet.stages.0.0.conv1", "resnet.stages.1.0.conv1", "resnet.stages.1.1.conv1"]
    assert "resnet.stem.conv" in pruner.skipped
    prune_filters(model, FilterPruningConfig(amount=0.5), inputs={"pixel_values": images(1)})
    assert [b.conv1.out_channels for b in blocks(model)] == [4, 8, 8]
    assert [b.conv2.out_channels for b in blocks(model)] == [8, 16, 16]  # the residual widths are unchanged


def test_option_a_shortcuts_are_never_pruned():
    """Torch-Pruning ties the zero-padded shortcuts of every stage into one group of mixed widths, which it cannot cut right."""
    model = cifar_resnet()
    masked, removed, report, pruner = _masked_then_removed(model, FilterPruningConfig(amount=0.5, coupled="prune"))
    assert pruner.skipped == ["resnet.stem.conv"]
    torch.testing.assert_close(removed, masked, atol=1e-5, rtol=0)
    assert [b.conv2.out_channels for b in blocks(model)] == [8, 16, 16]


def test_mobilenet_depthwise_convs_are_pruned_with_their_expansion():
    model = mobilenet()
    pruner = FilterPruner(model, FilterPruningConfig(amount=0.5), {"pixel_values": images(1)})
    group = next(g for g in pruner.groups if g.name == "mobilenet_v2.layer.0.expand_1x1.convolution")
    assert "mobilenet_v2.layer.0.conv_3x3.convolution" in group.channel_layers  # the depthwise conv goes with it
    assert "mobilenet_v2.layer.0.reduce_1x1.convolution" in group.layers  # and the projection reads fewer inputs
    pruner.select(1.0)
    pruner.remove()
    expand = model.get_submodule("mobilenet_v2.layer.0.expand_1x1.convolution")
    depthwise = model.get_submodule("mobilenet_v2.layer.0.conv_3x3.convolution")
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == expand.out_channels


def test_importance_l1_l2_and_bn_scale_rank_as_defined():
    model = cifar_resnet()
    conv, bn = blocks(model)[0].conv1, blocks(model)[0].bn1
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 9, dtype=torch.float).view(8, 1, 1, 1).expand_as(conv.weight))  # filter c has |w| = c + 1
        conv.weight[0] *= -1  # the sign does not count
        bn.weight.copy_(torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1]))
    for importance, expected in (("l1", [0, 1, 2, 3]), ("l2", [0, 1, 2, 3]), ("bn_scale", [4, 5, 6, 7])):
        pruner = FilterPruner(copy.deepcopy(model), FilterPruningConfig(amount=0.5, importance=importance), {"pixel_values": images(1)})
        pruner.select(1.0)
        assert pruner.removed["resnet.stages.0.0.conv1"] == expected, importance


def _calibration_batches(count=3):
    return [{"pixel_values": images(4, seed=i), "labels": torch.tensor([0, 1, 2, 0])} for i in range(count)]


def test_taylor_importance_uses_the_calibration_batches():
    model = cifar_resnet()
    batches = _calibration_batches()
    masked, removed, report, pruner = _masked_then_removed(model, FilterPruningConfig(amount=0.5, importance="taylor"), batches)
    torch.testing.assert_close(removed, masked, atol=1e-5, rtol=0)
    assert all(model.get_submodule(n).weight.grad is None for n in ("resnet.stem.conv", "resnet.stages.0.0.conv1"))  # gradients cleared after
    # the channels removed are those with the smallest accumulated |sum(grad * weight)|
    taylor = pruner.taylor["resnet.stages.0.0.conv1"]
    assert taylor.abs().sum() > 0
    assert pruner.removed["resnet.stages.0.0.conv1"] == sorted(taylor.argsort()[:4].tolist())
    other = FilterPruner(cifar_resnet(), FilterPruningConfig(amount=0.5, importance="taylor"), {"pixel_values": images(1)})
    other.calibrate(_calibration_batches(1)[:1] + [{"pixel_values": images(4, seed=9), "labels": torch.tensor([2, 2, 1, 1])}])
    assert not torch.equal(other.taylor["resnet.stages.0.0.conv1"], taylor)  # other data, other scores
    with pytest.raises(ModelError, match="calibration batches"):
        prune_filters(cifar_resnet(), FilterPruningConfig(amount=0.5, importance="taylor"))


@pytest.mark.parametrize("channels, wanted, minimum, multiple, kept", [(16, 3, 1, 8, 8), (16, 11, 1, 8, 8), (16, 13, 1, 8, 16), (16, 0, 4, 1, 4), (4, 1, 1, 8, 4)])
def test_kept_count_respects_minimum_and_rounding(channels, wanted, minimum, multiple, kept):
    assert kept_count(channels, wanted, minimum, multiple) == kept


def test_min_channels_and_round_to_hold_in_every_layer():
    model = mobilenet()
    report = prune_filters(model, FilterPruningConfig(amount=0.9, scope="global", min_channels=4, round_to=4), inputs={"pixel_values": images(1)})
    for name, kept in report["channels_after"].items():
        assert kept >= min(4, report["channels_before"][name]) and (kept % 4 == 0 or kept == report["channels_before"][name]), name


def test_target_macs_reduction_is_reached_and_counted():
    model = mobilenet()
    inputs = {"pixel_values": images(1)}
    before = count_macs(model, inputs)
    report = prune_filters(model, FilterPruningConfig(target_macs_reduction=0.4, coupled="prune"), inputs=inputs)
    assert report["macs_before"] == before
    assert report["macs"] == count_macs(model, inputs) <= 0.6 * before
    assert report["macs_reduction"] < 0.5  # the smallest removal that reaches the target, not everything


def test_macs_are_counted_at_the_configured_image_size():
    small = prune_filters(resnet(), FilterPruningConfig(amount=0.5, image_size=32))
    large = prune_filters(resnet(), FilterPruningConfig(amount=0.5, image_size=64))
    assert small["input_shape"] == [1, 3, 32, 32] and large["input_shape"] == [1, 3, 64, 64]
    assert large["macs_before"] == pytest.approx(4 * small["macs_before"], rel=1e-3)  # the convolutions scale with the pixels


def test_iterations_reach_the_same_fraction():
    report = prune_filters(resnet(), FilterPruningConfig(amount=0.5, iterations=3), inputs={"pixel_values": images(1)})
    one_shot = prune_filters(resnet(), FilterPruningConfig(amount=0.5), inputs={"pixel_values": images(1)})
    assert report["channels_after"] == one_shot["channels_after"]


@pytest.mark.parametrize("build", [resnet, mobilenet], ids=["resnet", "mobilenet"])
def test_saved_model_reloads_and_exports_with_the_same_logits(build, tmp_path):
    model = build()
    prune_filters(model, FilterPruningConfig(amount=0.5, coupled="prune"), inputs={"pixel_values": images(1)})
    x = images()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pruned_channels"], "the new layer sizes are recorded in config.json"
    with pytest.raises(Exception):  # noqa: B017 - plain from_pretrained cannot give layers their recorded sizes
        AutoModelForImageClassification.from_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), IMAGE_TASK).eval()
    assert type(reloaded).__name__ == type(model).__name__
    planned = empty_model(load_config(str(tmp_path)), IMAGE_TASK)  # what pre-flight checks see has the pruned shapes too
    assert {k: v.shape for k, v in planned.state_dict().items()} == {k: v.shape for k, v in reloaded.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected, atol=1e-6, rtol=0)
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    torch.onnx.export(reloaded, (), kwargs={"pixel_values": x}, f=str(path), dynamo=True, input_names=["pixel_values"],
                      output_names=["logits"], dynamic_shapes={"pixel_values": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path))
    logits = session.run(None, {"pixel_values": x.numpy()})[0]
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)


def test_pruned_cifar_resnet_records_block_widths_and_reloads_with_plain_from_pretrained(tmp_path):
    model = cifar_resnet()
    prune_filters(model, FilterPruningConfig(amount=0.5), inputs={"pixel_values": images(1)})
    assert model.config.block_widths == [block.conv1.out_channels for block in blocks(model)] == [4, 8, 8]
    x = images()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_widths"] == model.config.block_widths and "pruned_channels" not in saved  # the config sizes every layer
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, CifarResNetForImageClassification)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected, atol=1e-6, rtol=0)


def test_cifar_resnet_layers_its_config_cannot_size_stay_in_pruned_channels():
    model = cifar_resnet()
    block = model.resnet.stages[1][1]
    block.conv1, block.bn1 = nn.Conv2d(16, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
    block.conv2 = nn.Conv2d(5, 12, 3, padding=1, bias=False)  # writes 12 of the stage's 16 channels: not a width the config has
    record_channels(model, ["resnet.stages.1.1.conv1", "resnet.stages.1.1.bn1", "resnet.stages.1.1.conv2"])
    assert model.config.block_widths == [8, 16, 5]
    assert model.config.pruned_channels == {"resnet.stages.1.1.conv2": {"in_channels": 5, "out_channels": 12, "groups": 1}}


def test_recorded_sizes_of_a_missing_layer_are_refused(tmp_path):
    model = resnet()
    model.config.pruned_channels = {"resnet.encoder.stages.9.convolution": {"in_channels": 4, "out_channels": 4, "groups": 1}}
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="records sizes .* for layer 'resnet.encoder.stages.9.convolution'"):
        load_model(str(tmp_path), IMAGE_TASK)


def test_report_renders_as_a_compression_summary(tmp_path):
    report = prune_filters(resnet(), FilterPruningConfig(amount=0.5), inputs={"pixel_values": images(1)})
    write_filter_report(tmp_path, report)
    summary = assert_compression_summary(tmp_path, "filters")
    assert summary.details_file == FILTER_PRUNING_FILE
    assert summary.results["macs"] < summary.results["macs_before"]
    assert set(summary.tables[0]["rows"]) == set(report["channels_before"])


class _ImageData(torch.utils.data.Dataset):
    def __init__(self, n=16):
        self.x, self.y = images(n, seed=3), torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_callback_prunes_during_training_and_removes_at_the_end(importance, tmp_path):
    model = cifar_resnet().train()
    callback = FilterPruningCallback(FilterPruningConfig(amount=0.5, importance=importance, iterations=2, start_step=1, end_step=3))
    seen = []

    class RecordMasks(TrainerCallback):  # after each step: are the masked channels' weights exactly zero?
        def on_step_end(self, *args, **kwargs):
            if callback.masks:
                seen.append(all(bool((callback.params[n][~m] == 0).all()) for n, m in callback.masks.items()))

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, report_to="none", save_strategy="no",
                             logging_steps=1, use_cpu=True, learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=_ImageData(), callbacks=[callback, RecordMasks()])
    trainer.train()
    assert seen and all(seen), "masked channels stay exactly zero while training"
    assert callback.schedule.steps() == [1, 3]
    report = callback.report
    assert report["channels_removed_fraction"] > 0.3 and report["num_parameters"] < report["num_parameters_before"]
    assert model.config.block_widths == [block.conv1.out_channels for block in blocks(model)] != [8, 16, 16]
    callback.write_artifacts(tmp_path)
    assert_compression_summary(tmp_path, "filters")


def test_taylor_pruning_in_training_waits_for_the_first_gradients():
    steps = PruningSteps.from_config(FilterPruningConfig(amount=0.5, importance="taylor", start_step=0, end_step=0), 10)
    assert steps.steps() == [1]
    assert PruningSteps.from_config(FilterPruningConfig(amount=0.5, iterations=3, start_step=0, end_step=0.4), 10).steps() == [0, 2, 4]


def test_prune_stage_takes_filters_as_its_method():
    cfg = from_dict(PruneStageConfig, {"model": "m", "filters": {"target_macs_reduction": 0.5, "importance": "taylor", "iterations": 3}})
    assert cfg.callbacks[0]["type"] == "filter_pruning" and cfg.callbacks[0]["iterations"] == 3
    with pytest.raises(ConfigError, match="exactly one of"):
        from_dict(PruneStageConfig, {"model": "m", "filters": {"amount": 0.4}, "magnitude": {}})


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(amount=1.0), r"amount 1.0 must be in \(0, 1\)"),
        (dict(amount=0.0), r"amount 0.0 must be in \(0, 1\)"),
        (dict(target_macs_reduction=-0.1), r"target_macs_reduction -0.1 must be in \(0, 1\)"),
        (dict(), "give exactly one of 'amount'"),
        (dict(amount=0.4, target_macs_reduction=0.5), "give exactly one of 'amount'"),
        (dict(amount=0.4, round_to=0), "round_to 0 must be at least 1"),
        (dict(amount=0.4, image_size=0), "image_size 0 must be at least 1"),
        (dict(amount=0.4, target_modules="(["), "not a valid regular expression"),
    ],
)
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        FilterPruningConfig(**settings)


def test_a_model_without_convolutions_is_refused():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ModelError, match="has no Conv2d layers.*magnitude or structured pruning"):
        prune_filters(model, FilterPruningConfig(amount=0.5), inputs={"input_ids": torch.ones(1, 4, dtype=torch.long)})


def test_an_unreachable_macs_target_is_refused():
    with pytest.raises(ModelError, match="target_macs_reduction 0.950 cannot be reached.*set coupled: prune"):
        prune_filters(cifar_resnet(), FilterPruningConfig(target_macs_reduction=0.95), inputs={"pixel_values": images(1)})


def test_a_model_torch_pruning_cannot_trace_is_refused():
    class TakesText(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, input_ids):
            return self.conv(input_ids)

    with pytest.raises(ModelError, match="could not trace TakesText.*pixel_values"):
        FilterPruner(TakesText(), FilterPruningConfig(amount=0.5), {"pixel_values": images(1)})


def test_targets_that_tie_every_channel_leave_nothing_to_prune():
    with pytest.raises(ModelError, match="no channels of CifarResNetForImageClassification can be pruned"):
        FilterPruner(cifar_resnet(), FilterPruningConfig(amount=0.5, exclude_modules=r".*conv1"), {"pixel_values": images(1)})


@pytest.mark.integration
def test_a_recipe_that_filter_prunes_a_text_model_fails_before_any_stage_runs(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.recipes import parse_recipe, run_recipe

    recipe = {
        "name": "filters-on-text", "output_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "finetune", "name": "first", "model": str(tiny_teacher_dir), "training": {"max_steps": 1, "use_cpu": True}},
            {"stage": "prune", "name": "pruned", "model": "first", "filters": {"amount": 0.5}},
        ],
    }
    with pytest.raises(ModelError, match="has no Conv2d layers.*magnitude or structured pruning"):
        run_recipe(parse_recipe(recipe))
    assert not (tmp_path / "run" / "first").exists()
