"""Export parity of the shared MiniLM after each compression stage hfcompress applies (fresh 2-label head: parity needs no training)."""

from __future__ import annotations

import json

import pytest
import torch

from hfcompress.export import export_onnx
from hfcompress.export.parity import PARITY_FILE

pytestmark = pytest.mark.integration

QAT = dict(preset="avx2", mode="static")  # static: the int8 model is a QDQ graph whose Linear inputs use the ranges QAT learned


def _zero_smallest(model, share: float) -> None:
    """Unstructured magnitude pruning of every linear layer, as a pruning stage leaves the weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                threshold = weight.abs().flatten().kthvalue(int(share * weight.numel())).values
                weight[weight.abs() <= threshold] = 0


def _train_with_qat(model, tokenizer, data, output_dir):
    """A few Trainer steps with fake quantization on from the first; returns the callback holding the learned ranges."""
    from transformers import Trainer, TrainingArguments

    from hfcompress.quantization import QATCallback, QATConfig

    callback = QATCallback(QATConfig(**QAT))
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=8, learning_rate=5e-5, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data.tokenize(tokenizer, "train"), data_collator=data.collator(tokenizer), callbacks=[callback]).train()
    return callback


def _compressed(stage: str, minilm_path, tokenizer=None, data=None, checkpoint=None):
    """The MiniLM after ``stage`` and the tokenizer its inputs need, saved with the stage's files to ``checkpoint`` when given."""
    from hfcompress.distillation import build_student_from_teacher
    from hfcompress.modeling import load_model

    torch.manual_seed(0)
    model = load_model(str(minilm_path), "text-classification", num_labels=2)
    callback = None
    if stage != "teacher":
        model = build_student_from_teacher(model, [0, 2, 4])
    if stage == "pruned":
        _zero_smallest(model, 0.5)
    elif stage == "heads_pruned":
        from hfcompress.pruning.structured import slim

        slim(model, {0: [0, 1, 2, 3], 2: [11]}, {})  # uneven heads per layer, recorded in the config for reloading
    elif stage == "slimmed":
        from hfcompress.pruning import StructuredPruningConfig, structured_prune

        structured_prune(model, StructuredPruningConfig(heads_fraction=0.25, ffn_fraction=0.5, importance="weight_norm"))
    elif stage == "lowrank":
        from hfcompress.lowrank import LowRankConfig, factorize

        factorize(model, LowRankConfig(compression=0.5))
    elif stage == "trimmed_vocab":
        from hfcompress.vocab import trim_vocabulary

        model, tokenizer, _ = trim_vocabulary(model, tokenizer, data.raw["train"]["sentence"])
    elif stage == "qat":
        callback = _train_with_qat(model, tokenizer, data, checkpoint.parent / "qat-training")
    if checkpoint is not None:
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        if callback is not None:
            callback.write_artifacts(checkpoint)
    return model, tokenizer


def _dev_logits(model, tokenizer, data):
    """Logits of a PyTorch or ORTModel classifier on the whole dev split, as one padded batch."""
    batch = data.collator(tokenizer)(list(data.tokenize(tokenizer, "dev")))
    batch.pop("labels")
    names = getattr(model, "input_names", None) or batch.keys()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k in names}).logits.float()


