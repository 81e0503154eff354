"""The ``quantize`` stage (ONNX Runtime int8 or weight-only int4/int8, or bitsandbytes) and the ``qat`` training callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ...data import TaskData
from ...errors import ConfigError
from ...quantization.bnb import BnbConfig, quantize_bnb
from ...quantization.config import PTQConfig, QATConfig
from ...quantization.onnx_ptq import quantize_onnx
from ...quantization.qat import QATCallback, read_quantization_json
from ..context import RunContext
from ..registry import StageConfig, register_callback, register_stage
from ..schema import from_dict


@register_callback("qat", QATConfig)
def qat_callback(config: QATConfig) -> QATCallback:
    return QATCallback(config)


@dataclass
class QuantizeStageConfig(StageConfig):
    """Quantize a model: ONNX Runtime int8 (dynamic or static, CPU presets or TensorRT QDQ; a CNN static only, calibrated on its images), ONNX Runtime int4/int8 weight-only (MatMulNBits: RTN, HQQ, GPTQ; causal LMs), or bitsandbytes 8/4-bit."""

    model: str = field(metadata={"help": "Model to quantize: an earlier stage's name, a local path or a Hub id (a PyTorch checkpoint or a directory with an .onnx file).", "model_ref": True})
    name: str = field(default="quantized", metadata={"help": "Stage name; also its output sub-directory."})
    backend: Literal["onnxruntime", "bitsandbytes"] = field(default="onnxruntime", metadata={"help": "'onnxruntime' (int8 ONNX, fast on CPU) or 'bitsandbytes' (8/4-bit PyTorch weights, for memory)."})
    onnx: PTQConfig = field(default_factory=PTQConfig, metadata={"help": "ONNX Runtime settings: mode (dynamic, static, weight_only), preset, calibration_method, calibration_samples, quantize_embeddings, weight_only (bits, algorithm, block_size, ...), ..."})
    bnb: BnbConfig = field(default_factory=BnbConfig, metadata={"help": "bitsandbytes settings: bits, quant_type, double_quant, compute_dtype, exclude_modules."})

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        size = ctx.model_bytes(self.model)
        local = Path(ctx.resolve(self.model))
        stages = {s["name"]: s.get("stage") for s in ctx.resolved_recipe.get("stages", []) if isinstance(s, dict)}
        onnx_input = stages.get(self.model) == "export" or (local.is_dir() and any(local.glob("*.onnx")))
        return size, size * (2 if self.backend == "onnxruntime" and not onnx_input else 1)  # a PyTorch model is exported to ONNX first

    def preflight(self, ctx: RunContext) -> None:
        if self.backend == "onnxruntime":  # a QAT/PTQ scheme mismatch fails before the QAT training runs, not after it
            check_matches_qat(self.model, planned_qat_scheme(ctx, self.model), self.onnx)


def check_matches_qat(model: str, scheme: Optional[tuple[str, str]], config: PTQConfig) -> None:
    """A model trained with QAT must be quantized with the scheme (preset, mode) it was trained for."""
    if scheme is not None and scheme != (config.preset, config.mode):
        raise ConfigError(
            f"model {model} was trained with QAT for preset '{scheme[0]}', mode '{scheme[1]}' but the quantize stage uses "
            f"preset '{config.preset}', mode '{config.mode}': set onnx.preset/onnx.mode to match, or QAT does not close the gap"
        )


def qat_scheme_of(model_dir) -> Optional[tuple[str, str]]:
    """(preset, mode) a saved model was trained with QAT for, or None."""
    info = read_quantization_json(model_dir)
    return (info["preset"], info["mode"]) if info and info.get("method") == "qat" else None


def planned_qat_scheme(ctx: RunContext, ref: str) -> Optional[tuple[str, str]]:
    """(preset, mode) the model ``ref`` will have been trained with QAT for, known before any stage runs.

    Follows an earlier stage back through stages that only convert it (an export) to the training
    stage whose ``qat`` callback sets the scheme; a local directory says so in its quantization.json.
    """
    stages = {s["name"]: s for s in ctx.resolved_recipe.get("stages", []) if isinstance(s, dict)}
    while ref in stages:
        stage = stages[ref]
        qat = next((c for c in stage.get("callbacks") or [] if isinstance(c, dict) and c.get("type") == "qat"), None)
        if qat is not None:
            config = from_dict(QATConfig, {k: v for k, v in qat.items() if k != "type"})
            return config.preset, config.mode
        if stage.get("stage") != "export":
            return None
        ref = stage["model"]
    return qat_scheme_of(ctx.resolve(ref)) if Path(ctx.resolve(ref)).is_dir() else None


@register_stage("quantize", QuantizeStageConfig)
def run_quantize(cfg: QuantizeStageConfig, ctx: RunContext):
    source = ctx.resolve(cfg.model)
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        if cfg.backend == "bitsandbytes":
            quantize_bnb(source, staging, cfg.bnb, overwrite=True)
        else:
            check_matches_qat(source, qat_scheme_of(source), cfg.onnx)  # what the model says, after it was made
            data = None
            if cfg.onnx.mode == "static" or (cfg.onnx.mode == "weight_only" and cfg.onnx.weight_only.algorithm == "gptq"):
                split = cfg.onnx.calibration_split or ctx.data_config.train_split
                data = ctx.data() if split in ctx.data().raw else TaskData(ctx.data_config, splits=[split], seed=ctx.seed)
            quantize_onnx(source, staging, cfg.onnx, data, seed=ctx.seed, overwrite=True)
    return ctx.publish(staging, cfg.name)
