"""Smoke test of scripts/bench_sst2.py: the headline benchmark's code path on a tiny teacher and a few SST-2 sentences."""

import importlib.util
import json

import pytest

from tests.conftest import REPO


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_sst2", REPO / "scripts" / "bench_sst2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _tiny_overrides(tmp_path, teacher_dir, data_dir) -> list[str]:
    overrides = [f"output_dir={tmp_path / 'run'}", f"data.path={data_dir}", f"stages.teacher.model={teacher_dir}",
                 "stages.student.student_layers=[0, 2]"]
    for stage in ("teacher", "student", "slim", "slim_more"):
        overrides.append(f"stages.{stage}.training.max_steps=2")
        if stage != "teacher":
            overrides.append(f"stages.{stage}.training.teacher_cache_dir={tmp_path / 'cache'}")
    return [x for o in overrides for x in ("--override", o)]


@pytest.mark.integration
def test_headline_benchmark_smoke(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    bench = _load_bench()
    out = tmp_path / "results" / "sst2_minilm"
    args = _tiny_overrides(tmp_path, tiny_teacher_dir, tiny_sst2_dir) + [
        "--latency-samples", "4", "--rounds", "2", "--repeats", "1", "--warmup", "1",
        "--cost-train-samples", "32", "--cost-max-steps", "2", "--output", str(out),
    ]
    bench.main(args)
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["ref"]: r for r in report["rows"]}
    assert list(rows)[:5] == ["teacher", "optimum_onnx", "optimum_int8", "student", "slim_more_int8"] and len(rows) == 10
    for row in rows.values():
        for key in ("name", "accuracy", "size_mb", "latency_ms_p50_b1", "throughput_b32"):
            assert row[key] is not None, (row["ref"], key)
        assert row["hardware"]["threads"] == 2 and row["hardware"]["cpu"]
    assert rows["teacher"]["latency_backend"] == "pytorch" and rows["optimum_int8"]["latency_backend"] == "onnx"
    assert rows["slim"]["num_parameters"] < rows["student"]["num_parameters"] < rows["teacher"]["num_parameters"]  # slimming removed weights
    assert rows["slim_onnx"]["num_parameters"] == pytest.approx(rows["slim"]["num_parameters"], rel=0.01)
    assert rows["slim_more_int8"]["size_mb"] < rows["optimum_int8"]["size_mb"] < rows["teacher"]["size_mb"]
    assert report["goals"]["variant"] == "slim_more_int8" and len(report["goals"]["goals"]) == 6
    assert report["goals"]["goals"]["smaller_than_teacher"]["value"] == pytest.approx(rows["teacher"]["size_mb"] / rows["slim_more_int8"]["size_mb"], rel=1e-3)
    assert [c["name"] for c in report["training_cost"]][2] == "distillation, cached teacher logits"
    assert report["training_cost"][2]["teacher_forward_passes"] == 0 < report["training_cost"][1]["teacher_forward_passes"]
    markdown = out.with_suffix(".md").read_text()
    assert "Goals of `slim_more_int8`" in markdown and "What the framework costs" in markdown and "Reproduce" in markdown
    assert out.with_suffix(".png").stat().st_size > 0
    # a second run resumes the recipe (nothing retrains) and measures again
    bench.main(args + ["--no-cost", "--rounds", "1"])
    assert json.loads(out.with_suffix(".json").read_text())["training_cost"] == []


def test_bad_variant_and_headline_fail_before_work(tmp_path):
    bench = _load_bench()
    with pytest.raises(SystemExit, match="REF=LABEL"):
        bench.parse_variants(["slim_int8"])
    assert bench.check_goals([{"role": "teacher"}], "x") == {}
    from hfcompress.recipes import load_recipe

    recipe = load_recipe(REPO / "recipes" / "sst2_minilm.yaml")
    assert bench.distilled_student_layers(recipe) == [0, 2, 4]
    recipe.stages[:] = [(kind, stage) for kind, stage in recipe.stages if kind != "distill"]
    with pytest.raises(SystemExit, match="no distill stage"):
        bench.distilled_student_layers(recipe)


@pytest.mark.requires_optimum
def test_optimum_baselines_without_optimum_score_and_weigh_as_optimums(tiny_teacher_dir, tiny_sst2_dir, tmp_path, monkeypatch):
    """On transformers 5 the baselines are rebuilt without Optimum: the same predictions and size as Optimum's own."""
    import hfcompress.utils.imports as imports
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.evaluation import evaluate_model

    bench = _load_bench()
    with_optimum, how = bench.optimum_baselines(str(tiny_teacher_dir), tmp_path / "optimum")
    assert how.startswith("Optimum")
    monkeypatch.setattr(imports, "optimum_onnx_missing", lambda: "optimum-onnx is not installed")
    without, how = bench.optimum_baselines(str(tiny_teacher_dir), tmp_path / "plain")
    assert how.startswith("without Optimum")
    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"), splits=["dev"])
    for ref in (bench.OPTIMUM_ONNX, bench.OPTIMUM_INT8):
        ours, theirs = evaluate_model(without[ref], data), evaluate_model(with_optimum[ref], data)
        assert ours["accuracy"] == theirs["accuracy"] and ours["num_parameters"] == pytest.approx(theirs["num_parameters"], rel=0.01)
        assert ours["size_mb"] == pytest.approx(theirs["size_mb"], rel=0.1)  # a tiny model: the graphs' few non-weight bytes weigh in
