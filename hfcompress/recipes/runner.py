"""Runs a recipe's stages in order; the runner only wires stages together."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from accelerate import PartialState
from transformers import set_seed

from . import stages as _stages  # noqa: F401  (registers the built-in stages)
from .context import STAGE_DONE_FILE, RunContext, ensure_no_stale_output
from .recipe import Recipe, load_recipe
from .registry import STAGES

logger = logging.getLogger("hfcompress")


def run_recipe(
    recipe: Recipe | str | Path,
    overrides: Optional[list[str]] = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Run every stage; with ``resume``, finished stages are skipped and training continues from checkpoints.

    Returns the output directory of each stage, by stage name.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    cfg = recipe.config
    root = Path(cfg.output_dir)
    ensure_no_stale_output(root, resume, overwrite)
    ctx = RunContext(name=cfg.name, data_config=cfg.data, seed=cfg.seed, root=root, resolved_recipe=recipe.resolved, resume=resume)
    state = PartialState()
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        ctx.write_recipe(root)
    state.wait_for_everyone()
    total = len(recipe.stages)
    for i, (kind, stage_cfg) in enumerate(recipe.stages, 1):
        out = ctx.output_dir(stage_cfg.name)
        if resume and (out / STAGE_DONE_FILE).exists():
            ctx.outputs[stage_cfg.name] = out
            _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}': already done, skipped ({out})")
            continue
        _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}' -> {out}")
        set_seed(cfg.seed)
        start = time.perf_counter()
        STAGES[kind].fn(stage_cfg, ctx)
        _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}' done in {time.perf_counter() - start:.1f}s")
    return dict(ctx.outputs)


def _say(state: PartialState, message: str) -> None:
    if state.is_main_process:
        print(f"hfcompress: {message}", flush=True)
