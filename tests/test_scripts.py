"""The entry scripts under ``accelerate launch`` with two CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# accelerate's --cpu flag starts one process (or mpirun); --multi_gpu starts processes through torchrun, and
# the script's --use_cpu then makes accelerate choose the gloo backend (DistributedType.MULTI_CPU).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_distill_script_help_lists_distillation_flags():
    out = subprocess.run([sys.executable, str(REPO / "scripts/distill.py"), "--help"], capture_output=True, text=True, env=_env(), check=True)
    for flag in ("--alpha", "--temperature", "--teacher_cache_dir", "--layer_map", "--student_layers"):
        assert flag in out.stdout


@pytest.mark.slow
def test_two_process_accelerate_launch_distils(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "student"
    cmd = LAUNCH + [
        str(REPO / "scripts/distill.py"), "--teacher_model_name_or_path", str(tiny_teacher_dir), "--student_layers", "0", "2",
        "--dataset", str(tiny_sst2_dir), "--eval_split", "dev", "--output_dir", str(out), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--teacher_cache_dir", str(tmp_path / "cache"), "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= state["eval_accuracy"] <= 1.0
    report = json.loads((out / "distillation.json").read_text())  # what hfcompress card renders
    assert report["teacher"] == str(tiny_teacher_dir) and report["student"] == "the teacher's layers [0, 2]"
    assert report["teacher_cache_dtype"] == "float32" and report["eval"]["accuracy"] == pytest.approx(state["eval_accuracy"], abs=1e-6)
    # 64 examples at 2 processes x 8 per device make 4 optimizer steps (one process alone would take 8)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 2
