"""The image-classification task: data, bad input, and the flow train -> distil -> export -> evaluate -> card on tiny CNNs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from hfcompress.errors import DataError, ModelError
from hfcompress.tasks import TASKS

CLASSES = ["red", "green", "blue"]
TASK = TASKS["image-classification"]


def _image(label: int, rng, size=(32, 32), mode="RGB"):
    """A noisy image whose dominant channel is its class: learnable in a few steps."""
    from PIL import Image

    pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., label] += 150
    return Image.fromarray(pixels).convert(mode)


def write_images(directory: Path, rows=None, column: str = "img", counts=(("train", 24), ("test", 12)), **image_kwargs) -> dict:
    """Parquet splits in the Hub's layout (an Image column and a ClassLabel), as the shared CIFAR-10 is; returns the data config."""
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for split, n in counts:
        images = [_image(i % len(CLASSES), rng, **image_kwargs) for i in range(n)]
        labels = [i % len(CLASSES) for i in range(n)]
        if rows and split in rows:
            images, labels = rows[split](images, labels)
        features = Features({column: Image(), "label": ClassLabel(names=CLASSES)})
        Dataset.from_dict({column: images, "label": labels}, features=features).to_parquet(str(directory / f"{split}.parquet"))
    return {"path": str(directory), "task": "image-classification", "eval_split": "test"}


def tiny_resnet(directory: Path, num_labels: int = 3) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels)
    ResNetForImageClassification(config).save_pretrained(directory)
    return directory


def tiny_mobilenet(directory: Path, num_labels: int = 3) -> Path:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    config = MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=num_labels, finegrained_output=False)
    MobileNetV2ForImageClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny CNNs run fastest on one thread: on a busy 2-core machine more threads only wait for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data(cfg: dict, **overrides):
    from hfcompress.data import DataConfig, TaskData

    return TaskData(DataConfig(**{**cfg, **overrides}), seed=0)


# --- data --------------------------------------------------------------------------------------


def test_images_become_pixel_values_and_labels_with_the_class_names(tmp_path):
    data = _data(write_images(tmp_path / "d"))
    assert data.label_display_names() == dict(enumerate(CLASSES)) and data.cfg.image_column == "img"
    processor = TASK.load_processor(str(tiny_resnet(tmp_path / "m")))
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and not processor.do_resize  # the default: ImageNet statistics, own size
    batch = data.collator(processor)(data.tokenize(processor, "test").__getitems__([0, 1, 2]))
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 2]


def test_an_image_column_named_image_is_found(tmp_path):
    data = _data(write_images(tmp_path / "d", column="image"))
    assert data.cfg.image_column == "image" and len(data.inputs(count=2)) == 2


def test_only_the_training_split_is_augmented_and_the_augmentation_is_seeded(tmp_path):
    cfg = write_images(tmp_path / "d")
    processor = TASK.load_processor(str(tiny_resnet(tmp_path / "m")))

    def pixels(data, split):
        return data.tokenize(processor, split).__getitems__(list(range(8)))

    a, b = _data(cfg), _data(cfg)
    train_a, train_b = pixels(a, "train"), pixels(b, "train")
    assert all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(train_a, train_b))  # same seed, same crops
    plain = _data(cfg, augment=False)
    assert not all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(train_a, pixels(plain, "train")))
    assert all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(pixels(a, "test"), pixels(plain, "test")))


def test_random_crop_flip_keeps_the_size_and_moves_pixels():
    from PIL import Image

    from hfcompress.tasks.image_classification import random_crop_flip

    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    crops = [np.asarray(random_crop_flip(image, np.random.default_rng(seed))) for seed in range(4)]
    assert all(c.shape == (32, 32, 3) for c in crops) and any(not np.array_equal(c, np.asarray(image)) for c in crops)


def test_calibration_features_are_float_images_of_the_graph_input(tmp_path):
    data = _data(write_images(tmp_path / "d"))
    processor = TASK.load_processor(str(tiny_resnet(tmp_path / "m")))
    features = TASK.calibration_features(data.raw["train"].select(range(5)), processor, data.cfg, ["pixel_values"])
    assert list(features) == ["pixel_values"] and features["pixel_values"].shape == (5, 3, 32, 32)
    assert features["pixel_values"].dtype == np.float32


# --- bad input ---------------------------------------------------------------------------------


def test_grayscale_rgba_and_cmyk_images_are_converted_to_rgb_and_logged_once(tmp_path, caplog):
    modes = ["L", "RGBA", "CMYK"]

    def mixed(images, labels):
        return [image.convert(modes[i % 3]) if i < 6 else image for i, image in enumerate(images)], labels

    with caplog.at_level(logging.WARNING, logger="hfcompress.tasks.image_classification"):
        data = _data(write_images(tmp_path / "d", rows={"train": mixed}))
    warnings = [r.getMessage() for r in caplog.records if "converted to RGB" in r.getMessage()]
    assert warnings == ["split 'train': 6 images converted to RGB (2 L, 2 RGBA, 2 CMYK)"]
    processor = TASK.load_processor(str(tiny_resnet(tmp_path / "m")))
    assert data.tokenize(processor, "train").__getitems__([0])[0]["pixel_values"].shape == (3, 32, 32)


