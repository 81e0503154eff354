"""A Triton Inference Server model repository from an exported ONNX directory.

``write_triton_repository(onnx_dir, repo_dir)`` writes ``repo_dir/<name>/config.pbtxt`` and
``repo_dir/<name>/1/model.onnx`` for Triton's ONNX Runtime backend. The inputs and outputs (names,
data types, dims) are read from the ONNX graph, so the config matches whatever exporter wrote it;
a dynamic first axis on every tensor becomes Triton's batch axis (``max_batch_size`` and dims
without it), which Triton's dynamic batcher fills. Triton serves tensors, not text: the tokenizer
is saved beside the config (``tokenizer/``, which Triton ignores as it is not a version number)
with a README saying how clients tokenize.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..artifacts import TRITON_LABELS_FILE, TRITON_TOKENIZER_DIR
from ..errors import ConfigError, ModelError
from ..utils.io import atomic_output_dir, atomic_write_text

MODEL_VERSION = "1"

# ONNX TensorProto element types -> Triton data types (model_config.proto's DataType)
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32", "DOUBLE": "TYPE_FP64", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "STRING": "TYPE_STRING",
    "BOOL": "TYPE_BOOL", **{t: f"TYPE_{t}" for t in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")},
}


@dataclass
class TritonConfig:
    """How Triton batches and runs the model."""

    model_name: Optional[str] = field(default=None, metadata={"help": "Model name in the repository (letters, digits, - and _); default: the ONNX directory's name."})
    max_batch_size: int = field(default=32, metadata={"help": "Largest batch Triton forms; 0 turns batching off (dims then include the batch axis)."})
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 32], metadata={"help": "Batch sizes the dynamic batcher waits for (those above max_batch_size are dropped)."})
    max_queue_delay_us: int = field(default=2000, metadata={"help": "Longest a request waits in Triton's dynamic batcher for others to join its batch, in microseconds."})
    instances: int = field(default=1, metadata={"help": "Model instances on the CPU (instance_group count): requests run in parallel on that many copies."})
    threads: Optional[int] = field(default=None, metadata={"help": "ONNX Runtime intra-op threads per instance; default: the backend's."})

    def __post_init__(self):
        if self.model_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.model_name):
            raise ConfigError(f"Triton model name {self.model_name!r} must be letters, digits, '.', '-' and '_': choose another")
        if self.max_batch_size < 0 or self.max_queue_delay_us < 0:
            raise ConfigError(f"max_batch_size ({self.max_batch_size}) and max_queue_delay_us ({self.max_queue_delay_us}) must be >= 0")
        if self.instances < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError(f"instances ({self.instances}) and threads ({self.threads}) must be at least 1")
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes must be positive, got {self.preferred_batch_sizes}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton declares it."""

    name: str
    data_type: str
    dims: list[int]  # -1 for a dynamic axis; without the batch axis when the model batches


