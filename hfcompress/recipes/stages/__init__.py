"""Built-in recipe stages; importing a module registers its stage."""

from . import evaluate, export, factorize, prune, quantize, train, trim_vocab  # noqa: F401
