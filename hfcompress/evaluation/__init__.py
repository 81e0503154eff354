"""Evaluation: task metrics, latency, footprint, MACs, paired comparisons and the compression report.

The public names are imported on first use (PEP 562), so ``from hfcompress.evaluation import count_macs``
loads only the MAC counter, not ``datasets``, evaluate or ONNX Runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "linear_weight_sparsity": "footprint",
    "onnx_footprint": "footprint",
    "pytorch_footprint": "footprint",
    "evaluate_model": "harness",
    "evaluate_pytorch": "harness",
    "evaluation_texts": "harness",
    "cpu_info": "latency",
    "measure_latency": "latency",
    "count_macs": "macs",
    "macs_by_module": "macs",
    "accuracy_gate": "paired",
    "bootstrap_difference_interval": "paired",
    "classification_predictions": "paired",
    "mcnemar_exact": "paired",
    "non_inferiority": "paired",
    "paired_comparison": "paired",
    "compression_row": "report",
    "write_compression_report": "report",
    "load_ort_model": "runtime",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .footprint import linear_weight_sparsity, onnx_footprint, pytorch_footprint
    from .harness import evaluate_model, evaluate_pytorch, evaluation_texts
    from .latency import cpu_info, measure_latency
    from .macs import count_macs, macs_by_module
    from .paired import accuracy_gate, bootstrap_difference_interval, classification_predictions, mcnemar_exact, non_inferiority, paired_comparison
    from .report import compression_row, write_compression_report
    from .runtime import load_ort_model
