"""Causal-LM runtimes behind one protocol: ``generate``, ``logits``, ``tokenizer``, ``config``, ``generation_config``.

:func:`load_causal_lm` picks the runtime from what a directory holds (or from ``backend``): an
export with ``model.onnx`` runs in ONNX Runtime with a KV cache, a checkpoint in transformers. A new
runtime is a module here whose loader is added to :data:`BACKENDS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, closest


def _load_pytorch(path, **options):
    from .pytorch import PyTorchCausalLM

    return PyTorchCausalLM.from_pretrained(path, **options)


def _load_onnxruntime(path, **options):
    from .ort import OrtCausalLM

    return OrtCausalLM.from_pretrained(path, **options)


def _load_genai(path, **options):
    from .genai import load_genai_causal_lm

    return load_genai_causal_lm(path, **options)


# name -> loader(path, **options); "auto" chooses among them by the files in the directory
BACKENDS: dict[str, Callable] = {"pytorch": _load_pytorch, "onnxruntime": _load_onnxruntime, "genai": _load_genai}


def detect_backend(path: str | os.PathLike) -> str:
    """The runtime a directory's files call for: onnxruntime-genai's config, an ONNX graph, else a transformers checkpoint."""
    directory = Path(path)
    if (directory / "genai_config.json").is_file():
        return "genai"
    if directory.is_dir() and any(directory.glob("*.onnx")):
        return "onnxruntime"
    return "pytorch"


def load_causal_lm(path: str | os.PathLike, backend: str = "auto", **options):
    """A causal LM ready to ``generate`` (a directory or Hub id); ``options`` go to the runtime (ONNX Runtime: ``intra_op_num_threads``, ``onnx_file``)."""
    if backend == "auto":
        backend = detect_backend(path)
    if backend not in BACKENDS:
        raise ConfigError(f"generation backend '{backend}' is not one of {['auto', *BACKENDS]}{closest(backend, BACKENDS)}")
    return BACKENDS[backend](path, **options)


__all__ = ["BACKENDS", "detect_backend", "load_causal_lm"]
