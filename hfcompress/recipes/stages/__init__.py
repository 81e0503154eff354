"""Built-in recipe stages; importing a module registers its stage."""

from . import card, evaluate, export, factorize, prune, push, quantize, train, trim_vocab  # noqa: F401
