"""A recipe under ``accelerate launch`` with two CPU processes (gloo) matches one process with the same global batch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from tests.conftest import tiny_bert_config
from tests.run_helpers import (
    REPO,
    TRAINING_CALLBACK_CASES,
    cli,
    max_weight_difference,
    read_json,
    run_process_group,
    write_recipe,
)
from tests.test_scripts import LAUNCH

# Same examples in each global batch (accelerate's seedable sampler; batches are sharded, not re-drawn), the
# loss normalised by the global item count, no dropout: the two runs differ only in the order of float sums
# (gradients all-reduced over two halves, batches of 8 padded to their own length). Measured: 6e-8.
WEIGHT_TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-5


@pytest.fixture
def dropout_free_teacher(tmp_path, tokenizer) -> Path:
    # Dropout draws different random numbers in one process and in two, which no tolerance could absorb.
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    out = tmp_path / "teacher"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _recipe(teacher, data, out, per_device_batch, callbacks):
    return {
        "name": "ddp", "output_dir": str(out), "seed": 0,
        "data": {"path": str(data), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "distill", "teacher": str(teacher), "student_layers": [0, 2], "callbacks": list(callbacks),
             "training": {"per_device_train_batch_size": per_device_batch, "num_train_epochs": 1, "learning_rate": 5e-4,
                          "save_steps": 2, "use_cpu": True, "disable_tqdm": True, "alpha": 0.5, "temperature": 2.0,
                          "teacher_cache_dir": str(out.parent / f"{out.name}-cache")}},
            {"stage": "evaluate", "models": ["student"]},
        ],
    }


def _launch_two(script_args) -> subprocess.CompletedProcess:
    return run_process_group(LAUNCH + script_args)


def _published_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".work" not in p.parts}


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two runs; seconds on an idle machine, far longer on a shared, loaded one
@pytest.mark.parametrize("callbacks", TRAINING_CALLBACK_CASES)
def test_two_processes_match_one_with_the_same_global_batch(dropout_free_teacher, tiny_sst2_dir, tmp_path, callbacks):
    one, two = tmp_path / "one", tmp_path / "two"
    single = cli("run", str(write_recipe(_recipe(dropout_free_teacher, tiny_sst2_dir, one, 16, callbacks), tmp_path / "one.yaml")))
    assert single.returncode == 0, single.stderr[-3000:]
    recipe = write_recipe(_recipe(dropout_free_teacher, tiny_sst2_dir, two, 8, callbacks), tmp_path / "two.yaml")
    double = _launch_two([str(REPO / "scripts/run_recipe.py"), str(recipe)])
    assert double.returncode == 0, double.stderr[-3000:]

    assert read_json(two / "student" / "trainer_state.json")["global_step"] == read_json(one / "student" / "trainer_state.json")["global_step"] == 4
    difference = max_weight_difference(one / "student", two / "student")
    print(f"2 processes vs 1: max |weight difference| = {difference:.3g}")
    assert difference <= WEIGHT_TOLERANCE
    m1, m2 = read_json(one / "student" / "eval_results.json"), read_json(two / "student" / "eval_results.json")
    for key in ("eval_loss", "eval_accuracy"):
        assert m2[key] == pytest.approx(m1[key], abs=METRIC_TOLERANCE), key
    # only the main process reports and writes: one line per stage, the same published files as one process
    assert double.stdout.count("hfcompress: [1/2] distill 'student' done") == 1
    assert _published_files(two) == _published_files(one)
    # every process saved its own RNG state, so a resumed 2-process run restores both
    assert {p.name for p in (two / ".work/student/checkpoints/checkpoint-2").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}


DESYNC_SCRIPT = """
import sys
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from hfcompress.cli import main
from hfcompress.recipes import register_callback


@dataclass
class RankNoiseConfig:
    pass


class RankNoise(TrainerCallback):
    # a buggy callback: a mask-like buffer computed from the process index
    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            next(model.parameters()).add_(args.process_index * 1e-3)


register_callback("rank_noise", RankNoiseConfig)(lambda config: RankNoise())
sys.exit(main(["run", *sys.argv[1:]]))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ranks_that_drift_apart_are_caught_before_saving(dropout_free_teacher, tiny_sst2_dir, tmp_path):
    script = tmp_path / "desync.py"
    script.write_text(DESYNC_SCRIPT)
    out = tmp_path / "run"
    recipe = write_recipe(_recipe(dropout_free_teacher, tiny_sst2_dir, out, 8, [{"type": "rank_noise"}]), tmp_path / "r.yaml")
    proc = _launch_two([str(script), str(recipe)])
    assert proc.returncode != 0
    assert "the model differs between processes at step 2 (before saving a checkpoint): ranks [1] differ from rank 0" in proc.stderr
    assert not (out / "student").exists()
