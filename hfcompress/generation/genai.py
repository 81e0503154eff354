"""onnxruntime-genai as a generation backend: its C++ loop (KV cache, search, sampling) behind the causal-LM protocol.

A directory that onnxruntime-genai's model builder wrote (``model.onnx`` with GroupQueryAttention,
``genai_config.json``; :func:`hfcompress.export.genai.build_genai_model` writes one) is loaded by
:class:`GenaiCausalLM`, which answers ``generate`` like transformers' (the prompt and the new tokens,
greedy or sampled, a streamer fed token by token) and ``logits`` for one full forward pass: the
builder's graph returns the logits of every position of the prompt, so perplexity needs no other path.

End of sequence is decided here, not by onnxruntime-genai: its config's EOS is cleared when the model
loads, so ``generate(eos_token_id=...)`` means what it means in transformers (the generation config's
EOS when not given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import ConfigError, ModelError

GENAI_CONFIG_FILE = "genai_config.json"  # onnxruntime-genai's own name for its runtime config
GENAI_INSTALL_HINT = "pip install 'hfcompress[genai]' (onnxruntime-genai>=0.18, beside onnxruntime>=1.31)"


def import_genai():
    """The ``onnxruntime_genai`` module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime_genai
    except ImportError as e:
        raise ConfigError(f"onnxruntime-genai is not installed ({e}): {GENAI_INSTALL_HINT}") from None
    return onnxruntime_genai


def is_genai_model_dir(path: Union[str, Path]) -> bool:
    return (Path(path) / GENAI_CONFIG_FILE).is_file()


def carry_genai_config(source_dir: Union[str, Path], target_dir: Union[str, Path], onnx_name: str) -> None:
    """A graph rewritten from a genai build (weight-only int4 of its fp32 graph) keeps running in onnxruntime-genai:
    the build's runtime config is copied beside it, pointed at the new file. Nothing happens for other exports."""
    source = Path(source_dir) / GENAI_CONFIG_FILE
    if not source.is_file():
        return
    runtime_config = json.loads(source.read_text())
    runtime_config["model"]["decoder"]["filename"] = onnx_name
    (Path(target_dir) / GENAI_CONFIG_FILE).write_text(json.dumps(runtime_config, indent=4))


