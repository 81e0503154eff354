"""count_macs and macs_by_module: PyTorch's FLOP counter, checked on models whose MACs are known by hand or published."""

import pytest
import torch
from torch import nn

from hfcompress.errors import ModelError
from hfcompress.evaluation.macs import count_macs, macs_by_module
from hfcompress.models.cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification
from tests.conftest import tiny_bert_config


def conv_then_linear() -> nn.Module:
    # 3x3 conv 3 -> 8 channels on 16x16 (padding keeps 16x16), then a linear 2048 -> 10
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))


CONV_THEN_LINEAR_MACS = 16 * 16 * 8 * (3 * 3 * 3) + 8 * 16 * 16 * 10  # output pixels x kernel volume, + in x out


@pytest.mark.parametrize("batch", [1, 3])
def test_conv_and_linear_are_counted_as_by_hand(batch):
    assert count_macs(conv_then_linear(), torch.zeros(batch, 3, 16, 16)) == batch * CONV_THEN_LINEAR_MACS


def test_inputs_as_mapping_tuple_or_tensor_give_one_count():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = conv_then_linear()

        def forward(self, pixel_values):
            return self.body(pixel_values)

    x = torch.zeros(1, 3, 16, 16)
    model = Keyword()
    assert count_macs(model, {"pixel_values": x}) == count_macs(model, (x,)) == count_macs(model, x) == CONV_THEN_LINEAR_MACS


def test_macs_by_module_splits_the_same_count_by_layer():
    model = conv_then_linear()
    total, layers = macs_by_module(model, torch.zeros(2, 3, 16, 16))
    assert total == 2 * CONV_THEN_LINEAR_MACS
    assert layers == {"0": 2 * 16 * 16 * 8 * 27, "3": 2 * 8 * 16 * 16 * 10}  # the ReLU and Flatten are not of the types asked for
    assert macs_by_module(model, torch.zeros(1, 3, 16, 16), types=(nn.Linear,))[1] == {"3": 8 * 16 * 16 * 10}


def test_macs_by_module_names_the_layers_of_a_nested_model():
    model = CifarResNetForImageClassification(CifarResNetConfig.for_depth(20, stage_widths=[4, 8, 8], num_labels=3))
    x = {"pixel_values": torch.zeros(1, 3, 32, 32)}
    total, layers = macs_by_module(model, x)
    assert total == count_macs(model, x) == sum(layers.values())  # convolutions and the classifier are all it counts
    assert layers["resnet.stem.conv"] == 32 * 32 * 4 * 27 and layers["classifier"] == 8 * 3


def test_training_mode_is_restored_and_bad_inputs_are_refused():
    model = conv_then_linear().train()
    count_macs(model, torch.zeros(1, 3, 16, 16))
    assert model.training
    with pytest.raises(ModelError, match="mapping of keyword arguments"):
        count_macs(model, "an image")


def test_resnet56_has_the_published_125m_macs():
    model = CifarResNetForImageClassification(CifarResNetConfig.for_depth(56, num_labels=10))
    macs = count_macs(model, {"pixel_values": torch.zeros(1, 3, 32, 32)})
    assert macs == pytest.approx(125e6, rel=0.01)  # 0.125 GMACs (0.25 GFLOPs counted as 2 per MAC; "0.13 G" in the usual tables)


def test_halving_every_block_inner_width_halves_the_block_convs():
    # a block's conv1 (in -> w) and conv2 (w -> out) both scale with its inner width w; stem and classifier do not
    full = CifarResNetConfig.for_depth(20)
    half = CifarResNetConfig.for_depth(20, block_widths=[w // 2 for w in full.block_widths])
    x = {"pixel_values": torch.zeros(1, 3, 32, 32)}
    stem_and_head = 32 * 32 * 16 * 27 + 64 * 2
    blocks = count_macs(CifarResNetForImageClassification(full), x) - stem_and_head
    assert count_macs(CifarResNetForImageClassification(half), x) - stem_and_head == blocks // 2


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_text_model_counts_its_linears_and_attention_products(attention):
    config = tiny_bert_config(100, attn_implementation=attention)
    from transformers import BertForSequenceClassification

    batch, length = 2, 7
    ids = torch.randint(0, 100, (batch, length))
    macs = count_macs(BertForSequenceClassification(config), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_linears = layers * (4 * h * h + 2 * h * ffn)  # q, k, v, output; FFN in and out
    attention_products = layers * 2 * length * length * h  # Q K^T and (softmax) V over all heads
    pooler_and_classifier = h * h + h * config.num_labels
    assert macs == batch * (length * per_token_linears + attention_products + pooler_and_classifier)
