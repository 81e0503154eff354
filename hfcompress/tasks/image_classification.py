"""Image classification (CIFAR-10, ImageNet-style data): an image in, one label out.

Images are read by ``datasets`` (an ``Image`` column of a Parquet or image-folder dataset, or of a Hub
dataset) and turned into ``pixel_values`` by the image processor saved with the model. A model saved
without one gets :func:`default_image_processor`. Training images are augmented on the fly (random crop
with 4-pixel padding, horizontal flip) with PIL and numpy only: torchvision does not import beside
the CPU torch these machines use.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

from .text_classification import TextClassificationTask

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("img", "image")  # CIFAR-10 on the Hub says 'img', most other image datasets 'image'
CROP_PADDING = 4  # pixels of zero padding around a training image before the random crop back to its size
# ImageNet statistics: what torchvision's and timm's ImageNet models, and the shared CIFAR ResNets, were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_image_processor(config):
    """The processor of a model saved without one: RGB, scaled to [0, 1], normalised with ImageNet mean/std.

    A config with an ``image_size`` (MobileNetV2, ViT) has its images resized to that size; one
    without (ResNet) takes images at their own size, which must then all be the same.
    """
    import transformers

    # transformers 5 names the PIL/numpy backend ViTImageProcessorPil (its ViTImageProcessor wants torchvision); 4.x has only it, as ViTImageProcessor
    processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    size = getattr(config, "image_size", None)
    side = size if isinstance(size, int) else None
    return processor_class(
        do_resize=side is not None, size={"height": side or 224, "width": side or 224},
        do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )


def processor_size(processor) -> Optional[tuple[int, int]]:
    """(width, height) the processor resizes every image to, or None when it keeps their size."""
    if not getattr(processor, "do_resize", False):
        return None
    size = dict(getattr(processor, "size", None) or {})
    if "height" in size and "width" in size:
        return size["width"], size["height"]
    if "shortest_edge" in size:  # the aspect ratio is kept: images of any size fit
        return None
    return None


def decode_image(cell, where: str):
    """A PIL image from an ``Image(decode=False)`` cell ({'bytes', 'path'}), fully read; a DataError naming ``where`` if it is not an image."""
    import io

    from PIL import Image, UnidentifiedImageError

    from ..errors import DataError

    try:
        image = Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])
        image.load()  # decode now: a truncated file passes Image.open and fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as e:
        raise DataError(f"{where} is not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]}): replace or delete it") from None
    return image


def random_crop_flip(image, rng):
    """Zero-pad by :data:`CROP_PADDING` pixels, crop back to the image's size at a random offset, flip half the time."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    pad = ((CROP_PADDING, CROP_PADDING), (CROP_PADDING, CROP_PADDING)) + ((0, 0),) * (pixels.ndim - 2)
    padded = np.pad(pixels, pad)
    top, left = rng.integers(0, 2 * CROP_PADDING + 1, size=2)
    crop = padded[top : top + height, left : left + width]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop))


