"""The generation protocol over a transformers causal LM: ``generate`` is transformers' own."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .base import EosTokens, check_generation_args, eos_ids, prepare_tokenizer


class PyTorchCausalLM:
    """A transformers ``AutoModelForCausalLM`` with the protocol of :func:`hfcompress.generation.load_causal_lm`."""

    backend = "pytorch"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), prepare_tokenizer(tokenizer)
        self.config, self.generation_config = model.config, model.generation_config

    @classmethod
    def from_pretrained(cls, path: str | Path, **_ignored) -> "PyTorchCausalLM":
        from ..modeling import load_model, load_tokenizer
        from ..tasks.text_generation import TEXT_GENERATION

        return cls(load_model(str(path), TEXT_GENERATION), load_tokenizer(str(path)))

    @torch.inference_mode()
    def generate(
        self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None, *, max_new_tokens: int, do_sample: bool = False,
        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id: EosTokens = None, streamer=None,
    ) -> torch.LongTensor:
        from transformers import GenerationConfig

        check_generation_args(self.config, input_ids, max_new_tokens, temperature, top_k, top_p, streamer)
        # only the protocol's arguments apply (no repetition penalty or sampling defaults from the checkpoint), as in the ONNX runtime
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=eos_ids(eos_token_id, self.generation_config) or None,
            pad_token_id=self.tokenizer.pad_token_id, **({"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}),
        )
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return self.model.generate(input_ids, attention_mask=mask, generation_config=config, streamer=streamer)

    @torch.inference_mode()
    def logits(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
