"""Post-training int8 with ONNX Runtime on either exporter's graphs, TensorRT QDQ structure, bitsandbytes, the quantize stage."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hfcompress.data import DataConfig, TaskData
from hfcompress.errors import ConfigError, ModelError
from hfcompress.export import export_onnx
from hfcompress.quantization import BnbConfig, PTQConfig, QATConfig, load_bnb, quantize_bnb, quantize_onnx
from hfcompress.quantization.qat import QUANTIZATION_FILE, fold_qat, prepare_qat, save_qat_ranges
from hfcompress.quantization.tensorrt import (
    build_tensorrt_engine,
    check_tensorrt_qdq,
    tensorrt_provider_options,
    trtexec_command,
)

from hfcompress.utils.imports import optimum_onnx_missing
from tests.conftest import assert_compression_summary

# graphs from both exporters where Optimum's is installed; the default one of this environment otherwise
BACKENDS = ["dynamo", pytest.param("optimum", marks=pytest.mark.requires_optimum)]
DEFAULT_BACKEND = "dynamo" if optimum_onnx_missing() else "optimum"


def _export(model_dir, out, backend=DEFAULT_BACKEND):
    """``model_dir`` exported to ``out`` (model.onnx with its config and tokenizer); returns ``out``."""
    return export_onnx(model_dir, out, backend=backend, batch_sizes=[2], sequence_lengths=[16]).parent


def _initializer_types(path, part):
    """Data types of the initializers whose name contains ``part`` (both exporters keep the module path in embedding names)."""
    return {t.data_type for t in onnx.load(str(path)).graph.initializer if part in t.name}


def _integer_matmul_weight_types(path):
    """Data types of the weights the integer MatMuls read."""
    graph = onnx.load(str(path)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    return {types[n.input[1]] for n in graph.node if n.op_type == "MatMulInteger" and n.input[1] in types}


def _linear_input_scales(path):
    """Scale of each activation DequantizeLinear read by a MatMul/Gemm (a Linear input), by tensor."""
    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    scales = {}
    for node in graph.node:
        dq = producer.get(node.input[0]) if node.op_type in ("MatMul", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in values:
            scales[dq.input[0]] = float(values[dq.input[1]])
    return scales


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _session_logits(path, tokenizer, texts):
    """The first output (logits, or last_hidden_state) of an ONNX model on ``texts``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]


@pytest.fixture
def tiny_data(tiny_sst2_dir):
    return TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_int8_quantizes_every_linear_and_embeddings_only_when_asked(tiny_teacher_dir, tmp_path, backend):
    onnx_dir = _export(tiny_teacher_dir, tmp_path / "fp32", backend)
    plain = quantize_onnx(onnx_dir, tmp_path / "dyn")
    ops = _ops(plain)
    # 4 layers x (q, k, v, attention output, intermediate, output) + pooler + classifier; attention's Q·Kᵀ and softmax·V stay fp32
    assert ops.count("MatMulInteger") == 4 * 6 + 2 and ops.count("MatMul") == 4 * 2
    info = json.loads((tmp_path / "dyn" / QUANTIZATION_FILE).read_text())
    assert info["method"] == "dynamic" and info["weights"] == "uint8 symmetric per-channel" and not info["embeddings_quantized"]
    assert assert_compression_summary(tmp_path / "dyn", "dynamic").settings["weights"] == info["weights"]
    assert info["quantizer"]["function"] == "onnxruntime.quantization.quantize_dynamic" and info["quantizer"]["weight_type"] == "QUInt8"
    assert _integer_matmul_weight_types(plain) == {onnx.TensorProto.UINT8}  # avx2: uint8 weights, as recorded
    assert _initializer_types(plain, "word_embeddings") == {onnx.TensorProto.FLOAT}
    assert {p.name for p in (tmp_path / "dyn").iterdir()} >= {"model_quantized.onnx", "config.json", "tokenizer_config.json", QUANTIZATION_FILE}

    with_emb = quantize_onnx(onnx_dir, tmp_path / "dyn-emb", PTQConfig(quantize_embeddings=True, preset="avx512_vnni"))
    assert onnx.TensorProto.UINT8 in _initializer_types(with_emb, "word_embeddings")  # embeddings: uint8 asymmetric per tensor
    assert _integer_matmul_weight_types(with_emb) == {onnx.TensorProto.INT8}  # avx512_vnni: int8 weights
    assert with_emb.stat().st_size < 0.5 * plain.stat().st_size  # the embeddings dominate this tiny model
    with_attention = quantize_onnx(onnx_dir, tmp_path / "dyn-att", PTQConfig(quantize_attention_matmuls=True))
    assert _ops(with_attention).count("MatMulInteger") == 4 * 8 + 2
    with pytest.raises(ConfigError, match="already exists"):
        quantize_onnx(onnx_dir, tmp_path / "dyn")


