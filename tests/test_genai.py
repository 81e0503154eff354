"""onnxruntime-genai's model builder and runtime on a tiny random Llama: fp32 parity with PyTorch, int4, streaming, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hfcompress.errors import ConfigError
from hfcompress.export.genai import builder_missing

BUILDER_MISSING = builder_missing()
needs_genai = pytest.mark.skipif(BUILDER_MISSING is not None, reason=f"onnxruntime-genai's model builder: {BUILDER_MISSING}")

PROMPTS = ["the quick brown fox", "a lazy dog sleeps over the fox", "brown", "the dog jumps over the quick brown fox and the lazy dog"]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(PROMPTS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random Llama with grouped-query attention and tied embeddings, as SmolLM2; its EOS is id 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fp32_build(tiny_llama, tmp_path_factory) -> Path:
    """Built through the export entry point into an existing empty directory, as a recipe's ``export`` stage with ``backend: genai`` does (its staging)."""
    from hfcompress.export import export_onnx

    staging = tmp_path_factory.mktemp("genai_fp32")
    return export_onnx(tiny_llama, staging, backend="genai", genai={"precision": "fp32"}).parent


@pytest.fixture(scope="module")
def int4_build(tiny_llama, tmp_path_factory) -> Path:
    from hfcompress.export.genai import build_genai_model

    return build_genai_model(tiny_llama, tmp_path_factory.mktemp("genai") / "int4", "int4", block_size=32, accuracy_level=4).parent


class _Recorder:
    """A streamer (transformers' BaseStreamer interface) that keeps what it is fed."""

    def __init__(self):
        self.values, self.ended = [], False

    def put(self, value):
        self.values.append(value.tolist())

    def end(self):
        self.ended = True


@needs_genai
def test_fp32_build_generates_the_tokens_of_pytorch(tiny_llama, fp32_build):
    from transformers import AutoModelForCausalLM

    from hfcompress.generation import load_causal_lm

    parity = json.loads((fp32_build / "parity.json").read_text())
    assert parity["backend"] == "genai" and parity["files"]["model.onnx"]["passed"] is True
    assert parity["files"]["model.onnx"]["identical_generations"] == 4
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    lm = load_causal_lm(fp32_build, intra_op_num_threads=1)
    for prompt in PROMPTS:
        ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = reference.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
            expected_logits = reference(ids).logits
        assert torch.equal(lm.generate(ids, max_new_tokens=12), expected), prompt
        torch.testing.assert_close(lm.logits(ids), expected_logits, atol=1e-4, rtol=0)


@needs_genai
def test_left_padded_batch_generates_each_row_as_alone(fp32_build):
    from hfcompress.generation import load_causal_lm

    lm = load_causal_lm(fp32_build)
    lm.tokenizer.pad_token, lm.tokenizer.padding_side = lm.tokenizer.eos_token, "left"
    batch = lm.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    out = lm.generate(batch.input_ids, batch.attention_mask, max_new_tokens=6, eos_token_id=[])
    assert out.shape == (2, batch.input_ids.shape[1] + 6)
    for row, prompt in zip(out, PROMPTS[:2]):
        alone = lm.generate(lm.tokenizer(prompt, return_tensors="pt").input_ids, max_new_tokens=6, eos_token_id=[])
        assert row[-6:].tolist() == alone[0, -6:].tolist()
    logits = lm.logits(batch.input_ids, batch.attention_mask)
    assert logits.shape == (*batch.input_ids.shape, lm.config.vocab_size)
    assert not logits[0, : int((batch.attention_mask[0] == 0).sum())].any()  # padded positions stay zero


@needs_genai
def test_int4_build_streams_the_requested_tokens(int4_build, fp32_build, tiny_llama):
    from hfcompress.artifacts import read_compression_summaries
    from hfcompress.generation import load_causal_lm

    quantization = json.loads((int4_build / "quantization.json").read_text())
    assert quantization["method"] == "genai_int4" and quantization["block_size"] == 32 and quantization["embeddings_quantized"]
    assert [s.method for s in read_compression_summaries(int4_build)] == ["genai_int4"]
    assert json.loads((int4_build / "parity.json").read_text())["files"]["model.onnx"]["passed"] is None  # measured, not judged
    weights = {build: sum(f.stat().st_size for f in build.glob("model.onnx*")) for build in (int4_build, fp32_build)}
    assert weights[int4_build] < weights[fp32_build] / 2

    lm = load_causal_lm(int4_build, intra_op_num_threads=2)
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    streamer = _Recorder()
    out = lm.generate(ids, max_new_tokens=10, eos_token_id=[], streamer=streamer)
    assert out.shape == (1, ids.shape[1] + 10)
    assert streamer.ended and streamer.values[0] == ids.tolist()  # the prompt first, as transformers' generate feeds it
    assert [v[0] for v in streamer.values[1:]] == out[0, ids.shape[1]:].tolist()


