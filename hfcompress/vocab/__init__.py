"""Vocabulary trimming: keep the tokens a task's corpus uses, rebuild the embeddings and the tokenizer."""

from .config import VocabTrimConfig
from .trim import count_token_ids, dev_token_changes, save_trimmed, trim_checkpoint, trim_vocabulary, trimmed_tokenizer

__all__ = [
    "VocabTrimConfig",
    "count_token_ids",
    "dev_token_changes",
    "save_trimmed",
    "trim_checkpoint",
    "trim_vocabulary",
    "trimmed_tokenizer",
]
