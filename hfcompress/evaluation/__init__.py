from .footprint import linear_weight_sparsity, onnx_footprint, pytorch_footprint
from .harness import evaluate_model, evaluate_pytorch, evaluation_texts
from .latency import cpu_info, measure_latency
from .macs import count_macs, macs_by_module
from .paired import accuracy_gate, bootstrap_difference_interval, classification_predictions, mcnemar_exact, non_inferiority, paired_comparison
from .report import compression_row, write_compression_report
from .runtime import load_ort_model

__all__ = [
    "accuracy_gate",
    "bootstrap_difference_interval",
    "compression_row",
    "classification_predictions",
    "count_macs",
    "cpu_info",
    "evaluate_model",
    "evaluate_pytorch",
    "evaluation_texts",
    "linear_weight_sparsity",
    "macs_by_module",
    "load_ort_model",
    "mcnemar_exact",
    "non_inferiority",
    "measure_latency",
    "onnx_footprint",
    "paired_comparison",
    "pytorch_footprint",
    "write_compression_report",
]
