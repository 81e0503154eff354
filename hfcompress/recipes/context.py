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

from ..artifacts import FINGERPRINT_FILE, RECIPE_FILE, STAGE_DONE_FILE
from ..data import DataConfig, TaskData
from ..errors import ConfigError, ModelError, closest
from ..modeling import load_config
from ..utils.disk import model_bytes
from ..utils.io import atomic_write_json, atomic_write_text
from .fingerprint import describe_change, read_fingerprint

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|api_key)($|_)", re.IGNORECASE)  # hub_token, not tokenizer
REDACTED = "<redacted>"


def redact_secrets(obj: Any) -> Any:
    """A copy of a recipe with the values of token/secret/password keys replaced, for files and logs."""
    if isinstance(obj, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) and isinstance(v, str) and v else redact_secrets(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_secrets(v) for v in obj]
    return obj


@dataclass
class PlannedModel:
    """What a stage's output model will be, known before anything runs: its config and where its tokenizer comes from."""

    config: Any
    tokenizer_ref: str


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
    planned: dict[str, PlannedModel] = field(default_factory=dict)
    fingerprints: dict[str, dict] = field(default_factory=dict)  # by stage name: what its output is made from
    planned_bytes: dict[str, int] = field(default_factory=dict)  # by stage name: estimated size of the model it publishes
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

    def planned_model(self, ref: str, trust_remote_code: bool = False) -> Optional[PlannedModel]:
        """For pre-flight checks: an earlier stage's planned model, or the config of a local/Hub model
        (a ModelError when it cannot be found). None for an earlier stage that does not describe its output."""
        if ref in self.planned:
            return self.planned[ref]
        if ref in self.resolved_stage_names():
            return None
        path = self.resolve(ref)
        return PlannedModel(load_config(path, trust_remote_code), path)

    def model_bytes(self, ref: str) -> int:
        """Estimated size of a model a stage reads (an earlier stage's output, a local path or a Hub id), for the disk-space check."""
        if ref in self.planned_bytes:
            return self.planned_bytes[ref]
        try:
            planned = self.planned_model(ref)
        except ModelError:
            return 0  # a Hub model that cannot be reached now: the stage that loads it says so
        return model_bytes(self.resolve(ref), planned.config if planned else None)

    def resolved_stage_names(self) -> list[str]:
        return [s["name"] for s in self.resolved_recipe.get("stages", []) if isinstance(s, dict) and "name" in s]

    def work_dir(self, stage_name: str) -> Path:
        """Checkpoints and staging for a stage; kept across crashes so that --resume can continue."""
        return self.root / ".work" / stage_name

    def output_dir(self, stage_name: str) -> Path:
        return self.root / stage_name

    def write_recipe(self, directory: Path) -> None:
        atomic_write_text(directory / RECIPE_FILE, yaml.safe_dump(redact_secrets(self.resolved_recipe), sort_keys=False))

    def begin_stage(self, stage_name: str, discard_checkpoints: bool = False) -> None:
        """Record what the stage runs with beside its checkpoints (an interrupted run is resumed only with the same)."""
        work = self.work_dir(stage_name)
        if self.state.is_main_process:
            if discard_checkpoints:
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(work / FINGERPRINT_FILE, redact_secrets(self.fingerprints[stage_name]))
        self.state.wait_for_everyone()

    def publish(self, staging: Path, stage_name: str) -> Path:
        """Move a complete staging directory into place as the stage's output, with the recipe, its fingerprint and a done-marker.

        Only the main process writes; the others wait so that every rank sees the same outputs. A
        stage publishes once per run.
        """
        if stage_name in self.outputs:
            raise RuntimeError(f"stage '{stage_name}' published its output twice")
        out = self.output_dir(stage_name)
        if self.state.is_main_process:
            self.write_recipe(staging)
            if stage_name in self.fingerprints:
                atomic_write_json(staging / FINGERPRINT_FILE, redact_secrets(self.fingerprints[stage_name]))
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
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in place, --overwrite deletes it")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} is a file: choose a directory path")
    if root.exists() and any(root.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"output directory {root} already has results: pass --resume to continue that run, or --overwrite to start again"
        )


def clear_output(root: Path) -> None:
    """--overwrite: delete the previous run, only once the new one has passed its pre-flight checks."""
    if root.exists() and PartialState().is_main_process:
        shutil.rmtree(root)
    PartialState().wait_for_everyone()


def check_finished_stage_unchanged(stage: dict, output: Path, fingerprint: dict, data: dict, seed: int) -> None:
    """--resume skips a finished stage; that is only right if the recipe, its data and its input models are unchanged."""
    saved = read_fingerprint(output)
    if saved is not None:
        change = describe_change(saved, fingerprint)
    else:  # an output written before fingerprints: compare the recipe it saved
        change = _recipe_change(stage, output, data, seed)
    if change:
        raise ConfigError(
            f"--resume: stage '{stage['name']}' finished with {change}: resume with what it ran with, "
            f"re-run it with --force-stage {stage['name']}, or start again with --overwrite"
        )


def check_interrupted_stage_unchanged(stage_name: str, work_dir: Path, fingerprint: dict) -> None:
    """Continuing an interrupted stage's checkpoints with other settings or data would mix two runs."""
    saved = read_fingerprint(work_dir)
    change = describe_change(saved, fingerprint) if saved is not None else None
    if change:
        raise ConfigError(
            f"--resume: stage '{stage_name}' was interrupted while running with {change}; its checkpoints would mix two runs: "
            f"resume with what it ran with, or pass --force-stage {stage_name} to discard them and run it again"
        )


def _recipe_change(stage: dict, output: Path, data: dict, seed: int) -> Optional[str]:
    try:
        saved = yaml.safe_load((output / RECIPE_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None  # an output without its recipe: nothing to compare
    if not isinstance(saved, dict):
        return None
    previous = next((s for s in saved.get("stages") or [] if isinstance(s, dict) and s.get("name") == stage["name"]), None)
    now = {"seed": seed, "data": data, "stage": stage}
    before = {"seed": saved.get("seed"), "data": saved.get("data"), "stage": previous}
    difference = first_difference(redact_secrets(before), redact_secrets(now))
    return f"a different recipe ({difference})" if difference else None


def first_difference(a: Any, b: Any, path: str = "") -> Optional[str]:
    """'key.path: old -> new' for the first difference between two nested values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} -> {b!r}"
