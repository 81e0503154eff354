"""ONNX export through Optimum's exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import AutoConfig

from ..lowrank.modeling import is_factorized
from ..modeling import infer_task

# hfcompress task -> Optimum exporter task
OPTIMUM_TASKS = {
    "text-classification": "text-classification",
    "token-classification": "token-classification",
    "text-generation": "text-generation",
}


def export_onnx(model_dir: str | Path, output_dir: str | Path, task: Optional[str] = None, opset: Optional[int] = None) -> Path:
    """Export a checkpoint (local directory or Hub id) to ``output_dir/model.onnx``; the task is inferred from its config."""
    from optimum.exporters.onnx import main_export

    config = AutoConfig.from_pretrained(str(model_dir))
    task = task or infer_task(config)
    main_export(str(model_dir), output=str(output_dir), task=OPTIMUM_TASKS[task], opset=opset, do_validation=False)
    if is_factorized(config):  # the graph holds the factors; ONNX Runtime users need only the base architecture's config
        config.base_config().save_pretrained(str(output_dir))
    return Path(output_dir) / "model.onnx"
