"""Tasks as objects, and the one registry that maps a task name to its :class:`Task`.

``data.task`` in a recipe, ``--task`` on the command line and a checkpoint's architecture all
resolve here. A new task is a module beside this one that defines a :class:`Task` subclass; it is
registered by adding its instance to ``_BUILT_IN`` below.
"""

from __future__ import annotations

from typing import Union

from .base import IGNORE_INDEX, Task, TextInput, tokenize_inputs
from .image_classification import IMAGE_CLASSIFICATION
from .text_classification import TEXT_CLASSIFICATION
from .text_generation import TEXT_GENERATION
from .token_classification import TOKEN_CLASSIFICATION

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` available under ``task.name`` (a later registration of the same name replaces it)."""
    TASKS[task.name] = task
    return task


for _task in (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, TEXT_GENERATION, IMAGE_CLASSIFICATION):
    register_task(_task)

DEFAULT_TASK = TEXT_CLASSIFICATION.name


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(task: Union[str, Task]) -> Task:
    """The registered task of that name (a :class:`Task` is returned as it is)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        from ..errors import ConfigError, closest

        raise ConfigError(f"task '{task}' is not supported{closest(str(task), TASKS)}: use one of {list(TASKS)}")
    return TASKS[task]


def task_of(model_or_config) -> Task:
    """The task of a model, a config or a config dict, from its architecture name."""
    if isinstance(model_or_config, dict):
        architectures = model_or_config.get("architectures")
    elif hasattr(model_or_config, "config") and hasattr(model_or_config, "forward"):
        architectures = [type(model_or_config).__name__]
    else:
        architectures = getattr(model_or_config, "architectures", None)
    arch = (architectures or [""])[0]
    for task in TASKS.values():
        if arch and task.matches(arch):
            return task
    from ..errors import ModelError

    raise ModelError(f"cannot infer the task of architecture '{arch or 'unknown'}': pass the task explicitly (one of {list(TASKS)})")


__all__ = ["IGNORE_INDEX", "TASKS", "DEFAULT_TASK", "Task", "TextInput", "get_task", "register_task", "task_names", "task_of", "tokenize_inputs"]