@dataclass(frozen=True)
class ImageClassificationTask(TextClassificationTask):
    """One prediction per image; distillation, metrics and the card's labels work as for text classification."""

    # --- data ---------------------------------------------------------------------------------

    def resolve_columns(self, cfg, column_names: Sequence[str]):
        """``cfg`` with its image column found: the one named, else 'img' or 'image', whichever the data has."""
        import dataclasses

        if cfg.image_column is None:
            found = next((c for c in IMAGE_COLUMNS if c in column_names), IMAGE_COLUMNS[0])
            return dataclasses.replace(cfg, image_column=found)
        return cfg

    def required_columns(self, cfg) -> list[str]:
        return [cfg.image_column or IMAGE_COLUMNS[0], cfg.label_column]

    def check_rows(self, split: str, ds, cfg) -> dict:
        """Decode every image once: a corrupt one is a DataError naming its row (from 1). Returns the image sizes seen, each with its first row.

        Images not in RGB (grayscale, RGBA, CMYK, palette) are converted when they are processed;
        the log says so once per split.
        """
        from datasets import Image
        from tqdm.auto import tqdm

        from ..errors import DataError

        column = cfg.image_column
        if not isinstance(ds.features[column], Image):
            raise DataError(f"split '{split}' column '{column}' holds {ds.features[column]}, not images: set data.image_column to the image column")
        sizes, modes = Counter(), Counter()
        first_row_of: dict[tuple[int, int], int] = {}
        raw = ds.cast_column(column, Image(decode=False)).select_columns([column])
        starts = tqdm(range(0, len(raw), 1000), desc=f"Checking the images of {split}", leave=False)
        for start, batch in zip(starts, raw.iter(batch_size=1000)):
            for offset, cell in enumerate(batch[column]):
                row = start + offset + 1
                if cell is None:
                    raise DataError(f"split '{split}' row {row} has no image in '{column}': fill it in or delete the row")
                image = decode_image(cell, f"split '{split}' row {row} ('{column}')")
                sizes[image.size] += 1
                modes[image.mode] += 1
                first_row_of.setdefault(image.size, row)
        other = {mode: n for mode, n in modes.items() if mode != "RGB"}
        if other:
            logger.warning("split '%s': %s images converted to RGB (%s)", split, sum(other.values()), ", ".join(f"{n} {m}" for m, n in other.items()))
        return {"sizes": dict(sizes), "first_row_of": first_row_of}

    def check_labels_covered(self, split: str, ds, cfg, label_count: int) -> None:
        """Every class of a ClassLabel must have training images: a class without any could never be learnt."""
        from ..errors import DataError

        present = set(ds[cfg.label_column])
        empty = [i for i in range(label_count) if i not in present]
        if empty:
            names = ds.features[cfg.label_column].names
            raise DataError(
                f"split '{split}' has no images of class {', '.join(repr(names[i]) for i in empty[:5])}: "
                "add examples of it, or drop it from the label set"
            )

    def check_sizes(self, split: str, processor, checked: dict) -> None:
        """Images of different sizes are fine when the processor resizes them, else refused with the sizes named."""
        from ..errors import DataError

        sizes = checked["sizes"]
        if getattr(processor, "do_resize", False) or len(sizes) <= 1:
            return
        (common, _), *others = sorted(sizes.items(), key=lambda kv: -kv[1])
        odd = others[0][0]
        raise DataError(
            f"split '{split}' mixes image sizes: most are {common[0]}x{common[1]}, row {checked['first_row_of'][odd]} is {odd[0]}x{odd[1]}, "
            "and the model's image processor does not resize: resize the images, or save an image processor with do_resize and a size beside the model"
        )

    def prepare_split(self, ds, processor, cfg, label2id: dict, split: str, train: bool, seed: int, checked: Optional[dict] = None):
        """The split with ``pixel_values`` and ``labels`` computed on the fly (``with_transform``), augmented when ``train`` and ``cfg.augment``.

        The columns are renamed to the model's argument names so that ``Trainer`` keeps them.
        """
        import numpy as np

        if checked is not None:
            self.check_sizes(split, processor, checked)
        rng = np.random.default_rng(seed)
        augment = train and cfg.augment
        ds = ds.select_columns([cfg.image_column, cfg.label_column]).rename_columns({cfg.image_column: "pixel_values", cfg.label_column: "labels"})

        def transform(batch):
            images = [image.convert("RGB") for image in batch["pixel_values"]]
            if augment:
                images = [random_crop_flip(image, rng) for image in images]
            pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
            return {"pixel_values": pixels, "labels": [label2id[v] for v in batch["labels"]]}

        return ds.with_transform(transform)

    def collator(self, processor):
        from transformers import DefaultDataCollator

        return DefaultDataCollator(return_tensors="pt")

    def inputs(self, rows, cfg, count: Optional[int] = None) -> list:
        """The first ``count`` images, in RGB: what a user sends to an image-classification pipeline."""
        rows = rows.select(range(min(count, len(rows)))) if count is not None else rows  # decode only the images asked for
        return [image.convert("RGB") for image in rows[cfg.image_column]]

    def load_processor(self, name_or_path: str, trust_remote_code: bool = False):
        """The image processor saved with the model, else :func:`default_image_processor` for its config."""
        from transformers import AutoImageProcessor

        from ..modeling import load_config

        try:
            return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            config = load_config(name_or_path, trust_remote_code)
            logger.info("'%s' has no image processor: using ImageNet mean/std%s", name_or_path,
                        f" and resizing to {config.image_size}" if isinstance(getattr(config, "image_size", None), int) else "")
            return default_image_processor(config)

    def check_processor_files(self, path) -> None:
        """Nothing is required: a model directory without an image processor gets the default one."""

    def model_inputs(self, processor, inputs: Sequence, max_length: Optional[int] = None) -> dict:
        return dict(processor(images=list(inputs), return_tensors="pt"))

    def calibration_features(self, rows, processor, cfg, input_names: Sequence[str]) -> dict:
        """``{"pixel_values": float32 [N, 3, H, W]}``: the calibration images as the model sees them (never augmented)."""
        return self.onnx_feeds(processor(images=self.inputs(rows, cfg), return_tensors="np"), input_names)

    def card_usage(self) -> dict:
        return {
            "processor_var": "processor",
            "processor_class": "AutoImageProcessor",
            "example_imports": "from PIL import Image\n",
            "example_inputs": 'processor(images=[Image.open("image.jpg").convert("RGB")], return_tensors="np")',
            "given_parity_inputs": "images of the evaluation split",
            "builtin_parity_inputs": "seeded random-noise images at the processor's size",
        }

    # --- ONNX graphs --------------------------------------------------------------------------

    def onnx_input_names(self, model, processor) -> list[str]:
        return list(self.onnx_inputs)

    def onnx_feeds(self, batch, input_names: Sequence[str]) -> dict:
        import numpy as np

        from ..errors import ModelError

        missing = [name for name in input_names if name not in batch]
        if missing:
            raise ModelError(f"the ONNX graph needs inputs {missing} that the image processor does not produce: re-export the model with its own image processor")
        return {name: np.asarray(batch[name], dtype=np.float32) for name in input_names}

    def onnx_dynamic_axes(self) -> dict[int, str]:
        return {0: "batch_size"}  # the processor fixes channels and size; CNN padding arithmetic would specialise them anyway

    def parity_shapes(self, config, sequence_lengths: Sequence[int]) -> list[dict]:
        return [{}]  # one image size: the processor's

    def parity_batch(self, processor, inputs: Sequence, batch_size: int, shape: dict) -> dict:
        inputs = list(inputs)
        if any(isinstance(x, str) for x in inputs):
            from ..errors import ConfigError

            raise ConfigError(
                "parity texts were given for an image model: leave --parity-texts out (seeded noise images are used) "
                "or export in a recipe, which checks on images of the evaluation split"
            )
        return dict(processor(images=[inputs[i % len(inputs)] for i in range(batch_size)], return_tensors="np"))

    def default_inputs(self, processor, config) -> list:
        """Seeded noise images at the processor's (else the config's, else 32x32) size, when no real images are given."""
        import numpy as np
        from PIL import Image

        size = processor_size(processor)
        side = getattr(config, "image_size", None)
        width, height = size or ((side, side) if isinstance(side, int) else (32, 32))
        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(4)]


IMAGE_CLASSIFICATION = ImageClassificationTask(
    name="image-classification",
    display_name="Image Classification",
    auto_model="AutoModelForImageClassification",
    ort_model="ORTModelForImageClassification",
    architecture_suffixes=("ForImageClassification",),
    default_metrics=("accuracy",),
    per_token=False,
    onnx_inputs=("pixel_values",),
)

__all__ = ["IMAGE_CLASSIFICATION", "ImageClassificationTask", "default_image_processor"]
