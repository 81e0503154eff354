"""Export parity of the shared MiniLM after each compression stage hfcompress applies (fresh 2-label head: parity needs no training)."""

from __future__ import annotations

import json

import pytest
import torch

from hfcompress.export import export_onnx
from hfcompress.export.parity import PARITY_FILE

pytestmark = pytest.mark.integration


def _zero_smallest(model, share: float) -> None:
    """Unstructured magnitude pruning of every linear layer, as a pruning stage leaves the weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                threshold = weight.abs().flatten().kthvalue(int(share * weight.numel())).values
                weight[weight.abs() <= threshold] = 0


def _compressed(stage: str, minilm_path):
    from hfcompress.distillation import build_student_from_teacher
    from hfcompress.modeling import load_model

    torch.manual_seed(0)
    teacher = load_model(str(minilm_path), "text-classification", num_labels=2)
    if stage == "teacher":
        return teacher
    student = build_student_from_teacher(teacher, [0, 2, 4])
    if stage == "pruned":
        _zero_smallest(student, 0.5)
    elif stage == "heads_pruned":
        student.prune_heads({0: [0, 1, 2, 3], 2: [11]})  # structured slimming keeps a config transformers reloads
    return student


@pytest.mark.parametrize("stage", ["teacher", "distilled", "pruned", "heads_pruned"])
def test_minilm_exports_with_parity_after_each_stage(stage, minilm_path, tokenizer, tiny_sst2_dir, tmp_path):
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.evaluation import evaluate_model

    model = _compressed(stage, minilm_path)
    checkpoint = tmp_path / stage
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"), splits=["train", "dev"])
    sentences = data.raw["dev"]["sentence"]
    out = export_onnx(checkpoint, tmp_path / f"{stage}-onnx", parity_texts=sentences, batch_sizes=[1, 4], sequence_lengths=[16, 64]).parent
    parity = json.loads((out / PARITY_FILE).read_text())["files"]["model.onnx"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and len(parity["checks"]) == 4
    pt, ort = evaluate_model(checkpoint, data, batch_size=16), evaluate_model(out, data, batch_size=16)
    assert pt["accuracy"] == ort["accuracy"]
    assert ort["sparsity"] == pytest.approx(pt["sparsity"], abs=1e-4)
    if stage == "pruned":
        from hfcompress.evaluation import pytorch_footprint

        dense = pytorch_footprint(_compressed("distilled", minilm_path))
        # 2.6M zeroed float32 weights (10.6 MB) almost vanish when zipped; the file itself does not shrink
        assert pt["sparsity"] >= 0.5 and pt["size_mb"] == pytest.approx(dense["size_mb"], abs=0.01)
        assert dense["zipped_size_mb"] - pt["zipped_size_mb"] > 8 and dense["zipped_size_mb"] - ort["zipped_size_mb"] > 8
    if stage == "heads_pruned":
        assert model.config.pruned_heads and pt["num_parameters"] < _compressed("distilled", minilm_path).num_parameters()