def test_4bit_embeddings_halve_the_tables_and_keep_the_outputs(tiny_teacher_dir, tokenizer, tmp_path):
    texts = ["a good film", "so dull and long", "great fun all along", "no way"]
    fp32 = _export(tiny_teacher_dir, tmp_path / "fp32") / "model.onnx"
    int8 = quantize_onnx(fp32.parent, tmp_path / "emb8", PTQConfig(quantize_embeddings=True))
    int4 = quantize_onnx(fp32.parent, tmp_path / "emb4", PTQConfig(quantize_embeddings=True, embedding_bits=4, embedding_block_size=32))
    ops = _ops(int4)
    assert ops.count("GatherBlockQuantized") == 3 and "Gather" in ops  # word, position, token-type tables; index Gathers stay
    assert ops.count("MatMulInteger") == _ops(int8).count("MatMulInteger")  # the Linear layers are int8 either way
    types = {t.name: t.data_type for t in onnx.load(str(int4)).graph.initializer if "word_embeddings" in t.name}
    assert onnx.TensorProto.INT4 in types.values() and onnx.TensorProto.UINT8 not in types.values()
    vocab_bytes = tokenizer.vocab_size * 32
    # a value costs 1 byte in int8 and 0.5 byte + one float32 scale per 32 values (0.625 byte) in int4
    assert int8.stat().st_size - int4.stat().st_size > 0.35 * vocab_bytes
    info = json.loads((tmp_path / "emb4" / QUANTIZATION_FILE).read_text())
    assert info["embedding_bits"] == 4 and info["embedding_block_size"] == 32
    reference, logits8, logits4 = (_session_logits(p, tokenizer, texts) for p in (fp32, int8, int4))
    # 4-bit tables add error on top of int8, but stay close to the float model
    assert np.abs(logits4 - reference).max() < 0.2 * np.abs(reference).max() + 1e-3
    assert np.abs(logits4 - logits8).max() > 0  # the tables really changed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embedding_bits=4), "quantize_embeddings"),
        (dict(quantize_embeddings=True, embedding_bits=4, preset="tensorrt", mode="static"), "TensorRT"),
        (dict(quantize_embeddings=True, embedding_bits=4, embedding_block_size=24), "power of 2"),
        (dict(quantize_embeddings=True, embedding_bits=2), "8 or 4"),
    ],
)
def test_4bit_embedding_settings_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PTQConfig(**kwargs)


