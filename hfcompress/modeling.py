"""Loading models and tokenizers by Hub id or local path, for the tasks hfcompress supports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from .errors import ModelError

AUTO_CLASSES = {
    "text-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "text-generation": AutoModelForCausalLM,
}


def infer_task(model_or_config) -> str:
    """The hfcompress task of a model or config, from its architecture name."""
    if isinstance(model_or_config, PreTrainedModel):
        arch = type(model_or_config).__name__
    else:
        arch = (getattr(model_or_config, "architectures", None) or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith("ForTokenClassification"):
        return "token-classification"
    if arch.endswith("LMHeadModel") or arch.endswith("ForCausalLM"):
        return "text-generation"
    raise ModelError(f"cannot infer the task of architecture '{arch or 'unknown'}': pass the task explicitly")


def _describe_load_error(name: str, error: Exception) -> ModelError:
    local = Path(os.path.expanduser(name))
    if local.exists():
        why = f"the directory exists but could not be loaded ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        fix = "check it holds config.json and the weights"
    else:
        why = "it is not a local directory and could not be loaded from the Hub"
        fix = "check the path, or the Hub id and your network/HF_HUB_OFFLINE setting"
    return ModelError(f"model '{name}' not found: {why}; {fix}")


def load_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's config (Hub id or directory): a cheap check that the model exists, before any weights load."""
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


def check_head_fits_labels(config, num_labels: int, name: str) -> None:
    """A trained classification head must have as many labels as the data; a base model gets a new head."""
    has_head = any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in (config.architectures or []))
    if has_head and config.num_labels != num_labels:
        raise ModelError(
            f"model '{name}' has {config.num_labels} labels but the data has {num_labels}: "
            "use a checkpoint trained on this label set, or fine-tune a base model"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from .lowrank.modeling import is_factorized

    kwargs = {}
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if is_factorized(config):  # AutoTokenizer maps config types to tokenizers; this one tokenizes as its base architecture
            kwargs["config"] = config.base_config()
    except (OSError, ValueError):
        pass  # a tokenizer-only directory or repo has no config
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


def load_model(
    name_or_path: str,
    task: str = "text-classification",
    num_labels: Optional[int] = None,
    id2label: Optional[dict[int, str]] = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """Load ``name_or_path`` (Hub id or directory) with the auto class for ``task``.

    For classification, ``num_labels``/``id2label`` set a new head's size; a checkpoint whose
    head already has another size is an error rather than a silent re-initialisation.
    """
    if task not in AUTO_CLASSES:
        raise ModelError(f"task '{task}' is not supported: use one of {sorted(AUTO_CLASSES)}")
    config = load_config(name_or_path, trust_remote_code)
    if task != "text-generation" and num_labels is not None:
        check_head_fits_labels(config, num_labels, name_or_path)
        config.num_labels = num_labels
        if id2label:
            config.id2label = dict(id2label)
            config.label2id = {v: k for k, v in id2label.items()}
    try:
        return AUTO_CLASSES[task].from_pretrained(
            name_or_path, config=config, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


def load_checkpoint(name_or_path: str, task: Optional[str] = None, trust_remote_code: bool = False):
    """``(model, tokenizer, task)`` of a checkpoint; the task is inferred from its config when not given."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    if task is None:
        try:
            task = infer_task(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code))
        except (OSError, ValueError) as e:
            raise _describe_load_error(name_or_path, e) from e
    return load_model(name_or_path, task, trust_remote_code=trust_remote_code), tokenizer, task
