"""Runs a recipe's stages in order; the runner only wires stages together."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from accelerate import PartialState
from transformers import set_seed

from . import stages as _stages  # noqa: F401  (registers the built-in stages)
from ..artifacts import STAGE_DONE_FILE
from ..errors import ConfigError, closest
from ..modeling import check_model_files, load_config
from ..utils.disk import check_free_space, files_bytes, tree_bytes
from ..utils.lock import output_lock
from .context import (
    PlannedModel,
    RunContext,
    check_finished_stage_unchanged,
    check_interrupted_stage_unchanged,
    clear_output,
    ensure_no_stale_output,
)
from .fingerprint import data_fingerprint, stage_fingerprint
from .recipe import Recipe, apply_overrides, load_recipe, parse_recipe
from .registry import STAGES

logger = logging.getLogger("hfcompress")


def run_recipe(
    recipe: Recipe | str | Path,
    overrides: Optional[list[str]] = None,
    resume: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    force_stages: Sequence[str] = (),
) -> dict[str, Path]:
    """Run every stage; with ``resume``, finished stages are skipped and training continues from checkpoints.

    ``resume`` refuses a stage whose recipe, data or input models changed since it ran (finished or
    interrupted), naming the change; ``force_stages`` re-runs those stages from scratch on purpose,
    with every later stage that reads their output.

    Everything that can be checked without training (the data, every model reference, label sets,
    vocabularies, layer indices) is checked first, before the output directory is touched.
    ``trust_remote_code`` turns it on for every stage that loads models. Returns the output directory
    of each stage, by stage name.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    if trust_remote_code:
        recipe = trusting_remote_code(recipe)
    state = PartialState()
    # one run per output directory: the main process holds its lock until the run ends (the others follow it)
    with output_lock(recipe.config.output_dir) if state.is_main_process else contextlib.nullcontext():
        return _run_locked(recipe, state, resume, overwrite, set(force_stages))


def _run_locked(recipe: Recipe, state: PartialState, resume: bool, overwrite: bool, force: set[str]) -> dict[str, Path]:
    cfg = recipe.config
    root = Path(cfg.output_dir)
    ensure_no_stale_output(root, resume, overwrite)
    check_forced_stages(force, [c.name for _, c in recipe.stages], resume)
    ctx = RunContext(name=cfg.name, data_config=cfg.data, seed=cfg.seed, root=root, resolved_recipe=recipe.resolved, resume=resume)
    finished, restart = preflight(recipe, ctx, force, overwrite)
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
        ctx.begin_stage(stage_cfg.name, discard_checkpoints=stage_cfg.name in restart)
        set_seed(cfg.seed)
        start = time.perf_counter()
        if STAGES[kind].fn(stage_cfg, ctx) != ctx.outputs.get(stage_cfg.name):
            raise RuntimeError(f"stage '{stage_cfg.name}' ({kind}) must publish its output through the run context and return it")
        _say(state, f"[{i}/{total}] {kind} '{stage_cfg.name}' done in {time.perf_counter() - start:.1f}s")
    return dict(ctx.outputs)


def trusting_remote_code(recipe: Recipe) -> Recipe:
    """The recipe with ``trust_remote_code: true`` in every stage that loads models (the CLI's --trust-remote-code)."""
    overrides = [f"stages.{i}.trust_remote_code=true" for i, (_, c) in enumerate(recipe.stages) if hasattr(c, "trust_remote_code")]
    return parse_recipe(apply_overrides(recipe.resolved, overrides))


def check_forced_stages(force: set[str], names: list[str], resume: bool) -> None:
    if force and not resume:
        raise ConfigError("--force-stage re-runs a stage of an earlier run: use it with --resume (or start again with --overwrite)")
    for name in sorted(force - set(names)):
        raise ConfigError(f"--force-stage {name}: the recipe has no stage '{name}'{closest(name, names)}: stages are {names}")


def preflight(recipe: Recipe, ctx: RunContext, force: set[str] = frozenset(), overwrite: bool = False) -> tuple[set[str], set[str]]:
    """Cheap checks of the whole run before any stage starts; returns (stages --resume skips, stages that start afresh).

    Loads the data (columns, label set, empty splits) when a stage reads it (a stage config says it
    does not with ``uses_data = False``), fingerprints every stage, and calls each stage config's
    ``preflight(ctx)``, which checks the models it will load and records what it will
    produce in ``ctx.planned`` for the stages after it. With ``--resume``, a finished or interrupted
    stage whose fingerprint changed is an error naming the change, unless it is forced. Last, what the
    stages that run will write must fit on the disk (with ``overwrite``, the previous run is deleted first).
    """
    data = None  # a run of card/push stages alone neither loads nor hashes the dataset
    if any(stage_cfg.uses_data for _, stage_cfg in recipe.stages):
        ctx.data()
        data = data_fingerprint(recipe.resolved["data"])
    finished, restart = set(), set()
    needed = 0  # bytes the stages that run will write
    for (kind, stage_cfg), stage in zip(recipe.stages, recipe.resolved["stages"]):
        name = stage_cfg.name
        fingerprint = stage_fingerprint(stage, stage_cfg, recipe.resolved, ctx.fingerprints, data)
        ctx.fingerprints[name] = fingerprint
        if name in force or any(ref in restart for ref in stage_cfg.inputs()):
            restart.add(name)  # forced, or reads the output of a stage that runs again
        out = ctx.output_dir(name)
        if ctx.resume and name not in restart:
            if (out / STAGE_DONE_FILE).exists():
                check_finished_stage_unchanged(stage, out, fingerprint, recipe.resolved["data"], recipe.config.seed)
                finished.add(name)
                if (out / "config.json").exists():  # later stages are checked against what it did produce
                    ctx.planned[name] = PlannedModel(load_config(str(out)), str(out))
                ctx.planned_bytes[name] = files_bytes(out)
                continue
            check_interrupted_stage_unchanged(name, ctx.work_dir(name), fingerprint)
        for ref in stage_cfg.inputs():
            local = Path(os.path.expanduser(ref))
            if ref not in ctx.fingerprints and local.exists():  # earlier stages' outputs are checked when they are made
                check_model_files(local, needs_tokenizer=stage_cfg.uses_data)
        stage_cfg.preflight(ctx)
        ctx.planned_bytes[name], writes = stage_cfg.disk_bytes(ctx)
        needed += writes
    check_free_space(
        ctx.root, needed, f"the run ({', '.join(c.name for _, c in recipe.stages if c.name not in finished)})",
        fix=" (output_dir), keep fewer checkpoints (training.save_total_limit)", freed=tree_bytes(ctx.root) if overwrite else 0,
    )
    return finished, restart


def _say(state: PartialState, message: str) -> None:
    if state.is_main_process:
        print(f"hfcompress: {message}", flush=True)