def test_static_needs_data_before_any_work(tiny_teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="calibration data"):
        quantize_onnx(tiny_teacher_dir, tmp_path / "s", PTQConfig(mode="static"))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_int8_calibrates_on_a_split(tiny_teacher_dir, tiny_data, tmp_path, method):
    out = quantize_onnx(_export(tiny_teacher_dir, tmp_path / "fp32"), tmp_path / method, PTQConfig(mode="static", calibration_method=method, calibration_samples=16), tiny_data)
    ops = _ops(out)
    assert ops.count("QuantizeLinear") > 0 and "MatMulInteger" not in ops
    info = json.loads((tmp_path / method / QUANTIZATION_FILE).read_text())
    assert info["calibration"]["method"] == method and info["calibration"]["samples"] == 16 and info["calibration"]["split"] == "train"
    assert info["quantizer"]["calibrate_method"] == {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}[method]
    assert assert_compression_summary(tmp_path / method, "static").settings["calibration"] == info["calibration"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_qdq_is_only_where_linear_layers_read(tiny_teacher_dir, tiny_data, tmp_path, backend):
    """By default every activation Q/DQ feeds a MatMul/Gemm: residual additions and Linear outputs (the logits too)
    stay float, as QAT simulates, and ONNX Runtime runs each Linear as an integer MatMul with a float output.
    linear_inputs_only=False keeps ONNX Runtime's graph, which requantizes every output."""
    import onnxruntime as ort

    def graph_facts(path):
        graph = onnx.load(str(path)).graph
        producer = {out: node.op_type for node in graph.node for out in node.output}
        dq_consumers = {node.op_type for node in graph.node for i in node.input if producer.get(i) == "DequantizeLinear"}
        requantized = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) in ("MatMul", "Gemm")]
        return dq_consumers, requantized, producer["logits"]

    onnx_dir = _export(tiny_teacher_dir, tmp_path / "fp32", backend)
    trimmed = quantize_onnx(onnx_dir, tmp_path / "trimmed", PTQConfig(mode="static", calibration_samples=8), tiny_data)
    dq_consumers, requantized, logits_from = graph_facts(trimmed)
    assert dq_consumers == {"MatMul", "Gemm"} and not requantized and logits_from == "Gemm"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(trimmed), options, providers=["CPUExecutionProvider"])
    optimized = _ops(tmp_path / "optimized.onnx")
    assert optimized.count("MatMulIntegerToFloat") == 4 * 6 and "QLinearMatMul" not in optimized
    assert json.loads((tmp_path / "trimmed" / QUANTIZATION_FILE).read_text())["qdq"] == "linear inputs only"

    config = PTQConfig(mode="static", calibration_samples=8, linear_inputs_only=False)
    full = quantize_onnx(onnx_dir, tmp_path / "full", config, tiny_data)
    dq_consumers, requantized, logits_from = graph_facts(full)
    assert {"Add", "LayerNormalization"} & dq_consumers and len(requantized) >= 4 * 6 + 2 and logits_from == "DequantizeLinear"
    assert json.loads((tmp_path / "full" / QUANTIZATION_FILE).read_text())["qdq"] == "onnxruntime"


def _qat_checkpoint(tiny_teacher_dir, model_dir):
    """A copy of the tiny teacher with the files QAT (avx2, static) saves beside it, every Linear input range [-8, 4]."""
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(tiny_teacher_dir, model_dir)
    save_fixed_qat_ranges(AutoModelForSequenceClassification.from_pretrained(model_dir), model_dir)
    return model_dir


def save_fixed_qat_ranges(model, model_dir) -> None:
    """Prepare ``model`` for QAT (avx2, static), set every Linear input range to [-8, 4] and save the ranges to ``model_dir``."""
    config = QATConfig(preset="avx2", mode="static")
    prepare_qat(model, config)
    for m in model.modules():
        if hasattr(m, "input_min"):
            m.input_min.fill_(-8.0)
            m.input_max.fill_(4.0)
    save_qat_ranges(model_dir, fold_qat(model), config)


def _check_qat_ranges_used(out, output_dir):
    """Every Linear input's QDQ scale follows the QAT range (all [-8, 4]), and quantization.json counts them."""
    scales = _linear_input_scales(out)
    assert len(scales) == 4 * 4 + 2  # per layer: q/k/v's shared input, attention output, intermediate, output; pooler, classifier
    assert all(scale == pytest.approx(12.0 / 255, rel=1e-6) for scale in scales.values())  # uint8 asymmetric over [-8, 4]
    assert json.loads((output_dir / QUANTIZATION_FILE).read_text())["calibration"]["qat_ranges_used"] == len(scales)


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_uses_qat_ranges_for_linear_inputs(tiny_teacher_dir, tiny_data, tmp_path, backend):
    """Ranges saved by QAT replace the calibrated ones, matched to either exporter's MatMul/Gemm nodes."""
    model_dir = _qat_checkpoint(tiny_teacher_dir, tmp_path / "qat-model")
    onnx_dir = _export(model_dir, tmp_path / "onnx", backend)
    out = quantize_onnx(onnx_dir, tmp_path / "static", PTQConfig(mode="static", calibration_samples=8), tiny_data)
    _check_qat_ranges_used(out, tmp_path / "static")
    calibrated = quantize_onnx(onnx_dir, tmp_path / "calibrated", PTQConfig(mode="static", calibration_samples=8, qat_ranges=False), tiny_data)
    assert not any(scale == pytest.approx(12.0 / 255, rel=1e-6) for scale in _linear_input_scales(calibrated).values())


