"""Export a causal LM with onnxruntime-genai's model builder: a KV-cache graph (GroupQueryAttention), fp32 or int4.

The builder (``onnxruntime_genai.models.builder``) writes ``model.onnx`` with its weights beside it,
``genai_config.json`` and the tokenizer; int4 quantizes the MatMuls (and, for tied embeddings, the
embedding table through GatherBlockQuantized) block-wise with ONNX Runtime's ``MatMulNBits``. This
module adds what hfcompress expects of every export: the config and generation config, the source's
description (:func:`~hfcompress.artifacts.copy_description`), ``quantization.json`` for int4, and a
parity check against PyTorch in ``parity.json``: the logits of each prompt, and the greedy tokens
generated from it. An fp32 build that disagrees (logits beyond ``atol`` or any token different) is a
:class:`~hfcompress.export.parity.ParityError` and leaves nothing at the output path; an int4 build
records how far it is from PyTorch, which is what quantization costs, not a defect.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from ..artifacts import PARITY_FILE, copy_description
from ..errors import ConfigError, ModelError
from ..generation.genai import GENAI_INSTALL_HINT, GenaiCausalLM
from ..quantization.config import write_quantization_report
from ..tasks.text_generation import TEXT_GENERATION
from ..utils.hashing import file_sha256, weights_sha256
from ..utils.io import atomic_output_dir, atomic_write_json
from .parity import DEFAULT_PARITY_TEXTS, ParityError

PRECISIONS = ("fp32", "int4")
ALGORITHMS = ("default", "rtn", "k_quant")  # the builder's algo_config base methods ('default': MatMulNBitsQuantizer's RTN)
BLOCK_SIZES = (16, 32, 64, 128, 256)
# The builder's text-only decoders (create_model's dispatch); onnxruntime-genai runs each through the same loop.
# Tested here: LlamaForCausalLM.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM",
    "Gemma3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "NemotronForCausalLM",
    "SmolLM3ForCausalLM", "InternLM2ForCausalLM", "Ernie4_5ForCausalLM",
)


@dataclass
class GenaiBuildConfig:
    """How onnxruntime-genai's model builder writes the graph (the ``genai`` settings of an export with backend 'genai')."""

    precision: Literal["fp32", "int4"] = field(default="fp32", metadata={"help": "'fp32', or 'int4': MatMul weights in 4-bit blocks (MatMulNBits), activations in float."})
    block_size: int = field(default=32, metadata={"help": f"int4: weights per quantization block, one of {BLOCK_SIZES}."})
    accuracy_level: int = field(
        default=4, metadata={"help": "int4: what the int4 MatMuls compute in: 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations quantized per block at run time; fastest on CPU)."}
    )
    algorithm: Literal["default", "rtn", "k_quant"] = field(
        default="default", metadata={"help": "int4: 'default' or 'rtn' (round to nearest), or 'k_quant' (llama.cpp's k-quant search of scales)."}
    )
    symmetric: bool = field(default=True, metadata={"help": "int4: signed weights around zero (int4); false adds a zero point per block (uint4)."})
    quantize_embeddings: bool = field(
        default=True, metadata={"help": "int4, tied embeddings: one int4 table for the embeddings and the LM head (GatherBlockQuantized); false keeps the embeddings in float and quantizes the LM head alone."}
    )
    parity_prompts: int = field(default=4, metadata={"help": "Prompts whose logits and greedy tokens are compared with PyTorch."})
    parity_new_tokens: int = field(default=16, metadata={"help": "Greedy tokens generated per parity prompt."})

    def __post_init__(self):
        checks = (
            (self.precision in PRECISIONS, f"precision '{self.precision}' is not one of {PRECISIONS}"),
            (self.block_size in BLOCK_SIZES, f"block_size must be one of {BLOCK_SIZES}, got {self.block_size}"),
            (self.accuracy_level in (1, 2, 3, 4), f"accuracy_level must be 1, 2, 3 or 4, got {self.accuracy_level}"),
            (self.algorithm in ALGORITHMS, f"algorithm '{self.algorithm}' is not one of {ALGORITHMS}"),
            (self.parity_prompts >= 1 and self.parity_new_tokens >= 1, "parity_prompts and parity_new_tokens must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def builder_options(self) -> list[str]:
        """The builder's ``--extra_options`` (KEY=VALUE), for int4 only: fp32 takes none."""
        if self.precision == "fp32":
            return []
        return [f"block_size={self.block_size}", f"accuracy_level={self.accuracy_level}", f"algo_config={self.algorithm}",
                f"is_symmetric={str(self.symmetric).lower()}", *([] if self.quantize_embeddings else ["shared_embeddings=false"])]


def build_genai_model(
    model_dir: str | Path,
    output_dir: str | Path,
    precision: str = "fp32",
    *,
    parity_texts: Optional[Sequence[str]] = None,
    atol: float = 1e-3,
    overwrite: bool = False,
    **options,
) -> Path:
    """Build ``output_dir/model.onnx`` for onnxruntime-genai from a local checkpoint, check it against PyTorch, return its path.

    ``options`` are :class:`GenaiBuildConfig` fields (``block_size``, ``accuracy_level``, ``algorithm``,
    ``symmetric``, ``parity_prompts``, ``parity_new_tokens``); ``parity_texts`` are the prompts of the
    parity check (default: built-in sentences). Load the result with
    ``hfcompress.generation.load_causal_lm(output_dir)``.
    """
    try:
        config = GenaiBuildConfig(precision=precision, **options)
    except TypeError as e:
        raise ConfigError(f"build_genai_model: {e}; options are {list(GenaiBuildConfig.__dataclass_fields__)}") from None
    source = Path(model_dir)
    model_config = _supported_config(source)
    if config.precision == "int4" and not config.symmetric and config.quantize_embeddings and getattr(model_config, "tie_word_embeddings", False):
        raise ConfigError("onnxruntime-genai 0.18's builder writes a graph that does not load for asymmetric int4 tied embeddings: "
                          "set quantize_embeddings: false, or symmetric: true")
    if reason := builder_missing():
        raise ConfigError(f"onnxruntime-genai's model builder cannot be used here: {reason}")
    import onnxruntime_genai
    from onnxruntime_genai.models import builder
    from transformers import AutoModelForCausalLM, GenerationConfig

    # ONNX Runtime's int4 quantizer logs every node at INFO (and configures the root logger when imported)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    output_dir = Path(output_dir)
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging, tempfile.TemporaryDirectory(prefix="genai-builder-") as cache:
        extra = builder.parse_extra_options(None, str(source), str(staging), config.precision, "cpu", cache, ["hf_token=false", *config.builder_options()])
        builder.create_model(None, str(source), str(staging), config.precision, "cpu", cache, **extra)
        model_config.save_pretrained(staging)
        with contextlib.suppress(OSError):  # a checkpoint without generation_config.json: the runtime falls back to the config's
            GenerationConfig.from_pretrained(source).save_pretrained(staging)
        copy_description(source, staging)  # measured accuracy, compression, recipe: for the card and the server's /metadata
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        texts = list(parity_texts or DEFAULT_PARITY_TEXTS)[: config.parity_prompts]
        parity = generation_parity(model, GenaiCausalLM(staging), texts, config.parity_new_tokens, atol if config.precision == "fp32" else None)
        if parity["passed"] is False:
            raise ParityError(
                f"the onnxruntime-genai build of {source} disagrees with PyTorch: max abs diff of the logits {parity['max_abs_diff']:.3g} (atol {atol:g}), "
                f"{parity['identical_generations']}/{len(texts)} greedy generations identical; nothing was written"
            )
        atomic_write_json(staging / PARITY_FILE, {
            "backend": "genai", "task": TEXT_GENERATION.name, "precision": config.precision, "opset": None, "texts": "given" if parity_texts else "built-in",
            "files": {"model.onnx": {**parity, "sha256": file_sha256(staging / "model.onnx")}},
            "source_weights_sha256": weights_sha256(source),
        })
        if config.precision == "int4":
            write_quantization_report(staging, _quantization_details(config, staging, extra, onnxruntime_genai.__version__))
    return output_dir / "model.onnx"


def builder_missing() -> Optional[str]:
    """Why onnxruntime-genai's model builder does not import here (a sentence a user can act on), or None when it does.

    onnxruntime-genai 0.18's builder imports model classes that transformers 4.x lacks.
    """
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return f"onnxruntime-genai is not installed: {GENAI_INSTALL_HINT}"
    try:
        importlib.import_module("onnxruntime_genai.models.builder")
    except ImportError as e:
        import transformers

        return f"it does not import beside transformers {transformers.__version__} ({str(e).splitlines()[0][:160]}); it needs transformers 5"
    return None


def generation_parity(model, runtime, texts: Sequence[str], new_tokens: int, atol: Optional[float]) -> dict:
    """Logits and greedy tokens (up to EOS, as both stop) of ``runtime`` against the PyTorch ``model`` on each prompt.

    ``passed`` is None without ``atol``: a quantized build is measured, not judged.
    """
    checks = []
    for text in texts:
        ids = runtime.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            reference_logits = model(ids).logits
            reference = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=runtime.pad_token_id)
        generated = runtime.generate(ids, max_new_tokens=new_tokens)
        # both pad after an early EOS with the same pad token; compare the new tokens over the longer of the two
        pair = torch.nn.utils.rnn.pad_sequence([generated[0], reference[0]], batch_first=True, padding_value=runtime.pad_token_id)[:, ids.shape[1]:]
        checks.append({
            "batch_size": 1, "sequence_length": ids.shape[1],
            "max_abs_diff": float((runtime.logits(ids) - reference_logits).abs().max()),
            "identical_generation": bool(torch.equal(pair[0], pair[1])),
            "matching_tokens": int((pair[0] == pair[1]).sum()), "new_tokens": pair.shape[1],
        })
    worst = max(c["max_abs_diff"] for c in checks)
    identical = sum(c["identical_generation"] for c in checks)
    return {
        "max_abs_diff": worst, "tolerance": atol, "new_tokens": new_tokens, "identical_generations": identical,
        "token_agreement": round(sum(c["matching_tokens"] for c in checks) / sum(c["new_tokens"] for c in checks), 4),
        "passed": None if atol is None else bool(worst <= atol and identical == len(checks)), "checks": checks,
    }


def _supported_config(source: Path):
    """The checkpoint's config, if the builder can build its architecture; a one-line error otherwise."""
    from transformers import AutoConfig

    if not source.is_dir():
        raise ModelError(f"onnxruntime-genai's builder needs a local checkpoint directory, got '{source}': download it first (huggingface-cli download)")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot build '{source}': no readable config.json ({str(e).splitlines()[0][:160]})") from e
    architecture = (config.architectures or ["(none given)"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"onnxruntime-genai's model builder cannot build {architecture}: it builds {', '.join(SUPPORTED_ARCHITECTURES)}; "
            "export other models with backend 'auto' (dynamo or Optimum)"
        )
    return config


def _quantization_details(config: GenaiBuildConfig, staging: Path, extra: dict, version: str) -> dict:
    quantized_ops = extra.get("op_types_to_quantize") or ("MatMul",)
    return {
        "method": "genai_int4",
        "weights": f"int4 {'symmetric' if config.symmetric else 'asymmetric'}, blocks of {config.block_size} (MatMulNBits)",
        "activations": "float32" + (", int8 per block inside the int4 MatMuls" if config.accuracy_level == 4 else ""),
        "algorithm": config.algorithm, "block_size": config.block_size, "accuracy_level": config.accuracy_level,
        "operators": list(quantized_ops), "embeddings_quantized": "Gather" in quantized_ops,
        "tool": f"onnxruntime-genai {version} model builder", "onnx_file": "model.onnx",
        "size_mb": round(sum(f.stat().st_size for f in staging.glob("model.onnx*")) / 2**20, 2),
    }


__all__ = ["GenaiBuildConfig", "build_genai_model", "builder_missing", "generation_parity"]
