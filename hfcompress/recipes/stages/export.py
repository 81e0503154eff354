"""The ``export`` stage: ONNX export of an earlier stage's model, checked for parity on the recipe's own sentences."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...evaluation import evaluation_texts
from ...export import ExportConfig, export_onnx
from ..context import RunContext
from ..schema import fields_of
from ..registry import StageConfig, register_stage


@dataclass(kw_only=True)
class ExportStageInputs(StageConfig):
    model: str = field(metadata={"help": "Model to export: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    name: str = field(default="onnx", metadata={"help": "Stage name; also its output sub-directory."})


@dataclass(kw_only=True)
class ExportStageConfig(ExportConfig, ExportStageInputs):
    """Export ``model`` to ONNX; the export keys are :class:`~hfcompress.export.ExportConfig`'s."""

    parity_samples: int = field(default=16, metadata={"help": "Sentences of the evaluation split used for the parity check."})


@register_stage("export", ExportStageConfig)
def run_export(cfg: ExportStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        texts = evaluation_texts(ctx.data(), cfg.parity_samples)
        options = {k: v for k, v in fields_of(cfg, ExportConfig).items() if k not in ("task", "opset")}
        export_onnx(ctx.resolve(cfg.model), staging, cfg.task, cfg.opset, parity_texts=texts, **options)
    return ctx.publish(staging, cfg.name)

