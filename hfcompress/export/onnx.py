"""ONNX export with a parity check: Optimum's exporter, or ``torch.onnx.export`` with the dynamo exporter.

Backend ``auto`` uses Optimum's exporter where optimum-onnx is installed (the transformers 4.57
stack) and the dynamo exporter elsewhere; both give each task's graph the same input and output
names and dynamic axes, so what reads the graph afterwards does not depend on the exporter. (Image
graphs have a dynamic batch axis and the image processor's size, as Optimum's MobileNetV2 graph; for
ResNet, Optimum also names the channel, height and width axes.)

Every export is compared with the PyTorch model on real sentences at several batch sizes and
sequence lengths (``parity.json``); a model that exports but disagrees beyond the tolerance is a
:class:`ParityError` and leaves nothing at the output path. The output directory also holds the
config and tokenizer, so ``optimum.onnxruntime.ORTModelFor<Task>.from_pretrained(dir)`` loads it, and
:func:`hfcompress.evaluation.load_ort_model` with or without Optimum.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from ..errors import ConfigError, closest
from ..lowrank.modeling import is_factorized
from ..modeling import load_config, load_model
from ..artifacts import PARITY_FILE, QAT_RANGES_FILE, copy_description
from ..quantization.config import write_quantization_report
from ..quantization.qat import read_quantization_json
from ..utils.imports import optimum_onnx_missing
from ..utils.hashing import file_sha256, weights_sha256
from ..utils.disk import check_free_space, model_bytes
from ..utils.io import atomic_output_dir, atomic_write_json
from .genai import GenaiBuildConfig, build_genai_model
from .optimize import OptimizationLevel, check_level, optimize_onnx
from ..tasks import TASKS, get_task, task_names, task_of
from .decoder import export_decoder_with_past
from .parity import check_generation_parity, check_parity, raise_on_generation_mismatch, raise_on_mismatch

EXPORT_BACKENDS = ("auto", "optimum", "dynamo", "genai")


@dataclass
class ExportConfig:
    """How to export a checkpoint to ONNX and how closely it must match PyTorch."""

    task: Optional[str] = field(default=None, metadata={"help": f"One of {list(task_names())}; inferred from the config when not given."})
    backend: Literal["auto", "optimum", "dynamo", "genai"] = field(
        default="auto",
        metadata={"help": "'optimum' (optimum.exporters.onnx.main_export), 'dynamo' (torch.onnx.export(dynamo=True)), or 'auto': optimum where it is installed, else dynamo; "
                  "'genai': onnxruntime-genai's model builder, a KV-cache graph for its generation loop (causal LMs; settings under 'genai')."},
    )
    opset: Optional[int] = field(default=None, metadata={"help": "ONNX opset; the exporter's default when not given."})
    optimize: Optional[OptimizationLevel] = field(
        default=None, metadata={"help": "Also write model_optimized.onnx through ONNX Runtime's transformer optimizer at this level (Optimum's O1-O3 on CPU), checked for parity too."}
    )
    atol: float = field(default=1e-4, metadata={"help": "Largest allowed absolute difference between PyTorch and ONNX Runtime outputs."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4], metadata={"help": "Batch sizes of the parity check."})
    sequence_lengths: list[int] = field(
        default_factory=lambda: [16, 128], metadata={"help": "Sequence lengths of the parity check (capped at the model's maximum)."}
    )
    generation_prompts: int = field(
        default=4, metadata={"help": "Text generation: how many of the parity texts are also greedy-generation prompts, whose new tokens must equal PyTorch's."}
    )
    max_new_tokens: int = field(default=16, metadata={"help": "Text generation: new tokens per prompt in the greedy-generation parity check."})
    genai: GenaiBuildConfig = field(
        default_factory=GenaiBuildConfig, metadata={"help": "Backend 'genai' only: precision (fp32/int4), block_size, accuracy_level, algorithm, symmetric, parity_prompts, parity_new_tokens."}
    )

    @property
    def resolved_backend(self) -> str:
        """The exporter that runs: ``auto`` is Optimum's where optimum-onnx imports, else dynamo."""
        if self.backend != "auto":
            return self.backend
        return "optimum" if optimum_onnx_missing() is None else "dynamo"

    def __post_init__(self):
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"task '{self.task}' cannot be exported{closest(self.task, TASKS)}: use one of {list(TASKS)}")
        if self.backend not in EXPORT_BACKENDS:
            raise ConfigError(f"export backend '{self.backend}' is not one of {EXPORT_BACKENDS}")
        if self.backend == "optimum" and (missing := optimum_onnx_missing()):
            raise ConfigError(f"export backend 'optimum' needs Optimum, but {missing}; or use backend 'dynamo' (or 'auto')")
        if self.optimize is not None:
            check_level(self.optimize)
        if isinstance(self.genai, dict):  # a Python caller's settings; recipes arrive as GenaiBuildConfig already
            self.genai = GenaiBuildConfig(**self.genai)
        if self.backend == "genai" and self.optimize is not None:
            raise ConfigError("optimize applies to the optimum and dynamo graphs; backend 'genai' writes its own fused graph: drop optimize")
        if not self.atol > 0:  # nan too: no difference is ever within it
            raise ConfigError(f"atol must be positive, got {self.atol}")
        if self.opset is not None:
            from onnx.defs import onnx_opset_version

            if not 7 <= self.opset <= onnx_opset_version():
                raise ConfigError(f"opset {self.opset} is not an ONNX opset this onnx knows (7..{onnx_opset_version()}): leave it out for the exporter's default")
        if not self.batch_sizes or not self.sequence_lengths or min(*self.batch_sizes, *self.sequence_lengths) < 1:
            raise ConfigError(f"parity batch sizes and sequence lengths must be positive lists, got {self.batch_sizes} and {self.sequence_lengths}")
        if self.generation_prompts < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"generation_prompts and max_new_tokens must be at least 1, got {self.generation_prompts} and {self.max_new_tokens}")


