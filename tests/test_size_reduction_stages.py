"""The factorize and trim_vocab recipe stages, composed with recovery distillation and evaluation."""

import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.errors import ConfigError
from hfcompress.lowrank import LowRankLinear
from hfcompress.recipes import parse_recipe, run_recipe

from tests.conftest import assert_compression_summary


def recipe(teacher, data, out, **factorize):
    training = {"num_train_epochs": 1, "per_device_train_batch_size": 16, "disable_tqdm": True, "use_cpu": True}
    return {
        "name": "size",
        "output_dir": str(out),
        "seed": 0,
        "data": {"path": str(data), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "factorize", "model": str(teacher), "compression": 0.5, "min_rank": 4, **factorize},
            {"stage": "distill", "name": "recovered", "teacher": str(teacher), "student": "factorized", "training": dict(training, learning_rate=1e-3)},
            {"stage": "trim_vocab", "model": "recovered"},
            {"stage": "evaluate", "models": ["factorized", "recovered", "trimmed"]},
        ],
    }


@pytest.mark.integration
def test_factorize_recover_trim_evaluate(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    outputs = run_recipe(parse_recipe(recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run")))
    ranks = json.loads((outputs["factorized"] / "factorization.json").read_text())["ranks"]
    # 32x32 layers: int(0.5 * 32 * 32 / 64) = 8; 32x64 layers: int(0.5 * 32 * 64 / 96) = 10, rounded up to a multiple of 8
    assert {r for n, r in ranks.items() if "attention" in n} == {8} and {r for n, r in ranks.items() if "attention" not in n} == {16}
    trimmed = AutoModelForSequenceClassification.from_pretrained(outputs["trimmed"])
    assert isinstance(trimmed.bert.encoder.layer[0].intermediate.dense, LowRankLinear)  # distillation and trimming keep the factors
    trim_report = json.loads((outputs["trimmed"] / "vocab_trim.json").read_text())
    assert trim_report["vocab_size_after"] == trimmed.config.vocab_size == len(AutoTokenizer.from_pretrained(outputs["trimmed"]))
    assert trim_report["vocab_size_after"] < trim_report["vocab_size_before"]
    assert assert_compression_summary(outputs["factorized"], "truncated-svd").tables[0]["rows"] == ranks
    assert assert_compression_summary(outputs["trimmed"], "corpus-vocabulary").results["vocab_size_after"] == trim_report["vocab_size_after"]
    rows = json.loads((outputs["evaluation"] / "results.json").read_text())
    assert [r["name"] for r in rows] == ["factorized", "recovered", "trimmed"]
    assert rows[2]["num_parameters"] < rows[1]["num_parameters"]


def test_stage_keys_are_validated(tmp_path):
    bad = recipe(tmp_path, tmp_path, tmp_path / "run", energy=0.9)
    with pytest.raises(ConfigError, match="exactly one of 'energy'"):
        parse_recipe(bad)
    bad = recipe(tmp_path, tmp_path, tmp_path / "run")
    bad["stages"][2]["min_frequncy"] = 2
    with pytest.raises(ConfigError, match="did you mean 'min_frequency'"):
        parse_recipe(bad)


@pytest.mark.integration
def test_cli_factorize_and_trim_vocab(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys):
    from hfcompress.cli import main

    assert main(["factorize", str(tiny_teacher_dir), "--output", str(tmp_path / "f"), "--compression", "0.5", "--target-modules", "intermediate.dense"]) == 0
    assert set(json.loads((tmp_path / "f" / "factorization.json").read_text())["ranks"]) == {f"bert.encoder.layer.{i}.intermediate.dense" for i in range(4)}
    # one regex instead of names; an empty --exclude-modules lifts the default exclusion of the task heads
    assert main(["factorize", str(tiny_teacher_dir), "--output", str(tmp_path / "r"), "--compression", "0.5",
                 "--target-regex", r".*\.layer\.0\.intermediate\.dense|bert\.pooler\.dense", "--exclude-modules"]) == 0
    assert set(json.loads((tmp_path / "r" / "factorization.json").read_text())["layers"]) == {"bert.encoder.layer.0.intermediate.dense", "bert.pooler.dense"}
    assert main(["trim-vocab", str(tmp_path / "f"), "--output", str(tmp_path / "t"), "--data", str(tiny_sst2_dir)]) == 0
    assert "vocabulary 30,522 -> " in capsys.readouterr().out
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "t").config.vocab_size < 30522
    capsys.readouterr()  # transformers 5 draws a progress bar on stderr while that load reads the weights
    # an existing output is refused before any work, in one line
    assert main(["trim-vocab", str(tmp_path / "f"), "--output", str(tmp_path / "t"), "--data", str(tiny_sst2_dir)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(SystemExit):
        main(["factorize", str(tiny_teacher_dir), "--output", str(tmp_path / "g")])  # --energy or --compression is required
