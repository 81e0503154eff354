"""Built-in recipe stages; importing a module registers its stage."""

from . import evaluate, export, prune, train  # noqa: F401
