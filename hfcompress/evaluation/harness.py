"""Task metrics of a checkpoint on the recipe's evaluation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import TaskData
from ..metrics import compute_task_metrics
from ..modeling import load_model, load_tokenizer
from ..utils.io import dir_size_bytes


@torch.no_grad()
def predict_pytorch(model, dataset, collator, batch_size: int = 64, desc: str = "Predicting"):
    """Logits and labels for every example, in dataset order."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        y = batch.pop("labels", None)
        out = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        if out.ndim == 3:  # token level: pad to a common length so batches concatenate
            out = np.pad(out, ((0, 0), (0, 512 - out.shape[1]), (0, 0)))
            y = torch.nn.functional.pad(y, (0, 512 - y.shape[1]), value=-100)
        logits.append(out)
        labels.append(y.numpy() if y is not None else None)
    return np.concatenate(logits), (np.concatenate(labels) if labels and labels[0] is not None else None)


def evaluate_pytorch(path: str | Path, data: TaskData, batch_size: int = 64) -> dict:
    """Task metrics, parameter count and size on disk of a PyTorch checkpoint."""
    path = str(path)
    tokenizer = load_tokenizer(path)
    model = load_model(path, data.cfg.task)
    dataset = data.tokenize(tokenizer, data.cfg.eval_split)
    logits, labels = predict_pytorch(model, dataset, data.collator(tokenizer), batch_size, desc=f"Evaluating {Path(path).name}")
    result = {"path": path, "num_parameters": int(model.num_parameters())}
    result.update(compute_task_metrics(data.cfg.task, logits.argmax(-1), labels, num_labels=data.num_labels))
    if Path(path).exists():
        weights = [p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin")]
        result["size_mb"] = round(sum(p.stat().st_size for p in weights) / 1e6, 2)
        result["dir_size_mb"] = round(dir_size_bytes(path) / 1e6, 2)
    return result
