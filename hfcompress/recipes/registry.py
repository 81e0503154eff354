"""Registries of recipe stages and of training callbacks ("modifiers").

A compression method plugs in by registering a config dataclass and a function, without touching
the runner: ``@register_stage("prune", PruneStageConfig)`` or ``@register_callback("magnitude_pruning", ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Registered:
    name: str
    config_cls: type
    fn: Callable[..., Any]


STAGES: dict[str, Registered] = {}
CALLBACKS: dict[str, Registered] = {}


def register_stage(name: str, config_cls: type):
    """Register ``fn(config, context) -> output directory`` as recipe stage ``name``."""

    def wrap(fn):
        STAGES[name] = Registered(name, config_cls, fn)
        return fn

    return wrap


def register_callback(name: str, config_cls: type):
    """Register ``fn(config) -> TrainerCallback`` for the ``callbacks:`` list of training stages."""

    def wrap(fn):
        CALLBACKS[name] = Registered(name, config_cls, fn)
        return fn

    return wrap
