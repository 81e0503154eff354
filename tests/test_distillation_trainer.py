"""DistillationTrainer behaviour on tiny random models."""

from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
)

from hfcompress import ConfigError, DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from tests.conftest import tiny_bert_config

SENTENCES = ["a good film", "bad movie", "great fun all along", "awful acting here", "fine", "so dull and long", "yes", "no way"]


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )
    base.update(kw)
    return DistillationTrainingArguments(**base)


def _cls_data(tokenizer, n=16):
    ds = datasets.Dataset.from_dict({"sentence": (SENTENCES * 4)[:n], "labels": [i % 2 for i in range(n)]})
    return ds.map(lambda b: tokenizer(b["sentence"]), batched=True, remove_columns=["sentence"])


def _teacher(tokenizer, seed=0, **kw):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw))


def _trainer(tokenizer, tmp_path, teacher, student=None, data=None, collator=None, **kw):
    student = student if student is not None else build_student_from_teacher(teacher, [0, 2])
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, **kw), train_dataset=data if data is not None else _cls_data(tokenizer),
        data_collator=collator or DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )


def test_teacher_is_frozen_in_eval_mode_and_unchanged(tokenizer, tmp_path):
    teacher = _teacher(tokenizer)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tokenizer, tmp_path, teacher, num_train_epochs=2)
    trainer.train()
    assert not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert trainer.teacher_forward_passes == trainer.state.global_step  # one teacher pass per step without cache
    assert not isinstance(trainer.teacher, torch.nn.parallel.DistributedDataParallel)


