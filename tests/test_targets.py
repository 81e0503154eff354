"""One way to pick layers: target_modules / exclude_modules (PEFT's syntax) and the one module-swap helper."""

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config
from hfcompress.errors import ConfigError
from hfcompress.lowrank import LowRankConfig
from hfcompress.lowrank.factorize import target_layers
from hfcompress.pruning import MagnitudePruningConfig
from hfcompress.pruning.magnitude import prunable_weights
from hfcompress.quantization.config import QATConfig
from hfcompress.quantization.qat import qat_layers
from hfcompress.targets import check_module_patterns, matches, replace_module, select_modules

# The six Linear layers of each of the tiny BERT's four blocks, then its pooler and classifier.
BLOCK_LINEARS = [
    f"bert.encoder.layer.{i}.{part}"
    for i in range(4)
    for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense")
]
ALL_LINEARS = BLOCK_LINEARS + ["bert.pooler.dense", "classifier"]


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(100))


def test_a_string_is_a_regex_over_the_full_name():
    assert matches("bert.encoder.layer.0.attention.self.query", r".*\.query")
    assert not matches("bert.encoder.layer.0.attention.self.query", "query")  # not searched: the whole name must match
    assert not matches("bert.encoder.layer.0.attention.self.query_proj", r".*\.query")


def test_a_list_matches_equal_names_and_dotted_suffixes():
    assert matches("bert.encoder.layer.0.attention.self.query", ["query"])
    assert matches("bert.encoder.layer.0.attention.output.dense", ["attention.output.dense"])
    assert matches("classifier", ["classifier"])
    assert not matches("bert.encoder.layer.0.attention.self.query_proj", ["query"])  # a suffix of whole components only
    assert not matches("bert.encoder.layer.0.intermediate.dense", ["intermediate"])  # the name must end with the entry


def test_none_selects_every_layer_of_the_types_and_exclude_wins(bert):
    assert list(select_modules(bert, None)) == ALL_LINEARS
    assert list(select_modules(bert, None, ["classifier", "pooler.dense"])) == BLOCK_LINEARS
    assert list(select_modules(bert, ["query"], r".*layer\.[1-3]\..*")) == ["bert.encoder.layer.0.attention.self.query"]
    assert select_modules(bert, None, types=(nn.LayerNorm,))  # the types are the method's choice


def test_nothing_selected_is_a_one_line_error_naming_the_patterns_and_a_module(bert):
    with pytest.raises(ConfigError) as error:
        select_modules(bert, ["qkv"])
    message = str(error.value)
    assert "\n" not in message and "['qkv']" in message and "'bert.encoder.layer.0.attention.self.query'" in message
    with pytest.raises(ConfigError, match="match no Linear"):
        select_modules(bert, None, r".*")


@pytest.mark.parametrize(
    "target_modules, exclude_modules, message",
    [
        ("([", None, "target_modules '\\(\\[' is not a valid regular expression"),
        (None, "a(", "exclude_modules 'a\\(' is not a valid regular expression"),
        ([], None, "empty list"),
        (["query", 3], None, "regex string or a list of module names"),
        (7, None, "regex string or a list of module names"),
    ],
)
def test_bad_patterns_fail_when_the_config_is_built(target_modules, exclude_modules, message):
    with pytest.raises(ConfigError, match=message):
        check_module_patterns(target_modules, exclude_modules)
    for config in (
        lambda: MagnitudePruningConfig(target_modules=target_modules, exclude_modules=exclude_modules),
        lambda: QATConfig(target_modules=target_modules, exclude_modules=exclude_modules),
        lambda: LowRankConfig(energy=0.9, target_modules=target_modules, exclude_modules=exclude_modules),
    ):
        with pytest.raises(ConfigError, match=message):
            config()


def test_an_empty_exclude_list_excludes_nothing(bert):
    check_module_patterns(None, [])
    assert target_layers(bert, LowRankConfig(energy=0.9, exclude_modules=[])) == ALL_LINEARS


def _pruned(model, **patterns):
    return [name.removesuffix(".weight") for name in prunable_weights(model, **patterns)]


def test_default_selections_are_those_of_the_old_syntaxes(bert):
    """Pinned from the code before target_modules/exclude_modules were shared (pruning's searched regex, QAT's
    every-Linear default, low-rank's component-matched head list)."""
    config = MagnitudePruningConfig()
    assert _pruned(bert, target_modules=config.target_modules, exclude_modules=config.exclude_modules) == BLOCK_LINEARS
    assert qat_layers(bert, QATConfig()) == ALL_LINEARS
    assert target_layers(bert, LowRankConfig(energy=0.9)) == BLOCK_LINEARS


@pytest.mark.parametrize(
    "target_modules, exclude_modules",
    [
        (["query", "value"], None),
        (r".*\.layer\.[02]\..*", ["intermediate.dense"]),
        (None, r".*(pooler|classifier).*"),
    ],
)
def test_pruning_qat_and_lowrank_select_the_same_layers_for_the_same_spec(bert, target_modules, exclude_modules):
    spec = dict(target_modules=target_modules, exclude_modules=exclude_modules)
    expected = list(select_modules(bert, **spec))
    assert _pruned(bert, **spec) == expected
    assert qat_layers(bert, QATConfig(**spec)) == expected
    assert target_layers(bert, LowRankConfig(energy=0.9, **spec)) == expected


def test_replace_module_swaps_nested_and_top_level_children():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3)))
    new, old = nn.Identity(), model[1][0]
    assert replace_module(model, "1.0", new) is old and model[1][0] is new
    replace_module(model, "0", nn.ReLU())
    assert isinstance(model[0], nn.ReLU)


@pytest.mark.parametrize("config_cls", [MagnitudePruningConfig, QATConfig])
def test_recipes_take_a_regex_or_a_list_and_point_old_keys_to_the_new_ones(config_cls):
    from hfcompress.recipes.schema import from_dict

    built = from_dict(config_cls, {"target_modules": ["query"], "exclude_modules": r".*\.layer\.0\..*"}, "cfg")
    assert (built.target_modules, built.exclude_modules) == (["query"], r".*\.layer\.0\..*")
    with pytest.raises(ConfigError, match="did you mean 'target_modules'"):
        from_dict(config_cls, {"targets": ".*"}, "cfg")
