"""The evaluation API: evaluate_model (PyTorch and ONNX), measure_latency, write_compression_report."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from hfcompress.errors import ConfigError, ModelError
from hfcompress.evaluation import (
    compression_row,
    evaluate_model,
    load_ort_model,
    measure_latency,
    onnx_footprint,
    write_compression_report,
)
from hfcompress.evaluation.footprint import zipped_size_bytes

SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the film is strictly routine .",
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "an utterly incompetent , boring film .",
]


@pytest.fixture(scope="module")
def sparse_teacher_dir(tmp_path_factory, tokenizer):
    """A tiny random BERT classifier with half of one FFN weight matrix set to zero."""
    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[:, :16] = 0
    out = tmp_path_factory.mktemp("sparse-teacher")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def onnx_dir(sparse_teacher_dir, tmp_path_factory):
    from hfcompress.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "onnx"
    export_onnx(sparse_teacher_dir, out)
    return out


@pytest.fixture
def sst2_data(tiny_sst2_dir):
    from hfcompress.data import DataConfig, TaskData

    return TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"), splits=["train", "dev"])


def test_pytorch_and_onnx_agree_on_metrics_and_footprint(sparse_teacher_dir, onnx_dir, sst2_data):
    from transformers import AutoModelForSequenceClassification

    pt = evaluate_model(sparse_teacher_dir, sst2_data, batch_size=8)
    ort = evaluate_model(onnx_dir, sst2_data, batch_size=8)
    assert (pt["backend"], ort["backend"]) == ("pytorch", "onnx")
    assert pt["num_examples"] == ort["num_examples"] == 32
    assert pt["accuracy"] == ort["accuracy"] and pt["f1"] == ort["f1"]
    model = AutoModelForSequenceClassification.from_pretrained(sparse_teacher_dir)
    assert pt["num_parameters"] == model.num_parameters()
    # ONNX counts its weight initializers: the same weights, give or take folded constants
    assert abs(ort["num_parameters"] - pt["num_parameters"]) / pt["num_parameters"] < 0.01
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    expected_sparsity = sum(int((w == 0).sum()) for w in linear) / sum(w.numel() for w in linear)
    assert pt["sparsity"] == pytest.approx(expected_sparsity, abs=1e-6) and pt["sparsity"] > 0.02
    assert ort["sparsity"] == pytest.approx(pt["sparsity"], abs=1e-6)
    weights = sparse_teacher_dir / "model.safetensors"
    assert pt["size_mb"] == pytest.approx(weights.stat().st_size / 1e6, abs=1e-3)
    assert ort["size_mb"] == pytest.approx((onnx_dir / "model.onnx").stat().st_size / 1e6, abs=1e-3)
    assert 0 < pt["zipped_size_mb"] < pt["size_mb"]


def test_loaded_models_and_explicit_backends(sparse_teacher_dir, onnx_dir, sst2_data, tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(sparse_teacher_dir)
    from_object = evaluate_model(model, sst2_data, batch_size=16, tokenizer=tokenizer)
    from_path = evaluate_model(sparse_teacher_dir, sst2_data, batch_size=16, backend="pytorch")
    assert from_object["accuracy"] == from_path["accuracy"]
    # an in-memory model is sized by saving it: the same safetensors as the checkpoint on disk
    assert from_object["size_mb"] == pytest.approx(from_path["size_mb"], abs=1e-3)
    ort = evaluate_model(load_ort_model(onnx_dir), sst2_data, batch_size=16, tokenizer=tokenizer)
    assert ort["backend"] == "onnx" and ort["accuracy"] == from_path["accuracy"]
    with pytest.raises(ModelError, match="no .onnx file"):
        evaluate_model(sparse_teacher_dir, sst2_data, backend="onnx")
    with pytest.raises(ConfigError, match="not one of"):
        evaluate_model(sparse_teacher_dir, sst2_data, backend="tensorrt")
    with pytest.raises(ModelError, match="is not in"):
        evaluate_model(onnx_dir, sst2_data, onnx_file="model_quantized.onnx")


def test_onnx_sparsity_counts_quantized_weights_against_their_zero_point(tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    weight = np.array([[0, 3, 3], [3, 3, 3]], dtype=np.uint8)  # zero point 3: five of six weights are 0.0
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "q",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        initializer=[
            numpy_helper.from_array(weight, "w_q"),
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array(3, dtype=np.uint8), "w_zp"),
        ],
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph), path)
    result = onnx_footprint(path)
    assert result["sparsity"] == pytest.approx(5 / 6, abs=1e-6)
    assert result["num_parameters"] == 6 + 1 + 1


def test_zipped_size_rewards_zeros(tmp_path):
    dense, sparse = tmp_path / "dense.bin", tmp_path / "sparse.bin"
    values = torch.randn(100_000).numpy()
    dense.write_bytes(values.tobytes())
    values[::2] = 0
    sparse.write_bytes(values.tobytes())
    assert zipped_size_bytes([sparse]) < 0.8 * zipped_size_bytes([dense])
    assert zipped_size_bytes([dense]) == len(zlib.compress(dense.read_bytes(), 6)) - 6  # raw deflate: no zlib header/trailer


def test_measure_latency_times_both_runtimes_on_the_same_batches(sparse_teacher_dir, onnx_dir):
    torch.set_num_threads(1)
    results = {
        path.name: measure_latency(path, path, SENTENCES, batch_sizes=(1, 4), threads=2, warmup=1, repeats=2)
        for path in (sparse_teacher_dir, onnx_dir)
    }
    assert torch.get_num_threads() == 1  # restored
    assert results[sparse_teacher_dir.name]["backend"] == "pytorch" and results[onnx_dir.name]["backend"] == "onnx"
    for result in results.values():
        assert set(result) == {"backend", "b1", "b4", "hardware"}
        assert result["b1"]["batches"] == 5 and result["b1"]["calls"] == 10
        assert result["b4"]["batches"] == 1  # the fifth sentence does not fill a second batch
        for timing in (result["b1"], result["b4"]):
            assert 0 < timing["p50_ms"] <= timing["p95_ms"] and timing["throughput"] > 0
        assert result["hardware"]["threads"] == 2 and result["hardware"]["cores"] >= 1
    session = load_ort_model(onnx_dir, threads=1)
    with pytest.raises(ConfigError, match="uses 1 threads, not 2"):
        measure_latency(session, onnx_dir, SENTENCES, threads=2)


def test_latency_batches_are_padded_per_batch(tokenizer):
    from hfcompress.evaluation.latency import latency_batches

    batches = latency_batches(tokenizer, SENTENCES, 2)
    assert len(batches) == 2
    lengths = [len(tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert batches[0]["input_ids"].shape[1] == max(lengths[:2])
    assert batches[1]["input_ids"].shape[1] == max(lengths[2:4])
    assert len(latency_batches(tokenizer, SENTENCES[:1], 3)) == 1  # too few texts: cycled to fill a batch
    with pytest.raises(ConfigError, match="at least one text"):
        latency_batches(tokenizer, [], 1)


def _row(name, accuracy, size, p50, throughput, hardware):
    latency = {
        "backend": "onnx",
        "b1": {"p50_ms": p50, "p95_ms": p50 * 1.5, "throughput": 1000 / p50},
        "b32": {"p50_ms": 32 * 1000 / throughput, "p95_ms": 40 * 1000 / throughput, "throughput": throughput},
        "hardware": hardware,
    }
    evaluation = {"accuracy": accuracy, "f1": accuracy, "size_mb": size, "zipped_size_mb": size / 2, "num_parameters": int(size * 250_000), "sparsity": 0.0}
    return compression_row(name, evaluation, latency)


def test_compression_report_has_rows_ratios_hardware_and_chart(tmp_path):
    from hfcompress.evaluation.latency import cpu_info

    hw = cpu_info(2)
    rows = [_row("teacher", 0.90, 90.0, 20.0, 100.0, hw), _row("student", 0.88, 45.0, 10.0, 250.0, hw), compression_row("int8 (no latency)", {"accuracy": 0.87, "size_mb": 12.0})]
    report = write_compression_report(rows, tmp_path / "report", title="SST-2 MiniLM")
    saved = json.loads((tmp_path / "report" / "compression_report.json").read_text())
    assert saved["baseline"] == "teacher" and saved["hardware"] == [hw]
    student = saved["rows"][1]
    for key in ("name", "accuracy", "size_mb", "latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_b32"):
        assert key in student
    assert student["size_ratio"] == 2.0 and student["speedup_b1"] == 2.0 and student["throughput_ratio_b32"] == 2.5
    assert student["accuracy_delta"] == pytest.approx(-0.02)
    assert saved["rows"][2]["speedup_b1"] is None and saved["rows"][2]["size_ratio"] == 7.5
    markdown = (tmp_path / "report" / "compression_report.md").read_text()
    assert "| student | 0.8800 | -0.0200 | 45.00 | 2.00× |" in markdown
    assert hw["cpu"] in markdown and "2 threads" in markdown
    png = (tmp_path / "report" / "compression_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and report["chart"].endswith(".png")


@pytest.mark.parametrize(
    "rows, message",
    [([], "at least one row"), ([{"accuracy": 1.0}], "no 'name'"), ([{"name": "a"}, {"name": "a"}], "repeated names")],
)
def test_compression_report_rejects_bad_rows(rows, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        write_compression_report(rows, tmp_path / "r", "t")
    assert not (tmp_path / "r").exists()


def test_without_optimum_onnx_runs_in_a_plain_session_with_the_same_results(sparse_teacher_dir, onnx_dir, sst2_data, tokenizer, monkeypatch):
    """Where optimum-onnx is missing (transformers 5), ONNX models load as OnnxRuntimeModel: same logits, metrics and footprint."""
    import hfcompress.evaluation.runtime as runtime
    from transformers import AutoModelForSequenceClassification

    expected = evaluate_model(onnx_dir, sst2_data, batch_size=8)  # ORTModel with Optimum, the plain session without
    monkeypatch.setattr(runtime, "optimum_onnx_missing", lambda: "optimum-onnx is not installed")
    session = load_ort_model(onnx_dir, threads=1)
    assert isinstance(session, runtime.OnnxRuntimeModel) and runtime.is_ort_model(session) and session.path == onnx_dir / "model.onnx"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(sparse_teacher_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(session(**batch).logits, model(**batch).logits, atol=1e-4, rtol=0)
    # token types are the one input a tokenizer may leave out: zeros, as ORTModel fills them
    without_types = {k: v for k, v in batch.items() if k != "token_type_ids"}
    torch.testing.assert_close(session(**without_types).logits, session(**batch).logits)
    assert evaluate_model(onnx_dir, sst2_data, batch_size=8) == expected
    assert evaluate_model(session, sst2_data, batch_size=8, tokenizer=tokenizer)["accuracy"] == expected["accuracy"]
    assert runtime.model_source_path(session) == onnx_dir / "model.onnx"
    with pytest.raises(ConfigError, match="uses 1 threads, not 2"):
        measure_latency(session, onnx_dir, SENTENCES, threads=2)
