"""ONNX export with parity: BERT-, DistilBERT-, RoBERTa- and GPT-2-shaped tiny models, both backends and their graphs, ORTOptimizer, errors, CLI and recipe stage.

Tests of Optimum's exporter are marked ``requires_optimum``; the dynamo exporter's run everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hfcompress.errors import ConfigError
from hfcompress.export import ExportConfig, ParityError, export_onnx, graph_signature
from hfcompress.export.parity import DEFAULT_PARITY_TEXTS, PARITY_FILE


def _bpe_files(directory: Path) -> tuple[str, str]:
    """A byte-level BPE vocabulary trained on the parity sentences (RoBERTa and GPT-2 tokenizers need one)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(DEFAULT_PARITY_TEXTS) * 4, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"])
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(directory))
    return vocab, merges


def _tiny_checkpoint(arch: str, directory: Path, minilm_tokenizer) -> Path:
    """A tiny random model of ``arch`` (``bert-tokens``: BERT with a token-classification head) with a matching tokenizer, saved to ``directory``."""
    import transformers as tf

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=160)
    if arch == "bert":
        tokenizer = minilm_tokenizer
        model = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=tokenizer.vocab_size, **small))
    elif arch == "bert-tokens":
        tokenizer = minilm_tokenizer
        model = tf.BertForTokenClassification(tf.BertConfig(vocab_size=tokenizer.vocab_size, num_labels=5, **small))
    elif arch == "distilbert":
        tokenizer = tf.DistilBertTokenizerFast.from_pretrained(minilm_tokenizer.name_or_path)
        config = tf.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=160)
        model = tf.DistilBertForSequenceClassification(config)
    elif arch == "roberta":
        tokenizer = tf.RobertaTokenizerFast(*_bpe_files(directory / "bpe"))
        config = tf.RobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **{**small, "max_position_embeddings": 162})
        model = tf.RobertaForSequenceClassification(config)
    else:
        tokenizer = tf.GPT2TokenizerFast(*_bpe_files(directory / "bpe"))
        config = tf.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=160)
        model = tf.GPT2LMHeadModel(config)
    out = directory / arch
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


ARCHS = ["bert", "distilbert", "roberta", "gpt2"]
# The dynamo exporter traces the model with torch.export, which takes tens of seconds per model on 2 cores.
CASES = [pytest.param(arch, "optimum", id=f"{arch}-optimum", marks=pytest.mark.requires_optimum) for arch in ARCHS] + [
    pytest.param(arch, "dynamo", id=f"{arch}-dynamo", marks=[] if arch == "bert" else pytest.mark.slow) for arch in ARCHS
]
BACKENDS = [pytest.param("optimum", marks=pytest.mark.requires_optimum), "dynamo"]


@pytest.mark.parametrize("arch, backend", CASES)
def test_export_matches_pytorch_and_loads_in_onnx_runtime(arch, backend, tmp_path, tokenizer):
    from transformers import AutoConfig

    from hfcompress.evaluation import load_ort_model
    from hfcompress.modeling import load_model
    from hfcompress.tasks import task_of

    checkpoint = _tiny_checkpoint(arch, tmp_path, tokenizer)
    out = tmp_path / f"{arch}-onnx"
    onnx_path = export_onnx(checkpoint, out, backend=backend, batch_sizes=[1, 3], sequence_lengths=[8, 200])
    assert onnx_path == out / "model.onnx" and onnx_path.exists()
    parity = json.loads((out / PARITY_FILE).read_text())
    result = parity["files"]["model.onnx"]
    assert parity["backend"] == backend and result["passed"] and result["max_abs_diff"] < 1e-4
    # 200 is beyond the model's 160 positions: the check is capped at the maximum, not skipped
    assert {(c["batch_size"], c["sequence_length"]) for c in result["checks"]} == {(1, 8), (3, 8), (1, 160), (3, 160)}

    task = task_of(AutoConfig.from_pretrained(checkpoint))
    model = load_model(str(checkpoint), task)
    ort_model = load_ort_model(out)  # Optimum's ORTModel where it is installed, else hfcompress's ONNX Runtime session
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = tok(["a short one", "and a rather longer sentence than the first"], padding=True, return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ort_model.input_names}
    with torch.no_grad():
        expected = model(**batch).logits
    got = ort_model(**batch).logits
    mask = batch["attention_mask"].bool()
    if task.label_shift:  # a causal LM: compare the real (unpadded) positions
        expected, got = expected[mask], got[mask]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_optimized_graph_is_checked_too(tiny_teacher_dir, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(tiny_teacher_dir, out, optimize="O2", sequence_lengths=[12])
    parity = json.loads((out / PARITY_FILE).read_text())
    assert set(parity["files"]) == {"model.onnx", "model_optimized.onnx"} and parity["optimization_level"] == "O2"
    assert all(r["passed"] for r in parity["files"].values())
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model_optimized.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} & ops  # the transformer fusions of O2 happened


