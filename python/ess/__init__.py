"""ess: how sequence models use their memory and what they retrieve.

The numerical kernels live in a Rust core (``ess._core``); this package is the public API.

* :func:`effective_state_size`: ESS curves of dense causal operators (:func:`split_points`: subsets of splits).
* :mod:`ess.structured`: ESS straight from state-space / linear-attention / convolution factors.
* :mod:`ess.markov`: Markov chains (hitting times, committors, GTH) and the CCMC.
* :mod:`ess.graph`: strongly connected components and token-priority graphs.
* :func:`analyze`: ESS of every sequence-mixing layer of a PyTorch model (an :class:`Report`).
"""

from __future__ import annotations

from . import errors
from ._core import __version__
from . import examples
from . import structured
from . import markov
from . import graph
from ._dense import EssCurves, effective_state_size, split_points
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
    "split_points",
    "analyze",
    "Report",
    "errors",
    "structured",
    "markov",
    "graph",
    "examples",
    "automaton",
    "sweep",
    "compare",
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


def __getattr__(name: str):  # lazy submodules: ess.automaton imports torch on import
    if name in ("automaton", "sweep", "compare", "differentiable", "reproduce"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from .distill import recommend_state_size  # noqa: E402

__all__ += ["recommend_state_size", "differentiable", "reproduce"]
