"""Token classification (NER, POS): pre-split words in, one tag per word; the first sub-token of a word carries its tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .base import IGNORE_INDEX, ServedBatch, Task


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

    def serve_tokenizer_kwargs(self) -> dict:
        return {"return_offsets_mapping": True}

    def serve_outputs(self, logits, batch: ServedBatch, top_k: Sequence[Optional[int]]) -> list[list[dict]]:
        """One entry per sub-token with its best tag, as the token-classification pipeline gives them without
        aggregation: ``entity``, ``score``, ``index``, ``word`` (the text's own span for an unknown token),
        ``start`` and ``end``; special tokens, padding and the ``O`` tag are left out (the pipeline's ``ignore_labels``)."""
        import numpy as np

        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        scores = shifted / shifted.sum(-1, keepdims=True)
        encoding, unknown = batch.encoding, batch.tokenizer.unk_token_id
        results = []
        for i, row in enumerate(scores):
            tokens, ids, offsets = encoding.tokens(i), encoding["input_ids"][i], encoding["offset_mapping"][i]
            entities = []
            for index, word_id in enumerate(encoding.word_ids(i)):
                best = int(row[index].argmax())
                label = batch.config.id2label[best]
                if word_id is None or label == "O":
                    continue
                start, end = (int(x) for x in offsets[index])
                word = batch.inputs[i][start:end] if int(ids[index]) == unknown else tokens[index]
                entities.append({"entity": label, "score": float(row[index, best]), "index": index, "word": word, "start": start, "end": end})
            results.append(entities)
        return results

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
