"""Token classification (NER, POS): pre-split words in, one tag per word; the first sub-token of a word carries its tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .base import IGNORE_INDEX, Task


def align_word_labels(word_ids: list[Optional[int]], word_labels: list[int]) -> list[int]:
    """Label the first sub-token of each word; special tokens and continuations get -100."""
    labels, previous = [], None
    for wid in word_ids:
        labels.append(IGNORE_INDEX if wid is None or wid == previous else word_labels[wid])
        previous = wid
    return labels


@dataclass(frozen=True)
class TokenClassificationTask(Task):
    def label_values(self, column: Sequence) -> set:
        return {v for row in column for v in row}

    def encode(self, batch: dict, tokenizer, cfg, label2id: dict) -> dict:
        enc = self.tokenize_rows(batch, tokenizer, cfg)
        enc["labels"] = [
            align_word_labels(enc.word_ids(i), [label2id[t] for t in tags]) for i, tags in enumerate(batch[cfg.label_column])
        ]
        return enc

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def inputs(self, rows, cfg, count: Optional[int] = None) -> list[str]:
        """Words joined by spaces: what a user sends to a token-classification pipeline."""
        return [" ".join(words) for words in rows[cfg.text_column][:count]]

    def f1_average(self, num_labels: int) -> Optional[str]:
        return "macro"  # tags are many and skewed (mostly O): a plain binary F1 would be meaningless


TOKEN_CLASSIFICATION = TokenClassificationTask(
    name="token-classification",
    display_name="Token Classification",
    auto_model="AutoModelForTokenClassification",
    ort_model="ORTModelForTokenClassification",
    architecture_suffixes=("ForTokenClassification",),
    pre_split_words=True,
)
