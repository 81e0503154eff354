from .footprint import linear_weight_sparsity, onnx_footprint, pytorch_footprint
from .harness import evaluate_model, evaluate_pytorch, evaluation_texts
from .latency import cpu_info, measure_latency
from .report import compression_row, write_compression_report
from .runtime import load_ort_model

__all__ = [
    "compression_row",
    "cpu_info",
    "evaluate_model",
    "evaluate_pytorch",
    "evaluation_texts",
    "linear_weight_sparsity",
    "load_ort_model",
    "measure_latency",
    "onnx_footprint",
    "pytorch_footprint",
    "write_compression_report",
]
