"""What ``hfcompress search`` searches: the space (recipe paths and their ranges), the proxy overrides and the budget.

The space lives in the recipe under ``search:`` or in its own YAML file (``--space``), so a search
works on any recipe's task: its parameters are override paths into the recipe, the same paths
``hfcompress run`` takes (``stages.<stage name>.training.temperature``, ``data.max_length``).
Everything is checked against the recipe before any training: every path and every end of every
range must give a valid recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..errors import ConfigError, closest
from ..recipes.recipe import apply_overrides, parse_recipe
from ..recipes.schema import from_dict

BUDGET_KEYS = ("latency_ms", "size_mb")  # p50 latency at batch 1 on this machine, size on disk


@dataclass
class ParamSpec:
    """One searched value: a float or int range (``low``, ``high``, optional ``log`` or ``step``) or a list of ``choices``."""

    type: Literal["float", "int", "categorical"] = field(metadata={"help": "float, int or categorical."})
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list] = None

    def __post_init__(self):
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ConfigError("a categorical parameter takes a non-empty 'choices' list and no low/high")
            return
        if self.choices is not None or self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError(f"a {self.type} parameter takes 'low' < 'high' and no choices (got low={self.low}, high={self.high})")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ConfigError(f"an int parameter takes integer bounds (got low={self.low}, high={self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ConfigError("a log-scale parameter needs low > 0 and no step")

    def ends(self) -> list:
        """The values that bound the range: checking them against the recipe checks the whole range's type and limits."""
        if self.type == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]

    def suggest(self, trial, path: str) -> Any:
        if self.type == "categorical":  # Optuna stores only scalar choices: lists ([0, 2, 4]) go through their JSON text
            return json.loads(trial.suggest_categorical(path, [json.dumps(c) for c in self.choices]))
        if self.type == "int":
            return trial.suggest_int(path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(path, self.low, self.high, step=self.step, log=self.log)


@dataclass
class SearchSpace:
    params: dict = field(metadata={"help": "Recipe path -> {type: float|int|categorical, low, high, log, step, choices}."})
    proxy: dict = field(default_factory=dict, metadata={
        "help": "Recipe path -> value, applied to every trial of a cheap first round (fewer steps, an evaluation subset); "
                "only the trials on its Pareto front are then trained in full. Empty: every trial is trained in full."})
    model: Optional[str] = field(default=None, metadata={"help": "Stage whose output is scored (default: the last stage that writes a model)."})
    reference: Optional[str] = field(default=None, metadata={
        "help": "Model the accuracy gate compares with, a stage name or path (default: the first other model an evaluate stage lists)."})
    metric: Optional[str] = field(default=None, metadata={"help": "Metric to maximise (default: the task's main one: accuracy, f1, ...)."})

    def __post_init__(self):
        if not self.params:
            raise ConfigError("search.params: list at least one recipe path to search, e.g. stages.student.training.temperature: {type: float, low: 1, high: 8}")
        self.specs = {path: from_dict(ParamSpec, spec, f"search.params.{path}") for path, spec in self.params.items()}

    def overrides(self, settings: dict) -> list[str]:
        return [override(path, value) for path, value in settings.items()]

    def proxy_overrides(self) -> list[str]:
        return [override(path, value) for path, value in self.proxy.items()]


def override(path: str, value: Any) -> str:
    """A ``path=value`` override of the recipe, the value as JSON (which YAML reads back as written)."""
    return f"{path}={json.dumps(value)}"


def load_space(recipe_data: dict, space_data: Optional[dict], source: str) -> SearchSpace:
    """The space from ``--space`` (``space_data``; a file that has a top-level ``search:`` key is read under it) or the recipe's ``search:`` block."""
    if space_data is not None:
        data = space_data.get("search", space_data)
    elif "search" in recipe_data:
        data = recipe_data["search"]
    else:
        raise ConfigError(f"{source} has no 'search:' block: add one to the recipe or pass --space FILE (see hfcompress search --help)")
    try:
        return from_dict(SearchSpace, data, "search")
    except ConfigError as e:
        raise ConfigError(f"search space: {e}") from None


def check_space(space: SearchSpace, recipe_data: dict) -> None:
    """Every parameter at each end of its range, and the proxy overrides, must give a valid recipe: checked before any training."""
    for path, spec in space.specs.items():
        for value in spec.ends():
            _check_override(recipe_data, [override(path, value)], f"search.params.{path} = {value!r}")
    if space.proxy:
        _check_override(recipe_data, space.proxy_overrides(), "search.proxy")
    names = [cfg.name for _, cfg in parse_recipe(recipe_data).stages]
    if space.model is not None and space.model not in names:
        raise ConfigError(f"search.model: the recipe has no stage '{space.model}'{closest(space.model, names)}: stages are {names}")


def _check_override(recipe_data: dict, overrides: list[str], where: str) -> None:
    try:
        parse_recipe(apply_overrides(recipe_data, overrides))
    except ConfigError as e:
        raise ConfigError(f"{where} does not fit the recipe: {e}") from None


def parse_budget(text: Optional[str]) -> dict[str, float]:
    """``latency_ms=5,size_mb=20`` -> {"latency_ms": 5.0, "size_mb": 20.0}; an empty budget is no limit."""
    budget: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--budget item {item!r} is not key=value: write e.g. latency_ms=5,size_mb=20")
        if key not in BUDGET_KEYS:
            raise ConfigError(f"--budget: unknown key '{key}'{closest(key, BUDGET_KEYS)}: use {', '.join(BUDGET_KEYS)}")
        try:
            budget[key] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {key}={value!r} is not a number: write e.g. {key}=5") from None
        if budget[key] <= 0:
            raise ConfigError(f"--budget {key}={value} must be positive")
    return budget