class GenaiCausalLM:
    """A model built for onnxruntime-genai, with ``generate``/``logits`` as the other causal-LM backends have them.

    ``intra_op_num_threads`` sets ONNX Runtime's intra-op threads (``session_options.intra_op_num_threads`` of the
    decoder); by default ONNX Runtime uses every core.
    """

    def __init__(self, path: Union[str, Path], *, intra_op_num_threads: Optional[int] = None):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        og = import_genai()
        self.path = Path(path)
        if not is_genai_model_dir(self.path):
            raise ModelError(f"{self.path} has no {GENAI_CONFIG_FILE}: build it with hfcompress.export.genai.build_genai_model (export backend 'genai')")
        if intra_op_num_threads is not None and intra_op_num_threads < 1:
            raise ConfigError(f"intra_op_num_threads must be a positive number of threads, got {intra_op_num_threads}")
        runtime_config = json.loads((self.path / GENAI_CONFIG_FILE).read_text())["model"]
        self.context_length = int(runtime_config["context_length"])
        config = og.Config(str(self.path))
        overlay: dict = {"model": {"eos_token_id": []}}  # generate() stops on EOS itself, see the module's docstring
        if intra_op_num_threads is not None:
            overlay["model"]["decoder"] = {"session_options": {"intra_op_num_threads": intra_op_num_threads, "inter_op_num_threads": 1}}
        config.overlay(json.dumps(overlay))
        self.model = og.Model(config)
        self._og = og
        self.config = AutoConfig.from_pretrained(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        try:
            self.generation_config = GenerationConfig.from_pretrained(self.path)
        except OSError:  # a build without generation_config.json: the model config's defaults, as transformers does
            self.generation_config = GenerationConfig.from_model_config(self.config)

    # --- the protocol ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: Union[int, Sequence[int], None] = None,
        streamer=None,
    ) -> torch.LongTensor:
        """The prompts followed by their new tokens, rows padded with the pad token after an early EOS (as transformers does).

        Rows are generated one after the other, each from its attended tokens (``attention_mask``; left
        padding stays where it is in the output). ``top_k=0`` and ``top_p=1.0`` filter nothing. Sampling
        draws its seed from torch's generator, so ``torch.manual_seed`` makes it reproducible.
        """
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if streamer is not None and input_ids.shape[0] != 1:
            raise ConfigError(f"a streamer takes one sequence, got a batch of {input_ids.shape[0]}: generate the rows one at a time")
        if do_sample and temperature <= 0:
            raise ConfigError(f"temperature must be positive when sampling, got {temperature}")
        stop = set(_token_ids(self.generation_config.eos_token_id if eos_token_id is None else eos_token_id))
        search = {"do_sample": bool(do_sample)}
        if do_sample:
            search.update(temperature=float(temperature), top_k=int(top_k) or int(self.config.vocab_size), top_p=float(top_p))
        if streamer is not None:
            streamer.put(input_ids.cpu())  # the prompt first, as transformers' generate does (skip_prompt drops it)
        rows = []
        for row, prompt in zip(input_ids, _attended_rows(input_ids, attention_mask)):
            if do_sample:
                search["random_seed"] = int(torch.randint(0, 2**31 - 1, ()))
            new_tokens = self._generate_row(prompt, max_new_tokens, search, stop, streamer)
            rows.append(torch.cat([row.cpu(), torch.tensor(new_tokens, dtype=row.dtype)]))
        if streamer is not None:
            streamer.end()
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.pad_token_id)

    @torch.no_grad()
    def logits(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[batch, sequence, vocab] float32 logits of one forward pass; zeros at padded positions."""
        out = torch.zeros((*input_ids.shape, self.config.vocab_size), dtype=torch.float32)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        for i, prompt in enumerate(_attended_rows(input_ids, attention_mask)):
            generator = self._generator(len(prompt), {})
            generator.append_tokens(self._feed(prompt))
            out[i, mask[i].cpu()] = torch.from_numpy(generator.get_output("logits")[0]).float()
        return out

    @property
    def pad_token_id(self) -> int:
        """What pads rows that ended early: the generation config's pad token, the config's, or the first EOS."""
        for candidate in (self.generation_config.pad_token_id, self.config.pad_token_id, *_token_ids(self.generation_config.eos_token_id)):
            if candidate is not None:
                return int(candidate)
        return 0

    # --- onnxruntime-genai's loop ---------------------------------------------------------------

    def _generate_row(self, prompt: torch.Tensor, max_new_tokens: int, search: dict, stop: set[int], streamer) -> list[int]:
        generator = self._generator(len(prompt) + max_new_tokens, search)
        generator.append_tokens(self._feed(prompt))
        new_tokens: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            new_tokens.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token in stop:
                break
        return new_tokens

    def _generator(self, max_length: int, search: dict):
        if max_length > self.context_length:
            raise ConfigError(
                f"{max_length} tokens (prompt and new tokens) exceed the model's context of {self.context_length}: shorten the prompt or ask for fewer new tokens"
            )
        params = self._og.GeneratorParams(self.model)
        # max_length also sizes the KV cache onnxruntime-genai allocates (past and present share one buffer)
        params.set_search_options(max_length=max_length, **search)
        return self._og.Generator(self.model, params)

    def _feed(self, prompt: torch.Tensor) -> np.ndarray:
        if len(prompt) == 0:
            raise ConfigError("a prompt has no tokens (its attention mask is all zeros): give at least one token")
        return prompt.cpu().numpy().astype(np.int32)[None]


def _token_ids(value: Union[int, Sequence[int], None]) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _attended_rows(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids must be [batch, sequence], got shape {list(input_ids.shape)}")
    if attention_mask is None:
        return list(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ConfigError(f"attention_mask {list(attention_mask.shape)} does not match input_ids {list(input_ids.shape)}")
    return [row[mask.bool()] for row, mask in zip(input_ids, attention_mask)]


def load_genai_causal_lm(path: Union[str, Path], intra_op_num_threads: Optional[int] = None) -> GenaiCausalLM:
    """The ``"genai"`` entry of :data:`hfcompress.generation.BACKENDS`."""
    return GenaiCausalLM(path, intra_op_num_threads=intra_op_num_threads)
