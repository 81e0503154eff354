"""llama.cpp (through ``llama-cpp-python``) in the generation protocol, as the baseline a user would pick instead.

:func:`load_llamacpp` opens a GGUF file as an object with ``generate``, ``logits`` and ``tokenizer``,
so :mod:`.generation` measures it with the same code as the other runtimes. Greedy generation goes
through llama.cpp's own sampler (temperature 0); ``logits`` needs a context that keeps the logits of
every position (``logits_all``), which makes prefill slower, so the adapter holds one context at a
time and re-creates it when the caller switches between generating and scoring.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, ModelError
from ..utils.imports import module_missing

INSTALL_HINT = "pip install 'hfcompress[llamacpp]' (llama-cpp-python builds llama.cpp from source, which takes minutes)"


def llama_cpp_missing() -> Optional[str]:
    """Why llama.cpp cannot be used here, or None when ``llama_cpp`` imports."""
    return module_missing("llama_cpp", "llama-cpp-python", INSTALL_HINT)


class LlamaCppTokenizer:
    """llama.cpp's own tokenizer of the GGUF, with the ``encode``/``decode`` of a transformers tokenizer."""

    def __init__(self, lm: LlamaCppLM):
        self._lm = lm

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._lm.llama().tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._lm.llama().detokenize(list(ids)).decode("utf-8", errors="replace")


class LlamaCppLM:
    """A GGUF model in llama.cpp, batch 1, with the generation protocol's ``generate`` and ``logits``."""

    def __init__(self, path: str | os.PathLike, threads: int = 2, context: int = 2048):
        self.path, self.threads, self.context = Path(path), threads, context
        self._llama, self._logits_all = None, None
        self.tokenizer = LlamaCppTokenizer(self)
        self.config = None
        self.generation_config = None

    def llama(self, logits_all: Optional[bool] = None):
        """The llama.cpp context, re-created when ``logits_all`` differs from the current one's (None: any)."""
        from llama_cpp import Llama

        if self._llama is None or (logits_all is not None and logits_all != self._logits_all):
            self._llama = None  # free the old context before loading the new one: peak memory is one model's
            self._logits_all = bool(logits_all)
            self._llama = Llama(
                model_path=str(self.path), n_threads=self.threads, n_threads_batch=self.threads, n_ctx=self.context,
                logits_all=self._logits_all, verbose=False,
            )
        return self._llama

    @staticmethod
    def _single_row(input_ids) -> list[int]:
        if input_ids.shape[0] != 1:
            raise ConfigError(f"the llama.cpp adapter runs batch 1, got a batch of {input_ids.shape[0]}: send one sequence at a time")
        return input_ids[0].tolist()

    def logits(self, input_ids, attention_mask=None):
        """Logits [1, length, vocab] of one forward over ``input_ids`` from an empty cache."""
        import torch

        tokens = self._single_row(input_ids)
        if len(tokens) > self.context:
            raise ConfigError(f"{len(tokens)} tokens do not fit the llama.cpp context of {self.context}: load it with a larger context")
        llama = self.llama(logits_all=True)
        llama.reset()
        llama.eval(tokens)
        return torch.from_numpy(llama.scores[: len(tokens)].copy()).unsqueeze(0)

    def generate(self, input_ids, attention_mask=None, *, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id=None, streamer=None):
        """Prompt + up to ``max_new_tokens`` tokens from llama.cpp's sampler (greedy unless ``do_sample``)."""
        import torch

        prompt = self._single_row(input_ids)
        llama = self.llama(logits_all=False)
        if eos_token_id is None:
            eos_token_id = llama.token_eos()
        stop = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
        llama.reset()  # no reuse of the previous call's cache: every call does its whole prefill
        if streamer is not None:
            streamer.put(input_ids)  # the prompt first, as transformers' generate does
        new: list[int] = []
        sampling = {"temp": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {"temp": 0.0, "top_k": 1, "top_p": 1.0}
        for token in llama.generate(prompt, min_p=0.0, repeat_penalty=1.0, reset=True, **sampling):
            new.append(int(token))
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token in stop or len(new) >= max_new_tokens:
                break
        if streamer is not None:
            streamer.end()
        return torch.tensor([prompt + new], dtype=torch.long)


def load_llamacpp(path: str | os.PathLike, threads: int = 2, context: int = 2048) -> LlamaCppLM:
    """A GGUF file (or a directory holding exactly one) in llama.cpp with ``threads`` threads and a ``context``-token window."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise ModelError(f"'{path}' holds {len(found)} .gguf files: give the GGUF file itself")
        path = found[0]
    if not path.is_file():
        raise ModelError(f"GGUF file '{path}' does not exist: give the path of a .gguf model")
    missing = llama_cpp_missing()
    if missing:
        raise ModelError(missing)
    return LlamaCppLM(path, threads, context)
