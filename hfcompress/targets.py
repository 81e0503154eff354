"""Which layers a compression method acts on, and the one way a layer is swapped for another.

Every method (magnitude pruning, QAT, low-rank factorisation) names its layers with PEFT's
``target_modules`` / ``exclude_modules`` convention:

- a string is a regex that must match the whole module name (``re.fullmatch``);
- a list matches a module whose name equals an entry or ends with ``"." + entry``;
- ``target_modules=None`` selects every layer of the method's types; ``exclude_modules`` wins over it.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Union

from torch import nn

from .errors import ConfigError

ModulePatterns = Optional[Union[str, list[str]]]

PATTERNS_HELP = (
    "a string is a regex matched against the full module name; a list holds module names, each matching a name "
    "equal to it or ending with '.' + it (e.g. ['query', 'attention.output.dense'])"
)


def check_module_patterns(target_modules: ModulePatterns, exclude_modules: ModulePatterns) -> None:
    """Config-time validation: regexes compile, lists hold names; an empty exclude list excludes nothing."""
    for key, patterns in (("target_modules", target_modules), ("exclude_modules", exclude_modules)):
        if patterns is None:
            continue
        if isinstance(patterns, str):
            try:
                re.compile(patterns)
            except re.error as e:
                raise ConfigError(f"{key} '{patterns}' is not a valid regular expression ({e})") from None
        elif not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"{key} {patterns!r} must be a regex string or a list of module names: {PATTERNS_HELP}")
        elif key == "target_modules" and not patterns:
            raise ConfigError("target_modules is an empty list: leave it out to select every layer, or name some")


def matches(name: str, patterns: Union[str, list[str]]) -> bool:
    """Whether module ``name`` is named by ``patterns`` (regex string: full match; list: equal or dotted suffix)."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith(f".{p}") for p in patterns)


def select_modules(
    model: nn.Module,
    target_modules: ModulePatterns,
    exclude_modules: ModulePatterns = None,
    types: Optional[tuple[type, ...]] = None,
    ignore: Optional[Callable[[str], bool]] = None,
    key: str = "target_modules",
) -> dict[str, nn.Module]:
    """The modules of ``types`` that the patterns select, by name in module order; ConfigError if none.

    ``ignore`` drops names that are never candidates (e.g. training-only heads), whatever the patterns say.
    ``key`` is the config key the error names for ``target_modules`` (bitsandbytes selects the modules it keeps with its ``exclude_modules``).
    ``types`` defaults to Linear and GPT-2's Conv1D.
    """
    if types is None:
        # imported here: importing transformers runs hfcompress's model registration, whose configs import this module
        from transformers.pytorch_utils import Conv1D

        types = (nn.Linear, Conv1D)
    candidates = {
        name: module for name, module in model.named_modules()
        if name and isinstance(module, types) and not (ignore and ignore(name))
    }
    chosen = {
        name: module for name, module in candidates.items()
        if (target_modules is None or matches(name, target_modules)) and not (exclude_modules and matches(name, exclude_modules))
    }
    if not chosen:
        kinds = "/".join(t.__name__ for t in types)
        example = f"they are named like '{next(iter(candidates))}'" if candidates else "it has none"
        excluded = f" (exclude_modules={_shown(exclude_modules)})" if exclude_modules is not None else ""
        raise ConfigError(f"{key}={_shown(target_modules)}{excluded} match no {kinds} layer of {type(model).__name__}: {example}")
    return chosen


def _shown(patterns: ModulePatterns) -> str:
    """A regex as written (repr would double its backslashes), a list as a list."""
    return f"'{patterns}'" if isinstance(patterns, str) else repr(patterns)


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` at the dotted ``name`` inside ``model``; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)  # "" is the model itself
    old = getattr(parent, child)
    setattr(parent, child, new_module)
    return old