def test_images_of_another_size_are_resized_when_the_processor_resizes_else_refused(tmp_path):
    from PIL import Image

    def one_odd(images, labels):
        return images[:4] + [images[4].resize((40, 24), Image.BILINEAR)] + images[5:], labels

    data = _data(write_images(tmp_path / "d", rows={"train": one_odd}))
    resnet = TASK.load_processor(str(tiny_resnet(tmp_path / "r")))  # no image_size in its config: no resizing
    with pytest.raises(DataError, match=r"split 'train' mixes image sizes: most are 32x32, row 5 is 40x24, and the model's image processor does not resize"):
        data.tokenize(resnet, "train")
    mobilenet = TASK.load_processor(str(tiny_mobilenet(tmp_path / "mb")))  # image_size 32: resized
    assert mobilenet.do_resize and data.tokenize(mobilenet, "train").__getitems__([4])[0]["pixel_values"].shape == (3, 32, 32)


def test_a_corrupt_image_is_a_one_line_error_naming_its_row(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image

    good = io.BytesIO()
    _image(0, np.random.default_rng(0)).save(good, format="PNG")
    cells = [{"bytes": good.getvalue(), "path": None}] * 3 + [{"bytes": good.getvalue()[:40], "path": None}]
    (tmp_path / "d").mkdir()
    features = Features({"img": Image(), "label": ClassLabel(names=CLASSES)})
    for split in ("train", "test"):
        Dataset.from_dict({"img": cells, "label": [0, 1, 2, 0]}, features=features).to_parquet(str(tmp_path / "d" / f"{split}.parquet"))
    with pytest.raises(DataError, match=r"^split 'train' row 4 \('img'\) is not a readable image \(.*\): replace or delete it$"):
        _data({"path": str(tmp_path / "d"), "task": "image-classification", "eval_split": "test"})


def test_a_class_without_training_images_is_refused(tmp_path):
    def no_blue(images, labels):
        kept = [(i, label) for i, label in zip(images, labels) if label != 2]
        return [i for i, _ in kept], [label for _, label in kept]

    with pytest.raises(DataError, match=r"split 'train' has no images of class 'blue': add examples of it, or drop it from the label set"):
        _data(write_images(tmp_path / "d", rows={"train": no_blue}))


def test_a_trained_head_with_another_label_count_names_both(tmp_path):
    from hfcompress.modeling import load_model

    data = _data(write_images(tmp_path / "d"))
    with pytest.raises(ModelError, match=r"has 10 labels but the data has 3: use a checkpoint trained on this label set"):
        load_model(str(tiny_resnet(tmp_path / "m", num_labels=10)), TASK, data.num_labels, data.id2label)


def test_a_column_that_holds_no_images_is_refused(tmp_path):
    cfg = write_images(tmp_path / "d")
    with pytest.raises(DataError, match=r"column 'label' holds .*, not images: set data.image_column"):
        _data(cfg, image_column="label")


# --- ONNX graphs -------------------------------------------------------------------------------

# Optimum's MobileNetV2 graph: a batch axis, the image size fixed (its TF-style padding is computed from it).
MOBILENET_SIGNATURE = {"inputs": [("pixel_values", ["batch_size", 3, 32, 32])], "outputs": [("logits", ["batch_size", 3])]}


def test_dynamo_image_graph_has_the_signature_of_optimums(tmp_path):
    from hfcompress.export.onnx import export_onnx, graph_signature

    onnx_path = export_onnx(tiny_mobilenet(tmp_path / "m"), tmp_path / "onnx", backend="dynamo", batch_sizes=[1, 3])
    assert graph_signature(onnx_path) == MOBILENET_SIGNATURE
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["texts"] == "built-in" and [c["batch_size"] for c in parity["files"]["model.onnx"]["checks"]] == [1, 3]
    assert (tmp_path / "onnx" / "preprocessor_config.json").is_file()  # the default processor ships with the graph


def test_sentences_for_the_parity_check_of_an_image_model_are_refused(tmp_path):
    from hfcompress.cli import main

    (tmp_path / "texts.txt").write_text("A sentence.\n")
    code = main(["export", str(tiny_resnet(tmp_path / "m")), "--output", str(tmp_path / "onnx"), "--backend", "dynamo",
                 "--parity-texts", str(tmp_path / "texts.txt")])
    assert code != 0 and not (tmp_path / "onnx").exists()


@pytest.mark.requires_optimum
def test_optimum_image_graph_has_the_recorded_signature(tmp_path):
    from hfcompress.export.onnx import export_onnx, graph_signature

    onnx_path = export_onnx(tiny_mobilenet(tmp_path / "m"), tmp_path / "onnx", backend="optimum", batch_sizes=[2])
    assert graph_signature(onnx_path) == MOBILENET_SIGNATURE


# --- the flow: train, distil, export, evaluate, card ---------------------------------------------


def _recipe(tmp_path: Path, data: dict, teacher: Path, student: Path, distill_training: dict | None = None) -> dict:
    training = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "use_cpu": True, "disable_tqdm": True}
    return {
        "name": "tiny-images",
        "output_dir": str(tmp_path / "run"),
        "data": data,
        "stages": [
            {"stage": "finetune_teacher", "model": str(teacher), "training": training},
            {"stage": "distill", "teacher": "teacher", "student": str(student),
             "training": {**training, "alpha": 0.5, "temperature": 2.0, **(distill_training or {})}},
            {"stage": "export", "model": "student", "parity_samples": 4},
            {"stage": "evaluate", "models": ["teacher", "student", "onnx"], "latency": True, "latency_batch_sizes": [1, 32],
             "latency_samples": 8, "repeats": 1, "warmup": 1},
            {"stage": "card", "model": "student", "onnx": ["onnx"], "report": "evaluation"},
        ],
    }