def test_qat_ranges_matching_no_layer_fail_and_unmatched_ones_are_reported(tiny_teacher_dir, tiny_data, tmp_path, caplog):
    """A QAT checkpoint whose ranges reach no node must not quietly ship calibrated ranges."""
    from safetensors.torch import load_file, save_file

    from hfcompress.quantization.qat import RANGES_FILE

    onnx_dir = _export(_qat_checkpoint(tiny_teacher_dir, tmp_path / "qat-model"), tmp_path / "onnx")
    ranges = load_file(str(onnx_dir / RANGES_FILE))
    extra = {k.replace("layer.0.", "layer.9."): v.clone() for k, v in ranges.items() if ".layer.0.attention.self.query." in k}
    save_file({**ranges, **extra}, str(onnx_dir / RANGES_FILE))
    with caplog.at_level("WARNING", logger="hfcompress"):
        quantize_onnx(onnx_dir, tmp_path / "partial", PTQConfig(mode="static", calibration_samples=8), tiny_data)
    calibration = json.loads((tmp_path / "partial" / QUANTIZATION_FILE).read_text())["calibration"]
    assert calibration["qat_layers_unmatched"] == ["bert.encoder.layer.9.attention.self.query"] and calibration["qat_ranges_used"] == 18
    assert "bert.encoder.layer.9.attention.self.query" in caplog.text

    save_file(extra, str(onnx_dir / RANGES_FILE))
    with pytest.raises(ModelError, match="none of the 1 QAT ranges"):
        quantize_onnx(onnx_dir, tmp_path / "none", PTQConfig(mode="static", calibration_samples=8), tiny_data)
    assert not (tmp_path / "none").exists()


def test_export_carries_qat_ranges_to_static_int8(tiny_teacher_dir, tiny_data, tmp_path):
    """finetune(+qat) -> export -> quantize(static): the export holds the QAT files, so int8 uses (and is checked against) them."""
    from hfcompress.quantization.qat import RANGES_FILE
    from hfcompress.recipes.stages.quantize import check_matches_qat, qat_scheme_of

    model_dir = _qat_checkpoint(tiny_teacher_dir, tmp_path / "qat-model")
    export_dir = tmp_path / "onnx"
    _export(model_dir, export_dir)
    for name in (RANGES_FILE, QUANTIZATION_FILE):
        assert (export_dir / name).read_bytes() == (model_dir / name).read_bytes()
    assert assert_compression_summary(export_dir, "qat") == assert_compression_summary(model_dir, "qat")
    out = quantize_onnx(export_dir, tmp_path / "static", PTQConfig(mode="static", calibration_samples=8), tiny_data)
    _check_qat_ranges_used(out, tmp_path / "static")

    assert qat_scheme_of(export_dir) == ("avx2", "static")
    check_matches_qat(str(export_dir), qat_scheme_of(export_dir), PTQConfig(preset="avx2", mode="static"))
    with pytest.raises(ConfigError, match="trained with QAT for preset 'avx2'"):
        check_matches_qat(str(export_dir), qat_scheme_of(export_dir), PTQConfig(preset="avx512_vnni", mode="static"))

    plain = tmp_path / "plain-onnx"  # a checkpoint without QAT exports without them
    _export(tiny_teacher_dir, plain)
    assert not (plain / RANGES_FILE).exists() and not (plain / QUANTIZATION_FILE).exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensorrt_qdq_graph_structure(tiny_teacher_dir, tiny_data, tmp_path, backend):
    onnx_dir = _export(tiny_teacher_dir, tmp_path / "fp32", backend)
    out = quantize_onnx(onnx_dir, tmp_path / "trt", PTQConfig(mode="static", preset="tensorrt", calibration_samples=8), tiny_data)
    report = check_tensorrt_qdq(out)
    assert report["quantized_matmuls"] == 4 * 6 + 2 and len(report["float_matmuls"]) == 4 * 2  # attention matmuls in fp32 by default
    assert report["per_channel_weights"] == 4 * 6 + 2  # every Linear weight has one scale per output channel
    graph = onnx.load(str(out)).graph
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in graph.initializer)  # biases stay float for TensorRT
    info = json.loads((tmp_path / "trt" / QUANTIZATION_FILE).read_text())
    assert info["weights"] == "int8 symmetric per-channel" and info["activations"].startswith("int8 symmetric")
    assert "--int8" in info["tensorrt"]["trtexec"] and "input_ids:32x128" in info["tensorrt"]["trtexec"]
    assert info["tensorrt"]["onnxruntime_provider_options"] == tensorrt_provider_options()
    # the dynamic (MatMulInteger) graph is not TensorRT-ready
    dynamic = quantize_onnx(onnx_dir, tmp_path / "dyn")
    with pytest.raises(ModelError, match="ONNX Runtime-only"):
        check_tensorrt_qdq(dynamic)


