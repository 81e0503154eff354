"""Loading models and their processors (tokenizers, image processors) by Hub id or local path, for the tasks hfcompress supports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from .errors import ConfigError, ModelError
from .tasks import DEFAULT_TASK, TASKS, Task, get_task, task_of


def _describe_load_error(name: str, error: Exception) -> ModelError:
    local = Path(os.path.expanduser(name))
    if local.exists():
        why = f"the directory exists but could not be loaded ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        fix = "check it holds config.json and the weights"
    else:
        why = "it is not a local directory and could not be loaded from the Hub"
        fix = "check the path, or the Hub id and your network/HF_HUB_OFFLINE setting"
    return ModelError(f"model '{name}' not found: {why}; {fix}")


def check_model_path(name_or_path: str, is_path: bool = False) -> None:
    """A reference that is a local path (``is_path``: surely one) must be a directory with a readable config.json; say
    which of those it is not (transformers would try it as a Hub id, or guess a config)."""
    local = Path(os.path.expanduser(name_or_path))
    if not local.exists():
        if is_path or name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:  # not an org/name Hub id
            raise ModelError(f"model path {name_or_path} does not exist: check the path")
        return
    if not local.is_dir():
        raise ModelError(f"model path {local} is a file, not a directory: give the directory the model was saved to (save_pretrained)")
    config = local / "config.json"
    if not config.is_file():
        raise ModelError(f"model directory {local} has no config.json: give a directory written by save_pretrained or hfcompress export")
    try:
        json.loads(config.read_bytes())
    except ValueError as e:
        raise ModelError(f"{config} is not valid JSON ({str(e)[:120]}): save the model again, or repair the file") from None


def load_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's config (Hub id or directory): a cheap check that the model exists, before any weights load."""
    check_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


def check_head_fits_labels(config, num_labels: int, name: str) -> None:
    """A trained classification head must have as many labels as the data; a base model gets a new head."""
    has_head = any(task.matches(a) for task in TASKS.values() if task.has_labels for a in (config.architectures or []))
    if has_head and config.num_labels != num_labels:
        raise ModelError(
            f"model '{name}' has {config.num_labels} labels but the data has {num_labels}: "
            "use a checkpoint trained on this label set, or fine-tune a base model"
        )


def check_max_length(config, max_length: int, ref: str, setting: str = "data.max_length") -> None:
    """Inputs of ``max_length`` tokens must fit the model's position embeddings (beyond them it fails mid-run, or reads garbage)."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and max_length > positions:
        raise ConfigError(f"{setting} {max_length} is longer than model '{ref}' can read ({positions} positions): set {setting} to at most {positions}")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def check_safetensors(path: Path) -> None:
    """A safetensors file whose header and size agree (a truncated copy fails here, not mid-run)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if not 0 < header_size <= size - 8:
                raise ValueError(f"header length {header_size} does not fit a {size}-byte file")
            header = json.loads(f.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]}): copy or save the model again") from None
    if 8 + header_size + end != size:
        raise ModelError(f"{path} is truncated or corrupt: its header describes {8 + header_size + end} bytes, the file has {size}; copy or save the model again")


def check_model_files(path: Path, needs_tokenizer: bool) -> None:
    """Pre-flight of a local model directory: config, weight headers, ONNX files that load, and tokenizer files where needed."""
    if not path.is_dir():
        check_model_path(str(path), is_path=True)  # says whether it is missing or a file
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".onnx")]
    if not weights:
        return  # not a model (a card stage's report directory, say): its reader checks it
    check_model_path(str(path))  # a config.json that reads
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    for graph in sorted(path.glob("*.onnx")):
        import onnx

        try:
            nodes = len(onnx.load(str(graph), load_external_data=False).graph.node)
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, ValueError, OSError... for a broken file
            raise ModelError(f"{graph} does not load as ONNX ({type(e).__name__}): export the model again") from None
        if not nodes:  # some garbage parses as a protobuf message, with no graph in it
            raise ModelError(f"{graph} does not load as ONNX (it holds no graph): export the model again")
    if needs_tokenizer:
        _task_of_directory(path).check_processor_files(path)


def _task_of_directory(path: Path) -> Task:
    """The task of a saved model from its config.json; a base model without a head reads text (the default task)."""
    try:
        return task_of(json.loads((path / "config.json").read_text()))
    except (ModelError, OSError, ValueError):
        return get_task(DEFAULT_TASK)


