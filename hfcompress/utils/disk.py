"""Free disk space, checked before anything is written: a run refused at once beats a disk filled mid-run.

What a command or stage will write is estimated here, conservatively, from what it reads:

- a model: the size of its weight files (.safetensors, .bin, .onnx); a model not on disk yet (an earlier
  stage's output, a Hub id) from its config, parameters x 4 bytes (float32, as Trainer and export save);
- a training stage (finetune, distill): the model it publishes, plus ``save_total_limit`` checkpoints
  (every save when unset, one more with ``load_best_model_at_end``), each the model and Adam's two
  moments, ``CHECKPOINT_MODEL_COPIES`` x the model;
- export: one float32 ONNX copy of the model, one more with ``optimize``, one more with a Triton repository;
- quantize: the input's size (int8 and int4 files are smaller; the bound leaves room for the
  intermediate graph), twice for a PyTorch checkpoint, which is exported to ONNX first;
- factorize, trim-vocab, prune, convert-gguf and other stages that transform a model: the input model's
  size (a factorised or trimmed model is smaller; a GGUF is counted dequantized, parameters x 4);
- card: the model and ONNX files it copies into a release folder;
- evaluate, push: only small result files.

Every estimate gets ``MARGIN`` more (configs, tokenizers, reports, filesystem blocks), and is compared
with the free space of the filesystem the output goes to. ``HFCOMPRESS_SKIP_DISK_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from .hashing import WEIGHT_SUFFIXES

SKIP_ENV = "HFCOMPRESS_SKIP_DISK_CHECK"
CHECKPOINT_MODEL_COPIES = 3  # a checkpoint: the weights, and Adam's exp_avg and exp_avg_sq of the same size
FLOAT32_BYTES = 4
MARGIN = (1.1, 64 << 20)  # x 1.1 + 64 MiB


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for an unprivileged user) on the filesystem ``path`` is or would be created on."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def files_bytes(path: str | os.PathLike) -> int:
    """Bytes of the model files in a directory (weights, ONNX graphs and their external data), or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and (p.suffix in (*WEIGHT_SUFFIXES, ".onnx", ".onnx_data", ".data")))


def tree_bytes(root: str | os.PathLike) -> int:
    """Bytes of every file under ``root`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def config_bytes(config) -> int:
    """Float32 bytes of the model a config describes, counted on PyTorch's meta device (no memory, no download)."""
    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError):
        return 0  # an architecture AutoModel cannot build: its stage reads and checks it
    return sum(p.numel() for p in model.parameters()) * FLOAT32_BYTES


def model_bytes(ref: str | os.PathLike, config=None) -> int:
    """A model's size: its files where it is a local path, else what its config (if given) describes."""
    local = Path(os.path.expanduser(str(ref)))
    if local.exists():
        return files_bytes(local)
    return config_bytes(config) if config is not None else 0


def with_margin(needed: int) -> int:
    return int(needed * MARGIN[0]) + MARGIN[1] if needed else 0


def check_free_space(output: str | os.PathLike, needed: int, what: str, fix: str = "", freed: int = 0) -> None:
    """Refuse in one line when ``needed`` bytes (a raw estimate; the margin is added here) do not fit where ``output`` goes;
    ``freed``: bytes deleted there before the writing starts (an output that --overwrite replaces)."""
    if not needed or os.environ.get(SKIP_ENV, "").lower() in ("1", "true", "yes"):
        return
    needed, free = with_margin(needed), free_bytes(output) + freed
    if needed > free:
        raise ConfigError(
            f"{what} needs about {_size(needed)} on the disk of {output} but only {_size(free)} is free: free some space, "
            f"write the output elsewhere{fix}, or set {SKIP_ENV}=1 if the estimate is wrong"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"
