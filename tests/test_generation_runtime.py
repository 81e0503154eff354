"""The causal-LM runtimes of hfcompress.generation: an export in ONNX Runtime with its KV cache against transformers' generate.

The export is the tiny Llama (grouped-query attention) through the default exporter of the stack (dynamo on transformers 5, Optimum on 4.57).
"""

from __future__ import annotations

import logging

import pytest
import torch

from hfcompress.errors import ConfigError
from hfcompress.generation import load_causal_lm
from tests.decoder_helpers import exported


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from hfcompress.export import ExportConfig

    return exported("llama", ExportConfig().resolved_backend, tmp_path_factory)


@pytest.fixture(scope="module")
def runtimes(export_dir):
    return load_causal_lm(export_dir.parent / "llama"), load_causal_lm(export_dir, intra_op_num_threads=1)


def _batch(tokenizer, texts):
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_backends_are_chosen_from_the_directory(runtimes, export_dir):
    pytorch, onnx = runtimes
    assert (pytorch.backend, onnx.backend) == ("pytorch", "onnxruntime")
    assert onnx.session.get_session_options().intra_op_num_threads == 1
    assert onnx.config.num_key_value_heads == 2 and onnx.generation_config.eos_token_id == onnx.tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="generation backend 'onnx_runtime' is not one of .*did you mean 'onnxruntime'"):
        load_causal_lm(export_dir, backend="onnx_runtime")


def test_a_left_padded_batch_generates_the_tokens_of_pytorch(runtimes):
    pytorch, onnx = runtimes
    ids, mask = _batch(onnx.tokenizer, ["Terrible.", "The committee will meet on Tuesday to review the proposal."])
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the short prompt is padded on the left
    expected = pytorch.generate(ids, mask, max_new_tokens=12)
    assert torch.equal(onnx.generate(ids, mask, max_new_tokens=12), expected)
    assert expected.shape[1] == ids.shape[1] + 12


def test_each_row_stops_at_its_eos_and_is_padded_after(runtimes):
    pytorch, onnx = runtimes
    ids, mask = _batch(onnx.tokenizer, ["Terrible.", "What a delight!"])
    free = onnx.generate(ids, mask, max_new_tokens=6)[:, ids.shape[1]:]
    stop = int(free[0, 1])  # row 0's second new token becomes its stop token
    assert stop not in free[1].tolist()[:3], "pick prompts whose rows differ"
    expected = pytorch.generate(ids, mask, max_new_tokens=6, eos_token_id=stop)
    got = onnx.generate(ids, mask, max_new_tokens=6, eos_token_id=stop)
    assert torch.equal(got, expected)
    new = got[0, ids.shape[1]:].tolist()
    assert new[1] == stop and set(new[2:]) <= {onnx.tokenizer.pad_token_id}


def test_the_streamer_receives_the_prompt_then_each_new_token(runtimes):
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    _, onnx = runtimes
    ids, mask = _batch(onnx.tokenizer, ["The soundtrack, by contrast, is gorgeous."])
    streamer = Collect()
    out = onnx.generate(ids, mask, max_new_tokens=5, streamer=streamer)
    assert streamer.puts[0] == ids[0].tolist() and streamer.ended
    assert sum(streamer.puts[1:], []) == out[0, ids.shape[1]:].tolist()
    with pytest.raises(ConfigError, match="a streamer follows one sequence"):
        onnx.generate(*_batch(onnx.tokenizer, ["a", "b"]), max_new_tokens=2, streamer=Collect())


def test_sampling_is_reproducible_with_a_seed(runtimes):
    _, onnx = runtimes
    ids, mask = _batch(onnx.tokenizer, ["Rain is expected across the north"])

    def sample(seed, **options):
        return onnx.generate(ids, mask, max_new_tokens=10, do_sample=True, generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(sample(1, temperature=1.5, top_p=0.95), sample(1, temperature=1.5, top_p=0.95))
    assert any(not torch.equal(sample(1, temperature=3.0), sample(seed, temperature=3.0)) for seed in (2, 3, 4))
    assert torch.equal(sample(5, top_k=1), onnx.generate(ids, mask, max_new_tokens=10))  # top-k 1 leaves only the greedy token


def test_too_long_a_prompt_names_both_numbers(runtimes):
    for runtime in runtimes:
        with pytest.raises(ConfigError, match=r"a prompt of 90 tokens plus max_new_tokens 10 exceeds the model's max_position_embeddings 96"):
            runtime.generate(torch.ones(1, 90, dtype=torch.long), max_new_tokens=10)


def test_logits_and_the_evaluation_harness_see_the_pytorch_logits(runtimes, export_dir):
    from hfcompress.evaluation.runtime import load_for_inference

    pytorch, onnx = runtimes
    ids, mask = _batch(onnx.tokenizer, ["Terrible.", "My order arrived two weeks late and the box was crushed."])
    expected = pytorch.logits(ids, mask)[mask.bool()]
    torch.testing.assert_close(onnx.logits(ids, mask)[mask.bool()], expected, atol=1e-4, rtol=1e-4)
    loaded, backend = load_for_inference(export_dir)
    assert backend == "onnx" and loaded.path == export_dir / "model.onnx"
    torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits[mask.bool()], expected, atol=1e-4, rtol=1e-4)


def test_a_tokenizer_without_pad_token_pads_with_eos_and_says_so(export_dir, caplog):
    from transformers import AutoTokenizer

    from hfcompress.generation.base import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir.parent / "llama")  # the checkpoint's: the export saves its padding
    assert tokenizer.pad_token is None
    with caplog.at_level(logging.INFO, logger="hfcompress.generation.base"):
        prepare_tokenizer(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    assert "no pad token" in caplog.text
