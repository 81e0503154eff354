"""hfcompress search on a tiny recipe: it runs, keeps the budget, resumes after a kill, shares a study between two workers,
writes a recipe that reproduces the chosen point, and refuses a malformed space or budget before any training."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from hfcompress.cli import main
from hfcompress.errors import ConfigError
from hfcompress.recipes.recipe import load_recipe
from hfcompress.search import run_search
from hfcompress.search.config import parse_budget
from hfcompress.search.report import budget_sentence, choose
from tests.run_helpers import cli, start_cli, wait_for, write_recipe

optuna = pytest.importorskip("optuna")

LAYERS = [[0], [0, 2]]


def tiny_search_recipe(teacher: Path, data: Path, out: Path, proxy: bool = False) -> dict:
    """Distil a 1- or 2-layer student from the tiny teacher for a few steps; the space: temperature and which layers it keeps."""
    search = {
        "params": {
            "stages.student.training.temperature": {"type": "float", "low": 1, "high": 8},
            "stages.student.student_layers": {"type": "categorical", "choices": LAYERS},
        },
        "reference": str(teacher),
    }
    if proxy:
        search["proxy"] = {"stages.student.training.max_steps": 2, "data.max_eval_samples": 16}
    return {
        "name": "tiny-search",
        "output_dir": str(out / "unused"),
        "seed": 0,
        "data": {"path": str(data), "eval_split": "dev", "max_length": 32},
        "stages": [{
            "stage": "distill", "teacher": str(teacher), "student_layers": [0, 2],
            "training": {"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "disable_tqdm": True,
                         "use_cpu": True, "save_strategy": "no", "report_to": []},
        }],
        "search": search,
    }


def search_args(recipe: Path, out: Path, *extra: str) -> list[str]:
    return ["search", str(recipe), "--output", str(out), "--threads", "1", "--latency-samples", "8", *extra]


def completed(storage: str, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


# --- no training ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget, message",
    [("latency=5", "unknown key 'latency' (did you mean 'latency_ms'?)"), ("size_mb=-1", "must be positive"),
     ("size_mb", "is not key=value"), ("latency_ms=fast", "is not a number")],
)
def test_malformed_budget(budget, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_budget(budget)
    assert parse_budget("latency_ms=5, size_mb=20") == {"latency_ms": 5.0, "size_mb": 20.0} and parse_budget(None) == {}


@pytest.mark.parametrize(
    "param, spec, message",
    [
        ("stages.studnet.training.temperature", {"type": "float", "low": 1, "high": 8}, "names stage 'studnet'.*did you mean 'student'"),
        ("stages.student.training.temprature", {"type": "float", "low": 1, "high": 8}, "unknown key 'training.temprature'"),
        ("stages.student.training.temperature", {"type": "float", "low": 8, "high": 1}, "'low' < 'high'"),
        ("stages.student.training.temperature", {"type": "float", "lo": 1, "high": 8}, "unknown key 'search.params.*lo'"),
        ("stages.student.training.alpha", {"type": "categorical", "choices": ["high"]}, "alpha = 'high' does not fit the recipe"),
        ("stages.student.student_layers", {"type": "categorical", "choices": []}, "non-empty 'choices'"),
    ],
)
def test_malformed_space_is_one_line_before_any_training(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys, param, spec, message):
    recipe = tiny_search_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path)
    recipe["search"]["params"] = {param: spec}
    out = tmp_path / "search"
    assert main(search_args(write_recipe(recipe, tmp_path / "recipe.yaml"), out)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("hfcompress: error: ")
    assert re.search(message, error), error
    assert not out.exists()  # nothing ran


def test_missing_space_and_bad_budget_from_the_cli(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys):
    recipe = tiny_search_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path)
    path = write_recipe({k: v for k, v in recipe.items() if k != "search"}, tmp_path / "plain.yaml")
    assert main(search_args(path, tmp_path / "a")) == 2
    assert "has no 'search:' block: add one to the recipe or pass --space FILE" in capsys.readouterr().err
    assert main(search_args(write_recipe(recipe, tmp_path / "r.yaml"), tmp_path / "b", "--budget", "speed=3")) == 2
    assert "--budget: unknown key 'speed'" in capsys.readouterr().err
    assert load_recipe(tmp_path / "r.yaml").stages[0][1].name == "student"  # `hfcompress run` ignores the search block


def point(number, accuracy, latency, size, within=None):
    gate = None if within is None else {"within_margin": within}
    return {"number": number, "metric": "accuracy", "accuracy": accuracy, "latency_ms": latency, "size_mb": size, "gate": gate}


def test_choice_within_and_beyond_the_budget():
    front = [point(0, 0.90, 10.0, 40.0, True), point(1, 0.89, 4.0, 20.0, True), point(2, 0.85, 2.0, 10.0, False)]
    # within the budget, the fastest point the gate passes
    assert choose(front, {"latency_ms": 5}) == (front[1], True)
    # none the gate passes within the budget: the most accurate that fits
    assert choose(front, {"latency_ms": 3}) == (front[2], True)
    # unreachable: the closest (relative excess 1.0/1 + 8/2 for trial 2 is the smallest), said plainly
    chosen, met = choose(front, {"latency_ms": 1, "size_mb": 2})
    assert chosen is front[2] and not met
    assert budget_sentence(chosen, {"latency_ms": 1, "size_mb": 2}, met) == (
        "The budget was not met: no trial reached latency_ms <= 1 and size_mb <= 2; "
        "the closest point found is trial 2 (accuracy 0.8500, 2.00 ms, 10.00 MB)."
    )


def test_a_fixed_reference_is_predicted_once_per_worker_until_its_files_or_the_data_change(tiny_teacher_dir, tiny_sst2_dir, monkeypatch):
    import dataclasses

    import numpy as np

    from hfcompress import evaluation
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.search import study

    calls = []
    real = evaluation.classification_predictions
    monkeypatch.setattr(evaluation, "classification_predictions", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(study, "_REFERENCE_PREDICTIONS", {})
    cfg = DataConfig(path=str(tiny_sst2_dir), text_column="sentence", label_column="label", eval_split="dev")
    data = TaskData(cfg, splits=["dev"])
    first = study.reference_predictions(str(tiny_teacher_dir), data, 16)
    assert np.array_equal(study.reference_predictions(str(tiny_teacher_dir), data, 16), first) and len(calls) == 1
    shorter = TaskData(dataclasses.replace(cfg, max_length=8), splits=["dev"])  # a searched data setting changes the inputs
    study.reference_predictions(str(tiny_teacher_dir), shorter, 16)
    assert len(calls) == 2
    config = tiny_teacher_dir / "config.json"
    config.write_text(config.read_text() + "\n")  # the reference was re-made (here: touched)
    study.reference_predictions(str(tiny_teacher_dir), data, 16)
    assert len(calls) == 3


def _open_after(barrier, url, name, results):
    from hfcompress.search.study import load_study, open_storage

    barrier.wait()
    try:
        load_study(open_storage(url), name, "maximize", 0)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the test reports what failed
        results.put(repr(e))


def test_workers_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path):
    """Without the schema lock, two processes creating one SQLite schema fail in most rounds ("table studies already exists")."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round in range(4):
        url, barrier, results = f"sqlite:///{tmp_path / f'round{round}.db'}", context.Barrier(3), context.Queue()
        workers = [context.Process(target=_open_after, args=(barrier, url, "shared", results)) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * 3, f"round {round}"


# --- tiny searches ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_with_proxy_round_budget_and_best_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    """Proxy round, full training of its front, outputs; a rerun resumes with nothing to do and judges an unreachable budget."""
    from hfcompress.data import TaskData
    from hfcompress.evaluation import evaluate_model
    from hfcompress.recipes import run_recipe

    recipe = write_recipe(tiny_search_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path, proxy=True), tmp_path / "recipe.yaml")
    out = tmp_path / "search"
    result = run_search(recipe, out, budget="latency_ms=1000", trials=3, seed=0, threads=1, latency_samples=8)
    storage = f"sqlite:///{out / 'study.db'}"
    proxy, full = completed(storage, "tiny-search:proxy"), completed(storage, "tiny-search:full")
    assert len(proxy) == 3 and 1 <= len(full) <= 3
    proxy_front = [t.params for t in optuna.load_study(study_name="tiny-search:proxy", storage=storage).best_trials]
    assert all(t.params in proxy_front for t in full)  # only the proxy front is trained in full

    saved = json.loads((out / "search.json").read_text())
    assert {"trials", "front", "cpu_seconds", "gate"} <= set(saved) and saved["budget_met"] and saved["chosen"] == result["chosen"]
    assert [r["phase"] for r in saved["trials"]].count("proxy") == 3 and saved["cpu_seconds"] > 0
    for r in saved["trials"]:
        assert {"settings", "accuracy", "latency_ms", "size_mb", "cpu_seconds"} <= set(r) and r["cpu_seconds"] > 0
        assert r["settings"]["stages.student.student_layers"] in LAYERS
    assert saved["front"] and all(r["phase"] == "full" and r["on_front"] for r in saved["front"])
    chosen = saved["chosen"]
    assert saved["gate"] == chosen["gate"] and chosen["gate"]["verdict"] and chosen["gate"]["reference"] == str(tiny_teacher_dir)
    assert "| trial | phase |" in (out / "search.md").read_text() and (out / "search.png").stat().st_size > 0

    # the winner as a plain recipe that `hfcompress run` reproduces
    best = load_recipe(out / "best_recipe.yaml")
    assert best.resolved["stages"][0]["training"]["temperature"] == chosen["settings"]["stages.student.training.temperature"]
    assert best.resolved["stages"][0]["student_layers"] == chosen["settings"]["stages.student.student_layers"]
    outputs = run_recipe(best)
    again = evaluate_model(outputs["student"], TaskData(best.config.data, splits=["dev"], seed=0))
    assert again["accuracy"] == pytest.approx(chosen["accuracy"], abs=1 / 32)  # one sentence of the 32

    # a rerun finds every trial done, trains nothing, and says plainly that an unreachable budget is not met
    rerun = run_search(recipe, out, budget="latency_ms=0.001", trials=3, seed=0, threads=1, latency_samples=8)
    assert len(completed(storage, "tiny-search:proxy")) == 3 and len(completed(storage, "tiny-search:full")) == len(full)
    assert not rerun["budget_met"] and rerun["budget_sentence"].startswith("The budget was not met: no trial reached latency_ms <= 0.001")
    assert rerun["chosen"]["latency_ms"] == min(r["latency_ms"] for r in rerun["front"])


