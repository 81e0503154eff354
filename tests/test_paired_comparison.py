"""McNemar's exact test, paired predictions, and the distillation comparison script built on them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from hfcompress.data import DataConfig, TaskData
from hfcompress.evaluation import classification_predictions, evaluate_model, mcnemar_exact, paired_comparison


@pytest.mark.parametrize(
    "only_a, only_b, p_value",
    [(3, 0, 2 * 1 / 8), (5, 1, 2 * (1 + 6) / 64), (2, 2, 1.0), (0, 0, 1.0), (34, 29, 0.6147)],  # last: scipy.stats.binomtest(29, 63)
)
def test_mcnemar_exact_matches_the_binomial_tail(only_a, only_b, p_value):
    both, neither = 10, 4
    correct_a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    correct_b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    result = mcnemar_exact(correct_a, correct_b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (only_a, only_b)
    assert result["p_value"] == pytest.approx(p_value, abs=1e-4)


def test_paired_comparison_counts_points_and_agreement():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    a = np.array([0, 1, 1, 0, 1, 0, 0, 1])  # 7/8 right
    b = np.array([0, 1, 0, 1, 1, 0, 1, 0])  # 5/8 right
    result = paired_comparison(a, b, labels, reference=a)
    assert result["accuracy_difference_points"] == 25.0 and result["only_a_correct"] == 3 and result["only_b_correct"] == 1
    assert result["agreement_a"] == 1.0 and result["agreement_b"] == 0.5
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_exact(a, b[:4])


def test_predictions_agree_with_evaluate_model(tiny_teacher_dir, tiny_sst2_dir):
    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"), splits=["dev"])
    predictions, labels = classification_predictions(tiny_teacher_dir, data, batch_size=8)
    assert len(predictions) == len(labels) == len(data.raw["dev"])
    assert float((predictions == labels).mean()) == pytest.approx(evaluate_model(tiny_teacher_dir, data, batch_size=8)["accuracy"])


def test_bench_distillation_smoke(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    """The results script end to end: a student identical to the baseline differs by nothing, and the goals are judged."""
    spec = importlib.util.spec_from_file_location("bench_distillation", Path(__file__).parents[1] / "scripts" / "bench_distillation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results" / "distillation"
    bench.main(["--teacher", str(tiny_teacher_dir), "--baseline", str(tiny_teacher_dir), "--student", f"same={tiny_teacher_dir}",
                "--data", str(tiny_sst2_dir), "--output", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    comparison = result["students"][0]["comparison"]
    assert comparison["accuracy_difference_points"] == 0.0 and comparison["p_value"] == 1.0 and comparison["agreement_a"] == 1.0
    assert result["students"][0]["goals"] == {"share_of_teacher": True, "gain_over_hard_labels": False}
    assert "| same |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench.parse_args(["--teacher", "t", "--baseline", "b", "--student", "no-label"])
