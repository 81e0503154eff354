"""Runs a recipe's stages in order; the runner only wires stages together."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from accelerate import PartialState
from transformers import set_seed

from . import stages as _stages  # noqa: F401  (registers the built-in stages)
from ..artifacts import STAGE_DONE_FILE
from ..modeling import load_config
from .context import PlannedModel, RunContext, check_finished_stage_unchanged, clear_output, ensure_no_stale_output
from .recipe import Recipe, apply_overrides, load_recipe, parse_recipe
from .registry import STAGES

logger = logging.getLogger("hfcompress")


def run_recipe(
    recipe: Recipe | str | Path,
    overrides: Optional[list[str]] = None,
    resume: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Path]:
    """Run every stage; with ``resume``, finished stages are skipped and training continues from checkpoints.

    Everything that can be checked without training (the data, every model reference, label sets,
    vocabularies, layer indices) is checked first, before the output directory is touched.
    ``trust_remote_code`` turns it on for every stage that loads models. Returns the output directory
    of each stage, by stage name.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    if trust_remote_code:
        recipe = trusting_remote_code(recipe)
    cfg = recipe.config
    root = Path(cfg.output_dir)
    ensure_no_stale_output(root, resume, overwrite)
    ctx = RunContext(name=cfg.name, data_config=cfg.data, seed=cfg.seed, root=root, resolved_recipe=recipe.resolved, resume=resume)
    state = PartialState()
    finished = preflight(recipe, ctx)
    if overwrite:
        clear_output(root)
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        ctx.write_recipe(root)
    state.wait_for_everyone()
    total = len(recipe.stages)
    for i, (kind, stage_cfg) in enumerate(recipe.stages, 1):
        out = ctx.output_dir(stage_cfg.name)
        if stage_cfg.name in finished:
            ctx.outputs[stage_cfg.name] = out
            _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}': already done, skipped ({out})")
            continue
        _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}' -> {out}")
        set_seed(cfg.seed)
        start = time.perf_counter()
        STAGES[kind].fn(stage_cfg, ctx)
        _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}' done in {time.perf_counter() - start:.1f}s")
    return dict(ctx.outputs)


def trusting_remote_code(recipe: Recipe) -> Recipe:
    """The recipe with ``trust_remote_code: true`` in every stage that loads models (the CLI's --trust-remote-code)."""
    overrides = [f"stages.{i}.trust_remote_code=true" for i, (_, c) in enumerate(recipe.stages) if hasattr(c, "trust_remote_code")]
    return parse_recipe(apply_overrides(recipe.resolved, overrides))


def preflight(recipe: Recipe, ctx: RunContext) -> set[str]:
    """Cheap checks of the whole run before any stage starts; returns the stages --resume will skip.

    Loads the data (columns, label set, empty splits) when a stage reads it (a stage config says it
    does not with ``uses_data = False``), and calls each stage config's optional
    ``preflight(ctx)``, which checks the models it will load and records what it will produce in
    ``ctx.planned`` for the stages after it.
    """
    if any(getattr(stage_cfg, "uses_data", True) for _, stage_cfg in recipe.stages):
        ctx.data()
    finished = set()
    for kind, stage_cfg in recipe.stages:
        out = ctx.output_dir(stage_cfg.name)
        if ctx.resume and (out / STAGE_DONE_FILE).exists():
            stage = next(s for s in recipe.resolved["stages"] if s["name"] == stage_cfg.name)
            check_finished_stage_unchanged(stage, out, recipe.resolved["data"], recipe.config.seed)
            finished.add(stage_cfg.name)
            if (out / "config.json").exists():  # later stages are checked against what it did produce
                ctx.planned[stage_cfg.name] = PlannedModel(load_config(str(out)), str(out))
            continue
        check = getattr(stage_cfg, "preflight", None)
        if check is not None:
            check(ctx)
    return finished


def _say(state: PartialState, message: str) -> None:
    if state.is_main_process:
        print(f"hfcompress: {message}", flush=True)
