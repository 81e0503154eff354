"""Truncated-SVD factorisation of a model's Linear (and GPT-2 Conv1D) layers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..artifacts import FACTORIZATION_FILE, CompressionSummary, set_entries, write_method_report
from ..targets import select_modules
from ..utils.disk import check_free_space, model_bytes
from ..utils.io import atomic_output_dir, check_output_dir
from .config import LowRankConfig
from .modeling import FactorizedConfig, LowRankLinear, dense_shape, install_low_rank, register_factorized_auto_classes


def target_layers(model: nn.Module, config: LowRankConfig) -> list[str]:
    """Names of the dense layers ``config`` selects, in module order."""
    # the factors of an already factorised layer are not candidates again
    inside = {f"{n}.{child}" for n, m in model.named_modules() if isinstance(m, LowRankLinear) for child in ("down", "up")}
    return list(select_modules(model, config.target_modules, config.exclude_modules, ignore=inside.__contains__))


def select_rank(singular_values: torch.Tensor, in_features: int, out_features: int, config: LowRankConfig) -> int:
    """The rank for one layer: by retained energy or by target compression, floored and rounded up."""
    full = min(in_features, out_features)
    if config.energy is not None:
        energy = singular_values.double().pow(2)
        cumulative = energy.cumsum(0) / energy.sum().clamp_min(1e-30)
        # the smallest r with cumulative[r - 1] >= energy; the tolerance absorbs float round-off at energy=1
        rank = int(torch.searchsorted(cumulative, torch.tensor(config.energy - 1e-12, dtype=cumulative.dtype)).item()) + 1
    else:
        rank = int(config.compression * in_features * out_features / (in_features + out_features))
    rank = max(rank, config.min_rank)
    rank = math.ceil(rank / config.rank_multiple) * config.rank_multiple
    return min(rank, full)


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features): nn.Linear stores it so, Conv1D transposed."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def low_rank_from_dense(module: nn.Module, rank: int, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> LowRankLinear:
    """``LowRankLinear`` holding ``U_r sqrt(S_r)`` and ``sqrt(S_r) V_r^T``; the split keeps both factors on one scale for fine-tuning."""
    in_features, out_features, has_bias = dense_shape(module)
    weight = module.weight
    layer = LowRankLinear(in_features, out_features, rank, has_bias).to(device=weight.device, dtype=weight.dtype)
    root = s[:rank].sqrt()
    with torch.no_grad():
        layer.up.weight.copy_(u[:, :rank] * root)
        layer.down.weight.copy_(root[:, None] * vh[:rank])
        if has_bias:
            layer.up.bias.copy_(module.bias)
    return layer


def factorize(model: PreTrainedModel, config: LowRankConfig) -> dict:
    """Replace the selected layers of ``model`` (in place) by truncated-SVD factors; return the report.

    A layer whose two factors would hold at least as many parameters as its dense weight stays dense.
    ``model.config`` becomes a :class:`FactorizedConfig`, so ``save_pretrained`` writes a checkpoint
    that the Auto classes reload as this factorised model (after ``import hfcompress``).
    """
    register_factorized_auto_classes()
    names = target_layers(model, config)
    params_before = model.num_parameters()
    ranks, layers = {}, {}
    for name in tqdm(names, desc="Factorising", leave=False):
        dense = model.get_submodule(name)
        in_features, out_features, _ = dense_shape(dense)
        weight = _weight_out_in(dense).detach().float()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        rank = select_rank(s, in_features, out_features, config)
        energy = s.double().pow(2)
        retained = float(energy[:rank].sum() / energy.sum().clamp_min(1e-30))
        entry = {"shape": [out_features, in_features], "rank": rank, "retained_energy": round(retained, 6)}
        if rank * (in_features + out_features) >= in_features * out_features:
            entry.update(rank=None, skipped=f"rank {rank} would not save parameters (full rank {min(in_features, out_features)})")
        else:
            install_low_rank(model, name, low_rank_from_dense(dense, rank, u.to(dense.weight.dtype), s.to(dense.weight.dtype), vh.to(dense.weight.dtype)))
            ranks[name] = rank
        layers[name] = entry
    model.config = FactorizedConfig.from_base(model.config, ranks)
    params_after = model.num_parameters()
    return {
        "method": "truncated-svd",
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "num_parameters_before": params_before,
        "num_parameters_after": params_after,
        "factorized_layers": len(ranks),
        "ranks": ranks,
        "layers": layers,
    }


def summarize_factorization(report: dict) -> CompressionSummary:
    """The compression summary of a ``factorization.json``."""
    return CompressionSummary(
        method=str(report.get("method")), title="Low-rank factorization", applied="low-rank factorized",
        summary="Linear layers replaced by two thinner ones from a truncated SVD of their weights (W ≈ up @ down).",
        details_file=FACTORIZATION_FILE, settings=set_entries(report.get("config") or {}),
        results=set_entries(report, ("num_parameters_before", "num_parameters_after", "factorized_layers")), tables=[{"columns": ["layer", "rank"], "rows": report["ranks"]}] if report.get("ranks") else [], tags=["low-rank"],
    )


def save_factorized(model: PreTrainedModel, output_dir: str | Path, report: dict, tokenizer=None, overwrite: bool = False) -> Path:
    """Write the factorised model, its tokenizer and ``factorization.json`` with its summary atomically."""
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_method_report(tmp, report, summarize_factorization(report))
    return Path(output_dir)


def factorize_checkpoint(
    model_path: str,
    output_dir: str | Path,
    config: LowRankConfig,
    task: Optional[str] = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Load ``model_path`` (directory or Hub id), factorise it and save it with its tokenizer to ``output_dir``."""
    from ..modeling import load_checkpoint

    check_output_dir(output_dir, overwrite)
    check_free_space(output_dir, model_bytes(model_path), f"factorising {model_path}")
    register_factorized_auto_classes()
    model, tokenizer, _ = load_checkpoint(model_path, task, trust_remote_code)
    report = factorize(model, config)
    report["source"] = str(model_path)
    save_factorized(model, output_dir, report, tokenizer, overwrite=overwrite)
    return report
