"""What to factorise and how to choose each layer's rank."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from ..targets import PATTERNS_HELP, ModulePatterns, check_module_patterns

# Task heads and poolers: any layer with one of these names as a whole dotted component ("bert.pooler.dense").
DEFAULT_EXCLUDE = r"(.*\.)?(classifier|pooler|lm_head|score|qa_outputs)(\..*)?"


@dataclass
class LowRankConfig:
    """Truncated-SVD factorisation of Linear layers: ``W (out x in) ~= up (out x r) @ down (r x in)``.

    Give exactly one of ``energy`` and ``compression``. A layer is factorised only where the two
    factors hold fewer parameters than ``W``; otherwise it stays dense and the report says why.
    """

    energy: Optional[float] = field(
        default=None,
        metadata={"help": "Keep the smallest rank whose singular values retain this share of sum(s^2) per layer, in (0, 1]."},
    )
    compression: Optional[float] = field(
        default=None,
        metadata={"help": "Target size of each factorised layer as a share of its dense weight, in (0, 1): 0.5 halves it."},
    )
    min_rank: int = field(default=8, metadata={"help": "Never go below this rank (a floor for very compressible layers)."})
    rank_multiple: int = field(
        default=8, metadata={"help": "Round ranks up to a multiple of this (GEMM kernels prefer it); 1 keeps them exact."}
    )
    target_modules: ModulePatterns = field(
        default=None, metadata={"help": f"Linear/Conv1D layers to factorise: {PATTERNS_HELP}. Default: every layer."}
    )
    exclude_modules: ModulePatterns = field(
        default=DEFAULT_EXCLUDE,
        metadata={"help": "Layers never factorised, same syntax. Default: task heads and poolers (classifier, pooler, lm_head, "
                  "score, qa_outputs and the layers inside them); null: none."},
    )

    def __post_init__(self):
        if (self.energy is None) == (self.compression is None):
            raise ConfigError("give exactly one of 'energy' (e.g. 0.9) and 'compression' (e.g. 0.5) to choose the ranks")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"energy={self.energy} is outside (0, 1]: it is the share of sum(s^2) kept, e.g. 0.9")
        if self.compression is not None and not 0 < self.compression < 1:
            raise ConfigError(f"compression={self.compression} is outside (0, 1): it is the factorised share of a layer, e.g. 0.5")
        if self.min_rank < 1:
            raise ConfigError(f"min_rank={self.min_rank} must be at least 1")
        if self.rank_multiple < 1:
            raise ConfigError(f"rank_multiple={self.rank_multiple} must be at least 1 (1 keeps ranks exact)")
        check_module_patterns(self.target_modules, self.exclude_modules)
