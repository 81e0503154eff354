"""Weight files and content hashes of files and directories: what resume fingerprints, footprints and model cards read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (a file: itself), by relative path; hidden files and folders are left out."""
    if root.is_file():
        return {root.name: file_sha256(root)}
    hashes = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            hashes[rel.as_posix()] = file_sha256(path)
    return hashes


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """A checkpoint's weight files, sorted; the safetensors ones where it has both formats (those load and ship).

    Trainer's pickled ``training_args.bin`` is not a weight file.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file() and not p.name.startswith("training_args"))
    return [p for p in files if p.suffix == ".safetensors"] or files


def weights_sha256(model_dir: Path) -> str | None:
    """One digest of a checkpoint's weight files (None when it has none): which checkpoint an export was made from."""
    files = weight_files(model_dir)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)};".encode())
    return digest.hexdigest()