def _check_qat_int8(checkpoint, tokenizer, data, out) -> None:
    """The static int8 QDQ model built with the QAT ranges runs in ONNX Runtime and predicts as the fake-quant model does.

    Every Linear input of the graph takes its QAT range, and the graph quantizes only what QAT simulates
    (Linear inputs and weights), so the int8 logits are those of the simulation up to quanta flipped by float
    rounding: ten times closer to them than the fp32 model is (measured: 1.7e-4 against 1.7e-3 mean absolute
    difference; ONNX Runtime's untrimmed QDQ graph was 2.9e-3 away).
    """
    from hfcompress.evaluation import load_ort_model
    from hfcompress.modeling import load_model
    from hfcompress.quantization import PTQConfig, QATConfig, load_qat_ranges, prepare_qat, quantize_onnx
    from hfcompress.quantization.qat import QUANTIZATION_FILE, restore_qat_ranges

    int8 = quantize_onnx(checkpoint, out, PTQConfig(**QAT, calibration_samples=8), data)
    fake_quant = load_model(str(checkpoint), "text-classification").eval()
    names = prepare_qat(fake_quant, QATConfig(**QAT))
    assert restore_qat_ranges(fake_quant, load_qat_ranges(checkpoint)) == len(names)
    used = json.loads((out / QUANTIZATION_FILE).read_text())["calibration"]["qat_ranges_used"]
    assert used == len(names) - 2 * fake_quant.config.num_hidden_layers  # q, k and v read one tensor
    int8_logits = _dev_logits(load_ort_model(out, onnx_file=int8.name), tokenizer, data)
    fake_logits = _dev_logits(fake_quant, tokenizer, data)
    fp32_logits = _dev_logits(load_model(str(checkpoint), "text-classification").eval(), tokenizer, data)
    # what is left are single quanta flipped where float rounding differs; fp32 is the scale of the simulated noise
    assert (int8_logits - fake_logits).abs().mean() < 0.2 * (fp32_logits - fake_logits).abs().mean()
    assert (int8_logits.argmax(-1) == fake_logits.argmax(-1)).float().mean() >= 0.98


@pytest.mark.parametrize("stage", ["teacher", "distilled", "pruned", "heads_pruned", "slimmed", "qat", "lowrank", "trimmed_vocab"])
def test_minilm_exports_with_parity_after_each_stage(stage, minilm_path, tokenizer, tiny_sst2_dir, tmp_path):
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.evaluation import evaluate_model

    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"), splits=["train", "dev"])
    checkpoint = tmp_path / stage
    model, stage_tokenizer = _compressed(stage, minilm_path, tokenizer, data, checkpoint)
    sentences = data.raw["dev"]["sentence"]
    out = export_onnx(checkpoint, tmp_path / f"{stage}-onnx", parity_texts=sentences, batch_sizes=[1, 4], sequence_lengths=[16, 64]).parent
    parity = json.loads((out / PARITY_FILE).read_text())["files"]["model.onnx"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and len(parity["checks"]) == 4
    pt, ort = evaluate_model(checkpoint, data, batch_size=16), evaluate_model(out, data, batch_size=16)
    assert pt["accuracy"] == ort["accuracy"]
    # the compressed weights are what ships; the dynamo exporter's optimizer also drops all-zero biases (the MiniLM's pooler bias, 384)
    assert ort["num_parameters"] == pytest.approx(pt["num_parameters"], abs=384)
    assert ort["sparsity"] == pytest.approx(pt["sparsity"], abs=1e-4)
    distilled = _compressed("distilled", minilm_path)[0] if stage in ("pruned", "heads_pruned", "slimmed", "lowrank") else None
    if stage == "pruned":
        from hfcompress.evaluation import pytorch_footprint

        dense = pytorch_footprint(distilled)
        # 2.6M zeroed float32 weights (10.6 MB) almost vanish when zipped; the file itself does not shrink
        assert pt["sparsity"] >= 0.5 and pt["size_mb"] == pytest.approx(dense["size_mb"], abs=0.01)
        assert dense["zipped_size_mb"] - pt["zipped_size_mb"] > 8 and dense["zipped_size_mb"] - ort["zipped_size_mb"] > 8
    if stage in ("heads_pruned", "slimmed", "lowrank"):
        assert pt["num_parameters"] < distilled.num_parameters()
    if stage in ("heads_pruned", "slimmed"):
        assert model.config.pruned_heads
    if stage == "slimmed":  # 3 of 12 heads in every layer and half of the FFN neurons
        assert model.config.intermediate_size == 768 and all(len(h) == 3 for h in model.config.pruned_heads.values())
    if stage == "lowrank":
        from hfcompress.lowrank import is_factorized

        assert is_factorized(model.config)
    if stage == "trimmed_vocab":
        assert stage_tokenizer.vocab_size == model.config.vocab_size < tokenizer.vocab_size // 2
    if stage == "qat":
        _check_qat_int8(checkpoint, stage_tokenizer, data, tmp_path / "qat-int8")
