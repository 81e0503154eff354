"""Training guards: a NaN/inf loss stops the run naming the step and the last good checkpoint; final checkpoints; rank checks."""

from __future__ import annotations

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

from hfcompress import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from hfcompress.checkpoints import last_complete_checkpoint
from hfcompress.cli import main
from hfcompress.errors import TrainingDivergedError
from hfcompress.guards import SaveFinalCheckpoint, StopOnNonFiniteLoss, state_fingerprint
from tests.conftest import tiny_bert_config
from tests.run_helpers import write_recipe

SENTENCES = ["a good film", "bad movie", "great fun all along", "awful acting here", "fine", "so dull and long", "yes", "no way"]
NAN_AT_STEP = 3


def _data(tokenizer, n=32):
    ds = datasets.Dataset.from_dict({"sentence": (SENTENCES * 8)[:n], "labels": [i % 2 for i in range(n)]})
    return ds.map(lambda b: tokenizer(b["sentence"]), batched=True, remove_columns=["sentence"])


def _model(tokenizer):
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))


def _poison_logits_at_step(model, step):
    """Make the classifier's output NaN in the forward pass of optimizer step ``step`` (1-based, batch size 4)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == step:
                return output * float("nan")
        return output

    model.classifier.register_forward_hook(hook)


def _check_stopped(trainer, tmp_path):
    with pytest.raises(TrainingDivergedError) as info:
        trainer.train()
    message = str(info.value)
    good = tmp_path / "out" / "checkpoint-2"
    assert f"became NaN/inf at step {NAN_AT_STEP} " in message and f"the last good checkpoint is {good}" in message
    assert "\n" not in message and "lower the learning rate" in message
    assert trainer.state.global_step == NAN_AT_STEP - 1  # stopped before the bad step was applied
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(t).all() for t in load_file(str(good / "model.safetensors")).values())


def test_nan_loss_stops_plain_trainer_with_step_and_last_good_checkpoint(tokenizer, tmp_path):
    model = _model(tokenizer)
    _poison_logits_at_step(model, NAN_AT_STEP)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, save_steps=2, report_to=[],
                             use_cpu=True, disable_tqdm=True, logging_steps=1, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_data(tokenizer), data_collator=DataCollatorWithPadding(tokenizer),
                      callbacks=[StopOnNonFiniteLoss()])
    _check_stopped(trainer, tmp_path)


def test_nan_loss_stops_distillation_trainer(tokenizer, tmp_path):
    teacher = _model(tokenizer)
    student = build_student_from_teacher(teacher, [0, 2])
    _poison_logits_at_step(student, NAN_AT_STEP)
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, save_steps=2, report_to=[],
                                         use_cpu=True, disable_tqdm=True, seed=0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_data(tokenizer),
                                  data_collator=DataCollatorWithPadding(tokenizer), callbacks=[StopOnNonFiniteLoss()])
    _check_stopped(trainer, tmp_path)


def test_nan_in_logs_stops_too(tmp_path):
    from transformers import TrainerControl, TrainerState

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(TrainingDivergedError, match="the logged loss became NaN/inf at step 7 .* no checkpoint was saved before it"):
        StopOnNonFiniteLoss().on_log(args, TrainerState(global_step=7, epoch=0.5), TrainerControl(), logs={"loss": float("inf")})


def test_recipe_with_diverging_learning_rate_stops_with_one_line(tiny_teacher_dir, tiny_sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = {
        "name": "diverge", "output_dir": str(out), "seed": 0,
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [{"stage": "finetune_teacher", "model": str(tiny_teacher_dir),
                    "training": {"learning_rate": 1e30, "per_device_train_batch_size": 8, "save_steps": 1, "max_grad_norm": 0,
                                 "use_cpu": True, "disable_tqdm": True, "num_train_epochs": 1}}],
    }
    assert main(["run", str(write_recipe(recipe, tmp_path / "r.yaml"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hfcompress: error: training diverged:") and "NaN/inf at step" in err
    step = int(err.split("at step ")[1].split()[0])
    assert f"the last good checkpoint is {out / '.work/teacher/checkpoints'}/checkpoint-{step - 1}" in err
    assert not (out / "teacher").exists()  # nothing published


def test_final_step_is_always_checkpointed(tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, save_steps=5, report_to=[], num_train_epochs=1,
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=_model(tokenizer), args=args, train_dataset=_data(tokenizer, 28),
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[SaveFinalCheckpoint()])
    trainer.train()  # 7 steps: step 5 by save_steps, step 7 because it is the last
    assert last_complete_checkpoint(tmp_path / "out").name == "checkpoint-7"
    # resuming from the final checkpoint finishes at once with the same weights
    before = state_fingerprint(trainer.model)
    again = Trainer(model=_model(tokenizer), args=args, train_dataset=_data(tokenizer, 28),
                    data_collator=DataCollatorWithPadding(tokenizer), callbacks=[SaveFinalCheckpoint()])
    again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-7"))
    assert again.state.global_step == 7 and state_fingerprint(again.model) == before


def test_state_fingerprint_sees_buffers(tokenizer):
    model = _model(tokenizer)
    before = state_fingerprint(model)
    model.register_buffer("weight_mask", torch.ones(3))
    with_mask = state_fingerprint(model)
    model.weight_mask[1] = 0
    assert len({before, with_mask, state_fingerprint(model)}) == 3
