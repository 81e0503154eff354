"""Pruning: schedules, magnitude masks and callback, structured slimming, the prune stage."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hfcompress import (
    ConfigError,
    DistillationTrainer,
    DistillationTrainingArguments,
    MagnitudePruningCallback,
    MagnitudePruningConfig,
    ModelError,
    StructuredPruningCallback,
)
from hfcompress.pruning import magnitude_prune, sparsity_of, structured_prune
from hfcompress.pruning.magnitude import magnitude_masks, prunable_weights
from hfcompress.pruning.masks import MASKS_FILE, REPORT_FILE, apply_masks
from hfcompress.pruning.schedules import Schedule, cubic_sparsity
from hfcompress.modeling import empty_model, load_config, load_model
from hfcompress.pruning.structured import group_masks, importance_scores, select_removed, slim
from tests.conftest import assert_compression_summary, save_tiny_wordpiece_tokenizer, tiny_bert_config

VOCAB = 120
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _bert(seed=0, **kw):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_bert_config(VOCAB, **NO_DROPOUT, **kw))


def _roberta(seed=0):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=130, num_labels=2, **NO_DROPOUT)
    return RobertaForSequenceClassification(cfg)


def _distilbert(seed=0):
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
                           num_labels=2, dropout=0.0, attention_dropout=0.0)
    return DistilBertForSequenceClassification(cfg)


def _data(n=64, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 1] % 2).tolist()})


def _inputs(n=4, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # padding in one row exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=12, learning_rate=1e-3, weight_decay=0.1,
                report_to=[], use_cpu=True, save_strategy="no", logging_steps=4, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


class ZerosStayZero(TrainerCallback):
    """Checks after every step that every masked weight is exactly zero (runs after the pruning callback)."""

    def __init__(self, pruning):
        self.pruning, self.checked = pruning, 0

    def on_step_end(self, args, state, control, **kwargs):
        for name, mask in self.pruning.masks.items():
            assert torch.all(self.pruning.params[name][~mask] == 0), f"{name} has non-zero pruned weights at step {state.global_step}"
            self.checked += 1


# --- schedules -------------------------------------------------------------------------------------


def test_cubic_schedule_follows_zhu_and_gupta():
    assert cubic_sparsity(0, 0.0, 0.8, 0, 100) == 0.0
    assert cubic_sparsity(100, 0.0, 0.8, 0, 100) == pytest.approx(0.8)
    assert cubic_sparsity(50, 0.0, 0.8, 0, 100) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(500, 0.1, 0.8, 0, 100) == pytest.approx(0.8)
    values = [cubic_sparsity(t, 0.1, 0.9, 10, 60) for t in range(10, 61)]
    assert values == sorted(values) and values[0] == pytest.approx(0.1)


def test_schedule_steps_and_fractions():
    cfg = MagnitudePruningConfig(target_sparsity=0.5, start_step=0.1, end_step=0.55, frequency=4)
    s = Schedule.from_config(cfg, max_steps=100)
    assert (s.start, s.end) == (10, 55)
    steps = [t for t in range(120) if s.is_pruning_step(t)]
    assert steps[0] == 10 and steps[-1] == 55 and steps[1] == 14  # every 4 steps, plus the end itself
    one = Schedule.from_config(MagnitudePruningConfig(target_sparsity=0.3, schedule="one_shot", start_step=7), 100)
    assert [t for t in range(100) if one.is_pruning_step(t)] == [7] and one.sparsity_at(6) == 0 and one.sparsity_at(50) == 0.3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pattern="4:2"), "N:M"),
        (dict(pattern="2:4", schedule="cubic"), "one_shot"),
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(end_step=1.5), "fraction"),
        (dict(target_modules="(["), "regular expression"),
        (dict(initial_sparsity=0.6, target_sparsity=0.5), "initial_sparsity"),
    ],
)
def test_config_mistakes_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MagnitudePruningConfig(**kwargs)


# --- magnitude masks -------------------------------------------------------------------------------


def test_default_targets_are_block_linears_only():
    names = set(prunable_weights(_bert(), MagnitudePruningConfig().target_modules))
    assert names and all(".encoder.layer." in n for n in names)
    assert len(names) == 4 * 6  # q, k, v, attention output, intermediate, output per layer; no pooler/classifier/embeddings
    with pytest.raises(ConfigError, match="match no Linear"):
        prunable_weights(_bert(), r"nothing\.here")


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.33, 0.9])
def test_masks_remove_exactly_the_requested_fraction(scope, sparsity):
    weights = prunable_weights(_bert(), MagnitudePruningConfig().target_modules)
    masks = magnitude_masks(weights, sparsity, scope)
    total = sum(w.numel() for w in weights.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(sparsity * total) if scope == "global" else removed == sum(round(sparsity * w.numel()) for w in weights.values())
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(weights.values(), masks.values())])
    dropped = torch.cat([w.detach().abs()[~m] for w, m in zip(weights.values(), masks.values())])
    if scope == "global" and 0 < sparsity:
        assert dropped.max() <= kept.min()  # one threshold across layers


def test_two_four_pattern_keeps_the_two_largest_of_every_four_inputs():
    model = _bert()
    report = magnitude_prune(model, MagnitudePruningConfig(schedule="one_shot", pattern="2:4"))
    assert report["pattern"] == "2:4" and report["global_sparsity"] == pytest.approx(0.5)
    w = model.bert.encoder.layer[0].attention.self.query.weight.detach()
    assert torch.all((w.reshape(-1, 4) != 0).sum(1) == 2)


def test_gpt2_conv1d_layers_are_pruned_along_their_inputs():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    report = magnitude_prune(model, MagnitudePruningConfig(schedule="one_shot", pattern="2:4"))
    assert set(report["layers"]) == {f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    w = model.transformer.h[0].mlp.c_fc.weight.detach()  # Conv1D: [in, out], groups run over inputs (dim 0)
    assert torch.all((w.t().reshape(-1, 4) != 0).sum(1) == 2)
    assert magnitude_prune(model, target_sparsity=0.7)["global_sparsity"] == pytest.approx(0.7, abs=1e-4)


# --- the callback in training --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(target_sparsity=0.6, schedule="one_shot", start_step=3),
        dict(target_sparsity=0.8, schedule="cubic", start_step=0, end_step=8, frequency=3),
        dict(target_sparsity=0.5, schedule="cubic", initial_sparsity=0.1, start_step=0.25, end_step=0.75, frequency=2, scope="per_layer"),
        dict(schedule="one_shot", pattern="2:4"),
    ],
    ids=["one_shot", "cubic", "cubic_per_layer", "2:4"],
)
def test_callback_reaches_target_and_pruned_weights_stay_zero(tmp_path, kwargs):
    model = _bert()
    pruning = MagnitudePruningCallback(**kwargs)
    check = ZerosStayZero(pruning)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_data(), callbacks=[pruning, check])
    trainer.train()
    assert check.checked > 0
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    summary = assert_compression_summary(tmp_path / "out", "magnitude")
    assert summary.results["global_sparsity"] == report["global_sparsity"] and summary.tables[0]["rows"] == report["layers"]
    weights = prunable_weights(model, MagnitudePruningConfig().target_modules)
    total = sum(w.numel() for w in weights.values())
    assert report["global_sparsity"] == pytest.approx(pruning.config.target_sparsity, abs=1.5 * len(weights) / total)
    assert report["global_sparsity"] == sparsity_of(weights)["global_sparsity"]  # the report is the measurement
    logged = [h for h in trainer.state.log_history if "sparsity" in h]
    assert logged and logged[-1]["sparsity"] == pytest.approx(report["global_sparsity"], abs=1e-6)
    assert any(k.startswith("sparsity/bert.encoder.layer.0") for h in logged for k in h)


def test_saved_model_is_plain_and_reloads_with_same_outputs_and_sparsity(tmp_path):
    model = _bert()
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_data(),
                      callbacks=[MagnitudePruningCallback(target_sparsity=0.7, end_step=0.5, frequency=2)])
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    keys = load_file(str(tmp_path / "final" / "model.safetensors")).keys()
    assert not [k for k in keys if "mask" in k or k.endswith("_orig")]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    model.eval()
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)
    targets = MagnitudePruningConfig().target_modules
    assert sparsity_of(prunable_weights(reloaded, targets))["global_sparsity"] == pytest.approx(0.7, abs=1e-3)


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_masks_survive_kill_and_resume_exactly(tmp_path):
    """Resume from the checkpoint's masks file, and from the zeros of its weights when the file is missing."""
    import shutil

    kwargs = dict(target_sparsity=0.75, end_step=9, frequency=3)
    args = dict(max_steps=12, save_strategy="steps", save_steps=4)
    # uninterrupted reference run
    ref_model = _bert()
    ref = MagnitudePruningCallback(**kwargs)
    Trainer(model=ref_model, args=_args(tmp_path / "ref", **args), train_dataset=_data(), callbacks=[ref]).train()
    # killed after the checkpoint at step 4, then resumed by a fresh process-like setup (new model, trainer, callback)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model=_bert(), args=_args(tmp_path / "run", **args), train_dataset=_data(),
                callbacks=[MagnitudePruningCallback(**kwargs), CrashAt(6)]).train()
    saved = load_file(str(tmp_path / "run" / "out" / "checkpoint-4" / MASKS_FILE))
    assert saved and all(k.startswith("mask.") for k in saved)
    shutil.copytree(tmp_path / "run", tmp_path / "no-masks-file")
    (tmp_path / "no-masks-file" / "out" / "checkpoint-4" / MASKS_FILE).unlink()
    for run in ("run", "no-masks-file"):
        model = _bert(seed=123)  # different initial weights: everything must come from the checkpoint
        pruning = MagnitudePruningCallback(**kwargs)
        check = ZerosStayZero(pruning)
        trainer = Trainer(model=model, args=_args(tmp_path / run, **args), train_dataset=_data(), callbacks=[pruning, check])
        trainer.train(resume_from_checkpoint=str(tmp_path / run / "out" / "checkpoint-4"))
        assert check.checked > 0
        for (name, p_ref), (_, p) in zip(ref_model.named_parameters(), model.named_parameters()):
            assert torch.equal(p_ref == 0, p == 0), f"{run}: {name}"
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)
        assert pruning.report["global_sparsity"] == ref.report["global_sparsity"]


