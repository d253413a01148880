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
    """Base class of every error raised by ess.

    Examples
    --------
    >>> import numpy as np, ess
    >>> try:
    ...     ess.effective_state_size(np.ones(3))
    ... except ess.EssError as e:
    ...     print(type(e).__name__, "is an EssError:", isinstance(e, ess.EssError))
    ShapeError is an EssError: True
    """


class ShapeError(EssError, ValueError):
    """Wrong number of dimensions, mismatched extents or an empty input.

    Examples
    --------
    >>> import numpy as np, ess
    >>> ess.effective_state_size(np.ones(3))
    Traceback (most recent call last):
        ...
    ess.errors.ShapeError: T: needs at least 2 dimensions (..., L, L), got shape [3]
    """


class NonFiniteError(EssError, ValueError):
    """NaN or infinity where finite numbers are required.

    Examples
    --------
    >>> import numpy as np, ess
    >>> T = np.tril(np.ones((4, 4)))
    >>> T[2, 0] = np.nan
    >>> ess.effective_state_size(T)
    Traceback (most recent call last):
        ...
    ess.errors.NonFiniteError: T contains a non-finite value (NaN or inf) at flat index 8
    """


class InvalidArgumentError(EssError, ValueError):
    """A value outside its domain (negative tolerance, unknown method, ...).

    Examples
    --------
    >>> import numpy as np, ess
    >>> ess.effective_state_size(np.tril(np.ones((4, 4))), method="median")
    Traceback (most recent call last):
        ...
    ess.errors.InvalidArgumentError: method: expected one of 'tolerance', 'entropy', 'both', got 'median'
    """


class OutOfRangeError(EssError, ValueError, IndexError):
    """An index, id or position outside its valid range, or an unsorted index list.

    Examples
    --------
    >>> import numpy as np, ess
    >>> ess.effective_state_size(np.tril(np.ones((4, 4))), positions=[1, 9])
    Traceback (most recent call last):
        ...
    ess.errors.OutOfRangeError: positions: positions[1] = 9 is outside [0, 4) for sequence length L = 4
    """


class NotStochasticError(EssError, ValueError):
    """A transition matrix with negative entries or rows that do not sum to one.

    Examples
    --------
    >>> import numpy as np, ess
    >>> ess.markov.stationary_distribution(np.array([[0.5, 0.4], [0.0, 1.0]]))
    Traceback (most recent call last):
        ...
    ess.errors.NotStochasticError: P: row 0 sums to 0.9... (must be 1 within 1e-9; renormalise the rows)
    """


class TooLargeError(EssError, ValueError):
    """The request would need more memory than allowed.

    Examples
    --------
    >>> import ess
    >>> ess.markov.metastable_chain(10**4, 10**4, sparse=True)
    Traceback (most recent call last):
        ...
    ess.errors.TooLargeError: n_clusters: ...
    """


class NumericalError(EssError, ArithmeticError):
    """A numerical routine failed (no convergence, breakdown).

    Examples
    --------
    >>> import numpy as np, ess
    >>> h = np.random.default_rng(0).standard_normal(64)   # a long kernel: high-rank Hankel blocks
    >>> ess.structured.conv_ess(h, 64, path="fast", max_rank=2)
    Traceback (most recent call last):
        ...
    ess.errors.NumericalError: conv_ess: the fast path reached rank ... use path='exact' or a larger max_rank
    """


class DTypeError(EssError, TypeError):
    """An array of an unsupported dtype (integer, complex, object, ...).

    Examples
    --------
    >>> import numpy as np, ess
    >>> ess.effective_state_size(np.tril(np.ones((4, 4), dtype=complex)))
    Traceback (most recent call last):
        ...
    ess.errors.DTypeError: T: expected float or integer or unsigned integer or bool values, got dtype complex128
    """
