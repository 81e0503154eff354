"""QAT: fake quantization against ONNX Runtime's own arithmetic, straight-through gradients, pruned zeros, callback checkpoints."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from hfcompress.errors import ConfigError
from hfcompress.quantization.config import INT8_SYMMETRIC, UINT8_ASYMMETRIC, UINT8_SYMMETRIC, PTQConfig, QATConfig, ort_scheme
from hfcompress.quantization.qat import (
    QUANTIZATION_FILE,
    RANGES_FILE,
    FakeQuantLinear,
    QATCallback,
    activation_qparams,
    fake_quant_modules,
    fake_quantize,
    load_qat_ranges,
    prepare_qat,
)

from tests.conftest import assert_compression_summary, tiny_bert_config


def _ort_weight_reference(weight: np.ndarray, qtype) -> np.ndarray:
    """Per-row quantize-dequantize by onnxruntime.quantization's own quantize_data (symmetric weights)."""
    from onnxruntime.quantization.quant_utils import quantize_data

    rows = []
    for row in weight:
        zero_point, scale, q = quantize_data(row, qtype, symmetric=True)
        rows.append((q.astype(np.float64) - float(zero_point)) * float(scale))
    return np.stack(rows)


@pytest.mark.parametrize("preset", ["avx2", "avx512_vnni"])
def test_weight_fake_quant_matches_onnxruntime_quantize_data(preset):
    from onnx import TensorProto

    torch.manual_seed(0)
    linear = nn.Linear(48, 16)
    linear.weight.data[3] = 0.0  # an all-zero (pruned) row
    scheme = ort_scheme(preset, "dynamic")
    fq = FakeQuantLinear(linear, scheme, momentum=0.01)
    qtype = TensorProto.UINT8 if scheme.weights is UINT8_SYMMETRIC else TensorProto.INT8
    expected = _ort_weight_reference(linear.weight.detach().numpy(), qtype)
    np.testing.assert_allclose(fq.quantized_weight().detach().numpy(), expected, rtol=0, atol=1e-7)
    assert len(np.unique(np.round(fq.quantized_weight().detach().numpy()[0] / expected[0].max(), 6))) <= 255


