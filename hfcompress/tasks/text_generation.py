"""Causal language modelling: next-token prediction, scored by loss and perplexity.

Its ONNX graph is Optimum's "text-generation-with-past" decoder (:mod:`hfcompress.export.decoder`):
input ids, attention mask, position ids and the past keys and values of every layer in, logits and
the present keys and values out. A past of length 0 is the prefill, so one graph serves both;
:mod:`hfcompress.generation` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .base import IGNORE_INDEX, Task


@dataclass(frozen=True)
class TextGenerationTask(Task):
    def prepare_tokenizer(self, tokenizer) -> None:
        if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none; padded positions are masked anyway
            tokenizer.pad_token = tokenizer.eos_token

    def encode(self, batch: dict, tokenizer, cfg, label2id: dict) -> dict:
        return self.tokenize_rows(batch, tokenizer, cfg)

    def collator(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.prepare_tokenizer(tokenizer)
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)

    def derived_inputs(self, encoding: dict) -> dict:
        """Position ids as ``generate`` computes them: running count of attended tokens (1 where padded)."""
        import numpy as np

        mask = np.asarray(encoding["attention_mask"], dtype=np.int64)
        return {**super().derived_inputs(encoding), "position_ids": np.where(mask == 0, 1, mask.cumsum(-1) - 1)}

    @property
    def export_task(self) -> str:
        return "text-generation-with-past"

    def ort_load_kwargs(self) -> dict:
        return {"use_cache": True}

    def trainer_compute_metrics(self, metric_names: Optional[Sequence[str]] = None, num_labels: int = 2):
        return None  # the eval loss is the metric

    def score(self, outputs: Iterable, num_labels: int) -> dict:
        import torch

        loss_sum, tokens = 0.0, 0
        for logits, labels in outputs:
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            loss_sum += float(torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((shift_labels != IGNORE_INDEX).sum())
        loss = loss_sum / max(tokens, 1)
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4)}

    def card_metrics(self, results: dict, metrics: dict) -> dict:
        if "perplexity" not in metrics and isinstance(results.get("eval_loss"), (int, float)):
            return {**metrics, "perplexity": math.exp(results["eval_loss"])}
        return metrics


TEXT_GENERATION = TextGenerationTask(
    name="text-generation",
    display_name="Text Generation",
    auto_model="AutoModelForCausalLM",
    ort_model="ORTModelForCausalLM",
    architecture_suffixes=("LMHeadModel", "ForCausalLM"),
    default_metrics=(),
    has_labels=False,
    label_shift=1,
    onnx_inputs=("input_ids", "attention_mask", "position_ids"),
    kv_cache=True,
)
