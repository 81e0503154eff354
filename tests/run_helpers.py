"""Recipe runs as real subprocesses, shared by the kill/resume, multi-process and bad-input tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

# Callbacks the crash/resume and multi-process tests run inside the distill stage. A compression callback
# joins every one of those tests with one line here, e.g.
#   pytest.param([{"type": "magnitude_pruning", "target_sparsity": 0.5}], id="magnitude_pruning"),
TRAINING_CALLBACK_CASES = [
    # one run covers distillation with gradual pruning (masks, schedule position) and QAT (fake-quant from step 4) together
    pytest.param(
        [{"type": "magnitude_pruning", "target_sparsity": 0.5, "schedule": "cubic", "end_step": 0.6, "frequency": 2},
         {"type": "qat", "start_step": 4}],
        id="distill+pruning+qat",
    ),
]


def subprocess_env(**extra) -> dict:
    # one thread per process: results do not depend on how many cores happen to be free
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def distill_recipe(teacher: Path, data: Path, out: Path, callbacks=(), epochs: int = 4, batch_size: int = 4, save_steps: int = 4) -> dict:
    """Fine-tune the tiny teacher briefly, distil a 2-layer student with checkpoints every few steps, evaluate both."""
    training = {"per_device_train_batch_size": batch_size, "disable_tqdm": True, "use_cpu": True, "save_steps": save_steps,
                "logging_steps": 4}
    return {
        "name": "reliability",
        "output_dir": str(out),
        "seed": 0,
        "data": {"path": str(data), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "finetune_teacher", "model": str(teacher), "training": dict(training, num_train_epochs=1, learning_rate=1e-3)},
            {
                "stage": "distill", "teacher": "teacher", "student_layers": [0, 2], "callbacks": list(callbacks),
                "training": dict(training, num_train_epochs=epochs, learning_rate=5e-4, alpha=0.5, temperature=2.0,
                                 teacher_cache_dir=str(out.parent / f"{out.name}-cache")),
            },
            {"stage": "evaluate", "models": ["teacher", "student"]},
        ],
    }


def write_recipe(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_process_group(cmd: list[str], env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole group (accelerate launch's workers too), leaving no orphans."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or subprocess_env(),
                            cwd=REPO, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def cli(*args: str, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_process_group([sys.executable, "-m", "hfcompress.cli", *args], env=env, timeout=timeout)


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "hfcompress.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=subprocess_env(), cwd=REPO)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def read_json(path: Path):
    return json.loads(path.read_text())


def tree_snapshot(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``root`` (empty if absent), to show nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