def test_trtexec_command_reads_graph_inputs(tiny_teacher_dir, tmp_path):
    path = _export(tiny_teacher_dir, tmp_path / "onnx") / "model.onnx"
    cmd = trtexec_command(path, max_batch=8, max_length=64)
    max_shapes = cmd.split("--maxShapes=")[1].split()[0].split(",")
    assert cmd.startswith("trtexec --onnx=") and sorted(max_shapes) == ["attention_mask:8x64", "input_ids:8x64", "token_type_ids:8x64"]


def test_tensorrt_engine_builds_where_tensorrt_and_a_gpu_exist(tiny_teacher_dir, tiny_data, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU on this machine or in CI)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU; none is visible")
    out = quantize_onnx(_export(tiny_teacher_dir, tmp_path / "fp32"), tmp_path / "trt", PTQConfig(mode="static", preset="tensorrt", calibration_samples=8), tiny_data)
    engine = build_tensorrt_engine(out, tmp_path / "model.plan", max_batch=4, max_length=32)
    assert engine.stat().st_size > 0 and trt is not None


def _export_encoder(model_dir, out, backend):
    """A pre-trained encoder's ``last_hidden_state`` as ONNX: Optimum's feature-extraction export, or torch.onnx.export(dynamo=True)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if backend == "optimum":
        from optimum.exporters.onnx import main_export

        main_export(str(model_dir), output=str(out), task="feature-extraction", do_validation=False)
        return out / "model.onnx"
    model, tokenizer = AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(["a first sentence", "and a longer second one"], padding=True, return_tensors="pt")
    names = list(sample.keys())

    class Encoder(torch.nn.Module):
        def forward(self, *inputs):
            return model(**dict(zip(names, inputs))).last_hidden_state

    dims = {0: "batch_size", 1: "sequence_length"}
    program = torch.onnx.export(Encoder(), tuple(sample.values()), dynamo=True, input_names=names, output_names=["last_hidden_state"],
                                dynamic_shapes=(tuple(dims for _ in names),))
    out.mkdir(parents=True)
    program.save(str(out / "model.onnx"))
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out / "model.onnx"


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_onnx_agrees_with_fp32_on_real_sentences(minilm_path, sst2_path, tmp_path, backend):
    """Pre-trained MiniLM on 16 SST-2 dev sentences: the dynamic int8 (avx2) encoder output stays close to fp32, from either exporter.

    Stated tolerance, over the non-padding tokens of ``last_hidden_state``: relative error
    ||int8 - fp32|| / ||fp32|| <= 0.20, mean token cosine similarity >= 0.98 and every token's >= 0.95
    (measured: 0.145, 0.990, 0.977). The classifier head of this checkpoint is untrained, so its logits would
    say nothing; the trained student's int8 accuracy is in benchmarks/results/quantization_sst2.md.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    fp32 = _export_encoder(minilm_path, tmp_path / "fp32", backend)
    int8 = quantize_onnx(fp32.parent, tmp_path / "int8")
    texts = [line.split("\t")[0] for line in (sst2_path / "dev.tsv").read_text().splitlines()[1:17]]
    a, b = _session_logits(fp32, tokenizer, texts), _session_logits(int8, tokenizer, texts)
    keep = tokenizer(texts, padding=True, return_tensors="np")["attention_mask"].astype(bool)
    a, b = a[keep], b[keep]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 0.20
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.95


