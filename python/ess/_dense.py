"""Dense effective state size (the Python face of the Rust kernel)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _args, _core
from .errors import DTypeError, OutOfRangeError, ShapeError

__all__ = ["effective_state_size", "EssCurves"]


class EssCurves(NamedTuple):
    """Both ESS curves of one call (``method="both"``), each float64 ``(..., n_positions)``."""

    tolerance: npt.NDArray[np.float64]
    entropy: npt.NDArray[np.float64]


def _positions_list(positions: Optional[npt.ArrayLike]) -> Optional[list[int]]:
    if positions is None:
        return None
    p = _args.array(positions, "positions", kinds="iuf")
    if p.dtype.kind not in "iu" and not (p.size == 0 and p.dtype.kind == "f"):
        raise DTypeError(f"positions: must be integers, got dtype {p.dtype}")
    if p.ndim != 1:
        raise ShapeError(f"positions: must be one-dimensional, got shape {p.shape}")
    if p.dtype == np.uint64 and p.size and int(p.max()) > np.iinfo(np.int64).max:
        raise OutOfRangeError(f"positions: {int(p.max())} is beyond any sequence length")
    return [int(x) for x in p]


def effective_state_size(
    T: npt.ArrayLike,
    *,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Union[npt.NDArray[np.float64], EssCurves]:
    """Effective state size of causal sequence operators at every split point.

    For an ``L x L`` causal operator ``T`` (``y = T u``, row ``t`` is output ``y_t``) and a
    split ``1 <= t <= L-1``, the block ``H_t = T[t:, :t]`` maps the past inputs
    ``u_0..u_{t-1}`` to the future outputs ``y_t..y_{L-1}``; its rank is the smallest
    state a recurrence realising ``T`` must carry across the split. ``ess[..., 0] = 0``.

    Parameters
    ----------
    T : array (..., L, L) of float32 or float64
        Causal operators; leading dimensions are a batch computed in parallel. Only the
        strictly lower triangle enters any block: the diagonal and the upper triangle
        are ignored (never read by the algorithm, but they must still be finite).
        Non-contiguous arrays are copied once; other dtypes raise :class:`DTypeError`.
    method : {"tolerance", "entropy", "both"}
        ``"tolerance"``: number of singular values of ``H_t`` strictly above a threshold
        (below). ``"entropy"``: ``exp(-sum p_i ln p_i)`` with ``p_i = sigma_i / sum(sigma)``
        (effective rank on the singular values), 0 for a zero block. ``"both"``: an
        :class:`EssCurves` with both, from one decomposition per block.
    atol, rtol : float, optional
        Threshold of the tolerance-ESS, as in ``numpy.linalg.matrix_rank``: with neither,
        ``tau = max(L-t, t) * eps * sigma_max(H_t)`` (``eps`` of the input dtype); ``atol``
        alone: ``tau = atol``; ``rtol`` alone: ``tau = rtol * sigma_max(H_t)``; both:
        ``max(atol, rtol * sigma_max)``. Must be finite and non-negative.
    positions : 1-D int array, optional
        Strictly increasing split points in ``[0, L)``; only those are computed.

    Returns
    -------
    float64 array ``(..., L)`` (or ``(..., len(positions))``), or :class:`EssCurves`.

    Notes
    -----
    ``0 <= entropy-ESS <= exact rank <= min(t, L-t)``. The curve near the end of the
    sequence is bounded by ``L - t`` (boundary effect). Computation is in float64 for both
    input dtypes; the GIL is released. See the README for the algorithm and its cost.
    """
    T = _args.array(T, "T", kinds="fiub")
    method = _args.choice(method, "method", ("tolerance", "entropy", "both"))
    atol = _args.real(atol, "atol", lo=0.0, allow_none=True)
    rtol = _args.real(rtol, "rtol", lo=0.0, allow_none=True)
    tol, ent = _core.dense_ess_curves(T, method, atol, rtol, _positions_list(positions))
    if method == "both":
        assert tol is not None and ent is not None
        return EssCurves(tol, ent)
    out = tol if method == "tolerance" else ent
    assert out is not None
    return out
