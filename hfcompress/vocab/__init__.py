"""Vocabulary trimming: keep the tokens a task's corpus uses, rebuild the embeddings and the tokenizer.

Names load on first use, so the CLI reads :class:`VocabTrimConfig` without importing torch.
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

_EXPORTS = {
    "VocabTrimConfig": "config",
    **{name: "trim" for name in ("count_token_ids", "dev_token_changes", "save_trimmed", "trim_checkpoint", "trim_vocabulary", "trimmed_tokenizer")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .config import VocabTrimConfig
    from .trim import count_token_ids, dev_token_changes, save_trimmed, trim_checkpoint, trim_vocabulary, trimmed_tokenizer
