"""The ``quantize`` stage (ONNX Runtime int8 or bitsandbytes) and the ``qat`` training callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...data import TaskData
from ...errors import ConfigError
from ...quantization.bnb import BnbConfig, quantize_bnb
from ...quantization.config import PTQConfig, QATConfig
from ...quantization.onnx_ptq import quantize_onnx
from ...quantization.qat import QATCallback, read_quantization_json
from ..context import RunContext
from ..registry import register_callback, register_stage


@register_callback("qat", QATConfig)
def qat_callback(config: QATConfig) -> QATCallback:
    return QATCallback(config)


@dataclass
class QuantizeStageConfig:
    """Quantize a model: ONNX Runtime int8 through Optimum (dynamic or static, CPU presets or TensorRT QDQ), or bitsandbytes 8/4-bit."""

    model: str = field(metadata={"help": "Model to quantize: an earlier stage's name, a local path or a Hub id (a PyTorch checkpoint or a directory with an .onnx file).", "model_ref": True})
    name: str = field(default="quantized", metadata={"help": "Stage name; also its output sub-directory."})
    backend: Literal["onnxruntime", "bitsandbytes"] = field(default="onnxruntime", metadata={"help": "'onnxruntime' (int8 ONNX, fast on CPU) or 'bitsandbytes' (8/4-bit PyTorch weights, for memory)."})
    onnx: PTQConfig = field(default_factory=PTQConfig, metadata={"help": "ONNX Runtime settings: mode, preset, calibration_method, calibration_samples, quantize_embeddings, ..."})
    bnb: BnbConfig = field(default_factory=BnbConfig, metadata={"help": "bitsandbytes settings: bits, quant_type, double_quant, compute_dtype."})


def check_matches_qat(model_dir, config: PTQConfig) -> None:
    """A model trained with QAT must be quantized with the scheme it was trained for."""
    info = read_quantization_json(model_dir)
    if not info or info.get("method") != "qat":
        return
    if (info["preset"], info["mode"]) != (config.preset, config.mode):
        raise ConfigError(
            f"model {model_dir} was trained with QAT for preset '{info['preset']}', mode '{info['mode']}' but the quantize stage uses "
            f"preset '{config.preset}', mode '{config.mode}': set onnx.preset/onnx.mode to match, or QAT does not close the gap"
        )


@register_stage("quantize", QuantizeStageConfig)
def run_quantize(cfg: QuantizeStageConfig, ctx: RunContext):
    source = ctx.resolve(cfg.model)
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        if cfg.backend == "bitsandbytes":
            quantize_bnb(source, staging, cfg.bnb, overwrite=True)
        else:
            check_matches_qat(source, cfg.onnx)
            data = None
            if cfg.onnx.mode == "static":
                split = cfg.onnx.calibration_split or ctx.data_config.train_split
                data = ctx.data() if split in ctx.data().raw else TaskData(ctx.data_config, splits=[split], seed=ctx.seed)
            quantize_onnx(source, staging, cfg.onnx, data, seed=ctx.seed, overwrite=True)
    return ctx.publish(staging, cfg.name)
