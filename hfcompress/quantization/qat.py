"""Quantization-aware training: fake quantization of Linear layers with straight-through gradients.

Why our own fake-quant modules rather than torchao's QAT: the model that ships is ONNX Runtime int8,
and torchao 0.18's ``IntxFakeQuantizeConfig`` cannot express it. Its activation
fake quantization is per token only (ORT quantizes each activation tensor with one scale), and its
symmetric int8 grid is [-128, 127] with scale absmax/127.5 where ORT uses [-127, 127] with absmax/127
(and uint8 with zero point 128 for the avx2 preset). The modules below reproduce ORT's formulas
(``onnxruntime.quantization.quant_utils.compute_scale_zp`` for weights, ``DynamicQuantizeLinear`` or
calibrated QDQ ranges for activations) for the scheme in :func:`~hfcompress.quantization.config.ort_scheme`.

A targeted ``nn.Linear`` is swapped for :class:`FakeQuantLinear`, a subclass with the same parameters
(the optimizer and DDP keep working on the same tensors) and only non-persistent buffers, so every
checkpoint written while QAT is on is a plain Transformers checkpoint. A targeted ``nn.Conv2d`` is
swapped for :class:`FakeQuantConv2d` the same way; when a BatchNorm2d follows it, the BatchNorm is
folded into the conv for training (Jacob et al. 2018, as PyTorch's ``ConvBn2d``): the weights that are
fake-quantized are the folded ones, ``W * gamma / sqrt(running_var + eps)``, which is what ships, while the
batch statistics still normalise the output until ``freeze_bn_step``, after which the running statistics
are frozen and the network trains in exactly its folded inference form. At the end of training the
BatchNorm scale is folded into the conv weights for good (:func:`fold_qat`), so the export's Conv has them. At the end of training the
modules are swapped back (:func:`fold_qat`); the observed activation ranges are written beside the
model as ``qat_ranges.safetensors`` with a ``quantization.json`` describing the scheme.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.utils import logging

from ..distillation.trainer import _PROJECTIONS_ATTR
from ..artifacts import QAT_RANGES_FILE as RANGES_FILE
from ..artifacts import QUANTIZATION_FILE
from ..errors import ConfigError
from ..targets import replace_module, select_modules
from .config import IntRange, OrtScheme, QATConfig, write_quantization_report

logger = logging.get_logger(__name__)


def weight_qparams(weight: torch.Tensor, grid: IntRange, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of a symmetric weight quantization, per output channel (row of a Linear weight) or per tensor."""
    w = weight.detach()
    absmax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    scale = 2 * absmax.float() / (grid.qmax - grid.qmin)
    # ORT replaces a zero range by scale 1 so that an all-zero channel (a pruned row) stays exactly zero
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    zero_point = torch.full_like(scale, grid.symmetric_zero_point)
    return scale, zero_point


