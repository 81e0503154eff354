"""Graph optimisation of an exported model with ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``).

Levels are Optimum's (``AutoOptimizationConfig``), with the same settings: O1 basic ONNX Runtime graph
optimisations, O2 extended ones plus the transformer fusions (attention, LayerNorm, GELU), O3 adds
GELU approximation. O4 also converts to float16, which ONNX Runtime only runs fast on GPU, so it is
refused on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import ConfigError, ModelError

OptimizationLevel = Literal["O1", "O2", "O3", "O4"]
OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")
OPTIMIZED_SUFFIX = "optimized"

# Transformers model type -> the ONNX Runtime optimizer's model type whose fusions fit it (Optimum's ORTConfigManager table)
ORT_MODEL_TYPES = {
    "albert": "bert", "bart": "bart", "bert": "bert", "big_bird": "bert", "bigbird_pegasus": "bart", "blenderbot": "bert",
    "bloom": "gpt2", "camembert": "bert", "codegen": "gpt2", "deberta": "bert", "deberta-v2": "bert", "distilbert": "bert",
    "electra": "bert", "gpt2": "gpt2", "gpt_bigcode": "gpt2", "gpt_neo": "gpt2", "gpt_neox": "gpt2", "gptj": "gpt2",
    "granite": "gpt2", "llama": "gpt2", "longt5": "bert", "marian": "bart", "mbart": "bart", "mistral": "gpt2",
    "modernbert": "bert", "mpnet": "bert", "mt5": "bart", "m2m_100": "bart", "nystromformer": "bert", "pegasus": "bert",
    "roberta": "bert", "t5": "bert", "xlm-roberta": "bert",
}


def check_level(level: str, for_gpu: bool = False) -> None:
    if level not in OPTIMIZATION_LEVELS:
        raise ConfigError(f"optimization level '{level}' is not one of {OPTIMIZATION_LEVELS}")
    if level == "O4" and not for_gpu:
        raise ConfigError("optimization level O4 converts to float16, which needs a GPU: use O1, O2 or O3 on CPU")


def optimize_onnx(onnx_dir: str | Path, level: str = "O2", file_name: str = "model.onnx", for_gpu: bool = False) -> Path:
    """Write ``<file>_optimized.onnx`` beside ``file_name`` in ``onnx_dir`` (which holds the model's config.json); return its path."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    check_level(level, for_gpu)
    onnx_dir = Path(onnx_dir)
    config = AutoConfig.from_pretrained(onnx_dir)
    model_type = ORT_MODEL_TYPES.get(config.model_type)
    if model_type is None:
        raise ModelError(
            f"ONNX Runtime's transformer optimizer has no fusions for model type '{config.model_type}': "
            f"export without optimize (supported: {sorted(ORT_MODEL_TYPES)})"
        )
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = False  # ONNX Runtime cannot quantize EmbedLayerNormalization afterwards
    options.enable_gelu_approximation = level in ("O3", "O4")
    path = onnx_dir / file_name
    external = any(uses_external_data(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    optimizer = optimize_model(
        str(path), model_type, config.num_attention_heads, config.hidden_size,
        opt_level=1 if level == "O1" else 2, optimization_options=options, use_gpu=for_gpu, only_onnxruntime=level == "O1",
    )
    if level == "O4":
        optimizer.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
    output = onnx_dir / f"{path.stem}_{OPTIMIZED_SUFFIX}.onnx"
    optimizer.save_model_to_file(str(output), use_external_data_format=external, all_tensors_to_one_file=True)
    return output
