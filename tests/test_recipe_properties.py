"""Property-based tests of the recipe parser, overrides and schema: valid recipes round-trip; any corruption is a ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hfcompress.errors import ConfigError
from hfcompress.recipes import apply_overrides, parse_recipe
from hfcompress.recipes.recipe import load_yaml

REPO = str(Path(__file__).resolve().parents[1])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
finite = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False, allow_infinity=False)
model_refs = st.sampled_from([REPO, "org/some-model"])  # an existing local path, or a Hub id
training = st.fixed_dictionaries(
    {},
    optional={
        "learning_rate": finite,
        "num_train_epochs": st.integers(1, 5) | finite,
        "per_device_train_batch_size": st.integers(1, 64),
        "warmup_ratio": st.floats(0, 1, exclude_max=True),  # 1 or more reads as steps on transformers 5: refused
        "group_by_length": st.booleans(),  # a transformers 4.x name, accepted on 5 too
        "save_steps": st.integers(1, 1000),
        "data_seed": st.integers(0, 2**31 - 1),  # not "seed": the recipe's top-level seed owns that one
    },
)
distill_training = training.flatmap(
    lambda t: st.fixed_dictionaries({"alpha": st.floats(0, 1), "temperature": finite}).map(lambda d: {**t, **d})
)
data = st.fixed_dictionaries(
    {"path": st.text(min_size=1, max_size=20)},
    optional={
        "eval_split": names,
        "text_column": names,
        "label_column": names,
        "max_length": st.integers(1, 512),
        "max_train_samples": st.none() | st.integers(1, 10**6),
        "task": st.sampled_from(["text-classification", "token-classification", "text-generation"]),
    },
)


@st.composite
def recipes(draw):
    stage_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    stages = []
    for i, name in enumerate(stage_names):
        earlier = stage_names[:i]
        kind = draw(st.sampled_from(["finetune", "distill", "evaluate"] if earlier else ["finetune", "distill"]))
        ref = st.sampled_from(earlier) | model_refs if earlier else model_refs
        if kind == "finetune":
            stage = {"stage": kind, "name": name, "model": draw(ref), "training": draw(training)}
            if draw(st.booleans()):
                stage["layers"] = draw(st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True))
        elif kind == "distill":
            stage = {"stage": kind, "name": name, "teacher": draw(ref), "training": draw(distill_training),
                     "student_layers": draw(st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True))}
        else:
            stage = {"stage": kind, "name": name, "models": draw(st.lists(st.sampled_from(earlier), min_size=1))}
        stages.append(stage)
    recipe = {"name": draw(names), "output_dir": draw(st.text(min_size=1, max_size=20)), "data": draw(data), "stages": stages}
    if draw(st.booleans()):
        recipe["seed"] = draw(st.integers(0, 2**31 - 1))
    return recipe


# Anything YAML can hold, to put where it does not belong.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    """Every (path, container) in a nested recipe, containers included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for key in path:
        node = node[key]
    return node


@SETTINGS
@given(recipes())
def test_valid_recipes_round_trip_through_yaml(recipe):
    parsed = parse_recipe(recipe)
    again = parse_recipe(yaml.safe_load(yaml.safe_dump(parsed.resolved, sort_keys=False)))
    assert again.resolved == parsed.resolved
    assert [s["name"] for s in parsed.resolved["stages"]] == [s["name"] for s in recipe["stages"]]


@SETTINGS
@given(recipes(), st.integers(0, 2**31 - 1), finite)
def test_overrides_set_exactly_the_named_value(recipe, seed, learning_rate):
    stage = recipe["stages"][-1]
    overrides = [f"seed={seed}"]
    if stage["stage"] != "evaluate":
        overrides.append(f"stages.{stage['name']}.training.learning_rate={learning_rate!r}")
    resolved = parse_recipe(apply_overrides(recipe, overrides)).resolved
    assert resolved["seed"] == seed
    if stage["stage"] != "evaluate":
        assert resolved["stages"][-1]["training"]["learning_rate"] == learning_rate
    assert parse_recipe(recipe).resolved["stages"][:-1] == resolved["stages"][:-1]


@SETTINGS
@given(recipes(), st.data())
def test_any_corruption_is_a_config_error_or_still_valid(recipe, data):
    corrupted = copy.deepcopy(recipe)
    paths = [p for p in _paths(corrupted) if p]
    path = data.draw(st.sampled_from(paths))
    parent, key = _get(corrupted, path[:-1]), path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "add-unknown-key"]))
    if action == "replace":
        parent[key] = data.draw(yaml_values)
    elif action == "delete":
        del parent[key]
    else:
        target = parent if isinstance(parent, dict) else _get(corrupted, path)
        assume(isinstance(target, dict))
        target["unknown_" + data.draw(names)] = data.draw(yaml_values)
    try:
        parse_recipe(corrupted)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert action != "add-unknown-key", "an unknown key was accepted"


@SETTINGS
@given(recipes(), st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_any_override_text_is_a_config_error_or_applies(recipe, overrides):
    try:
        parse_recipe(apply_overrides(recipe, overrides))
    except ConfigError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(st.text(max_size=200))
def test_any_recipe_text_is_a_config_error_or_a_mapping(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    path.write_text(text)
    try:
        assert isinstance(load_yaml(path), dict)
    except ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 1.5])
def test_non_finite_or_out_of_range_distillation_values_are_rejected(value):
    recipe = {"name": "x", "output_dir": "o", "data": {"path": "d"},
              "stages": [{"stage": "distill", "teacher": REPO, "student_layers": [0], "training": {"alpha": value}}]}
    with pytest.raises(ConfigError, match="alpha"):
        parse_recipe(recipe)
    recipe["stages"][0]["training"] = {"temperature": value if value != 1.5 else float("-inf")}
    with pytest.raises(ConfigError, match="temperature"):
        parse_recipe(recipe)