def _export_other_weights(monkeypatch, backend: str, other: Path) -> None:
    """Make ``backend``'s exporter write the graph of ``other`` (the same architecture, other random weights)."""
    import hfcompress.export.onnx as onnx_module
    from hfcompress.modeling import load_model

    if backend == "optimum":
        real = onnx_module._export_optimum
        monkeypatch.setattr(onnx_module, "_export_optimum", lambda model_dir, out, task, opset: real(other, out, task, opset))
    else:
        real, other_model = onnx_module._export_dynamo, load_model(str(other), "text-classification")
        monkeypatch.setattr(onnx_module, "_export_dynamo", lambda model, tok, task, out, opset: real(other_model, tok, task, out, opset))


@pytest.mark.parametrize("backend", BACKENDS)
def test_disagreeing_export_is_an_error_and_leaves_nothing(backend, tiny_teacher_dir, tmp_path, monkeypatch, tokenizer):
    """An exporter that writes another model's graph (here: other random weights) must fail the parity check."""
    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config

    other = tmp_path / "other"
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    out = tmp_path / "onnx"
    with monkeypatch.context() as patch:
        _export_other_weights(patch, backend, other)
        with pytest.raises(ParityError, match=rf"the {backend} export model.onnx .* disagrees with PyTorch: max abs diff .* exceeds atol 0.0001; nothing was written"):
            export_onnx(tiny_teacher_dir, out, backend=backend, sequence_lengths=[8])
    assert not out.exists() and not list(tmp_path.glob(".onnx.tmp-*"))
    # an earlier good export stays in place when a new one fails
    export_onnx(tiny_teacher_dir, out, backend=backend, sequence_lengths=[8])
    stamp = (out / "model.onnx").stat().st_mtime_ns
    _export_other_weights(monkeypatch, backend, other)
    with pytest.raises(ParityError):
        export_onnx(tiny_teacher_dir, out, backend=backend, sequence_lengths=[8], overwrite=True)
    assert (out / "model.onnx").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("missing, resolved", [(None, "optimum"), ("optimum-onnx is not installed", "dynamo")])
def test_auto_backend_is_optimum_where_it_is_installed_else_dynamo(missing, resolved, monkeypatch):
    import hfcompress.export.onnx as onnx_module

    monkeypatch.setattr(onnx_module, "optimum_onnx_missing", lambda: missing)
    assert ExportConfig().backend == "auto" and ExportConfig().resolved_backend == resolved
    assert ExportConfig(backend="dynamo").resolved_backend == "dynamo"


def test_optimum_backend_without_optimum_is_a_config_error_naming_the_fix(tiny_teacher_dir, tmp_path, monkeypatch):
    import hfcompress.export.onnx as onnx_module

    reason = 'optimum-onnx is not installed (pip install -e ".[optimum]" -c constraints-optimum.txt, on transformers 4.57)'
    monkeypatch.setattr(onnx_module, "optimum_onnx_missing", lambda: reason)
    with pytest.raises(ConfigError, match=r"export backend 'optimum' needs Optimum, but optimum-onnx is not installed \(pip install .*\); or use backend 'dynamo'"):
        export_onnx(tiny_teacher_dir, tmp_path / "out", backend="optimum")
    assert not (tmp_path / "out").exists()


# The graphs Optimum's exporter (optimum-onnx 0.1.0) gives these tiny models: what the dynamo export must give too.
OPTIMUM_INPUTS = {
    "bert": ["input_ids", "attention_mask", "token_type_ids"],
    "bert-tokens": ["input_ids", "attention_mask", "token_type_ids"],
    "distilbert": ["input_ids", "attention_mask"],
    "roberta": ["input_ids", "attention_mask"],  # RoBERTa's tokenizer gives no token types, so Optimum's graph takes none
    "gpt2": ["input_ids", "attention_mask", "position_ids"],  # text-generation-with-past: then each layer's past keys and values
}
SIGNATURE_ARCHS = [pytest.param(arch, marks=[] if arch in ("bert", "bert-tokens", "gpt2") else pytest.mark.slow) for arch in OPTIMUM_INPUTS]


