"""The CIFAR ResNets (ResNet-20/32/44/56/110 with option-A shortcuts) as a transformers model family."""

from .configuration import DEPTHS, CifarResNetConfig
from .modeling import CifarResNetForImageClassification, CifarResNetModel, CifarResNetPreTrainedModel

__all__ = ["DEPTHS", "CifarResNetConfig", "CifarResNetForImageClassification", "CifarResNetModel", "CifarResNetPreTrainedModel"]