@pytest.mark.slow
def test_killed_search_resumes_without_redoing_finished_trials(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = write_recipe(tiny_search_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path), tmp_path / "recipe.yaml")
    out, storage = tmp_path / "search", f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    proc = start_cli(*search_args(recipe, out, "--trials", "3", "--seed", "0"), log=tmp_path / "first.log")

    def a_trial_finished() -> bool:
        time.sleep(0.5)  # a look every half second, not the helper's every 20 ms: the search needs the CPU
        if not (out / "study.db").exists():
            return False
        try:  # read-only, so that the test never races the worker creating the schema
            with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
                return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] > 0
        except sqlite3.OperationalError:  # no schema yet
            return False

    wait_for(a_trial_finished, proc, 300, "a trial finished")
    proc.kill()  # SIGKILL mid-study: no handler runs, the next trial is left RUNNING in the storage
    proc.wait()
    before = {t.number: (t.values, t.params) for t in completed(storage, "tiny-search")}
    assert 1 <= len(before) < 3

    result = cli(*search_args(recipe, out, "--trials", "3", "--seed", "0"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    after = {t.number: (t.values, t.params) for t in completed(storage, "tiny-search")}
    assert len(after) == 3 and all(after[n] == before[n] for n in before)  # finished trials kept, not redone
    saved = json.loads((out / "search.json").read_text())
    assert sorted(r["number"] for r in saved["trials"]) == sorted(after)


@pytest.mark.slow
def test_two_workers_share_one_study(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = write_recipe(tiny_search_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path), tmp_path / "recipe.yaml")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # both start on a new SQLite file: the first creates the schema and the study, the second joins them
    workers = [start_cli(*search_args(recipe, tmp_path / f"worker{i}", "--trials", "4", "--seed", str(i), "--storage", storage,
                                      "--study-name", "shared"), log=tmp_path / f"worker{i}.log") for i in (1, 2)]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], "\n".join((tmp_path / f"worker{i}.log").read_text()[-2000:] for i in (1, 2))
    trials = completed(storage, "shared")
    assert 4 <= len(trials) <= 5  # each worker stops once the study holds 4; one may finish a trial it had already started
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert yaml.safe_load((tmp_path / "worker2" / "best_recipe.yaml").read_text())["output_dir"].endswith("best")
