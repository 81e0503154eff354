"""The search itself: an Optuna multi-objective study whose trials run the recipe with sampled settings.

Objectives: the task's main metric (maximised), p50 latency at batch 1 on this machine and size on
disk (both minimised). With a ``proxy:`` block the search runs in two rounds, successive halving in
two rungs: every trial first runs cheaply with the proxy overrides (study ``NAME:proxy``), then only
the settings on the proxy Pareto front are trained in full (study ``NAME:full``). Optuna's pruners
take intermediate values of single-objective studies only, so the proxy round is what stops poor
settings early here.

Storage: Optuna's RDB storage, SQLite in the output directory by default. Several worker processes
(``hfcompress search`` started several times with the same ``--storage`` and ``--study-name``) share
one study; SQLite serialises their writes, which is enough for trials that take seconds or more, and
a database URL (``postgresql://...``) lets workers on several machines share it. The RDB storage is
chosen over Optuna's journal file because it has heartbeats: a trial whose worker was killed is
marked failed after the grace period and retried with the same settings, so a search resumes
(``load_if_exists``) without losing or redoing finished trials.
"""

from __future__ import annotations

import os
import resource
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..artifacts import SQLITE_SCHEMA_LOCK_SUFFIX
from ..errors import ConfigError, HFCompressError
from ..utils.lock import waiting_lock
from ..recipes.recipe import apply_overrides, parse_recipe
from .config import SearchSpace, override

HEARTBEAT_S = 10  # a worker tells the storage every 10 s that its trial is alive
GRACE_S = 60  # a trial silent for this long is failed and retried by the next worker that starts a trial
_LOWER_IS_BETTER = ("perplexity", "loss")


@dataclass
class TrialSettings:
    """How each trial is measured (the same for every trial, so that they compare)."""

    output_dir: Path
    tolerance: float = 0.5  # the gate's non-inferiority margin, in points
    threads: int = 2  # intra-op threads while timing
    latency_samples: int = 64  # evaluation inputs the batch-1 latency is timed on
    batch_size: int = 64


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (data workers, exporters)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def metric_direction(metric: str) -> str:
    return "minimize" if metric in _LOWER_IS_BETTER else "maximize"


def scored_model(outputs: dict[str, Path], wanted: Optional[str]) -> Path:
    """The output a trial is scored on: ``wanted``'s, or the last stage's that holds a model (weights or an ONNX graph)."""
    if wanted is not None:
        return outputs[wanted]
    for out in reversed(list(outputs.values())):
        if (out / "config.json").is_file() or any(out.glob("*.onnx")):
            return out
    raise ConfigError("the recipe's stages wrote no model to score: add a training, export or quantize stage, or set search.model")


def reference_model(recipe, outputs: dict[str, Path], space: SearchSpace, scored: Path) -> Optional[str]:
    """What the gate compares with: ``search.reference``, else the first other model an evaluate stage lists (the teacher), else none."""
    refs = [space.reference] if space.reference else [
        ref for kind, cfg in recipe.stages if kind == "evaluate" for ref in cfg.models
    ]
    for ref in refs:
        path = str(outputs.get(ref, ref))
        if Path(path).resolve() != scored.resolve():
            return path
    return None


_REFERENCE_PREDICTIONS: dict[tuple, Any] = {}


def reference_predictions(reference: str, data, batch_size: int):
    """The reference's right/wrong inputs for the gate, computed once per worker while its files and the data
    settings stay the same: a fixed teacher is the same in every trial, while one the recipe trains in the
    trial's own directory is new each time."""
    import dataclasses

    from ..evaluation import classification_predictions

    path = Path(reference)
    files = sorted(path.rglob("*")) if path.is_dir() else [path] if path.exists() else []
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    key = (str(path.resolve()) if files else reference, stats, repr(dataclasses.asdict(data.cfg)), batch_size)
    if key not in _REFERENCE_PREDICTIONS:
        _REFERENCE_PREDICTIONS[key] = classification_predictions(reference, data, batch_size)[0]
    return _REFERENCE_PREDICTIONS[key]


