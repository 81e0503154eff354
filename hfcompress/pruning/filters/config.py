"""What filter pruning removes, how it ranks channels and when it prunes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...errors import ConfigError
from ...targets import PATTERNS_HELP, ModulePatterns, check_module_patterns
from ..schedules import check_step_fields

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


@dataclass
class FilterPruningConfig:
    """Remove whole output channels (filters) of Conv2d layers, with their BatchNorm and every consumer's input channels.

    Give exactly one target: ``amount`` (the fraction of prunable channels removed) or
    ``target_macs_reduction`` (the fraction of the model's multiply-accumulates removed).
    """

    amount: Optional[float] = field(default=None, metadata={"help": "Fraction of the prunable channels to remove, in (0, 1)."})
    target_macs_reduction: Optional[float] = field(
        default=None, metadata={"help": "Remove channels until the model's MACs drop by this fraction, in (0, 1)."}
    )
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = field(
        default="l1",
        metadata={"help": "'l1'/'l2': norm of each filter's weights (Li et al. 2017); 'bn_scale': |gamma| of its BatchNorm "
                  "(network slimming); 'taylor': |sum(grad * weight)| over the channel's parameters, from calibration or training batches."},
    )
    scope: Literal["local", "global"] = field(
        default="local",
        metadata={"help": "'local': every layer loses the same fraction; 'global': channels ranked across layers "
                  "(scores divided by their layer's mean, so layers with larger weights do not keep everything)."},
    )
    min_channels: int = field(default=1, metadata={"help": "Never keep fewer channels than this in a layer."})
    round_to: int = field(default=1, metadata={"help": "Keep a multiple of this many channels in each layer (e.g. 8, for vectorised CPU kernels)."})
    coupled: Literal["skip", "prune"] = field(
        default="skip",
        metadata={"help": "Channels tied by residual additions (several convs write the same channels): 'skip' leaves them "
                  "alone and prunes only the channels inside blocks (as Li et al. 2017 do for ResNets); 'prune' removes them as one group."},
    )
    iterations: int = field(
        default=1,
        metadata={"help": "Prune in this many equal steps, re-ranking the remaining channels each time; with training, "
                  "the steps are spread from start_step to end_step and the model trains in between."},
    )
    start_step: Union[int, float] = field(default=0, metadata={"help": "During training: first pruning step (int) or fraction of training (float)."})
    end_step: Union[int, float] = field(default=0.5, metadata={"help": "During training: last pruning step (int) or fraction of training (float)."})
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Side of the image that tracing and MAC counts run on; default: the model config's image_size, else 224."}
    )
    target_modules: ModulePatterns = field(
        default=None, metadata={"help": f"Conv2d layers whose output channels may be pruned: {PATTERNS_HELP}. Default: every Conv2d."}
    )
    exclude_modules: ModulePatterns = field(default=None, metadata={"help": "Conv2d layers kept whole even if target_modules selects them (same syntax)."})

    def __post_init__(self):
        if (self.amount is None) == (self.target_macs_reduction is None):
            raise ConfigError("give exactly one of 'amount' (fraction of channels) or 'target_macs_reduction' (fraction of MACs) for filter pruning")
        for name in ("amount", "target_macs_reduction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(f"{name} {value} must be in (0, 1): it is the fraction removed (e.g. 0.4)")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance '{self.importance}' is not one of {list(IMPORTANCES)}")
        for name in ("min_channels", "round_to", "iterations", "image_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)} must be at least 1")
        check_step_fields(self)
        check_module_patterns(self.target_modules, self.exclude_modules)

    @property
    def by_macs(self) -> bool:
        return self.target_macs_reduction is not None
