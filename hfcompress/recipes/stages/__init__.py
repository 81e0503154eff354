"""Built-in recipe stages; importing a module registers its stage."""

from . import evaluate, train  # noqa: F401
from . import card, push  # noqa: F401
