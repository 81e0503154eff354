"""The stage shape, and the registries of recipe stages and of training callbacks ("modifiers").

A compression method plugs in by registering a config dataclass and a function, without touching
the runner: ``@register_stage("prune", PruneStageConfig)`` or ``@register_callback("magnitude_pruning", ...)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from .context import RunContext


class StageConfig:
    """What every stage config is: a dataclass that also subclasses this.

    Its fields marked ``model_ref`` are the models it reads (earlier stages' names, paths or Hub
    ids); ``name`` is its output sub-directory. The runner calls :meth:`preflight` of every stage
    before any stage starts, then the registered ``run(config, context)``, which publishes the
    stage's output through the context exactly once and returns it.

    Every stage config lists its fields in one order: the models it reads, ``name``, the method's
    fields, then the stage's own. A stage that extends a method's config (``ExportConfig``, ...)
    gets it by inheritance: ``class ExportStageConfig(ExportConfig, ExportStageInputs)``, where
    ``ExportStageInputs`` (a StageConfig dataclass holding the model refs and ``name``) comes last
    among the bases, so dataclasses collect its fields first.
    """

    uses_data: ClassVar[bool] = True  # whether the run must load the dataset for this stage
    name: str

    def preflight(self, ctx: "RunContext") -> None:
        """Checks of what the stage will read and make, before any stage runs; records ``ctx.planned[name]`` where it can."""

    def disk_bytes(self, ctx: "RunContext") -> tuple[int, int]:
        """(bytes of the model it publishes, bytes it writes in all), estimated after :meth:`preflight` as
        :mod:`hfcompress.utils.disk` documents. By default: a model the size of the largest it reads."""
        size = max((ctx.model_bytes(ref) for ref in self.inputs()), default=0)
        return size, size

    @classmethod
    def input_fields(cls) -> list[str]:
        """The fields naming models the stage reads, in field order: marked ``model_ref`` where any class of the stage
        declares them (a method config's field that is also an input, such as the card's ``onnx``, keeps the method's
        declaration; the stage's inputs base marks it)."""
        marked = {f.name for base in cls.__mro__ if dataclasses.is_dataclass(base) for f in dataclasses.fields(base) if f.metadata.get("model_ref")}
        return [f.name for f in dataclasses.fields(cls) if f.name in marked]

    def inputs(self) -> list[str]:
        """The models the stage reads, in field order."""
        refs: list[str] = []
        for name in self.input_fields():
            value = getattr(self, name)
            refs.extend(v for v in (value if isinstance(value, list) else [value]) if v is not None)
        return refs


@dataclass(frozen=True)
class Registered:
    name: str
    config_cls: type
    fn: Callable[..., Any]


STAGES: dict[str, Registered] = {}
CALLBACKS: dict[str, Registered] = {}


def register_stage(name: str, config_cls: type):
    """Register ``run(config, context) -> output directory`` as recipe stage ``name``; ``config_cls`` is a :class:`StageConfig` dataclass."""
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, StageConfig)):
        raise TypeError(f"stage '{name}': {config_cls.__name__} must be a dataclass subclassing hfcompress.recipes.registry.StageConfig")

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