def test_callback_prunes_while_distilling(tmp_path):
    teacher, student = _bert(seed=1), _bert(seed=2, num_hidden_layers=2)
    args = DistillationTrainingArguments(**{**_args(tmp_path).to_dict(), "output_dir": str(tmp_path / "out")}, alpha=0.5)
    pruning = MagnitudePruningCallback(target_sparsity=0.5, end_step=0.5, frequency=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_data(), callbacks=[pruning])
    trainer.train()
    assert pruning.report["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert sparsity_of(prunable_weights(teacher, MagnitudePruningConfig().target_modules))["global_sparsity"] == 0  # the teacher is untouched


# --- structured ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_bert, _roberta, _distilbert], ids=["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("heads_scope", ["per_layer", "global"])
def test_slimmed_model_equals_masked_model(make, heads_scope):
    model = make().eval()
    heads, neurons = select_removed(*importance_scores(model), 0.5, 0.5, heads_scope)
    masked = make().eval()
    apply_masks(dict(masked.named_parameters()), group_masks(masked, heads, neurons))
    inputs = _inputs()
    with torch.no_grad():
        expected = masked(**inputs).logits
        slim(model, heads, neurons)
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in masked.parameters())


@pytest.mark.parametrize("make", [_bert, _roberta, _distilbert], ids=["bert", "roberta", "distilbert"])
def test_slimmed_checkpoint_reloads_through_load_model_with_identical_logits(make, tmp_path):
    model = make().eval()
    slim(model, {0: [1], 1: [0, 2]}, {layer: [layer + 3] for layer in range(model.config.num_hidden_layers)})
    slim(model, {0: [0, 1]}, {})  # current indices: layer 0 has heads 0, 2, 3 left, so this removes 0 and 2
    assert model.config.pruned_heads == {0: [0, 1, 2], 1: [0, 2]}
    model.save_pretrained(tmp_path / "slim", max_shard_size="20KB")
    assert len(list((tmp_path / "slim").glob("*.safetensors"))) > 1, "the checkpoint should be sharded"
    # transformers 4's format, which its from_pretrained re-applies: string layer keys, original head indices
    assert json.loads((tmp_path / "slim" / "config.json").read_text())["pruned_heads"] == {"0": [0, 1, 2], "1": [0, 2]}
    reloaded = load_model(str(tmp_path / "slim")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**_inputs()).logits, model(**_inputs()).logits)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == shapes
    assert {k: v.shape for k, v in empty_model(load_config(str(tmp_path / "slim"))).state_dict().items()} == shapes  # bnb's skeleton
    reloaded.save_pretrained(tmp_path / "again")  # a reloaded model saves the same architecture and pruned heads
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["architectures"] == [type(model).__name__] and saved["pruned_heads"] == {"0": [0, 1, 2], "1": [0, 2]}