def test_cache_removes_teacher_passes_and_matches_live_teacher(tokenizer, tmp_path):
    teacher = _teacher(tokenizer)
    live = _trainer(tokenizer, tmp_path / "live", teacher, num_train_epochs=2)
    live.train()
    cached = _trainer(tokenizer, tmp_path / "cached", teacher, num_train_epochs=2, teacher_cache_dir=str(tmp_path / "cache"))
    cached.train()
    assert cached.state.global_step == live.state.global_step == 8
    assert cached.teacher_forward_passes == 0  # neither epoch runs the teacher
    for (name, a), b in zip(live.model.state_dict().items(), cached.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # a later run with the same teacher and data reuses the cache instead of building it again
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    stamp = (entries[0] / "logits.bin").stat().st_mtime_ns
    _trainer(tokenizer, tmp_path / "again", teacher, teacher_cache_dir=str(tmp_path / "cache")).train()
    assert (entries[0] / "logits.bin").stat().st_mtime_ns == stamp


def test_cache_key_follows_weights_not_location(tokenizer, tmp_path):
    from hfcompress.distillation.cache import model_fingerprint

    teacher = _teacher(tokenizer)
    teacher.save_pretrained(tmp_path / "a")
    teacher.save_pretrained(tmp_path / "copied" / "a")
    reloaded = [BertForSequenceClassification.from_pretrained(tmp_path / p) for p in ("a", "copied/a")]
    assert reloaded[0].config._name_or_path != reloaded[1].config._name_or_path
    assert model_fingerprint(reloaded[0]) == model_fingerprint(reloaded[1]) == model_fingerprint(teacher)
    with torch.no_grad():
        reloaded[1].classifier.bias += 1e-3
    assert model_fingerprint(reloaded[1]) != model_fingerprint(teacher)
    assert model_fingerprint(_teacher(tokenizer, num_hidden_layers=2)) != model_fingerprint(teacher)


def test_half_written_cache_is_rebuilt(tokenizer, tmp_path):
    teacher = _teacher(tokenizer)
    _trainer(tokenizer, tmp_path / "a", teacher, teacher_cache_dir=str(tmp_path / "cache"), max_steps=1)
    entry = next((tmp_path / "cache").iterdir())
    with open(entry / "logits.bin", "r+b") as f:
        f.truncate(8)
    trainer = _trainer(tokenizer, tmp_path / "b", teacher, teacher_cache_dir=str(tmp_path / "cache"), max_steps=1)
    assert trainer.teacher_cache.logits.shape[0] == 16


def _token_data(tokenizer):
    words = [s.split() for s in SENTENCES * 2]
    enc = tokenizer(words, is_split_into_words=True)
    labels = []
    for i, w in enumerate(words):
        prev, row = None, []
        for wid in enc.word_ids(i):
            row.append(-100 if wid is None or wid == prev else (wid + i) % 3)
            prev = wid
        labels.append(row)
    return datasets.Dataset.from_dict({**enc, "labels": labels})


def _one_step_weights(tokenizer, tmp_path, teacher, data, collator, batch, accumulation):
    torch.manual_seed(1)
    student = build_student_from_teacher(teacher, [0, 2])
    trainer = _trainer(
        tokenizer, tmp_path, teacher, student=student, data=data, collator=collator, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
        max_grad_norm=0.0,
    )
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_gradient_accumulation_equals_the_larger_batch(tokenizer, tmp_path, task):
    """Micro-batches with different item counts (token task) must still give the big batch's gradient."""
    if task == "token-classification":
        torch.manual_seed(0)
        teacher = BertForTokenClassification(tiny_bert_config(tokenizer.vocab_size, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        data, collator = _token_data(tokenizer), DataCollatorForTokenClassification(tokenizer)
    else:
        teacher, data, collator = _teacher(tokenizer), _cls_data(tokenizer, 8), DataCollatorWithPadding(tokenizer)
    big = _one_step_weights(tokenizer, tmp_path / "big", teacher, data.select(range(8)), collator, batch=8, accumulation=1)
    accumulated = _one_step_weights(tokenizer, tmp_path / "acc", teacher, data.select(range(8)), collator, batch=4, accumulation=2)
    for name in big:
        torch.testing.assert_close(big[name], accumulated[name], atol=2e-5, rtol=1e-4, msg=name)


def test_causal_lm_student_distils(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=64)
    teacher = GPT2LMHeadModel(config)
    student = build_student_from_teacher(teacher, [0, 3])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = datasets.Dataset.from_dict(tokenizer(SENTENCES))
    trainer = _trainer(tokenizer, tmp_path, teacher, student=student, data=data, collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.state.log_history[0]["loss_kd"] > 0


def test_projection_trains_but_is_not_saved_with_the_student(tokenizer, tmp_path):
    teacher = _teacher(tokenizer)
    torch.manual_seed(2)
    narrow = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, intermediate_size=32))
    trainer = _trainer(
        tokenizer, tmp_path, teacher, student=narrow, hidden_distill_weight=1.0, attention_distill_weight=1.0,
        save_strategy="steps", save_steps=2, max_steps=2,
    )
    projection_before = narrow.hfc_distillation_projections[0].weight.clone()
    trainer.train()
    assert not torch.equal(projection_before, narrow.hfc_distillation_projections[0].weight)
    assert "loss_hidden" in trainer.state.log_history[0] and "loss_attention" in trainer.state.log_history[0]
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-2"
    assert not any("projection" in k for k in load_file(checkpoint / "model.safetensors"))
    assert (checkpoint / "distillation_projections.safetensors").exists()  # kept for resuming
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert set(saved) == {k for k in narrow.state_dict() if "projection" not in k}
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "final")
    assert not hasattr(reloaded, "hfc_distillation_projections")


def test_checkpoint_holds_the_student_only(tokenizer, tmp_path):
    teacher = _teacher(tokenizer)
    trainer = _trainer(tokenizer, tmp_path, teacher, save_strategy="steps", save_steps=2, max_steps=2)
    trainer.train()
    keys = set(load_file(Path(trainer.args.output_dir) / "checkpoint-2" / "model.safetensors"))
    assert keys == set(trainer.model.state_dict())
    assert not any(k.startswith("teacher") for k in keys)


@pytest.mark.parametrize(
    "student_kwargs,message",
    [({"vocab_size": 100}, "vocabularies differ"), ({"num_labels": 3}, "labels")],
)
def test_incompatible_student_is_refused(tokenizer, tmp_path, student_kwargs, message):
    teacher = _teacher(tokenizer)
    config = tiny_bert_config(tokenizer.vocab_size)
    for k, v in student_kwargs.items():
        setattr(config, k, v)
    with pytest.raises(ConfigError, match=message):
        _trainer(tokenizer, tmp_path, teacher, student=BertForSequenceClassification(config))


@pytest.mark.parametrize(
    "kwargs,message",
    [({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"layer_map": "0-1"}, "layer_map"), ({"hidden_distill_loss": "l1"}, "mse")],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _args(tmp_path, **kwargs)


def test_layer_map_naming_missing_layers_is_refused(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        _trainer(tokenizer, tmp_path, _teacher(tokenizer), hidden_distill_weight=1.0, layer_map="0:1,5:3")
