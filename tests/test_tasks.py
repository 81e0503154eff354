"""Every task through the same code: fine-tune, distil, export, quantize, evaluate and card on a tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from hfcompress.errors import ConfigError, ModelError
from hfcompress.tasks import TASKS, get_task, task_of

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a good bad film movie plot acting was is great awful fine dull".split()


def _tiny_bert(cls_name: str, directory: Path, tokenizer, num_labels: int) -> Path:
    import transformers

    from conftest import tiny_bert_config

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(tiny_bert_config(tokenizer.vocab_size, num_hidden_layers=2, num_labels=num_labels))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tiny_gpt2(directory: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 8, vocab_size=300, special_tokens=["<|endoftext|>"])
    (directory / "bpe").mkdir(parents=True)
    bpe.save_model(str(directory / "bpe"))
    tokenizer = GPT2TokenizerFast(str(directory / "bpe" / "vocab.json"), str(directory / "bpe" / "merges.txt"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _sentence(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _pair_data(directory: Path) -> dict:
    import random

    rng = random.Random(0)
    directory.mkdir()
    for split, rows in (("train", 48), ("dev", 16)):
        lines = ["premise\thypothesis\tlabel"] + [f"{_sentence(rng, 6)}\t{_sentence(rng, 4)}\t{i % 3}" for i in range(rows)]
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return {"path": str(directory), "eval_split": "dev", "text_column": "premise", "text_pair_column": "hypothesis", "max_length": 32}


def _token_data(directory: Path) -> dict:
    import random

    rng = random.Random(0)
    directory.mkdir()
    for split, rows in (("train", 48), ("dev", 16)):
        with open(directory / f"{split}.jsonl", "w") as f:
            for _ in range(rows):
                words = _sentence(rng, 7).split()
                f.write(json.dumps({"tokens": words, "tags": ["ADJ" if w in ("good", "bad", "great", "awful", "fine", "dull") else "O" for w in words]}) + "\n")
    return {"path": str(directory), "task": "token-classification", "eval_split": "dev", "text_column": "tokens", "label_column": "tags", "max_length": 32}


def _lm_data(directory: Path) -> dict:
    import random

    rng = random.Random(0)
    directory.mkdir()
    for split, rows in (("train", 48), ("dev", 16)):
        (directory / f"{split}.txt").write_text("\n".join(_sentence(rng, 9) for _ in range(rows)) + "\n")
    return {"path": str(directory), "task": "text-generation", "eval_split": "dev", "text_column": "text", "max_length": 32}


def _recipe(tmp_path: Path, data: dict, teacher: Path, quantize_mode: str) -> dict:
    training = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-3}
    return {
        "name": "tiny-task",
        "output_dir": str(tmp_path / "run"),
        "data": data,
        "stages": [
            {"stage": "finetune_teacher", "model": str(teacher), "training": training},
            {"stage": "distill", "teacher": "teacher", "student_layers": [1], "training": {**training, "alpha": 0.5, "temperature": 2.0}},
            {"stage": "export", "model": "student", "sequence_lengths": [8], "parity_samples": 4},
            {"stage": "quantize", "model": "onnx", "onnx": {"mode": quantize_mode, "calibration_samples": 8}},
            {"stage": "evaluate", "models": ["teacher", "student", "onnx", "quantized"], "latency": True, "latency_batch_sizes": [1, 2],
             "latency_samples": 4, "repeats": 1, "warmup": 1},
            {"stage": "card", "model": "student", "onnx": ["onnx"], "report": "evaluation"},
        ],
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sentence-pair", "token-classification", "text-generation"])
def test_every_task_runs_the_whole_pipeline(case, tmp_path, tokenizer):
    from hfcompress.recipes import parse_recipe, run_recipe

    if case == "sentence-pair":
        data, teacher, mode = _pair_data(tmp_path / "data"), _tiny_bert("BertForSequenceClassification", tmp_path / "m", tokenizer, 3), "static"
    elif case == "token-classification":
        data, teacher, mode = _token_data(tmp_path / "data"), _tiny_bert("BertForTokenClassification", tmp_path / "m", tokenizer, 2), "static"
    else:
        data, teacher, mode = _lm_data(tmp_path / "data"), _tiny_gpt2(tmp_path / "m"), "static"
    task = get_task(data.get("task", "text-classification"))
    outputs = run_recipe(parse_recipe(_recipe(tmp_path, data, teacher, mode)))

    parity = json.loads((outputs["onnx"] / "parity.json").read_text())
    assert parity["task"] == task.name and parity["files"]["model.onnx"]["passed"]
    quantization = json.loads((outputs["quantized"] / "quantization.json").read_text())
    assert quantization["method"] == "static" and quantization["calibration"]["samples"] == 8
    rows = json.loads((outputs["evaluation"] / "compression_report.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["pytorch", "pytorch", "onnx", "onnx"]
    metric = "perplexity" if not task.has_labels else "accuracy"
    assert all(r[metric] > 0 for r in rows) and all(r["latency_ms_p50_b1"] > 0 for r in rows)
    assert rows[2][metric] == pytest.approx(rows[1][metric], rel=1e-3)  # the fp32 export scores as its checkpoint
    card = (outputs["card"] / "README.md").read_text()
    assert f"pipeline_tag: {task.pipeline_tag}" in card and task.ort_model in card
    # the distil stage's own summary (carried into the export too) gives the card's Distillation section
    distillation = card.split("### Distillation\n", 1)[1].split("\n#", 1)[0]
    assert "The student (the teacher's layers [1]) was trained to match the teacher `teacher`" in distillation
    assert "T = 2.0, alpha = 0.5" in distillation and "- student_layers: 1" in distillation and "- teacher_layers: 2" in distillation
    report = json.loads((outputs["student"] / "distillation.json").read_text())
    assert report["task"] == task.name and report["student_parameters"] < report["teacher_parameters"] and report["eval"]["loss"] > 0
    if case == "sentence-pair":  # the pair is timed and checked with both texts: token type ids of segment B appear
        from hfcompress.data import DataConfig, TaskData
        from hfcompress.evaluation import evaluation_texts

        texts = evaluation_texts(TaskData(DataConfig(**data), splits=["dev"]), 2)
        assert all(isinstance(t, tuple) and len(t) == 2 for t in texts)


def test_task_of_a_checkpoint_comes_from_its_architecture():
    assert task_of({"architectures": ["BertForSequenceClassification"]}) is TASKS["text-classification"]
    assert task_of({"architectures": ["LlamaForCausalLM"]}).name == "text-generation"
    assert task_of({"architectures": ["RobertaForTokenClassification"]}).pre_split_words
    with pytest.raises(ModelError, match="cannot infer the task of architecture 'BertModel'"):
        task_of({"architectures": ["BertModel"]})


def test_a_misspelt_task_names_the_closest():
    with pytest.raises(ConfigError, match=r"task 'token-clasification' is not supported \(did you mean 'token-classification'\?\)"):
        get_task("token-clasification")


def test_pair_inputs_are_tokenized_as_pairs(tokenizer):
    from hfcompress.evaluation.latency import latency_batches
    from hfcompress.export.parity import parity_batch

    pairs = [("a good film", "it was great"), ("a dull plot", "awful")]
    batch = latency_batches(tokenizer, pairs, 2)[0]
    assert batch["token_type_ids"].sum() > 0  # segment B is there
    fixed = parity_batch(tokenizer, pairs, 3, 16)
    assert fixed["input_ids"].shape == (3, 16) and fixed["token_type_ids"].sum() > 0


def test_each_task_declares_the_inputs_of_its_onnx_graph(tmp_path, tokenizer):
    """Optimum's graph inputs, in its order: token types only where the tokenizer gives them and the model embeds them; decoders take positions."""
    import numpy as np
    from transformers import GPT2TokenizerFast, RobertaConfig, RobertaForSequenceClassification

    from conftest import tiny_bert_config

    bert = TASKS["token-classification"].auto_class().from_config(tiny_bert_config(tokenizer.vocab_size, num_hidden_layers=1))
    gpt2_dir = _tiny_gpt2(tmp_path / "gpt2")
    gpt2 = TASKS["text-generation"].auto_class().from_pretrained(gpt2_dir)
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    gpt2_tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_dir)
    assert TASKS["token-classification"].onnx_input_names(bert, tokenizer) == ["input_ids", "attention_mask", "token_type_ids"]
    assert TASKS["text-classification"].onnx_input_names(roberta, gpt2_tokenizer) == ["input_ids", "attention_mask"]  # forward takes them; the tokenizer gives none
    assert TASKS["text-generation"].onnx_input_names(gpt2, gpt2_tokenizer) == ["input_ids", "attention_mask", "position_ids"]

    batch = {"input_ids": np.array([[5, 6, 7], [5, 6, 0]]), "attention_mask": np.array([[1, 1, 1], [1, 1, 0]]), "labels": np.array([1, 0])}
    feeds = TASKS["text-generation"].onnx_feeds(batch, ["input_ids", "attention_mask", "position_ids"])
    assert list(feeds) == ["input_ids", "attention_mask", "position_ids"] and feeds["position_ids"].tolist() == [[0, 1, 2], [0, 1, 1]]
    assert TASKS["text-classification"].onnx_feeds(batch, ["input_ids", "token_type_ids"])["token_type_ids"].tolist() == [[0] * 3] * 2
    with pytest.raises(ModelError, match=r"the ONNX graph needs inputs \['position_ids'\] that the tokenizer does not produce"):
        TASKS["text-classification"].onnx_feeds(batch, ["input_ids", "position_ids"])


