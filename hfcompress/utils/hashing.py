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


def tree_hashes(root: Path, cached: bool = False) -> dict[str, str]:
    """sha256 of every file under ``root`` (a file: itself), by relative path; hidden files and folders are left out.

    ``cached``: reuse the hashes of files unchanged since an earlier call (see :mod:`hfcompress.utils.hash_cache`)."""
    if root.is_file():
        files = {root.name: root}
    else:
        relative = {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}
        files = {rel: path for rel, path in relative.items() if not any(part.startswith(".") for part in rel.split("/"))}
    if not cached:
        return {name: file_sha256(path) for name, path in files.items()}
    from .hash_cache import HashCache

    cache = HashCache(root)
    hashes = {name: cache.sha256(path) for name, path in files.items()}
    cache.save()
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
