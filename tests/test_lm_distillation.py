"""Distillation of causal LMs on tiny random Llama and GPT-2 models: top-k cache and loss, GKD, layer-dropped students, bad input."""

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hfcompress import ConfigError, DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from hfcompress.distillation.cache import TeacherLogitCache, top_k_bytes_per_row
from hfcompress.distillation.losses import TopKLogits, combine, distillation_loss_sums, generalized_jsd
from hfcompress.distillation.student import spread_layers
from hfcompress.errors import DataError
from tests.conftest import save_tiny_wordpiece_tokenizer

VOCAB = 96


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum())


# --- losses ----------------------------------------------------------------------------------------


def test_top_k_loss_matches_a_hand_computation_on_a_six_token_vocabulary():
    t = np.array([3.0, 1.0, 0.5, 0.0, -1.0, 2.0])
    s = np.array([1.0, 2.0, 0.0, 0.5, 0.0, 1.5])
    T, k = 2.0, 2
    p_t, p_s = _softmax(t / T), _softmax(s / T)
    top = [0, 5]  # the teacher's two largest logits
    buckets_t = np.array([p_t[0], p_t[5], 1 - p_t[0] - p_t[5]])
    buckets_s = np.array([p_s[0], p_s[5], 1 - p_s[0] - p_s[5]])
    expected = _kl(buckets_t, buckets_s)
    teacher = TopKLogits(
        values=torch.tensor([[t[0], t[5]]]), indices=torch.tensor([top]),
        lse=torch.tensor([float(np.log(np.exp(t / T).sum()))]), temperature=T,
    )
    _, kl_sum, n = distillation_loss_sums("text-classification", torch.tensor(s[None]), teacher, None, T)
    assert n == 1
    assert float(kl_sum) == pytest.approx(expected, rel=1e-5)
    assert float(kl_sum) < _kl(p_t, p_s)  # merging the tail loses information (log-sum inequality)
    assert len(top) == k


def _top_k(logits: torch.Tensor, k: int, T: float) -> TopKLogits:
    values, indices = logits.topk(k, dim=-1)
    return TopKLogits(values, indices, torch.logsumexp(logits / T, dim=-1), T)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_loss_at_k_equal_to_the_vocabulary_is_the_full_loss(beta):
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7) * 2, torch.randn(2, 5, 7) * 2
    labels = torch.tensor([[1, 2, 3, 4, -100], [5, 6, 0, -100, -100]])
    full = distillation_loss_sums("text-generation", s, t, labels, 2.0, beta=beta)
    top = distillation_loss_sums("text-generation", s, _top_k(t, 7, 2.0), labels, 2.0, beta=beta)
    assert top[2] == full[2] == 5
    torch.testing.assert_close(top[0], full[0])
    torch.testing.assert_close(top[1], full[1], rtol=1e-5, atol=1e-6)
    assert float(combine(*top, 0.5, 2.0)) == pytest.approx(float(combine(*full, 0.5, 2.0)), rel=1e-5)


def test_top_k_loss_refuses_a_cache_built_at_another_temperature():
    t = torch.randn(1, 4)
    with pytest.raises(ConfigError, match="temperature 1.0, the loss at 2.0"):
        distillation_loss_sums("text-classification", torch.randn(1, 4), _top_k(t, 2, 1.0), None, 2.0)


P = np.array([0.7, 0.2, 0.1])  # teacher
Q = np.array([0.2, 0.5, 0.3])  # student


def _jsd(beta):
    return float(generalized_jsd(torch.tensor(np.log(Q)), torch.tensor(np.log(P)), beta))


def test_generalized_jsd_matches_a_hand_computation():
    m = 0.5 * P + 0.5 * Q
    assert _jsd(0.5) == pytest.approx(0.5 * _kl(P, m) + 0.5 * _kl(Q, m), rel=1e-9)
    m = 0.3 * P + 0.7 * Q  # beta weighs the teacher in the mixture, as in TRL
    assert _jsd(0.3) == pytest.approx(0.3 * _kl(P, m) + 0.7 * _kl(Q, m), rel=1e-9)


