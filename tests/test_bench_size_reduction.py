"""Smoke test of scripts/bench_size_reduction.py: the same code path on a tiny model and a few sentences."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def test_help():
    out = subprocess.run([sys.executable, str(REPO / "scripts/bench_size_reduction.py"), "--help"], capture_output=True, text=True, check=True)
    assert "--energies" in out.stdout and "--recovery-samples" in out.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_model(tiny_teacher_dir, tiny_sst2_dir, tokenizer, tmp_path):
    import bench_size_reduction
    from transformers import AutoModelForSequenceClassification

    from hfcompress import build_student_from_teacher

    student_dir = tmp_path / "student"
    build_student_from_teacher(AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir), [0, 2]).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    out = tmp_path / "results" / "size"
    bench_size_reduction.main([
        "--teacher", str(tiny_teacher_dir), "--student", str(student_dir), "--data", str(tiny_sst2_dir), "--max-length", "32",
        "--energies", "0.6", "--recovery-samples", "32", "--max-steps", "2", "--batch-size", "8", "--latency-sentences", "4",
        "--latency-repeats", "1", "--teacher-cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path / "work"),
        "--output", str(out),
    ])
    result = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["student", "student vocab-trimmed", "student lowrank e=0.6", "student lowrank e=0.6 + recovery",
                     "teacher", "teacher vocab-trimmed"]
    assert all(r["latency_ms_p50_b1"] > 0 and r["accuracy"] is not None for r in result["rows"])
    assert result["status"] == "complete" and [d["model"] for d in result["vocab_trimming"]] == ["student", "teacher"]
    trim = result["vocab_trimming"][0]
    assert trim["vocab_size_after"] < trim["vocab_size_before"] and trim["num_parameters_after"] < trim["num_parameters_before"]
    assert result["low_rank"][0]["num_parameters"] < result["rows"][0]["num_parameters"]
    assert result["hardware"]["threads"] == 2 and "Reproduce" in out.with_suffix(".md").read_text()
    assert (out / "compression_report.png").exists()
