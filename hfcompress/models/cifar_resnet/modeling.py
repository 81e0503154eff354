"""The CIFAR ResNets as a transformers model: the same computation as the reference definition
(akamaster/pytorch_resnet_cifar10 ``resnet.py``), with widths read from the config so that pruned models reload."""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration import CifarResNetConfig


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BlockShape(NamedTuple):
    in_channels: int
    width: int  # the block's inner width: its first conv's outputs
    out_channels: int
    stride: int


def block_shapes(config: CifarResNetConfig) -> Iterator[list[BlockShape]]:
    """Each stage's blocks as the config sizes them: a stage's first block downsamples (except the first stage's)."""
    widths = iter(config.block_widths)
    in_channels = config.stage_widths[0]
    for index, (out_channels, blocks) in enumerate(zip(config.stage_widths, config.blocks_per_stage)):
        stage = []
        for block in range(blocks):
            stage.append(BlockShape(in_channels, next(widths), out_channels, 2 if index > 0 and block == 0 else 1))
            in_channels = out_channels
        yield stage


class CifarResNetStem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = _conv3x3(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(pixel_values)))


class CifarResNetBasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut, then relu. The option-A shortcut is parameter-free: it takes
    every ``stride``-th pixel and zero-pads the channels evenly on both sides (as the reference's ``F.pad``)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        padding = out_channels - in_channels
        self.channel_padding = (padding // 2, padding - padding // 2)

    def shortcut(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            hidden = hidden[:, :, :: self.stride, :: self.stride]
        if any(self.channel_padding):
            hidden = F.pad(hidden, (0, 0, 0, 0, *self.channel_padding))
        return hidden

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(hidden))


class CifarResNetPreTrainedModel(PreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    _no_split_modules = ["CifarResNetBasicBlock"]

    def record_pruned_widths(self) -> set[str]:
        """Filter pruning's hook: write each block's inner width (its first conv's outputs) into ``config.block_widths``, so
        that plain ``from_pretrained`` rebuilds the pruned blocks, and return the layers whose sizes the config now gives.

        A block's first conv reads, and its second conv writes, the stage width its config names; a layer whose stage
        channels were cut as well is left out of the returned names (so it stays recorded in ``pruned_channels``).
        """
        blocks = [(name, m) for name, m in self.named_modules() if isinstance(m, CifarResNetBasicBlock)]
        self.config.block_widths = [block.conv1.out_channels for _, block in blocks]
        shapes = [shape for stage in block_shapes(self.config) for shape in stage]
        sized = set()
        for (name, block), shape in zip(blocks, shapes):
            sized.add(f"{name}.bn1")
            if block.conv1.in_channels == shape.in_channels:
                sized.add(f"{name}.conv1")
            if block.conv2.out_channels == shape.out_channels:
                sized.add(f"{name}.conv2")
        return sized

    def _init_weights(self, module):
        # the reference's init: Kaiming normal (fan in) for conv and linear weights, torch's defaults otherwise
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                bound = 1 / module.in_features**0.5
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            nn.init.zeros_(module.running_mean)
            nn.init.ones_(module.running_var)


class CifarResNetModel(CifarResNetPreTrainedModel):
    """Stem and stages; returns the last feature map and its global average pool."""

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.stem = CifarResNetStem(config.num_channels, config.stage_widths[0])
        stages = [nn.Sequential(*(CifarResNetBasicBlock(*shape) for shape in stage)) for stage in block_shapes(config)]
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None, **kwargs
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        hidden = self.stem(pixel_values)
        hidden_states = [hidden]
        for stage in self.stages:
            hidden = stage(hidden)
            hidden_states.append(hidden)
        pooled = F.avg_pool2d(hidden, hidden.shape[-2:]).flatten(1)  # the reference's pooling: one window over the whole map
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=tuple(hidden_states) if output_hidden_states else None
        )
        return output if return_dict is not False else output.to_tuple()


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = CifarResNetModel(config)
        self.classifier = nn.Linear(config.stage_widths[-1], config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)  # transformers' classification loss: single/multi-label or regression
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict is not False else output.to_tuple()
