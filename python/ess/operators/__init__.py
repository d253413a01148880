"""Operator extraction from PyTorch models (see :mod:`ess.operators.base`).

Importing the package registers the built-in extractors: ``torch.nn`` layers, the layers of the built-in
models and the Hugging Face families (without importing transformers). :func:`find_extractor` picks the
extractor of a module; :func:`register` adds one for a new layer type (:class:`Extractor` shows a complete
one).

Examples
--------
>>> import torch
>>> from ess.operators import find_extractor
>>> ex = find_extractor(torch.nn.MultiheadAttention(8, 2), "attn")
>>> ex.kind, ex.name
('softmax_attention', 'attn')
"""

from .base import Extractor, OperatorSet, find_extractor, register, registered

__all__ = ["Extractor", "OperatorSet", "find_extractor", "register", "registered"]
from . import torch_nn  # noqa: E402,F401  (registers the torch.nn extractors)
from . import reference  # noqa: E402,F401  (registers the extractors of the built-in model's reference layers)
from . import hf  # noqa: E402,F401  (registers the transformers Mamba extractors; imports no transformers)
from . import hf_attention  # noqa: E402,F401  (transformers attention, any family; imports no transformers)
from . import hf_recurrent  # noqa: E402,F401  (LFM2 gated conv, RG-LRU, gated delta rule; imports no transformers)
