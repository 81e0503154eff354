"""Model families hfcompress adds to transformers, registered with its Auto classes when this package is imported.

``import hfcompress`` imports this package as soon as transformers is imported (``_register_model_types``
there), so every model loaded through hfcompress, and any ``AutoModel*.from_pretrained`` after
``import hfcompress``, knows these model types. A new family is a sub-package here and its lines in ``auto.py``.
"""

from .auto import register_auto_classes
from .cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification, CifarResNetModel

register_auto_classes()

__all__ = ["CifarResNetConfig", "CifarResNetForImageClassification", "CifarResNetModel", "register_auto_classes"]
