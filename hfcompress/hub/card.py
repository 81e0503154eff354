"""Model cards: describe a compressed checkpoint from the files hfcompress wrote next to it.

Everything comes from the model directory and what the recipe runner and the compression stages
saved beside it (the recipe, the eval results, the ONNX parity checks, the latency/size report and
each method's compression summary, named in :mod:`hfcompress.artifacts`); only ``config.json`` (or
an ``.onnx`` file) is required. Compression sections are rendered from the summaries alone, so the
card needs no change when a method is added. The
metadata goes through ``huggingface_hub.ModelCardData`` and :func:`validate_card_data`, the text
through a Jinja template in ``model_cards/``, and the card is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants
from huggingface_hub.repocard import metadata_load

from ..artifacts import (
    COMPRESSION_REPORT_FILE,
    COMPRESSION_REPORT_NAME,
    EVAL_RESULTS_FILE,
    PARITY_FILE,
    RECIPE_FILE,
    STAGE_DONE_FILE,
    TRITON_REPOSITORY_DIR,
    read_compression_summaries,
)
from ..errors import ConfigError
from ..tasks import DEFAULT_TASK, TASKS, Task, task_of
from ..utils.hashing import file_sha256, weight_files, weights_sha256
from ..utils.io import atomic_write_text
from .push import is_pickle
from .validation import check_repo_id, validate_card_data

logger = logging.getLogger("hfcompress")

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "compressed_model.md.j2"
CARD_TAG = "hfcompress"  # marks cards this module wrote, so it never overwrites a hand-written README silently
# Metric ids (https://hf.co/metrics) that go into the model-index, with their display names.
METRIC_NAMES = {
    "accuracy": "Accuracy", "f1": "F1", "precision": "Precision", "recall": "Recall",
    "matthews_correlation": "Matthews correlation", "pearson": "Pearson", "spearmanr": "Spearman",
    "exact_match": "Exact match", "perplexity": "Perplexity",
}
_MAX_LINEAGE = 8  # stages followed back from a model to its origin


@dataclass
class CardConfig:
    """What to put in a model card beyond what the model directory says about itself."""

    repo_id: Optional[str] = field(default=None, metadata={"help": "Hub repo the model will live in; used in the usage snippets."})
    model_name: Optional[str] = field(default=None, metadata={"help": "Name in the title and model-index; default: the repo or directory name."})
    teacher: Optional[str] = field(default=None, metadata={"help": "Teacher (Hub id or path) when the directory has no recipe naming it."})
    base_model: Optional[str] = field(default=None, metadata={"help": "Hub id for base_model; default: the first Hub id among the teacher and its ancestors."})
    license: Optional[str] = field(default=None, metadata={"help": "Licence id; default: carried from the teacher's (or an ancestor's) card."})
    dataset: Optional[str] = field(default=None, metadata={"help": "Hub dataset id of the evaluation data; default: the recipe's data.path when it is a Hub id."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Dataset config name (e.g. sst2 for nyu-mll/glue); default: the recipe's data.name."})
    dataset_split: Optional[str] = field(default=None, metadata={"help": "Split name on the Hub; default: the recipe's eval_split."})
    language: list[str] = field(default_factory=list, metadata={"help": "ISO 639 language codes, e.g. [en]."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra tags, added to those derived from what was done."})
    onnx: list[str] = field(default_factory=list, metadata={"help": "Export directories whose .onnx files ship in onnx/ (their parity checks and compression summaries are described)."})
    report: Optional[str] = field(default=None, metadata={"help": f"{COMPRESSION_REPORT_FILE}, or the directory holding it (latency/size table)."})
    template: Optional[str] = field(default=None, metadata={"help": "Jinja template; default: model_cards/compressed_model.md.j2."})

    def __post_init__(self):
        if self.repo_id is not None:
            check_repo_id(self.repo_id)
        for name in ("onnx", "language", "tags"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value or []))


# --------------------------------------------------------------------------------------------
# Reading what the model directory says about itself


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix or delete it") from None


def _recipe_context():
    """hfcompress.recipes.context, imported late: the recipes package imports the card stage, which imports this module."""
    from ..recipes import context

    return context


def looks_like_hub_id(ref: str) -> bool:
    return _recipe_context().looks_like_hub_id(ref)


def _read_recipe(directory: Path) -> Optional[dict]:
    path = directory / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({getattr(e, 'problem', e)}): fix or delete it") from None
    return recipe if isinstance(recipe, dict) else None


def _run_dir(model_dir: Path, recipe: dict) -> Path:
    """The directory the recipe ran from, so that its relative paths resolve.

    Stage outputs are ``<run dir>/<output_dir>/<stage>``; a recipe's relative model paths are relative to the run dir.
    """
    root = model_dir.resolve().parent
    parts = Path(str(recipe.get("output_dir", ""))).parts
    if parts and not Path(recipe["output_dir"]).is_absolute() and root.parts[-len(parts):] == parts:
        return root.parents[len(parts) - 1]
    return Path.cwd()


def in_recipe_order(steps: list[dict], recipe: Optional[dict]) -> list[dict]:
    """Ancestor stages in the order the recipe ran them (the lineage walks teacher before student, not in time order).

    Stages from earlier recipes, not in this one, come first in the order found.
    """
    names = [s.get("name") for s in (recipe or {}).get("stages") or [] if isinstance(s, dict)]
    return sorted(steps, key=lambda step: names.index(step.get("name")) if step.get("name") in names else -1)


def _stage_of(recipe: Optional[dict], name: str) -> Optional[dict]:
    for stage in (recipe or {}).get("stages") or []:
        if isinstance(stage, dict) and stage.get("name") == name:
            return stage
    return None


@dataclass
class Ancestor:
    """A model a stage started from: a local directory or a Hub id, and the stage that made it (if known)."""

    ref: str
    path: Optional[Path]
    stage: Optional[dict] = None


def _resolve_ref(ref: str, model_dir: Path, recipe: Optional[dict]) -> Ancestor:
    if recipe and _stage_of(recipe, ref) is not None:
        path = model_dir.resolve().parent / ref
        return Ancestor(ref, path if path.is_dir() else None, _stage_of(recipe, ref))
    candidates = [Path(os.path.expanduser(ref))]
    if recipe and not candidates[0].is_absolute():
        candidates.insert(0, _run_dir(model_dir, recipe) / ref)
    for path in candidates:
        if path.is_dir():
            return Ancestor(ref, path.resolve(), _stage_of(_read_recipe(path), path.name))
    return Ancestor(ref, None)


def _parent_refs(stage: Optional[dict]) -> list[str]:
    """The models a stage started from, teacher first: distill has teacher (and maybe student), others have model."""
    if not stage:
        return []
    return [stage[k] for k in ("teacher", "model", "student") if isinstance(stage.get(k), str)]


def lineage(model_dir: Path, teacher: Optional[str] = None) -> list[Ancestor]:
    """The model's ancestors, nearest first, following each stage's teacher/model back through the recipes.

    ``teacher`` stands in for the first step when the directory has no recipe naming one.
    """
    recipe = _read_recipe(model_dir)
    start = Ancestor(str(model_dir), model_dir.resolve(), _stage_of(recipe, model_dir.name))
    refs = [teacher] if teacher else _parent_refs(start.stage)
    out: list[Ancestor] = []
    frontier = [(ref, model_dir, recipe) for ref in refs]
    seen: set[str] = set()
    while frontier and len(out) < _MAX_LINEAGE:
        ref, child_dir, child_recipe = frontier.pop(0)
        anc = _resolve_ref(ref, child_dir, child_recipe)
        key = str(anc.path or anc.ref)
        if key in seen:
            continue
        seen.add(key)
        out.append(anc)
        if anc.path is not None:
            frontier.extend((r, anc.path, _read_recipe(anc.path) or child_recipe) for r in _parent_refs(anc.stage))
    return out


def _card_metadata(anc: Ancestor) -> dict:
    """YAML metadata of an ancestor's card: its README.md, or its Hub card when online."""
    if anc.path is not None:
        readme = anc.path / "README.md"
        return (metadata_load(readme) or {}) if readme.is_file() else {}
    if constants.HF_HUB_OFFLINE or not looks_like_hub_id(anc.ref):
        return {}
    try:
        return ModelCard.load(anc.ref).data.to_dict()
    except Exception as e:  # the Hub or the repo is unreachable: carry nothing rather than fail the card
        logger.warning("could not read the card of %s (%s): licence not carried from it", anc.ref, type(e).__name__)
        return {}


