"""The channel counts filter pruning leaves, recorded in the config so the model reloads.

A model whose config has fields for its widths says so with a ``record_pruned_widths()`` method: it writes its
current widths into its config and returns the layers the config now sizes (the CIFAR ResNets: each block's inner
width in ``config.block_widths``), and the model reloads with plain ``from_pretrained``. Transformers' ResNet and
MobileNetV2 configs cannot express per-layer widths, so every other layer whose shape pruning changed is recorded
in ``config.pruned_channels`` ({module name: its sizes}). A model built from that config gets those shapes
(:func:`reshape_recorded_channels`) before its weights load: :func:`hfcompress.modeling.load_model` does it, plain
``from_pretrained`` does not (it stops at the size mismatch). This module needs no torch-pruning, so loading a
pruned model does not either.
"""

from __future__ import annotations

from torch import nn

from ...errors import ModelError
from ...targets import replace_module

CONFIG_FIELD = "pruned_channels"


def recorded_channels(config) -> dict[str, dict[str, int]]:
    """The layer sizes ``config.pruned_channels`` records ({} when the model was not filter-pruned)."""
    return dict(getattr(config, CONFIG_FIELD, None) or {})


def layer_sizes(module: nn.Module) -> dict[str, int]:
    """What a layer's shape depends on: channels (and groups) of a Conv2d, features of a BatchNorm2d or Linear."""
    if isinstance(module, nn.Conv2d):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.BatchNorm2d):
        return {"num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    raise ModelError(f"filter pruning cannot record the shape of a {type(module).__name__}: only Conv2d, BatchNorm2d and Linear layers")


def record_channels(model, names) -> None:
    """Record the current sizes of the layers ``names``: in the model's own config fields where it has them
    (``record_pruned_widths``), the rest in ``config.pruned_channels`` (kept across repeated pruning)."""
    record_widths = getattr(model, "record_pruned_widths", None)
    sized_by_config = set(record_widths()) if record_widths is not None else set()
    recorded = recorded_channels(model.config)
    recorded.update({name: layer_sizes(model.get_submodule(name)) for name in names})
    recorded = {name: sizes for name, sizes in sorted(recorded.items()) if name not in sized_by_config}
    if recorded:
        setattr(model.config, CONFIG_FIELD, recorded)
    elif hasattr(model.config, CONFIG_FIELD):
        delattr(model.config, CONFIG_FIELD)


def _resized(module: nn.Module, sizes: dict[str, int]) -> nn.Module:
    """An empty layer like ``module`` with ``sizes``, on its device and in its dtype (the weights load into it next)."""
    like = {"device": module.weight.device, "dtype": module.weight.dtype}
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(sizes["in_channels"], sizes["out_channels"], module.kernel_size, module.stride, module.padding, module.dilation,
                         sizes["groups"], module.bias is not None, module.padding_mode, **like)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(sizes["num_features"], module.eps, module.momentum, module.affine, module.track_running_stats, **like)
    return nn.Linear(sizes["in_features"], sizes["out_features"], module.bias is not None, **like)


def reshape_recorded_channels(model) -> None:
    """Give a model just built from its config the layer sizes ``config.pruned_channels`` records."""
    for name, sizes in recorded_channels(model.config).items():
        try:
            module = model.get_submodule(name)
            if layer_sizes(module).keys() != sizes.keys():
                raise KeyError(name)
        except (AttributeError, KeyError):
            raise ModelError(
                f"config.pruned_channels records sizes {sizes} for layer '{name}', which {type(model).__name__} does not have: "
                "load the model with the architecture it was pruned from, or prune and save it again"
            ) from None
        replace_module(model, name, _resized(module, sizes))
