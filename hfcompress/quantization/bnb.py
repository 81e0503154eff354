"""bitsandbytes: load a model with 8-bit (LLM.int8) or 4-bit (NF4/FP4, optional double quantization) Linear layers.

This is for memory, not CPU speed: bitsandbytes stores the weights compactly and dequantizes them
inside every matmul, so on a CPU it is usually slower than fp32, and its layers cannot be exported
to ONNX. For fast CPU int8 use ONNX Runtime (:func:`~hfcompress.quantization.quantize_onnx`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import torch

from ..errors import ConfigError
from ..modeling import empty_model, load_model, load_tokenizer
from ..targets import PATTERNS_HELP, ModulePatterns, check_module_patterns, select_modules
from ..tasks import get_task, task_of
from ..utils.io import atomic_output_dir
from .config import write_quantization_report

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# bitsandbytes' 4-bit blocks hold 64 weights of one row. On CPUs with AVX-512 (bf16) it repacks a
# Linear4bit at its first forward pass for its fused kernel, which needs whole blocks per row and
# output rows in groups of 32 (bitsandbytes.functional._convert_weight_packed_for_cpu).
BNB_4BIT_BLOCK = 64
BNB_CPU_PACK_ROWS = 32

logger = logging.getLogger("hfcompress")


@dataclass
class BnbConfig:
    """How bitsandbytes quantizes the Linear layers at load time."""

    bits: Literal[8, 4] = field(default=8, metadata={"help": "8 (LLM.int8 with outlier columns in fp16) or 4 (NF4/FP4 blocks)."})
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit only: NormalFloat4 (for normally distributed weights) or FP4."})
    double_quant: bool = field(default=True, metadata={"help": "4-bit only: also quantize the per-block scales (saves ~0.4 bit per weight)."})
    compute_dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "dtype of the matmuls and of the layers left unquantized."})
    exclude_modules: ModulePatterns = field(
        default=None,
        metadata={"help": f"Linear layers kept in full precision: {PATTERNS_HELP}. Default: transformers' choice (the output head); [] keeps none."},
    )

    renamed_keys: ClassVar[dict[str, str]] = {"skip_modules": "exclude_modules"}  # transformers' substring syntax, before the one target syntax

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ConfigError(f"bits must be 8 or 4, got {self.bits}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"quant_type must be 'nf4' or 'fp4', got '{self.quant_type}'")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got '{self.compute_dtype}'")
        check_module_patterns(None, self.exclude_modules)

    def transformers_config(self, kept: list[str]):
        """Transformers' ``BitsAndBytesConfig``, keeping the modules named exactly in ``kept`` (see :func:`kept_modules`)."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=kept)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[self.compute_dtype], llm_int8_skip_modules=kept,
        )

    def describe(self) -> dict:
        if self.bits == 8:
            return {"method": "bnb-8bit", "weights": "int8 per-row absmax (LLM.int8, outlier columns in fp16)", "activations": self.compute_dtype}
        dq = ", double-quantized scales" if self.double_quant else ""
        return {"method": "bnb-4bit", "weights": f"{self.quant_type} blocks of 64{dq}", "activations": self.compute_dtype}


def fits_cpu_4bit(layer: torch.nn.Linear) -> bool:
    """Whether bitsandbytes' AVX-512 CPU kernel can repack this layer's 4-bit weight (whole 64-blocks, rows in 32s)."""
    return layer.in_features % BNB_4BIT_BLOCK == 0 and layer.out_features % BNB_CPU_PACK_ROWS == 0


