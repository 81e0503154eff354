"""Checks on model-card metadata before a card is written, mirroring what the Hub accepts.

The Hub's own validator (``ModelCard.validate``) needs the network; these checks run offline and
catch what it would reject: unknown licences, base models and datasets that are not repo ids,
a model-index that does not parse, and metadata that does not survive the YAML round trip.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from huggingface_hub import ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..artifacts import EVAL_RESULTS_FILE
from ..errors import ConfigError, closest


def check_repo_id(repo_id: str) -> None:
    """A Hub repo id as the Hub accepts it ('namespace/name'), checked offline."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"repo_id {repo_id!r} is not a Hub repo id ({str(e).splitlines()[0]}): use 'namespace/name'") from None

# Licence identifiers the Hub accepts in the `license` field (https://hf.co/docs/hub/repositories-licenses).
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
    "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1",
    "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
)

def pipeline_tags() -> tuple[str, ...]:
    """Pipeline tags of the tasks hfcompress produces (the Hub knows more; these are the ones we write)."""
    from ..tasks import TASKS

    return tuple(t.pipeline_tag for t in TASKS.values())
_LANGUAGE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]+)*|multilingual|code)$")
_LIBRARY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _fail(field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"model card metadata '{field}': {problem}; {fix}")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _check_repo_ids(field: str, value: Any, kind: str) -> None:
    for ref in _as_list(value):
        try:
            validate_repo_id(ref)
        except (HFValidationError, TypeError):
            raise _fail(field, f"{ref!r} is not a Hub {kind} id (namespace/name)", f"give the {kind}'s Hub id") from None


def validate_card_data(data: ModelCardData) -> None:
    """Raise a one-line :class:`ConfigError` naming the first metadata field the Hub would reject."""
    d = data.to_dict()
    license_ = d.get("license")
    if license_ is not None and license_ not in HUB_LICENSES:
        raise _fail("license", f"{license_!r} is not a Hub licence id{closest(str(license_), HUB_LICENSES)}",
                    "use an id from https://hf.co/docs/hub/repositories-licenses, or 'other' with license_name and license_link")
    if license_ == "other" and not (d.get("license_name") and d.get("license_link")):
        raise _fail("license", "'other' needs license_name and license_link", "give both, or a standard licence id")
    if d.get("base_model") is not None:
        _check_repo_ids("base_model", d["base_model"], "model")
    if d.get("datasets") is not None:
        _check_repo_ids("datasets", d["datasets"], "dataset")
    if d.get("pipeline_tag") is not None and d["pipeline_tag"] not in pipeline_tags():
        raise _fail("pipeline_tag", f"{d['pipeline_tag']!r} is not one of {list(pipeline_tags())}", "set the model's task")
    for lang in _as_list(d.get("language") or []):
        if not isinstance(lang, str) or not _LANGUAGE.match(lang):
            raise _fail("language", f"{lang!r} is not an ISO 639 code", "use codes like 'en' or 'multilingual'")
    if d.get("library_name") is not None and not _LIBRARY.match(str(d["library_name"])):
        raise _fail("library_name", f"{d['library_name']!r} is not a library id", "use e.g. 'transformers' or 'onnx'")
    for tag in d.get("tags") or []:
        if not isinstance(tag, str) or not tag.strip():
            raise _fail("tags", f"{tag!r} is not a non-empty string", "remove it")
    if "model-index" in d:
        _check_model_index(d["model-index"])
    text = data.to_yaml()
    try:
        reloaded = ModelCardData(**(yaml.safe_load(text) or {}))
    except (ValueError, TypeError, yaml.YAMLError) as e:
        raise _fail("model-index", f"does not load back ({str(e).splitlines()[0]})", "report this as a bug") from None
    if reloaded.to_dict() != d:
        changed = next(k for k in set(d) | set(reloaded.to_dict()) if d.get(k) != reloaded.to_dict().get(k))
        raise _fail(changed, "changes when written to YAML and read back", "use plain strings, numbers, lists and mappings")


def _check_model_index(model_index: Any) -> None:
    try:
        name, results = model_index_to_eval_results(model_index)
    except (KeyError, TypeError, IndexError) as e:
        raise _fail("model-index", f"cannot be parsed ({type(e).__name__}: {e})", "each result needs task.type, dataset.type/name and metrics") from None
    if not name:
        raise _fail("model-index", "has no model name", "set model_name")
    for r in results:
        if r.task_type not in pipeline_tags():
            raise _fail("model-index.task.type", f"{r.task_type!r} is not one of {list(pipeline_tags())}", "set the model's task")
        value = r.metric_value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(f"model-index.metrics.{r.metric_type}", f"value {value!r} is not a finite number", f"check {EVAL_RESULTS_FILE}")
        if not r.dataset_type or not r.dataset_name:
            raise _fail("model-index.dataset", "needs a type (dataset id) and a name", "pass --dataset")
