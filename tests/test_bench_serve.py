"""scripts/bench_serve.py: its measures on made-up loads, and the whole benchmark on a tiny model with tiny counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "scripts" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_counts_non_2xx_answers_and_dropped_connections_as_errors(bench):
    result = {"latencies_ms": [float(i) for i in range(1, 101)], "statuses": {200: 95, 503: 5}, "connection_errors": 2, "elapsed_s": 2.0}
    summary = bench.summarize(result)
    assert summary["requests"] == 102 and summary["errors"] == 7 and summary["error_rate"] == round(7 / 102, 5)
    assert summary["throughput"] == 50.0  # answered requests per second, dropped ones not counted
    assert summary["p50_ms"] == 50.5 and summary["p99_ms"] == 99.01 and summary["statuses"] == {"200": 95, "503": 5}


def test_the_storm_has_at_least_ten_kinds_each_over_a_limit_of_the_server(bench):
    kinds = bench.bad_requests(too_many_items=65, oversized_bytes=1_000_001)
    assert len(kinds) >= 10
    assert len(json.loads(kinds["too many items"]["content"])["inputs"]) == 65
    assert len(kinds["oversized body"]["content"]) > 1_000_001
    assert kinds["wrong content type"]["headers"]["content-type"] == "text/plain"


def test_goals_are_judged_on_the_numbers(bench):
    level = {"throughput": 400.0, "p99_ms": 4.0, "errors": 0, "requests": 10}
    report = {
        "max_batch_size": 32,
        "in_process": {"b1": {"throughput": 500.0, "p50_ms": 2.0}, "b32": {"throughput": 450.0, "p50_ms": 70.0}},
        "servers": {
            "hfcompress serve, dynamic batching": {"levels": {"1": level, "32": level}},
            "naive Flask, fp32 PyTorch teacher": {"levels": {"1": {**level, "throughput": 50.0}, "32": {**level, "throughput": 50.0}}},
        },
        "soak": {"requests": 100, "errors": 0, "rss_growth": 0.12, "rss_mb_before": 100, "rss_mb_after": 112},
    }
    args = type("Args", (), {"concurrency": [1, 32], "soak": 100, "storm": 0})
    verdicts = {g["goal"].split(" ")[0]: g["passed"] for g in bench.goals(report, args)}
    # 400/450 = 89% >= 80%; 400/50 = 8x < 10x; p99 4.0 <= 2.0 + 3; RSS grew 12% >= 10%
    assert verdicts == {"c=32": True, ">=": False, "c=1": True, "soak:": False}


@pytest.mark.slow
def test_benchmark_smoke_on_a_tiny_model(bench, tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.export import export_onnx

    onnx_dir = export_onnx(tiny_teacher_dir, tmp_path / "onnx", sequence_lengths=[8]).parent
    out = tmp_path / "results" / "serve"
    args = ["--model", str(onnx_dir), "--teacher", str(tiny_teacher_dir), "--data", str(tiny_sst2_dir), "--concurrency", "1", "4",
            "--requests", "12", "--duration", "10", "--warmup", "2", "--soak", "30", "--storm", "40", "--threads", "1",
            "--work-dir", str(tmp_path / "work"), "--output", str(out), "--load-generator", "httpx"]
    assert bench.main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["load_generator"] == "httpx"
    assert set(report["servers"]) == {"hfcompress serve, dynamic batching", "hfcompress serve, no batching (max batch 1)", "naive Flask, fp32 PyTorch teacher"}
    for server in report["servers"].values():
        assert set(server["levels"]) == {"1", "4"} and server["rss_mb_before"] > 0
        assert all(level["requests"] == 12 and level["errors"] == 0 and level["p99_ms"] > 0 for level in server["levels"].values())
        assert all(level["server_cpu_ms_per_request"] > 0 for level in server["levels"].values())
    assert report["servers"]["hfcompress serve, no batching (max batch 1)"]["levels"]["4"]["mean_batch_size"] == 1.0
    assert set(report["in_process"]) == {"b1", "b4"} and report["hardware"]["threads"] == 1
    assert report["soak"]["requests"] == 30 and report["soak"]["errors"] == 0
    storm = report["storm"]
    assert storm["requests"] == 40 and storm["server_errors"] == 0 and storm["all_4xx"] and storm["still_answering"]
    assert len(storm["status_by_kind"]) >= 10 and all(400 <= code < 500 for code in storm["status_by_kind"].values())
    assert [g["goal"].split(":")[0] for g in report["goals"]][-2:] == ["soak", "storm"]
    markdown = out.with_suffix(".md").read_text()
    assert "## Goals" in markdown and "What dynamic batching gives" in markdown and "scripts/bench_serve.py --model" in markdown
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_benchmark_smoke_with_wrk(bench, tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    """The same benchmark with wrk as the load generator: counts bounded by its Lua script, statuses and percentiles parsed."""
    import shutil

    from hfcompress.export import export_onnx

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install -y wrk to run the wrk load generator")
    onnx_dir = export_onnx(tiny_teacher_dir, tmp_path / "onnx", sequence_lengths=[8]).parent
    out = tmp_path / "results" / "serve"
    args = ["--model", str(onnx_dir), "--teacher", "", "--data", str(tiny_sst2_dir), "--concurrency", "1", "4", "--requests", "25",
            "--duration", "30", "--warmup", "5", "--soak", "60", "--storm", "54", "--threads", "1", "--load-generator", "wrk",
            "--work-dir", str(tmp_path / "work"), "--output", str(out)]
    assert bench.main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["load_generator"] == "wrk" and "load generator (wrk, one thread)" in out.with_suffix(".md").read_text()
    for server in report["servers"].values():
        for level in server["levels"].values():
            assert level["requests"] == 25 and level["statuses"] == {"200": 25} and level["errors"] == 0
            assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] and level["server_cpu_ms_per_request"] > 0
    assert report["soak"]["requests"] == 60 and report["soak"]["statuses"] == {"200": 60}
    storm = report["storm"]  # 54 answers counted by status, each a status some kind got when sent alone
    assert storm["requests"] == 54 and storm["server_errors"] == 0 and storm["all_4xx"] and storm["still_answering"]
    assert sum(storm["statuses"].values()) == 54 and {int(code) for code in storm["statuses"]} <= set(storm["status_by_kind"].values())
