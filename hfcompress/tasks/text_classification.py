"""Sequence classification of single texts or text pairs (SST-2, MNLI): one prediction per example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .base import ServedBatch, Task


@dataclass(frozen=True)
class TextClassificationTask(Task):
    def align_logits(self, student_logits, teacher_logits, labels, attention_mask):
        import torch

        mask = torch.ones(student_logits.shape[0], dtype=torch.bool, device=student_logits.device)
        return student_logits, teacher_logits, labels, mask

    def count_items(self, labels, attention_mask, batch_size: int) -> int:
        return batch_size

    def card_labels(self, config: dict) -> Optional[dict]:
        return config.get("id2label")

    def serve_outputs(self, logits, batch: ServedBatch, top_k: Sequence[Optional[int]]) -> list[list[dict]]:
        """Labels by score, highest first, as the text-classification pipeline gives them: softmax over the
        labels, or a sigmoid per label for multi-label models; ``top_k`` None keeps every label."""
        import numpy as np

        config = batch.config
        if config.problem_type == "multi_label_classification" or logits.shape[-1] == 1:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            scores = shifted / shifted.sum(-1, keepdims=True)
        results = []
        for row, k in zip(scores, top_k):
            order = np.argsort(-row, kind="stable")[:k]
            results.append([{"label": config.id2label[int(i)], "score": float(row[i])} for i in order])
        return results


TEXT_CLASSIFICATION = TextClassificationTask(
    name="text-classification",
    display_name="Text Classification",
    auto_model="AutoModelForSequenceClassification",
    ort_model="ORTModelForSequenceClassification",
    architecture_suffixes=("ForSequenceClassification",),
    per_token=False,
    serves_pairs=True,
)