@needs_genai
def test_weight_only_int4_of_a_genai_build_runs_in_onnxruntime_genai(fp32_build, tmp_path):
    from hfcompress.generation import detect_backend, load_causal_lm
    from hfcompress.quantization.config import PTQConfig
    from hfcompress.quantization.onnx_ptq import quantize_onnx
    from hfcompress.recipes.schema import from_dict

    config = from_dict(PTQConfig, {"mode": "weight_only", "weight_only": {"algorithm": "hqq", "bits": 4, "block_size": 32}})
    quantized = quantize_onnx(fp32_build, tmp_path / "hqq", config, None, seed=0)
    runtime_config = json.loads((quantized.parent / "genai_config.json").read_text())
    assert runtime_config["model"]["decoder"]["filename"] == quantized.name and detect_backend(quantized.parent) == "genai"
    reference, lm = load_causal_lm(fp32_build), load_causal_lm(quantized.parent)
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    assert lm.generate(ids, max_new_tokens=6, eos_token_id=[]).shape == (1, ids.shape[1] + 6)
    # HQQ int4 of random weights moves the logits a little, not wholesale: same shape, highly correlated
    ours, theirs = lm.logits(ids), reference.logits(ids)
    assert ours.shape == theirs.shape and torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1] > 0.95


@needs_genai
def test_generation_stops_at_eos_and_sampling_follows_torch_seed(fp32_build):
    from hfcompress.generation import load_causal_lm

    lm = load_causal_lm(fp32_build)
    ids = lm.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    greedy = lm.generate(ids, max_new_tokens=8, eos_token_id=[])[0, ids.shape[1]:].tolist()
    stopped = lm.generate(ids, max_new_tokens=8, eos_token_id=greedy[2])
    assert stopped[0, ids.shape[1]:].tolist() == greedy[: greedy.index(greedy[2]) + 1]

    def sample(seed):
        torch.manual_seed(seed)
        return lm.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0, top_p=0.95, eos_token_id=[])

    assert torch.equal(sample(1), sample(1))
    with pytest.raises(ConfigError, match="exceed the model's context of 128"):
        lm.generate(ids, max_new_tokens=200)


def test_unsupported_architecture_is_one_line_error_naming_the_supported_ones(tmp_path):
    from transformers import BertConfig, GPT2Config

    from hfcompress.export.genai import build_genai_model

    for name, config in (("gpt2", GPT2Config(n_embd=64, n_layer=2, n_head=4, architectures=["GPT2LMHeadModel"])),
                         ("bert", BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, architectures=["BertForMaskedLM"]))):
        config.save_pretrained(tmp_path / name)
        with pytest.raises(ConfigError, match=f"cannot build {config.architectures[0]}: it builds LlamaForCausalLM, ") as error:
            build_genai_model(tmp_path / name, tmp_path / f"{name}-out")
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="block_size must be one of"):
        build_genai_model(tmp_path / "gpt2", tmp_path / "out", "int4", block_size=48)


def test_asymmetric_int4_of_tied_embeddings_is_refused_before_building(tiny_llama, tmp_path):
    from hfcompress.export.genai import build_genai_model

    with pytest.raises(ConfigError, match="set quantize_embeddings: false, or symmetric: true"):
        build_genai_model(tiny_llama, tmp_path / "out", "int4", symmetric=False)
    assert not (tmp_path / "out").exists()


def test_export_stage_takes_genai_settings_and_rejects_bad_ones():
    from hfcompress.export.genai import GenaiBuildConfig
    from hfcompress.recipes.schema import from_dict
    from hfcompress.recipes.stages.export import ExportStageConfig

    stage = from_dict(ExportStageConfig, {"model": "distil", "backend": "genai", "genai": {"precision": "int4", "block_size": 64}}, "stages[1]")
    assert stage.genai == GenaiBuildConfig(precision="int4", block_size=64)
    with pytest.raises(ConfigError, match="precision"):
        from_dict(ExportStageConfig, {"model": "distil", "backend": "genai", "genai": {"precision": "int3"}}, "stages[1]")
    with pytest.raises(ConfigError, match="drop optimize"):
        from_dict(ExportStageConfig, {"model": "distil", "backend": "genai", "optimize": "O2"}, "stages[1]")
