"""Pruning: unstructured/N:M magnitude pruning during training, and structured head/neuron slimming."""

from .config import MagnitudePruningConfig, StructuredPruningConfig
from .magnitude import MagnitudePruningCallback, magnitude_prune, sparsity_of
from .masks import REPORT_FILE
from .structured import StructuredPruningCallback, importance_scores, slim, structured_prune

__all__ = [
    "REPORT_FILE",
    "MagnitudePruningCallback",
    "MagnitudePruningConfig",
    "StructuredPruningCallback",
    "StructuredPruningConfig",
    "importance_scores",
    "magnitude_prune",
    "slim",
    "sparsity_of",
    "structured_prune",
]