@pytest.mark.skipif(not hasattr(PreTrainedModel, "prune_heads"), reason="transformers 5 has no prune_heads and no longer re-applies config.pruned_heads")
def test_slimming_matches_transformers_4_prune_heads_and_its_from_pretrained_reloads_it(tmp_path):
    model = _bert().eval()
    slim(model, {0: [1], 1: [0, 2]}, {})
    slim(model, {0: [0, 1]}, {})
    reference = _bert().eval()
    reference.prune_heads({0: [1], 1: [0, 2]})
    reference.prune_heads({0: [0, 2]})  # prune_heads takes original indices
    assert {k: sorted(v) for k, v in reference.config.pruned_heads.items()} == model.config.pruned_heads
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), name
    model.save_pretrained(tmp_path / "slim")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "slim").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**_inputs()).logits, model(**_inputs()).logits)


def test_slimming_keeps_the_dtype_and_a_bad_pruned_heads_is_a_one_line_error(tmp_path):
    model = _bert().to(torch.bfloat16)
    structured_prune(model, heads_fraction=0.5, ffn_fraction=0.25)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.save_pretrained(tmp_path / "slim")
    assert {p.dtype for p in load_model(str(tmp_path / "slim"), dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    config = json.loads((tmp_path / "slim" / "config.json").read_text())
    (tmp_path / "slim" / "config.json").write_text(json.dumps({**config, "pruned_heads": {"9": [0]}}))
    with pytest.raises(ModelError, match=r"pruned_heads names heads \[0\] of layer 9, but the model has 4 layers"):
        load_model(str(tmp_path / "slim"))


def test_uneven_heads_export_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from hfcompress.export import export_onnx

    model = _bert().eval()
    report = structured_prune(model, heads_fraction=0.4, ffn_fraction=0.25, heads_scope="global")
    assert len(set(report["heads_kept"].values())) > 1, "global ranking should leave layers uneven in this model"
    assert report["intermediate_size"] == 48 and model.config.intermediate_size == 48
    model.save_pretrained(tmp_path / "slim")
    save_tiny_wordpiece_tokenizer(tmp_path / "slim", VOCAB)
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    onnx_file = export_onnx(tmp_path / "slim", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(onnx_file))
    feed = {i.name: inputs.get(i.name, torch.zeros_like(inputs["input_ids"])).numpy() for i in session.get_inputs()}
    torch.testing.assert_close(torch.from_numpy(session.run(None, feed)[0]), expected, rtol=1e-4, atol=1e-5)


def test_taylor_needs_gradients_and_gpt2_is_refused():
    with pytest.raises(ModelError, match="gradients"):
        importance_scores(_bert(), "taylor")
    with pytest.raises(ModelError, match="magnitude"):
        structured_prune(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)), heads_fraction=0.5)


