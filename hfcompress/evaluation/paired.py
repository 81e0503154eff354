"""Is one classifier better than another on the same examples, beyond chance? Paired predictions and McNemar's exact test.

On a dev set of 872 sentences one sentence is 0.11 points, so differences of a few tenths between two
models are a handful of sentences; the test counts the sentences only one of the two gets right.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..data import TaskData
from ..modeling import load_tokenizer
from .harness import _batches, _forward_fn
from .runtime import load_for_inference


@torch.no_grad()
def classification_predictions(model, data: TaskData, batch_size: int = 64, tokenizer=None, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Arg-max predictions and labels over ``data``'s evaluation split (labelled positions only), in split order."""
    loaded, backend = load_for_inference(model, data.task, backend)
    tokenizer = tokenizer or load_tokenizer(str(model))
    predictions, labels = [], []
    forward = _forward_fn(loaded, backend)
    for batch in _batches(data.tokenize(tokenizer, data.cfg.eval_split), data.collator(tokenizer), batch_size, "Predicting"):
        batch_labels = batch.pop("labels")
        keep = batch_labels != -100
        predictions.append(forward(batch).argmax(-1)[keep].numpy())
        labels.append(batch_labels[keep].numpy())
    return np.concatenate(predictions), np.concatenate(labels)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired outcomes: how many examples only A gets right, only B, and the two-sided p-value.

    Under the null hypothesis (equally accurate) each discordant example is a fair coin flip, so the
    p-value is the two-sided binomial tail of the smaller count among the discordant ones.
    """
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired outcomes must have the same shape, got {correct_a.shape} and {correct_b.shape}")
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": min(1.0, 2 * tail)}


def paired_comparison(predictions_a: np.ndarray, predictions_b: np.ndarray, labels: np.ndarray, reference: Optional[np.ndarray] = None) -> dict:
    """Accuracy difference of A over B in points, McNemar's test, and (with ``reference``, e.g. the teacher) each one's agreement with it."""
    correct_a, correct_b = predictions_a == labels, predictions_b == labels
    result = {"accuracy_difference_points": round(100 * float(correct_a.mean() - correct_b.mean()), 2), **mcnemar_exact(correct_a, correct_b)}
    if reference is not None:
        result["agreement_a"] = float((predictions_a == reference).mean())
        result["agreement_b"] = float((predictions_b == reference).mean())
    return result
