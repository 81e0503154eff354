"""The ``export`` stage: ONNX export of an earlier stage's model, checked for parity on the recipe's own sentences,
and optionally a Triton Inference Server model repository of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Union

from ...artifacts import TRITON_REPOSITORY_DIR
from ...evaluation import evaluation_texts
from ...export import ExportConfig, export_onnx
from ...serving.triton import TritonConfig, write_triton_repository
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
    triton: Union[bool, TritonConfig] = field(default=False, metadata={
        "help": f"Also write a Triton Inference Server model repository in {TRITON_REPOSITORY_DIR}/ of the output (as hfcompress export --triton): "
                "true, or the settings of the --triton-* options (model_name, default the stage's name; max_batch_size, preferred_batch_sizes, "
                "max_queue_delay_us, instances, threads). The card and push stages leave it out."})

    def __post_init__(self):
        super().__post_init__()
        self.triton_config()  # a stage name that cannot name a Triton model fails with the recipe, before any stage runs

    def triton_config(self) -> TritonConfig | None:
        """The repository's settings, its model named after the stage unless they name it; None when there is none to write."""
        if self.triton is False:
            return None
        config = self.triton if isinstance(self.triton, TritonConfig) else TritonConfig()
        return dataclasses.replace(config, model_name=config.model_name or self.name)

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        size = ctx.model_bytes(self.model)
        graphs = (2 if self.optimize else 1) + (self.triton_config() is not None)  # model.onnx, model_optimized.onnx, Triton's copy
        return size, size * graphs


@register_stage("export", ExportStageConfig)
def run_export(cfg: ExportStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        texts = evaluation_texts(ctx.data(), cfg.parity_samples)
        options = {k: v for k, v in fields_of(cfg, ExportConfig).items() if k not in ("task", "opset")}
        export_onnx(ctx.resolve(cfg.model), staging, cfg.task, cfg.opset, parity_texts=texts, **options)
        triton = cfg.triton_config()
        if triton is not None:  # in the staging directory: it is published with the export, or not at all
            write_triton_repository(staging, staging / TRITON_REPOSITORY_DIR, triton)
    return ctx.publish(staging, cfg.name)
