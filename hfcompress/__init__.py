"""hfcompress: distil, prune and quantize fine-tuned Transformers models, then ship them."""

from .distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from .errors import ConfigError, DataError, HFCompressError, ModelError
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
    "BnbConfig",
    "PTQConfig",
    "QATCallback",
    "QATConfig",
    "quantize_bnb",
    "quantize_onnx",
]