def activation_qparams(lo: torch.Tensor, hi: torch.Tensor, grid: IntRange) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range [lo, hi], widened to contain 0, as ORT computes them."""
    lo, hi = torch.clamp(lo.float(), max=0.0), torch.clamp(hi.float(), min=0.0)
    if grid.symmetric:
        absmax = torch.maximum(-lo, hi)
        lo, hi = -absmax, absmax
    scale = (hi - lo) / (grid.qmax - grid.qmin)
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    if grid.symmetric:
        zero_point = torch.full_like(scale, grid.symmetric_zero_point)
    else:
        zero_point = torch.clamp(torch.round(grid.qmin - lo / scale), grid.qmin, grid.qmax)
    return scale, zero_point


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, grid: IntRange) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient inside the representable range and zero outside.

    ``scale``/``zero_point`` broadcast against ``x`` (shape (out, 1) for per-channel weights).
    """
    scale, zero_point = scale.detach(), zero_point.detach()
    q = torch.clamp(torch.round(x / scale) + zero_point, grid.qmin, grid.qmax)
    dequantized = (q - zero_point) * scale
    lo, hi = (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale
    clipped = torch.minimum(torch.maximum(x, lo), hi)  # gradient 1 inside the range, 0 where x saturates
    return clipped + (dequantized - clipped).detach()


class _FakeQuantLayer:
    """Mixin of the fake-quantized layers: the observed range of the input and the fake quantization of input and weight.

    The buffers (observed input range) are not persistent, so ``state_dict()`` is that of the plain layer.
    """

    def _init_fake_quant(self, layer: nn.Module, scheme: OrtScheme, momentum: float) -> None:
        self.weight, self.bias = layer.weight, layer.bias
        self.scheme, self.momentum = scheme, momentum
        self.observe = True
        self.train(layer.training)  # a model prepared in eval mode must not observe (move its ranges) at inference
        device = layer.weight.device
        self.register_buffer("input_min", torch.zeros((), device=device), persistent=False)
        self.register_buffer("input_max", torch.zeros((), device=device), persistent=False)
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=device), persistent=False)

    def fake_quantize_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` on its int8 grid, one scale per output channel (dim 0) or per tensor."""
        scale, zero_point = weight_qparams(weight.flatten(1), self.scheme.weights, self.scheme.per_channel)
        shape = (-1 if self.scheme.per_channel else 1,) + (1,) * (weight.dim() - 1)
        return fake_quantize(weight, scale.reshape(shape), zero_point.reshape(shape), self.scheme.weights)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().amin().float(), x.detach().amax().float()
        if not self.observed:
            self.input_min.copy_(lo)
            self.input_max.copy_(hi)
            self.observed.fill_(True)
        else:  # moving average, as ORT's MinMax calibrator with moving_average=True
            self.input_min.lerp_(lo, self.momentum)
            self.input_max.lerp_(hi, self.momentum)

    def fake_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observe:
            self._observe(x)
        grid = self.scheme.activations
        if self.scheme.dynamic_activations:  # DynamicQuantizeLinear: one range over the whole tensor, every call
            scale, zero_point = activation_qparams(x.detach().amin(), x.detach().amax(), grid)
        else:
            if not self.observed:
                self._observe(x)
            scale, zero_point = activation_qparams(self.input_min, self.input_max, grid)
        return fake_quantize(x, scale, zero_point, grid)


class FakeQuantLinear(_FakeQuantLayer, nn.Linear):
    """``nn.Linear`` whose weight and input are fake-quantized as ONNX Runtime's MatMulInteger/QDQ MatMul sees them.

    It shares the original module's parameters; ``state_dict()`` is that of a plain ``nn.Linear``.
    """

    def __init__(self, linear: nn.Linear, scheme: OrtScheme, momentum: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_fake_quant(linear, scheme, momentum)

    def shipped_weight(self) -> torch.Tensor:
        return self.weight

    def quantized_weight(self) -> torch.Tensor:
        return self.fake_quantize_weight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.fake_quantize_input(x), self.quantized_weight(), self.bias)


class BatchNormInConv(nn.BatchNorm2d):
    """A BatchNorm2d whose normalisation its :class:`FakeQuantConv2d` computes: it passes its input through.

    It shares the original module's parameters and buffers, so ``state_dict()`` is the BatchNorm's.
    """

    def __init__(self, batch_norm: nn.BatchNorm2d):
        nn.Module.__init__(self)
        for attribute in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(self, attribute, getattr(batch_norm, attribute))
        self.weight, self.bias = batch_norm.weight, batch_norm.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(batch_norm, name))
        self.train(batch_norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_CONV_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed", "output_padding",
                    "groups", "padding_mode", "_reversed_padding_repeated_twice")


class FakeQuantConv2d(_FakeQuantLayer, nn.Conv2d):
    """``nn.Conv2d`` whose input and (BatchNorm-folded) weight are fake-quantized as ONNX Runtime's QLinearConv sees them.

    With ``batch_norm`` (the :class:`BatchNormInConv` that replaced the BatchNorm after it), the weight
    that is quantized is scaled by ``gamma / sqrt(running_var + eps)``; in training, until ``bn_frozen``,
    the output is unscaled again and normalised with the batch statistics (which update the running
    ones); otherwise the running statistics give the folded bias. It shares the conv's parameters.
    """

    def __init__(self, conv: nn.Conv2d, scheme: OrtScheme, momentum: float, batch_norm: Optional[BatchNormInConv] = None):
        nn.Module.__init__(self)
        for attribute in _CONV_ATTRIBUTES:
            setattr(self, attribute, getattr(conv, attribute))
        self._init_fake_quant(conv, scheme, momentum)
        object.__setattr__(self, "batch_norm", batch_norm)  # a reference, not a submodule: it stays where the model has it
        self.bn_frozen = False

    def shipped_weight(self) -> torch.Tensor:
        """The weight the export's Conv will have: BatchNorm scale folded in."""
        return self.weight if self.batch_norm is None else self.weight * self.bn_scale().reshape(-1, 1, 1, 1)

    def bn_scale(self) -> torch.Tensor:
        bn = self.batch_norm
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fake_quantize_input(x)
        bn = self.batch_norm
        if bn is None:
            return self._conv_forward(x, self.fake_quantize_weight(self.weight), self.bias)
        scale = self.bn_scale()
        y = self._conv_forward(x, self.fake_quantize_weight(self.shipped_weight()), None)
        bias = self.bias if self.bias is not None else torch.zeros_like(scale)
        if self.training and not self.bn_frozen:
            # the BatchNorm's own training step on the conv's unscaled output: batch statistics normalise, running ones move
            y = y / torch.where(scale == 0, torch.ones_like(scale), scale).reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            return nn.functional.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)
        return y + ((bias - bn.running_mean) * scale + bn.bias).reshape(1, -1, 1, 1)

    @torch.no_grad()
    def fold(self) -> tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]:
        """A plain Conv2d with the BatchNorm scale folded into its weights, and a plain BatchNorm2d left as a bias only.

        The BatchNorm keeps its place (the checkpoint keeps its layout and reloads with ``from_pretrained``)
        with weight 1, mean 0 and variance ``1 - eps``; exporters fold it into the Conv as a bias.
        """
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, bias=self.bias is not None, device="meta")
        for attribute in _CONV_ATTRIBUTES:
            setattr(conv, attribute, getattr(self, attribute))
        conv.weight, conv.bias = self.weight, self.bias
        bn = self.batch_norm
        if bn is None:
            return conv, None
        scale = self.bn_scale()
        self.weight.mul_(scale.reshape(-1, 1, 1, 1))
        if self.bias is not None:
            self.bias.mul_(scale)
        bn.bias.sub_(bn.running_mean * scale)
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
        plain.weight, plain.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(plain, name, getattr(bn, name))
        plain.train(bn.training)
        return conv, plain


def qat_layers(model: nn.Module, config: QATConfig) -> list[str]:
    """Names of the Linear and Conv2d modules the config targets (every one unless target_modules says otherwise)."""
    # distillation-only projections are not part of the shipped model
    selected = select_modules(
        model, config.target_modules, config.exclude_modules, types=(nn.Linear, nn.Conv2d), ignore=lambda name: name.startswith(_PROJECTIONS_ATTR)
    )
    if config.scheme.dynamic_activations and any(isinstance(m, nn.Conv2d) for m in selected.values()):
        raise ConfigError(
            "QAT mode 'dynamic' targets Conv2d layers, but ONNX Runtime's dynamic int8 leaves Convs in fp32: set mode: static "
            "(and quantize the export with mode: static), or exclude the convs with exclude_modules"
        )
    return list(selected)


def batch_norms_after_convs(model: nn.Module) -> dict[str, str]:
    """Map each Conv2d that a BatchNorm2d directly follows to that BatchNorm's name.

    "Follows" is registration order: the BatchNorm is the next child of the same parent and normalises
    the conv's output channels (``conv, bn`` in a Sequential, ``convolution, normalization`` in
    transformers' ResNet and MobileNetV2 blocks, ``conv1, bn1`` in torchvision-style ResNets).
    """
    pairs = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
                    and bn.affine and bn.track_running_stats):
                prefix = f"{parent_name}." if parent_name else ""
                pairs[prefix + conv_name] = prefix + bn_name
    return pairs


def prepare_qat(model: nn.Module, config: QATConfig) -> list[str]:
    """Swap the targeted layers for :class:`FakeQuantLinear` / :class:`FakeQuantConv2d` in place (BatchNorms folded into their convs); returns their names."""
    names = qat_layers(model, config)
    batch_norms = batch_norms_after_convs(model) if config.fold_batch_norm else {}
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Conv2d):
            bn = None
            if name in batch_norms:
                bn = BatchNormInConv(model.get_submodule(batch_norms[name]))
                replace_module(model, batch_norms[name], bn)
            replace_module(model, name, FakeQuantConv2d(layer, config.scheme, config.range_momentum, bn))
        else:
            replace_module(model, name, FakeQuantLinear(layer, config.scheme, config.range_momentum))
    return names


def fake_quant_modules(model: nn.Module) -> dict[str, _FakeQuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _FakeQuantLayer)}


def qat_ranges(model: nn.Module) -> dict[str, torch.Tensor]:
    """Observed input ranges and current weight scales of every fake-quantized layer, keyed ``<module>.<what>``."""
    tensors = {}
    for name, m in fake_quant_modules(model).items():
        scale, zero_point = weight_qparams(m.shipped_weight().flatten(1), m.scheme.weights, m.scheme.per_channel)
        tensors[f"{name}.input_min"] = m.input_min.detach().cpu().reshape(1)
        tensors[f"{name}.input_max"] = m.input_max.detach().cpu().reshape(1)
        tensors[f"{name}.weight_scale"] = scale.cpu()
        tensors[f"{name}.weight_zero_point"] = zero_point.cpu()
    return tensors


def fold_qat(model: nn.Module) -> dict[str, torch.Tensor]:
    """Swap every fake-quant layer back for a plain one (same parameters; BatchNorm scales folded into the convs); returns the ranges it held."""
    ranges = qat_ranges(model)
    modules = dict(model.named_modules())
    for name, m in fake_quant_modules(model).items():
        if isinstance(m, FakeQuantConv2d):
            bn_name = next((n for n, module in modules.items() if module is m.batch_norm), None)
            conv, bn = m.fold()
            replace_module(model, name, conv)
            if bn is not None:
                replace_module(model, bn_name, bn)
        else:
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            linear.weight, linear.bias = m.weight, m.bias
            replace_module(model, name, linear)
    return ranges


def save_qat_ranges(directory: str | Path, ranges: dict[str, torch.Tensor], config: QATConfig, step: Optional[int] = None) -> None:
    """Write ``qat_ranges.safetensors``, ``quantization.json`` and its summary into a checkpoint directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{RANGES_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in ranges.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / RANGES_FILE)
    scheme = config.scheme
    write_quantization_report(
        directory,
        {
            "method": "qat",
            **scheme.describe(),
            "preset": config.preset,
            "mode": config.mode,
            "calibration": f"moving-average min/max of each Linear/Conv2d input during training (momentum {config.range_momentum})",
            "batch_norms_folded": config.fold_batch_norm,
            "freeze_bn_step": config.freeze_bn_step,
            "ranges_file": RANGES_FILE,
            "layers": sorted({k.rsplit(".", 1)[0] for k in ranges}),
            "start_step": config.start_step,
            "step": step,
        },
    )


def load_qat_ranges(directory: str | Path) -> Optional[dict[str, tuple[float, float]]]:
    """Observed input range (min, max) of each QAT layer saved beside a model, or None if it has none."""
    path = Path(directory) / RANGES_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    layers = {k[: -len(".input_min")] for k in tensors if k.endswith(".input_min")}
    return {name: (float(tensors[f"{name}.input_min"]), float(tensors[f"{name}.input_max"])) for name in layers}


def restore_qat_ranges(model: nn.Module, ranges: dict[str, tuple[float, float]]) -> int:
    """Give the fake-quant layers of a prepared model their saved input ranges (as observed); returns how many got one."""
    restored = 0
    for name, module in fake_quant_modules(model).items():
        if name in ranges:
            module.input_min.fill_(ranges[name][0])
            module.input_max.fill_(ranges[name][1])
            module.observed.fill_(True)
            restored += 1
    return restored


def read_quantization_json(directory: str | Path) -> Optional[dict]:
    path = Path(directory) / QUANTIZATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class QATCallback(TrainerCallback):
    """Turns on ONNX Runtime-matched fake quantization from ``config.start_step``; works with ``Trainer`` and ``DistillationTrainer``.

    Checkpoints stay plain Transformers checkpoints, each with ``qat_ranges.safetensors`` and
    ``quantization.json`` beside it; at the end of training the fake-quant modules are folded away so
    ``trainer.save_model`` writes a plain model. Call :meth:`write_artifacts` on the final directory.
    Pruning masks stay zero: a zero weight quantizes to exactly zero under a symmetric scheme.
    """

    def __init__(self, config: Optional[QATConfig] = None):
        self.config = config or QATConfig()
        self.model: Optional[nn.Module] = None
        self.ranges: dict[str, torch.Tensor] = {}
        self.step: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.model is not None and bool(fake_quant_modules(self.model))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ConfigError("QATCallback needs the trainer to pass the model to callbacks (transformers.Trainer does)")
        self.model = model
        qat_layers(model, self.config)  # fail before the first step when the patterns match nothing
        self._maybe_enable(state.global_step)
        if state.global_step > 0 and self.active:
            self._restore_ranges(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def _restore_ranges(self, checkpoint: Path) -> None:
        """On resume, the observed activation ranges come back from the checkpoint (static mode depends on them)."""
        ranges = load_qat_ranges(checkpoint)
        if ranges is None:
            logger.warning("QATCallback: %s has no %s; activation ranges are observed afresh", checkpoint, RANGES_FILE)
            return
        restore_qat_ranges(self.model, ranges)

    def on_step_begin(self, args, state, control, **kwargs):
        self._maybe_enable(state.global_step)
        if self.config.freeze_ranges_step is not None and state.global_step >= self.config.freeze_ranges_step:
            for m in fake_quant_modules(self.model).values():
                m.observe = False
        if self.config.freeze_bn_step is not None and state.global_step >= self.config.freeze_bn_step:
            for m in fake_quant_modules(self.model).values():
                m.bn_frozen = True

    def _maybe_enable(self, step: int) -> None:
        if step >= self.config.start_step and not self.active:
            prepare_qat(self.model, self.config)

    def on_save(self, args, state, control, **kwargs):
        if self.active and state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_qat_ranges(checkpoint, qat_ranges(self.model), self.config, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.active:
            self.ranges = fold_qat(self.model)
            self.step = state.global_step

    def write_artifacts(self, directory: str | Path) -> None:
        """Write the ranges learned by the finished run beside the final model (nothing if QAT never started)."""
        if self.ranges:
            save_qat_ranges(directory, self.ranges, self.config, self.step)