def test_no_task_names_outside_the_tasks_package():
    """Task-specific behaviour lives in hfcompress/tasks; the rest of the code asks the task object."""
    names = "|".join(TASKS)
    found = subprocess.run(
        ["grep", "-rnE", f"\"({names})\"|'({names})'", "hfcompress", "scripts", "--include=*.py", "--include=*.j2"],
        cwd=REPO, capture_output=True, text=True,
    ).stdout.splitlines()
    assert [line for line in found if not line.startswith("hfcompress/tasks/")] == []


def test_structured_pruning_of_an_unsupported_architecture_fails_before_any_stage_runs(tmp_path):
    from hfcompress.errors import HFCompressError
    from hfcompress.recipes import parse_recipe, run_recipe

    model = _tiny_gpt2(tmp_path / "gpt2")
    recipe = parse_recipe({
        "name": "slim-gpt2", "output_dir": str(tmp_path / "run"), "data": _lm_data(tmp_path / "data"),
        "stages": [
            {"stage": "finetune", "name": "tuned", "model": str(model), "training": {"max_steps": 2}},
            {"stage": "prune", "model": "tuned", "structured": {"heads_fraction": 0.25}},
        ],
    })
    with pytest.raises(HFCompressError, match="structured pruning supports BERT-like encoders .* not 'gpt2'"):
        run_recipe(recipe)
    assert not (tmp_path / "run").exists()
