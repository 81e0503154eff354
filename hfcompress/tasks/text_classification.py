"""Sequence classification of single texts or text pairs (SST-2, MNLI): one prediction per example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import Task


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


TEXT_CLASSIFICATION = TextClassificationTask(
    name="text-classification",
    display_name="Text Classification",
    auto_model="AutoModelForSequenceClassification",
    ort_model="ORTModelForSequenceClassification",
    architecture_suffixes=("ForSequenceClassification",),
    per_token=False,
)
