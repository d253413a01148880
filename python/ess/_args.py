"""Argument checks at the public boundary, one place for every module.

Every function raises a class of :mod:`ess.errors` naming the argument: ``DTypeError`` (a
``TypeError``) for the wrong kind of value, ``ShapeError``/``InvalidArgumentError``/
``OutOfRangeError`` (``ValueError``) for wrong shapes and values. Nothing is silently coerced
in a way that changes the value: a float is never truncated to an integer, a masked array's
mask is never dropped.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, Optional, Sequence, overload

import numpy as np

from .errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError

__all__ = ["array", "integer", "real", "boolean", "choice", "gate"]


def _available_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gate(arg: str, nbytes: float, what: str) -> None:
    """Refuse, before numpy allocates it, a request of ``nbytes`` that cannot fit in the memory
    available now: :class:`TooLargeError` naming ``arg`` (the Python twin of the core's gate)."""
    avail = _available_bytes()
    if avail is not None and nbytes > avail:
        from . import _heap
        from .errors import TooLargeError

        # free memory kept in the C heap (ess.analyze keeps it while it runs) is not in MemAvailable
        if _heap.release():
            avail = _available_bytes() or avail
        if nbytes <= avail:
            return

        raise TooLargeError(
            f"{arg}: {what} needs {nbytes / 2**30:.2f} GiB but {avail / 2**30:.2f} GiB of memory is available"
        )


def _from_torch(x: Any, arg: str) -> Any:
    """A torch tensor as a numpy array: detached, on the host, dense; half types widened."""
    import torch

    if x.is_sparse or x.layout != torch.strided:
        raise InvalidArgumentError(
            f"{arg}: sparse torch tensors are not accepted (layout {x.layout}); pass x.to_dense()"
        )
    if x.is_complex():
        raise DTypeError(f"{arg}: complex tensors are not supported (dtype {x.dtype})")
    x = x.detach()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.to(torch.float32)  # numpy has no bfloat16; float32 holds both exactly
    return x.cpu().numpy()


def array(x: Any, arg: str, *, kinds: str = "fiu") -> np.ndarray:
    """``x`` as a numpy array whose dtype kind is one of ``kinds`` (``f`` float, ``i``/``u``
    integer, ``b`` bool). Accepts numpy arrays, nested sequences and torch tensors (any
    device, ``requires_grad`` or not); refuses masked arrays, ragged sequences and objects."""
    if isinstance(x, np.ma.MaskedArray):
        raise InvalidArgumentError(
            f"{arg}: masked arrays are not supported (the mask would be ignored); pass x.filled(value) "
            "or select the unmasked entries"
        )
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = _from_torch(x, arg)
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise ShapeError(f"{arg}: not a rectangular array of numbers ({e})") from None
    if x.dtype == object and x.size and all(isinstance(v, numbers.Integral) for v in x.flat):
        big = max((int(v) for v in x.flat), key=abs)
        if not -(2**63) <= big < 2**64:  # numpy left Python ints beyond 64 bits as objects
            raise OutOfRangeError(f"{arg}: integer {big} does not fit in 64 bits")
    if x.dtype.kind not in kinds:
        want = {"f": "float", "i": "integer", "u": "unsigned integer", "b": "bool"}
        names = " or ".join(want[k] for k in kinds if k in want)
        raise DTypeError(f"{arg}: expected {names} values, got dtype {x.dtype}")
    # A view (broadcast, strided, other dtype) is copied to a contiguous float64 array by the
    # callers: refuse a copy that cannot fit before numpy tries it.
    need = x.size * 8
    if need > _COPY_CHECK_BYTES and (not x.flags.c_contiguous or x.dtype != np.float64):
        gate(arg, need, f"a contiguous float64 copy of shape {x.shape}")
    return x


# Copies below this size are not checked (reading /proc/meminfo costs more than they do).
_COPY_CHECK_BYTES = 1 << 26


def integer(x: Any, arg: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """A Python ``int`` in ``[lo, hi]`` (bounds inclusive, ``None`` = unbounded). Floats are
    refused even when integral, so ``1.5`` is never truncated and ``2.0`` never guessed."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)):
        raise DTypeError(f"{arg}: must be an integer, got {type(x).__name__} {x!r}")
    v = int(x)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise OutOfRangeError(f"{arg}: {v} is outside [{lo_s}, {hi_s}]")
    return v


@overload
def real(x: Any, arg: str, *, lo: Optional[float] = ..., allow_none: Literal[False] = ...) -> float: ...


@overload
def real(x: Any, arg: str, *, lo: Optional[float] = ..., allow_none: bool = ...) -> Optional[float]: ...


def real(x: Any, arg: str, *, lo: Optional[float] = None, allow_none: bool = False) -> Optional[float]:
    """A finite Python ``float`` (``>= lo`` when given); strings and other types are refused."""
    if x is None and allow_none:
        return None
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        raise DTypeError(f"{arg}: must be a real number, got {type(x).__name__} {x!r}")
    v = float(x)
    if not np.isfinite(v):
        raise InvalidArgumentError(f"{arg}: must be finite, got {v}")
    if lo is not None and v < lo:
        raise InvalidArgumentError(f"{arg}: must be >= {lo}, got {v}")
    return v


def boolean(x: Any, arg: str) -> bool:
    """A ``bool`` (Python or numpy); ``0``/``1``, strings and ``None`` are refused."""
    if not isinstance(x, (bool, np.bool_)):
        raise DTypeError(f"{arg}: must be True or False, got {type(x).__name__} {x!r}")
    return bool(x)


def choice(x: Any, arg: str, options: Sequence[str]) -> str:
    """One of ``options`` (exact string)."""
    if not isinstance(x, str) or x not in options:
        raise InvalidArgumentError(f"{arg}: expected one of {', '.join(map(repr, options))}, got {x!r}")
    return x
