"""Model cards: gathered from a tiny recipe output, validated, rendered, loaded back with ModelCard.load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfcompress.distillation.report import write_distillation_report
from hfcompress.errors import ConfigError
from hfcompress.export import export_onnx
from hfcompress.hub import CardConfig, render_model_card, validate_card_data, write_model_card
from hfcompress.hub.card import DEFAULT_TEMPLATE, lineage
from hfcompress.pruning.masks import write_pruning_report
from hfcompress.quantization.config import write_quantization_report

from tests.conftest import REPO, save_tiny_wordpiece_tokenizer, tiny_bert_config

RECIPE = {
    "name": "tiny-run",
    "output_dir": "outputs/tiny-run",
    "seed": 42,
    "data": {"path": "data/sst2", "name": None, "task": "text-classification", "train_split": "train", "eval_split": "dev",
             "max_train_samples": 64},
    "stages": [
        {"stage": "finetune_teacher", "name": "teacher", "model": "../base-model", "training": {"num_train_epochs": 1}},
        {"stage": "distill", "name": "student", "teacher": "teacher", "student_layers": [0, 2],
         "training": {"num_train_epochs": 2, "alpha": 0.3, "temperature": 4.0, "learning_rate": 1e-4}},
    ],
}
DISTILLATION = {  # as DistillationTrainer.write_artifacts writes it for RECIPE's distill stage
    "method": "distillation", "teacher": "teacher", "student": "the teacher's layers [0, 2]", "task": "text-classification",
    "alpha": 0.3, "temperature": 4.0, "beta": None, "hidden_distill_weight": 0.5, "hidden_distill_loss": "mse",
    "attention_distill_weight": None, "layer_map": "0:1,1:3", "teacher_cache_dtype": "float16", "teacher_cache_top_k": None,
    "lmbda": None, "seq_kd": None, "max_new_tokens": None, "epochs": 2.0, "max_steps": None, "teacher_layers": 4, "student_layers": 2,
    "teacher_parameters": 42722, "student_parameters": 25634, "parameters_vs_teacher": 0.6, "steps": 16, "train_loss": 0.41,
    "teacher_forward_passes": 2, "eval": {"loss": 0.3, "accuracy": 0.875},
}
PICKLES = ("training_args.bin", "optimizer.pt", "rng_state_0.pth", "extra.pkl")
SPARSITY = {"method": "magnitude", "target_sparsity": 0.5, "global_sparsity": 0.49, "pattern": "unstructured",
            "layers": {"bert.encoder.layer.0.attention.self.query": 0.5, "bert.encoder.layer.1.output.dense": 0.48},
            "schedule": {"start_step": 0, "end_step": 100}}
REPORT = {  # as hfcompress.evaluation.write_compression_report writes it
    "title": "tiny", "baseline": "teacher", "quality_metric": "accuracy",
    "hardware": [{"cpu": "Test CPU", "isa": ["avx2", "fma"], "cores": 2, "threads": 2, "machine": "x86_64"}],
    "rows": [
        {"name": "teacher", "accuracy": 0.9, "size_mb": 1.5, "num_parameters": 42722, "latency_ms_p50_b1": 3.2,
         "latency_ms_p95_b1": 4.0, "throughput_b32": 900.0, "speedup_b1": 1.0},
        {"name": "student-int8", "accuracy": 0.88, "size_mb": 0.4, "num_parameters": 25634, "latency_ms_p50_b1": 1.1,
         "latency_ms_p95_b1": 1.3, "throughput_b32": 2500.0, "speedup_b1": 2.909},
        {"name": "student-onnx", "accuracy": 0.88, "size_mb": 0.11, "num_parameters": None, "latency_ms_p50_b1": None,
         "latency_ms_p95_b1": None, "throughput_b32": None, "speedup_b1": None},
    ],
}


def _save_tiny(directory: Path, layers: int) -> None:
    from transformers import BertForSequenceClassification

    config = tiny_bert_config(100, num_hidden_layers=layers, id2label={0: "negative", 1: "positive"},
                              label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A recipe run laid out as the runner leaves it: base model beside the run dir, teacher and student outputs."""
    top = tmp_path_factory.mktemp("cards")
    run = top / "project"
    base = top / "base-model"
    _save_tiny(base, 4)
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# base\n")
    (run / "data" / "sst2").mkdir(parents=True)  # the recipe's data.path, relative to the run directory
    root = run / "outputs" / "tiny-run"
    for name, layers in (("teacher", 4), ("student", 2)):
        _save_tiny(root / name, layers)
        (root / name / "hfcompress_recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
        (root / name / ".hfcompress_stage_done").write_text("ok\n")
    (root / "student" / "eval_results.json").write_text(json.dumps({"eval_loss": 0.3, "eval_accuracy": 0.875, "eval_f1": 0.88, "epoch": 2.0}))
    write_pruning_report(root / "student", SPARSITY)
    write_distillation_report(root / "student", DISTILLATION)
    (root / "student" / "checkpoint-10").mkdir()
    (root / "student" / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    save_tiny_wordpiece_tokenizer(root / "student", 100)
    export = run / "outputs" / "export"
    export_onnx(root / "student", export, batch_sizes=[1, 4], sequence_lengths=[8, 32])  # the real model.onnx and parity.json
    for name in PICKLES:  # what Trainer.save_model and checkpoints leave: never copied into a release
        (root / "student" / name).write_bytes(b"\x80\x04pickle")
    (export / "model_quantized.onnx").write_bytes(b"\x08\x07" * 300)
    write_quantization_report(export, {"method": "static", "weights": "int8 symmetric per-channel", "activations": "int8 per-tensor",
                                       "preset": "tensorrt"})
    report = run / "outputs" / "report"
    report.mkdir()
    (report / "compression_report.json").write_text(json.dumps(REPORT))
    (report / "compression_report.md").write_text("# report\n")
    return run


def test_lineage_follows_recipe_stages_and_relative_paths(run_dir):
    student = run_dir / "outputs" / "tiny-run" / "student"
    chain = lineage(student)
    assert [a.ref for a in chain] == ["teacher", "../base-model"]
    assert chain[0].path == student.parent / "teacher" and chain[0].stage["stage"] == "finetune_teacher"
    assert chain[1].path == (run_dir.parent / "base-model").resolve()


def test_steps_are_listed_in_the_order_the_recipe_ran_them():
    from hfcompress.hub.card import in_recipe_order

    recipe = {"stages": [{"stage": "finetune_teacher", "name": "teacher"}, {"stage": "distill", "name": "student"}, {"stage": "prune", "name": "slim"}]}
    # a prune stage distilling from the teacher has parents (teacher, student): the lineage meets the teacher first
    walked = [{"stage": "distill", "name": "student"}, {"stage": "finetune_teacher", "name": "teacher"}, {"stage": "finetune", "name": "older-run"}]
    assert [s["name"] for s in in_recipe_order(walked, recipe)] == ["older-run", "teacher", "student"]
    assert in_recipe_order(walked, None) == walked


@pytest.mark.parametrize("warmup", [{"warmup_ratio": 0.1}, {"warmup_steps": 0.1}, {"warmup_steps": 50}])
def test_card_shows_the_warmup_the_recipe_set(warmup):
    """Under the name the user wrote: transformers 4.x's warmup_ratio or 5's warmup_steps, whichever is installed."""
    from hfcompress.hub.card import _describe_step
    from hfcompress.recipes import parse_recipe

    recipe = {**RECIPE, "stages": [{**RECIPE["stages"][1], "teacher": str(REPO), "training": {"num_train_epochs": 2, **warmup}}]}
    stage = parse_recipe(recipe).resolved["stages"][0]
    assert _describe_step(stage)["settings"] == {"teacher": str(REPO), "student_layers": [0, 2], "num_train_epochs": 2, **warmup}


def test_card_of_distilled_pruned_student(run_dir, tmp_path):
    student = run_dir / "outputs" / "tiny-run" / "student"
    out = tmp_path / "card" / "README.md"
    cfg = CardConfig(dataset="nyu-mll/glue", dataset_config="sst2", dataset_split="validation", repo_id="me/tiny-student",
                     onnx=[str(run_dir / "outputs" / "export")], report=str(run_dir / "outputs" / "report"))
    path = write_model_card(student, out, cfg)
    assert path == out and not (student / "README.md").exists()

    card = ModelCard.load(out)
    data = card.data.to_dict()
    validate_card_data(card.data)
    assert data["license"] == "mit"  # carried from the base model's card through the teacher
    assert "base_model" not in data  # every ancestor is a local directory, none a Hub id
    assert data["datasets"] == ["nyu-mll/glue"] and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-classification"
    assert {"hfcompress", "distillation", "pruning", "quantization", "int8", "tensorrt", "onnx"} <= set(data["tags"])
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "f1"} and results["accuracy"].metric_value == 0.875
    assert results["accuracy"].dataset_config == "sst2" and results["accuracy"].dataset_split == "validation"
    assert card.data.model_name == "tiny-student"

    text = card.text
    assert "distilled from `teacher`" in text and "layers [0, 2]" in text
    assert "Teacher: `teacher` (4-layer `BertForSequenceClassification`, 42,722 parameters, trained from `../base-model`)" in text
    assert "T = 4.0" in text and "alpha = 0.3" in text
    distillation = text.split("### Distillation\n", 1)[1].split("\n#", 1)[0]  # from the summary, through the common path
    assert "plus 0.5 × mse between hidden states of layers 0:1,1:3" in distillation and "- teacher_cache_dtype: float16" in distillation
    assert "- epochs: 2.0000" in distillation and "- student_parameters: 25,634" in distillation and "accuracy=0.875" in distillation
    assert text.count("distilled from `teacher`") == 1  # the lineage and the summary say it once
    assert "| `bert.encoder.layer.1.output.dense` | 0.480 |" in text  # sparsity per layer
    assert "int8 symmetric per-channel" in text and "`onnx/quantization.json`" in text
    assert "| student-int8 | 0.8800 | 0.40 | 25,634 | 1.10 | 1.30 | 2.91× | 2500.0 |" in text
    assert "| student-onnx | 0.8800 | 0.11 | – | – | – | – | – |" in text
    assert "Measured on Test CPU (avx2, fma), 2 threads." in text and "relative to `teacher`" in text
    assert 'subfolder="onnx", file_name="model_quantized.onnx"' in text
    assert "a seeded random subset of 64 examples" in text
    assert "{'" not in text and "'checks'" not in text  # no dict printed raw
    exported = json.loads((run_dir / "outputs" / "export" / "parity.json").read_text())
    parity = exported["files"]["model.onnx"]
    section = text.split("### ONNX export parity: `onnx/model.onnx`\n", 1)[1].split("\n#", 1)[0]
    assert exported["backend"] in ("optimum", "dynamo")  # the exporter that ran, not "auto"
    assert f"with the {exported['backend']} exporter" in section and "built-in real sentences" in section
    assert f"- Max abs diff: {_num(parity['max_abs_diff'])} (tolerance 1.00e-04): passed" in section
    assert [(c["batch_size"], c["sequence_length"]) for c in parity["checks"]] == [(1, 8), (4, 8), (1, 32), (4, 32)]
    for c in parity["checks"]:  # every shape checked, with its difference
        assert f"| {c['batch_size']} | {c['sequence_length']} | {_num(c['max_abs_diff'])} |" in section
    assert "{{" not in text and "{%" not in text


def test_card_onnx_runtime_snippet_runs_without_optimum(run_dir, tmp_path, monkeypatch):
    """The card's plain ONNX Runtime snippet, run as written against the release files, gives the PyTorch logits."""
    import huggingface_hub
    import torch
    from transformers import AutoModelForSequenceClassification

    student = run_dir / "outputs" / "tiny-run" / "student"
    export = tmp_path / "export"
    shutil.copytree(run_dir / "outputs" / "export", export, ignore=shutil.ignore_patterns("model_quantized.onnx", "quantization.json"))
    write_model_card(student, tmp_path / "README.md", CardConfig(repo_id="me/tiny-student", onnx=[str(export)]))
    text = (tmp_path / "README.md").read_text()
    code = text.split("With ONNX Runtime alone", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'hf_hub_download("me/tiny-student", "onnx/model.onnx")' in code
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(export / Path(filename).name))
    namespace: dict = {}
    exec(code.replace('"me/tiny-student"', repr(str(student))), namespace)
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    with torch.no_grad():
        expected = model(**namespace["tokenizer"](["A small model that still gets it right."], return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(namespace["logits"], expected, atol=1e-4)


def _num(x: float) -> str:
    """A float as the template's num macro writes it."""
    return f"{x:.2e}" if x != 0 and abs(x) < 0.001 else f"{x:.4f}"


def test_release_folder_holds_model_onnx_report_and_card(run_dir, tmp_path):
    student = run_dir / "outputs" / "tiny-run" / "student"
    cfg = CardConfig(onnx=[str(run_dir / "outputs" / "export")], report=str(run_dir / "outputs" / "report"))
    readme = write_model_card(student, tmp_path / "release", cfg)
    files = sorted(p.relative_to(tmp_path / "release").as_posix() for p in (tmp_path / "release").rglob("*") if p.is_file())
    # which tokenizer files transformers writes depends on its version (5 writes no special_tokens_map.json or vocab.txt)
    names = {"special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    tokenizer = names & {p.name for p in student.iterdir()}
    onnx_tokenizer = names & {p.name for p in (run_dir / "outputs" / "export").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= tokenizer & onnx_tokenizer
    assert files == sorted([
        "README.md", "config.json", "model.safetensors", "eval_results.json", "sparsity_report.json", "distillation.json", "compression_summary.json",
        "hfcompress_recipe.yaml", *tokenizer, *(f"onnx/{name}" for name in onnx_tokenizer),
        "onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/config.json", "onnx/parity.json", "onnx/quantization.json", "onnx/compression_summary.json",
        # what export_onnx carries from the checkpoint (artifacts.DESCRIPTION_FILES), so the export describes itself when served alone
        "onnx/eval_results.json", "onnx/sparsity_report.json", "onnx/distillation.json", "onnx/hfcompress_recipe.yaml",
        "compression_report.json", "compression_report.md",
    ])  # no checkpoint-*, no stage marker, no pickle
    assert ModelCard.load(readme).data.license == "mit"


def test_release_folder_leaves_out_pickles(run_dir, tmp_path):
    """training_args.bin (Trainer.save_model) and other pickles run code when loaded: a release never carries them."""
    student = run_dir / "outputs" / "tiny-run" / "student"
    assert all((student / name).is_file() for name in PICKLES)
    write_model_card(student, tmp_path / "release", CardConfig())
    shipped = {p.name for p in (tmp_path / "release").rglob("*")}
    assert "model.safetensors" in shipped and not shipped & set(PICKLES)


def test_qat_scheme_copied_into_an_export_is_described_once(run_dir, tmp_path):
    """export_onnx copies a QAT checkpoint's quantization.json beside model.onnx: the card must not describe it twice."""
    import shutil

    model = tmp_path / "qat-student"
    shutil.copytree(run_dir / "outputs" / "tiny-run" / "student", model)
    export = tmp_path / "qat-export"
    shutil.copytree(run_dir / "outputs" / "export", export)
    qat = {"method": "qat", "weights": "int8 symmetric per-channel", "activations": "uint8 asymmetric per-tensor",
           "preset": "avx2", "mode": "static", "ranges_file": "qat_ranges.safetensors", "step": 3}
    for d in (model, export):
        write_quantization_report(d, qat)
    (tmp_path / "static").mkdir()
    for name in ("model_quantized.onnx", "quantization.json", "compression_summary.json"):
        shutil.copy(run_dir / "outputs" / "export" / name, tmp_path / "static")
    text = render_model_card(model, CardConfig(onnx=[str(export), str(tmp_path / "static")])).text
    assert text.count("- method: qat") == 1 and text.count("- method: static") == 1
    assert "### Quantization\n" in text and "### Quantization (`onnx/quantization.json`)" in text  # the model's QAT, the int8 file's


def test_base_model_is_the_first_hub_id_and_overrides_win(run_dir, tmp_path):
    student = run_dir / "outputs" / "tiny-run" / "student"
    card = render_model_card(student, CardConfig(teacher="sentence-transformers/all-MiniLM-L6-v2"))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license is None  # offline: the Hub teacher's card cannot be read, nothing is invented
    assert "not stated" in card.text
    card = render_model_card(student, CardConfig(base_model="me/teacher", license="apache-2.0", language=["en"]))
    assert card.data.base_model == "me/teacher" and card.data.license == "apache-2.0" and card.data.language == ["en"]
    assert card.data.eval_results[0].dataset_type == "sst2"  # a local dataset is named by its directory


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (CardConfig(license="apache2"), "'license'"),
        (CardConfig(base_model="outputs/run/teacher"), "'base_model'"),
        (CardConfig(dataset="not a dataset"), "'datasets'"),
        (CardConfig(language=["English"]), "'language'"),
    ],
)
def test_bad_metadata_is_refused_before_writing(run_dir, tmp_path, cfg, field):
    student = run_dir / "outputs" / "tiny-run" / "student"
    with pytest.raises(ConfigError, match=field) as err:
        write_model_card(student, tmp_path / "README.md", cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "README.md").exists()


def test_validation_catches_model_index_problems():
    bad_value = ModelCardData(model_name="m", eval_results=[EvalResult(task_type="text-classification", dataset_type="glue",
                                                                      dataset_name="GLUE", metric_type="accuracy", metric_value=float("nan"))])
    with pytest.raises(ConfigError, match="model-index.metrics.accuracy"):
        validate_card_data(bad_value)
    bad_task = ModelCardData(model_name="m", eval_results=[EvalResult(task_type="summarisation", dataset_type="glue",
                                                                     dataset_name="GLUE", metric_type="accuracy", metric_value=0.5)])
    with pytest.raises(ConfigError, match="model-index.task.type"):
        validate_card_data(bad_task)
    with pytest.raises(ConfigError, match="'license'.*did you mean 'apache-2.0'"):
        validate_card_data(ModelCardData(license="apache-2"))


def test_hand_written_readme_is_not_overwritten(run_dir, tmp_path):
    target = tmp_path / "README.md"
    target.write_text("# my notes\n")
    student = run_dir / "outputs" / "tiny-run" / "student"
    with pytest.raises(ConfigError, match="--overwrite"):
        write_model_card(student, target)
    write_model_card(student, target, overwrite=True)
    write_model_card(student, target)  # our own card is regenerated freely
    assert "hfcompress" in ModelCard.load(target).data.tags


def test_missing_or_empty_model_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        render_model_card(tmp_path / "nope")
    with pytest.raises(ConfigError, match="neither config.json nor an .onnx file"):
        render_model_card(tmp_path)


def test_packaged_template_is_the_model_cards_template():
    assert DEFAULT_TEMPLATE.read_text() == (REPO / "model_cards" / "compressed_model.md.j2").read_text()


def test_cli_card_writes_readme_and_prints_path(run_dir, tmp_path, capsys):
    from hfcompress.cli import main

    student = run_dir / "outputs" / "tiny-run" / "student"
    out = tmp_path / "cli" / "README.md"
    argv = ["card", str(student), "--output", str(out), "--dataset", "nyu-mll/glue", "--dataset-config", "sst2", "--tag", "sentiment"]
    assert main([*argv, "--license", "apache-2.0"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    card = ModelCard.load(out)
    assert card.data.license == "apache-2.0" and "sentiment" in card.data.tags
    assert main([*argv, "--license", "apache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfcompress: error: model card metadata 'license'") and err.count("\n") == 1


def test_committed_sst2_example_card_loads_and_validates():
    card = ModelCard.load(REPO / "model_cards" / "examples" / "sst2-minilm-student" / "README.md")
    validate_card_data(card.data)
    [accuracy] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert accuracy.dataset_type == "nyu-mll/glue" and accuracy.dataset_config == "sst2" and 0.5 < accuracy.metric_value < 1
    assert "distillation" in card.data.tags and card.data.license == "apache-2.0"


def _copy_export(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(run_dir / "outputs" / "export", copy)
    return copy


def test_card_refuses_a_truncated_onnx_file(run_dir, tmp_path):
    export = _copy_export(run_dir, tmp_path)
    onnx_bytes = (export / "model.onnx").read_bytes()
    (export / "model.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    with pytest.raises(ConfigError, match=r"model.onnx does not load as ONNX \(\w+\): export the model again"):
        write_model_card(run_dir / "outputs" / "tiny-run" / "student", tmp_path / "release", CardConfig(onnx=[str(export)]))
    assert not (tmp_path / "release").exists()


def test_card_refuses_a_parity_check_of_another_onnx_file(run_dir, tmp_path):
    export = _copy_export(run_dir, tmp_path)
    other = tmp_path / "other-model"
    _save_tiny(other, 2)
    save_tiny_wordpiece_tokenizer(other, 100)
    export_onnx(other, tmp_path / "other-export", batch_sizes=[1], sequence_lengths=[8])
    (export / "model.onnx").write_bytes((tmp_path / "other-export" / "model.onnx").read_bytes())  # the old parity.json stays
    with pytest.raises(ConfigError, match=r"parity.json checked another model.onnx than the one in .*: export the model again"):
        write_model_card(run_dir / "outputs" / "tiny-run" / "student", tmp_path / "release", CardConfig(onnx=[str(export)]))


def test_card_refuses_the_export_of_another_checkpoint(run_dir, tmp_path):
    other = tmp_path / "other-model"
    _save_tiny(other, 2)  # same shape, other random weights
    save_tiny_wordpiece_tokenizer(other, 100)
    export_onnx(other, tmp_path / "other-export", batch_sizes=[1], sequence_lengths=[8])
    with pytest.raises(ConfigError, match=r"was made from another checkpoint than .*student \(weights differ\)"):
        write_model_card(run_dir / "outputs" / "tiny-run" / "student", tmp_path / "release", CardConfig(onnx=[str(tmp_path / "other-export")]))
