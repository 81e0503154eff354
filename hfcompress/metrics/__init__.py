"""Task metrics through `evaluate`.

The Hub's metric scripts are unreachable offline, so the common ones ship with hfcompress as
local `evaluate` modules; any other name goes to ``evaluate.load`` as a Hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

BUNDLED_DIR = Path(__file__).parent
BUNDLED = tuple(sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / f"{p.name}.py").exists()))

DEFAULT_METRICS = {
    "text-classification": ("accuracy", "f1"),
    "token-classification": ("accuracy", "f1"),
    "text-generation": (),
}


def load_metric(name: str):
    import evaluate

    return evaluate.load(str(BUNDLED_DIR / name) if name in BUNDLED else name)


def compute_task_metrics(
    task: str, predictions: np.ndarray, references: np.ndarray, metric_names: Optional[Sequence[str]] = None, num_labels: int = 2
) -> dict[str, float]:
    """Metrics for arg-maxed predictions; for token tasks only the labelled positions (not -100) count."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task == "token-classification":
        keep = references != -100
        predictions, references = predictions[keep], references[keep]
    results: dict[str, float] = {}
    for name in metric_names if metric_names is not None else DEFAULT_METRICS[task]:
        kwargs = {"average": "macro"} if name == "f1" and (num_labels > 2 or task == "token-classification") else {}
        results.update(load_metric(name).compute(predictions=predictions.tolist(), references=references.tolist(), **kwargs))
    return results


def trainer_compute_metrics(task: str, metric_names: Optional[Sequence[str]] = None, num_labels: int = 2) -> Optional[Callable]:
    """A ``compute_metrics`` for ``transformers.Trainer``; None for text generation (eval loss is the metric)."""
    if task == "text-generation":
        return None

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return compute_task_metrics(task, logits.argmax(-1), eval_pred.label_ids, metric_names, num_labels)

    return compute
