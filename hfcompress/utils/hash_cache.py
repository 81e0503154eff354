"""Content hashes of files, remembered between runs: a resume re-reads only the files that changed.

As git's index does, a file's sha256 is reused while its (absolute path, size, mtime_ns, inode) are
those it had when it was hashed; any other value (a file rewritten, even to the same size) is hashed
again. A file modified within ``RACY_SECONDS`` before it was hashed is not remembered: a second
write in the same timestamp tick would leave its mtime unchanged ("racy git").

The cache lives in ``$HFCOMPRESS_CACHE`` (default ``$XDG_CACHE_HOME/hfcompress``, i.e.
``~/.cache/hfcompress``), one JSON file per hashed directory. It is rewritten through an atomic
rename under an exclusive lock, merging what other runs wrote meanwhile, so two runs sharing it
never corrupt it; a cache that cannot be read or written only costs the hashing it would have saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..artifacts import FILE_HASHES_DIR, LOCK_SUFFIX
from .hashing import file_sha256
from .io import atomic_write_json
from .lock import waiting_lock

logger = logging.getLogger("hfcompress")

CACHE_ENV = "HFCOMPRESS_CACHE"
RACY_SECONDS = 2  # covers the coarsest common mtime granularity (FAT's 2 s) and the kernel's coarse clock


def cache_dir() -> Path:
    """hfcompress's cache directory: $HFCOMPRESS_CACHE, else $XDG_CACHE_HOME/hfcompress (as huggingface_hub finds HF_HOME)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV]))
    return Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache")) / "hfcompress"


class HashCache:
    """The remembered hashes of the files under one directory; :meth:`sha256` hashes only what changed, :meth:`save` stores it."""

    def __init__(self, root: Path):
        root = root.absolute()
        self.path = cache_dir() / FILE_HASHES_DIR / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"
        self.entries = _read(self.path)
        self.fresh: dict[str, list] = {}

    def sha256(self, path: Path) -> str:
        key = str(path.absolute())
        before = os.stat(path)
        stamp = [before.st_size, before.st_mtime_ns, before.st_ino]
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:3] == stamp:
            return entry[3]
        started = time.time_ns()
        digest = file_sha256(path)
        after = os.stat(path)
        if [after.st_size, after.st_mtime_ns, after.st_ino] == stamp and started - before.st_mtime_ns > RACY_SECONDS * 10**9:
            self.fresh[key] = [*stamp, digest]
        return digest

    def save(self) -> None:
        if not self.fresh:
            return
        try:
            with waiting_lock(self.path.with_name(self.path.name + LOCK_SUFFIX)):  # held for a read and a rename
                atomic_write_json(self.path, {**_read(self.path), **self.fresh})  # merged with what other runs stored meanwhile
        except OSError as e:
            logger.warning("hfcompress: could not store file hashes in %s (%s): the next run hashes the data again", self.path, e)
        self.entries.update(self.fresh)
        self.fresh = {}


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}
