"""Latency and throughput, measured the same way for every runtime.

Each figure is the median (and p95) of timed runs after warm-up, at a fixed thread count, and is
recorded with the CPU model, its int8-relevant ISA flags and the thread count.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..tasks import DEFAULT_TASK, Task, TextInput, get_task, task_of

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni", "fma", "asimd", "asimddp")


def cpu_info(threads: int) -> dict:
    """CPU model, ISA flags relevant to int8 kernels, core and thread counts."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "cores": os.cpu_count(),
        "threads": threads,
        "machine": platform.machine(),
    }


def set_threads(threads: int) -> None:
    """Fix PyTorch's intra-op threads (ONNX Runtime sessions take theirs in SessionOptions)."""
    import torch

    torch.set_num_threads(threads)


def time_batches(run: Callable[[object], object], batches: Sequence[object], warmup: int = 5, repeats: int = 3) -> dict:
    """Time ``run(batch)`` over ``batches`` ``repeats`` times after ``warmup`` calls.

    Returns p50/p95 of the per-call latency in ms, and the throughput in items per second when the
    batches carry a length (examples per call).
    """
    for batch in list(batches)[:warmup] or batches[:1]:
        run(batch)
    latencies, items, total = [], 0, 0.0
    for _ in range(repeats):
        for batch in batches:
            start = time.perf_counter()
            run(batch)
            elapsed = time.perf_counter() - start
            latencies.append(elapsed * 1e3)
            total += elapsed
            items += _batch_len(batch)
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p95_ms": round(float(np.percentile(latencies, 95)), 3),
        "throughput": round(items / total, 2) if total else None,
        "calls": len(latencies),
    }


def _batch_len(batch) -> int:
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return len(first)
    return len(batch)


def latency_batches(
    processor, inputs: Sequence, batch_size: int, max_length: int = 128, max_batches: Optional[int] = None, task: Optional[Task] = None
) -> list[dict]:
    """Consecutive batches of ``inputs`` (cycled when there are fewer than ``batch_size``) as ``task`` feeds a model.

    Texts are padded to each batch's longest; images go through the image processor. The batches
    depend only on the inputs, the processor and the batch size, so every variant of a model that
    shares a processor is timed on identical inputs. ``task`` defaults to text.
    """
    if not inputs:
        raise ConfigError("measure_latency needs at least one text (or image): pass real inputs, e.g. from the evaluation split")
    task = task or get_task(DEFAULT_TASK)
    inputs = list(inputs) * -(-batch_size // len(inputs)) if len(inputs) < batch_size else list(inputs)
    starts = range(0, len(inputs) - batch_size + 1, batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    return [task.model_inputs(processor, inputs[s : s + batch_size], max_length) for s in starts]


def measure_latency(
    model,
    tokenizer_or_path,
    texts: Sequence[TextInput],  # or images, for image tasks
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 2,
    backend: str = "auto",
    warmup: int = 5,
    repeats: int = 3,
    onnx_file: Optional[str] = None,
    max_length: int = 128,
    max_batches: Optional[int] = None,
) -> dict:
    """p50/p95 latency (ms per call) and throughput (examples/s) of ``model`` at each batch size.

    ``model`` is a checkpoint directory or Hub id, a directory with an ONNX model (ONNX Runtime with
    ``threads`` intra-op threads), or a loaded PreTrainedModel/ORTModel. PyTorch runs under
    ``inference_mode`` with ``torch.set_num_threads(threads)`` (restored afterwards). Returns
    ``{"b1": {"p50_ms", "p95_ms", "throughput", "calls", "batches"}, "b32": {...}, "backend", "hardware"}``.
    """
    import torch

    from .runtime import is_ort_model, load_for_inference

    if threads < 1 or any(b < 1 for b in batch_sizes) or warmup < 0 or repeats < 1:
        raise ConfigError(f"measure_latency needs threads, batch sizes and repeats >= 1 (got {threads}, {list(batch_sizes)}, {repeats})")
    if is_ort_model(model):
        session_threads = model.session.get_session_options().intra_op_num_threads
        if session_threads != threads:
            raise ConfigError(
                f"the ONNX Runtime session uses {session_threads or 'default'} threads, not {threads}: "
                "pass the model directory instead, or load it with load_ort_model(..., threads=N)"
            )
    loaded, backend = load_for_inference(model, None, backend, onnx_file, threads)
    task = task_of(loaded.config)
    processor = task.load_processor(str(tokenizer_or_path)) if isinstance(tokenizer_or_path, (str, os.PathLike)) else tokenizer_or_path
    input_names = set(loaded.input_names) if backend == "onnx" else None
    previous_threads = torch.get_num_threads()
    set_threads(threads)
    result: dict = {"backend": backend}
    try:
        with torch.inference_mode():
            for size in batch_sizes:
                batches = latency_batches(processor, texts, size, max_length, max_batches, task)
                if input_names is not None:
                    batches = [{k: v for k, v in b.items() if k in input_names} for b in batches]
                result[f"b{size}"] = {**time_batches(lambda b: loaded(**b), batches, warmup, repeats), "batches": len(batches)}
    finally:
        set_threads(previous_threads)
    result["hardware"] = cpu_info(threads)
    return result
