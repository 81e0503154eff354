"""Smoke test of scripts/bench_pruning.py: the benchmark's code path on tiny models and a few sentences."""

import importlib.util
import json

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_benchmark_script_smoke(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_pruning", REPO / "scripts" / "bench_pruning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results" / "pruning"
    bench.main([
        "--teacher", str(tiny_teacher_dir), "--student", str(tiny_teacher_dir), "--data", str(tiny_sst2_dir), "--train-samples", "32",
        "--max-length", "32", "--max-steps", "4", "--batch-size", "8", "--sparsities", "0.5", "--heads-fraction", "0.25",
        "--cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path / "work"), "--latency-texts", "8", "--repeats", "1",
        "--output", str(out),
    ])
    result = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in result["accuracy"]]
    assert names[0] == "student (no pruning)" and len(names) == 3
    assert result["accuracy"][1]["pruned_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert {r["latency_backend"] for r in result["latency"]} == {"pytorch", "onnx"} and len(result["latency"]) == 6
    assert out.with_suffix(".png").stat().st_size > 0 and "Reproduce" in out.with_suffix(".md").read_text()
