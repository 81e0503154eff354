"""Runs never mix: one writer per output directory, and --resume refuses what changed since a stage ran."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time

import pytest

from hfcompress.artifacts import FILE_HASHES_DIR
from hfcompress.checkpoints import checkpoints_by_step, is_complete_checkpoint
from hfcompress.errors import ConfigError
from hfcompress.recipes.context import STAGE_DONE_FILE
from hfcompress.utils.lock import lock_path, output_lock
from tests.run_helpers import cli, distill_recipe, read_json, start_cli, wait_for, write_recipe


def _error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_a_held_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        owner = json.loads(lock_path(out).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(ConfigError, match=rf"output directory {out} is in use by pid {os.getpid()} on"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()  # released cleanly: no file left to look stale
    with output_lock(out):  # and free again
        pass


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname(), "command": "hfcompress run old.yaml"}))
    with caplog.at_level(logging.WARNING, logger="hfcompress"), output_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert f"took over the stale lock of pid {2**22 + 1}" in caplog.text and "hfcompress run old.yaml" in caplog.text


@pytest.mark.slow
def test_two_runs_into_one_output_directory_the_second_is_refused(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "run"
    # long enough that the first run is still training while the second starts, on any machine
    recipe = write_recipe(distill_recipe(tiny_teacher_dir, tiny_sst2_dir, out, epochs=40), tmp_path / "recipe.yaml")
    first = start_cli("run", str(recipe), log=tmp_path / "first.log")
    try:
        wait_for(lambda: (out / ".work" / "student").exists(), first, 600, "the first run to start distilling")
        second = cli("run", str(recipe), "--overwrite")
        assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
        line = _error_line(second)
        assert f"output directory {out} is in use by pid {first.pid}" in line, line
        assert (out / "teacher" / STAGE_DONE_FILE).exists()  # the second deleted nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run left its lock file: the next run reports the stale lock and takes over
    third = cli("run", str(recipe), "stages.student.training.num_train_epochs=1", "--overwrite")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the stale lock of pid {first.pid}" in third.stderr
    assert (out / "evaluation" / STAGE_DONE_FILE).exists() and not lock_path(out).exists()


def _flip_labels(data_dir, name="train.tsv"):
    lines = (data_dir / name).read_text().splitlines()
    flipped = [lines[0]] + [f"{text}\t{1 - int(label)}" for text, label in (line.rsplit("\t", 1) for line in lines[1:])]
    (data_dir / name).write_text("\n".join(flipped) + "\n")


@pytest.mark.slow
def test_resume_refuses_changed_data_and_force_stage_reruns_it_and_what_reads_it(tiny_teacher_dir, tiny_sst2_dir, tmp_path, session_cache_dir):
    out = tmp_path / "run"
    recipe = distill_recipe(tiny_teacher_dir, tiny_sst2_dir, out, epochs=1)
    recipe["stages"] = [recipe["stages"][0], {"stage": "evaluate", "models": ["teacher"]}]
    path = write_recipe(recipe, tmp_path / "recipe.yaml")
    hour_ago = time.time() - 3600
    for data_file in tiny_sst2_dir.iterdir():  # old enough that the run remembers their hashes (fresh files are hashed every run)
        os.utime(data_file, (hour_ago, hour_ago))
    assert cli("run", str(path)).returncode == 0
    remembered = "".join(p.read_text() for p in (session_cache_dir / FILE_HASHES_DIR).glob("*.json"))
    assert str(tiny_sst2_dir / "train.tsv") in remembered
    size = (tiny_sst2_dir / "train.tsv").stat().st_size
    _flip_labels(tiny_sst2_dir)
    assert (tiny_sst2_dir / "train.tsv").stat().st_size == size  # only the content (and the mtime) changed

    line = _error_line(cli("run", str(path), "--resume"))
    assert "stage 'teacher' finished with its data changed: data.files.train.tsv:" in line and "--force-stage teacher" in line, line
    assert (out / "teacher" / STAGE_DONE_FILE).exists()  # refused before anything was touched

    forced = cli("run", str(path), "--resume", "--force-stage", "teacher")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "already done" not in forced.stdout  # the teacher ran again, and so did the evaluation that reads it
    again = cli("run", str(path), "--resume")
    assert again.returncode == 0 and again.stdout.count("already done, skipped") == 2, again.stdout


@pytest.mark.slow
def test_an_interrupted_stage_resumed_with_other_settings_is_refused(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "run"
    path = write_recipe(distill_recipe(tiny_teacher_dir, tiny_sst2_dir, out, epochs=2), tmp_path / "recipe.yaml")
    proc = start_cli("run", str(path), log=tmp_path / "run.log")
    checkpoints = out / ".work" / "student" / "checkpoints"
    try:
        wait_for(lambda: any(is_complete_checkpoint(p) for _, p in checkpoints_by_step(checkpoints)), proc, 900, "a student checkpoint")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "student").exists()

    changed = ["stages.student.training.learning_rate=0.01", "stages.student.training.max_steps=6"]
    line = _error_line(cli("run", str(path), *changed, "--resume"))
    assert "stage 'student' was interrupted while running with a different recipe (stage.training.learning_rate: 0.0005 -> 0.01)" in line, line
    assert "--force-stage student" in line

    forced = cli("run", str(path), *changed, "--resume", "--force-stage", "student")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "'teacher': already done, skipped" in forced.stdout and "'student' resumes from" not in forced.stdout
    args = read_json(out / "student" / "training_args.json")
    assert args["learning_rate"] == 0.01 and read_json(out / "student" / "trainer_state.json")["global_step"] == 6