@pytest.mark.slow  # the whole path in one test: fine-tune, distil, a dynamo export, latency at two batch sizes (~40 s on 2 cores)
def test_resnet_teacher_distils_into_mobilenet_then_exports_evaluates_and_gets_a_card(tmp_path):
    from hfcompress.recipes import parse_recipe, run_recipe

    data = write_images(tmp_path / "d")
    recipe = _recipe(tmp_path, data, tiny_resnet(tmp_path / "resnet"), tiny_mobilenet(tmp_path / "mobilenet"))
    outputs = run_recipe(parse_recipe(recipe))

    student = json.loads((outputs["student"] / "config.json").read_text())
    assert student["architectures"] == ["MobileNetV2ForImageClassification"] and student["id2label"] == {"0": "red", "1": "green", "2": "blue"}
    assert (outputs["student"] / "preprocessor_config.json").is_file()  # the teacher's processor travels with the student
    parity = json.loads((outputs["onnx"] / "parity.json").read_text())
    assert parity["task"] == "image-classification" and parity["files"]["model.onnx"]["passed"]
    assert [c["batch_size"] for c in parity["files"]["model.onnx"]["checks"]] == [1, 4]
    rows = json.loads((outputs["evaluation"] / "compression_report.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["pytorch", "pytorch", "onnx"]
    assert rows[0]["accuracy"] > 0.5  # the teacher learnt the colours
    assert rows[2]["accuracy"] == pytest.approx(rows[1]["accuracy"])  # the fp32 export scores as its checkpoint
    assert all(r["latency_ms_p50_b1"] > 0 and r["latency_ms_p50_b32"] > 0 for r in rows)
    card = (outputs["card"] / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "ORTModelForImageClassification" in card
    assert 'processor = AutoImageProcessor.from_pretrained(' in card and "AutoTokenizer" not in card
    assert "on images of the evaluation split." in card and "| batch | max abs diff |" in card


def test_the_teacher_logit_cache_is_refused_for_images_preprocessed_on_the_fly(tmp_path):
    from hfcompress.errors import ConfigError
    from hfcompress.recipes import parse_recipe, run_recipe

    data = write_images(tmp_path / "d", counts=(("train", 6), ("test", 3)))
    recipe = _recipe(tmp_path, data, tiny_resnet(tmp_path / "resnet"), tiny_mobilenet(tmp_path / "mobilenet"),
                     {"teacher_cache_dir": str(tmp_path / "cache")})
    recipe["stages"] = recipe["stages"][:2]
    with pytest.raises(ConfigError, match="teacher_cache_dir: this training set is preprocessed on the fly"):
        run_recipe(parse_recipe(recipe))


def test_the_evaluate_cli_takes_the_image_task(tmp_path):
    from hfcompress.cli import main

    data = write_images(tmp_path / "d", counts=(("train", 6), ("test", 6)))
    model = tiny_resnet(tmp_path / "m")
    out = tmp_path / "result.json"
    code = main(["evaluate", str(model), "--data", data["path"], "--split", "test", "--task", "image-classification",
                 "--image-column", "img", "--latency", "--latency-batch-sizes", "1", "2", "--repeats", "1", "--output", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["num_examples"] == 6 and 0 <= result["accuracy"] <= 1 and result["latency"]["b2"]["p50_ms"] > 0


@pytest.mark.integration
def test_the_shared_cifar10_loads_with_its_ten_classes(cifar10_path):
    data = _data({"path": str(cifar10_path), "task": "image-classification", "eval_split": "test"}, max_train_samples=64, max_eval_samples=16)
    assert data.num_labels == 10 and data.label_display_names()[0] == "airplane" and len(data.raw["test"]) == 16
