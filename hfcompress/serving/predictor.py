"""A loaded model and its tokenizer, answering batches of requests' inputs; the task shapes inputs and results.

Only formats that cannot run code load: an ONNX graph (through ONNX Runtime, as
:func:`hfcompress.evaluation.runtime.load_ort_model` loads it) or safetensors weights. Pickled
PyTorch weights (``.bin``, ``.pt``) are refused, and remote code never runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

from ..artifacts import COMPRESSION_SUMMARY_FILE, EVAL_RESULTS_FILE, PARITY_FILE, RECIPE_FILE, read_compression_summaries
from ..errors import DataError, ModelError
from ..tasks import Task, TextInput, task_of, tokenize_inputs
from ..tasks.base import ServedBatch
from .config import ServeConfig

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MODEL_SUFFIXES = (".onnx", ".onnx_data", ".safetensors")
MAX_POSITIONS_CAP = 512  # BERT-style encoders; longer inputs are truncated or refused by policy


def input_chars(item: TextInput) -> int:
    return len(item) if isinstance(item, str) else sum(map(len, item))


class Predictor:
    """A model, its tokenizer and task: ``predict`` runs one padded batch; ``metadata`` describes the model."""

    def __init__(self, model, tokenizer, task: Task, backend: str, model_path: str, config: ServeConfig):
        self.model, self.tokenizer, self.task, self.backend, self.model_path, self.config = model, tokenizer, task, backend, model_path, config
        self.model_config = model.config
        positions = getattr(self.model_config, "max_position_embeddings", None) or MAX_POSITIONS_CAP
        self.max_length = config.max_length or min(positions, MAX_POSITIONS_CAP)
        self._tokenizer_lock = threading.Lock()  # fast tokenizers refuse concurrent use ("Already borrowed")

    def parse(self, inputs) -> list[TextInput]:
        """The model inputs of a request's ``inputs``, checked against the limits; raises DataError for bad ones."""
        items = self.task.serve_inputs(inputs)
        limits = self.config
        if len(items) > limits.max_items:
            raise DataError(f"{len(items)} inputs in one request: send at most {limits.max_items} (the server's max_items)")
        longest = max(map(input_chars, items))
        if longest > limits.max_input_chars:
            raise InputTooLong(f"an input has {longest} characters: send at most {limits.max_input_chars} (the server's max_input_chars)")
        if limits.long_input == "reject":
            lengths = [len(ids) for ids in self._tokenize(items, truncation=False)["input_ids"]]
            if max(lengths) > self.max_length:
                raise InputTooLong(f"an input has {max(lengths)} tokens: send at most {self.max_length}, or run the server with long_input=truncate")
        return items

    def _tokenize(self, items: Sequence[TextInput], **kwargs):
        with self._tokenizer_lock:
            return tokenize_inputs(self.tokenizer, items, **kwargs)

    def predict(self, inputs: Sequence[TextInput], top_k: Union[Optional[int], Sequence[Optional[int]]] = None) -> list[list[dict]]:
        """Results of ``inputs`` run as one padded batch, truncated to ``max_length`` tokens.

        ``top_k`` is one value for all inputs or one per input (None: every label).
        """
        import torch

        inputs = list(inputs)
        top_ks = list(top_k) if isinstance(top_k, (list, tuple)) else [top_k] * len(inputs)
        encoding = self._tokenize(inputs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", **self.task.serve_tokenizer_kwargs())
        feeds = {name: value for name, value in encoding.items() if name != "offset_mapping"}
        with torch.inference_mode():
            logits = self.model(**feeds).logits
        return self.task.serve_outputs(logits.float().numpy(), ServedBatch(inputs, encoding, self.tokenizer, self.model_config), top_ks)

    def metadata(self) -> dict:
        """Task, labels, runtime, size on disk, measured metrics and how the model was compressed, from the files beside it."""
        id2label = getattr(self.model_config, "id2label", None) if self.task.has_labels else None
        return {
            **describe_model(self.model_path, self.task, self.backend),
            "labels": [id2label[i] for i in sorted(id2label)] if id2label else None,
            "accepts_pairs": self.task.serves_pairs,
            "max_length": self.max_length,
        }


class InputTooLong(DataError):
    """An input over the server's length limits (answered 413)."""


def describe_model(model_path: str, task: Task, backend: str) -> dict:
    """What /metadata tells of any served model: where it is, its task and runtime, and what the files beside it record."""
    directory = Path(model_path)
    return {
        "model": str(model_path),
        "task": task.name,
        "backend": backend,
        "size_bytes": model_size_bytes(directory) if directory.is_dir() else None,
        "metrics": measured_metrics(directory),
        "compression": [{"method": s.method, "summary": s.summary, "results": s.results} for s in read_compression_summaries(directory)]
        if (directory / COMPRESSION_SUMMARY_FILE).is_file() else [],
        "recipe": read_recipe(directory),
        "parity": read_json(directory / PARITY_FILE),
    }


def read_json(path: Path) -> Optional[dict]:
    import json

    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # metadata is descriptive: an unreadable file is left out, not fatal


def measured_metrics(directory: Path) -> dict:
    """The evaluation metrics Trainer saved with the model (``eval_accuracy`` -> ``accuracy``), without timings."""
    results = read_json(directory / EVAL_RESULTS_FILE) or {}
    timings = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    return {
        key.removeprefix("eval_"): value for key, value in results.items()
        if isinstance(value, (int, float)) and key.removeprefix("eval_") not in timings
    }


def read_recipe(directory: Path) -> Optional[dict]:
    """The resolved recipe saved beside the model (secrets already redacted by the runner)."""
    import yaml

    path = directory / RECIPE_FILE
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def model_size_bytes(directory: Path) -> int:
    """Bytes of the model's weights and graphs (what is loaded), not of logs or checkpoints."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)


def refuse_pickle(directory: Path) -> None:
    """A PyTorch checkpoint must hold safetensors weights: pickled ones could run code when loaded."""
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelError(
            f"{directory} holds only pickled weights {pickled}, which the server does not load (they can run code): "
            "save the model with save_pretrained(dir, safe_serialization=True), or export it to ONNX"
        )


def check_model_path(model_path: Union[str, os.PathLike]) -> Optional[Path]:
    """The local directory ``model_path`` names after a pre-flight of its files, or None for a Hub id; ModelError for a bad path."""
    from ..modeling import check_model_files

    path = str(model_path)
    local = Path(os.path.expanduser(path))
    if local.exists() and not local.is_dir():
        raise ModelError(f"model path {local} is a file: give the directory it was saved or exported to")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ModelError(f"model path {local} does not exist: give an exported ONNX directory, a safetensors checkpoint or a Hub id")
    if not local.is_dir():
        return None
    check_model_files(local, needs_tokenizer=True)
    return local


def set_torch_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_predictor(model_path: Union[str, os.PathLike], config: Optional[ServeConfig] = None):
    """The model at ``model_path`` (an exported ONNX directory, a safetensors checkpoint or a Hub id) ready to serve.

    A causal LM gets a :class:`~hfcompress.serving.generation.GenerationPredictor`, any other model a :class:`Predictor`.
    """
    from ..evaluation.runtime import load_ort_model, resolve_backend
    from ..modeling import load_config, load_model, load_tokenizer
    from ..tasks.text_generation import TextGenerationTask

    config = config or ServeConfig()
    path = str(model_path)
    local = check_model_path(path)
    task = task_of(load_config(path))
    if isinstance(task, TextGenerationTask):
        from .generation import load_generation_predictor

        return load_generation_predictor(path, task, config, local)
    backend = resolve_backend(path, config.backend, config.onnx_file)
    if backend == "onnx":
        model = load_ort_model(path, onnx_file=config.onnx_file, threads=config.threads)
    else:
        if local is not None:
            refuse_pickle(local)
        set_torch_threads(config.threads)
        model = load_model(path, task, use_safetensors=True).eval()
    predictor = Predictor(model, load_tokenizer(path), task_of(model.config), backend, path, config)
    predictor.predict(["warm-up"])  # the first run allocates; a task that cannot be served fails here, at start-up
    return predictor
