"""Low-rank factorisation of Linear layers by truncated SVD."""

from .config import LowRankConfig
from .factorize import factorize, factorize_checkpoint, save_factorized, select_rank
from .modeling import FactorizedConfig, LowRankLinear, is_factorized, load_factorized, register_factorized_auto_classes

register_factorized_auto_classes()

__all__ = [
    "FactorizedConfig",
    "LowRankConfig",
    "LowRankLinear",
    "factorize",
    "factorize_checkpoint",
    "is_factorized",
    "load_factorized",
    "save_factorized",
    "select_rank",
]
