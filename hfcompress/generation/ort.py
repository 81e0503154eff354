"""Generation with an exported decoder-with-past graph (``model.onnx``) in ONNX Runtime.

The KV cache stays in ONNX Runtime between steps: each step binds the previous step's ``present``
OrtValues as the ``past`` inputs through IO binding, so only the last position's logits come back
to Python. Prefill is the same graph with a past of length 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ModelError
from ..evaluation.runtime import OnnxRuntimeModel, onnx_file_name, ort_session_options
from ..export.decoder import PAST_PREFIX, PRESENT_PREFIX, empty_past, is_past_input
from .base import EosTokens, TokenChooser, check_generation_args, eos_ids, position_ids, prepare_tokenizer


class OrtCausalLM(OnnxRuntimeModel):
    """An exported causal LM with the protocol of :func:`hfcompress.generation.load_causal_lm`.

    Called like a transformers model (``model(input_ids=..., attention_mask=...).logits``), it is also
    what the evaluation harness scores and times.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, config, tokenizer, generation_config=None, intra_op_num_threads: Optional[int] = None):
        from ..tasks.text_generation import TEXT_GENERATION

        super().__init__(Path(path), config, TEXT_GENERATION, ort_session_options(intra_op_num_threads))
        self.tokenizer = prepare_tokenizer(tokenizer) if tokenizer is not None else None
        self.generation_config = generation_config
        self.past_names = [name for name in self.input_names if is_past_input(name)]
        if not self.past_names:
            raise ModelError(f"{path} has no past_key_values inputs: re-export it with hfcompress export (its causal-LM graphs carry a KV cache)")
        self.present_names = [PRESENT_PREFIX + name[len(PAST_PREFIX):] for name in self.past_names]
        self.takes_positions = "position_ids" in self.input_names

    @classmethod
    def from_pretrained(cls, directory: str | Path, onnx_file: Optional[str] = None, intra_op_num_threads: Optional[int] = None) -> "OrtCausalLM":
        from transformers import AutoConfig, GenerationConfig

        from ..modeling import load_tokenizer

        directory = Path(directory)
        try:
            generation_config = GenerationConfig.from_pretrained(directory)
        except OSError:  # exports of checkpoints without one
            generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory))
        return cls(directory / onnx_file_name(directory, onnx_file), AutoConfig.from_pretrained(directory), load_tokenizer(str(directory)),
                   generation_config, intra_op_num_threads)

    def _inputs(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> dict[str, np.ndarray]:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        if self.takes_positions:
            feeds["position_ids"] = positions.numpy()
        return feeds

    def logits(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of every position in one forward pass over an empty past (perplexity, the evaluation harness)."""
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).long()
        feeds = {**self._inputs(input_ids.long(), mask, position_ids(mask)), **empty_past(self.session.get_inputs(), input_ids.shape[0])}
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(logits)

    def __call__(self, input_ids, attention_mask=None, **_ignored):
        from transformers.modeling_outputs import CausalLMOutput

        as_tensor = torch.as_tensor
        return CausalLMOutput(logits=self.logits(as_tensor(input_ids), None if attention_mask is None else as_tensor(attention_mask)))

    def generate(
        self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None, *, max_new_tokens: int, do_sample: bool = False,
        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id: EosTokens = None, streamer=None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.LongTensor:
        """Prompt + new tokens, as transformers' ``generate``: finished rows continue with the pad token until every row is done.

        ``generator`` seeds sampling (default: torch's global generator, so ``torch.manual_seed`` works too).
        """
        check_generation_args(self.config, input_ids, max_new_tokens, temperature, top_k, top_p, streamer)
        choose = TokenChooser(do_sample, temperature, top_k, top_p, generator)
        stops = torch.tensor(eos_ids(eos_token_id, self.generation_config), dtype=torch.long)
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else (stops[0].item() if len(stops) else 0)
        sequences = input_ids.long()
        mask = (attention_mask if attention_mask is not None else torch.ones_like(sequences)).long()
        positions = position_ids(mask)
        unfinished = torch.ones(sequences.shape[0], dtype=torch.bool)
        if streamer is not None:
            streamer.put(sequences.cpu())  # transformers' streamers take the prompt first (skip_prompt drops it)
        binding = self.session.io_binding()
        step_inputs, past = sequences, empty_past(self.session.get_inputs(), sequences.shape[0])
        for _ in range(max_new_tokens):
            logits, past = self._step(binding, self._inputs(step_inputs, mask, positions), past)
            next_tokens = choose(sequences, logits)
            next_tokens = torch.where(unfinished, next_tokens, pad)
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            unfinished &= ~torch.isin(next_tokens, stops)
            if not unfinished.any():
                break
            step_inputs, positions = next_tokens[:, None], positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        if streamer is not None:
            streamer.end()
        return sequences

    def _step(self, binding, inputs: dict[str, np.ndarray], past: dict) -> tuple[torch.Tensor, dict]:
        """One forward: the inputs and the past (arrays at prefill, OrtValues after) in, last logits and presents (OrtValues) out."""
        import onnxruntime as ort

        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.past_names:
            value = past[name]
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        for name in ("logits", *self.present_names):
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()
        last = torch.from_numpy(logits.numpy()[:, -1, :])
        return last, dict(zip(self.past_names, presents))