def test_bnb_8bit_and_4bit_save_and_reload_on_cpu(tiny_teacher_dir, tmp_path):
    import bitsandbytes as bnb

    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    from transformers import AutoModelForSequenceClassification

    fp32 = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    expected = fp32(input_ids=ids).logits
    # the tiny model's 32-wide layers are too narrow for 4-bit CPU blocks; its 64-to-32 FFN output fits
    for config, layer_type, module in (
        (BnbConfig(bits=8), bnb.nn.Linear8bitLt, "attention.self.query"),
        (BnbConfig(bits=4, quant_type="nf4", double_quant=True), bnb.nn.Linear4bit, "output.dense"),
    ):
        out = quantize_bnb(tiny_teacher_dir, tmp_path / f"bnb{config.bits}", config)
        info = json.loads((out / QUANTIZATION_FILE).read_text())
        assert info["method"] == f"bnb-{config.bits}bit" and info["onnx_exportable"] is False
        summary = assert_compression_summary(out, info["method"])
        assert summary.results["memory_footprint_bytes"] == info["memory_footprint_bytes"] and ("4-bit" in summary.tags) == (config.bits == 4)
        reloaded = load_bnb(out, config).eval()
        assert isinstance(reloaded.bert.encoder.layer[0].get_submodule(module), layer_type)
        assert type(reloaded.classifier) is torch.nn.Linear  # the output head stays in full precision on transformers 4.x and 5
        assert reloaded.get_memory_footprint() < fp32.get_memory_footprint()
        got = reloaded(input_ids=ids).logits.float()
        assert torch.allclose(got, expected, atol=0.05)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    "exclude_modules, expected",
    [
        # a regex matches whole names and replaces the default: the classifier is quantized with the rest (where it fits)
        (r"bert\.encoder\.layer\.[01]\.output\.dense", ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]),
        # a list matches names equal to an entry or ending in "." + it; "output.dense" alone would take attention.output.dense too
        (["layer.0.output.dense", "classifier"], ["bert.encoder.layer.0.output.dense", "classifier"]),
    ],
    ids=["regex", "suffix-list"],
)
def test_bnb_exclude_modules_keep_exactly_the_selected_linear_layers(tiny_teacher_dir, bits, exclude_modules, expected):
    """bitsandbytes takes the one target syntax (hfcompress.targets), resolved to exact names before transformers sees them."""
    import bitsandbytes as bnb

    quantized_type = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    model = load_bnb(tiny_teacher_dir, BnbConfig(bits=bits, exclude_modules=exclude_modules)).eval()
    unfit = model.hfc_bnb_unfit_modules  # 4 bits: layers too narrow for the CPU blocks stay unquantized as well
    assert model.hfc_bnb_skipped_modules == expected + unfit and not set(expected) & set(unfit)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for n, m in linears.items() if type(m) is torch.nn.Linear} == set(expected) | set(unfit)
    quantized = {n for n, m in linears.items() if isinstance(m, quantized_type)}
    assert quantized == set(linears) - set(expected) - set(unfit) and "bert.encoder.layer.2.output.dense" in quantized
    assert ("classifier" in quantized) == (bits == 8 and "classifier" not in expected)
    assert torch.isfinite(model(input_ids=torch.tensor([[101, 2023, 3185, 102]])).logits).all()


def test_bnb_exclude_modules_fail_early_and_the_old_key_points_to_the_new_one(tiny_teacher_dir):
    from hfcompress.recipes.schema import from_dict

    with pytest.raises(ConfigError, match=r"did you mean 'exclude_modules'"):
        from_dict(BnbConfig, {"bits": 4, "skip_modules": ["classifier"]}, "stages[0].bnb")
    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        BnbConfig(exclude_modules="layer.(")
    with pytest.raises(ConfigError, match=r"exclude_modules=\['pooler.densee'\] match no Linear/Conv1D layer of BertForSequenceClassification"):
        load_bnb(tiny_teacher_dir, BnbConfig(exclude_modules=["pooler.densee"]))