def export_onnx(
    model_dir: str | Path,
    output_dir: str | Path,
    task: Optional[str] = None,
    opset: Optional[int] = None,
    *,
    parity_texts: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    **options,
) -> Path:
    """Export a checkpoint (local directory or Hub id) to ``output_dir/model.onnx``, check parity, return the .onnx path.

    ``options`` are :class:`ExportConfig` fields (``backend``, ``optimize``, ``atol``, ``batch_sizes``,
    ``sequence_lengths``); ``parity_texts`` are the inputs of the parity check, sentences or (image tasks)
    PIL images (default: the task's, a built-in set of real sentences or seeded noise images). An existing non-empty ``output_dir`` needs ``overwrite=True``.
    """
    try:
        config = ExportConfig(task=task, opset=opset, **options)
    except TypeError as e:
        allowed = [f.name for f in dataclasses.fields(ExportConfig)]
        raise ConfigError(f"export_onnx: {e}; options are {allowed}") from None
    output_dir = Path(output_dir)
    overwrite = overwrite or (output_dir.is_dir() and not any(output_dir.iterdir()))  # an empty directory (a stage's staging) is written into
    if config.backend == "genai":  # its own graph, runtime and generation parity check (export/genai.py)
        return build_genai_model(model_dir, output_dir, parity_texts=parity_texts, atol=config.atol, overwrite=overwrite, **dataclasses.asdict(config.genai))
    if output_dir.exists() and not overwrite:  # checked here too, before the model is loaded
        raise ConfigError(f"output directory {output_dir} already exists: pass --overwrite to replace it, or choose another")
    model_config = load_config(str(model_dir))
    copies = 2 if config.optimize else 1  # model.onnx, and model_optimized.onnx
    check_free_space(output_dir, copies * model_bytes(model_dir, model_config), f"exporting {model_dir}", fix=" (or drop optimize)" if copies > 1 else "")
    task = get_task(config.task) if config.task else task_of(model_config)
    processor = task.load_processor(str(model_dir))
    if parity_texts:  # inputs the task cannot take (sentences for an image model) fail before the slow export
        task.parity_batch(processor, parity_texts, 1, task.parity_shapes(model_config, config.sequence_lengths)[0])
    model = load_model(str(model_dir), task)
    backend = config.resolved_backend
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        if backend == "optimum":
            _export_optimum(model_dir, staging, task, config.opset)
        else:
            _export_dynamo(model, processor, task, staging, config.opset)
        if is_factorized(model_config):  # the graph holds the factors; ONNX Runtime needs only the base architecture's config
            model_config.base_config().save_pretrained(str(staging))
        parity = {
            "backend": backend, "task": task.name, "opset": config.opset, "texts": "given" if parity_texts else "built-in", "files": {},
            "source_weights_sha256": weights_sha256(Path(str(model_dir))),  # the card checks it ships the export of its own checkpoint
        }
        onnx_paths = [staging / "model.onnx"]
        if config.optimize:
            onnx_paths.append(optimize_onnx(staging, config.optimize))
            parity["optimization_level"] = config.optimize
        for path in onnx_paths:
            result = check_parity(model, path, processor, parity_texts, config.batch_sizes, config.sequence_lengths, config.atol, task)
            raise_on_mismatch(result, f"the {backend} export {path.name} of {model_dir}")
            if task.kv_cache:
                prompts = list(parity_texts or task.default_inputs(processor, model.config))[: config.generation_prompts]
                result["generation"] = check_generation_parity(model, path, processor, prompts, config.max_new_tokens)
                raise_on_generation_mismatch(result["generation"], f"the {backend} export {path.name} of {model_dir}")
            parity["files"][path.name] = {**result, "sha256": file_sha256(path)}
        atomic_write_json(staging / PARITY_FILE, parity)
        source = Path(str(model_dir))
        if source.is_dir():  # a Hub id: nothing local to carry
            copy_description(source, staging)  # measured accuracy, compression, recipe: for the card and the server's /metadata
            _copy_qat_files(source, staging)
    return output_dir / "model.onnx"


