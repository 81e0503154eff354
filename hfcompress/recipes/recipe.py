"""Recipes: YAML files of stages, validated in full before anything runs."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..data import DataConfig
from ..errors import ConfigError, closest
from ..utils.io import read_utf8
from .registry import STAGES
from .schema import from_dict, to_dict


@dataclass
class RecipeConfig:
    name: str = field(metadata={"help": "Name of the run, used in reports and cards."})
    output_dir: str = field(metadata={"help": "Where every stage writes its output (one sub-directory per stage)."})
    data: DataConfig = field(metadata={"help": "The task's dataset and columns."})
    stages: list = field(metadata={"help": "The stages, in order; each has a 'stage' key naming its type."})
    seed: int = 42
    description: Optional[str] = None


@dataclass
class Recipe:
    config: RecipeConfig
    stages: list[tuple[str, Any]]  # (stage type, validated stage config)
    resolved: dict[str, Any]


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory: give the path to a YAML recipe (see recipes/)")
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist: give the path to a YAML recipe (see recipes/)")
    try:
        data = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever the YAML error
        raise ConfigError(f"recipe {path} is not valid YAML{where}: {problem}; fix the file (a YAML mapping)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping with name, output_dir, data and stages")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    # {text!r} keeps the message on one line whatever the override contains
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value: write e.g. stages.student.training.learning_rate=3e-5")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key: write e.g. seed=1")
    try:
        return key.split("."), yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}): quote it or fix it") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; a stage is addressed by its name or index."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = _stage_by_name(node, key, ".".join(keys[: i + 1]))
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"override {text!r}: '{'.'.join(keys[:i])}' is not a mapping")
                node = node.setdefault(key, {})
        if isinstance(node, list):
            raise ConfigError(f"override {text!r} must name a key inside a stage, e.g. stages.student.training.num_train_epochs=1")
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: '{'.'.join(keys[:-1])}' is a value, not a mapping: override it whole")
        node[keys[-1]] = value
    return data


def _stage_by_name(stages: list, key: str, path: str) -> dict:
    if key.isdigit() and int(key) < len(stages):
        return stages[int(key)]
    names = [_stage_name(s) for s in stages]
    if key in names:
        return stages[names.index(key)]
    raise ConfigError(f"override names stage '{key}' at '{path}'{closest(key, names)}: stages are {names}")


def _stage_name(stage: Any) -> str:
    if not isinstance(stage, dict):
        return "?"
    if "name" in stage:
        return str(stage["name"])
    kind = stage.get("stage")
    default = STAGES[kind].config_cls if kind in STAGES else None
    if default is not None:
        for f in dataclasses.fields(default):
            if f.name == "name":
                return f.default
    return str(kind)


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a whole recipe: top-level keys, data, every stage's keys and types, model references."""
    from .context import check_model_ref

    config = from_dict(RecipeConfig, data)
    if not config.stages:
        raise ConfigError("stages: the recipe has no stages; add at least one (see recipes/)")
    stages, names = [], []
    for i, raw in enumerate(config.stages):
        path = f"stages[{i}]"
        if not isinstance(raw, dict) or "stage" not in raw:
            raise ConfigError(f"{path}: each stage needs a 'stage' key naming its type, one of {sorted(STAGES)}")
        kind = raw["stage"]
        if not isinstance(kind, str) or kind not in STAGES:
            raise ConfigError(f"{path}.stage: unknown stage '{kind}'{closest(str(kind), STAGES)}: use one of {sorted(STAGES)}")
        body = {k: v for k, v in raw.items() if k != "stage"}
        stage_cfg = from_dict(STAGES[kind].config_cls, body, path)
        name = stage_cfg.name
        if name in names:
            raise ConfigError(f"{path}.name: stage name '{name}' is used twice: give each stage a unique name")
        all_names = [_stage_name(s) for s in config.stages]
        for field_name in stage_cfg.input_fields():
            refs = getattr(stage_cfg, field_name)
            for j, ref in enumerate(refs if isinstance(refs, list) else [refs]):
                if ref is not None and ref not in all_names:
                    check_model_ref(ref, names, f"{path}.{field_name}" + (f"[{j}]" if isinstance(refs, list) else ""))
        names.append(name)
        stages.append((kind, stage_cfg))
    for i, (_, stage_cfg) in enumerate(stages):  # a stage reads only what ran before it
        later = {cfg.name for _, cfg in stages[i + 1 :]} | {stage_cfg.name}
        for ref in stage_cfg.inputs():
            if ref in later:
                raise ConfigError(
                    f"stages[{i}] ('{stage_cfg.name}') reads model '{ref}', which is {'itself' if ref == stage_cfg.name else 'a later stage'}: "
                    f"a stage can only read the outputs of stages before it; move '{stage_cfg.name}' after '{ref}'"
                )
    resolved = to_dict(config)
    resolved["stages"] = [{"stage": kind, **to_dict(cfg)} for kind, cfg in stages]
    return Recipe(config=config, stages=stages, resolved=resolved)


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> Recipe:
    data = load_yaml(path)
    data.pop("search", None)  # the space `hfcompress search` reads; a run ignores it
    return parse_recipe(apply_overrides(data, overrides or []))


__all__ = ["Recipe", "RecipeConfig", "apply_overrides", "load_recipe", "parse_recipe"]
