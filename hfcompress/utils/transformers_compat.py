"""TrainingArguments that mean the same under transformers 4.57 and 5.x.

transformers 5 renamed or removed Trainer arguments that recipes, scripts and users write:
``warmup_ratio`` became a ``warmup_steps`` below 1, ``group_by_length`` became
``train_sampling_strategy="group_by_length"``, ``no_cuda`` became ``use_cpu``, and
``overwrite_output_dir`` (which Trainer never read) and ``logging_dir`` are gone.
:func:`training_kwargs` takes either version's names and returns the installed version's, so a
setting keeps its meaning on both; what cannot be carried over is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import TrainingArguments

from ..errors import ConfigError

_INSTALLED = frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)

# Names accepted whichever transformers is installed, with their types (for recipe validation).
# warmup_steps may be a float: transformers 5 reads a value below 1 as a ratio of the training steps.
PORTABLE_FIELDS: dict[str, Any] = {
    "warmup_ratio": float,
    "warmup_steps": int | float,
    "group_by_length": bool,
    "train_sampling_strategy": str,
    "no_cuda": bool,
    "overwrite_output_dir": bool,
}
# train_sampling_strategy values transformers 4.x can express (as group_by_length true/false)
_V4_STRATEGIES = ("random", "group_by_length")


def training_kwargs(kwargs: dict) -> dict:
    """``kwargs`` for the installed ``TrainingArguments``, from transformers 4.x or 5.x names for the same settings."""
    out = dict(kwargs)
    if "no_cuda" in out:
        no_cuda = out.pop("no_cuda")
        if out.setdefault("use_cpu", no_cuda) != no_cuda:
            raise ConfigError(f"no_cuda {no_cuda} and use_cpu {out['use_cpu']} disagree: give only use_cpu (no_cuda is its old name)")
    _translate_warmup(out)
    _translate_sampling(out)
    if "overwrite_output_dir" not in _INSTALLED:
        out.pop("overwrite_output_dir", None)  # Trainer never read it (only example scripts did): dropping it changes nothing
    if "logging_dir" in out and "logging_dir" not in _INSTALLED:
        raise ConfigError("logging_dir was removed in transformers 5: remove it and set the TENSORBOARD_LOGGING_DIR environment variable")
    return out


def _translate_warmup(out: dict) -> None:
    ratio = out.pop("warmup_ratio", None)
    steps = out.get("warmup_steps") or 0
    if ratio is not None:
        if not 0 <= ratio < 1:
            raise ConfigError(
                f"warmup_ratio {ratio} must be in [0, 1): transformers 5 reads a warmup of 1 or more as steps; give warmup_steps instead"
            )
        if steps:
            raise ConfigError(f"warmup_ratio {ratio} and warmup_steps {steps} both set the warmup: give only one")
    elif 0 < steps < 1:
        ratio = steps  # transformers 5's spelling of a ratio
    if ratio is None:
        return
    if "warmup_ratio" in _INSTALLED:
        out.pop("warmup_steps", None)
        out["warmup_ratio"] = ratio
    else:
        out["warmup_steps"] = ratio


def _translate_sampling(out: dict) -> None:
    by_length = out.pop("group_by_length", None)
    strategy = out.pop("train_sampling_strategy", None)
    if by_length is not None and strategy is not None and by_length != (strategy == "group_by_length"):
        raise ConfigError(
            f"group_by_length {by_length} and train_sampling_strategy '{strategy}' disagree: give only train_sampling_strategy"
        )
    if strategy is None and by_length is None:
        return
    strategy = strategy or ("group_by_length" if by_length else "random")
    if "train_sampling_strategy" in _INSTALLED:
        out["train_sampling_strategy"] = strategy
    elif strategy in _V4_STRATEGIES:
        out["group_by_length"] = strategy == "group_by_length"
    else:
        raise ConfigError(
            f"train_sampling_strategy '{strategy}' needs transformers 5 (this one has only {list(_V4_STRATEGIES)}): upgrade transformers"
        )
