"""From the reference checkpoints (akamaster/pytorch_resnet_cifar10, ``resnetNN-*.th``) to :class:`CifarResNetForImageClassification`.

``scripts/convert_cifar_resnet.py`` is the command line; the tests call these functions directly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import torch

from ...errors import DataError, ModelError
from .configuration import CifarResNetConfig
from .modeling import CifarResNetForImageClassification

# the normalisation the reference checkpoints were trained with (its trainer.py): ImageNet's mean and std on [0, 1] pixels
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_SIZE = 32

# reference parameter name (after "module.") -> ours
_RENAMES = (
    (re.compile(r"^conv1\."), "resnet.stem.conv."),
    (re.compile(r"^bn1\."), "resnet.stem.bn."),
    (re.compile(r"^layer(\d+)\.(\d+)\."), lambda m: f"resnet.stages.{int(m.group(1)) - 1}.{m.group(2)}."),
    (re.compile(r"^linear\."), "classifier."),
)


def rename_reference_key(key: str) -> str:
    key = key.removeprefix("module.")  # saved from nn.DataParallel
    for pattern, replacement in _RENAMES:
        renamed, count = pattern.subn(replacement, key)
        if count:
            return renamed
    raise ModelError(f"checkpoint key '{key}' is not a parameter of the reference CIFAR ResNet: convert a resnetNN-*.th of akamaster/pytorch_resnet_cifar10")


def read_reference_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The reference checkpoint's tensors under our names (``weights_only=True``: no code runs from the file)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist: give the path of a resnetNN-*.th file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError... for a broken or foreign file
        raise ModelError(f"{path} does not load as a PyTorch checkpoint ({type(e).__name__}): give a resnetNN-*.th file") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state_dict: give a resnetNN-*.th file of akamaster/pytorch_resnet_cifar10")
    return {rename_reference_key(k): v for k, v in state.items()}


def depth_of(state: dict[str, torch.Tensor]) -> int:
    """ResNet depth implied by a converted state dict's blocks (6n + 2)."""
    blocks = {m.groups() for m in map(re.compile(r"^resnet\.stages\.(\d+)\.(\d+)\.").match, state) if m}
    return 2 * len(blocks) + 2


def convert_reference_checkpoint(
    checkpoint: str | os.PathLike, depth: Optional[int] = None, id2label: Optional[dict[int, str]] = None
) -> CifarResNetForImageClassification:
    """The reference checkpoint as our model, in eval mode; every tensor must match (strict load)."""
    state = read_reference_state_dict(checkpoint)
    found = depth_of(state)
    if depth is not None and depth != found:
        raise ModelError(f"{checkpoint} holds a ResNet-{found}, not the ResNet-{depth} asked for: pass --depth {found}")
    num_labels = state["classifier.weight"].shape[0]
    labels = dict(id2label) if id2label else {i: f"LABEL_{i}" for i in range(num_labels)}
    if len(labels) != num_labels:
        raise ModelError(f"{len(labels)} class names given but the checkpoint's classifier has {num_labels} outputs: give one name per class")
    config = CifarResNetConfig.for_depth(found, id2label=labels, label2id={v: k for k, v in labels.items()})
    config.architectures = [CifarResNetForImageClassification.__name__]
    model = CifarResNetForImageClassification(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def image_processor():
    """What the checkpoints expect: RGB 32x32 as is (no resize), pixels scaled to [0, 1], ImageNet mean/std."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=False, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )


def read_class_names(path: str | os.PathLike) -> dict[int, str]:
    """id2label from a text file with one class name a line, in label order (CIFAR-10's classes.txt)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"class names file {file} does not exist: give a text file with one class name a line")
    return dict(enumerate(line.strip() for line in file.read_text().splitlines() if line.strip()))


def convert_to_directory(
    checkpoint: str | os.PathLike, out: str | os.PathLike, depth: Optional[int] = None,
    classes: Optional[str | os.PathLike] = None, overwrite: bool = False,
) -> CifarResNetForImageClassification:
    """Convert ``checkpoint`` and save model (safetensors), config and image processor to ``out``, atomically."""
    from ...utils.io import atomic_output_dir

    model = convert_reference_checkpoint(checkpoint, depth, read_class_names(classes) if classes else None)
    with atomic_output_dir(out, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        image_processor().save_pretrained(staging)
    return model
