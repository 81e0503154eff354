"""Low-rank factorisation: rank selection, exactness on low-rank weights, save/reload, ONNX export, GPT-2 Conv1D."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from conftest import save_tiny_wordpiece_tokenizer, tiny_bert_config
from hfcompress.errors import ConfigError, ModelError
from hfcompress.lowrank import LowRankConfig, LowRankLinear, factorize, load_factorized, save_factorized, select_rank
from hfcompress.lowrank.factorize import target_layers

from tests.conftest import assert_compression_summary

VOCAB = 99


def low_rank_bert(rank: int = 4) -> BertForSequenceClassification:
    """A tiny BERT whose encoder Linear weights have exactly rank ``rank``."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(VOCAB)).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}.":
                out_f, in_f = module.weight.shape
                module.weight.copy_(torch.randn(out_f, rank) @ torch.randn(rank, in_f) / in_f**0.5)
    return model


def inputs(batch: int = 3, length: int = 9) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding must be handled identically too
    return {"input_ids": ids, "attention_mask": mask}


def test_select_rank_by_energy_compression_floor_and_multiple():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0, 0.0])  # energies 16, 4, 1, 1 of 22
    exact = dict(min_rank=1, rank_multiple=1)
    assert select_rank(s, 6, 6, LowRankConfig(energy=16 / 22, **exact)) == 1
    assert select_rank(s, 6, 6, LowRankConfig(energy=0.73, **exact)) == 2
    assert select_rank(s, 6, 6, LowRankConfig(energy=21 / 22, **exact)) == 3
    assert select_rank(s, 6, 6, LowRankConfig(energy=1.0, **exact)) == 4  # the zero singular values are never needed
    assert select_rank(s, 6, 6, LowRankConfig(energy=0.5, min_rank=3, rank_multiple=1)) == 3
    assert select_rank(s, 6, 6, LowRankConfig(energy=0.5, min_rank=1, rank_multiple=4)) == 4
    assert select_rank(s, 6, 6, LowRankConfig(energy=0.5, min_rank=8, rank_multiple=1)) == 6  # capped at full rank
    # compression: r (in + out) = c * in * out
    assert select_rank(torch.ones(64), 64, 256, LowRankConfig(compression=0.5, **exact)) == int(0.5 * 64 * 256 / 320)


def test_factorization_is_exact_for_low_rank_weights_and_shrinks_the_model():
    model = low_rank_bert(rank=4)
    x = inputs()
    reference = model(**x).logits
    report = factorize(model, LowRankConfig(energy=1.0, min_rank=1, rank_multiple=1))
    assert set(report["ranks"].values()) == {4} and report["factorized_layers"] == 4 * 6  # 6 Linear layers per block
    assert not any("pooler" in n or "classifier" in n for n in report["layers"])  # heads excluded by default
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, LowRankLinear)
    assert report["num_parameters_after"] < report["num_parameters_before"]
    torch.testing.assert_close(model(**x).logits, reference, atol=1e-5, rtol=1e-4)


def test_compression_target_and_layers_that_would_not_shrink_stay_dense():
    model = BertForSequenceClassification(tiny_bert_config(VOCAB))
    report = factorize(model, LowRankConfig(compression=0.5, min_rank=1, rank_multiple=1, target_modules=["intermediate.dense"]))
    for name, rank in report["ranks"].items():
        assert name.endswith("intermediate.dense") and rank == int(0.5 * 32 * 64 / 96)
    # a rank floor above the break-even rank leaves the layer dense, and the report says why
    report = factorize(BertForSequenceClassification(tiny_bert_config(VOCAB)), LowRankConfig(compression=0.5, min_rank=32))
    assert report["ranks"] == {} and all("would not save" in e["skipped"] for e in report["layers"].values())


def test_invalid_configs_fail_with_the_fix():
    with pytest.raises(ConfigError, match="exactly one of 'energy'"):
        LowRankConfig(energy=0.9, compression=0.5)
    with pytest.raises(ConfigError, match="energy=1.5 is outside"):
        LowRankConfig(energy=1.5)
    with pytest.raises(ConfigError, match="match no Linear"):
        target_layers(BertForSequenceClassification(tiny_bert_config(VOCAB)), LowRankConfig(energy=0.9, target_modules=["qkv"]))