def _count_parameters(model_dir: Path) -> Optional[int]:
    """Parameter count from safetensors headers, without loading the weights."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


def _onnx_files(model_dir: Path, onnx_dirs: list[Path]) -> list[dict]:
    found = [(p, p.relative_to(model_dir).as_posix()) for p in sorted(model_dir.glob("*.onnx")) + sorted(model_dir.glob("onnx/*.onnx"))]
    for d in onnx_dirs:
        found += [(p, f"onnx/{p.name}") for p in sorted(d.glob("*.onnx"))]
    return [{"path": repo_path, "size_mb": round(_onnx_size(p) / 1e6, 2)} for p, repo_path in found]


def _onnx_size(path: Path) -> int:
    """An ONNX graph and its external-data file, if any."""
    data = path.with_name(path.name + "_data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _task_of(config: dict, recipe: Optional[dict]) -> Optional[Task]:
    """The model's task from its architecture, else from the recipe that made it; None when neither says."""
    from ..errors import HFCompressError

    try:
        return task_of(config)
    except HFCompressError:
        name = ((recipe or {}).get("data") or {}).get("task")
        return TASKS.get(name) if isinstance(name, str) else None


# --------------------------------------------------------------------------------------------
# Building the card


def gather_card_facts(model_dir: str | Path, cfg: CardConfig) -> dict:
    """Everything the card says, as plain data: the template's variables and the metadata's source."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model directory {model_dir} does not exist: give the directory of a saved model")
    onnx_dirs = [Path(d) for d in cfg.onnx]
    for d in onnx_dirs:
        if not d.is_dir() or not any(d.glob("*.onnx")):
            raise ConfigError(f"ONNX directory {d} has no .onnx file: give the output directory of an export")
    config_path = model_dir / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    onnx_files = _onnx_files(model_dir, onnx_dirs)
    if config is None and not onnx_files:
        raise ConfigError(f"{model_dir} has neither config.json nor an .onnx file: give the directory of a saved model")
    config = config or {}
    recipe = _read_recipe(model_dir)
    ancestors = lineage(model_dir, cfg.teacher)

    dirs = [model_dir, *onnx_dirs]  # the model's own files first, then what describes its ONNX variants
    eval_results = next((_read_json(d / EVAL_RESULTS_FILE) for d in dirs if (d / EVAL_RESULTS_FILE).is_file()), {})
    parity, parity_seen, compression, summaries_seen = [], [], [], []
    check_packaged_onnx(model_dir, dirs)
    for d in dirs:
        prefix = "" if d == model_dir else "onnx/"  # where the directory's files sit in the repo
        if (d / PARITY_FILE).is_file() and (checked := _read_json(d / PARITY_FILE)) not in parity_seen:
            parity_seen.append(checked)
            parity.extend(_parity_entries(checked, prefix))
        for summary in read_compression_summaries(d):
            if summary in summaries_seen:  # e.g. the QAT summary an export copies beside model.onnx
                continue
            summaries_seen.append(summary)
            compression.append({**asdict(summary), "file": f"{prefix}{summary.details_file}" if prefix else None})
    report = _load_report(cfg.report) if cfg.report else (_load_report(model_dir) if (model_dir / COMPRESSION_REPORT_FILE).is_file() else None)

    stage = _stage_of(recipe, model_dir.name)
    steps = in_recipe_order([a.stage for a in reversed(ancestors) if a.stage], recipe) + ([stage] if stage else [])
    distill = next((s for s in reversed(steps) if s.get("stage") == "distill"), None)
    teacher = ancestors[0].ref if ancestors and (cfg.teacher or (stage or {}).get("stage") == "distill") else None
    if distill and not teacher:
        teacher = distill.get("teacher")

    teacher_anc = next((a for a in ancestors if a.ref == teacher), None)
    license_, license_source = cfg.license, None
    if license_ is None:
        for anc in [Ancestor(str(model_dir), model_dir), *ancestors]:  # the model's own card first, if it has one
            meta = _card_metadata(anc)
            if meta.get("license"):
                license_, license_source = meta["license"], None if anc.path == model_dir else anc.ref
                break
    base_model = cfg.base_model or next((a.ref for a in ancestors if a.path is None and looks_like_hub_id(a.ref)), None)

    data = (recipe or {}).get("data") or {}
    data_is_local = bool(data.get("path")) and (Path(data["path"]).exists() or (_run_dir(model_dir, recipe) / data["path"]).exists())
    dataset_id = cfg.dataset or (data["path"] if data.get("path") and looks_like_hub_id(data["path"]) and not data_is_local else None)
    task = _task_of(config, recipe)
    eval_metrics = _eval_metrics(eval_results, task)
    dataset = {
        "id": dataset_id,
        "config": cfg.dataset_config or data.get("name"),
        "split": cfg.dataset_split or data.get("eval_split"),
        "train_split": data.get("train_split"),
        "local_path": None if dataset_id or not data.get("path") else data["path"],
        "max_train_samples": data.get("max_train_samples"),
        "max_eval_samples": data.get("max_eval_samples"),
    }
    dataset["name"] = " ".join(x for x in (Path(dataset_id or data.get("path") or "").name, dataset["config"]) if x) or None

    weights = weight_files(model_dir)
    model_name = cfg.model_name or (cfg.repo_id.split("/")[-1] if cfg.repo_id else model_dir.resolve().name)
    return {
        "model_name": model_name,
        "repo_id": cfg.repo_id or f"your-namespace/{model_name}",
        "task": task.pipeline_tag if task else None,
        "task_name": task.display_name if task else None,
        "ort_class": task.ort_model if task else None,
        "usage": (task or TASKS[DEFAULT_TASK]).card_usage(),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "num_layers": config.get("num_hidden_layers") or config.get("n_layer"),
        "hidden_size": config.get("hidden_size") or config.get("n_embd"),
        "num_heads": config.get("num_attention_heads") or config.get("n_head"),
        "intermediate_size": config.get("intermediate_size"),
        "vocab_size": config.get("vocab_size"),
        "labels": task.card_labels(config) if task else None,
        "num_parameters": _count_parameters(model_dir),
        "weights_mb": round(sum(p.stat().st_size for p in weights) / 1e6, 2) if weights else None,
        "has_weights": bool(weights),
        "onnx_files": onnx_files,
        "teacher": teacher,
        "teacher_info": _model_summary(teacher_anc) if teacher_anc and teacher_anc.path else None,
        "base_model": base_model,
        "license": license_,
        "license_source": license_source,
        "dataset": dataset,
        "metrics": eval_metrics,
        "steps": [_describe_step(s) for s in steps],
        "compression": compression,
        "parity": parity,
        "report": report,
        "recipe_file": RECIPE_FILE if (model_dir / RECIPE_FILE).is_file() else None,
        "language": cfg.language,
        "extra_tags": cfg.tags,
    }


def check_packaged_onnx(model_dir: Path, dirs: list[Path]) -> None:
    """The card describes only ONNX files that load, and parity results that are about those very files and this checkpoint.

    A truncated .onnx, a parity.json left from an earlier export (the file's sha256 differs), or an
    export of another checkpoint (its source weights' sha256 differs) is an error naming the fix.
    """
    import onnx

    weights = weights_sha256(model_dir)
    for d in dirs:
        for graph in sorted(d.glob("*.onnx")):
            try:
                onnx.load(str(graph), load_external_data=False)
            except Exception as e:  # noqa: BLE001 - a broken file raises DecodeError, ValueError, OSError...
                raise ConfigError(f"{graph} does not load as ONNX ({type(e).__name__}): export the model again") from None
        parity = _read_json(d / PARITY_FILE) if (d / PARITY_FILE).is_file() else None
        if not isinstance(parity, dict):
            continue
        for name, result in (parity.get("files") or {}).items():
            recorded = result.get("sha256") if isinstance(result, dict) else None
            if recorded and (d / name).is_file() and file_sha256(d / name) != recorded:
                raise ConfigError(f"{d / PARITY_FILE} checked another {name} than the one in {d}: export the model again, which checks it anew")
        source = parity.get("source_weights_sha256")
        if d != model_dir and source and weights and source != weights:
            raise ConfigError(
                f"the ONNX export in {d} was made from another checkpoint than {model_dir} (weights differ): "
                f"export {model_dir} itself (hfcompress export {model_dir} --output DIR) and pass that DIR"
            )


def _parity_entries(parity: Any, prefix: str) -> list[dict]:
    """One entry per checked .onnx file of a ``parity.json`` as :func:`hfcompress.export.export_onnx` writes it.

    ``prefix`` is where the files sit in the repo ("" for the model directory, "onnx/" for an export shipped there).
    """
    if not isinstance(parity, dict) or not isinstance(parity.get("files"), dict):
        return []
    return [
        {
            "onnx_file": f"{prefix}{name}",
            "backend": parity.get("backend"),
            "opset": parity.get("opset"),
            "texts": parity.get("texts"),
            "optimization_level": parity.get("optimization_level") if "_optimized" in name else None,
            "max_abs_diff": result.get("max_abs_diff"),
            "tolerance": result.get("tolerance"),
            "passed": result.get("passed"),
            "checks": result.get("checks") or [],
        }
        for name, result in parity["files"].items()
        if isinstance(result, dict)
    ]


def _model_summary(anc: Ancestor) -> Optional[dict]:
    """Shape of a local ancestor model, and what it was trained from."""
    config_path = anc.path / "config.json"
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    parents = _parent_refs(anc.stage)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "num_layers": config.get("num_hidden_layers") or config.get("n_layer"),
        "num_parameters": _count_parameters(anc.path),
        "origin": parents[0] if parents else None,
    }


def _load_report(ref: str | Path) -> dict:
    path = Path(ref)
    path = path / COMPRESSION_REPORT_FILE if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"compression report {path} does not exist: give {COMPRESSION_REPORT_FILE} or its directory")
    report = _read_json(path)
    report = report if isinstance(report, dict) else {"rows": report}
    hardware = report.get("hardware") or []
    report["hardware"] = [hardware] if isinstance(hardware, dict) else hardware  # one machine, or one per row
    return report


def _eval_metrics(results: dict, task: Optional[Task]) -> dict[str, float]:
    """Metric id -> value from a Trainer's eval_results.json (keys like eval_accuracy)."""
    metrics = {}
    for key, value in (results or {}).items():
        name = key.removeprefix("eval_")
        if name in METRIC_NAMES and isinstance(value, (int, float)):
            metrics[name] = float(value)
    return task.card_metrics(results or {}, metrics) if task else metrics


def _describe_step(stage: dict) -> dict:
    """One compression/training step of the recipe, with the settings that define it."""
    settings = {k: v for k, v in stage.items() if k not in ("stage", "name", "training", "callbacks", "trust_remote_code") and v not in (None, [], {})}
    training = stage.get("training") or {}
    keep = ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "alpha", "temperature",
            "hidden_distill_weight", "attention_distill_weight", "layer_map", "max_steps", "warmup_ratio", "warmup_steps", "weight_decay")
    settings.update({k: training[k] for k in keep if k in training})
    for cb in stage.get("callbacks") or []:
        settings[f"callback {cb.get('type')}"] = {k: v for k, v in cb.items() if k != "type"}
    return {"kind": stage.get("stage"), "name": stage.get("name"), "settings": settings}


def derive_tags(facts: dict) -> list[str]:
    """Tags by what actually happened to the model (and what ships with it)."""
    tags = [CARD_TAG]
    if facts["teacher"]:
        tags.append("distillation")
    for summary in facts["compression"]:
        tags += summary["tags"]
    if facts["onnx_files"]:
        tags.append("onnx")
    if facts["task"]:
        tags.append(facts["task"])
    return [t for t in dict.fromkeys(tags + list(facts["extra_tags"])) if t]


def build_card_data(facts: dict) -> ModelCardData:
    """The card's YAML metadata from the gathered facts."""
    dataset = facts["dataset"]
    eval_results = []
    if facts["task"] and facts["metrics"] and (dataset["id"] or dataset["name"]):
        for name, value in facts["metrics"].items():
            eval_results.append(EvalResult(
                task_type=facts["task"], task_name=facts["task_name"],
                dataset_type=dataset["id"] or dataset["name"], dataset_name=dataset["name"] or dataset["id"],
                dataset_config=dataset["config"], dataset_split=dataset["split"],
                metric_type=name, metric_name=METRIC_NAMES[name], metric_value=round(value, 6),
            ))
    return ModelCardData(
        base_model=facts["base_model"],
        datasets=[dataset["id"]] if dataset["id"] else None,
        language=facts["language"] or None,
        library_name="transformers" if facts["has_weights"] else "onnx",
        license=facts["license"],
        metrics=list(facts["metrics"]) or None,
        model_name=facts["model_name"] if eval_results else None,
        eval_results=eval_results or None,
        pipeline_tag=facts["task"],
        tags=derive_tags(facts),
    )


def render_model_card(model_dir: str | Path, cfg: Optional[CardConfig] = None) -> ModelCard:
    """Gather, validate and render the card of ``model_dir`` (nothing is written)."""
    cfg = cfg or CardConfig()
    template = Path(cfg.template) if cfg.template else DEFAULT_TEMPLATE
    if not template.is_file():
        raise ConfigError(f"card template {template} does not exist: give a Jinja template path or leave it out")
    facts = gather_card_facts(model_dir, cfg)
    card_data = build_card_data(facts)
    validate_card_data(card_data)
    rendered = ModelCard.from_template(card_data, template_path=str(template), facts=facts, default_task=DEFAULT_TASK)
    # Optional sections leave runs of blank lines behind; Markdown needs one at most.
    card = ModelCard(re.sub(r"\n{3,}", "\n\n", rendered.content).strip() + "\n")
    # The rendered text must load back to the same metadata (ModelCard parses the YAML header again).
    if ModelCard(card.content).data.to_dict() != card_data.to_dict():
        raise ConfigError(f"card template {template} changes the metadata header: keep '{{{{ card_data }}}}' between the --- lines")
    return card


def write_model_card(model_dir: str | Path, output: Optional[str | Path] = None, cfg: Optional[CardConfig] = None, overwrite: bool = False) -> Path:
    """Render the card of ``model_dir`` and write it atomically; returns the README path.

    ``output``: None writes ``model_dir/README.md``; a path ending in ``.md`` writes just that file;
    any other path becomes a release folder (the model's files, ``onnx/`` and the report, and the card)
    ready for :func:`hfcompress.hub.push_to_hub`.
    """
    cfg = cfg or CardConfig()
    model_dir = Path(model_dir)
    release = output is not None and not str(output).endswith(".md") and Path(output).resolve() != model_dir.resolve()
    if (cfg.onnx or cfg.report) and output is None:
        raise ConfigError("--onnx/--report describe files outside the model directory: give --output DIR to assemble a release folder there")
    readme = Path(output) / "README.md" if release else (Path(output) if output and str(output).endswith(".md") else model_dir / "README.md")
    if readme.exists() and not overwrite and CARD_TAG not in ((metadata_load(readme) or {}).get("tags") or []):
        raise ConfigError(f"{readme} exists and was not written by hfcompress: pass --overwrite to replace it")
    card = render_model_card(model_dir, cfg)
    if release:
        assemble_release(model_dir, Path(output), cfg, str(card), overwrite)
    else:
        atomic_write_text(readme, str(card))
    return readme


def assemble_release(model_dir: Path, out: Path, cfg: CardConfig, card_text: str, overwrite: bool = False) -> Path:
    """A folder holding what gets published: the model's files, ONNX files under onnx/, the report and the card."""
    from ..utils.io import atomic_output_dir

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        _link_tree(model_dir, tmp)
        for d in cfg.onnx:
            _link_tree(Path(d), tmp / "onnx")  # with its config and tokenizer, so ORTModel loads subfolder="onnx" alone
        if cfg.report:
            report = Path(cfg.report)
            for p in (sorted(report.glob(f"{COMPRESSION_REPORT_NAME}.*")) if report.is_dir() else [report]):
                _link(p, tmp / p.name)
        (tmp / "README.md").write_text(card_text, encoding="utf-8")
    return out


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) the files of ``src`` into ``dst``, without hidden or work files,
    nor an export's Triton model repository (a second copy of its graph, for a Triton server, not for the Hub)."""
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if not p.is_file() or p.name == STAGE_DONE_FILE or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0].startswith("checkpoint-") or rel.parts[0] == TRITON_REPOSITORY_DIR or p.name == "README.md" or is_pickle(rel.as_posix()):
            continue
        _link(p, dst / rel)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
