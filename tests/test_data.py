"""Loading task data from local files, and the errors for data that cannot be used."""

import re

import pytest

from hfcompress.data import DataConfig, TaskData
from hfcompress.errors import ConfigError, DataError


def test_local_tsv_directory_loads_the_named_splits(tiny_sst2_dir):
    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"))
    assert len(data.raw["train"]) == 64 and len(data.raw["dev"]) == 32
    assert data.label_names == [0, 1]


def test_real_sst2_has_every_row(sst2_path):
    """GLUE TSVs hold bare quotes; quoting must be off or rows merge."""
    data = TaskData(DataConfig(path=str(sst2_path), eval_split="dev"))
    assert len(data.raw["train"]) == 67349 and len(data.raw["dev"]) == 872


def test_subset_is_seeded(tiny_sst2_dir):
    a = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev", max_train_samples=10), seed=3)
    b = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev", max_train_samples=10), seed=3)
    assert a.raw["train"]["sentence"] == b.raw["train"]["sentence"] and len(a.raw["train"]) == 10


def test_tokenize_maps_labels_and_truncates(tiny_sst2_dir, tokenizer):
    data = TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev", max_length=8))
    ds = data.tokenize(tokenizer, "dev")
    assert max(len(x) for x in ds["input_ids"]) <= 8
    assert set(ds["labels"]) <= {0, 1}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"text_column": "sentense"}, "no column 'sentense' (did you mean 'sentence'?)"),
        ({"eval_split": "validation"}, "no file for split 'validation'"),
    ],
)
def test_unusable_data_is_refused_with_the_fix(tiny_sst2_dir, change, message):
    config = DataConfig(path=str(tiny_sst2_dir), **{"eval_split": "dev", **change})
    with pytest.raises(DataError, match=re.escape(message)):
        TaskData(config)


def test_an_unknown_task_is_refused_when_the_data_config_is_made(tiny_sst2_dir):
    with pytest.raises(ConfigError, match=re.escape("data.task 'text-clasification' is not supported (did you mean 'text-classification'?)")):
        DataConfig(path=str(tiny_sst2_dir), task="text-clasification")


def test_labels_outside_the_training_label_set_are_refused(tiny_sst2_dir):
    dev = tiny_sst2_dir / "dev.tsv"
    dev.write_text(dev.read_text() + "an odd one\t7\n")
    with pytest.raises(DataError, match=r"labels \[7\] that are not in the label set"):
        TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"))


def test_empty_split_is_refused(tiny_sst2_dir):
    (tiny_sst2_dir / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match="is empty"):
        TaskData(DataConfig(path=str(tiny_sst2_dir), eval_split="dev"))


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not be loaded"):
        TaskData(DataConfig(path="no-such-org/no-such-dataset"))
