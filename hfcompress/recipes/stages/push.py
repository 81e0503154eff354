"""The ``push`` stage: upload a folder (usually the ``card`` stage's release folder) to the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import PUSH_RESULT_FILE
from ...hub.push import PushConfig, push_to_hub
from ...utils.io import atomic_write_json
from ..context import RunContext
from ..registry import StageConfig, register_stage


@dataclass(kw_only=True)
class PushStageInputs(StageConfig):
    folder: str = field(metadata={"help": "Folder to upload: an earlier stage's name (e.g. the card stage) or a path.", "model_ref": True})
    name: str = field(default="push", metadata={"help": f"Stage name; its output directory records what was pushed ({PUSH_RESULT_FILE})."})


@dataclass(kw_only=True)
class PushStageConfig(PushConfig, PushStageInputs):
    """Hub push options (see ``hfcompress push --help``); the token comes from HF_TOKEN or the saved login."""

    uses_data = False  # the run need not load the dataset for it

    dry_run: bool = field(default=False, metadata={"help": "Only record and print what would be uploaded."})

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        return 0, 0  # a record of the commit


@register_stage("push", PushStageConfig)
def run_push(cfg: PushStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        push_cfg = PushConfig(**{name: getattr(cfg, name) for name in PushConfig.__dataclass_fields__})
        result = push_to_hub(ctx.resolve(cfg.folder), push_cfg, dry_run=cfg.dry_run)
        atomic_write_json(staging / PUSH_RESULT_FILE, result)  # no token in it: push_to_hub never returns one
        where = "would upload" if cfg.dry_run else "pushed"
        print(f"hfcompress: {where} {len(result['files'])} files to {result['repo_id']} {result.get('pr_url') or result.get('commit_url') or ''}")
    return ctx.publish(staging, cfg.name)