def graph_tensors(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
    """The graph's inputs and outputs with all their axes (the batch axis first), and whether every one has a dynamic first axis."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}  # older exporters list weights among the inputs

    def specs(values) -> list[TensorSpec]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            onnx_type = onnx.TensorProto.DataType.Name(tensor.elem_type)
            if onnx_type not in _TRITON_TYPES:
                raise ModelError(f"{onnx_path.name}: tensor {value.name!r} has type {onnx_type}, which Triton cannot serve")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out.append(TensorSpec(value.name, _TRITON_TYPES[onnx_type], dims))
        return out

    inputs, outputs = specs(graph.input), specs(graph.output)
    batched = all(spec.dims and spec.dims[0] == -1 for spec in inputs + outputs)
    return inputs, outputs, batched


def _tensor_block(kind: str, specs: list[TensorSpec], batched: bool, labels_output: Optional[str]) -> str:
    entries = []
    for spec in specs:
        dims = spec.dims[1:] if batched else spec.dims
        lines = [f'    name: "{spec.name}"', f"    data_type: {spec.data_type}", f"    dims: [ {', '.join(map(str, dims))} ]"]
        if spec.name == labels_output:
            lines.append(f'    label_filename: "{TRITON_LABELS_FILE}"')
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def render_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], batched: bool, config: TritonConfig,
                  labels_output: Optional[str] = None) -> str:
    """The text of ``config.pbtxt`` (protobuf text format of Triton's ModelConfig)."""
    max_batch_size = config.max_batch_size if batched else 0
    parts = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        _tensor_block("input", inputs, max_batch_size > 0, None),
        _tensor_block("output", outputs, max_batch_size > 0, labels_output),
        f"instance_group [\n  {{\n    count: {config.instances}\n    kind: KIND_CPU\n  }}\n]",
    ]
    if max_batch_size > 0:  # Triton rejects a dynamic batcher on a model that does not batch
        preferred = sorted({size for size in config.preferred_batch_sizes if size <= max_batch_size})
        batching = [f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"] if preferred else []
        batching.append(f"  max_queue_delay_microseconds: {config.max_queue_delay_us}")
        parts.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    if config.threads is not None:
        parts.append(
            'parameters {\n  key: "intra_op_thread_count"\n  value: {\n'
            f'    string_value: "{config.threads}"\n  }}\n}}'
        )
    return "\n".join(parts) + "\n"


def _external_data_files(onnx_path: Path) -> list[str]:
    """Files holding the graph's weights outside the .onnx file (large models), relative to it."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({
        entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    })


def _labels_output(outputs: list[TensorSpec], model_config, batched: bool) -> Optional[str]:
    """The output whose last axis is the labels (a classifier's logits), for Triton's classification extension."""
    labels = getattr(model_config, "id2label", None) or {}
    for spec in outputs:
        dims = spec.dims[1:] if batched else spec.dims
        if labels and len(dims) == 1 and dims[0] == len(labels):
            return spec.name
    return None


def write_triton_repository(onnx_dir: str | Path, repo_dir: str | Path, config: Optional[TritonConfig] = None,
                            onnx_file: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the model of ``onnx_dir`` (as ``hfcompress export`` or ``quantize`` wrote it) into the Triton repository ``repo_dir``.

    Returns the model's directory, ``repo_dir/<name>``, holding ``config.pbtxt``, ``1/model.onnx``,
    the tokenizer, the labels and a README on tokenization. Other models in ``repo_dir`` are kept;
    an existing model of the same name needs ``overwrite``.
    """
    from transformers import AutoConfig, AutoTokenizer

    from ..evaluation.runtime import onnx_file_name

    config = config or TritonConfig()
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise ModelError(f"{onnx_dir} is not a directory: give the output directory of hfcompress export")
    source = onnx_dir / onnx_file_name(onnx_dir, onnx_file)
    name = config.model_name or re.sub(r"[^A-Za-z0-9_.-]", "_", onnx_dir.resolve().name)
    try:
        model_config, tokenizer = AutoConfig.from_pretrained(onnx_dir), AutoTokenizer.from_pretrained(onnx_dir)
    except (OSError, ValueError) as e:
        raise ModelError(f"{onnx_dir} has no readable config and tokenizer beside {source.name} ({str(e).splitlines()[0][:160]}): export with hfcompress export, which writes them") from e
    inputs, outputs, batched = graph_tensors(source)
    if config.max_batch_size > 0 and not batched:
        raise ModelError(f"{source.name} has an input or output without a dynamic first (batch) axis: export it again with hfcompress export, or set max_batch_size 0")
    labels_output = _labels_output(outputs, model_config, batched)
    Path(repo_dir).mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(Path(repo_dir) / name, overwrite=overwrite) as staging:
        version = staging / MODEL_VERSION
        version.mkdir()
        shutil.copyfile(source, version / "model.onnx")
        for data_file in _external_data_files(source):
            (version / data_file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.parent / data_file, version / data_file)
        atomic_write_text(staging / "config.pbtxt", render_config(name, inputs, outputs, batched, config, labels_output))
        tokenizer.save_pretrained(staging / TRITON_TOKENIZER_DIR)
        model_config.save_pretrained(staging / TRITON_TOKENIZER_DIR)  # id2label, max_position_embeddings
        if labels_output:
            labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
            atomic_write_text(staging / TRITON_LABELS_FILE, "\n".join(labels) + "\n")
        atomic_write_text(staging / "README.md", _readme(name, inputs, outputs, labels_output, tokenizer.model_max_length, model_config))
    return Path(repo_dir) / name


def _readme(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], labels_output: Optional[str], model_max_length: int,
            model_config) -> str:
    max_length = min(model_max_length, getattr(model_config, "max_position_embeddings", model_max_length) or model_max_length)
    feeds = "\n".join(
        f'    httpclient.InferInput("{s.name}", list(encoded["{s.name}"].shape), "{s.data_type.removeprefix("TYPE_")}"),'
        for s in inputs
    )
    classification = (
        f"\nWith `httpclient.InferRequestedOutput(\"{labels_output}\", class_count=2)` Triton answers the top labels as "
        f"`score:index:label` strings, from `{TRITON_LABELS_FILE}`.\n" if labels_output else ""
    )
    return f"""# {name}: a Triton Inference Server model

Written by `hfcompress export --triton` (or a recipe's export stage with `triton:`). `config.pbtxt` serves `1/model.onnx` with Triton's ONNX Runtime
backend on the CPU, with dynamic batching. Start Triton on the repository (the directory above this one):

```bash
docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    tritonserver --model-repository=/models
```

## Tokenization

Triton serves tensors, not text: clients tokenize. The tokenizer the model was trained with is in
`{TRITON_TOKENIZER_DIR}/` (Triton loads only numeric version directories and ignores it). Texts are tokenized
to at most {max_length} tokens and padded to the longest in the request; the graph takes
{", ".join(f"`{s.name}`" for s in inputs)} and returns {", ".join(f"`{s.name}`" for s in outputs)}.

```python
import numpy as np
import tritonclient.http as httpclient
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}/{TRITON_TOKENIZER_DIR}")
encoded = tokenizer(["a fine film"], padding=True, truncation=True, max_length={max_length}, return_tensors="np")
inputs = [
{feeds}
]
for tensor in inputs:
    tensor.set_data_from_numpy(encoded[tensor.name()].astype(np.int64))
client = httpclient.InferenceServerClient("localhost:8000")
result = client.infer("{name}", inputs)
print(result.as_numpy("{outputs[0].name}"))
```
{classification}
To send text instead, put the tokenizer in a Python-backend model (`model.py` calling the tokenizer
above and returning these tensors) and chain it to this model with an ensemble (`platform: "ensemble"`,
whose `ensemble_scheduling` steps map the text to the tokenizer model and its outputs to this one).
`hfcompress serve` does exactly this in one process, with text in and labels out.
"""
