"""F1, as an `evaluate` module bundled with hfcompress (the Hub copy needs a network)."""

import datasets
import numpy as np
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall.",
            citation="",
            inputs_description="predictions and references: lists of integer labels; average as in scikit-learn.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)
        score = np.asarray(score)
        return {"f1": float(score) if score.size == 1 else score.tolist()}
