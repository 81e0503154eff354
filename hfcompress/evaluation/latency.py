"""Latency and throughput, measured the same way for every runtime.

Each figure is the median (and p95) of timed runs after warm-up, at a fixed thread count, and is
recorded with the CPU model, its int8-relevant ISA flags and the thread count.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

import numpy as np

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
