"""Building a student by keeping teacher layers, for each architecture family."""

import pytest
import torch
from transformers import (
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hfcompress import ConfigError, build_student_from_teacher
from tests.conftest import tiny_bert_config

V = 120


def _models():
    return {
        "bert": (BertForSequenceClassification(tiny_bert_config(V)), "bert.encoder.layer"),
        "distilbert": (
            DistilBertForSequenceClassification(DistilBertConfig(vocab_size=V, dim=32, n_layers=4, n_heads=4, hidden_dim=64)),
            "distilbert.transformer.layer",
        ),
        "roberta": (
            RobertaForSequenceClassification(
                RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
            ),
            "roberta.encoder.layer",
        ),
        "gpt2": (GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=64)), "transformer.h"),
    }


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "gpt2"])
def test_student_keeps_the_chosen_layers_and_reloads(family, tmp_path):
    torch.manual_seed(0)
    teacher, prefix = _models()[family]
    student = build_student_from_teacher(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert type(student) is type(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        if key.startswith(prefix + ".1."):
            torch.testing.assert_close(value, t_state[key.replace(prefix + ".1.", prefix + ".3.")])
        elif key.startswith(prefix + ".0."):
            torch.testing.assert_close(value, t_state[key])
        else:
            torch.testing.assert_close(value, t_state[key])  # embeddings and head are the teacher's
    student.save_pretrained(tmp_path)
    reloaded = type(teacher).from_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 7, 9]])
    student.eval(), reloaded.eval()
    torch.testing.assert_close(student(ids).logits, reloaded(ids).logits)


def test_student_of_a_slimmed_teacher_keeps_its_layers_heads(tmp_path):
    """The kept layers' removed heads are renumbered with the layers, and the student reloads through load_model."""
    from hfcompress.modeling import load_model
    from hfcompress.pruning.structured import recorded_heads, slim

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(V)).eval()
    slim(teacher, {1: [0], 3: [1, 2]}, {})
    student = build_student_from_teacher(teacher, [0, 3]).eval()
    assert recorded_heads(student.config) == {1: [1, 2]}
    assert student.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    student.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(load_model(str(tmp_path), "text-classification").eval()(ids).logits, student(ids).logits)


@pytest.mark.parametrize("layers", [[], [0, 0], [4], [-1], [0.5]])
def test_bad_layer_choices_are_refused(layers):
    with pytest.raises(ConfigError, match="distinct integers"):
        build_student_from_teacher(BertForSequenceClassification(tiny_bert_config(V)), layers)
