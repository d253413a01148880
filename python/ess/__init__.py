"""ess: how sequence models use their memory and what they retrieve.

The numerical kernels live in a Rust core (``ess._core``); this package is the public API.

* :func:`effective_state_size`: ESS curves of dense causal operators.
* :func:`analyze`: ESS of every sequence-mixing layer of a PyTorch model (an :class:`Report`).
"""

from __future__ import annotations

from . import errors
from ._core import __version__
from . import examples
from ._dense import EssCurves, effective_state_size
from .analyze import analyze
from .report import Report
from .errors import (
    DTypeError,
    EssError,
    InvalidArgumentError,
    NonFiniteError,
    NotStochasticError,
    NumericalError,
    OutOfRangeError,
    ShapeError,
    TooLargeError,
)

__all__ = [
    "__version__",
    "effective_state_size",
    "EssCurves",
    "analyze",
    "Report",
    "errors",
    "EssError",
    "ShapeError",
    "NonFiniteError",
    "InvalidArgumentError",
    "OutOfRangeError",
    "NotStochasticError",
    "TooLargeError",
    "NumericalError",
    "DTypeError",
]