def test_structured_callback_slims_gradually_and_resumes(tmp_path):
    kwargs = dict(heads_fraction=0.5, ffn_fraction=0.5, importance="taylor", schedule="cubic", end_step=6, frequency=2)
    args = dict(max_steps=8, save_strategy="steps", save_steps=4)
    ref_model = _bert()
    ref = StructuredPruningCallback(**kwargs)
    Trainer(model=ref_model, args=_args(tmp_path / "ref", **args), train_dataset=_data(), callbacks=[ref]).train()
    assert ref.report["heads_kept"] == {i: 2 for i in range(4)} and ref_model.config.intermediate_size == 32
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(model=_bert(), args=_args(out, **args), train_dataset=_data(), callbacks=[StructuredPruningCallback(**kwargs), CrashAt(6)]).train()
    model = _bert(seed=5)
    resumed = StructuredPruningCallback(**kwargs)
    trainer = Trainer(model=model, args=_args(out, **args), train_dataset=_data(), callbacks=[resumed])
    trainer.train(resume_from_checkpoint=str(out / "out" / "checkpoint-4"))
    assert model.config.pruned_heads == ref_model.config.pruned_heads
    for (name, p_ref), (_, p) in zip(ref_model.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=name)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = load_model(str(tmp_path / "final")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**_inputs()).logits, model.eval()(**_inputs()).logits)
    assert json.loads((out / "out" / REPORT_FILE).read_text())["intermediate_size"] == 32
    assert assert_compression_summary(out / "out", "structured").results["intermediate_size"] == 32