def default_skip_modules(skeleton) -> list[str]:
    """The modules transformers keeps in full precision by default (the output head, tied weights), as module names."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert  # transformers 5 moved it here
    except ImportError:
        from transformers.integrations import get_keys_to_not_convert
    # transformers 5 returns the head's last parameter ("classifier.bias"), which no longer matches the module, so
    # its own default would quantize a classifier that 4.x kept; stripped to the module name, both keep it
    return sorted({key.removesuffix(".weight").removesuffix(".bias") for key in get_keys_to_not_convert(skeleton)})


def kept_modules(model_config, task, config: BnbConfig) -> tuple[list[str], list[str]]:
    """(names of the modules kept in full precision, those of them kept only because their shape does not fit 4-bit on the CPU).

    ``exclude_modules`` is resolved on the model's meta skeleton to exact module names, which transformers
    then skips (its own matching, a substring on 4.x and a regex or suffix on 5, finds exactly those).
    Every misfit layer is kept on every CPU, not only where AVX-512 would fail on it, so a 4-bit
    checkpoint behaves the same on every machine it is loaded on.
    """
    skeleton = empty_model(model_config, task)  # a slimmed checkpoint's narrower attention layers included
    if config.exclude_modules is None:
        kept = default_skip_modules(skeleton)
    else:
        kept = list(select_modules(skeleton, config.exclude_modules, key="exclude_modules")) if config.exclude_modules else []
    if config.bits == 8:
        return kept, []
    misfits = [
        name for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear) and not fits_cpu_4bit(module) and name not in kept
    ]
    return kept + misfits, misfits


def load_bnb(model: str | Path, config: Optional[BnbConfig] = None, task: Optional[str] = None):
    """Load ``model`` (local path or Hub id, fp32 or already bitsandbytes-quantized) with bitsandbytes Linear layers on CPU.

    In 4 bits, Linear layers too narrow for bitsandbytes' CPU blocks stay in full precision, with a
    warning that names them (``load_bnb(...).hfc_bnb_unfit_modules`` lists them; ``hfc_bnb_skipped_modules``
    lists every module kept, the output head of a causal LM or classifier included).
    """
    from transformers import AutoConfig

    config = config or BnbConfig()
    model_config = AutoConfig.from_pretrained(str(model))
    task = get_task(task) if task else task_of(model_config)
    misfits: list[str] = []
    skip: list[str] = []
    if getattr(model_config, "quantization_config", None):
        quantization = {}  # a checkpoint saved by quantize_bnb carries its own quantization_config, which from_pretrained applies
    else:
        skip, misfits = kept_modules(model_config, task, config)
        quantization = {"quantization_config": config.transformers_config(skip)}
        if misfits:
            logger.warning(
                "hfcompress: %d Linear layer(s) stay in %s: bitsandbytes' 4-bit CPU kernel needs input widths divisible by %d "
                "and output widths by %d (%s)", len(misfits), config.compute_dtype, BNB_4BIT_BLOCK, BNB_CPU_PACK_ROWS, ", ".join(misfits),
            )
    loaded = load_model(str(model), task, device_map="cpu", dtype=COMPUTE_DTYPES[config.compute_dtype], **quantization)
    loaded.hfc_bnb_unfit_modules = misfits
    loaded.hfc_bnb_skipped_modules = skip  # what this load kept in full precision (empty for a checkpoint saved quantized)
    return loaded


def quantize_bnb(model: str | Path, output_dir: str | Path, config: Optional[BnbConfig] = None, overwrite: bool = False) -> Path:
    """Load ``model`` in 8 or 4 bits and save it (weights, config with its quantization_config, tokenizer, quantization.json).

    The saved directory reloads with ``from_pretrained`` (bitsandbytes must be installed there too).
    """
    config = config or BnbConfig()
    output_dir = Path(output_dir)
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        quantized = load_bnb(model, config)
        quantized.save_pretrained(staging)
        load_tokenizer(str(model)).save_pretrained(staging)
        write_quantization_report(
            staging,
            {**config.describe(), "modules_not_quantized": quantized.hfc_bnb_skipped_modules, "kept_in_full_precision_for_cpu": quantized.hfc_bnb_unfit_modules, "memory_footprint_bytes": int(quantized.get_memory_footprint()), "source": str(model), "onnx_exportable": False},
        )
    return output_dir
