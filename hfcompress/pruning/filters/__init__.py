"""Filter pruning for CNNs: whole output channels removed physically, with their BatchNorms and every consumer's inputs.

PEFT-style: :class:`FilterPruningConfig` (what and how much), ``importance`` (how channels rank),
:class:`FilterPruner` (the groups Torch-Pruning's dependency graph finds, masks, removal),
``persistence`` (the sizes recorded in the config, so the model reloads) and
:class:`FilterPruningCallback` (pruning at given steps of a Trainer run).
"""

from .callback import FilterPruningCallback, summarize_filter_pruning, write_filter_report
from .config import FilterPruningConfig
from .persistence import recorded_channels, reshape_recorded_channels
from .pruner import FilterPruner, example_inputs, prune_filters

__all__ = [
    "FilterPruner",
    "FilterPruningCallback",
    "FilterPruningConfig",
    "example_inputs",
    "prune_filters",
    "recorded_channels",
    "reshape_recorded_channels",
    "summarize_filter_pruning",
    "write_filter_report",
]
