"""The ``factorize`` stage: truncated-SVD factorisation of a model's Linear layers.

Accuracy is recovered, when wanted, by a following ``distill`` stage whose ``student`` is this stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...lowrank import LowRankConfig, factorize_checkpoint
from ..context import RunContext
from ..schema import fields_of
from ..registry import StageConfig, register_stage


@dataclass(kw_only=True)
class FactorizeStageInputs(StageConfig):
    model: str = field(metadata={"help": "Model to factorise: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    name: str = field(default="factorized", metadata={"help": "Stage name; also its output sub-directory."})


@dataclass(kw_only=True)
class FactorizeStageConfig(LowRankConfig, FactorizeStageInputs):
    """Factorise ``model``; the rank-selection keys are those of :class:`~hfcompress.lowrank.LowRankConfig`."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the model's repository."})


@register_stage("factorize", FactorizeStageConfig)
def run_factorize(cfg: FactorizeStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        lowrank = LowRankConfig(**fields_of(cfg, LowRankConfig))
        report = factorize_checkpoint(
            ctx.resolve(cfg.model), staging, lowrank, ctx.data_config.task, overwrite=True, trust_remote_code=cfg.trust_remote_code
        )
        print(
            f"factorised {report['factorized_layers']} layers: {report['num_parameters_before']:,} -> "
            f"{report['num_parameters_after']:,} parameters"
        )
    return ctx.publish(staging, cfg.name)
