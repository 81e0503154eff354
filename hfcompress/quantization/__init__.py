"""Quantization: QAT matched to ONNX Runtime int8, post-training int8 and weight-only int4/int8 with ONNX Runtime, bitsandbytes loading, TensorRT QDQ."""

from .bnb import BnbConfig, load_bnb, quantize_bnb
from .config import PRESETS, PTQConfig, QATConfig, WeightOnlyConfig, ort_scheme
from .onnx_ptq import quantize_onnx
from .qat import QATCallback, fake_quantize, fold_qat, load_qat_ranges, prepare_qat
from .tensorrt import build_tensorrt_engine, check_tensorrt_qdq, tensorrt_provider_options, trtexec_command

__all__ = [
    "PRESETS",
    "BnbConfig",
    "PTQConfig",
    "QATCallback",
    "QATConfig",
    "WeightOnlyConfig",
    "build_tensorrt_engine",
    "check_tensorrt_qdq",
    "fake_quantize",
    "fold_qat",
    "load_bnb",
    "load_qat_ranges",
    "ort_scheme",
    "prepare_qat",
    "quantize_bnb",
    "quantize_onnx",
    "tensorrt_provider_options",
    "trtexec_command",
]
