#!/usr/bin/env python
"""Convert a reference CIFAR ResNet checkpoint (akamaster/pytorch_resnet_cifar10) into a transformers model directory.

Loads the checkpoint with weights_only=True, strips the nn.DataParallel "module." prefix, maps every tensor onto
CifarResNetForImageClassification (strictly: a missing or extra tensor is an error) and saves it as safetensors
with its config (class names from --classes) and its image processor (32x32 as is, ImageNet mean/std). With
--eval-data it then measures top-1 accuracy of the saved directory, reloaded through the Auto classes, and
writes it to eval_results.json beside the model.

    python scripts/convert_cifar_resnet.py \\
        --checkpoint ../shared/assets/models/resnet-cifar10/pretrained_models/resnet56-4bfd9763.th --depth 56 \\
        --out outputs/resnet56-cifar10 --eval-data ../shared/assets/data/cifar10
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.artifacts import EVAL_RESULTS_FILE  # noqa: E402
from hfcompress.errors import DataError, HFCompressError  # noqa: E402
from hfcompress.models.cifar_resnet import DEPTHS  # noqa: E402
from hfcompress.models.cifar_resnet.conversion import convert_to_directory  # noqa: E402
from hfcompress.utils.bench import bench_parser  # noqa: E402
from hfcompress.utils.io import atomic_write_json  # noqa: E402

CIFAR10 = "../shared/assets/data/cifar10"


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="A resnetNN-*.th file of akamaster/pytorch_resnet_cifar10.")
    p.add_argument("--depth", type=int, choices=sorted(DEPTHS), default=None, help="Expected depth (checked against the checkpoint).")
    p.add_argument("--out", required=True, help="Output model directory.")
    p.add_argument("--classes", default=f"{CIFAR10}/classes.txt", help="Class names, one a line, in label order (id2label).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    p.add_argument("--eval-data", default=None, help="Measure top-1 on this dataset (a directory or Hub id load_dataset reads) after saving.")
    p.add_argument("--eval-split", default="test", help="Split of --eval-data to measure.")
    p.add_argument("--eval-limit", type=int, default=None, help="Measure only the first N images of the split.")
    p.add_argument("--image-column", default="img", help="Image column of --eval-data.")
    p.add_argument("--label-column", default="label", help="Label column of --eval-data.")
    p.add_argument("--batch-size", type=int, default=250, help="Images per forward pass when measuring.")
    return p.parse_args(argv)


def top1_accuracy(model_dir: Path, data: str, split: str, limit, image_column: str, label_column: str, batch_size: int) -> dict:
    """Top-1 of the saved model, reloaded as a user would (AutoModelForImageClassification + AutoImageProcessor)."""
    import torch
    from datasets import load_dataset
    from tqdm.auto import tqdm
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        dataset = load_dataset(data, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"cannot load split '{split}' of {data} ({str(e).splitlines()[0][:160]}): give --eval-data a dataset directory or Hub id") from None
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise DataError(f"{data} has no column(s) {missing} (it has {dataset.column_names}): pass --image-column / --label-column")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    correct = 0
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"top-1 on {split}"):
            batch = dataset[start : start + batch_size]
            pixels = processor(images=[im.convert("RGB") for im in batch[image_column]], return_tensors="pt")["pixel_values"]
            predictions = model(pixel_values=pixels).logits.argmax(-1)
            correct += int((predictions == torch.tensor(batch[label_column])).sum())
    return {"eval_accuracy": correct / len(dataset), "eval_samples": len(dataset), "eval_split": split, "eval_data": data}


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        out = Path(a.out)
        model = convert_to_directory(a.checkpoint, out, a.depth, a.classes, a.overwrite)
        print(f"ResNet-{model.config.depth} ({sum(p.numel() for p in model.parameters()):,} parameters) saved to {out}")
        if a.eval_data:
            result = top1_accuracy(out, a.eval_data, a.eval_split, a.eval_limit, a.image_column, a.label_column, a.batch_size)
            atomic_write_json(out / EVAL_RESULTS_FILE, result)
            print(json.dumps(result))
    except HFCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