def run_trial(recipe_data: dict, overrides: list[str], trial_dir: Path, space: SearchSpace, settings: TrialSettings) -> dict:
    """Run the recipe in ``trial_dir`` with ``overrides``, then score its model: metric, latency, size, CPU seconds, gate."""
    from ..data import TaskData
    from ..evaluation import accuracy_gate, classification_predictions, compression_row, evaluate_model, evaluation_texts, measure_latency
    from ..recipes.runner import run_recipe

    start = cpu_seconds()
    recipe = parse_recipe(apply_overrides(recipe_data, [*overrides, override("output_dir", str(trial_dir))]))
    outputs = run_recipe(recipe, overwrite=True)
    model = scored_model(outputs, space.model)
    data = TaskData(recipe.config.data, splits=[recipe.config.data.eval_split], seed=recipe.config.seed)
    evaluation = evaluate_model(model, data, settings.batch_size)
    metric = space.metric or compression_row("", evaluation)["quality_metric"]
    if space.metric is None and metric_direction(metric) == "minimize":  # the study was created to maximise
        raise ConfigError(f"the task's main metric is {metric}, lower is better: set search.metric: {metric} so that the search minimises it")
    if metric not in evaluation:
        raise ConfigError(f"search.metric '{metric}' is not among the task's metrics {sorted(k for k, v in evaluation.items() if isinstance(v, float))}")
    latency = measure_latency(model, model, evaluation_texts(data, settings.latency_samples), [1], settings.threads)
    result: dict[str, Any] = {
        "metric": metric, "value": float(evaluation[metric]), "latency_ms": latency["b1"]["p50_ms"], "size_mb": evaluation["size_mb"],
        "model": str(model), "hardware": latency["hardware"], "gate": None,
    }
    reference = reference_model(recipe, outputs, space, model)
    if reference is not None and data.task.default_metrics:  # a gate needs per-example right/wrong: classification tasks
        predictions, labels = classification_predictions(model, data, settings.batch_size)
        correct_reference = reference_predictions(reference, data, settings.batch_size) == labels
        result["gate"] = {"reference": reference, **accuracy_gate(predictions == labels, correct_reference, settings.tolerance)}
    result["cpu_seconds"] = round(cpu_seconds() - start, 2)
    return result


@contextmanager
def schema_lock(url: str):
    """One worker at a time while a SQLite storage is opened: two workers opening a new file at once each create
    its tables, and one fails ("table studies already exists"). Other databases create their schema in a transaction."""
    if not url.startswith("sqlite:///"):
        yield
        return
    with waiting_lock(url[len("sqlite:///"):] + SQLITE_SCHEMA_LOCK_SUFFIX):
        yield


def open_storage(url: str):
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if "://" not in url:
        raise ConfigError(f"--storage {url!r} is not a database URL: write e.g. sqlite:///search.db (or postgresql://user@host/db)")
    try:
        with warnings.catch_warnings(), schema_lock(url):  # heartbeats are "experimental" since Optuna 2.8; they are what a resumed search relies on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2),
                # SQLite: wait for another worker's write instead of failing with "database is locked"
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
    except (ImportError, ValueError, SQLAlchemyError) as e:  # an unknown dialect, a database that cannot be reached
        raise ConfigError(f"--storage {url}: {str(e).splitlines()[0]}: use sqlite:///PATH or a reachable database URL") from None


def load_study(storage, name: str, direction: str, seed: Optional[int]):
    import optuna

    return optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True, directions=[direction, "minimize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
    )


def finished(study) -> list:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


class SearchObjective:
    """Optuna's objective: sample the space, run a trial, keep its measurements as user attributes."""

    def __init__(self, recipe_data: dict, space: SearchSpace, settings: TrialSettings, phase: str):
        self.recipe_data, self.space, self.settings, self.phase = recipe_data, space, settings, phase

    def __call__(self, trial) -> tuple[float, float, float]:
        values = {path: spec.suggest(trial, path) for path, spec in self.space.specs.items()}
        overrides = self.space.overrides(values) + (self.space.proxy_overrides() if self.phase == "proxy" else [])
        # per study: rounds and studies that share an output directory number their trials from 0 each
        trial_dir = self.settings.output_dir / "trials" / trial.study.study_name.replace(":", "-") / f"{trial.number:03d}"
        trial.set_user_attr("settings", values)
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which of the workers sharing the study ran it
        start = cpu_seconds()
        try:
            result = run_trial(self.recipe_data, overrides, trial_dir, self.space, self.settings)
        except BaseException:
            trial.set_user_attr("cpu_seconds", round(cpu_seconds() - start, 2))  # a failed trial's CPU counts in the total too
            raise
        for key, value in result.items():
            trial.set_user_attr(key, value)
        return result["value"], result["latency_ms"], result["size_mb"]


def run_phase(study, objective: SearchObjective, n_trials: int) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (counted over every worker and every earlier run)."""
    import optuna

    remaining = n_trials - len(finished(study))
    if remaining > 0:
        study.optimize(
            objective, n_trials=remaining, catch=(HFCompressError,), show_progress_bar=True,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))],
        )


def train_proxy_front_in_full(proxy_study, full_study, objective: SearchObjective) -> None:
    """Train in full the settings on the proxy round's Pareto front that no worker has trained (or queued) yet."""
    import optuna

    for trial in proxy_study.best_trials:
        full_study.enqueue_trial(trial.params, skip_if_exists=True)  # another worker, or an earlier run, may have queued it
    waiting = full_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting:  # exactly the queued settings: the sampler proposes nothing new in this round
        full_study.optimize(objective, n_trials=len(waiting), catch=(HFCompressError,), show_progress_bar=True)
