"""Task data: load a split from the Hub or a local path, check it, turn it into model inputs.

Every dataset argument accepts a Hub id (``glue`` with ``name: sst2``) or a local path: a directory
with one file per split (``train.tsv``, ``dev.tsv``, ``validation.jsonl``, ...), a directory written
by ``Dataset.save_to_disk``, or a dataset directory that ``datasets.load_dataset`` understands (Parquet
splits in the Hub's layout, an image folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
from datasets import ClassLabel, DatasetDict, Sequence

from .errors import ConfigError, DataError, closest
from .utils.io import not_utf8
from .tasks import DEFAULT_TASK, Task, get_task, task_names

_BUILDERS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class DataConfig:
    """Where the task's data is and which columns hold the text and the labels."""

    path: str = field(metadata={"help": "Hub dataset id (e.g. 'glue') or a local directory/file."})
    name: Optional[str] = field(default=None, metadata={"help": "Hub config name, e.g. 'sst2' for 'glue'."})
    task: str = field(default=DEFAULT_TASK, metadata={"help": f"One of {list(task_names())}."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split used for evaluation (SST-2 TSV: 'dev')."})
    text_column: str = field(default="sentence", metadata={"help": "Column with the text (a list of words for token classification)."})
    text_pair_column: Optional[str] = field(default=None, metadata={"help": "Second text column for pair tasks (e.g. MNLI)."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image tasks: column with the images; default 'img' or 'image', whichever the data has."})
    augment: bool = field(default=True, metadata={"help": "Image tasks: random crop with 4-pixel padding and horizontal flip of the training split (seeded)."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels; unused by tasks without labels (language modelling)."})
    max_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep a random subset of this size (seeded)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N evaluation examples."})

    def __post_init__(self):
        try:
            get_task(self.task)  # a misspelt task fails when the recipe is read, with the closest name
        except ConfigError as e:
            raise ConfigError(f"data.{e}") from None
        if self.max_length < 1:
            raise ConfigError(f"data.max_length {self.max_length} must be at least 1: it is the token length inputs are truncated to, e.g. 128")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name} {getattr(self, name)} must be at least 1, or left out to use the whole split")


def _split_files(directory: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix in _BUILDERS:
            files.setdefault(p.stem, p)
    return files


def _is_split_file_directory(directory: Path, splits: list[str]) -> bool:
    """One file per split at the top. A dataset in the Hub's layout (Parquet under a config sub-directory, as CIFAR-10 has)
    may hold other top-level files (classes.txt); it is one when no split has a top-level file and sub-directories hold the data."""
    files = _split_files(directory)
    if not files:
        return False
    return any(s in files for s in splits) or not any(p.is_dir() and not p.name.startswith(".") for p in directory.iterdir())


def _has_no_rows(path: Path) -> bool:
    """True for an empty file, or a CSV/TSV with a header line only (datasets would fail obscurely)."""
    header_lines = 1 if path.suffix in (".csv", ".tsv") else 0
    with open(path, "rb") as f:
        lines = [line for _, line in zip(range(header_lines + 1), f) if line.strip()]
    return len(lines) <= header_lines


def check_utf8(path: Path) -> None:
    """A text data file must be UTF-8: name the first line that is not, before datasets fails deep inside Arrow."""
    if path.suffix == ".parquet":
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(not_utf8(path, number, line, e)) from None


def load_raw_splits(cfg: DataConfig, splits: list[str]) -> DatasetDict:
    """Load the named splits, from a local path or the Hub, with a clear error for each mistake."""
    local = Path(os.path.expanduser(cfg.path))
    try:
        if local.is_dir() and (local / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(local))
        elif local.is_dir() and _is_split_file_directory(local, splits):
            files = _split_files(local)
            missing = [s for s in splits if s not in files]
            if missing:
                raise DataError(
                    f"dataset directory {local} has no file for split '{missing[0]}'{closest(missing[0], files)}: "
                    f"found splits {sorted(files)}; set data.train_split/data.eval_split"
                )
            for split in splits:
                if _has_no_rows(files[split]):
                    raise DataError(f"split '{split}' ({files[split]}) is empty: point the recipe at a split with examples")
            suffixes = {files[s].suffix for s in splits}
            if len(suffixes) != 1:  # .csv and .tsv share a builder but not a separator
                raise DataError(f"dataset directory {local} mixes file types {sorted(suffixes)}: use one format for all splits")
            suffix = suffixes.pop()
            for split in splits:
                check_utf8(files[split])
            kwargs: dict[str, Any] = {}
            if suffix == ".tsv":
                kwargs = {"delimiter": "\t", "quoting": 3}  # GLUE TSVs contain bare quotes
            loaded = datasets.load_dataset(
                _BUILDERS[suffix], data_files={s: str(files[s]) for s in splits}, **kwargs
            )
        elif local.is_file():
            if local.suffix not in _BUILDERS:
                raise DataError(f"data file {local} has unsupported type '{local.suffix}': use one of {sorted(_BUILDERS)}")
            check_utf8(local)
            loaded = datasets.load_dataset(_BUILDERS[local.suffix], data_files={splits[0]: str(local)})
        else:
            loaded = datasets.load_dataset(cfg.path, cfg.name)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        hint = "it is not a local path" if not local.exists() else "it could not be read"
        raise DataError(
            f"dataset '{cfg.path}' could not be loaded ({hint}; {type(e).__name__}: {str(e).splitlines()[0][:200]}): "
            "give a local directory with one file per split or a reachable Hub id"
        ) from e
    if isinstance(loaded, datasets.Dataset):
        loaded = DatasetDict({splits[0]: loaded})
    for split in splits:
        if split not in loaded:
            raise DataError(
                f"dataset '{cfg.path}' has no split '{split}'{closest(split, loaded)}: available {sorted(loaded)}; "
                "set data.train_split/data.eval_split"
            )
        if len(loaded[split]) == 0:
            raise DataError(f"split '{split}' of dataset '{cfg.path}' is empty: point the recipe at a split with examples")
    return DatasetDict({s: loaded[s] for s in splits})


class TaskData:
    """A task's raw splits, its label set and its tokenization."""

    def __init__(self, cfg: DataConfig, splits: Optional[list[str]] = None, seed: int = 42):
        self.task: Task = get_task(cfg.task)
        splits = splits or [cfg.train_split, cfg.eval_split]
        raw = load_raw_splits(cfg, list(dict.fromkeys(splits)))
        self.cfg = cfg = self.task.resolve_columns(cfg, next(iter(raw.values())).column_names)
        self.seed = seed
        for split, ds in raw.items():
            self._check_columns(split, ds)
        if cfg.train_split in raw and self.task.has_labels and isinstance(raw[cfg.train_split].features[cfg.label_column], ClassLabel):
            train = raw[cfg.train_split]  # the whole split: a subset that misses a rare class is fine, a dataset without it is not
            self.task.check_labels_covered(cfg.train_split, train, cfg, train.features[cfg.label_column].num_classes)
        if cfg.max_train_samples and cfg.train_split in raw and cfg.max_train_samples < len(raw[cfg.train_split]):
            raw[cfg.train_split] = raw[cfg.train_split].shuffle(seed=seed).select(range(cfg.max_train_samples))
        if cfg.max_eval_samples and cfg.eval_split in raw and cfg.max_eval_samples < len(raw[cfg.eval_split]):
            raw[cfg.eval_split] = raw[cfg.eval_split].select(range(cfg.max_eval_samples))
        # rows are checked once subsets are taken: only the rows used (every image is decoded once here)
        self.checked: dict[str, Optional[dict]] = {split: self.task.check_rows(split, ds, cfg) for split, ds in raw.items()}
        self.raw = raw
        self.label_names = self._label_names() if self.task.has_labels else []
        self.label2id = {name: i for i, name in enumerate(self.label_names)}

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(n) for i, n in enumerate(self.label_names)}

    def _check_columns(self, split: str, ds: datasets.Dataset) -> None:
        for col in self.task.required_columns(self.cfg):
            if col not in ds.column_names:
                raise DataError(
                    f"split '{split}' has no column '{col}'{closest(col, ds.column_names)}: columns are {ds.column_names}; "
                    "set data.text_column/data.image_column/data.label_column"
                )

    def _label_names(self) -> list[Any]:
        train = self.raw.get(self.cfg.train_split)
        reference = train if train is not None else next(iter(self.raw.values()))
        feature = reference.features[self.cfg.label_column]
        if isinstance(feature, Sequence):
            feature = feature.feature
        if isinstance(feature, ClassLabel):
            names: list[Any] = list(range(feature.num_classes))
            self._class_label_names = feature.names
        else:
            names = sorted(self._values(reference))
            self._class_label_names = None
        allowed = set(names)
        for split, ds in self.raw.items():
            outside = self._values(ds) - allowed
            if outside:
                raise DataError(
                    f"split '{split}' has labels {sorted(outside)[:5]} that are not in the label set {sorted(allowed)[:10]}: "
                    "fix the labels, or drop those rows (unlabelled test splits use -1)"
                )
        return names

    def _values(self, ds: datasets.Dataset) -> set:
        return self.task.label_values(ds[self.cfg.label_column])

    def label_display_names(self) -> dict[int, str]:
        names = getattr(self, "_class_label_names", None)
        return {i: (names[i] if names else str(n)) for i, n in enumerate(self.label_names)}

    def tokenize(self, processor, split: str) -> datasets.Dataset:
        """One split as model inputs with label ids 0..num_labels-1: tokenized (text), or image-processed on the fly (images,
        the training split augmented unless ``augment`` is off)."""
        return self.task.prepare_split(
            self.raw[split], processor, self.cfg, self.label2id, split, split == self.cfg.train_split, self.seed, self.checked.get(split)
        )

    def collator(self, tokenizer):
        return self.task.collator(tokenizer)

    def inputs(self, split: Optional[str] = None, count: Optional[int] = None):
        """The first ``count`` raw inputs of a split (default: evaluation), as a user sends them: texts or (text, pair)."""
        return self.task.inputs(self.raw[split or self.cfg.eval_split], self.cfg, count)
