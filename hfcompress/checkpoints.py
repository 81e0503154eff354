"""Trainer checkpoints that can be trusted after a crash.

``Trainer`` writes a checkpoint file by file (weights, optimizer, scheduler, RNG state) and writes
``trainer_state.json`` last. A process killed in the middle leaves a directory that
``transformers.trainer_utils.get_last_checkpoint`` would still pick; here a checkpoint counts only
when its ``trainer_state.json`` parses and names the step in the directory name, and its weights
are present.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .artifacts import TRAINER_STATE_FILE

logger = logging.getLogger("hfcompress")

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def checkpoints_by_step(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory, newest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    m = _CHECKPOINT.match(path.name)
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    has_weights = any((path / name).is_file() for name in _WEIGHTS) or (path / "pytorch_model_fsdp_0").exists()
    return m is not None and state.get("global_step") == int(m.group(1)) and has_weights


def last_complete_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The newest checkpoint that was written to the end, or None."""
    return next((p for _, p in checkpoints_by_step(run_dir) if is_complete_checkpoint(p)), None)


def discard_incomplete_checkpoints(run_dir: str | os.PathLike) -> Optional[Path]:
    """Delete half-written checkpoints newer than the last complete one and return that one.

    Trainer would otherwise count them in ``save_total_limit`` rotation, or write over them file by file.
    """
    last = last_complete_checkpoint(run_dir)
    last_step = int(_CHECKPOINT.match(last.name).group(1)) if last else -1
    for step, path in checkpoints_by_step(run_dir):
        if step > last_step:
            logger.warning("hfcompress: discarding half-written checkpoint %s (the run was interrupted while saving it)", path)
            shutil.rmtree(path, ignore_errors=True)
    return last
