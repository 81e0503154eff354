"""Recipe validation, overrides, and a real run of the training stages on tiny material."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfcompress.cli import main
from hfcompress.errors import ConfigError
from hfcompress.recipes import apply_overrides, parse_recipe, run_recipe
from hfcompress.recipes.context import RECIPE_FILE, STAGE_DONE_FILE
from tests.conftest import _require

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(teacher: Path, data: Path, out: Path) -> dict:
    training = {"num_train_epochs": 1, "per_device_train_batch_size": 16, "disable_tqdm": True, "use_cpu": True}
    return {
        "name": "tiny",
        "output_dir": str(out),
        "seed": 0,
        "data": {"path": str(data), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "finetune_teacher", "model": str(teacher), "training": dict(training, learning_rate=1e-3)},
            {
                "stage": "distill", "teacher": "teacher", "student_layers": [0, 2],
                "training": dict(training, alpha=0.5, temperature=2.0, teacher_cache_dir=str(out.parent / "cache")),
            },
            {"stage": "evaluate", "models": ["teacher", "student"]},
        ],
    }


def test_every_shipped_recipe_validates(monkeypatch):
    # The CIFAR-10 recipes start from the shared ResNets converted into outputs/, as their header tells a user to do first.
    from tests.test_bench_cifar10 import _load_bench

    monkeypatch.chdir(REPO)
    bench = _load_bench()
    _require(REPO / bench.CHECKPOINTS)
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        bench.convert_pretrained(raw, bench.CHECKPOINTS)
        parse_recipe(raw)


def test_recipe_runs_and_saves_itself_next_to_every_output(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = tiny_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run")
    outputs = run_recipe(parse_recipe(recipe))
    assert set(outputs) == {"teacher", "student", "evaluation"}
    for name, out in outputs.items():
        saved = yaml.safe_load((out / RECIPE_FILE).read_text())
        assert saved["stages"][1]["training"]["alpha"] == 0.5 and (out / STAGE_DONE_FILE).exists()
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(outputs["student"])
    assert student.config.num_hidden_layers == 2
    rows = json.loads((outputs["evaluation"] / "results.json").read_text())
    assert [r["name"] for r in rows] == ["teacher", "student"] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert not list((tmp_path / "run").glob(".*.tmp-*"))
    # finished stages are not redone on --resume
    stamp = (outputs["student"] / "model.safetensors").stat().st_mtime_ns
    run_recipe(parse_recipe(recipe), resume=True)
    assert (outputs["student"] / "model.safetensors").stat().st_mtime_ns == stamp


def test_existing_output_needs_resume_or_overwrite(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="--resume .* or --overwrite"):
        run_recipe(parse_recipe(tiny_recipe(tiny_teacher_dir, tiny_sst2_dir, out)))
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: r["stages"][1]["training"].update(learnig_rate=1e-4), "unknown key 'training.learnig_rate' (did you mean 'learning_rate'?)"),
        (lambda r: r["stages"][1].update(studnet_layers=[0]), "did you mean 'student_layers'?"),
        (lambda r: r["stages"][0].update(stage="finetune_teachr"), "unknown stage 'finetune_teachr' (did you mean 'finetune_teacher'?)"),
        (lambda r: r["stages"][1]["training"].update(num_train_epochs="two"), "training.num_train_epochs: expected a number"),
        (lambda r: r["stages"][1]["training"].update(temperature=-1.0), "temperature=-1.0 must be > 0"),
        (lambda r: r["stages"][1]["training"].update(alpha=2), "alpha=2.0 is outside [0, 1]"),
        (lambda r: r["stages"][0].update(model="./no/such/model"), "model './no/such/model' is not an earlier stage"),
        (lambda r: r["stages"][2].update(models=["teachr"]), "model 'teachr' is not an earlier stage"),
        (lambda r: r["data"].update(max_length="long"), "data.max_length: expected an integer"),
        (lambda r: r.update(stagse=[]), "unknown key 'stagse' (did you mean 'stages'?)"),
        (lambda r: r["stages"][1].pop("student_layers"), "give 'student'"),
        (lambda r: r["stages"].append({"stage": "evaluate", "models": ["student"]}), "stage name 'evaluation' is used twice"),
    ],
)
def test_recipe_mistakes_are_one_line_errors(tiny_teacher_dir, tiny_sst2_dir, tmp_path, edit, message):
    recipe = tiny_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run")
    edit(recipe)
    with pytest.raises(ConfigError) as info:
        parse_recipe(recipe)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_overrides_address_stages_by_name():
    recipe = {"stages": [{"stage": "distill", "name": "student", "training": {}}], "data": {"path": "x"}}
    out = apply_overrides(recipe, ["stages.student.training.learning_rate=3e-5", "data.max_length=64", "seed=7"])
    assert out["stages"][0]["training"]["learning_rate"] == "3e-5"  # YAML 1.1; the schema converts it
    assert out["data"]["max_length"] == 64 and out["seed"] == 7
    assert recipe["stages"][0]["training"] == {}  # the input is not modified
    with pytest.raises(ConfigError, match="did you mean 'student'"):
        apply_overrides(recipe, ["stages.studen.training.x=1"])


def test_yaml_exponent_without_dot_is_a_float(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = tiny_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run")
    recipe = apply_overrides(recipe, ["stages.student.training.learning_rate=3e-5"])
    assert parse_recipe(recipe).resolved["stages"][1]["training"]["learning_rate"] == 3e-5


def test_cli_prints_one_line_and_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noutput_dir: out\ndata: {path: nowhere}\nstages: [{stage: distil, teacher: t}]\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage 'distil' (did you mean 'distill'?)" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "hfcompress.cli", "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--resume" in out and "--overwrite" in out