def test_factorized_checkpoint_reloads_through_auto_class_and_not_silently_without_hfcompress(tmp_path):
    model = low_rank_bert(rank=4)
    x = inputs()
    report = factorize(model, LowRankConfig(energy=0.99, min_rank=1, rank_multiple=1))
    expected = model(**x).logits
    save_factorized(model, tmp_path / "f", report)
    saved = json.loads((tmp_path / "f" / "config.json").read_text())
    assert saved["model_type"] == "hfcompress_factorized" and saved["base_model_type"] == "bert"
    assert json.loads((tmp_path / "f" / "factorization.json").read_text())["ranks"] == report["ranks"]
    summary = assert_compression_summary(tmp_path / "f", "truncated-svd")
    assert summary.tables[0]["rows"] == report["ranks"] and summary.results["num_parameters_after"] == report["num_parameters_after"]

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "f").eval()
    assert type(reloaded).__name__ == "FactorizedBertForSequenceClassification"
    torch.testing.assert_close(reloaded(**x).logits, expected)
    assert isinstance(load_factorized(str(tmp_path / "f")).bert.encoder.layer[1].output.dense, LowRankLinear)

    # plain transformers (no hfcompress import) must refuse rather than load random dense weights
    code = "import sys; from transformers import AutoModelForSequenceClassification as A; A.from_pretrained(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "hfcompress_factorized" in done.stderr


def test_slimmed_then_factorized_checkpoint_reloads_with_its_heads(tmp_path):
    """A factorised checkpoint of a slimmed model gets both its removed heads and its low-rank layers back (transformers 4 and 5)."""
    from hfcompress.pruning.structured import slim

    model = low_rank_bert(rank=4)
    slim(model, {0: [1], 2: [0, 3]}, {})
    report = factorize(model, LowRankConfig(energy=0.99, min_rank=1, rank_multiple=1))
    x = inputs()
    expected = model(**x).logits
    save_factorized(model, tmp_path / "f", report)
    reloaded = load_factorized(str(tmp_path / "f")).eval()
    assert reloaded.bert.encoder.layer[2].attention.self.num_attention_heads == 2
    torch.testing.assert_close(reloaded(**x).logits, expected)


def test_load_factorized_rejects_a_dense_checkpoint(tmp_path):
    BertForSequenceClassification(tiny_bert_config(VOCAB)).save_pretrained(tmp_path / "dense")
    with pytest.raises(ModelError, match="is not factorised"):
        load_factorized(str(tmp_path / "dense"))


def test_factorized_model_exports_to_onnx_with_a_plain_config(tmp_path):
    from hfcompress.evaluation import load_ort_model
    from hfcompress.export import export_onnx

    model = low_rank_bert(rank=4)
    report = factorize(model, LowRankConfig(energy=1.0, min_rank=1, rank_multiple=1))
    save_factorized(model, tmp_path / "f", report)
    save_tiny_wordpiece_tokenizer(tmp_path / "f", VOCAB)
    onnx_file = export_onnx(tmp_path / "f", tmp_path / "onnx")
    assert AutoConfig.from_pretrained(tmp_path / "onnx").model_type == "bert"  # loadable without hfcompress
    ort_model = load_ort_model(tmp_path / "onnx", onnx_file=onnx_file.name)  # Optimum's ORTModel, or hfcompress's session without it
    x = inputs()
    x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    np.testing.assert_allclose(ort_model(**x).logits.numpy(), model(**x).logits.detach().numpy(), atol=1e-4)


def test_gpt2_conv1d_layers_factorize_and_reload_with_tied_head(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    with torch.no_grad():  # exactly rank 4 (Conv1D stores weights as in x out)
        for module in model.transformer.h.modules():
            if type(module).__name__ == "Conv1D":
                n_in, n_out = module.weight.shape
                module.weight.copy_(torch.randn(n_in, 4) @ torch.randn(4, n_out) / n_in**0.5)
    ids = inputs()["input_ids"]
    reference = model(ids).logits
    report = factorize(model, LowRankConfig(energy=1.0, min_rank=1, rank_multiple=1))
    assert report["factorized_layers"] == 2 * 4
    torch.testing.assert_close(model(ids).logits, reference, atol=1e-4, rtol=1e-4)
    save_factorized(model, tmp_path / "g", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "g").eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
