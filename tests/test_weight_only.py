"""Weight-only int4/int8 ONNX quantization (MatMulNBits: RTN, HQQ, GPTQ) and bitsandbytes NF4/int8 on causal LMs.

Graph-level properties run on small graphs built with ``onnx.helper`` (fast); the algorithms, the
embeddings and the report run once each on a tiny Llama exported by hfcompress.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hfcompress.errors import ConfigError
from hfcompress.quantization import BnbConfig, PTQConfig, load_bnb, quantize_bnb, quantize_onnx
from hfcompress.quantization.config import WeightOnlyConfig
from hfcompress.quantization.weight_only import gptq_fake_quantize, group_grid, integer_zero_points, quantize_weight_only, weight_matmuls

from tests.conftest import assert_compression_summary

WORDS = "the a movie film good bad great plot actor story was is not very funny dull long short".split()
VOCAB = 320  # the byte-level tokenizer's 256 bytes, its merges and one special token fit
WIDTH, HEADS, HEAD_SIZE = 32, 2, 16


def _tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 8, vocab_size=300, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _tiny_llama(directory: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _lm_data(directory: Path):
    import random

    from hfcompress.data import DataConfig, TaskData

    rng = random.Random(0)
    directory.mkdir(parents=True)
    (directory / "train.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(9)) for _ in range(48)) + "\n")
    return TaskData(DataConfig(path=str(directory), task="text-generation", text_column="text", max_length=32), splits=["train"])


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory, llama) -> Path:
    from hfcompress.export import export_onnx

    return export_onnx(llama, tmp_path_factory.mktemp("export") / "onnx").parent


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    return _lm_data(tmp_path_factory.mktemp("data") / "lm")


def _decoder_graph(path: Path, past: bool = False) -> Path:
    """A two-MatMul decoder over the causal-LM inputs; with ``past``, Optimum's KV-cache inputs and outputs for one layer.

    The attention mask multiplies the hidden states, so a mask not covering the sequence fails to run. Every node
    is named, as exporters name them (ONNX Runtime's GPTQ sorts nodes by name).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"embed": (VOCAB, WIDTH), "positions": (64, WIDTH), "fc": (WIDTH, WIDTH), "head": (WIDTH, VOCAB)}
    initializers = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([0, 0, HEADS, HEAD_SIZE], dtype=np.int64), "heads_shape"))
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["tokens"], name="embed"),
        helper.make_node("Gather", ["positions", "position_ids"], ["places"], name="place"),
        helper.make_node("Add", ["tokens", "places"], ["summed"], name="add"),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask_column"], name="unsqueeze"),
        helper.make_node("Mul", ["summed", "mask_column"], ["hidden"], name="mask"),
        helper.make_node("MatMul", ["hidden", "fc"], ["projected"], name="layer.fc"),
        helper.make_node("MatMul", ["projected", "head"], ["logits"], name="lm_head"),
    ]
    initializers.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size", "sequence_length"]) for name in ("input_ids", "position_ids")]
    inputs.insert(1, helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_length"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    if past:
        nodes += [
            helper.make_node("Reshape", ["projected", "heads_shape"], ["split_heads"], name="split"),
            helper.make_node("Transpose", ["split_heads"], ["new_key"], name="heads_first", perm=[0, 2, 1, 3]),
        ]
        for kind in ("key", "value"):
            shape = ["batch_size", HEADS, "past_sequence_length", HEAD_SIZE]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.0.{kind}", TensorProto.FLOAT, shape))
            nodes.append(helper.make_node("Concat", [f"past_key_values.0.{kind}", "new_key"], [f"present.0.{kind}"], name=f"concat_{kind}", axis=2))
            outputs.append(helper.make_tensor_value_info(f"present.0.{kind}", TensorProto.FLOAT, ["batch_size", HEADS, "total_length", HEAD_SIZE]))
    model = helper.make_model(helper.make_graph(nodes, "decoder", inputs, outputs, initializers), opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv_graph(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "conv.weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "conv.weight"], ["features"], name="conv")], "cnn",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 6, 6])], [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _node_attributes(path: Path, op_type: str = "MatMulNBits") -> dict[str, dict]:
    import onnx

    return {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} | {"inputs": len(n.input)}
            for n in onnx.load(str(path)).graph.node if n.op_type == op_type}


def _feeds(sequence_length: int = 12) -> dict:
    ids = np.random.default_rng(1).integers(0, 300, size=(1, sequence_length))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(sequence_length)[None]}


def _logits(path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a decoder with past (the export's KV cache) gets an empty cache: the pass is a prefill
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in session.get_inputs() if i.name.startswith("past_key_values")}
    return session.run(["logits"], {i.name: feeds[i.name] for i in session.get_inputs() if i.name not in empty} | empty)[0]


def _weight_only(**settings) -> PTQConfig:
    top = {k: settings.pop(k) for k in list(settings) if k in ("quantize_embeddings", "exclude_nodes", "calibration_samples", "embedding_block_size")}
    return PTQConfig(mode="weight_only", weight_only=WeightOnlyConfig(**settings), **top)


# --- the algorithms on a tiny Llama export ------------------------------------------------------------------------


@pytest.mark.slow  # the tiny Llama's export, shared by the module, takes ~20-45 s on 2 busy cores
@pytest.mark.parametrize("algorithm", ["rtn", "hqq", "gptq"])
def test_each_algorithm_replaces_every_weight_matmul_and_stays_close_to_fp32(algorithm, llama_onnx, lm_data, tmp_path):
    import onnx

    config = _weight_only(algorithm=algorithm, calibration_sequence_length=32, calibration_samples=8)
    quantized = quantize_onnx(llama_onnx, tmp_path / "q", config, lm_data if algorithm == "gptq" else None)
    graph = onnx.load(str(quantized)).graph
    # every weight MatMul is gone, the tied lm_head too (through its own transposed copy), but for HQQ's 14 small float zero-point corrections
    corrections = [n.name for n in weight_matmuls(graph) if n.name.endswith(".zero_point_correction/matmul")]
    assert len(corrections) == (14 if algorithm == "hqq" else 0) and len(weight_matmuls(graph)) == len(corrections)
    nodes = _node_attributes(quantized)
    assert len(nodes) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output layer
    assert sorted({n["bits"] for n in nodes.values()}) == [4, 8] and all(n["block_size"] == 32 for n in nodes.values())
    feeds = _feeds()
    reference, logits = _logits(llama_onnx / "model.onnx", feeds), _logits(quantized, feeds)
    # int4 blocks of 32 round each weight by up to half a step (1/30 of its block's range); over two random layers the
    # logits move by a few percent of their spread. 10% of the spread bounds it with margin; a broken graph moves them by ~100%.
    assert np.abs(logits - reference).max() < 0.10 * np.ptp(reference)
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_eight_bit_rtn_is_closer_to_fp32_than_four_bit(llama_onnx, tmp_path):
    feeds = _feeds()
    reference = _logits(llama_onnx / "model.onnx", feeds)
    errors = {bits: np.abs(_logits(quantize_onnx(llama_onnx, tmp_path / str(bits), _weight_only(bits=bits)), feeds) - reference).max() for bits in (4, 8)}
    assert errors[8] < 0.01 * np.ptp(reference) and errors[8] < errors[4] / 5  # 16x finer steps


@pytest.mark.slow
def test_embeddings_go_through_gather_block_quantized_and_the_report_says_what_was_done(llama_onnx, tmp_path):
    config = _weight_only(algorithm="hqq", quantize_embeddings=True, embedding_block_size=32, output_layer="fp32", exclude_nodes=[])
    quantized = quantize_onnx(llama_onnx, tmp_path / "q", config)
    assert len(_node_attributes(quantized, "GatherBlockQuantized")) == 1
    report = json.loads((quantized.parent / "quantization.json").read_text())
    assert {k: report[k] for k in ("method", "algorithm", "bits", "block_size", "symmetric", "accuracy_level", "embeddings_quantized", "embedding_bits")} == {
        "method": "weight_only", "algorithm": "hqq", "bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 4,
        "embeddings_quantized": True, "embedding_bits": 4,
    }
    assert report["matmuls_quantized"] == 14 and report["output_layer"]["weights"] == "fp32"
    # q/k/v, o, gate/up and down read four inputs per layer: eight shared block sums correct HQQ's 14 rounded zero points
    assert report["integer_zero_points"] and report["zero_point_corrections"] == {"nodes": 14, "shared_block_sums": 8, "blocks_clipped": 0}
    assert report["matmuls_kept"] == [report["output_layer"]["node"]]  # the tied lm_head, left as exported
    assert report["weights"].startswith("int4 asymmetric blocks of 32") and report["onnx_file"] == quantized.name
    assert (quantized.parent / "generation_config.json").is_file() and (quantized.parent / "tokenizer.json").is_file()
    summary = assert_compression_summary(quantized.parent, "weight_only")
    assert "4-bit" in summary.tags and summary.settings["algorithm"] == "hqq"


# --- graph properties on hand-built graphs -------------------------------------------------------------------------


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
def test_bits_block_size_symmetry_and_accuracy_level_reach_the_nodes(bits, symmetric, tmp_path):
    from transformers import LlamaConfig

    source = _decoder_graph(tmp_path / "model.onnx")
    config = _weight_only(bits=bits, block_size=16, symmetric=symmetric, accuracy_level=1, output_layer="same")
    quantize_weight_only(source, tmp_path / "q.onnx", config, None, None, LlamaConfig(), seed=0)
    nodes = _node_attributes(tmp_path / "q.onnx")
    assert sorted(nodes) == [f"layer.fc_Q{bits}", f"lm_head_Q{bits}"]
    for node in nodes.values():
        assert (node["bits"], node["block_size"], node["accuracy_level"]) == (bits, 16, 1)
        assert node["inputs"] == (3 if symmetric else 4)  # a zero point per block only when asymmetric


def test_output_layer_int8_and_excluded_nodes(tmp_path):
    from transformers import LlamaConfig

    source = _decoder_graph(tmp_path / "model.onnx")
    report = quantize_weight_only(source, tmp_path / "q.onnx", _weight_only(block_size=16, accuracy_level=0), None, None, LlamaConfig(), seed=0)
    nodes = _node_attributes(tmp_path / "q.onnx")
    assert {name: n["bits"] for name, n in nodes.items()} == {"layer.fc_Q4": 4, "lm_head_Q8": 8}
    assert all("accuracy_level" not in n for n in nodes.values())  # 0: the attribute is left out
    assert report["output_layer"] == {"node": "lm_head", "weights": "int8"}
    kept = quantize_weight_only(source, tmp_path / "k.onnx", _weight_only(block_size=16, exclude_nodes=["layer.fc"]), None, None, LlamaConfig(), seed=0)
    assert kept["matmuls_kept"] == ["layer.fc"] and kept["matmuls_quantized"] == 1


def test_gptq_reader_feeds_a_decoder_with_past_from_the_graphs_own_inputs(tmp_path, lm_data):
    from transformers import LlamaConfig

    from hfcompress.quantization.weight_only import SequenceReader, calibration_sequences

    source = _decoder_graph(tmp_path / "model.onnx", past=True)
    config = _weight_only(algorithm="gptq", block_size=16, calibration_sequence_length=24, calibration_samples=3)
    sequences = calibration_sequences(lm_data, _tokenizer(), config, seed=0)
    assert [len(s) for s in sequences] == [24, 24, 24]
    assert calibration_sequences(lm_data, _tokenizer(), config, seed=0)[0].tolist() == sequences[0].tolist()  # seeded
    import onnx

    reader = SequenceReader(sequences, onnx.load(str(source)), lm_data.task, LlamaConfig())
    feed = reader.get_next()
    assert feed["past_key_values.0.key"].shape == (1, HEADS, 0, HEAD_SIZE) and feed["attention_mask"].shape == (1, 24)
    assert feed["position_ids"].tolist() == [list(range(24))] and set(feed) == {i.name for i in onnx.load(str(source)).graph.input}
    report = quantize_weight_only(source, tmp_path / "q.onnx", config, lm_data, _tokenizer(), LlamaConfig(), seed=0)
    assert report["calibration"] == {"split": "train", "seed": 0, "sequences": 3, "sequence_length": 24}
    assert report["matmuls_quantized"] == 2 and len(_node_attributes(tmp_path / "q.onnx")) == 2


def _correlated_layer(seed: int = 0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(64, 48))
    inputs = rng.normal(size=(512, 64)) @ rng.normal(size=(64, 64))  # correlated inputs: what GPTQ exploits
    return weight, inputs, 2 / len(inputs) * inputs.T @ inputs


def _round_to_nearest(weight: np.ndarray, group_size: int = 16) -> np.ndarray:
    out = np.empty_like(weight)
    for start in range(0, len(weight), group_size):
        scale, zero = group_grid(weight[start : start + group_size], 15, symmetric=False)
        out[start : start + group_size] = scale * (np.clip(np.round(weight[start : start + group_size] / scale) + zero, 0, 15) - zero)
    return out


def test_gptq_lowers_the_layer_output_error_of_round_to_nearest():
    weight, inputs, hessian = _correlated_layer()
    rtn_error = np.linalg.norm(inputs @ (_round_to_nearest(weight) - weight))
    gptq = gptq_fake_quantize(weight, hessian, num_bits=4, group_size=16)
    assert np.linalg.norm(inputs @ (gptq - weight)) < 0.8 * rtn_error
    # every weight sits on its group's 4-bit grid: at most 16 distinct values per group and output column
    assert max(len(np.unique(gptq[g : g + 16, c])) for g in range(0, 64, 16) for c in range(48)) <= 16


def test_onnxruntime_gptq_port_still_returns_round_to_nearest():
    """Why gptq_fake_quantize replaces ONNX Runtime's: when this fails, ONNX Runtime's GPTQ works and the replacement can go."""
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    weight, _, hessian = _correlated_layer()
    np.testing.assert_allclose(gptq(weight.copy(), hessian.copy(), num_bits=4, group_size=16), _round_to_nearest(weight), atol=1e-6)


# --- integer zero points for HQQ ------------------------------------------------------------------------------------


def _float_zero_point_graph(k: int = 64, block_size: int = 16):
    """Hand-made MatMulNBits with float zero points (HQQ's layout): q, k and v read ``hidden``, o reads their sum.

    The zero points span [-1.5, 16.5], so some blocks clip to the uint4 range and stay exact only through the correction.
    accuracy_level 1 (fp32 compute) on both sides, so the comparison sees the rewrite alone: at 4 the integer kernel also
    rounds the activations to int8, which the float-zero-point fallback does not.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n, blocks = k, -(-k // block_size)  # square weights: o reads the sum of q, k and v
    nodes, initializers = [], []
    for name, source, out in [("q", "hidden", "q_out"), ("k", "hidden", "k_out"), ("v", "hidden", "v_out"), ("o", "mixed", "logits")]:
        codes = rng.integers(0, 16, size=(n, blocks * block_size)).astype(np.uint8)  # K padded to whole blocks, as MatMulNBits stores it
        packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block_size // 2)
        initializers += [numpy_helper.from_array(packed, f"{name}.q"),
                         numpy_helper.from_array(rng.uniform(0.01, 0.1, size=n * blocks).astype(np.float32), f"{name}.scales"),
                         numpy_helper.from_array(rng.uniform(-1.5, 16.5, size=n * blocks).astype(np.float32), f"{name}.zero_points")]
        nodes.append(helper.make_node("MatMulNBits", [source, f"{name}.q", f"{name}.scales", f"{name}.zero_points"], [out], name=name,
                                      domain="com.microsoft", K=k, N=n, bits=4, block_size=block_size, accuracy_level=1))
    nodes.insert(3, helper.make_node("Sum", ["q_out", "k_out", "v_out"], ["mixed"], name="sum"))
    graph = helper.make_graph(nodes, "float_zero_points", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None), helper.make_tensor_value_info("q_out", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model, hidden: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["q_out", "logits"], {"hidden": hidden})


@pytest.mark.parametrize("k", [64, 72])  # 72: a last block of 8 and an odd number of zero points per row
def test_integer_zero_points_are_exact_uint8_and_share_one_block_sum_per_input(k):
    from onnx import TensorProto

    model = _float_zero_point_graph(k)
    hidden = np.random.default_rng(1).normal(size=(2, 5, k)).astype(np.float32)
    expected = _run(model, hidden)
    report = integer_zero_points(model)
    assert report["nodes"] == 4 and report["shared_block_sums"] == 2  # q, k, v share the sums of hidden; o has its own
    assert report["blocks_clipped"] > 0  # zero points outside [0, 15]: exact only through the correction
    initializers = {t.name: t for t in model.graph.initializer}
    matmuls = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert all(initializers[node.input[3]].data_type == TensorProto.UINT8 for node in matmuls)
    assert len(initializers["q.zero_points"].raw_data or initializers["q.zero_points"].int32_data) == k * -(-k // 32)  # two per byte, each row padded
    assert [n.output[0] for n in model.graph.node if n.op_type == "Constant"] == [f"block_sums.indicator_{k}x16"]  # one for both inputs
    assert sorted(node.name for node in model.graph.node if node.op_type == "MatMul") == [
        "hidden.block_sums16/matmul", "k.zero_point_correction/matmul", "mixed.block_sums16/matmul", "o.zero_point_correction/matmul",
        "q.zero_point_correction/matmul", "v.zero_point_correction/matmul"]
    for got, want in zip(_run(model, hidden), expected):  # the same dequantized weights, summed in another order
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    model_2d = _float_zero_point_graph(k)
    integer_zero_points(model_2d)
    assert np.allclose(_run(model_2d, hidden[0])[1], expected[1][0], rtol=0, atol=1e-5 * np.abs(expected[1]).max())  # any leading shape


def test_hqq_through_quantize_onnx_records_integer_zero_points_and_matches_float_ones(tmp_path):
    import onnx
    from onnx import TensorProto

    from hfcompress.evaluation.footprint import onnx_footprint
    from transformers import LlamaConfig

    source = tmp_path / "onnx"
    source.mkdir()
    _decoder_graph(source / "model.onnx")
    LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_attention_heads=HEADS).save_pretrained(source)
    _tokenizer().save_pretrained(source)
    outputs = {}
    for rounded in (True, False):
        config = _weight_only(algorithm="hqq", block_size=16, output_layer="same", accuracy_level=1, integer_zero_points=rounded)
        quantized = quantize_onnx(source, tmp_path / str(rounded), config)
        report = json.loads((quantized.parent / "quantization.json").read_text())
        graph = onnx.load(str(quantized)).graph
        types = {t.name: t.data_type for t in graph.initializer}
        assert {types[n.input[3]] for n in graph.node if n.op_type == "MatMulNBits"} == {TensorProto.UINT8 if rounded else TensorProto.FLOAT}
        assert report["integer_zero_points"] is rounded
        assert report["zero_point_corrections"] == ({"nodes": 2, "shared_block_sums": 2, "blocks_clipped": 0} if rounded else None)
        assert onnx_footprint(quantized)["sparsity"] == 0.0  # the block-sum indicator (mostly zeros) is no weight
        outputs[rounded] = _logits(quantized, _feeds())
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=0, atol=1e-5 * np.abs(outputs[False]).max())


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    ({"block_size": 24}, "block_size must be a power of 2"),
    ({"bits": 3}, "bits must be 4 or 8"),
    ({"bits": 8, "algorithm": "hqq"}, "bits 8 is rtn only"),
    ({"symmetric": True, "algorithm": "hqq"}, "hqq is asymmetric only"),
    ({"accuracy_level": 5}, "accuracy_level must be 0"),
    ({"algorithm": "awq"}, "algorithm 'awq' is unknown"),
])
def test_bad_weight_only_settings_fail_with_the_fix(settings, message):
    with pytest.raises(ConfigError, match=message):
        WeightOnlyConfig(**settings)


def test_weight_only_refuses_a_conv_graph_unknown_exclusions_and_gptq_without_data(tmp_path):
    from transformers import LlamaConfig

    with pytest.raises(ConfigError, match="has none .*use mode: static"):
        quantize_weight_only(_conv_graph(tmp_path / "cnn.onnx"), tmp_path / "q.onnx", _weight_only(), None, None, None, seed=0)
    source = _decoder_graph(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match=r"exclude_nodes \['nope'\] name no weight MatMul"):
        quantize_weight_only(source, tmp_path / "q.onnx", _weight_only(exclude_nodes=["nope"]), None, None, LlamaConfig(), seed=0)
    with pytest.raises(ConfigError, match="gptq calibrates on text"):
        quantize_weight_only(source, tmp_path / "q.onnx", _weight_only(algorithm="gptq"), None, None, LlamaConfig(), seed=0)
    with pytest.raises(ConfigError, match="embeddings to 4 bits only"):
        PTQConfig(mode="weight_only", quantize_embeddings=True, embedding_bits=8)


def test_a_recipe_reads_the_weight_only_settings():
    from hfcompress.recipes.schema import from_dict
    from hfcompress.recipes.stages.quantize import QuantizeStageConfig

    stage = from_dict(QuantizeStageConfig, {"model": "onnx", "onnx": {"mode": "weight_only", "calibration_samples": 16,
                                                                      "weight_only": {"algorithm": "gptq", "block_size": 64}}})
    assert (stage.onnx.weight_only.algorithm, stage.onnx.weight_only.block_size, stage.onnx.calibration_samples) == ("gptq", 64, 16)
    assert PTQConfig(mode="weight_only").calibration_samples == 32 and PTQConfig().calibration_samples == 256
    with pytest.raises(ConfigError, match="block_size"):
        from_dict(QuantizeStageConfig, {"model": "onnx", "onnx": {"mode": "weight_only", "weight_only": {"block_size": 24}}})


# --- bitsandbytes on a causal LM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_causal_lm_generates_saves_and_reloads(bits, llama, tmp_path):
    import bitsandbytes as bnb

    out = quantize_bnb(llama, tmp_path / "q", BnbConfig(bits=bits))
    model = load_bnb(out)
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert isinstance(model.model.layers[0].mlp.down_proj, layer)
    assert type(model.lm_head) is torch.nn.Linear  # transformers keeps the (tied) output head in full precision
    report = json.loads((out / "quantization.json").read_text())
    assert "lm_head" in report["modules_not_quantized"] and report["memory_footprint_bytes"] == model.get_memory_footprint()
    prompt = torch.tensor([[1, 5, 7, 9]])
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 10) and generated[0, :4].tolist() == prompt[0].tolist()
    assert torch.equal(load_bnb(out).generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False), generated)
