"""Factorised checkpoints that reload through the Auto classes.

A factorised model is its base architecture (say ``BertForSequenceClassification``) with some
Linear layers replaced by :class:`LowRankLinear`. Its ``config.json`` has its own model type,
``hfcompress_factorized``, carrying every base config field plus ``base_model_type`` and
``factorized_ranks`` ({module name: rank}). The trade-off, chosen deliberately:

* with ``import hfcompress`` (which registers the type), ``AutoModelForSequenceClassification.from_pretrained(path)``
  returns the factorised model, and Trainer, ``save_pretrained`` and the Optimum ONNX exporter work;
* without hfcompress, ``from_pretrained`` fails loudly ("model type hfcompress_factorized not recognized")
  instead of loading the base architecture with random dense weights in place of the factors;
* the exported ONNX model needs nothing: its ``config.json`` is the base architecture's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from ..errors import ModelError
from ..targets import replace_module
from ..tasks import DEFAULT_TASK

FACTORIZED_MODEL_TYPE = "hfcompress_factorized"


class LowRankLinear(nn.Module):
    """``up(down(x))``: a rank-``r`` stand-in for a Linear layer; the bias lives in ``up``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class FactorizedConfig(PretrainedConfig):
    """The base model's config fields, plus ``base_model_type`` and ``factorized_ranks``."""

    model_type = FACTORIZED_MODEL_TYPE

    def __init__(self, base_model_type: Optional[str] = None, factorized_ranks: Optional[dict[str, int]] = None, **kwargs):
        if base_model_type is not None and base_model_type not in CONFIG_MAPPING:
            raise ModelError(
                f"factorised checkpoint has base model type '{base_model_type}', which this transformers version does not know: "
                "upgrade transformers"
            )
        # Base modelling code reads aliases such as GPT-2's hidden_size -> n_embd: mirror the base class's map.
        if base_model_type is not None:
            object.__setattr__(self, "attribute_map", dict(CONFIG_MAPPING[base_model_type].attribute_map))
        self.base_model_type = base_model_type
        self.factorized_ranks = dict(factorized_ranks or {})
        super().__init__(**kwargs)

    @property
    def export_model_type(self) -> Optional[str]:
        """Optimum's exporter builds the ONNX config of this model type (the graph's inputs/outputs are the base model's)."""
        return self.base_model_type

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("attribute_map", None)
        return output

    def base_config(self) -> PretrainedConfig:
        """The base architecture's config (for the exported ONNX model, which needs no hfcompress)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in ("model_type", "base_model_type", "factorized_ranks")}
        fields["architectures"] = [a.removeprefix("Factorized") for a in (self.architectures or [])] or None
        return AutoConfig.for_model(self.base_model_type, **fields)

    @classmethod
    def from_base(cls, base: PretrainedConfig, ranks: dict[str, int]) -> "FactorizedConfig":
        if isinstance(base, FactorizedConfig):
            return cls(**{**base.to_dict(), "factorized_ranks": {**base.factorized_ranks, **ranks}})
        fields = {k: v for k, v in base.to_dict().items() if k != "model_type"}
        return cls(base_model_type=base.model_type, factorized_ranks=ranks, **fields)


def install_low_rank(model: nn.Module, name: str, layer: LowRankLinear) -> None:
    """Put ``layer`` in place of the dense layer ``name``, and keep transformers' weight init away from its parent.

    After ``from_pretrained``, transformers 5 runs ``_init_weights`` on every module not flagged
    ``_is_hf_initialized``, and GPT-2's reaches into the layer replaced here (``c_proj.weight``), which a
    LowRankLinear does not have. The parent has no weights of its own to initialise: the factors come
    from the SVD or the checkpoint.
    """
    replace_module(model, name, layer)
    model.get_submodule(name.rpartition(".")[0])._is_hf_initialized = True


def replace_with_low_rank(model: nn.Module, ranks: dict[str, int]) -> None:
    """Swap each named layer for an (uninitialised) :class:`LowRankLinear` of the given rank."""
    for name, rank in ranks.items():
        dense = model.get_submodule(name)
        in_features, out_features, has_bias = dense_shape(dense)
        device = next(dense.parameters()).device
        dtype = next(dense.parameters()).dtype
        install_low_rank(model, name, LowRankLinear(in_features, out_features, rank, has_bias).to(device=device, dtype=dtype))


def dense_shape(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, has_bias) of an nn.Linear or a GPT-2 style Conv1D (weight stored in x out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None
    in_features, out_features = module.weight.shape
    return in_features, out_features, module.bias is not None


_FACTORIZED_CLASSES: dict[type, type] = {}


def factorized_class(base_cls: type) -> type:
    """``Factorized<Base>``: the base class whose ``__init__`` swaps in the low-rank layers named by the config."""
    if base_cls not in _FACTORIZED_CLASSES:

        def __init__(self, config, *args, **kwargs):
            from ..modeling import remove_heads_transformers_kept

            base_cls.__init__(self, config, *args, **kwargs)
            remove_heads_transformers_kept(self)  # a slimmed model factorised: its heads first
            replace_with_low_rank(self, config.factorized_ranks)

        # __module__ is the base class's: Optimum infers the library ("transformers") from it
        _FACTORIZED_CLASSES[base_cls] = type(
            f"Factorized{base_cls.__name__}",
            (base_cls,),
            {"__init__": __init__, "config_class": FactorizedConfig, "__module__": base_cls.__module__},
        )
    return _FACTORIZED_CLASSES[base_cls]


def _dispatching_auto_class(auto_cls) -> type:
    """A class the Auto factory maps ``FactorizedConfig`` to; it builds ``Factorized<Base>`` for the base type."""

    class Dispatcher(PreTrainedModel):
        config_class = FactorizedConfig

        @classmethod
        def _resolve(cls, config: FactorizedConfig) -> type:
            base_config_cls = CONFIG_MAPPING[config.base_model_type]
            try:
                base_cls = auto_cls._model_mapping[base_config_cls]
            except KeyError:
                raise ModelError(
                    f"{auto_cls.__name__} has no class for base model type '{config.base_model_type}': load it with the Auto class of its task"
                ) from None
            return factorized_class(base_cls)

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
            if not isinstance(config, FactorizedConfig):
                config = FactorizedConfig.from_pretrained(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
            return cls._resolve(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

        @classmethod
        def _from_config(cls, config, **kwargs):
            return cls._resolve(config)._from_config(config, **kwargs)

    Dispatcher.__name__ = Dispatcher.__qualname__ = auto_cls.__name__.replace("AutoModel", "FactorizedModel")
    return Dispatcher


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "trust_remote_code")
    return {k: kwargs[k] for k in keys if k in kwargs}


def register_factorized_auto_classes() -> None:
    """Let AutoConfig and the task Auto classes load ``hfcompress_factorized`` checkpoints (idempotent)."""
    if FACTORIZED_MODEL_TYPE in CONFIG_MAPPING:
        return
    AutoConfig.register(FACTORIZED_MODEL_TYPE, FactorizedConfig)
    for auto_cls in (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoModelForCausalLM):
        auto_cls.register(FactorizedConfig, _dispatching_auto_class(auto_cls))


def is_factorized(model_or_config) -> bool:
    config = model_or_config.config if isinstance(model_or_config, PreTrainedModel) else model_or_config
    return getattr(config, "model_type", None) == FACTORIZED_MODEL_TYPE


def load_factorized(path: str, task: str = DEFAULT_TASK, **kwargs) -> PreTrainedModel:
    """Load a factorised checkpoint (directory or Hub id) for ``task``; the same as the task's Auto class after ``import hfcompress``."""
    from ..modeling import load_model

    register_factorized_auto_classes()
    model = load_model(path, task, **kwargs)
    if not is_factorized(model):
        raise ModelError(f"model '{path}' is not factorised (model type '{model.config.model_type}'): load it with load_model")
    return model
