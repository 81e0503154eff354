"""The names of the files hfcompress writes and reads, and the compression summary every method writes.

Every module takes its file names from here, so that what a stage writes and what the card, the
runner and the exporter read cannot drift apart. Transformers' and ONNX Runtime's own names
(``config.json``, ``model.safetensors``, ``model.onnx``, ``README.md``) stay where they are used.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import ConfigError
from .utils.io import atomic_write_json

# --- recipe runner ------------------------------------------------------------------------------
RECIPE_FILE = "hfcompress_recipe.yaml"  # the resolved recipe (secrets redacted), copied into every stage output by RunContext
STAGE_DONE_FILE = ".hfcompress_stage_done"  # marks a stage output complete, so a resumed run skips it (RunContext)
FINGERPRINT_FILE = ".hfcompress_fingerprint.json"  # what a stage ran with (config, data and input hashes), beside its checkpoints and in its output; hidden: never shipped
FILE_HASHES_DIR = "file-hashes"  # under the user cache dir: one JSON of remembered file hashes per hashed directory (utils.hash_cache)
LOCK_SUFFIX = ".lock"  # .<output dir name>.lock beside an output directory: its writer's pid, host and command (utils.lock)
SQLITE_SCHEMA_LOCK_SUFFIX = ".schema.lock"  # beside a search's SQLite file: its first worker creates the tables while holding it (search.study)

# --- training (train, distill, prune-with-training stages) --------------------------------------
TRAINING_ARGS_FILE = "training_args.json"  # the TrainingArguments as JSON, instead of Trainer's pickled training_args.bin
TRAIN_RESULTS_FILE = "train_results.json"  # Trainer's train metrics (runtime, loss)
EVAL_RESULTS_FILE = "eval_results.json"  # Trainer's eval metrics (eval_accuracy, ...); the card's model-index reads it
TRAINER_STATE_FILE = "trainer_state.json"  # Trainer's state: log history, best checkpoint; read to resume
DISTILLATION_PROJECTIONS_FILE = "distillation_projections.safetensors"  # hidden-state projections a DistillationTrainer checkpoint resumes from
LOGIT_CACHE_META_FILE = "meta.json"  # what a cached-teacher-logits directory was computed from (distillation.cache)

# --- evaluation, export, hub --------------------------------------------------------------------
EVALUATION_RESULTS_FILE = "results.json"  # the evaluate stage's rows (metrics, latency, size per model)
EVALUATION_TABLE_FILE = "results.md"  # the same rows as a Markdown table
COMPRESSION_REPORT_NAME = "compression_report"  # stem of write_compression_report's .json/.md/.png (latency/size table)
COMPRESSION_REPORT_FILE = f"{COMPRESSION_REPORT_NAME}.json"  # the card's "Latency and size" section reads it
PARITY_FILE = "parity.json"  # PyTorch against ONNX Runtime outputs of each exported .onnx file (export_onnx)
PUSH_RESULT_FILE = "push.json"  # the push stage's record of the commit it made on the Hub

# --- search (hfcompress search) -----------------------------------------------------------------
SEARCH_RESULTS_FILE = "search.json"  # trials, Pareto front, CPU seconds, the chosen point and its accuracy gate
SEARCH_TABLE_FILE = "search.md"  # the trials as a Markdown table
SEARCH_CHART_FILE = "search.png"  # metric against batch-1 latency, the Pareto front highlighted
BEST_RECIPE_FILE = "best_recipe.yaml"  # the chosen point as a plain recipe that `hfcompress run` reproduces
SEARCH_STORAGE_FILE = "study.db"  # the default Optuna SQLite storage in the search's output directory

# --- compression methods (each also writes COMPRESSION_SUMMARY_FILE) ----------------------------
SPARSITY_REPORT_FILE = "sparsity_report.json"  # measured sparsity / heads and FFN kept (magnitude and structured pruning)
FILTER_PRUNING_FILE = "filter_pruning.json"  # channels per group, parameters and MACs before/after (filter pruning of CNNs)
PRUNING_MASKS_FILE = "pruning_masks.safetensors"  # masks in a pruning run's checkpoints, to resume it
QUANTIZATION_FILE = "quantization.json"  # the quantization scheme (QAT, ONNX PTQ, bitsandbytes)
QAT_RANGES_FILE = "qat_ranges.safetensors"  # activation ranges QAT observed; static ONNX quantization reuses them
FACTORIZATION_FILE = "factorization.json"  # ranks and retained energy per layer (low-rank factorization)
VOCAB_TRIM_FILE = "vocab_trim.json"  # vocabulary and parameters before/after, new id -> old id (vocabulary trimming)
DISTILLATION_FILE = "distillation.json"  # teacher, student, loss, layer map, logit cache, GKD, sizes and results (DistillationTrainer)
COMPRESSION_SUMMARY_FILE = "compression_summary.json"  # a list of CompressionSummary, one per method applied; the card reads it

# --- serving: Triton Inference Server model repositories (serving.triton) ------------------------------
TRITON_REPOSITORY_DIR = "triton"  # the export stage's Triton model repository, beside its ONNX files (triton: ...); card and push leave it out
TRITON_TOKENIZER_DIR = "tokenizer"  # beside a Triton model's config.pbtxt; Triton loads only numeric version directories
TRITON_LABELS_FILE = "labels.txt"  # one label a line, in logit order: Triton's classification extension reads it

# --- what describes a model, as the card and the server read it ---------------------------------
# An export carries these from its source checkpoint (with each summary's details_file), so that the card and the
# server's /metadata find them beside the graph; the recipe runner rewrites RECIPE_FILE in a stage's output anyway.
DESCRIPTION_FILES = (EVAL_RESULTS_FILE, COMPRESSION_SUMMARY_FILE, COMPRESSION_REPORT_FILE, RECIPE_FILE)


@dataclass(frozen=True)
class CompressionSummary:
    """What one compression method did, in a form a model card renders without knowing the method.

    ``settings`` and ``results`` map a label to a value (a number, a string, a list or a flat mapping);
    ``tables`` are two-column tables ``{"columns": [key header, value header], "rows": {key: value}}``.
    """

    method: str  # the method's id, e.g. "magnitude" or "qat"
    title: str  # the card's section heading, e.g. "Pruning"
    applied: str  # what it made of the model, for the card's first sentence, e.g. "pruned"
    summary: str  # one sentence saying what was done
    details_file: str  # the method's own file beside it, with everything it recorded
    settings: dict[str, Any] = field(default_factory=dict)  # what was asked for
    results: dict[str, Any] = field(default_factory=dict)  # what was measured
    tables: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # Hub tags of the method

    def __post_init__(self):  # a malformed summary fails where it is written, not later in the card
        if not self._well_formed():
            raise ConfigError(f"compression summary of {self.method!r} is malformed: texts must be non-empty strings, settings and "
                              "results mappings, tables {'columns': [2 headers], 'rows': {...}}, tags strings")

    def _well_formed(self) -> bool:
        texts = (self.method, self.title, self.applied, self.summary, self.details_file)
        return (
            all(isinstance(t, str) and t for t in texts)
            and isinstance(self.settings, dict) and isinstance(self.results, dict)
            and all(isinstance(t, dict) and len(t.get("columns") or ()) == 2 and isinstance(t.get("rows"), dict) for t in self.tables)
            and all(isinstance(t, str) for t in self.tags)
        )

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = COMPRESSION_SUMMARY_FILE) -> "CompressionSummary":
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"method", "title", "applied", "summary", "details_file"} <= set(data) or not set(data) <= names:
            raise ConfigError(f"{source} holds an entry that is not a compression summary ({sorted(names)}): rewrite it with write_compression_summary")
        return cls(**data)


def read_compression_summaries(directory: str | Path) -> list[CompressionSummary]:
    """The summaries written into ``directory`` (none when it has no summary file)."""
    path = Path(directory) / COMPRESSION_SUMMARY_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix or delete it") from None
    if not isinstance(entries, list):
        raise ConfigError(f"{path} must hold a list of compression summaries: rewrite it with write_compression_summary")
    return [CompressionSummary.from_dict(e, path) for e in entries]


def copy_description(source: str | Path, destination: str | Path) -> list[str]:
    """Copy ``source``'s DESCRIPTION_FILES and its summaries' details files into ``destination``, keeping any it already has; the names copied."""
    source, destination = Path(source), Path(destination)
    names = dict.fromkeys([*DESCRIPTION_FILES, *(s.details_file for s in read_compression_summaries(source))])
    copied = [name for name in names if (source / name).is_file() and not (destination / name).exists()]
    for name in copied:
        shutil.copy2(source / name, destination / name)
    return copied


def write_compression_summary(directory: str | Path, summary: CompressionSummary) -> None:
    """Add ``summary`` to the directory's summary file, replacing an earlier one of the same method
    (one training run may both prune and quantize, and a checkpoint is rewritten at each save)."""
    kept = [s for s in read_compression_summaries(directory) if s.method != summary.method]
    atomic_write_json(Path(directory) / COMPRESSION_SUMMARY_FILE, [asdict(s) for s in [*kept, summary]])


def write_method_report(directory: str | Path, details: dict, summary: CompressionSummary) -> None:
    """Write a method's own file (``summary.details_file``) and its summary beside it: what every method calls."""
    atomic_write_json(Path(directory) / summary.details_file, details)
    write_compression_summary(directory, summary)


def set_entries(details: dict, keys: Optional[Iterable[str]] = None) -> dict:
    """The entries of a method's own report under ``keys`` (default: all) that hold a value, in that order."""
    return {k: details[k] for k in (details if keys is None else keys) if details.get(k) not in (None, [], {})}
