"""KV-cache export of causal LMs: the contract's graph on both exporters, logit and greedy-generation parity, and a broken graph caught.

The dynamo exporter's tiny Llama (grouped-query attention, RoPE) runs everywhere; its GPT-2 is slow, and Optimum's run where it is installed.
"""

from __future__ import annotations

import json
import shutil

import pytest

from hfcompress.errors import ConfigError
from hfcompress.export import ParityError, export_onnx, graph_signature
from hfcompress.export.parity import PARITY_FILE, check_generation_parity, raise_on_generation_mismatch
from tests.decoder_helpers import contract_signature, exported

CASES = [
    pytest.param("llama", "dynamo", id="llama-dynamo"),
    pytest.param("gpt2", "dynamo", id="gpt2-dynamo", marks=pytest.mark.slow),
    pytest.param("llama", "optimum", id="llama-optimum", marks=pytest.mark.requires_optimum),
    pytest.param("gpt2", "optimum", id="gpt2-optimum", marks=pytest.mark.requires_optimum),
]


@pytest.mark.parametrize("arch, backend", CASES)
def test_export_has_the_contract_graph_and_generates_as_pytorch(arch, backend, tmp_path_factory):
    from transformers import AutoConfig

    out = exported(arch, backend, tmp_path_factory)
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]  # one graph for prefill and decode
    assert graph_signature(out / "model.onnx") == contract_signature(AutoConfig.from_pretrained(out))
    parity = json.loads((out / PARITY_FILE).read_text())
    result = parity["files"]["model.onnx"]
    assert parity["backend"] == backend and result["passed"] and result["max_abs_diff"] < 1e-4
    assert result["generation"] == {"prompts": 4, "max_new_tokens": 16, "passed": True, "first_divergence": None}
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_a_perturbed_graph_fails_generation_parity_naming_the_first_divergence(tmp_path_factory, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from hfcompress.modeling import load_model, load_tokenizer
    from hfcompress.tasks import get_task

    out = exported("llama", "dynamo", tmp_path_factory)
    graph = onnx.load(str(out / "model.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))  # the embedding (tied to the LM head)
    values = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(values + np.random.default_rng(0).normal(0, 1, values.shape).astype(np.float32), weight.name))
    shutil.copytree(out, tmp_path / "broken")
    onnx.save(graph, str(tmp_path / "broken" / "model.onnx"))

    checkpoint = out.parent / "llama"
    prompts = ["The film is a charming portrait.", "Terrible."]
    result = check_generation_parity(load_model(str(checkpoint), get_task("text-generation")), tmp_path / "broken" / "model.onnx",
                                     load_tokenizer(str(checkpoint)), prompts, max_new_tokens=8)
    divergence = result["first_divergence"]
    assert not result["passed"] and divergence["prompt"] == 0 and divergence["pytorch_token"] != divergence["onnx_token"]
    with pytest.raises(ParityError, match=r"greedy new token \d+ of prompt 0 is \d+ in ONNX Runtime and \d+ in PyTorch"):
        raise_on_generation_mismatch(result, "the broken export")


@pytest.mark.parametrize("options, message", [({"generation_prompts": 0}, "generation_prompts and max_new_tokens"), ({"max_new_tokens": 0}, "at least 1")])
def test_bad_generation_parity_options_fail_before_any_work(options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        export_onnx(tmp_path / "missing", tmp_path / "out", **options)
