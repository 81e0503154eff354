"""Loading a model for inference in PyTorch or ONNX Runtime, by path, Hub id or as an object.

A directory holding an ``.onnx`` file (as written by ``hfcompress export`` or Optimum) runs through
``optimum.onnxruntime``'s ORTModelFor<Task> classes where optimum-onnx is installed, and through
:class:`OnnxRuntimeModel`, a plain ONNX Runtime session, where it is not (transformers 5); anything
else through Transformers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, Optional

from ..errors import ConfigError, ModelError
from ..modeling import load_config, load_model
from ..tasks import Task, get_task, task_of
from ..utils.imports import optimum_onnx_missing

Backend = Literal["auto", "pytorch", "onnx"]
BACKENDS = ("auto", "pytorch", "onnx")


class OnnxRuntimeModel:
    """An exported model in an ONNX Runtime session, called like a Transformers model; what loads ONNX without Optimum.

    It takes a tokenizer's batch (torch tensors or arrays) and feeds the inputs the graph declares,
    deriving those a tokenizer does not give (position ids, zero token types) as ORTModel does; it
    returns every graph output as a torch tensor in a ``ModelOutput`` (``.logits``). ``path``,
    ``config``, ``session`` and ``input_names`` are those of an ORTModel.
    """

    def __init__(self, path: Path, config, task: Task, session_options=None):
        import onnxruntime as ort

        self.path, self.config, self.task = path, config, task
        self.session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs):
        import torch
        from transformers.modeling_outputs import ModelOutput

        outputs = self.session.run(None, self.task.onnx_feeds(inputs, self.input_names))
        return ModelOutput(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})


def is_ort_model(model) -> bool:
    """An ONNX Runtime model: hfcompress's own, or an ORTModel (which exists only once Optimum is imported)."""
    optimum_ort = sys.modules.get("optimum.onnxruntime")
    return isinstance(model, OnnxRuntimeModel) or (optimum_ort is not None and isinstance(model, optimum_ort.ORTModel))


def onnx_files(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("*.onnx")) if directory.is_dir() else []


def resolve_backend(model, backend: str = "auto", onnx_file: Optional[str] = None) -> str:
    """``pytorch`` or ``onnx`` for a model reference (path, Hub id or loaded model)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend '{backend}' is not one of {BACKENDS}: use 'auto' to choose from the model directory")
    if not isinstance(model, (str, os.PathLike)):
        found = "onnx" if is_ort_model(model) else "pytorch"
        if backend not in ("auto", found):
            raise ConfigError(f"backend '{backend}' was asked for a loaded {found} model: pass backend='{found}' or 'auto'")
        return found
    if onnx_file is not None:
        onnx_file_name(model, onnx_file)  # a file that is not there is named, whichever runtime auto picks
    has_onnx = bool(onnx_files(model))
    if backend == "auto":
        return "onnx" if has_onnx else "pytorch"
    if backend == "onnx" and not has_onnx:
        raise ModelError(f"no .onnx file in '{model}': export it first (hfcompress export {model} --output DIR) or use backend='pytorch'")
    return backend


def onnx_file_name(directory: str | os.PathLike, onnx_file: Optional[str] = None) -> str:
    """The ONNX file to load from ``directory``: ``onnx_file``, else ``model.onnx``, else the only one there."""
    files = onnx_files(directory)
    names = [f.name for f in files]
    if onnx_file is not None:
        if onnx_file not in names:
            raise ModelError(f"ONNX file '{onnx_file}' is not in '{directory}': files there are {names}")
        return onnx_file
    if "model.onnx" in names:
        return "model.onnx"
    if len(names) == 1:
        return names[0]
    raise ModelError(f"'{directory}' holds several ONNX files {names}: choose one with onnx_file=/--onnx-file")


def ort_session_options(threads: Optional[int] = None):
    """Session options with a fixed intra-op thread count and sequential execution (None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def load_ort_model(directory: str | os.PathLike, task: Optional[str | Task] = None, onnx_file: Optional[str] = None, threads: Optional[int] = None):
    """An exported directory ready to run (it needs the config.json that export writes beside the .onnx).

    Optimum's ORTModelFor<Task> where optimum-onnx is installed, else an :class:`OnnxRuntimeModel`: the same logits.
    A decoder with a KV cache loads as :class:`hfcompress.generation.ort.OrtCausalLM` on either stack: the
    same logits, and ``generate`` with its past kept in ONNX Runtime.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as e:
        raise ModelError(f"'{directory}' has an ONNX file but no readable config.json: re-export it with hfcompress export") from e
    task = get_task(task) if task is not None else task_of(config)
    file_name = onnx_file_name(directory, onnx_file)
    if task.kv_cache:
        from ..generation.ort import OrtCausalLM

        return OrtCausalLM.from_pretrained(directory, file_name, threads)
    if optimum_onnx_missing() is not None:
        return OnnxRuntimeModel(directory / file_name, config, task, ort_session_options(threads))
    return task.ort_class().from_pretrained(directory, file_name=file_name, session_options=ort_session_options(threads), **task.ort_load_kwargs())


def load_for_inference(model, task: Optional[str | Task] = None, backend: str = "auto", onnx_file: Optional[str] = None, threads: Optional[int] = None):
    """(model object, backend name) ready to be called with tokenized torch batches."""
    backend = resolve_backend(model, backend, onnx_file)
    if not isinstance(model, (str, os.PathLike)):
        if backend == "pytorch":
            model.eval()
        return model, backend
    if backend == "onnx":
        return load_ort_model(model, task, onnx_file, threads), backend
    task = get_task(task) if task is not None else task_of(load_config(str(model)))
    return load_model(str(model), task).eval(), backend


def model_source_path(model) -> Optional[Path]:
    """The directory (or .onnx file) a model object or reference was loaded from, if it is local."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model) if Path(model).exists() else None
    if is_ort_model(model):
        return Path(model.path)
    name = getattr(getattr(model, "config", None), "_name_or_path", "")
    return Path(name) if name and Path(name).exists() else None
