"""What a running stage sees: the recipe, the data, earlier stages' outputs and where to write."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from accelerate import PartialState

from ..data import DataConfig, TaskData
from ..errors import ConfigError, closest
from ..utils.io import atomic_write_text

RECIPE_FILE = "hfcompress_recipe.yaml"
STAGE_DONE_FILE = ".hfcompress_stage_done"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


@dataclass
class RunContext:
    name: str
    data_config: DataConfig
    seed: int
    root: Path
    resolved_recipe: dict[str, Any]
    resume: bool = False
    outputs: dict[str, Path] = field(default_factory=dict)
    _data: Optional[TaskData] = None

    @property
    def state(self) -> PartialState:
        return PartialState()

    def data(self) -> TaskData:
        if self._data is None:
            self._data = TaskData(self.data_config, seed=self.seed)
        return self._data

    def resolve(self, ref: str) -> str:
        """A model reference: an earlier stage's name, a local path, or a Hub id."""
        if ref in self.outputs:
            return str(self.outputs[ref])
        return os.path.expanduser(ref)

    def work_dir(self, stage_name: str) -> Path:
        """Checkpoints and staging for a stage; kept across crashes so that --resume can continue."""
        return self.root / ".work" / stage_name

    def output_dir(self, stage_name: str) -> Path:
        return self.root / stage_name

    def write_recipe(self, directory: Path) -> None:
        atomic_write_text(directory / RECIPE_FILE, yaml.safe_dump(self.resolved_recipe, sort_keys=False))

    def publish(self, staging: Path, stage_name: str) -> Path:
        """Move a complete staging directory into place as the stage's output, with the recipe and a done-marker.

        Only the main process writes; the others wait so that every rank sees the same outputs.
        """
        out = self.output_dir(stage_name)
        if self.state.is_main_process:
            self.write_recipe(staging)
            (staging / STAGE_DONE_FILE).write_text("ok\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        self.state.wait_for_everyone()
        self.outputs[stage_name] = out
        return out

    def fresh_staging(self, stage_name: str) -> Path:
        staging = self.work_dir(stage_name) / "staging"
        if self.state.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.state.wait_for_everyone()
        return staging


def check_model_ref(ref: str, known_stages, path: str) -> None:
    """Fail before any work when a model reference can be neither a stage, a local path nor a Hub id."""
    if ref in known_stages:
        return
    local = Path(os.path.expanduser(ref))
    if local.exists():
        return
    hint = closest(ref, known_stages)
    if looks_like_hub_id(ref) and not ("/" not in ref and hint):
        return  # a bare name close to a stage name is far likelier a typo than a legacy Hub id
    raise ConfigError(
        f"{path}: model '{ref}' is not an earlier stage{hint} ({sorted(known_stages) or 'none yet'}), "
        "an existing local path, or a Hub id: fix the path or the stage name"
    )


def ensure_no_stale_output(root: Path, resume: bool, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"output directory {root} already has results: pass --resume to continue that run, or --overwrite to start again"
        )
    if overwrite and root.exists() and PartialState().is_main_process:
        shutil.rmtree(root)
    PartialState().wait_for_everyone()