def graph_signature(onnx_path: str | Path) -> dict[str, list[tuple[str, list]]]:
    """The inputs and outputs of an ONNX graph as ``(name, dims)``, a dim being its symbolic name or its size.

    Two exports with the same signature are interchangeable for everything that feeds or reads the graph.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def described(values):
        return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    return {"inputs": described(graph.input), "outputs": described(graph.output)}


def _copy_qat_files(model_dir: Path, out: Path) -> None:
    """A QAT checkpoint's ranges and scheme (with its summary) travel with its export, so static int8 of the .onnx uses them (and is checked against them)."""
    if (model_dir / QAT_RANGES_FILE).is_file():
        shutil.copy2(model_dir / QAT_RANGES_FILE, out / QAT_RANGES_FILE)
    scheme = read_quantization_json(model_dir) or {}
    if scheme.get("method") == "qat":
        write_quantization_report(out, scheme)


def _export_optimum(model_dir, out: Path, task, opset: Optional[int]) -> None:
    from optimum.exporters.onnx import main_export

    # Optimum's own validation uses random inputs at one shape; our parity check replaces it.
    main_export(str(model_dir), output=str(out), task=task.export_task, opset=opset, do_validation=False, library_name="transformers")
    if (out / "decoder_model_merged.onnx").is_file():  # older Optimum merged a decoder and a decoder-with-past; the merged one is the contract's graph
        (out / "decoder_model_merged.onnx").replace(out / "model.onnx")


MODULE_SCOPE_METADATA = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")


class _Logits(torch.nn.Module):
    """The model with positional graph inputs and the logits as its only output, as ORTModelFor<Task> expects."""

    def __init__(self, model, input_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names = model, list(input_names)

    def forward(self, *inputs):
        return self.model(**dict(zip(self.input_names, inputs))).logits


def _export_logits(model, processor, task, input_names: Sequence[str], opset: Optional[int]):
    """The dynamo export of a model whose graph maps the task's inputs to logits."""
    # a sample of batch 2 (and length 16) keeps the dynamic dimensions from being specialised to 0/1
    shape = task.parity_shapes(model.config, [16])[0]
    sample = task.onnx_feeds(task.parity_batch(processor, task.default_inputs(processor, model.config), 2, shape), input_names)
    args = tuple(torch.from_numpy(sample[n]) for n in input_names)
    dims = task.onnx_dynamic_axes()
    return torch.onnx.export(
        _Logits(model, input_names).eval(), args, dynamo=True, input_names=input_names, output_names=["logits"],
        dynamic_shapes=(tuple(dims for _ in input_names),), opset_version=opset, verbose=False,
    )


def _export_dynamo(model, processor, task, out: Path, opset: Optional[int]) -> None:
    """torch.onnx.export(dynamo=True) with the graph Optimum would give ``task``, then the config and processor beside it.

    The inputs are the task's (:meth:`~hfcompress.tasks.Task.onnx_input_names`), with the task's
    dynamic axes (text: batch_size and sequence_length; images: batch_size); the output is
    ``logits``, whose dimensions take those names where they follow the inputs'. Decoders are
    exported with past key values (Optimum's "with-past" graph, :mod:`hfcompress.export.decoder`).
    """
    input_names = task.onnx_input_names(model, processor)
    task.prepare_tokenizer(processor)
    if task.kv_cache:
        program = export_decoder_with_past(model, input_names, opset)
    else:
        program = _export_logits(model, processor, task, input_names, opset)
    # torch tags each node with its Python stack and FX node: debugging aids that hold this machine's paths, change
    # the file's hash from one checkout to another and add MBs. The module scopes stay: they are how QAT ranges find
    # their Linear layers (quantization.onnx_ptq.module_of), as Optimum's node names do for its graphs.
    for node in program.model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k not in MODULE_SCOPE_METADATA]:
            del node.metadata_props[key]
    program.save(str(out / "model.onnx"))
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
