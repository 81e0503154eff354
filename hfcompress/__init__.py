"""hfcompress: distil, prune and quantize fine-tuned Transformers models, then ship them."""

from .distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from .errors import ConfigError, DataError, HFCompressError, ModelError
from .pruning import MagnitudePruningCallback, MagnitudePruningConfig, StructuredPruningCallback, StructuredPruningConfig
from .lowrank import LowRankConfig, factorize, factorize_checkpoint, load_factorized
from .vocab import VocabTrimConfig, trim_checkpoint, trim_vocabulary
from .quantization import BnbConfig, PTQConfig, QATCallback, QATConfig, quantize_bnb, quantize_onnx

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
    "LowRankConfig",
    "factorize",
    "factorize_checkpoint",
    "load_factorized",
    "VocabTrimConfig",
    "trim_checkpoint",
    "trim_vocabulary",
    "BnbConfig",
    "PTQConfig",
    "QATCallback",
    "QATConfig",
    "quantize_bnb",
    "quantize_onnx",
]
