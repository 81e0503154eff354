"""The ``trim_vocab`` stage: keep the tokens the recipe's training split uses.

Place it after distillation: a trimmed student no longer shares the teacher's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...vocab import VocabTrimConfig, trim_checkpoint
from ..context import RunContext
from ..schema import fields_of
from ..registry import StageConfig, register_stage


@dataclass(kw_only=True)
class TrimVocabStageInputs(StageConfig):
    model: str = field(metadata={"help": "Model to trim: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    name: str = field(default="trimmed", metadata={"help": "Stage name; also its output sub-directory."})


@dataclass(kw_only=True)
class TrimVocabStageConfig(VocabTrimConfig, TrimVocabStageInputs):
    """Trim ``model``'s vocabulary to the recipe data's training split; other keys are :class:`~hfcompress.vocab.VocabTrimConfig`'s."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the model's repository."})


@register_stage("trim_vocab", TrimVocabStageConfig)
def run_trim_vocab(cfg: TrimVocabStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        trim = VocabTrimConfig(**fields_of(cfg, VocabTrimConfig))
        report = trim_checkpoint(
            ctx.resolve(cfg.model), staging, ctx.data(), trim, ctx.data_config.task, overwrite=True,
            trust_remote_code=cfg.trust_remote_code,
        )
        print(f"vocabulary {report['vocab_size_before']:,} -> {report['vocab_size_after']:,} tokens")
    return ctx.publish(staging, cfg.name)
