"""Bad input: one line naming the problem and the fix, a non-zero exit, no traceback, and nothing half-written.

Every case goes through the CLI's ``main`` and is checked before any training starts. Other branches add
their cases (sparsity outside [0, 1], an N:M pattern that does not divide a layer, an ONNX export that
fails parity, ...) to ``BAD_INPUT_CASES`` below.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertForSequenceClassification, BertTokenizerFast, TrainingArguments

from hfcompress.cli import main
from hfcompress.errors import ConfigError, HFCompressError
from hfcompress.recipes import parse_recipe
from hfcompress.recipes.context import RECIPE_FILE, STAGE_DONE_FILE
from hfcompress.recipes.stages.train import validate_training
from tests.conftest import tiny_bert_config
from tests.run_helpers import distill_recipe, tree_snapshot, write_recipe


def _save_model(path: Path, tokenizer, **config):
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(config.pop("vocab_size", tokenizer.vocab_size), **config)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _other_tokenizer(tmp: Path):
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def _distill(recipe):
    return recipe["stages"][1]


def _student_with_other_tokenizer(recipe, tmp, tokenizer):
    other = _other_tokenizer(tmp)
    _distill(recipe).update(student=_save_model(tmp / "other-student", other, vocab_size=other.vocab_size), student_layers=None)


def _student_with_other_vocab_size(recipe, tmp, tokenizer):
    _distill(recipe).update(student=_save_model(tmp / "wide-student", tokenizer, vocab_size=tokenizer.vocab_size + 8), student_layers=None)


def _teacher_with_three_labels(recipe, tmp, tokenizer):
    recipe["stages"][0]["model"] = _save_model(tmp / "three-labels", tokenizer, num_labels=3)


def _student_with_three_labels(recipe, tmp, tokenizer):
    _distill(recipe).update(student=_save_model(tmp / "three-labels", tokenizer, num_labels=3), student_layers=None)


def _edit_split(recipe, tmp, name, transform):
    data = Path(recipe["data"]["path"])
    lines = (data / name).read_text().splitlines()
    (data / name).write_text("\n".join(transform(lines)) + "\n")


def _finished_teacher_with_other_learning_rate(recipe, tmp, tokenizer):
    out = Path(recipe["output_dir"]) / "teacher"
    out.mkdir(parents=True)
    earlier = copy.deepcopy(recipe)
    earlier["stages"][0]["training"]["learning_rate"] = 0.01
    (out / RECIPE_FILE).write_text(yaml.safe_dump(parse_recipe(earlier).resolved))
    (out / STAGE_DONE_FILE).write_text("ok\n")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _existing_output(recipe, tmp, tokenizer):
    out = Path(recipe["output_dir"])
    out.mkdir()
    (out / "keep.txt").write_text("precious")


def _existing_output_and_missing_hub_model(recipe, tmp, tokenizer):
    _existing_output(recipe, tmp, tokenizer)
    recipe["stages"][0]["model"] = "no-such-org/no-such-model"


# (edit(recipe, tmp_path, tokenizer), extra CLI arguments, expected part of the message)
BAD_INPUT_CASES = [
    pytest.param(_student_with_other_tokenizer, [], "use different tokenizers: distil between models that share a vocabulary",
                 id="tokenizer-mismatch"),
    pytest.param(_student_with_other_vocab_size, [], "vocabularies differ (30522 vs 30530 tokens): distil between models that share a tokenizer",
                 id="vocab-size-mismatch"),
    pytest.param(_teacher_with_three_labels, [], "has 3 labels but the data has 2: use a checkpoint trained on this label set",
                 id="teacher-num-labels"),
    pytest.param(_student_with_three_labels, [], "has 3 labels but the data has 2", id="student-num-labels"),
    pytest.param(lambda r, t, k: r["data"].update(text_column="text"), [],
                 "has no column 'text'", id="missing-text-column"),
    pytest.param(lambda r, t, k: r["data"].update(label_column="labels"), [],
                 "has no column 'labels' (did you mean 'label'?)", id="missing-label-column"),
    pytest.param(lambda r, t, k: _edit_split(r, t, "dev.tsv", lambda lines: lines[:-1] + [lines[-1].rsplit("\t", 1)[0] + "\t7"]), [],
                 "split 'dev' has labels [7] that are not in the label set [0, 1]", id="label-outside-label-set"),
    pytest.param(lambda r, t, k: _edit_split(r, t, "dev.tsv", lambda lines: lines[:1]), [],
                 "split 'dev'", id="empty-split"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(temperature=0), [],
                 "temperature=0.0 must be > 0", id="temperature-zero"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(temperature=-2.0), [],
                 "temperature=-2.0 must be > 0", id="temperature-negative"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(alpha=1.5), [],
                 "alpha=1.5 is outside [0, 1]", id="alpha-above-one"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(alpha=-0.1), [],
                 "alpha=-0.1 is outside [0, 1]", id="alpha-below-zero"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(layer_map="0:1,1:9"), [],
                 "layer_map pair 1:9 names a layer that does not exist (student has 2 layers, teacher 4)", id="layer-map-missing-layer"),
    pytest.param(lambda r, t, k: _distill(r).update(student_layers=[0, 6]), [],
                 "student.student_layers: [0, 6] must be distinct layer indices", id="student-layers-missing-layer"),
    pytest.param(lambda r, t, k: _distill(r).update(student_layers=9), [],
                 "student.student_layers: a student of 9 layers cannot be cut from a teacher of 4: choose 1..4", id="student-layers-count-too-large"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(teacher_cache_dir=str(t / "cache"), lmbda=0.5), [],
                 "are generated during training and need the live teacher", id="on-policy-with-logit-cache"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(learnig_rate=1e-4), [],
                 "unknown key 'training.learnig_rate' (did you mean 'learning_rate'?)", id="misspelled-training-key"),
    pytest.param(lambda r, t, k: r.update(ouput_dir="x"), [],
                 "unknown key 'ouput_dir' (did you mean 'output_dir'?)", id="misspelled-top-level-key"),
    pytest.param(lambda r, t, k: _distill(r).update(teachr="teacher"), [],
                 "(did you mean 'teacher'?)", id="misspelled-stage-key"),
    pytest.param(lambda r, t, k: r["stages"][0].update(model="./no/such/model"), [],
                 "model './no/such/model' is not an earlier stage", id="missing-model-path"),
    pytest.param(lambda r, t, k: r["stages"][0].update(model="no-such-org/no-such-model"), [],
                 "model 'no-such-org/no-such-model' not found: it is not a local directory and could not be loaded from the Hub",
                 id="missing-hub-id"),
    pytest.param(lambda r, t, k: r["stages"][2].update(models=["teacher", "no-such-org/student"]), [],
                 "model 'no-such-org/student' not found", id="missing-hub-id-in-evaluate"),
    pytest.param(lambda r, t, k: r["data"].update(path=str(t / "no-such-data")), [],
                 "could not be loaded", id="missing-dataset"),
    pytest.param(_existing_output, [], "already has results: pass --resume to continue that run, or --overwrite", id="existing-output"),
    pytest.param(_existing_output_and_missing_hub_model, ["--overwrite"], "not found", id="overwrite-keeps-old-output-on-bad-input"),
    pytest.param(_existing_output, ["--resume", "--overwrite"], "--resume and --overwrite contradict each other",
                 id="resume-and-overwrite"),
    pytest.param(_finished_teacher_with_other_learning_rate, ["--resume"],
                 "stage 'teacher' finished with a different recipe (stage.training.learning_rate: 0.01 -> 0.001)", id="resume-changed-recipe"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(hub_token="hf_secret"), [],
                 "training.hub_token: a token in a recipe", id="token-in-recipe"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(seed=3), [],
                 "training.seed: the recipe decides this, not the Trainer: set the recipe's top-level seed", id="seed-in-training"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(teacher_model_name_or_path="./no/such/teacher"), [],
                 "training.teacher_model_name_or_path: the recipe decides this, not the Trainer: name the teacher with the distill stage's own 'teacher:' key",
                 id="teacher-path-in-training"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(push_to_hub=True), [],
                 "training.push_to_hub: the recipe decides this, not the Trainer: remove it and add a 'push' stage", id="trainer-push-to-hub"),
    pytest.param(lambda r, t, k: r["stages"][0].setdefault("training", {}).update(hub_model_id="me/model"), [],
                 "training.hub_model_id: the recipe decides this, not the Trainer", id="trainer-hub-option"),
    pytest.param(lambda r, t, k: r["data"].update(task="text-clasification"), [],
                 "data.task 'text-clasification' is not supported (did you mean 'text-classification'?)", id="misspelled-task"),
    pytest.param(lambda r, t, k: r["stages"][0].update(model="student"), [],
                 "reads model 'student', which is a later stage: a stage can only read the outputs of stages before it", id="later-stage-as-model"),
    pytest.param(lambda r, t, k: None, ["--force-stage", "teacher"],
                 "--force-stage re-runs a stage of an earlier run: use it with --resume", id="force-stage-without-resume"),
    pytest.param(_existing_output, ["--resume", "--force-stage", "techer"],
                 "--force-stage techer: the recipe has no stage 'techer' (did you mean 'teacher'?)", id="force-stage-unknown"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(num_train_epochs=-1), [],
                 "num_train_epochs -1.0 must be > 0 (or set max_steps > 0): the stage would train nothing", id="negative-epochs"),
    pytest.param(lambda r, t, k: _distill(r)["training"].update(learning_rate=0), [],
                 "learning_rate 0.0 must be > 0", id="zero-learning-rate"),
    pytest.param(lambda r, t, k: r["data"].update(max_length=0), [],
                 "data.max_length 0 must be at least 1", id="zero-max-length"),
    pytest.param(lambda r, t, k: r["data"].update(max_length=4096), [],
                 "data.max_length 4096 is longer than model", id="max-length-beyond-positions"),
    pytest.param(lambda r, t, k: _edit_split(r, t, "train.tsv", lambda lines: lines[:3] + ["\t1"] + lines[3:]), [],
                 "split 'train' row 3 has an empty 'sentence': fill it in or delete the row", id="empty-text-cell"),
    pytest.param(lambda r, t, k: _edit_split(r, t, "train.tsv", lambda lines: lines[:5] + [lines[5].rsplit("\t", 1)[0] + "\t"] + lines[6:]), [],
                 "split 'train' row 5 has an empty 'label'", id="empty-label-cell"),
    pytest.param(lambda r, t, k: (Path(r["data"]["path"]) / "dev.tsv").rename(Path(r["data"]["path"]) / "dev.csv"), [],
                 "mixes file types ['.csv', '.tsv']", id="csv-beside-tsv"),
    pytest.param(lambda r, t, k: (Path(r["data"]["path"]) / "train.tsv").write_bytes((Path(r["data"]["path"]) / "train.tsv").read_bytes() + b"caf\xe9 au lait\t1\n"), [],
                 "train.tsv line 66 is not UTF-8 (byte 0xe9 at column 4): re-save the file as UTF-8", id="non-utf8"),
    pytest.param(lambda r, t, k: _truncate(Path(r["stages"][0]["model"]) / "model.safetensors"), [],
                 "model.safetensors is truncated or corrupt", id="truncated-weights"),
    pytest.param(lambda r, t, k: (Path(r["stages"][0]["model"]) / "config.json").unlink(), [],
                 "has no config.json: give a directory written by save_pretrained", id="model-without-config"),
    pytest.param(lambda r, t, k: [p.unlink() for p in Path(r["stages"][0]["model"]).iterdir() if "token" in p.name or p.name.startswith("vocab")], [],
                 "has no tokenizer files", id="model-without-tokenizer"),
    pytest.param(lambda r, t, k: (_distill(r)["callbacks"].append({"type": "qat", "mode": "static"}),
                                  r["stages"].extend([{"stage": "export", "model": "student"},
                                                      {"stage": "quantize", "model": "onnx", "onnx": {"mode": "dynamic"}}])), [],
                 "model onnx was trained with QAT for preset 'avx2', mode 'static' but the quantize stage uses preset 'avx2', mode 'dynamic'",
                 id="qat-scheme-mismatch-before-training"),
    pytest.param(lambda r, t, k: _distill(r)["callbacks"].append({"type": "stop_on_nan"}), [],
                 "unknown callback 'stop_on_nan'", id="unknown-callback"),
    # pruning (issue 3): sparsity outside [0, 1], an N:M pattern that does not divide a layer
    # export (issue 5a): an ONNX export that fails parity
]


def one_error_line(stderr: str) -> str:
    """The error is the last line of stderr and the only one from hfcompress (progress bars of datasets may precede it)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("hfcompress: error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    return errors[0]


@pytest.mark.parametrize("edit,cli_args,message", BAD_INPUT_CASES)
def test_bad_input_is_one_line_before_any_work(tiny_teacher_dir, tiny_sst2_dir, tokenizer, tmp_path, capsys, edit, cli_args, message):
    out = tmp_path / "run"
    recipe = distill_recipe(tiny_teacher_dir, tiny_sst2_dir, out)
    edit(recipe, tmp_path, tokenizer)
    path = write_recipe(recipe, tmp_path / "recipe.yaml")
    before = tree_snapshot(out)
    assert main(["run", str(path), *cli_args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line, line
    assert tree_snapshot(out) == before  # nothing written, nothing removed
    assert not (tmp_path / "run-cache").exists() or not any((tmp_path / "run-cache").iterdir())


def test_debug_flag_shows_the_traceback(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = distill_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run")
    _distill(recipe)["training"]["alpha"] = 3
    path = write_recipe(recipe, tmp_path / "recipe.yaml")
    with pytest.raises(HFCompressError, match="alpha=3.0 is outside"):
        main(["run", str(path), "--debug"])


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\noutput_dir: out\n  data: [\n", "is not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping with name, output_dir, data and stages"),
        ("name: x\noutput_dir: out\ndata: {path: d}\nstages: []\n", "the recipe has no stages"),
        ("!!python/object/apply:os.system ['echo unsafe']\n", "is not valid YAML"),  # the safe loader refuses it
    ],
)
def test_unreadable_recipes(tmp_path, capsys, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist: give the path to a YAML recipe" in capsys.readouterr().err


def _without_tokenizer(model_dir: Path) -> Path:
    for path in model_dir.iterdir():
        if "token" in path.name or path.name.startswith("vocab"):
            path.unlink()
    return model_dir


def _truncated_weights(model_dir: Path) -> Path:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model_dir


@pytest.mark.parametrize(
    "command,damage,message",
    [
        ("trim-vocab", _without_tokenizer, "has no tokenizer files"),
        ("export", _without_tokenizer, "has no tokenizer files"),
        ("export", _truncated_weights, "model.safetensors is truncated or corrupt"),
        ("factorize", _truncated_weights, "model.safetensors is truncated or corrupt"),
        ("evaluate", _truncated_weights, "model.safetensors is truncated or corrupt"),
    ],
)
def test_commands_refuse_a_broken_model_directory_in_one_line(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys, command, damage, message):
    model = str(damage(tiny_teacher_dir))
    args = {
        "trim-vocab": [command, model, "--output", str(tmp_path / "out"), "--data", str(tiny_sst2_dir)],
        "export": [command, model, "--output", str(tmp_path / "out")],
        "factorize": [command, model, "--output", str(tmp_path / "out"), "--energy", "0.9"],
        "evaluate": [command, model, "--data", str(tiny_sst2_dir), "--split", "dev"],
    }[command]
    assert main(args) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "error,message",
    [
        (MemoryError(), "out of memory: lower the batch sizes"),
        (OSError(28, "No space left on device", "/out/model.safetensors"), "no space left on the disk writing /out/model.safetensors"),
        (PermissionError(13, "Permission denied", "/root/x"), "permission denied on /root/x"),
        (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), "is not UTF-8"),
        (type("SafetensorError", (Exception,), {})("Error while deserializing header: HeaderTooLarge"), "a model file is corrupt"),
        (RuntimeError("shape '[32, 0]' is invalid\nfor input of size 16"), "RuntimeError: shape '[32, 0]' is invalid for input of size 16 (rerun with --debug"),
    ],
)
def test_any_library_error_is_one_line_with_exit_2_and_a_traceback_only_with_debug(monkeypatch, capsys, tmp_path, error, message):
    import hfcompress.cli as cli_module

    def fail(args):
        raise error

    monkeypatch.setattr(cli_module, "_cmd_export", fail)
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    with pytest.raises(type(error)):
        main(["export", str(tmp_path), "--output", str(tmp_path / "out"), "--debug"])


@pytest.mark.parametrize("report_to, env, refused", [
    ("wandb", {}, "training.report_to ['wandb'] sends metrics to a server, but this run is offline (HF_HUB_OFFLINE): report to 'tensorboard' (local files) or 'none', or set WANDB_MODE=offline"),
    (["tensorboard", "comet_ml"], {}, "training.report_to ['comet_ml'] sends metrics to a server"),
    ("wandb", {"WANDB_MODE": "offline"}, None),
    ("tensorboard", {}, None),
    ("wandb", {"HF_HUB_OFFLINE": "0"}, None),
])
def test_network_trackers_are_refused_offline(monkeypatch, report_to, env, refused):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if refused is None:
        assert validate_training({"report_to": report_to}, TrainingArguments)["report_to"] == report_to
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            validate_training({"report_to": report_to}, TrainingArguments)
