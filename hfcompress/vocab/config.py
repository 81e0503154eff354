"""Which tokens a trimmed vocabulary keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class VocabTrimConfig:
    """Keep the tokens a task's corpus uses, plus the special tokens and (by default) every single-character token.

    With the single characters kept, every word the original tokenizer could spell still tokenises:
    a word whose pieces were dropped falls back to shorter pieces instead of ``[UNK]``.
    """

    min_frequency: int = field(
        default=1, metadata={"help": "Keep a corpus token only if it occurs at least this many times in the training split."}
    )
    keep_single_characters: bool = field(
        default=True,
        metadata={"help": "Keep every one-character token (and WordPiece '##x' continuations) so any word still tokenises."},
    )
    keep_tokens: list[str] = field(
        default_factory=list, metadata={"help": "Extra tokens (strings from the vocabulary) to keep whatever the corpus says."}
    )

    def __post_init__(self):
        if self.min_frequency < 1:
            raise ConfigError(f"min_frequency={self.min_frequency} must be at least 1 (1 keeps every token the corpus uses)")
