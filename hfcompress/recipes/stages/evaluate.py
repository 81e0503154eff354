"""The ``evaluate`` stage: task metrics of several models side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...evaluation import evaluate_pytorch
from ...utils.io import atomic_write_json
from ..context import RunContext
from ..registry import register_stage


@dataclass
class EvaluateStageConfig:
    models: list[str] = field(metadata={"help": "Models to evaluate: earlier stages' names, local paths or Hub ids.", "model_ref": True})
    name: str = field(default="evaluation", metadata={"help": "Stage name; also its output sub-directory."})
    batch_size: int = 64

    def preflight(self, ctx: RunContext) -> None:
        for ref in self.models:
            ctx.planned_model(ref)  # a missing local path or Hub id fails here, before earlier stages train


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@register_stage("evaluate", EvaluateStageConfig)
def run_evaluate(cfg: EvaluateStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        rows = []
        for ref in cfg.models:
            result = evaluate_pytorch(ctx.resolve(ref), ctx.data(), cfg.batch_size)
            rows.append({"name": ref, **result})
        atomic_write_json(staging / "results.json", rows)
        metric_columns = [k for k in rows[0] if k not in ("name", "path", "num_parameters", "size_mb", "dir_size_mb")]
        table = markdown_table(rows, ["name", *metric_columns, "num_parameters", "size_mb"])
        (staging / "results.md").write_text(table)
        print(table)
    return ctx.publish(staging, cfg.name)
