"""Is one classifier better than another on the same examples, beyond chance? Paired predictions, McNemar's exact test,
a paired bootstrap interval of the accuracy difference, and the non-inferiority gate built on them.

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
def classification_predictions(
    model, data: TaskData, batch_size: int = 64, tokenizer=None, backend: str = "auto", onnx_file: Optional[str] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max predictions and labels over ``data``'s evaluation split (labelled positions only), in split order."""
    loaded, backend = load_for_inference(model, data.task, backend, onnx_file)
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


def bootstrap_difference_interval(
    correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(A) - accuracy(B) in points, resampling examples (pairs kept together)."""
    from scipy.stats import bootstrap

    correct_a, correct_b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1 or not len(correct_a):
        raise ValueError(f"paired outcomes must be two 1-D arrays of the same non-zero length, got {correct_a.shape} and {correct_b.shape}")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"confidence must lie in (0, 1) and n_resamples be positive, got {confidence} and {n_resamples}")
    result = bootstrap(
        (correct_a, correct_b), lambda a, b, axis: a.mean(axis) - b.mean(axis), paired=True, vectorized=True,
        n_resamples=n_resamples, batch=1000, confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )
    return 100 * float(result.confidence_interval.low), 100 * float(result.confidence_interval.high)


def non_inferiority(ci_low: float, ci_high: float, difference: float, margin: float, confidence: float = 0.95) -> tuple[bool, str]:
    """Whether a candidate is within ``margin`` points of its reference, and the verdict every report and card prints.

    "Within M pt" needs the interval's lower bound above -M (a non-inferiority test at the interval's
    level); otherwise the verdict states the gap and its interval.
    """
    interval = f"{confidence:.0%} CI [{ci_low:+.2f}, {ci_high:+.2f}]"
    if ci_low > -margin:
        return True, f"within {margin:g} pt ({difference:+.2f} pt, {interval})"
    side = "below" if difference < 0 else "above"
    return False, f"{abs(difference):.2f} pt {side}, {interval}: not shown within {margin:g} pt"


def accuracy_gate(
    correct: np.ndarray, correct_reference: np.ndarray, margin: float, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> dict:
    """The statistical accuracy gate of a candidate against its reference (e.g. the teacher) on the same examples.

    ``correct``/``correct_reference``: per-example booleans. Returns ``difference_points`` (candidate minus
    reference), the bootstrap interval ``ci_low``/``ci_high`` at ``confidence``, McNemar's exact
    ``p_value_mcnemar``, the ``margin`` and the ``verdict``/``within_margin`` of :func:`non_inferiority`.
    """
    if margin < 0:
        raise ValueError(f"the non-inferiority margin is a number of points >= 0, got {margin}")
    correct, correct_reference = np.asarray(correct, dtype=bool), np.asarray(correct_reference, dtype=bool)
    difference = 100 * float(correct.mean() - correct_reference.mean())
    low, high = bootstrap_difference_interval(correct, correct_reference, confidence, n_resamples, seed)
    within, verdict = non_inferiority(low, high, difference, margin, confidence)
    return {
        "difference_points": round(difference, 4), "ci_low": round(low, 4), "ci_high": round(high, 4), "confidence": confidence,
        "p_value_mcnemar": mcnemar_exact(correct, correct_reference)["p_value"], "margin": margin, "verdict": verdict,
        "within_margin": within,
    }


def describe_gate(name: str, gate: dict) -> str:
    """The line reports print for a gated model: its name, the verdict and McNemar's p-value."""
    return f"{name}: {gate['verdict']} (McNemar p = {gate['p_value_mcnemar']:.3g})"