def check_tokenizer_files(path: Path) -> None:
    """A local model directory must hold its tokenizer (transformers fails obscurely on a BERT directory without vocab.txt)."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"model directory {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): "
            "save the tokenizer beside the model (tokenizer.save_pretrained(dir))"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from .lowrank.modeling import is_factorized

    check_model_path(name_or_path)
    if Path(os.path.expanduser(name_or_path)).is_dir():
        check_tokenizer_files(Path(os.path.expanduser(name_or_path)))
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


def load_processor(name_or_path: str, task: Optional[str | Task] = None, trust_remote_code: bool = False):
    """What turns raw inputs into the model's inputs, as saved with it: a tokenizer, or an image processor for image tasks.

    The task is inferred from the model's config when not given (a base model without a head: text).
    """
    if task is None:
        local = Path(os.path.expanduser(name_or_path))
        if local.is_dir():
            task = _task_of_directory(local)
        else:
            try:
                task = task_of(load_config(name_or_path, trust_remote_code))
            except ModelError:
                task = DEFAULT_TASK
    return get_task(task).load_processor(name_or_path, trust_remote_code)


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
    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():  # a truncated copy or a missing config fails here in one line, not deep in from_pretrained
        check_model_files(local, needs_tokenizer=False)
    config = load_config(name_or_path, trust_remote_code)
    if task.has_labels and num_labels is not None:
        check_head_fits_labels(config, num_labels, name_or_path)
        config.num_labels = num_labels
        if id2label:
            config.id2label = dict(id2label)
            config.label2id = {v: k for k, v in id2label.items()}
    from .pruning.structured import check_recorded_heads, recorded_heads

    from .pruning.filters.persistence import recorded_channels

    model_class = task.auto_class()
    if recorded_heads(config):
        check_recorded_heads(config)
        if not TRANSFORMERS_REMOVES_PRUNED_HEADS:
            model_class = with_recorded_heads(model_class, config)
    if recorded_channels(config):
        model_class = with_recorded_channels(model_class, config)
    try:
        return model_class.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise _describe_load_error(name_or_path, e) from e


# Transformers 4 removes the heads config.pruned_heads records while building a model (from_pretrained included);
# transformers 5 dropped head pruning, so a slimmed checkpoint's attention weights no longer fit the model it builds.
TRANSFORMERS_REMOVES_PRUNED_HEADS = hasattr(PreTrainedModel, "prune_heads")

_WITH_RECORDED_HEADS: dict[type, type] = {}
_WITH_RECORDED_CHANNELS: dict[type, type] = {}


def _reshaped_on_init(auto_class, config, reshape, cache: dict[type, type]) -> type:
    """The model class ``auto_class`` maps ``config`` to, with ``reshape(model)`` run at the end of ``__init__``.

    Reshaping in ``__init__``, before ``from_pretrained`` loads the weights, keeps everything it does
    (Hub ids, shards, dtype, device_map, bitsandbytes). The subclass keeps its base's name and module,
    so ``save_pretrained`` writes the same architecture.
    """
    base = auto_class._model_mapping.get(type(config), None)
    if base is None:  # remote code: from_pretrained stops at the size mismatch
        return auto_class
    if base not in cache:

        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            reshape(self)

        cache[base] = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__, "__qualname__": base.__qualname__})
    return cache[base]


def with_recorded_heads(auto_class, config) -> type:
    """The model class of ``config``, built with the heads ``config.pruned_heads`` records removed (for transformers 5)."""
    from .pruning.structured import remove_recorded_heads

    return _reshaped_on_init(auto_class, config, remove_recorded_heads, _WITH_RECORDED_HEADS)


def with_recorded_channels(auto_class, config) -> type:
    """The model class of ``config``, built with the layer sizes filter pruning recorded in ``config.pruned_channels``.

    Transformers' CNN configs (ResNet, MobileNetV2) cannot express per-layer widths, so plain
    ``from_pretrained`` stops at the size mismatch; this class reloads such a checkpoint.
    """
    from .pruning.filters.persistence import reshape_recorded_channels

    return _reshaped_on_init(auto_class, config, reshape_recorded_channels, _WITH_RECORDED_CHANNELS)


def remove_heads_transformers_kept(model) -> None:
    """Remove the heads ``model.config.pruned_heads`` records from a model just built from its config, where neither
    transformers (4 does it itself) nor the :func:`with_recorded_heads` class it was built as has done so."""
    from .pruning.structured import recorded_heads, remove_recorded_heads

    if recorded_heads(model.config) and not TRANSFORMERS_REMOVES_PRUNED_HEADS and type(model) not in _WITH_RECORDED_HEADS.values():
        remove_recorded_heads(model)


def empty_model(config, task: str | Task = DEFAULT_TASK) -> PreTrainedModel:
    """The model ``load_model`` builds for ``config``, without weights (on the meta device): its module names and shapes."""
    from accelerate import init_empty_weights

    from .pruning.filters.persistence import reshape_recorded_channels

    with init_empty_weights():
        model = get_task(task).auto_class().from_config(config)
        remove_heads_transformers_kept(model)
        reshape_recorded_channels(model)
    return model


def load_checkpoint(name_or_path: str, task: Optional[str | Task] = None, trust_remote_code: bool = False):
    """``(model, processor, task)`` of a checkpoint; the task is inferred from its config when not given."""
    task = get_task(task) if task is not None else task_of(load_config(name_or_path, trust_remote_code))
    processor = load_processor(name_or_path, task, trust_remote_code)
    return load_model(name_or_path, task, trust_remote_code=trust_remote_code), processor, task
