"""Teacher-logit cache: one teacher pass over the training set, stored on disk and reused.

The cache is keyed by a fingerprint of the teacher's weights and config and of the tokenized
dataset's content, so a later epoch or a later run with the same teacher and data reads logits
instead of running the teacher. It is built in a temporary directory and renamed into place when
complete, so a crash never leaves a cache that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts import LOGIT_CACHE_META_FILE
from ..tasks import Task, get_task
from ..utils.io import make_temp_dir_beside

INDEX_COLUMN = "hfc_example_index"
_FORMAT_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the weights and the architecture; not of where the model was loaded from, so a copied teacher reuses its cache."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        described = config.to_dict()
        for location_key in ("_name_or_path", "transformers_version"):
            described.pop(location_key, None)
        h.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def dataset_fingerprint(dataset) -> str:
    """Hash of the tokenized content (input ids and segment ids), independent of datasets' cache."""
    h = hashlib.sha256()
    for column in ("input_ids", "token_type_ids"):
        if column in dataset.column_names:
            for row in dataset.with_format("numpy", columns=[column]).iter(batch_size=4096):
                for ids in row[column]:
                    arr = np.asarray(ids, dtype=np.int64)
                    h.update(np.int64(arr.size).tobytes())
                    h.update(arr.tobytes())
    h.update(str(len(dataset)).encode())
    return h.hexdigest()[:20]


class TeacherLogitCache:
    """Logits of every training example, as rows of one memory-mapped array.

    Sequence classification stores one row per example; token-level tasks store one row per token
    (unpadded), located through ``offsets``.
    """

    def __init__(self, directory: Path):
        meta = json.loads((directory / LOGIT_CACHE_META_FILE).read_text())
        self.directory = directory
        self.meta = meta
        self.offsets = np.load(directory / "offsets.npy")
        self.logits = np.memmap(directory / "logits.bin", dtype=meta["dtype"], mode="r", shape=tuple(meta["shape"]))

    @staticmethod
    def key(teacher: torch.nn.Module, dataset, task: str | Task) -> str:
        return f"{get_task(task).name}-{model_fingerprint(teacher)}-{dataset_fingerprint(dataset)}"

    @classmethod
    def load_or_build(
        cls,
        cache_root: str | os.PathLike,
        teacher: torch.nn.Module,
        dataset,
        collator,
        task: str | Task,
        batch_size: int,
        dtype: str = "float32",
        disable_progress: bool = False,
    ) -> "TeacherLogitCache":
        directory = Path(cache_root) / cls.key(teacher, dataset, task)
        if cls._is_complete(directory, len(dataset)):
            return cls(directory)
        if directory.exists():  # incomplete or corrupt: rebuild rather than trust it
            shutil.rmtree(directory)
        tmp = make_temp_dir_beside(directory)  # also removes those of builds killed on this host
        try:
            cls._build(tmp, teacher, dataset, collator, get_task(task), batch_size, dtype, disable_progress)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(directory)

    @staticmethod
    def _is_complete(directory: Path, num_examples: int) -> bool:
        try:
            meta = json.loads((directory / LOGIT_CACHE_META_FILE).read_text())
            expected = int(np.prod(meta["shape"])) * np.dtype(meta["dtype"]).itemsize
            return (
                meta.get("version") == _FORMAT_VERSION
                and meta["num_examples"] == num_examples
                and (directory / "logits.bin").stat().st_size == expected
                and len(np.load(directory / "offsets.npy")) == num_examples + 1
            )
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return False

    @staticmethod
    @torch.no_grad()
    def _build(directory: Path, teacher, dataset, collator, task: Task, batch_size, dtype, disable_progress) -> None:
        lengths = np.array([len(ids) for ids in dataset["input_ids"]], dtype=np.int64)
        rows = lengths if task.per_token else np.ones_like(lengths)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        num_classes = task.output_size(teacher.config)
        shape = (int(offsets[-1]), int(num_classes))
        logits = np.memmap(directory / "logits.bin", dtype=dtype, mode="w+", shape=shape)
        device = next(teacher.parameters()).device
        order = np.argsort(-lengths, kind="stable")  # length-sorted batches waste little on padding
        features = [k for k in dataset.column_names if k in ("input_ids", "attention_mask", "token_type_ids")]
        for start in tqdm(range(0, len(order), batch_size), desc="Caching teacher logits", disable=disable_progress):
            idx = order[start : start + batch_size]
            columns = dataset[idx.tolist()]
            batch = collator([{k: columns[k][j] for k in features} for j in range(len(idx))])
            batch = {k: v.to(device) for k, v in batch.items() if k in features}
            out = teacher(**batch).logits.float().cpu().numpy()
            for j, i in enumerate(idx):
                n = rows[i]
                logits[offsets[i] : offsets[i] + n] = out[j, :n] if task.per_token else out[j]
        logits.flush()
        np.save(directory / "offsets.npy", offsets)
        meta = {"version": _FORMAT_VERSION, "task": task.name, "num_examples": len(dataset), "shape": shape, "dtype": dtype}
        (directory / LOGIT_CACHE_META_FILE).write_text(json.dumps(meta))

    def __len__(self) -> int:
        return self.meta["num_examples"]

    def lookup(self, indices: torch.Tensor, seq_len: Optional[int] = None, padding_side: str = "right") -> torch.Tensor:
        """Logits for the examples at ``indices``: [B, C], or [B, seq_len, C] for token-level tasks."""
        idx = indices.detach().cpu().numpy()
        if not get_task(self.meta["task"]).per_token:
            return torch.from_numpy(np.asarray(self.logits[self.offsets[idx]], dtype=np.float32))
        out = torch.zeros(len(idx), seq_len, self.logits.shape[1], dtype=torch.float32)
        for j, i in enumerate(idx):
            rows = np.asarray(self.logits[self.offsets[i] : self.offsets[i + 1]], dtype=np.float32)
            n = min(len(rows), seq_len)
            if padding_side == "right":
                out[j, :n] = torch.from_numpy(rows[:n])
            else:
                out[j, seq_len - n :] = torch.from_numpy(rows[:n])
        return out
