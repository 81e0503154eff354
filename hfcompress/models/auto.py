"""The one place hfcompress's model families are registered with transformers' Auto classes."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification, CifarResNetModel


def register_auto_classes() -> None:
    """Make the Auto classes build these families from their configs (idempotent)."""
    AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
    AutoModel.register(CifarResNetConfig, CifarResNetModel, exist_ok=True)
    AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)
