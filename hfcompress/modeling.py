"""Loading models and tokenizers by Hub id or local path, for the tasks hfcompress supports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from .errors import ModelError
from .tasks import DEFAULT_TASK, Task, get_task, task_of


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
    task: str | Task = DEFAULT_TASK,
    num_labels: Optional[int] = None,
    id2label: Optional[dict[int, str]] = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """Load ``name_or_path`` (Hub id or directory) with the auto class of ``task`` (a name or a :class:`Task`).

    For classification, ``num_labels``/``id2label`` set a new head's size; a checkpoint whose
    head already has another size is an error rather than a silent re-initialisation.
    """
    task = get_task(task)
    config = load_config(name_or_path, trust_remote_code)
    if task.has_labels and num_labels is not None:
        check_head_fits_labels(config, num_labels, name_or_path)
        config.num_labels = num_labels
        if id2label:
            config.id2label = dict(id2label)
            config.label2id = {v: k for k, v in id2label.items()}
    try:
        return task.auto_class().from_pretrained(
            name_or_path, config=config, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


def load_checkpoint(name_or_path: str, task: Optional[str | Task] = None, trust_remote_code: bool = False):
    """``(model, tokenizer, task)`` of a checkpoint; the task is inferred from its config when not given."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    task = get_task(task) if task is not None else task_of(load_config(name_or_path, trust_remote_code))
    return load_model(name_or_path, task, trust_remote_code=trust_remote_code), tokenizer, task
