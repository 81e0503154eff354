"""The statistical accuracy gate: the paired bootstrap interval against exact bootstrap distributions, and the verdict's wording."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from transformers import BertForSequenceClassification

from hfcompress.errors import ConfigError
from hfcompress.evaluation import accuracy_gate, bootstrap_difference_interval, non_inferiority, write_compression_report
from hfcompress.hub import CardConfig, render_model_card
from hfcompress.recipes import run_recipe
from hfcompress.recipes.recipe import parse_recipe
from tests.conftest import tiny_bert_config


def exact_percentile_interval(correct_a, correct_b, confidence: float) -> tuple[float, float]:
    """The bootstrap distribution enumerated: every one of the n**n equally likely resamples of n pairs, and its quantiles."""
    differences = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    n = len(differences)
    means = np.sort([100 * differences[list(indices)].mean() for indices in itertools.product(range(n), repeat=n)])
    cdf = np.arange(1, len(means) + 1) / len(means)
    tail = (1 - confidence) / 2
    return float(means[np.searchsorted(cdf, tail)]), float(means[np.searchsorted(cdf, 1 - tail)])


def test_three_examples_by_hand():
    # A and B differ on one of three examples, where only A is right: a resample's difference is 100 * k / 3 points, k ~ Binomial(3, 1/3).
    # P(k = 0) = 8/27 > 2.5%, so the lower bound is 0; P(k = 3) = 1/27 > 2.5%, so the upper bound is 100.
    low, high = bootstrap_difference_interval([1, 1, 0], [1, 0, 0], confidence=0.95, n_resamples=20_000)
    assert (low, high) == (0.0, 100.0)
    # at 90% the upper tail is 5% > 1/27, so the upper bound drops to k = 2
    assert bootstrap_difference_interval([1, 1, 0], [1, 0, 0], confidence=0.90, n_resamples=20_000)[1] == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    "correct_a, correct_b, confidence",
    [([1, 1, 0, 1], [1, 0, 0, 1], 0.8), ([1, 0, 1, 1], [0, 1, 1, 1], 0.9), ([1, 1, 1, 0], [0, 0, 1, 1], 0.9)],
)
def test_interval_matches_the_enumerated_bootstrap_distribution(correct_a, correct_b, confidence):
    expected = exact_percentile_interval(correct_a, correct_b, confidence)
    assert bootstrap_difference_interval(correct_a, correct_b, confidence, n_resamples=20_000, seed=3) == pytest.approx(expected, abs=1e-9)


def test_interval_is_seeded_and_checks_its_input():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.75
    assert bootstrap_difference_interval(a, b, seed=1) == bootstrap_difference_interval(a, b, seed=1)
    with pytest.raises(ValueError, match="same non-zero length"):
        bootstrap_difference_interval(a, b[:10])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_difference_interval(a, b, confidence=95)


@pytest.mark.parametrize(
    "low, high, difference, within, verdict",
    [
        (-0.4, 0.6, 0.1, True, "within 0.5 pt (+0.10 pt, 95% CI [-0.40, +0.60])"),
        (-0.5, 0.6, 0.1, False, "0.10 pt above, 95% CI [-0.50, +0.60]: not shown within 0.5 pt"),  # the bound must be above -M
        (-2.41, -0.34, -1.38, False, "1.38 pt below, 95% CI [-2.41, -0.34]: not shown within 0.5 pt"),
    ],
)
def test_verdict_wording(low, high, difference, within, verdict):
    assert non_inferiority(low, high, difference, margin=0.5) == (within, verdict)


def test_gate_dict_against_hand_counts():
    # 100 examples: both right on 80, only the reference on 3, only the candidate on 1 -> -2 points
    reference = np.array([True] * 80 + [True] * 3 + [False] * 1 + [False] * 16)
    candidate = np.array([True] * 80 + [False] * 3 + [True] * 1 + [False] * 16)
    gate = accuracy_gate(candidate, reference, margin=0.5, n_resamples=5000)
    assert gate["difference_points"] == -2.0
    assert gate["p_value_mcnemar"] == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial tail of 1 in 4
    assert gate["ci_low"] < -2.0 < gate["ci_high"] <= 2.0 and gate["confidence"] == 0.95 and gate["margin"] == 0.5
    assert gate["within_margin"] is False and gate["verdict"].startswith("2.00 pt below, 95% CI [")
    same = accuracy_gate(reference, reference, margin=0.5)
    assert same["within_margin"] and (same["ci_low"], same["ci_high"]) == (0.0, 0.0) and same["p_value_mcnemar"] == 1.0
    with pytest.raises(ValueError, match="margin"):
        accuracy_gate(candidate, reference, margin=-1)


GATE = {"reference": "teacher", "difference_points": -1.38, "ci_low": -2.41, "ci_high": -0.34, "confidence": 0.95, "p_value_mcnemar": 0.0386,
        "margin": 0.5, "verdict": "1.38 pt below, 95% CI [-2.41, -0.34]: not shown within 0.5 pt", "within_margin": False}
GATE_LINE = "- student: 1.38 pt below, 95% CI [-2.41, -0.34]: not shown within 0.5 pt (McNemar p = 0.0386)"


def test_report_and_card_print_the_same_verdict(tmp_path, tokenizer):
    rows = [{"name": "teacher", "accuracy": 0.9, "size_mb": 4.0}, {"name": "student", "accuracy": 0.886, "size_mb": 2.0, "gate": GATE}]
    write_compression_report(rows, tmp_path / "report")
    assert GATE_LINE in (tmp_path / "report" / "compression_report.md").read_text()

    BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(tmp_path / "student")
    card = render_model_card(tmp_path / "student", CardConfig(report=str(tmp_path / "report"))).text
    assert "Accuracy gate against `teacher`" in card and GATE_LINE in card
    assert "McNemar p" not in render_model_card(tmp_path / "student").text  # no report, no gate


def test_evaluate_stage_gates_every_model_against_the_first(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    copy = shutil.copytree(tiny_teacher_dir, tmp_path / "same-model")
    recipe = {"name": "gate", "output_dir": str(tmp_path / "run"), "data": {"path": str(tiny_sst2_dir), "eval_split": "dev"},
              "stages": [{"stage": "evaluate", "models": [str(tiny_teacher_dir), str(copy)], "gate_margin": 0.5, "batch_size": 8}]}
    out = run_recipe(parse_recipe(recipe))["evaluation"]
    gate = json.loads((out / "results.json").read_text())[1]["gate"]
    assert gate["reference"] == str(tiny_teacher_dir) and gate["within_margin"] and (gate["ci_low"], gate["ci_high"]) == (0.0, 0.0)
    assert f"- {copy}: within 0.5 pt (+0.00 pt, 95% CI [+0.00, +0.00]) (McNemar p = 1)" in (out / "compression_report.md").read_text()
    recipe["stages"][0]["models"] = [str(tiny_teacher_dir)]
    with pytest.raises(ConfigError, match="at least two models"):
        parse_recipe(recipe)
