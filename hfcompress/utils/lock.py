"""An exclusive lock per output directory, so two commands never write into the same place at once.

The lock is ``.<name>.lock`` beside the directory (``--overwrite`` deletes the directory, never its
lock), held with ``fcntl.flock``: the kernel releases it when the holder exits, even on SIGKILL. The
file names the holder (pid, host, command) for the error message; a file left behind by a process
that died is a stale lock, reported and taken over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..artifacts import LOCK_SUFFIX
from ..errors import ConfigError

logger = logging.getLogger("hfcompress")


def lock_path(directory: str | os.PathLike) -> Path:
    directory = Path(directory).absolute()
    return directory.parent / f".{directory.name}{LOCK_SUFFIX}"


@contextmanager
def output_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` for the ``with`` block; a ConfigError naming the holder if another process has it."""
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, directory)
    try:
        previous = _read_owner(fd)
        if previous:  # a clean release deletes the file: one still holding an owner is from a process that died
            logger.warning("hfcompress: took over the stale lock of %s on %s, which is no longer running", _describe(previous), directory)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500], "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)  # before unlocking, so a waiting process never sees our owner as stale
    finally:
        os.close(fd)


@contextmanager
def waiting_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created, with its folder, if missing) for a short critical section,
    waiting for any other holder; the kernel releases it when the file closes or the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _acquire(path: Path, directory) -> int:
    """A descriptor of ``path`` holding its flock; retried when a releasing holder unlinked the file meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise ConfigError(
                f"output directory {directory} is in use by {_describe(owner)} (lock {path}): wait for it to finish, or write somewhere else"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had just deleted: lock the current one instead


def _read_owner(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('command', '?')!s:.120})"
