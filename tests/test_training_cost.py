"""Smoke test of the distillation-cost benchmark: same code path as the committed full run, tiny sizes."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_distill_cache  # noqa: E402


def test_cache_benchmark_reports_every_variant_and_skips_teacher_passes_when_cached(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "cost"
    argv = [
        "--teacher", str(tiny_teacher_dir), "--data", str(tiny_sst2_dir), "--max-train-samples", "32",
        "--student-layers", "0", "2", "--epochs", "2", "--batch-size", "8", "--repeats", "1", "--threads", "1", "--output", str(out),
    ]
    assert bench_distill_cache.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    by_name = {v["name"]: v for v in result["variants"]}
    assert result["hardware"]["threads"] == 1 and result["hardware"]["cpu"]
    assert all(len(v["epoch_s"]) == 2 and v["steps"] == 8 for v in by_name.values())
    assert by_name["distill, no cache"]["teacher_forward_passes"] == 8
    assert by_name["distill, cached teacher logits"]["teacher_forward_passes"] == 0
    assert by_name["distill, cached teacher logits"]["cache_build_s"] is not None
    assert "| distill, cached teacher logits |" in out.with_suffix(".md").read_text()
