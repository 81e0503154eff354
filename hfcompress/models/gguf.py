"""Convert a GGUF file (llama.cpp's format) to a transformers checkpoint: safetensors, tokenizer, generation config.

transformers reads GGUF itself (``from_pretrained(dir, gguf_file=name)``), dequantizing the weights to
float32; this module checks the file's architecture first, so an unsupported one is a one-line error,
and saves the result atomically so the pipeline (distillation, export, quantization) can start from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..utils.disk import FLOAT32_BYTES, check_free_space
from ..utils.io import atomic_output_dir, check_output_dir


def _squashed(name: str) -> str:
    """GGUF and transformers spell some architectures differently (``qwen2moe`` / ``qwen2_moe``, ``gpt-oss`` / ``gpt_oss``)."""
    return name.replace("_", "").replace("-", "").lower()


def supported_architectures() -> list[str]:
    """GGUF architectures the installed transformers loads."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))  # metadata sections, not models


def gguf_architecture(path: str | os.PathLike) -> str:
    """The ``general.architecture`` key of a GGUF file, read with the ``gguf`` package (memory-mapped, no weights loaded)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields.get("general.architecture")
    except (ValueError, OSError) as e:
        raise ModelError(f"{path} is not a readable GGUF file ({e}): check that it is a complete llama.cpp .gguf file") from None
    if field is None:
        raise ModelError(f"{path} has no general.architecture key: it is not a model GGUF file that transformers can load")
    return str(field.contents())


def check_gguf_architecture(path: str | os.PathLike) -> str:
    architecture = gguf_architecture(path)
    supported = supported_architectures()
    if _squashed(architecture) not in {_squashed(a) for a in supported}:
        raise ModelError(
            f"{Path(path).name} holds a '{architecture}' model, which transformers cannot load from GGUF: "
            f"it loads {', '.join(supported)}; convert the original checkpoint instead"
        )
    return architecture


def _load(gguf_path: Path):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if hasattr(transformers, "GgufConfig"):  # transformers 5 can keep GGUF blocks packed; we want plain float32 weights
        kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=gguf_path.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **kwargs)
    # transformers 5 loads GGUF through a quantizer that marks the model "quantized, not serializable", so
    # save_pretrained refuses it; the weights are dequantized float32 by now, so the marks are stale: drop them.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model, tokenizer


def convert_gguf(gguf_file: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save the model of ``gguf_file`` as a transformers checkpoint in ``output_dir`` (float32 safetensors,
    tokenizer, generation config); the directory appears complete or not at all."""
    gguf_path = Path(gguf_file).resolve()
    if gguf_path.is_dir():
        raise ModelError(f"{gguf_file} is a directory: give the .gguf file itself")
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file {gguf_file} does not exist: check the path")
    check_output_dir(output_dir, overwrite)
    architecture = check_gguf_architecture(gguf_path)
    print(f"hfcompress: loading {gguf_path.name} ({architecture}, dequantized to float32) ...", flush=True)
    model, tokenizer = _load(gguf_path)
    check_free_space(output_dir, model.num_parameters() * FLOAT32_BYTES, f"converting {gguf_path.name} (dequantized to float32)")
    with atomic_output_dir(output_dir, overwrite) as tmp:
        print(f"hfcompress: saving {type(model).__name__} ({model.num_parameters():,} parameters) to {output_dir}", flush=True)
        model.save_pretrained(tmp)  # also writes generation_config.json for generative models
        tokenizer.save_pretrained(tmp)
    return Path(output_dir)
