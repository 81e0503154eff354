"""Task metrics and footprint of a PyTorch checkpoint or an ONNX model on the recipe's evaluation split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from ..data import TaskData
from ..tasks import Task, TextInput
from .footprint import onnx_footprint, pytorch_footprint
from .runtime import load_for_inference, model_source_path


def _batches(dataset, collator, batch_size: int, desc: str) -> Iterator[dict]:
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        # one read per batch: an on-the-fly transform (image processing) runs once on it, not once per row
        yield collator(dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset))))))


def _forward_fn(model, backend: str) -> Callable[[dict], torch.Tensor]:
    """Batch of torch tensors -> logits (float32, CPU) for either runtime."""
    if backend == "onnx":
        names = set(model.input_names)
        return lambda batch: model(**{k: v for k, v in batch.items() if k in names}).logits.float()
    device = next(model.parameters()).device
    return lambda batch: model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


@torch.no_grad()
def task_metrics(forward: Callable[[dict], torch.Tensor], task: Task, dataset, collator, batch_size: int, num_labels: int, desc: str) -> dict:
    """The task's metrics of ``forward`` over a tokenized split (classification: arg-max predictions; LMs: loss and perplexity)."""

    def outputs():
        for batch in _batches(dataset, collator, batch_size, desc):
            labels = batch.pop("labels")
            yield forward(batch), labels

    return task.score(outputs(), num_labels)


def evaluate_model(
    model, data: TaskData, batch_size: int = 64, backend: str = "auto", onnx_file: Optional[str] = None, tokenizer=None
) -> dict:
    """Task metrics, parameter count, size on disk, zipped size and sparsity of a model on ``data``'s evaluation split.

    ``model`` is a checkpoint directory or Hub id, a directory with an ONNX model (``model.onnx``, or
    ``onnx_file``) loaded through ``optimum.onnxruntime``, or an already loaded PreTrainedModel/ORTModel.
    ``backend="auto"`` picks ONNX Runtime when the directory holds an ``.onnx`` file. ``tokenizer``
    (for image tasks the image processor) defaults to the one saved with the model.
    """
    task = data.task
    loaded, backend = load_for_inference(model, task, backend, onnx_file)
    source = model_source_path(model)
    processor = tokenizer
    if processor is None:
        processor = task.load_processor(str(model) if isinstance(model, (str, os.PathLike)) else loaded.config._name_or_path)
    dataset = data.tokenize(processor, data.cfg.eval_split)
    name = Path(str(source or getattr(loaded.config, "_name_or_path", "model"))).name
    result: dict = {"path": str(source) if source else None, "backend": backend, "num_examples": len(dataset)}
    result.update(
        task_metrics(
            _forward_fn(loaded, backend), task, dataset, data.collator(processor), batch_size, data.num_labels, desc=f"Evaluating {name}"
        )
    )
    if backend == "onnx":
        result.update(onnx_footprint(loaded.path))
    else:
        result.update(pytorch_footprint(loaded, source if source and source.is_dir() else None))
    return result


def evaluation_texts(data: TaskData, count: Optional[int] = None) -> list[TextInput]:
    """The first ``count`` inputs of the evaluation split, pairs as (text, text_pair), images as RGB PIL images: real inputs for timing and parity."""
    return data.inputs(data.cfg.eval_split, count)


def evaluate_pytorch(path: str | Path, data: TaskData, batch_size: int = 64) -> dict:
    """:func:`evaluate_model` restricted to the PyTorch backend."""
    return evaluate_model(path, data, batch_size, backend="pytorch")
