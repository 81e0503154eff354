"""What to quantize and how: the ONNX Runtime int8 schemes, QAT settings and post-training settings.

``ort_scheme(preset, mode)`` is the single description of the arithmetic ONNX Runtime applies for one
of Optimum's hardware presets; the QAT fake-quantization and the post-training quantizer's arguments
(``onnx_ptq.ort_quantizer_arguments``) are both derived from it, so what is simulated during training is what ships.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..artifacts import QAT_RANGES_FILE, QUANTIZATION_FILE, CompressionSummary, set_entries, write_method_report
from ..errors import ConfigError, closest
from ..evaluation.latency import cpu_info
from ..targets import PATTERNS_HELP, ModulePatterns, check_module_patterns

PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64", "tensorrt")
AUTO_PRESET = "auto"
Preset = Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64", "tensorrt"]
Mode = Literal["dynamic", "static"]
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
WEIGHT_ONLY_ALGORITHMS = ("rtn", "hqq", "gptq")
OUTPUT_LAYER_CHOICES = ("int8", "fp32", "same")


@dataclass(frozen=True)
class IntRange:
    """An integer grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``."""

    dtype: str  # "int8" or "uint8"
    symmetric: bool
    qmin: int
    qmax: int

    @property
    def symmetric_zero_point(self) -> int:
        # ORT: round((qmin + qmax) / 2) with numpy's half-to-even rounding: 0 for int8, 128 for uint8
        return int(round((self.qmin + self.qmax) / 2))

    def describe(self) -> str:
        return f"{self.dtype} {'symmetric' if self.symmetric else 'asymmetric'}"


# ONNX Runtime's ranges (onnxruntime.quantization.quant_utils): symmetric int8 drops -128 so that
# the grid is symmetric around 0; uint8 has no symmetric range, symmetric uint8 is [0, 255] with zero point 128.
INT8_SYMMETRIC = IntRange("int8", True, -127, 127)
UINT8_SYMMETRIC = IntRange("uint8", True, 0, 255)
UINT8_ASYMMETRIC = IntRange("uint8", False, 0, 255)


@dataclass(frozen=True)
class OrtScheme:
    """How ONNX Runtime quantizes a MatMul/Gemm for a preset and mode."""

    weights: IntRange
    activations: IntRange
    per_channel: bool
    dynamic_activations: bool  # ranges computed per batch at run time (DynamicQuantizeLinear) vs calibrated

    def describe(self) -> dict:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        activation_range = "per-tensor, computed per batch at run time" if self.dynamic_activations else "per-tensor, calibrated"
        return {
            "weights": f"{self.weights.describe()} {granularity}",
            "activations": f"{self.activations.describe()} {activation_range}",
        }


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key} '{value}' is unknown{closest(value, choices)}: use one of {list(choices)}")


def cpu_preset(isa: Optional[list[str]] = None, machine: Optional[str] = None) -> tuple[str, str]:
    """The CPU preset for this machine's int8 kernels (or the given ISA flags and machine), and why.

    AVX2 without VNNI multiplies u8 by s8 with an instruction (vpmaddubsw) whose 16-bit sums can
    saturate, so the avx2 preset stores weights as uint8 (ONNX Runtime's u8u8 kernels) rather than
    shrinking the range (reduce_range); with VNNI (AVX-512 VNNI or AVX-VNNI) s8 weights cannot
    saturate; ARM64 has its own s8 kernels.
    """
    if isa is None or machine is None:
        info = cpu_info(threads=1)
        isa, machine = info["isa"] if isa is None else isa, info["machine"] if machine is None else machine
    flags = set(isa)
    if machine.lower() in ("aarch64", "arm64"):
        return "arm64", f"{machine} CPU"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni", f"VNNI int8 dot products ({', '.join(sorted(flags & {'avx512_vnni', 'avx_vnni'}))}): int8 weights do not saturate"
    if "avx512f" in flags:
        return "avx512", "AVX-512 without VNNI"
    return "avx2", f"no VNNI (ISA: {', '.join(sorted(flags)) or 'none found'}): uint8 weights, as u8*s8 products can saturate on AVX2"


def resolve_preset(config) -> None:
    """Replace ``preset: auto`` by this CPU's preset; ``config.preset_reason`` says why (empty when it was chosen by hand)."""
    config.preset_reason = ""
    if config.preset == AUTO_PRESET:
        config.preset, reason = cpu_preset()
        config.preset_reason = f"chosen for this CPU: {reason}"


def ort_scheme(preset: str, mode: str, per_channel: bool = True) -> OrtScheme:
    """The arithmetic of Optimum's ``AutoQuantizationConfig.<preset>(is_static=...)`` as ONNX Runtime applies it.

    Dynamic mode always quantizes activations to uint8 asymmetric per tensor at run time
    (DynamicQuantizeLinear). avx2 stores weights as uint8 symmetric (zero point 128: AVX2's u8*s8
    kernels can saturate), the other CPU presets as int8 symmetric. TensorRT is static only and
    symmetric int8 throughout.
    """
    _check_choice(preset, PRESETS, "preset")
    _check_choice(mode, ("dynamic", "static"), "mode")
    if preset == "tensorrt":
        if mode != "static":
            raise ConfigError("preset 'tensorrt' is static only (TensorRT consumes calibrated QDQ graphs): set mode: static")
        return OrtScheme(INT8_SYMMETRIC, INT8_SYMMETRIC, per_channel, dynamic_activations=False)
    weights = UINT8_SYMMETRIC if preset == "avx2" else INT8_SYMMETRIC
    return OrtScheme(weights, UINT8_ASYMMETRIC, per_channel, dynamic_activations=(mode == "dynamic"))


class _TargetsOrtScheme:
    """Mixin for configs with ``preset``, ``mode`` and ``per_channel``: the ONNX Runtime scheme they name."""

    @property
    def scheme(self) -> OrtScheme:
        return ort_scheme(self.preset, self.mode, self.per_channel)


@dataclass
class QATConfig(_TargetsOrtScheme):
    """Quantization-aware training: fake-quantize the targeted Linear and Conv2d layers as ONNX Runtime int8 will."""

    preset: Preset = field(default="avx2", metadata={"help": f"Deployment preset to simulate, one of {PRESETS}, or 'auto' for this CPU's; must match the later `quantize` stage."})
    mode: Mode = field(default="dynamic", metadata={"help": "Deployment mode to simulate: 'dynamic' (activation ranges per batch) or 'static' (calibrated ranges, learned here as moving averages)."})
    per_channel: bool = field(default=True, metadata={"help": "One weight scale per output channel (as Optimum's presets do) rather than one per tensor."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step from which fake quantization is on; before it training is plain fp32."})
    target_modules: ModulePatterns = field(
        default=None,
        metadata={"help": f"Linear and Conv2d layers to fake-quantize: {PATTERNS_HELP}. Default: every nn.Linear and nn.Conv2d (ONNX Runtime quantizes every MatMul/Gemm, and every Conv of a static graph)."},
    )
    exclude_modules: ModulePatterns = field(
        default=None,
        metadata={"help": "Linear layers left in fp32, same syntax (exclude the same nodes from the int8 model with the quantize stage's "
                  "onnx.exclude_nodes, e.g. '/classifier/Gemm')."},
    )
    range_momentum: float = field(default=0.01, metadata={"help": "Moving-average weight of each batch's min/max in the observed activation ranges."})
    freeze_ranges_step: Optional[int] = field(default=None, metadata={"help": "Optimizer step after which the observed activation ranges stop moving (static mode); default: never."})
    fold_batch_norm: bool = field(
        default=True,
        metadata={"help": "Conv2d layers: fold the BatchNorm2d that follows each conv into its weights during training, so the weights fake-quantized are the folded ones ONNX Runtime quantizes."},
    )
    freeze_bn_step: Optional[int] = field(
        default=None,
        metadata={"help": "Optimizer step after which the folded BatchNorms' running statistics are frozen and used instead of the batch's (the inference form trains); default: never."},
    )

    def __post_init__(self):
        resolve_preset(self)
        self.scheme  # noqa: B018  (validates preset, mode and their combination)
        if self.start_step < 0:
            raise ConfigError(f"start_step must be >= 0, got {self.start_step}")
        if self.freeze_bn_step is not None and self.freeze_bn_step < self.start_step:
            raise ConfigError(f"freeze_bn_step ({self.freeze_bn_step}) comes before start_step ({self.start_step}): BatchNorms are only folded once QAT starts")
        if not 0.0 < self.range_momentum <= 1.0:
            raise ConfigError(f"range_momentum must be in (0, 1], got {self.range_momentum}")
        check_module_patterns(self.target_modules, self.exclude_modules)


@dataclass
class WeightOnlyConfig:
    """Blockwise int4/int8 weights for the MatMuls of an ONNX graph (ONNX Runtime's MatMulNBits); activations stay float."""

    bits: Literal[4, 8] = field(default=4, metadata={"help": "Bits per weight: 4 or 8 (MatMulNBits' CPU kernels); 8 is rtn only (ONNX Runtime's GPTQ writes 4 bits only, its HQQ 8-bit weights have float zero points the CPU kernel refuses)."})
    algorithm: Literal["rtn", "hqq", "gptq"] = field(
        default="rtn",
        metadata={"help": "'rtn': round to nearest, each block's min/max (ONNX Runtime's 'DEFAULT' quantizer, the same arithmetic as its 'RTN' config, which is 4-bit only); "
                  "'hqq': half-quadratic quantization, zero points and scales optimized per block without data (4 bits, asymmetric); "
                  "'gptq': GPTQ, error-compensating rounding from calibration text (calibration_split, calibration_samples sequences of calibration_sequence_length tokens)."},
    )
    block_size: int = field(default=32, metadata={"help": "Weights sharing one scale (and zero point) along the input dimension: a power of 2, >= 16. 32 is llama.cpp's Q4_0/Q4_1 block; larger blocks are smaller and less accurate."})
    symmetric: bool = field(default=False, metadata={"help": "Symmetric blocks (scale only, zero point fixed at the middle); false stores a zero point per block (as llama.cpp's Q4_1), more accurate. hqq is asymmetric only."})
    accuracy_level: int = field(
        default=4,
        metadata={"help": "MatMulNBits' compute type: 0 unset (the kernel's default, fp32 here), 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations quantized per block on the fly, "
                  "fast on AVX2 and AVX-512 VNNI). Recorded in each MatMulNBits node."},
    )
    output_layer: Literal["int8", "fp32", "same"] = field(
        default="int8",
        metadata={"help": "The MatMul producing the logits (lm_head; with tied embeddings it reads the embedding table, untied here so it can be quantized): "
                  "'int8' (8-bit blocks; llama.cpp's Q4 files keep the output layer in 8 bits or more: SmolLM2's Q4_1 GGUF stores its tied table as Q8_0, wider models get Q6_K), "
                  "'fp32' (left as exported) or 'same' (the bits of the rest)."},
    )
    integer_zero_points: bool = field(
        default=True,
        metadata={"help": "hqq: round its float zero points to uint4 and add the exact remainder back (a small float MatMul on per-block sums of the input, "
                  "shared by the MatMuls reading the same input), so MatMulNBits runs its fast integer kernel (with float zero points it falls back to a slow path) "
                  "at HQQ's accuracy; false keeps the float zero points. rtn and gptq write integer zero points already."},
    )
    calibration_sequence_length: int = field(default=256, metadata={"help": "gptq: tokens per calibration sequence (calibration rows tokenized, joined and cut to this length)."})

    def __post_init__(self):
        _check_choice(self.algorithm, WEIGHT_ONLY_ALGORITHMS, "weight_only.algorithm")
        _check_choice(self.output_layer, OUTPUT_LAYER_CHOICES, "weight_only.output_layer")
        if self.bits not in (4, 8):
            raise ConfigError(f"weight_only.bits must be 4 or 8 (MatMulNBits' CPU kernels), got {self.bits}")
        if self.bits == 8 and self.algorithm != "rtn":
            raise ConfigError(f"weight_only.bits 8 is rtn only: ONNX Runtime's {self.algorithm} writes no runnable 8-bit MatMulNBits; use algorithm: rtn or bits: 4")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"weight_only.block_size must be a power of 2 of at least 16 (MatMulNBits), got {self.block_size}")
        if self.symmetric and self.algorithm == "hqq":
            raise ConfigError("weight_only.algorithm hqq is asymmetric only (it optimizes a float zero point per block): set symmetric: false, or use rtn/gptq")
        if self.accuracy_level not in range(5):
            raise ConfigError(f"weight_only.accuracy_level must be 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8), got {self.accuracy_level}")
        if self.calibration_sequence_length < 2:
            raise ConfigError(f"weight_only.calibration_sequence_length must be at least 2 tokens, got {self.calibration_sequence_length}")

    def describe(self) -> dict:
        kind = "symmetric" if self.symmetric else "asymmetric"
        compute = {0: "unset (fp32)", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}[self.accuracy_level]
        return {
            "weights": f"int{self.bits} {kind} blocks of {self.block_size} ({self.algorithm})",
            "activations": f"float32, MatMulNBits compute {compute} (accuracy_level {self.accuracy_level})",
        }


@dataclass
class PTQConfig(_TargetsOrtScheme):
    """Post-training int8 quantization of an ONNX export with ``onnxruntime.quantization``, with Optimum's presets."""

    mode: Literal["dynamic", "static", "weight_only"] = field(
        default="dynamic",
        metadata={"help": "'dynamic' (activations quantized per batch at run time; MatMul/Gemm only, so it is refused for CNNs, whose weights are in Conv layers), 'static' (ranges calibrated on data, QDQ graph; what CNNs need) "
                  "or 'weight_only' (int4/int8 blockwise MatMul weights, float activations: ONNX Runtime's MatMulNBits, for causal LMs; settings under weight_only)."},
    )
    preset: Preset = field(default="avx2", metadata={"help": f"Hardware preset (Optimum's AutoQuantizationConfig settings), one of {PRESETS}, or 'auto': this CPU's (avx512_vnni with VNNI, avx512, else avx2; arm64 on ARM), recorded in {QUANTIZATION_FILE}; 'tensorrt' is static, symmetric int8 QDQ for TensorRT."})
    per_channel: bool = field(default=True, metadata={"help": "One weight scale per output channel."})
    calibration_method: Literal["minmax", "percentile", "entropy"] = field(default="minmax", metadata={"help": f"Static only: how activation ranges are chosen, one of {CALIBRATION_METHODS}."})
    calibration_split: Optional[str] = field(default=None, metadata={"help": "Static and weight_only gptq: dataset split drawn for calibration; default: the training split."})
    calibration_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Static: number of examples (seeded random subset) used for calibration, default 256; weight_only gptq: number of calibration sequences, default 32."},
    )
    percentile: float = field(default=99.999, metadata={"help": "Percentile calibration: the percentile of |activation| kept."})
    quantize_embeddings: bool = field(default=False, metadata={"help": "Also quantize the embedding tables (Gather); on MiniLM they are half of the weights."})
    embedding_bits: Optional[Literal[8, 4]] = field(
        default=None,
        metadata={"help": "With quantize_embeddings: 8 (int8 per tensor, with the Linear layers; the default of static and dynamic) or 4 (blockwise int4 weight-only, "
                  "ONNX Runtime's GatherBlockQuantized; half the bytes of int8; weight_only's only choice)."},
    )
    embedding_block_size: int = field(default=128, metadata={"help": "4-bit embeddings: values sharing one scale, along the hidden dimension (power of 2, >= 16)."})
    operators: Optional[list[str]] = field(
        default=None,
        metadata={"help": "ONNX operator types to quantize; default: MatMul and Gemm, i.e. the Linear layers (plus Gather with quantize_embeddings); "
                  "in a graph with Conv (a CNN), every operator ONNX Runtime's static quantizer knows (its default), so int8 flows from one Conv to the next."},
    )
    exclude_nodes: list[str] = field(default_factory=list, metadata={"help": f"ONNX node names to keep in fp32 (weight_only: MatMul names of the exported graph; see {QUANTIZATION_FILE}'s matmuls_kept)."})
    quantize_attention_matmuls: bool = field(
        default=False,
        metadata={"help": "Also quantize the activation-by-activation MatMuls of attention (Q·Kᵀ, softmax·V); off by default: they cost accuracy, save little time, and QAT does not simulate them."},
    )
    linear_inputs_only: bool = field(
        default=True,
        metadata={"help": "Static, CPU presets: keep Q/DQ only where the Linear layers read (inputs and weights), as QAT simulates; ONNX Runtime's own QDQ graph also requantizes every MatMul/Gemm output (the logits too) and feeds residual additions the quantized copy of their input. False keeps that graph. TensorRT graphs, and graphs with Conv (ONNX Runtime needs each Conv's output Q/DQ to run it as QLinearConv), are left as written."},
    )
    qat_ranges: bool = field(default=True, metadata={"help": f"Static only: when the model has {QAT_RANGES_FILE} (from QATCallback), use its activation ranges for the Linear inputs instead of calibrated ones."})
    weight_only: WeightOnlyConfig = field(
        default_factory=WeightOnlyConfig,
        metadata={"help": "mode weight_only: bits, algorithm (rtn, hqq, gptq), block_size, symmetric, accuracy_level, output_layer, calibration_sequence_length; "
                  "quantize_embeddings, embedding_block_size, exclude_nodes, calibration_split and calibration_samples apply too."},
    )

    def __post_init__(self):
        weight_only = self.mode == "weight_only"
        if self.calibration_samples is None:
            self.calibration_samples = 32 if weight_only else 256
        if self.embedding_bits is None:
            self.embedding_bits = 4 if weight_only else 8
        if weight_only:
            self.preset_reason = ""  # no int8 kernels to choose: the preset does not apply
            if self.embedding_bits != 4:
                raise ConfigError("mode weight_only quantizes embeddings to 4 bits only (GatherBlockQuantized): drop embedding_bits or set it to 4")
        else:
            resolve_preset(self)
            self.scheme  # noqa: B018  (validates preset, mode and their combination)
        _check_choice(self.calibration_method, CALIBRATION_METHODS, "calibration_method")
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration_samples must be >= 1, got {self.calibration_samples}")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.embedding_bits not in (8, 4):
            raise ConfigError(f"embedding_bits must be 8 or 4, got {self.embedding_bits}")
        if self.embedding_bits == 4:
            if not self.quantize_embeddings and not weight_only:
                raise ConfigError("embedding_bits 4 applies to the embedding tables: set quantize_embeddings: true as well")
            if self.preset == "tensorrt" and not weight_only:
                raise ConfigError("4-bit embeddings use ONNX Runtime's GatherBlockQuantized, which TensorRT cannot run: use embedding_bits 8 with preset tensorrt")
            if self.embedding_block_size < 16 or self.embedding_block_size & (self.embedding_block_size - 1):
                raise ConfigError(f"embedding_block_size must be a power of 2 of at least 16, got {self.embedding_block_size}")

    def operator_types(self, convolutional: bool = False) -> list[str]:
        if self.operators is not None:
            return list(self.operators)
        if convolutional:
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))  # what quantize_static takes when given no list
        # 4-bit embeddings are quantized after the int8 pass, by ONNX Runtime's block quantizer
        return ["MatMul", "Gemm"] + (["Gather"] if self.quantize_embeddings and self.embedding_bits == 8 else [])


