"""Operator extraction from PyTorch models (see :mod:`ess.operators.base`)."""

from .base import Extractor, OperatorSet, find_extractor, register, registered

__all__ = ["Extractor", "OperatorSet", "find_extractor", "register", "registered"]
from . import torch_nn  # noqa: E402,F401  (registers the torch.nn extractors)
