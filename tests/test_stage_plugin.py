"""A new stage is one dataclass (a StageConfig) and one registered run function; the runner needs no change."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import pytest

from hfcompress.errors import ConfigError
from hfcompress.recipes import STAGES, parse_recipe, register_stage, run_recipe
from hfcompress.recipes.registry import StageConfig


@dataclass
class CopyStageConfig(StageConfig):
    """Copy a model as it is (a stand-in for a compression method)."""

    model: str = field(metadata={"help": "Model to copy.", "model_ref": True})
    name: str = field(default="copy", metadata={"help": "Stage name; also its output sub-directory."})
    checked: bool = field(default=False, init=False)

    def preflight(self, ctx) -> None:
        if self.model == "refuse-me":
            raise ConfigError("copy: refused in pre-flight")
        self.checked = True


def run_copy(cfg: CopyStageConfig, ctx):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        shutil.copytree(ctx.resolve(cfg.model), staging, dirs_exist_ok=True)
    return ctx.publish(staging, cfg.name)


@pytest.fixture
def copy_stage():
    register_stage("copy_model", CopyStageConfig)(run_copy)
    yield
    STAGES.pop("copy_model")


def test_a_registered_stage_runs_after_the_pre_flight_of_every_stage(copy_stage, tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    recipe = parse_recipe({
        "name": "plugin", "output_dir": str(tmp_path / "run"), "data": {"path": str(tiny_sst2_dir), "eval_split": "dev"},
        "stages": [{"stage": "copy_model", "model": str(tiny_teacher_dir)}, {"stage": "copy_model", "name": "again", "model": "copy"}],
    })
    outputs = run_recipe(recipe)
    assert (outputs["again"] / "config.json").exists() and all(cfg.checked for _, cfg in recipe.stages)
    bad = parse_recipe({**recipe.resolved, "output_dir": str(tmp_path / "bad"),
                        "stages": [{"stage": "copy_model", "model": str(tiny_teacher_dir)}, {"stage": "copy_model", "name": "x", "model": "refuse-me"}]})
    with pytest.raises(ConfigError, match="refused in pre-flight"):
        run_recipe(bad)
    assert not (tmp_path / "bad").exists()  # the later stage's pre-flight ran before the first stage


def test_a_stage_config_must_be_a_stage_config_dataclass():
    @dataclass
    class Loose:
        model: str

    with pytest.raises(TypeError, match="must be a dataclass subclassing hfcompress.recipes.registry.StageConfig"):
        register_stage("loose", Loose)


BUILT_IN_STAGES = sorted(STAGES)  # at collection, before a test registers its own


@pytest.mark.parametrize("kind", BUILT_IN_STAGES)
def test_every_stage_lists_its_inputs_then_name_then_the_methods_fields(kind):
    """One field order for every stage config, as the saved recipe and the card's steps show it: the models it reads,
    its name, the fields of the method config it extends (if any), then its own."""
    import dataclasses

    config_cls = STAGES[kind].config_cls
    names = [f.name for f in dataclasses.fields(config_cls)]
    inputs = config_cls.input_fields()
    assert inputs and names[: len(inputs) + 1] == [*inputs, "name"]
    methods = [base for base in config_cls.__mro__ if dataclasses.is_dataclass(base) and not issubclass(base, StageConfig)]
    assert len(methods) <= 1
    for method in methods:  # e.g. ExportConfig's fields right after the name, in its own order
        own = [f.name for f in dataclasses.fields(method) if f.name not in inputs]
        assert names[len(inputs) + 1 : len(inputs) + 1 + len(own)] == own