def test_bnb_4bit_keeps_layers_the_cpu_kernel_cannot_pack_on_either_cpu_path(tiny_teacher_dir, tmp_path, caplog):
    """AVX-512 CPUs repack every Linear4bit at its first forward; layers narrower than a 64-block made that fail.

    The repacking is plain torch code, so it is run here on every 4-bit layer whatever CPU runs the
    test; the forward pass then runs this CPU's own path.
    """
    import copy

    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from hfcompress.quantization.bnb import fits_cpu_4bit

    with caplog.at_level("WARNING", logger="hfcompress"):
        model = load_bnb(tiny_teacher_dir, BnbConfig(bits=4)).eval()
    four_bit = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    kept = model.hfc_bnb_unfit_modules
    assert four_bit and "bert.encoder.layer.0.attention.self.query" in kept and "bert.encoder.layer.0.output.dense" in four_bit
    assert "stay in float32" in caplog.text and "bert.encoder.layer.0.attention.self.query" in caplog.text
    for name in kept:
        layer = model.get_submodule(name)
        assert type(layer) is torch.nn.Linear and not fits_cpu_4bit(layer)
    for name, layer in four_bit.items():  # the AVX-512 path's repacking succeeds on every quantized layer
        packed, state = _convert_weight_packed_for_cpu(layer.weight.data.clone(), copy.deepcopy(layer.weight.quant_state))
        assert state.packing_format_for_cpu and packed.shape == (layer.out_features, layer.in_features // 2)
    # what used to happen: a 32-wide layer quantized to 4 bits cannot be repacked
    narrow = bnb.nn.Params4bit(torch.randn(32, 32), requires_grad=False, quant_type="nf4").to("cpu")
    with pytest.raises(RuntimeError, match=r"shape '\[32, 0\]' is invalid"):
        _convert_weight_packed_for_cpu(narrow.data.clone(), copy.deepcopy(narrow.quant_state))
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_quantize_stage_after_qat_training_in_a_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.recipes import run_recipe
    from hfcompress.recipes.recipe import load_recipe

    recipe = {
        "name": "qat", "output_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "finetune", "name": "qat_model", "model": str(tiny_teacher_dir),
             "training": {"max_steps": 3, "per_device_train_batch_size": 16, "save_strategy": "no", "use_cpu": True},
             "callbacks": [{"type": "qat", "preset": "avx2", "mode": "static", "start_step": 1}]},
            {"stage": "export", "name": "onnx", "model": "qat_model", "backend": DEFAULT_BACKEND, "batch_sizes": [2], "sequence_lengths": [16]},
            {"stage": "quantize", "name": "int8", "model": "onnx", "onnx": {"mode": "static", "calibration_samples": 8}},
            {"stage": "quantize", "name": "bnb4", "model": "qat_model", "backend": "bitsandbytes", "bnb": {"bits": 4}},
        ],
    }
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    outputs = run_recipe(path)
    assert (outputs["qat_model"] / "qat_ranges.safetensors").exists()
    info = json.loads((outputs["int8"] / QUANTIZATION_FILE).read_text())
    assert info["calibration"]["qat_ranges_used"] > 0 and (outputs["int8"] / "model_quantized.onnx").exists()
    assert json.loads((outputs["bnb4"] / QUANTIZATION_FILE).read_text())["method"] == "bnb-4bit"

    recipe["stages"][2]["onnx"]["mode"] = "dynamic"  # QAT simulated static: quantizing dynamically is refused
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="trained with QAT"):
        run_recipe(path, overwrite=True)
    recipe["stages"][0]["callbacks"][0]["preset"] = "avx3"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="did you mean 'avx2'"):
        load_recipe(path)


@pytest.mark.slow
def test_bench_quantization_smoke(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    """The benchmark's code path end to end on a tiny model and a few sentences."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_quantization", Path(__file__).parents[1] / "scripts" / "bench_quantization.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results" / "q"
    bench.main([
        "--student", str(tiny_teacher_dir), "--teacher", str(tiny_teacher_dir), "--data", str(tiny_sst2_dir), "--max-length", "32",
        "--qat-train-samples", "32", "--qat-max-steps", "2", "--calibration-samples", "8", "--calibration-methods", "minmax",
        "--latency-sentences", "4", "--repeats", "1", "--teacher-cache-dir", str(tmp_path / "cache"),
        "--work-dir", str(tmp_path / "work"), "--output", str(out), "--qat-seeds", "1", "2",
    ])
    result = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in result["variants"]]
    assert "fp32 ONNX Runtime" in names and "QAT static (seed 1) -> static int8" in names and "bnb 8-bit" in names
    assert not any("seed 2" in name for name in names)  # later seeds give accuracies only
    runs, summary = result["qat"]["runs"], result["qat"]["summary"]
    assert [r["seed"] for r in runs] == [1, 2] and summary["static"]["student_ptq_int8"] == result["student_ptq"]["static"]
    assert summary["dynamic"]["qat_int8"] == pytest.approx((runs[0]["qat_dynamic dynamic int8"] + runs[1]["qat_dynamic dynamic int8"]) / 2)
    assert "QAT against PTQ, 2 training seed(s)" in out.with_suffix(".md").read_text()
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["size_mb"] > 0 for r in result["variants"])
    assert out.with_suffix(".md").read_text().count("|") > 20 and out.with_suffix(".png").stat().st_size > 0