def test_generalized_jsd_is_forward_kl_at_beta_0_and_reverse_kl_at_beta_1_its_limits():
    assert _jsd(0.0) == pytest.approx(_kl(P, Q), rel=1e-9)
    assert _jsd(1.0) == pytest.approx(_kl(Q, P), rel=1e-9)
    eps = 1e-5
    assert _jsd(eps) / eps == pytest.approx(_kl(P, Q), rel=1e-3)
    assert _jsd(1 - eps) / eps == pytest.approx(_kl(Q, P), rel=1e-3)


# --- tiny models and data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tok")
    save_tiny_wordpiece_tokenizer(directory, VOCAB)
    tok = AutoTokenizer.from_pretrained(directory)
    tok.eos_token = "[SEP]"
    return tok


def _llama(layers=4, seed=0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **kw,
    )
    return LlamaForCausalLM(config)


def _data(tok, n=8):
    """Rows of 3 to 10 random token ids (the tiny tokenizer's vocabulary spells few real words)."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, VOCAB, size=int(rng.integers(3, 11))).tolist() for _ in range(n)]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]})


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, alpha=0.0,
    )
    return DistillationTrainingArguments(**{**base, **kw})


def _trainer(tok, tmp_path, teacher, student, data=None, **kw):
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, **kw), train_dataset=data if data is not None else _data(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False), processing_class=tok,
    )


# --- top-k cache --------------------------------------------------------------------------------------


def test_top_k_cache_round_trip(lm_tokenizer, tmp_path):
    teacher, data = _llama(), _data(lm_tokenizer)
    collator = DataCollatorForLanguageModeling(lm_tokenizer, mlm=False)
    cache = TeacherLogitCache.load_or_build(tmp_path, teacher, data, collator, "text-generation", batch_size=3, top_k=5, temperature=2.0)
    assert cache.arrays["indices"].dtype == np.uint16 and cache.arrays["values"].dtype == np.float16
    tokens = sum(len(ids) for ids in data["input_ids"])
    assert cache.arrays["values"].shape == (tokens, 5)
    assert sum((cache.directory / f"{name}.bin").stat().st_size for name in cache.arrays) == tokens * top_k_bytes_per_row(5, VOCAB) == tokens * 24
    row = 3
    ids = torch.tensor([data[row]["input_ids"]])
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    got = cache.lookup(torch.tensor([row]), seq_len=ids.shape[1] + 2)  # right padding beyond the row
    want = _top_k(logits, 5, 2.0)
    n = ids.shape[1]
    torch.testing.assert_close(got.values[:, :n], want.values.half().float())
    assert torch.equal(got.indices[:, :n], want.indices)
    torch.testing.assert_close(got.lse[:, :n], want.lse)
    assert not got.values[:, n:].any() and got.temperature == 2.0

    # the key holds k and the temperature; a truncated array makes the cache incomplete, and it is rebuilt
    keys = {TeacherLogitCache.key(teacher, data, "text-generation", k, T) for k, T in [(5, 2.0), (6, 2.0), (5, 1.0), (None, 1.0)]}
    assert len(keys) == 4
    values = cache.directory / "values.bin"
    values.write_bytes(values.read_bytes()[:-2])
    assert not TeacherLogitCache._is_complete(cache.directory, len(data))
    rebuilt = TeacherLogitCache.load_or_build(tmp_path, teacher, data, collator, "text-generation", batch_size=3, top_k=5, temperature=2.0)
    assert rebuilt.directory == cache.directory and TeacherLogitCache._is_complete(cache.directory, len(data))
    assert json.loads((cache.directory / "meta.json").read_text())["version"] == 2


def test_distillation_from_a_top_k_cache_needs_no_teacher_pass_while_training(lm_tokenizer, tmp_path):
    teacher = _llama()
    trainer = _trainer(
        lm_tokenizer, tmp_path, teacher, build_student_from_teacher(teacher, 2),
        teacher_cache_dir=str(tmp_path / "cache"), teacher_cache_top_k=8, max_steps=2,
    )
    result = trainer.train()
    assert trainer.teacher_cache.top_k == 8
    assert trainer.teacher_forward_passes == 0
    assert np.isfinite(result.training_loss) and trainer.state.log_history[0]["loss_kd"] > 0
    summary = _written_summary(trainer, tmp_path)
    assert summary.settings["teacher_cache_top_k"] == 8 and "top 8 tokens and one tail bucket" in summary.summary
    assert summary.results["teacher_forward_passes"] == 0 and summary.results["student_layers"] == 2
    assert summary.results["student_parameters"] < summary.results["teacher_parameters"]


def _written_summary(trainer, tmp_path):
    """The compression summary ``trainer.write_artifacts`` writes beside a saved student, and its details file read back."""
    from hfcompress.artifacts import read_compression_summaries

    directory = tmp_path / "student"
    directory.mkdir()
    trainer.write_artifacts(directory)
    [summary] = read_compression_summaries(directory)
    assert json.loads((directory / summary.details_file).read_text())["method"] == summary.method == "distillation"
    return summary


def test_on_policy_batches_refuse_the_logit_cache(tmp_path):
    with pytest.raises(ConfigError, match="need the live teacher"):
        _args(tmp_path, teacher_cache_dir=str(tmp_path / "c"), lmbda=0.5)


# --- on-policy GKD ------------------------------------------------------------------------------------


def test_on_policy_run_scores_student_generations_with_the_teacher(lm_tokenizer, tmp_path):
    teacher = _llama()
    student = build_student_from_teacher(teacher, [0, 3])
    seen = []
    teacher.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    generated = []
    original_generate = student.generate
    student.generate = lambda **kw: generated.append(original_generate(**kw)) or generated[-1]
    data = _data(lm_tokenizer)
    trainer = _trainer(lm_tokenizer, tmp_path, teacher, student, data, lmbda=1.0, beta=0.5, max_new_tokens=4, max_steps=2)
    result = trainer.train()
    assert np.isfinite(result.training_loss) and trainer.state.log_history[0]["loss_kd"] > 0
    assert len(generated) == 2 and trainer.teacher_forward_passes == 2
    assert seen == [g.shape[1] for g in generated]  # the teacher read exactly what the student generated
    assert all(length > max(len(ids) for ids in data["input_ids"]) for length in seen)
    assert "loss_ce" not in trainer.state.log_history[0]  # no hard labels on the student's own tokens
    summary = _written_summary(trainer, tmp_path)
    assert {k: summary.settings[k] for k in ("beta", "lmbda", "max_new_tokens")} == {"beta": 0.5, "lmbda": 1.0, "max_new_tokens": 4}
    assert "JSD_β" in summary.summary and "On-policy (GKD)" in summary.summary and "seq_kd" not in summary.settings


def test_seq_kd_batches_are_generated_by_the_teacher(lm_tokenizer, tmp_path):
    teacher = _llama()
    calls = []
    original_generate = teacher.generate
    teacher.generate = lambda **kw: calls.append(kw["max_new_tokens"]) or original_generate(**kw)
    trainer = _trainer(lm_tokenizer, tmp_path, teacher, build_student_from_teacher(teacher, 2), seq_kd=True, max_new_tokens=3, max_steps=1)
    assert np.isfinite(trainer.train().training_loss)
    assert calls == [3]


def test_on_policy_needs_a_causal_lm(tokenizer, tmp_path):
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert_config

    bert = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="only causal LMs"):
        DistillationTrainer(model=bert, teacher_model=bert, args=_args(tmp_path, lmbda=0.5))


# --- layer-dropped students ---------------------------------------------------------------------------


def test_spread_layers_keeps_first_and_last_and_spreads_the_rest():
    assert spread_layers(15, 30) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert spread_layers(2, 6) == [0, 5] and spread_layers(1, 6) == [0] and spread_layers(6, 6) == list(range(6))
    with pytest.raises(ConfigError, match="cannot be cut"):
        spread_layers(7, 6)


@pytest.mark.parametrize("tied", [True, False])
def test_layer_dropped_llama_student_has_the_teachers_layer_weights_and_generates(tied):
    teacher = _llama(layers=6, tie_word_embeddings=tied)
    student = build_student_from_teacher(teacher, 3)  # layers 0, 2, 5 (round(2.5) = 2)
    kept = spread_layers(3, 6)
    assert student.config.num_hidden_layers == 3
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for new, old in enumerate(kept):
        for name, value in s_state.items():
            if name.startswith(f"model.layers.{new}."):
                assert torch.equal(value, t_state[name.replace(f"layers.{new}.", f"layers.{old}.")]), name
    assert torch.equal(s_state["model.embed_tokens.weight"], t_state["model.embed_tokens.weight"])
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]  # the KV cache is indexed by these
    ids = torch.tensor([[5, 6, 7]])
    out = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 8)
    with torch.no_grad():  # cached decoding agrees with a full forward
        full = student(out).logits[0, 2:-1].argmax(-1)
    assert torch.equal(full, out[0, 3:])


def test_layer_types_follow_the_kept_layers():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    teacher = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, layer_types=types, use_sliding_window=True, sliding_window=8,
    ))
    student = build_student_from_teacher(teacher, [1, 2])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]


def test_layer_dropped_gpt2_student_by_count():
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=64))
    student = build_student_from_teacher(teacher, 2)
    assert torch.equal(student.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[3].mlp.c_fc.weight)


# --- bad input ----------------------------------------------------------------------------------------


def test_vocabulary_mismatch_names_the_fix(lm_tokenizer, tmp_path):
    teacher, other = _llama(), _llama(layers=2)
    other.resize_token_embeddings(VOCAB + 8)
    with pytest.raises(ConfigError, match=r"vocabularies differ \(96 vs 104 tokens\): distil between models that share a tokenizer"):
        _trainer(lm_tokenizer, tmp_path, teacher, other)


def test_missing_pad_token_borrows_eos_with_a_log_line(lm_tokenizer, tmp_path, caplog):
    tok = lm_tokenizer.__class__.from_pretrained(lm_tokenizer.name_or_path)
    tok.eos_token, tok.pad_token = "[SEP]", None
    teacher = _llama()
    with caplog.at_level(logging.WARNING):
        _trainer(tok, tmp_path, teacher, build_student_from_teacher(teacher, 2))
    assert tok.pad_token == "[SEP]"
    tok.pad_token = tok.eos_token = None
    with pytest.raises(ConfigError, match="neither a pad token nor an end-of-sequence token"):
        _trainer(tok, tmp_path, teacher, build_student_from_teacher(teacher, 2))


def test_sequences_longer_than_the_students_positions_are_refused(lm_tokenizer, tmp_path):
    teacher = _llama()
    long = datasets.Dataset.from_dict({"input_ids": [list(range(5, 75))], "attention_mask": [[1] * 70]})
    with pytest.raises(DataError, match=r"reach 70 tokens, longer than the student's 64 positions .*set max_length to at most 64"):
        _trainer(lm_tokenizer, tmp_path, teacher, build_student_from_teacher(teacher, 2), long)
    longest = max(len(ids) for ids in _data(lm_tokenizer)["input_ids"])
    with pytest.raises(DataError, match=rf"reach {longest} tokens \+ max_new_tokens 60, .*at most 4"):
        _trainer(lm_tokenizer, tmp_path, teacher, build_student_from_teacher(teacher, 2), lmbda=1.0, max_new_tokens=60)
