"""Graph optimisation of an exported model through Optimum's ``ORTOptimizer``.

Levels are Optimum's: O1 basic graph optimisations, O2 adds the transformer fusions (attention,
LayerNorm, GELU), O3 adds GELU approximation. O4 converts to float16, which ONNX Runtime only runs
fast on GPU, so it is refused on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import ConfigError

OptimizationLevel = Literal["O1", "O2", "O3", "O4"]
OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")
OPTIMIZED_SUFFIX = "optimized"


def check_level(level: str, for_gpu: bool = False) -> None:
    if level not in OPTIMIZATION_LEVELS:
        raise ConfigError(f"optimization level '{level}' is not one of {OPTIMIZATION_LEVELS}")
    if level == "O4" and not for_gpu:
        raise ConfigError("optimization level O4 converts to float16, which needs a GPU: use O1, O2 or O3 on CPU")


def optimize_onnx(onnx_dir: str | Path, level: str = "O2", file_name: str = "model.onnx", for_gpu: bool = False) -> Path:
    """Write ``<file>_optimized.onnx`` (and ort_config.json) beside ``file_name`` in ``onnx_dir``; return its path."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    check_level(level, for_gpu)
    onnx_dir = Path(onnx_dir)
    optimizer = ORTOptimizer.from_pretrained(onnx_dir, file_names=[file_name])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=for_gpu)
    optimizer.optimize(save_dir=onnx_dir, optimization_config=config, file_suffix=OPTIMIZED_SUFFIX)
    return onnx_dir / f"{Path(file_name).stem}_{OPTIMIZED_SUFFIX}.onnx"
