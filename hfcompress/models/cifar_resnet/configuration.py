"""Configuration of the CIFAR ResNets (He et al. 2016, section 4.2): 3x3 stem, three stages of basic blocks, option-A shortcuts."""

from __future__ import annotations

from typing import Optional, Sequence

from transformers import PretrainedConfig

from ...errors import ConfigError

# blocks per stage of the depths in He et al. 2016: depth = 6n + 2
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class CifarResNetConfig(PretrainedConfig):
    """Widths are explicit so that filter pruning can shrink them and the result reloads with ``from_pretrained``.

    Args:
        num_channels: input image channels.
        stage_widths: output channels of each stage, shared by every block of the stage through the residual
            additions (the stem outputs ``stage_widths[0]``). Must not decrease: a stage's option-A shortcut
            zero-pads the previous stage's channels up to its own.
        blocks_per_stage: basic blocks per stage; ``[n, n, n]`` is ResNet-(6n+2), e.g. ``[9, 9, 9]`` for ResNet-56.
        block_widths: one int per block, in order: the output channels of the block's first conv (its inner
            width, which pruning may shrink freely). Default: each block's stage width.
    """

    model_type = "cifar-resnet"

    def __init__(
        self,
        num_channels: int = 3,
        stage_widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: Sequence[int] = (3, 3, 3),
        block_widths: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        self.num_channels = num_channels
        self.stage_widths = [int(w) for w in stage_widths]
        self.blocks_per_stage = [int(n) for n in blocks_per_stage]
        if block_widths is None:
            block_widths = [w for w, n in zip(self.stage_widths, self.blocks_per_stage) for _ in range(n)]
        self.block_widths = [int(w) for w in block_widths]
        self._check()
        super().__init__(**kwargs)

    @classmethod
    def for_depth(cls, depth: int, **kwargs) -> "CifarResNetConfig":
        """The config of ResNet-``depth`` (20, 32, 44, 56 or 110)."""
        if depth not in DEPTHS:
            raise ConfigError(f"CIFAR ResNet depth {depth} is not one of {sorted(DEPTHS)}: depth is 6n+2 with n blocks per stage")
        return cls(blocks_per_stage=[DEPTHS[depth]] * 3, **kwargs)

    @property
    def depth(self) -> int:
        return 2 * sum(self.blocks_per_stage) + 2

    def _check(self) -> None:
        widths, blocks = self.stage_widths, self.blocks_per_stage
        if len(widths) != len(blocks) or not widths:
            raise ConfigError(f"stage_widths {widths} and blocks_per_stage {blocks} must have one entry per stage: give both the same length")
        if any(w < 1 for w in widths + self.block_widths) or any(n < 1 for n in blocks):
            raise ConfigError(f"widths and block counts must be positive (stage_widths {widths}, blocks_per_stage {blocks}, "
                              f"block_widths {self.block_widths}): a stage or block cannot be pruned away entirely")
        if any(b < a for a, b in zip(widths, widths[1:])):
            raise ConfigError(f"stage_widths {widths} decrease: an option-A shortcut only zero-pads channels, so each stage needs at least "
                              "the previous stage's width")
        if len(self.block_widths) != sum(blocks):
            raise ConfigError(f"block_widths has {len(self.block_widths)} entries but blocks_per_stage {blocks} makes {sum(blocks)} blocks: "
                              "give one width per block")
