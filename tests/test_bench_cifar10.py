"""scripts/bench_cifar10.py and the CIFAR-10 recipes: the stages it runs, the goals, smoke runs on a few images."""

import importlib.util
import json

import pytest
import yaml

from tests.conftest import REPO, SHARED, _require


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_cifar10", REPO / "scripts" / "bench_cifar10.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


TEXT_DATA = {"path": "data", "text_column": "sentence", "label_column": "label"}


def test_the_benchmark_runs_the_recipe_less_its_evaluate_and_card_stages():
    from hfcompress.utils.bench import without_report_stages

    recipe = {"data": TEXT_DATA, "stages": [
        {"stage": "finetune", "name": "base", "model": "m"},
        {"stage": "export", "name": "base_onnx", "model": "base"},
        {"stage": "evaluate", "models": ["base"]},
        {"stage": "card", "model": "base"},
    ]}
    kept = without_report_stages(recipe)
    assert [s["name"] for s in kept["stages"]] == ["base", "base_onnx"]  # the script measures every variant itself
    assert kept["data"] == TEXT_DATA


def test_a_stage_that_does_not_validate_stops_the_benchmark_before_anything_runs(tmp_path, capsys):
    bench = _load_bench()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "output_dir": str(tmp_path / "run"), "data": TEXT_DATA, "stages": [
        {"stage": "finetune", "name": "base", "model": str(tmp_path)},
        {"stage": "prune", "name": "pruned", "model": "base", "not_a_method": {}},
    ]}))
    assert bench.main(["--recipe", str(recipe), "--output", str(tmp_path / "out")]) == 1
    assert "unknown key 'stages[1].not_a_method'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _row(ref, role, accuracy, macs, size_mb, latency):
    return {"ref": ref, "role": role, "accuracy": accuracy, "macs": macs, "size_mb": size_mb, "latency_ms_p50_b1": latency}


def test_goals_compare_the_headline_with_resnet56_onnx_runtime_int8_and_resnet20():
    bench = _load_bench()
    rows = [
        _row("resnet56", "baseline", 0.90, 125e6, 3.4, 9.0), _row("ort_int8", "ort_int8", 0.89, 125e6, 1.0, 3.0),
        _row("resnet20", "small", 0.88, 41e6, 1.1, 2.0), _row("head", None, 0.895, 60e6, 0.5, 1.5),
    ]
    result = bench.check_goals(rows, "head")
    met = {key: g["met"] for key, g in result["goals"].items()}
    assert met == {"accuracy_points_below_baseline": True, "fewer_macs_than_baseline": True, "smaller_than_baseline": True,
                   "faster_b1_than_baseline": True, "faster_b1_than_ort_int8": True, "accuracy_points_above_resnet20": True,
                   "latency_b1_vs_resnet20": True}
    rows[-1]["accuracy"] = 0.88  # no better than ResNet-20 ("more accurate" is strict)
    assert not bench.check_goals(rows, "head")["goals"]["accuracy_points_above_resnet20"]["met"]
    assert bench.check_goals(rows[:3], "head") == {}  # no headline row, no goals


@pytest.mark.slow
@pytest.mark.integration
def test_benchmark_smoke_runs_every_variant_on_a_few_images(tmp_path):
    _require(SHARED / "models" / "resnet-cifar10")
    _require(SHARED / "data" / "cifar10")
    bench = _load_bench()
    pretrained, out = tmp_path / "pretrained", tmp_path / "results" / "cifar10_resnet56"
    overrides = [f"output_dir={tmp_path / 'run'}", f"stages.resnet56.model={pretrained / 'resnet56'}",
                 f"stages.resnet20.model={pretrained / 'resnet20'}", f"stages.resnet20_distilled.student={pretrained / 'resnet20'}"]
    args = ["--train-limit", "32", "--test-limit", "16", "--epochs", "0.01", "--latency-samples", "2", "--repeats", "1",
            "--warmup", "1", "--calibration-samples", "4", "--output", str(out), *[x for o in overrides for x in ("--override", o)]]
    assert bench.main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    sst2 = json.loads((REPO / "benchmarks" / "results" / "sst2_minilm.json").read_text())
    assert set(sst2) <= set(report)
    refs = [r["ref"] for r in report["rows"]]
    assert refs == [ref for ref, _ in bench.VARIANTS] and report["skipped"] == {}  # every variant, in the order
    macs = {r["ref"]: r["macs"] for r in report["rows"]}
    assert macs["resnet56"] == macs["resnet56_onnx"] == macs["ort_int8"] == pytest.approx(125.5e6, rel=0.01)
    assert macs["resnet56_pruned"] <= macs["resnet56"] / 2
    assert all(r["num_examples"] == 16 and r["latency_ms_p50_b1"] > 0 for r in report["rows"])
    assert report["settings"]["train_limit"] == 32 and "isa" in report["hardware"][0] and report["hardware"][0]["threads"] == 2


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_recipe_fine_tunes_exports_and_evaluates_resnet20(tmp_path):
    from hfcompress.tasks import TASKS

    if "image-classification" not in TASKS:
        pytest.skip("the image-classification task is not in this checkout: recipes/cifar10_smoke.yaml needs it")
    from hfcompress.models.cifar_resnet.conversion import convert_to_directory
    from hfcompress.recipes import run_recipe

    data = _require(SHARED / "data" / "cifar10")
    pretrained = tmp_path / "resnet20"
    convert_to_directory(_require(SHARED / "models" / "resnet-cifar10" / "pretrained_models" / "resnet20-12fca82f.th"), pretrained, 20, data / "classes.txt")
    outputs = run_recipe(REPO / "recipes" / "cifar10_smoke.yaml", [f"output_dir={tmp_path / 'run'}", f"stages.resnet20.model={pretrained}"])
    rows = {r["name"]: r for r in json.loads((outputs["evaluation"] / "results.json").read_text())}
    assert set(rows) == {"resnet20", "resnet20_onnx"} and all(r["num_examples"] == 256 for r in rows.values())
    assert rows["resnet20"]["accuracy"] == pytest.approx(rows["resnet20_onnx"]["accuracy"], abs=2 / 256)  # exported logits match
    assert rows["resnet20"]["accuracy"] > 0.6  # the pretrained network, barely moved by one short epoch at a small learning rate
