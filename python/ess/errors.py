"""Exceptions raised by ess.

Every error derives from :class:`EssError` and, where one fits, from the built-in
exception a Python user would expect (``ValueError`` for bad values and shapes,
``TypeError`` for wrong dtypes), so ``except ValueError`` keeps working.
Each variant of the Rust core's error enum maps to exactly one class here.
"""

from __future__ import annotations

__all__ = [
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


class EssError(Exception):
    """Base class of every error raised by ess."""


class ShapeError(EssError, ValueError):
    """Wrong number of dimensions, mismatched extents or an empty input."""


class NonFiniteError(EssError, ValueError):
    """NaN or infinity where finite numbers are required."""


class InvalidArgumentError(EssError, ValueError):
    """A value outside its domain (negative tolerance, unknown method, ...)."""


class OutOfRangeError(EssError, ValueError, IndexError):
    """An index, id or position outside its valid range, or an unsorted index list."""


class NotStochasticError(EssError, ValueError):
    """A transition matrix with negative entries or rows that do not sum to one."""


class TooLargeError(EssError, ValueError):
    """The request would need more memory than allowed."""


class NumericalError(EssError, ArithmeticError):
    """A numerical routine failed (no convergence, breakdown)."""


class DTypeError(EssError, TypeError):
    """An array of an unsupported dtype (integer, complex, object, ...)."""
