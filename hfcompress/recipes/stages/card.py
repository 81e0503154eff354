"""The ``card`` stage: a release folder with the model, its ONNX files and report, and a validated model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...artifacts import COMPRESSION_REPORT_FILE
from ...hub.card import CardConfig, write_model_card
from ..context import RunContext
from ..registry import StageConfig, register_stage


@dataclass(kw_only=True)
class CardStageInputs(StageConfig):
    """The models the card stage reads (``onnx`` and ``report`` keep :class:`CardConfig`'s declaration; marked here)."""

    model: str = field(metadata={"help": "Model the card describes: an earlier stage's name or a local path.", "model_ref": True})
    onnx: list[str] = field(default_factory=list, metadata={"help": "Export stages (or directories) whose .onnx files ship in onnx/.", "model_ref": True})
    report: Optional[str] = field(default=None, metadata={"help": f"Stage (or directory) holding {COMPRESSION_REPORT_FILE}.", "model_ref": True})
    name: str = field(default="card", metadata={"help": "Stage name; also its output sub-directory (the release folder)."})


@dataclass(kw_only=True)
class CardStageConfig(CardConfig, CardStageInputs):
    """Model card options (see ``hfcompress card --help``); model, onnx and report are stage names or paths."""

    uses_data = False  # the run need not load the dataset for it

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        return 0, sum(ctx.model_bytes(ref) for ref in self.inputs())  # a release folder: copies of the model and its ONNX files


@register_stage("card", CardStageConfig)
def run_card(cfg: CardStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        card_cfg = CardConfig(**{name: getattr(cfg, name) for name in CardConfig.__dataclass_fields__})
        card_cfg.onnx = [ctx.resolve(ref) for ref in cfg.onnx]
        card_cfg.report = ctx.resolve(cfg.report) if cfg.report else None
        readme = write_model_card(ctx.resolve(cfg.model), staging, card_cfg, overwrite=True)
        print(f"hfcompress: model card {readme.relative_to(staging)} written for {cfg.model}")
    return ctx.publish(staging, cfg.name)
