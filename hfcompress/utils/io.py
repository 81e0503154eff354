"""Atomic writes: outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early (before expensive work) when ``path`` exists and may not be replaced."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"output {path} is a file: give a directory path (--overwrite replaces directories only)")
    if Path(path).exists() and not overwrite:
        raise ConfigError(f"output directory {path} already exists: pass --overwrite to replace it, or choose another")


def not_utf8(path: str | os.PathLike, number: int, line: bytes, error: UnicodeDecodeError) -> str:
    """The message for line ``number`` of ``path`` that does not decode: where, which byte, and the fix."""
    return f"{path} line {number} is not UTF-8 (byte {line[error.start]:#04x} at column {error.start + 1}): re-save the file as UTF-8"


def read_utf8(path: str | os.PathLike) -> str:
    """A text file's content; a ConfigError naming the first line that is not UTF-8 (rather than a codec's byte offset)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        for number, line in enumerate(raw.splitlines(keepends=True), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(not_utf8(path, number, line, e)) from None
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only if the block succeeds.

    A crash or an exception leaves ``path`` as it was (absent, or the previous complete output),
    and removes the temporary directory. ``path`` is locked meanwhile: a second writer fails at once.
    """
    from .lock import output_lock

    path = Path(path)
    with output_lock(path):
        check_output_dir(path, overwrite)
        tmp = make_temp_dir_beside(path)
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def make_temp_dir_beside(path: Path) -> Path:
    """A new temporary directory next to ``path`` (same filesystem, so a rename is atomic), named after this
    host and process; temporary directories for ``path`` left by dead processes of this host are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    owner = re.compile(rf"^\.{re.escape(path.name)}\.tmp-{re.escape(host)}-(\d+)-")
    for stale in path.parent.iterdir():
        m = owner.match(stale.name)
        if m and not _process_alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{host}-{os.getpid()}-", dir=path.parent))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_results(output: str | os.PathLike, result: dict, markdown: str) -> None:
    """Write a benchmark's ``<output>.json`` and ``<output>.md`` (``output`` has no extension), each atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output.with_suffix(".json"), result)
    atomic_write_text(output.with_suffix(".md"), markdown)
