"""hfcompress: distil, prune and quantize fine-tuned Transformers models, then ship them.

The public names below are imported on first use (PEP 562), so ``import hfcompress`` and the
``hfcompress`` command line start without loading torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .utils.imports import lazy_exports, when_imported

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "ConfigError": "errors",
    "DataError": "errors",
    "HFCompressError": "errors",
    "ModelError": "errors",
    "DistillationTrainer": "distillation",
    "DistillationTrainingArguments": "distillation",
    "build_student_from_teacher": "distillation",
    "MagnitudePruningCallback": "pruning",
    "MagnitudePruningConfig": "pruning",
    "StructuredPruningCallback": "pruning",
    "StructuredPruningConfig": "pruning",
    "FilterPruningCallback": "pruning",
    "FilterPruningConfig": "pruning",
    "prune_filters": "pruning",
    "LowRankConfig": "lowrank",
    "factorize": "lowrank",
    "factorize_checkpoint": "lowrank",
    "load_factorized": "lowrank",
    "VocabTrimConfig": "vocab",
    "trim_checkpoint": "vocab",
    "trim_vocabulary": "vocab",
    "BnbConfig": "quantization",
    "PTQConfig": "quantization",
    "QATCallback": "quantization",
    "QATConfig": "quantization",
    "quantize_bnb": "quantization",
    "quantize_onnx": "quantization",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def _register_model_types() -> None:
    """Factorised checkpoints (see hfcompress.lowrank) and hfcompress's model families (hfcompress.models) load
    through transformers' Auto classes after ``import hfcompress``."""
    from .lowrank.modeling import register_factorized_auto_classes

    register_factorized_auto_classes()
    # the package registers its families once its modules are loaded; a plain import (not ``from ... import``) also
    # holds when transformers was first imported by hfcompress.models itself, which then finishes and registers
    importlib.import_module(f"{__name__}.models")


# done when transformers is imported (now, if it already is): importing hfcompress alone loads neither transformers nor torch
when_imported("transformers", _register_model_types)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
    from .errors import ConfigError, DataError, HFCompressError, ModelError
    from .lowrank import LowRankConfig, factorize, factorize_checkpoint, load_factorized
    from .pruning import (
        FilterPruningCallback,
        FilterPruningConfig,
        MagnitudePruningCallback,
        MagnitudePruningConfig,
        StructuredPruningCallback,
        StructuredPruningConfig,
        prune_filters,
    )
    from .quantization import BnbConfig, PTQConfig, QATCallback, QATConfig, quantize_bnb, quantize_onnx
    from .vocab import VocabTrimConfig, trim_checkpoint, trim_vocabulary
