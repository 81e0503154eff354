"""Pruning: unstructured/N:M magnitude pruning during training, structured head/neuron slimming, and CNN filter pruning."""

from .config import MagnitudePruningConfig, StructuredPruningConfig
from .filters import FilterPruningCallback, FilterPruningConfig, prune_filters
from .magnitude import MagnitudePruningCallback, magnitude_prune, sparsity_of
from .masks import REPORT_FILE
from .structured import StructuredPruningCallback, importance_scores, slim, structured_prune

__all__ = [
    "REPORT_FILE",
    "FilterPruningCallback",
    "FilterPruningConfig",
    "MagnitudePruningCallback",
    "MagnitudePruningConfig",
    "StructuredPruningCallback",
    "StructuredPruningConfig",
    "importance_scores",
    "magnitude_prune",
    "prune_filters",
    "slim",
    "sparsity_of",
    "structured_prune",
]