def _optimum_signature(arch: str, checkpoint: Path) -> dict:
    """Every input (batch_size, sequence_length); logits (batch_size, labels) per example, (batch_size, sequence_length, width) per token."""
    from transformers import AutoConfig

    from hfcompress.tasks import task_of

    config = AutoConfig.from_pretrained(checkpoint)
    task = task_of(config)
    if task.kv_cache:
        from tests.decoder_helpers import contract_signature

        return contract_signature(config)
    logits = ["batch_size", "sequence_length", task.output_size(config)] if task.per_token else ["batch_size", config.num_labels]
    return {"inputs": [(name, ["batch_size", "sequence_length"]) for name in OPTIMUM_INPUTS[arch]], "outputs": [("logits", logits)]}


@pytest.mark.parametrize("arch", SIGNATURE_ARCHS)
def test_dynamo_graph_has_the_signature_of_optimums(arch, tmp_path, tokenizer):
    """Same input and output names, order and dynamic axes as Optimum's graph of the same task (each task has a case)."""
    checkpoint = _tiny_checkpoint(arch, tmp_path, tokenizer)
    onnx_path = export_onnx(checkpoint, tmp_path / "onnx", backend="dynamo", batch_sizes=[2], sequence_lengths=[8])
    assert graph_signature(onnx_path) == _optimum_signature(arch, checkpoint)
    assert b"site-packages" not in onnx_path.read_bytes()  # torch's per-node stack traces (this machine's paths) are dropped


@pytest.mark.requires_optimum
@pytest.mark.parametrize("arch", SIGNATURE_ARCHS)
def test_optimum_graph_has_the_recorded_signature(arch, tmp_path, tokenizer):
    """The table above is Optimum's: with the test before, the two exporters' graphs are interchangeable."""
    checkpoint = _tiny_checkpoint(arch, tmp_path, tokenizer)
    onnx_path = export_onnx(checkpoint, tmp_path / "onnx", backend="optimum", batch_sizes=[2], sequence_lengths=[8])
    assert graph_signature(onnx_path) == _optimum_signature(arch, checkpoint)


