"""User-facing errors.

An :class:`HFCompressError` is a mistake the user can fix (a bad recipe key, a missing model,
incompatible teacher and student). The CLI prints it as one line, without a traceback unless
``--debug`` is given, and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class HFCompressError(Exception):
    """A problem in the user's input, with the fix in the message."""


class ConfigError(HFCompressError):
    """An invalid recipe, argument or config value."""


class DataError(HFCompressError):
    """A dataset that cannot be used as given."""


class ModelError(HFCompressError):
    """A model that cannot be loaded or does not fit the task."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' if nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class TrainingDivergedError(HFCompressError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the last good checkpoint."""
