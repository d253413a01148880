"""Operator extraction from PyTorch models (see :mod:`ess.operators.base`)."""

from .base import Extractor, OperatorSet, find_extractor, register, registered

__all__ = ["Extractor", "OperatorSet", "find_extractor", "register", "registered"]
from . import torch_nn  # noqa: E402,F401  (registers the torch.nn extractors)
from . import reference  # noqa: E402,F401  (registers the extractors of the built-in model's reference layers)
from . import hf  # noqa: E402,F401  (registers the transformers Mamba extractors; imports no transformers)
from . import hf_attention  # noqa: E402,F401  (transformers attention, any family; imports no transformers)
from . import hf_recurrent  # noqa: E402,F401  (LFM2 gated conv, RG-LRU, gated delta rule; imports no transformers)