# --- recipe stage and benchmark script on tiny material ----------------------------------------------


@pytest.mark.integration
def test_prune_stage_with_and_without_training_and_pruning_callback_in_distill(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.recipes import parse_recipe, run_recipe

    training = {"max_steps": 6, "per_device_train_batch_size": 16, "disable_tqdm": True, "use_cpu": True}
    recipe = {
        "name": "tiny-prune", "output_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "prune", "name": "oneshot", "model": str(tiny_teacher_dir), "magnitude": {"target_sparsity": 0.6}},
            {"stage": "prune", "name": "slim", "model": str(tiny_teacher_dir), "teacher": str(tiny_teacher_dir),
             "structured": {"heads_fraction": 0.25, "ffn_fraction": 0.5, "importance": "taylor", "schedule": "cubic", "end_step": 0.5, "frequency": 2},
             "training": dict(training, alpha=0.5)},
            {"stage": "distill", "name": "sparse_student", "teacher": str(tiny_teacher_dir), "student_layers": [0, 2], "training": training,
             "callbacks": [{"type": "magnitude_pruning", "target_sparsity": 0.5, "pattern": "2:4", "schedule": "one_shot"}]},
        ],
    }
    outputs = run_recipe(parse_recipe(recipe))
    oneshot = json.loads((outputs["oneshot"] / REPORT_FILE).read_text())
    assert oneshot["global_sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert assert_compression_summary(outputs["oneshot"], "magnitude").results["global_sparsity"] == oneshot["global_sparsity"]
    assert assert_compression_summary(outputs["slim"], "structured").tables[0]["columns"] == ["layer", "attention heads kept"]
    slimmed = load_model(str(outputs["slim"]))
    assert slimmed.config.intermediate_size == 32 and all(n == 3 for n in json.loads((outputs["slim"] / REPORT_FILE).read_text())["heads_kept"].values())
    sparse = json.loads((outputs["sparse_student"] / REPORT_FILE).read_text())
    assert sparse["pattern"] == "2:4" and sparse["global_sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("edit, message", [
    ({}, "exactly one of"),
    ({"magnitude": {"target_sparsity": 0.5}, "teacher": "x"}, "needs 'training'"),
    ({"magnitude": {"targt_sparsity": 0.5}}, "did you mean 'target_sparsity'"),
    ({"structured": {"heads_fraction": 0.0}}, "removes nothing"),
])
def test_prune_stage_mistakes_are_one_line_errors(edit, message):
    from hfcompress.recipes.schema import from_dict
    from hfcompress.recipes.stages.prune import PruneStageConfig

    with pytest.raises(ConfigError, match=message):
        from_dict(PruneStageConfig, {"model": "m", **edit})
