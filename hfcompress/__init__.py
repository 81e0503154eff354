"""hfcompress: distil, prune and quantize fine-tuned Transformers models, then ship them."""

from .distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from .errors import ConfigError, DataError, HFCompressError, ModelError
from .pruning import MagnitudePruningCallback, MagnitudePruningConfig, StructuredPruningCallback, StructuredPruningConfig

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "HFCompressError",
    "ModelError",
    "build_student_from_teacher",
    "MagnitudePruningCallback",
    "MagnitudePruningConfig",
    "StructuredPruningCallback",
    "StructuredPruningConfig",
]
