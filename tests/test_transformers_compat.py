"""Trainer settings written with transformers 4.x or 5.x names mean the same on whichever transformers is installed."""

from __future__ import annotations

import dataclasses

import pytest
from datasets import Dataset
from transformers import BertForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from hfcompress.errors import ConfigError
from hfcompress.recipes import parse_recipe
from hfcompress.utils.transformers_compat import training_kwargs

from tests.conftest import REPO, tiny_bert_config

INSTALLED = {f.name for f in dataclasses.fields(TrainingArguments)}


def _args(tmp_path, settings: dict) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", **training_kwargs(settings))


def _train_sampler(args: TrainingArguments):
    lengths = [3, 9, 5, 7, 4, 8, 6, 2]
    dataset = Dataset.from_dict({"input_ids": [[1] * n for n in lengths], "labels": [0] * len(lengths)})
    trainer = Trainer(model=BertForSequenceClassification(tiny_bert_config(10, num_hidden_layers=1)), args=args, train_dataset=dataset)
    return trainer._get_train_sampler(dataset)


@pytest.mark.parametrize("settings", [
    {"warmup_ratio": 0.1, "group_by_length": True, "no_cuda": True},  # transformers 4.x names
    {"warmup_steps": 0.1, "train_sampling_strategy": "group_by_length", "use_cpu": True},  # transformers 5 names
], ids=["4.x-names", "5.x-names"])
def test_either_versions_names_set_the_same_warmup_sampler_and_device(tmp_path, settings):
    args = _args(tmp_path, settings)
    assert args.get_warmup_steps(200) == 20  # what Trainer's scheduler warms up over: 10% of the steps
    assert args.use_cpu
    assert isinstance(_train_sampler(args), LengthGroupedSampler)


def test_defaults_stay_defaults(tmp_path):
    args = _args(tmp_path, {"group_by_length": False, "warmup_steps": 30})
    assert args.get_warmup_steps(200) == 30  # a whole number of steps stays steps
    assert not isinstance(_train_sampler(args), LengthGroupedSampler)
    assert training_kwargs({"learning_rate": 1e-4}) == {"learning_rate": 1e-4}


@pytest.mark.parametrize("settings, message", [
    ({"warmup_ratio": 1.0}, r"warmup_ratio 1.0 must be in \[0, 1\).*give warmup_steps"),
    ({"warmup_ratio": float("nan")}, r"warmup_ratio nan must be in \[0, 1\)"),
    ({"warmup_ratio": 0.1, "warmup_steps": 10}, "both set the warmup: give only one"),
    ({"no_cuda": True, "use_cpu": False}, "disagree: give only use_cpu"),
    ({"group_by_length": False, "train_sampling_strategy": "group_by_length"}, "disagree: give only train_sampling_strategy"),
])
def test_contradictory_or_untranslatable_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message) as e:
        training_kwargs(settings)
    assert "\n" not in str(e.value)


@pytest.mark.skipif("logging_dir" in INSTALLED, reason="this transformers still has logging_dir")
def test_removed_logging_dir_names_its_replacement():
    with pytest.raises(ConfigError, match="TENSORBOARD_LOGGING_DIR"):
        training_kwargs({"logging_dir": "runs"})
    assert training_kwargs({"overwrite_output_dir": True}) == {}  # Trainer never read it


@pytest.mark.skipif("train_sampling_strategy" in INSTALLED, reason="this transformers has train_sampling_strategy")
def test_sampling_strategies_transformers_4_lacks_are_refused():
    with pytest.raises(ConfigError, match="'sequential' needs transformers 5"):
        training_kwargs({"train_sampling_strategy": "sequential"})


def _recipe(training: dict) -> dict:
    return {"name": "x", "output_dir": "o", "data": {"path": "d"},
            "stages": [{"stage": "distill", "teacher": str(REPO), "student_layers": [0], "training": training}]}


def test_recipes_keep_the_names_the_user_wrote():
    """The saved recipe, and the model card made from it, show the setting as written, not its translation."""
    training = {"warmup_ratio": 0.1, "group_by_length": True, "no_cuda": True}
    assert parse_recipe(_recipe(training)).resolved["stages"][0]["training"] == training


def test_recipe_with_a_warmup_ratio_of_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^stages\[0\]: training: warmup_ratio 1.0 must be in \[0, 1\)"):
        parse_recipe(_recipe({"warmup_ratio": 1.0}))
