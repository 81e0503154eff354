"""What a stage's output was made from, so that ``--resume`` never mixes two runs.

A stage's fingerprint holds its resolved config, the recipe's seed and data config, the content
hashes of the data files it reads, and for each model it reads: the fingerprint digest of the
earlier stage that made it, or the content hash of a local directory, or a Hub id as written.
It is saved beside the stage's checkpoints when the stage starts and in its output when it is
published; ``--resume`` compares both with the recipe as it is now. File hashes are remembered
between runs for files whose size, mtime and inode are unchanged (:mod:`hfcompress.utils.hash_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from ..artifacts import FINGERPRINT_FILE
from ..utils.hashing import tree_hashes


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(data: dict) -> dict:
    """The data config and, for a local dataset, the content hash of each of its files."""
    local = Path(os.path.expanduser(str(data.get("path", ""))))
    return {"config": data, "files": tree_hashes(local, cached=True) if local.exists() else None}


def stage_fingerprint(stage: dict, stage_cfg, recipe_resolved: dict, earlier: dict[str, dict], data: Optional[dict]) -> dict:
    """The fingerprint of one stage; ``earlier`` holds the fingerprints of the stages before it, ``data`` the data's."""
    inputs = {}
    for ref in stage_cfg.inputs():
        if ref in earlier:
            inputs[ref] = {"stage": digest(earlier[ref])}
        else:
            local = Path(os.path.expanduser(ref))
            inputs[ref] = {"files": tree_hashes(local, cached=True)} if local.exists() else {"hub": ref}
    return {"seed": recipe_resolved.get("seed"), "stage": stage, "data": data if stage_cfg.uses_data else None, "inputs": inputs}


def read_fingerprint(directory: Path) -> Optional[dict]:
    try:
        return json.loads((directory / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe_change(before: dict, now: dict) -> Optional[str]:
    """What differs between two fingerprints, in words and with the key path; None when nothing does."""
    from .context import first_difference, redact_secrets

    difference = first_difference(redact_secrets(before), redact_secrets(now))
    if difference is None:
        return None
    if difference.startswith("data.files"):
        return f"its data changed: {difference}"
    if difference.startswith("inputs."):
        return f"a model it reads changed: {difference}"
    return f"a different recipe ({difference})"
