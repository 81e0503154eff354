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
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts import LOGIT_CACHE_META_FILE
from ..tasks import Task, get_task
from ..utils.io import make_temp_dir_beside
from .losses import TopKLogits

INDEX_COLUMN = "hfc_example_index"
_FORMAT_VERSION = 2  # 2: named arrays (full logits, or top-k values, indices and log-sum-exp)


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


def top_k_index_dtype(vocab_size: int) -> str:
    """Token ids fit in uint16 for vocabularies up to 65,536 tokens (GPT-2's 50,257, SmolLM2's 49,152)."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


def top_k_bytes_per_row(top_k: int, vocab_size: int) -> int:
    """Disk bytes per cached token (or example) of a top-k cache: float16 values, token ids, one float32 log-sum-exp."""
    return top_k * (2 + np.dtype(top_k_index_dtype(vocab_size)).itemsize) + 4


class TeacherLogitCache:
    """Teacher logits of every training example, as rows of memory-mapped arrays.

    Sequence classification stores one row per example; token-level tasks store one row per token
    (unpadded), located through ``offsets``. A full cache holds every logit (``logits.bin``). A
    top-k cache (``top_k`` set) holds the k largest logits as float16 (``values.bin``), their token
    ids (``indices.bin``) and the log-sum-exp of the full row at the training temperature
    (``lse.bin``), which gives the tail mass the KD loss needs (see ``losses.TopKLogits``).
    """

    def __init__(self, directory: Path):
        meta = json.loads((directory / LOGIT_CACHE_META_FILE).read_text())
        self.directory = directory
        self.meta = meta
        self.offsets = np.load(directory / "offsets.npy")
        self.arrays = {
            name: np.memmap(directory / f"{name}.bin", dtype=spec["dtype"], mode="r", shape=tuple(spec["shape"]))
            for name, spec in meta["arrays"].items()
        }

    @property
    def logits(self) -> Optional[np.memmap]:
        """A full cache's [rows, classes] logits (None for a top-k cache)."""
        return self.arrays.get("logits")

    @property
    def top_k(self) -> Optional[int]:
        return self.meta.get("top_k")

    @staticmethod
    def key(teacher: torch.nn.Module, dataset, task: str | Task, top_k: Optional[int] = None, temperature: float = 1.0) -> str:
        key = f"{get_task(task).name}-{model_fingerprint(teacher)}-{dataset_fingerprint(dataset)}"
        # the stored log-sum-exp is at the training temperature, so a top-k cache is only valid at that temperature
        return key if top_k is None else f"{key}-top{top_k}-T{temperature:g}"

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
        top_k: Optional[int] = None,
        temperature: float = 1.0,
    ) -> "TeacherLogitCache":
        directory = Path(cache_root) / cls.key(teacher, dataset, task, top_k, temperature)
        if cls._is_complete(directory, len(dataset)):
            return cls(directory)
        if directory.exists():  # incomplete or corrupt: rebuild rather than trust it
            shutil.rmtree(directory)
        tmp = make_temp_dir_beside(directory)  # also removes those of builds killed on this host
        try:
            cls._build(tmp, teacher, dataset, collator, get_task(task), batch_size, dtype, disable_progress, top_k, temperature)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(directory)

    @staticmethod
    def _is_complete(directory: Path, num_examples: int) -> bool:
        try:
            meta = json.loads((directory / LOGIT_CACHE_META_FILE).read_text())
            return (
                meta.get("version") == _FORMAT_VERSION
                and meta["num_examples"] == num_examples
                and all(
                    (directory / f"{name}.bin").stat().st_size == int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                    for name, spec in meta["arrays"].items()
                )
                and len(np.load(directory / "offsets.npy")) == num_examples + 1
            )
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return False

    @staticmethod
    @torch.no_grad()
    def _build(directory: Path, teacher, dataset, collator, task: Task, batch_size, dtype, disable_progress, top_k, temperature) -> None:
        lengths = np.array([len(ids) for ids in dataset["input_ids"]], dtype=np.int64)
        rows = lengths if task.per_token else np.ones_like(lengths)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        num_rows, num_classes = int(offsets[-1]), int(task.output_size(teacher.config))
        if top_k is None:
            specs = {"logits": (dtype, (num_rows, num_classes))}
        else:
            top_k = min(top_k, num_classes)
            specs = {
                "values": ("float16", (num_rows, top_k)),
                "indices": (top_k_index_dtype(num_classes), (num_rows, top_k)),
                "lse": ("float32", (num_rows,)),
            }
        arrays = {name: np.memmap(directory / f"{name}.bin", dtype=d, mode="w+", shape=shape) for name, (d, shape) in specs.items()}
        device = next(teacher.parameters()).device
        order = np.argsort(-lengths, kind="stable")  # length-sorted batches waste little on padding
        features = [k for k in dataset.column_names if k in ("input_ids", "attention_mask", "token_type_ids")]
        for start in tqdm(range(0, len(order), batch_size), desc="Caching teacher logits", disable=disable_progress):
            idx = order[start : start + batch_size]
            columns = dataset[idx.tolist()]
            batch = collator([{k: columns[k][j] for k in features} for j in range(len(idx))])
            batch = {k: v.to(device) for k, v in batch.items() if k in features}
            logits = teacher(**batch).logits.float()
            if top_k is None:
                out = {"logits": logits}
            else:
                values, indices = logits.topk(top_k, dim=-1)
                out = {"values": values, "indices": indices, "lse": torch.logsumexp(logits / temperature, dim=-1)}
            out = {name: tensor.cpu().numpy() for name, tensor in out.items()}
            for j, i in enumerate(idx):
                n = rows[i]
                for name, array in arrays.items():
                    array[offsets[i] : offsets[i] + n] = out[name][j, :n] if task.per_token else out[name][j]
        for array in arrays.values():
            array.flush()
        np.save(directory / "offsets.npy", offsets)
        meta = {
            "version": _FORMAT_VERSION,
            "task": task.name,
            "num_examples": len(dataset),
            "top_k": top_k,
            "temperature": temperature if top_k is not None else None,
            "arrays": {name: {"dtype": d, "shape": list(shape)} for name, (d, shape) in specs.items()},
        }
        (directory / LOGIT_CACHE_META_FILE).write_text(json.dumps(meta))

    def __len__(self) -> int:
        return self.meta["num_examples"]

    def _rows(self, name: str, idx: np.ndarray, seq_len: Optional[int], padding_side: str) -> np.ndarray:
        """Array ``name`` for the examples ``idx``: [B, ...], or [B, seq_len, ...] for token-level tasks (zeros where padded)."""
        array = self.arrays[name]
        if not get_task(self.meta["task"]).per_token:
            return np.asarray(array[self.offsets[idx]])
        out = np.zeros((len(idx), seq_len, *array.shape[1:]), dtype=array.dtype)
        for j, i in enumerate(idx):
            rows = np.asarray(array[self.offsets[i] : self.offsets[i + 1]])
            n = min(len(rows), seq_len)
            if padding_side == "right":
                out[j, :n] = rows[:n]
            else:
                out[j, seq_len - n :] = rows[:n]
        return out

    def lookup(self, indices: torch.Tensor, seq_len: Optional[int] = None, padding_side: str = "right") -> Union[torch.Tensor, TopKLogits]:
        """Logits for the examples at ``indices``: [B, C], or [B, seq_len, C] for token-level tasks;
        for a top-k cache, a :class:`TopKLogits` of those shapes with k for C."""
        idx = indices.detach().cpu().numpy()
        rows = {name: self._rows(name, idx, seq_len, padding_side) for name in self.arrays}
        if self.top_k is None:
            return torch.from_numpy(rows["logits"].astype(np.float32))
        return TopKLogits(
            values=torch.from_numpy(rows["values"].astype(np.float32)),
            indices=torch.from_numpy(rows["indices"].astype(np.int64)),
            lse=torch.from_numpy(rows["lse"]),
            temperature=self.meta["temperature"],
        )