def test_every_task_has_a_signature_case():
    from hfcompress.tasks import TASKS, task_of

    archs = {"bert": "BertForSequenceClassification", "bert-tokens": "BertForTokenClassification", "gpt2": "GPT2LMHeadModel",
             "mobilenet": "MobileNetV2ForImageClassification"}  # the image case is in test_image_classification.py
    assert {task_of({"architectures": [archs[a]]}).name for a in archs} == set(TASKS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimize": "O4"}, "O4 converts to float16, which needs a GPU"),
        ({"backend": "tensorrt"}, "export backend 'tensorrt' is not one of"),
        ({"task": "summarization"}, "cannot be exported"),
        ({"atol": 0.0}, "atol must be positive"),
        ({"tolerance": 1e-3}, "options are"),
    ],
)
def test_bad_options_fail_before_any_work(kwargs, message, tiny_teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        export_onnx(tiny_teacher_dir, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tiny_teacher_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        export_onnx(tiny_teacher_dir, out)
    assert (out / "keep.txt").exists()


def test_cli_export_then_evaluate_the_onnx_model(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys):
    from hfcompress.cli import main

    out = tmp_path / "onnx"
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine film .\n\nthe worst of the year .\n")
    assert main(["export", str(tiny_teacher_dir), "--output", str(out), "--sequence-lengths", "8", "--parity-texts", str(texts)]) == 0
    assert "parity max abs diff" in capsys.readouterr().out
    assert json.loads((out / PARITY_FILE).read_text())["texts"] == "given"
    result_file = tmp_path / "eval.json"
    args = ["evaluate", str(out), "--data", str(tiny_sst2_dir), "--split", "dev", "--latency", "--latency-batch-sizes", "1", "4",
            "--latency-samples", "8", "--repeats", "1", "--warmup", "1", "--output", str(result_file)]
    assert main(args) == 0
    result = json.loads(result_file.read_text())
    assert result["backend"] == "onnx" and 0 <= result["accuracy"] <= 1 and result["num_examples"] == 32
    assert result["latency"]["b4"]["batches"] == 2 and result["latency"]["hardware"]["threads"] == 2
    assert main(["evaluate", str(tiny_teacher_dir), "--data", str(tiny_sst2_dir), "--split", "dev", "--backend", "onnx"]) == 2
    assert "no .onnx file" in capsys.readouterr().err


def test_recipe_exports_and_reports(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.recipes import parse_recipe, run_recipe

    recipe = {
        "name": "tiny-export",
        "output_dir": str(tmp_path / "run"),
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "export", "model": str(tiny_teacher_dir), "optimize": "O1", "sequence_lengths": [8], "parity_samples": 4},
            {
                "stage": "evaluate", "models": [str(tiny_teacher_dir), "onnx"], "latency": True, "latency_batch_sizes": [1, 4],
                "latency_samples": 8, "repeats": 1, "warmup": 1,
            },
        ],
    }
    outputs = run_recipe(parse_recipe(recipe))
    parity = json.loads((outputs["onnx"] / PARITY_FILE).read_text())
    assert parity["texts"] == "given" and set(parity["files"]) == {"model.onnx", "model_optimized.onnx"}
    report = json.loads((outputs["evaluation"] / "compression_report.json").read_text())
    assert [r["name"] for r in report["rows"]] == [str(tiny_teacher_dir), "onnx"]
    onnx_row = report["rows"][1]
    assert onnx_row["backend"] == "onnx" and onnx_row["accuracy"] == report["rows"][0]["accuracy"]
    assert onnx_row["latency_ms_p50_b1"] > 0 and onnx_row["speedup_b1"] is not None and report["hardware"][0]["threads"] == 2
    assert (outputs["evaluation"] / "compression_report.png").exists() and (outputs["evaluation"] / "compression_report.md").exists()


def _load_bench_export():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_export", Path(__file__).resolve().parents[1] / "scripts" / "bench_export.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_export_script_smoke(backend, tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    bench = _load_bench_export()
    out = tmp_path / "results" / "export_smoke"
    args = ["--teacher", str(tiny_teacher_dir), "--student", "", "--data", str(tiny_sst2_dir), "--backends", backend,
            "--optimize", "none", "--latency-samples", "4", "--batch-sizes", "1", "2", "--repeats", "1", "--warmup", "1",
            "--work-dir", str(tmp_path / "work"), "--output", str(out)]
    assert bench.main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in report["rows"]] == ["teacher PyTorch", f"teacher ONNX {backend}"]
    assert report["rows"][1]["accuracy"] == report["rows"][0]["accuracy"] and report["parity"][0]["passed"]
    markdown = out.with_suffix(".md").read_text()
    assert "## Parity" in markdown and "scripts/bench_export.py --teacher" in markdown


@pytest.mark.requires_optimum
def test_bench_export_compares_the_two_exporters(tokenizer, tiny_sst2_dir, tmp_path):
    """--compare-backends on a headless encoder (as the shared MiniLM is): a head is added, both exports agree in graph and logits."""
    from transformers import BertModel

    from conftest import tiny_bert_config

    torch.manual_seed(0)
    encoder = tmp_path / "encoder"
    BertModel(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    out = tmp_path / "results" / "backends"
    args = ["--compare-backends", "--add-head", "2", "--teacher", str(encoder), "--student", "", "--data", str(tiny_sst2_dir),
            "--latency-samples", "4", "--batch-sizes", "1", "2", "--rounds", "2", "--repeats", "1", "--warmup", "1",
            "--work-dir", str(tmp_path / "work"), "--output", str(out)]
    assert _load_bench_export().main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (result,) = report["results"]
    assert result["same_signature"] and result["signatures"]["dynamo"]["outputs"] == [["logits", ["batch_size", 2]]]
    assert result["max_abs_logit_diff"] < 1e-4 and result["logit_sentences"] == 32  # the 32 dev sentences, in one batch
    assert set(result["latency_p50_ms"]) == {"optimum", "dynamo"} and len(result["latency_rounds"]["dynamo"]) == 2
    assert result["dynamo_over_optimum"]["b2"] == pytest.approx(result["latency_p50_ms"]["dynamo"]["b2"] / result["latency_p50_ms"]["optimum"]["b2"])
    assert report["hardware"]["threads"] == 2 and report["hardware"]["cpu"]
    markdown = out.with_suffix(".md").read_text()
    assert "| yes |" in markdown and "scripts/bench_export.py --compare-backends" in markdown and report["hardware"]["cpu"] in markdown


def test_bench_export_comparison_needs_optimum(monkeypatch, capsys):
    bench = _load_bench_export()
    monkeypatch.setattr(bench, "optimum_onnx_missing", lambda: "optimum-onnx is not installed")
    with pytest.raises(SystemExit):
        bench.parse_args(["--compare-backends"])
    assert "--compare-backends exports with Optimum too, but optimum-onnx is not installed" in capsys.readouterr().err