def test_activation_fake_quant_matches_dynamic_quantize_linear():
    """The dynamic activation simulation equals ONNX Runtime's DynamicQuantizeLinear followed by DequantizeLinear."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 7, 32])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 7, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    x = torch.randn(4, 7, 32) * 3 + 0.5
    (expected,) = session.run(None, {"x": x.numpy()})
    scale, zero_point = activation_qparams(x.amin(), x.amax(), UINT8_ASYMMETRIC)
    got = fake_quantize(x, scale, zero_point, UINT8_ASYMMETRIC)
    # one representable step of slack: ORT computes the scale in float32, we round x/scale in float32 too
    step = float(scale)
    assert np.mean(np.abs(got.numpy() - expected) < 1e-6) > 0.999
    assert np.max(np.abs(got.numpy() - expected)) <= step + 1e-6


def test_fake_quant_on_fixed_tensor_matches_hand_computed_values():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.26, 1.0, 3.0])
    scale, zero_point = torch.tensor(1.0 / 127), torch.tensor(0.0)
    got = fake_quantize(x, scale, zero_point, INT8_SYMMETRIC)
    expected = torch.tensor([-127, -64, 0, 33, 127, 127]) / 127  # -63.5 rounds half-to-even to -64; 3.0 saturates
    torch.testing.assert_close(got, expected.float())


def test_straight_through_gradient_inside_range_and_zero_where_saturated():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.7, 2.0], requires_grad=True)
    scale, zero_point = activation_qparams(torch.tensor(-1.0), torch.tensor(1.0), INT8_SYMMETRIC)
    fake_quantize(x, scale, zero_point, INT8_SYMMETRIC).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_gradients_reach_weights_and_inputs_through_fake_quant_linear():
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    fq = FakeQuantLinear(linear, ort_scheme("avx2", "dynamic"), momentum=0.01)
    x = torch.randn(3, 8, requires_grad=True)
    fq(x).pow(2).sum().backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert fq.weight is linear.weight  # same Parameter: the optimizer keeps training it


@pytest.mark.parametrize("preset", ["avx2", "avx512_vnni", "tensorrt"])
def test_pruned_zero_weights_stay_exactly_zero(preset):
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    mask = torch.rand_like(linear.weight) < 0.5
    linear.weight.data[mask] = 0.0
    fq = FakeQuantLinear(linear, ort_scheme(preset, "static" if preset == "tensorrt" else "dynamic"), momentum=0.01)
    assert torch.all(fq.quantized_weight()[mask] == 0.0)


def test_state_dict_of_prepared_model_is_that_of_the_plain_model():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config(100))
    keys = set(model.state_dict())
    names = prepare_qat(model, QATConfig(exclude_modules=[r"classifier"]))
    assert "classifier" not in names and "bert.encoder.layer.0.attention.self.query" in names
    assert set(model.state_dict()) == keys


def test_model_prepared_in_eval_mode_keeps_its_ranges_at_inference():
    """prepare_qat on an eval-mode model (reloading a QAT checkpoint to simulate it) must not move the restored ranges."""
    from transformers import BertForSequenceClassification

    from hfcompress.quantization.qat import restore_qat_ranges

    model = BertForSequenceClassification(tiny_bert_config(100)).eval()
    names = prepare_qat(model, QATConfig(mode="static"))
    assert restore_qat_ranges(model, {name: (-2.0, 3.0) for name in names}) == len(names)
    assert not any(m.training for m in fake_quant_modules(model).values())
    with torch.no_grad():
        model(input_ids=torch.randint(0, 100, (2, 9)))
    assert all((float(m.input_min), float(m.input_max)) == (-2.0, 3.0) for m in fake_quant_modules(model).values())
    model.train()  # and training mode still observes
    model(input_ids=torch.randint(0, 100, (2, 9)))
    assert any(float(m.input_min) != -2.0 for m in fake_quant_modules(model).values())


def test_config_errors_are_one_line_and_name_the_fix():
    with pytest.raises(ConfigError, match="did you mean 'avx2'"):
        QATConfig(preset="avx")
    with pytest.raises(ConfigError, match="static only"):
        PTQConfig(preset="tensorrt", mode="dynamic")
    with pytest.raises(ConfigError, match="no Linear/Conv2d layer"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2)), QATConfig(target_modules=["nothing"]))


def _tiny_train_set(tokenizer, n=32):
    from datasets import Dataset

    texts = ["a gripping , funny film", "dull and far too long", "I loved every minute", "a waste of time"] * (n // 4)
    enc = tokenizer(texts, truncation=True, max_length=16)
    return Dataset.from_dict({**enc, "labels": [1, 0, 1, 0] * (n // 4)})


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_qat_callback_with_distillation_trainer_writes_plain_checkpoints_with_ranges(tmp_path, tokenizer, mode):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification, DataCollatorWithPadding

    from hfcompress import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    student = build_student_from_teacher(teacher, [0, 2])
    callback = QATCallback(QATConfig(start_step=2, mode=mode))
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8, save_strategy="steps", save_steps=3,
        report_to="none", disable_tqdm=True, learning_rate=1e-3, use_cpu=True,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=_tiny_train_set(tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback],
    )
    trainer.train()
    assert not fake_quant_modules(student)  # folded at the end of training
    trainer.save_model(str(tmp_path / "final"))
    callback.write_artifacts(tmp_path / "final")
    for directory in (tmp_path / "out" / "checkpoint-3", tmp_path / "out" / "checkpoint-6", tmp_path / "final"):
        reloaded = AutoModelForSequenceClassification.from_pretrained(directory)
        assert not any(isinstance(m, FakeQuantLinear) for m in reloaded.modules())
        assert all(type(m) is nn.Linear for n, m in reloaded.named_modules() if n.endswith("query"))
        ranges = load_qat_ranges(directory)
        assert ranges and "bert.encoder.layer.0.attention.self.query" in ranges
        lo, hi = ranges["bert.encoder.layer.0.attention.self.query"]
        assert lo < 0 < hi
        info = json.loads((directory / QUANTIZATION_FILE).read_text())
        assert info["method"] == "qat" and info["mode"] == mode and info["ranges_file"] == RANGES_FILE
        summary = assert_compression_summary(directory, "qat")
        assert summary.settings["mode"] == mode and "qat" in summary.tags
    torch.testing.assert_close(reloaded.state_dict()["classifier.weight"], student.state_dict()["classifier.weight"])



def test_resumed_qat_takes_observed_ranges_back_from_the_checkpoint(tmp_path, tokenizer):
    from types import SimpleNamespace

    from transformers import BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerControl, TrainingArguments

    def model():
        torch.manual_seed(0)
        return BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, num_hidden_layers=1))

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, save_strategy="steps",
                             save_steps=3, report_to="none", disable_tqdm=True, use_cpu=True)
    Trainer(model=model(), args=args, train_dataset=_tiny_train_set(tokenizer), data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[QATCallback(QATConfig(start_step=1, mode="static"))]).train()
    saved = load_qat_ranges(tmp_path / "out" / "checkpoint-3")

    resumed, callback = model(), QATCallback(QATConfig(start_step=1, mode="static"))
    callback.on_train_begin(args, SimpleNamespace(global_step=3), TrainerControl(), model=resumed)
    restored = {name: (float(m.input_min), float(m.input_max)) for name, m in fake_quant_modules(resumed).items()}
    # pytest.approx compares flat collections only (pytest 9.2 rejects nested ones): compare module by module
    assert restored.keys() == saved.keys() and all(restored[name] == pytest.approx(saved[name]) for name in saved)
    assert all(bool(m.observed) for m in fake_quant_modules(resumed).values())

def test_qat_callback_not_started_leaves_no_ranges(tmp_path, tokenizer):
    from transformers import BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, num_hidden_layers=1))
    callback = QATCallback(QATConfig(start_step=100))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, save_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=True)
    Trainer(model=model, args=args, train_dataset=_tiny_train_set(tokenizer), data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback]).train()
    callback.write_artifacts(tmp_path / "final")
    assert not (tmp_path / "final" / RANGES_FILE).exists()


@pytest.mark.parametrize(
    "preset, mode", [(p, m) for p in ("avx2", "avx512", "avx512_vnni", "arm64") for m in ("dynamic", "static")] + [("tensorrt", "static")]
)
def test_simulated_scheme_is_the_one_onnxruntime_is_asked_for(preset, mode):
    """QAT's scheme and the arguments the quantize stage passes onnxruntime.quantization agree on dtypes, symmetry, granularity and mode
    (tests/test_optimum_parity.py checks those arguments against Optimum's AutoQuantizationConfig presets)."""
    from onnxruntime.quantization import QuantType

    from hfcompress.quantization.onnx_ptq import ort_quantizer_arguments

    scheme = QATConfig(preset=preset, mode=mode).scheme
    arguments = ort_quantizer_arguments(PTQConfig(preset=preset, mode=mode))
    extra = arguments["extra_options"]
    assert (arguments["weight_type"] == QuantType.QUInt8) == (scheme.weights.dtype == "uint8") and extra["WeightSymmetric"] == scheme.weights.symmetric
    # dynamic activations are always uint8 (DynamicQuantizeLinear): quantize_dynamic takes no activation type
    assert (arguments.get("activation_type", QuantType.QUInt8) == QuantType.QUInt8) == (scheme.activations.dtype == "uint8")
    assert extra["ActivationSymmetric"] == scheme.activations.symmetric
    assert arguments["per_channel"] == scheme.per_channel and ("calibrate_method" in arguments) == (not scheme.dynamic_activations)
