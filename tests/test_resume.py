"""Crash and resume: a real recipe run killed with SIGKILL mid-training, resumed with --resume, matches an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest

from hfcompress.checkpoints import checkpoints_by_step, discard_incomplete_checkpoints, is_complete_checkpoint, last_complete_checkpoint
from hfcompress.recipes.context import STAGE_DONE_FILE
from tests.run_helpers import (
    TRAINING_CALLBACK_CASES,
    cli,
    distill_recipe,
    max_weight_difference,
    read_json,
    start_cli,
    wait_for,
    write_recipe,
)

# Same seed, same data order (accelerate's seedable sampler, batches skipped on resume), RNG state (dropout) and
# optimizer/scheduler state restored from the checkpoint, one thread: the resumed run repeats the uninterrupted
# run's arithmetic exactly on CPU. The bound allows only float rounding, far below any real training difference
# (one extra or missing step moves weights by ~1e-4 at this learning rate).
WEIGHT_TOLERANCE = 1e-6
METRIC_TOLERANCE = 1e-6
KILL_AFTER_STEP = 8  # mid first epoch of 16 steps: resuming must skip the batches already seen


def _complete_checkpoint_at_least(checkpoints, step):
    def found():
        return next((p for s, p in checkpoints_by_step(checkpoints) if s >= step and is_complete_checkpoint(p)), None)

    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three runs; about a minute on an idle machine, far longer on a shared, loaded one
@pytest.mark.parametrize("callbacks", TRAINING_CALLBACK_CASES)
def test_sigkill_mid_distillation_then_resume_matches_uninterrupted_run(tiny_teacher_dir, tiny_sst2_dir, tmp_path, callbacks):
    reference_out, crashed_out = tmp_path / "reference", tmp_path / "crashed"
    reference = write_recipe(distill_recipe(tiny_teacher_dir, tiny_sst2_dir, reference_out, callbacks, epochs=2), tmp_path / "reference.yaml")
    crashed = write_recipe(distill_recipe(tiny_teacher_dir, tiny_sst2_dir, crashed_out, callbacks, epochs=2), tmp_path / "crashed.yaml")
    done = cli("run", str(reference))
    assert done.returncode == 0, done.stderr[-3000:]

    proc = start_cli("run", str(crashed), log=tmp_path / "crashed.log")
    checkpoints = crashed_out / ".work" / "student" / "checkpoints"
    try:
        killed_at = wait_for(_complete_checkpoint_at_least(checkpoints, KILL_AFTER_STEP), proc, 900, "a distillation checkpoint")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-training: the teacher stage is published, the student is not
    assert (crashed_out / "teacher" / STAGE_DONE_FILE).exists() and not (crashed_out / "student").exists()
    total_steps = read_json(reference_out / "student" / "trainer_state.json")["global_step"]
    assert int(killed_at.name.split("-")[1]) < total_steps
    teacher_stamp = (crashed_out / "teacher" / "model.safetensors").stat().st_mtime_ns

    resumed = cli("run", str(crashed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "'teacher': already done, skipped" in resumed.stdout
    assert "'student' resumes from" in resumed.stdout
    assert (crashed_out / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_stamp  # not redone

    assert read_json(crashed_out / "student" / "trainer_state.json")["global_step"] == total_steps
    difference = max_weight_difference(reference_out / "student", crashed_out / "student")
    print(f"resumed vs uninterrupted: max |weight difference| = {difference:.3g}")
    assert difference <= WEIGHT_TOLERANCE
    ref_eval, res_eval = read_json(reference_out / "student" / "eval_results.json"), read_json(crashed_out / "student" / "eval_results.json")
    for key in ("eval_loss", "eval_accuracy", "eval_f1"):
        assert res_eval[key] == pytest.approx(ref_eval[key], abs=METRIC_TOLERANCE), key
    ref_rows = read_json(reference_out / "evaluation" / "results.json")
    res_rows = read_json(crashed_out / "evaluation" / "results.json")
    assert [r["accuracy"] for r in res_rows] == pytest.approx([r["accuracy"] for r in ref_rows], abs=METRIC_TOLERANCE)
    assert not list(crashed_out.glob(".*.tmp-*")) and not list(crashed_out.parent.glob("crashed-cache/.*.tmp-*"))


def _fake_checkpoint(run_dir, step, complete=True, weights=True):
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_half_written_checkpoints_are_skipped_and_discarded(tmp_path):
    good = _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 20, complete=False)  # killed before trainer_state.json
    truncated = _fake_checkpoint(tmp_path, 30)
    (truncated / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    _fake_checkpoint(tmp_path, 40, weights=False)
    assert last_complete_checkpoint(tmp_path) == good
    assert discard_incomplete_checkpoints(tmp_path) == good
    assert [p.name for _, p in checkpoints_by_step(tmp_path)] == ["checkpoint-10"]
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_temporary_directories_of_killed_processes_are_cleaned_up(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from hfcompress.utils.io import make_temp_dir_beside

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace("-", "_")
    target = tmp_path / "cache-entry"
    killed = tmp_path / f".cache-entry.tmp-{host}-{dead.pid}-abc"
    running = tmp_path / f".cache-entry.tmp-{host}-{os.getppid()}-abc"  # a live process: maybe building right now
    other_host = tmp_path / f".cache-entry.tmp-otherhost-{dead.pid}-abc"
    for d in (killed, running, other_host):
        d.mkdir()
    mine = make_temp_dir_beside(target)
    assert not killed.exists() and running.exists() and other_host.exists()
    assert mine.name.startswith(f".cache-entry.tmp-{host}-{os.getpid()}-")
