"""Task metrics and footprint of a PyTorch checkpoint or an ONNX model on the recipe's evaluation split."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import TaskData
from ..metrics import compute_task_metrics
from ..modeling import load_tokenizer
from .footprint import onnx_footprint, pytorch_footprint
from .runtime import load_for_inference, model_source_path


def _batches(dataset, collator, batch_size: int, desc: str) -> Iterator[dict]:
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        yield collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def _forward_fn(model, backend: str) -> Callable[[dict], torch.Tensor]:
    """Batch of torch tensors -> logits (float32, CPU) for either runtime."""
    if backend == "onnx":
        names = set(model.input_names)
        return lambda batch: model(**{k: v for k, v in batch.items() if k in names}).logits.float()
    device = next(model.parameters()).device
    return lambda batch: model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


@torch.no_grad()
def task_metrics(forward: Callable[[dict], torch.Tensor], task: str, dataset, collator, batch_size: int, num_labels: int, desc: str) -> dict:
    """Metrics of ``forward`` over a tokenized split.

    Classification: ``evaluate`` metrics of the arg-max predictions (token tasks: labelled positions only).
    Text generation: mean next-token loss and perplexity over the non-padding tokens.
    """
    predictions, references, loss_sum, tokens = [], [], 0.0, 0
    for batch in _batches(dataset, collator, batch_size, desc):
        labels = batch.pop("labels")
        logits = forward(batch)
        if task == "text-generation":
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            loss_sum += float(torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum"))
            tokens += int((shift_labels != -100).sum())
            continue
        keep = labels != -100
        predictions.append(logits.argmax(-1)[keep].numpy())
        references.append(labels[keep].numpy())
    if task == "text-generation":
        loss = loss_sum / max(tokens, 1)
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4)}
    return compute_task_metrics(task, np.concatenate(predictions), np.concatenate(references), num_labels=num_labels)


def evaluate_model(
    model, data: TaskData, batch_size: int = 64, backend: str = "auto", onnx_file: Optional[str] = None, tokenizer=None
) -> dict:
    """Task metrics, parameter count, size on disk, zipped size and sparsity of a model on ``data``'s evaluation split.

    ``model`` is a checkpoint directory or Hub id, a directory with an ONNX model (``model.onnx``, or
    ``onnx_file``) loaded through ``optimum.onnxruntime``, or an already loaded PreTrainedModel/ORTModel.
    ``backend="auto"`` picks ONNX Runtime when the directory holds an ``.onnx`` file. ``tokenizer``
    defaults to the one saved with the model.
    """
    task = data.cfg.task
    loaded, backend = load_for_inference(model, task, backend, onnx_file)
    source = model_source_path(model)
    if tokenizer is None:
        tokenizer = load_tokenizer(str(model) if isinstance(model, (str, os.PathLike)) else loaded.config._name_or_path)
    dataset = data.tokenize(tokenizer, data.cfg.eval_split)
    name = Path(str(source or getattr(loaded.config, "_name_or_path", "model"))).name
    result: dict = {"path": str(source) if source else None, "backend": backend, "num_examples": len(dataset)}
    result.update(
        task_metrics(
            _forward_fn(loaded, backend), task, dataset, data.collator(tokenizer), batch_size, data.num_labels, desc=f"Evaluating {name}"
        )
    )
    if backend == "onnx":
        result.update(onnx_footprint(loaded.path))
    else:
        result.update(pytorch_footprint(loaded, source if source and source.is_dir() else None))
    return result


def evaluation_texts(data: TaskData, count: Optional[int] = None) -> list[str]:
    """The first ``count`` texts of the evaluation split (word lists joined for token tasks): real inputs for timing and parity."""
    column = data.raw[data.cfg.eval_split][data.cfg.text_column][:count]
    return [" ".join(t) if isinstance(t, list) else t for t in column]


def evaluate_pytorch(path: str | Path, data: TaskData, batch_size: int = 64) -> dict:
    """:func:`evaluate_model` restricted to the PyTorch backend."""
    return evaluate_model(path, data, batch_size, backend="pytorch")
