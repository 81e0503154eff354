"""What every causal-LM runtime shares: argument checks, the tokenizer's padding, and token selection."""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

EosTokens = Optional[Union[int, Sequence[int]]]


def prepare_tokenizer(tokenizer):
    """Pad on the left, as decoder-only generation needs; a tokenizer without a pad token pads with eos."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        logger.info("the tokenizer has no pad token: padding batches with its eos token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(config) -> Optional[int]:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_generation_args(config, input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int, top_p: float, streamer) -> None:
    """One-line errors for what cannot be generated: too long a context, bad sampling values, a streamer on a batch."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ConfigError(f"input_ids must be a [batch, length] tensor with at least one token, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    limit = max_positions(config)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ConfigError(
            f"a prompt of {input_ids.shape[1]} tokens plus max_new_tokens {max_new_tokens} exceeds the model's "
            f"max_position_embeddings {limit}: shorten the prompt or lower max_new_tokens"
        )
    if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"sampling needs temperature > 0, top_k >= 0 and 0 < top_p <= 1, got {temperature}, {top_k}, {top_p}")
    if streamer is not None and input_ids.shape[0] != 1:
        raise ConfigError(f"a streamer follows one sequence, but the batch holds {input_ids.shape[0]}: stream prompts one at a time")


def eos_ids(eos_token_id: EosTokens, generation_config) -> list[int]:
    """The stop tokens: the argument, else the generation config's."""
    value = eos_token_id if eos_token_id is not None else getattr(generation_config, "eos_token_id", None)
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as ``generate`` computes them with left padding: the running count of attended tokens (1 where padded)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


class TokenChooser:
    """The next token from the last logits: arg-max, or a sample after transformers' temperature, top-k and top-p warpers."""

    def __init__(self, do_sample: bool, temperature: float, top_k: int, top_p: float, generator: Optional[torch.Generator] = None):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.do_sample, self.generator = do_sample, generator
        self.warpers = LogitsProcessorList()
        if do_sample:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k:
                self.warpers.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        scores = self.warpers(sequences, logits.float())
        return torch.multinomial(scores.softmax(-1), 1, generator=self.generator).squeeze(1)