# What each quantization method did, for the card: (sentence, settings, results) keys of its quantization.json.
_QUANTIZATION_SUMMARIES = {
    "qat": (
        "Trained with fake quantization that simulates ONNX Runtime's int8 arithmetic, so that static int8 quantization of the export keeps the accuracy.",
        ("weights", "activations", "preset", "mode", "calibration", "start_step", "freeze_bn_step"), ("step",),
    ),
    "static": (
        "Weights and activations quantized by ONNX Runtime, activation ranges calibrated ahead of time on training examples.",
        ("weights", "activations", "preset", "preset_reason", "calibration", "operators", "embeddings_quantized", "embedding_bits",
         "embedding_block_size", "attention_matmuls_quantized", "qdq"), ("convs_quantized", "onnx_file"),
    ),
    "dynamic": (
        "Weights quantized by ONNX Runtime ahead of time, activations quantized per batch at run time.",
        ("weights", "activations", "preset", "preset_reason", "operators", "embeddings_quantized", "embedding_bits", "embedding_block_size",
         "attention_matmuls_quantized"), ("onnx_file",),
    ),
    "genai_int4": (
        "MatMul weights (and tied embeddings) quantized to 4-bit blocks by onnxruntime-genai's model builder (MatMulNBits); activations stay float.",
        ("weights", "activations", "algorithm", "block_size", "accuracy_level", "operators", "embeddings_quantized", "tool"), ("onnx_file", "size_mb"),
    ),
    "weight_only": (
        "Weights of the MatMuls stored in blocks of 4 or 8 bits by ONNX Runtime (MatMulNBits, dequantized inside the kernel); activations stay float.",
        ("weights", "activations", "algorithm", "bits", "block_size", "symmetric", "accuracy_level", "output_layer", "embeddings_quantized",
         "embedding_block_size", "calibration"), ("matmuls_quantized", "matmuls_kept", "onnx_file"),
    ),
    "bnb": (
        "Linear layers quantized by bitsandbytes when loaded; the saved model reloads quantized with from_pretrained (bitsandbytes installed).",
        ("weights", "activations", "modules_not_quantized"), ("memory_footprint_bytes", "kept_in_full_precision_for_cpu", "onnx_exportable"),
    ),
}


def summarize_quantization(details: dict) -> CompressionSummary:
    """The compression summary of a ``quantization.json`` (QAT, ONNX Runtime static/dynamic, bitsandbytes)."""
    method = str(details.get("method"))
    sentence, settings, results = _QUANTIZATION_SUMMARIES["bnb" if method.startswith("bnb") else method]
    four_bit = "4bit" in method or "int4" in str(details.get("weights", ""))
    tensorrt = details.get("preset") == "tensorrt" or "tensorrt" in details
    tags = ["quantization", "qat" if method == "qat" else None, "4-bit" if four_bit else "int8", "tensorrt" if tensorrt else None]
    return CompressionSummary(
        method=method, title="Quantization", applied="quantized", summary=sentence, details_file=QUANTIZATION_FILE,
        settings=set_entries(details, settings), results=set_entries(details, results), tags=[t for t in tags if t],
    )


def write_quantization_report(directory, details: dict) -> None:
    """``quantization.json`` and its compression summary."""
    write_method_report(directory, details, summarize_quantization(details))
