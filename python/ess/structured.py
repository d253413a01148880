"""Structured effective state size: ESS curves straight from the factors of a layer.

The dense kernel :func:`ess.effective_state_size` needs the ``L x L`` operator and costs
about ``L^4/19`` flops per operator. The layers of modern sequence models have structure
that makes this unnecessary. Every function here returns the same curves as
``ess.effective_state_size(T, ...)`` on the materialised operator ``T`` (same threshold
conventions, same ``ess[..., 0] = 0``), without forming ``T``.

State-space convention (all functions)
--------------------------------------
A state of size ``N`` follows ``h_t = A_t h_{t-1} + b_t u_t`` and ``y_t = c_t^T h_t + D u_t``
(0-indexed). For ``s < t`` the operator is

    T[t, s] = c_t^T A_t A_{t-1} ... A_{s+1} b_s,

so ``A_0`` never matters, and the diagonal ``T[t, t] = c_t^T b_t + D`` (the direct term)
enters no block ``H_t = T[t:, :t]``: it cannot change any result.

Algorithm and accuracy
----------------------
``H_t = O_t R_t`` factors through the state. Square roots of the reachability Gramian
``P_t = R_t R_t^T`` (swept forward) and of the observability Gramian ``Q_t = O_t^T O_t``
(swept backward) are carried as triangular factors, updated by orthogonal transformations
(Givens rotations; a Householder QR after a dense transition), so the Gramians are never
formed and nothing is squared. The singular values of ``H_t`` are those of the ``N x N``
product of the two factors. Cost: ``O(L N^2)`` per channel for scalar or diagonal
transitions plus ``O(L N^3)`` for the per-split SVDs (``O(L N^3)`` sweeps for dense
transitions). Each state coordinate of a factor carries its own power-of-two exponent, so
transitions far below or above 1 over long sequences and badly scaled factors neither
overflow nor underflow; an operator whose entries overflow float64 when materialised still
gets finite curves. Singular values are accurate to about ``eps * ||S_O|| ||S_R||``
(the norms of the two square roots), which equals the dense kernel's ``eps * ||H_t||`` for
a balanced realisation; strongly non-normal dense transitions can lose digits relative to
the dense path.

Channels run in parallel (rayon, ``RAYON_NUM_THREADS``); the GIL is released. Memory per
channel in flight: ``O(n_positions * N^2)``.

References
----------
* R. N. Parnichkun, N. Tumma, A. W. Thomas, A. Moro, Q. An, T. Suzuki, A. Yamashita, M. Poli,
  S. Massaroli, "Quantifying Memory Utilization with Effective State-Size", ICML 2025;
  arXiv:2504.19561 (effective state size and its minimal-realisation view, which the factored
  blocks ``H_t = O_t R_t`` compute without forming ``T``).
* N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness", arXiv:0909.4061
  (randomised range finder and its a posteriori error estimate with Gaussian test vectors: the
  ``"fast"`` path of :func:`conv_ess`).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _args, _core
from ._dense import EssCurves, _positions_list
from .errors import DTypeError, InvalidArgumentError, NonFiniteError, NumericalError, ShapeError

__all__ = [
    "ssm_ess",
    "mamba_ess",
    "mamba2_ess",
    "linear_attention_ess",
    "conv_ess",
]

Result = Union[npt.NDArray[np.float64], EssCurves]


def _as_float(x: npt.ArrayLike, name: str) -> np.ndarray:
    a = _args.array(x, name, kinds="fiubcSUOmM")  # torch tensors, masked/ragged input: see ess._args
    if a.dtype.kind != "f" or a.dtype not in (np.float32, np.float64):
        raise DTypeError(f"{name}: dtype {a.dtype} is not supported; pass float32 or float64")
    return a


def _common(*arrays: Optional[np.ndarray]) -> np.dtype:
    present = [a.dtype for a in arrays if a is not None]
    return np.dtype(np.float64) if any(d == np.float64 for d in present) else np.dtype(np.float32)


def _finish(tol: Optional[np.ndarray], ent: Optional[np.ndarray], method: str) -> Result:
    if method == "both":
        assert tol is not None and ent is not None
        return EssCurves(tol, ent)
    out = tol if method == "tolerance" else ent
    assert out is not None
    return out


def _tols(atol: Optional[float], rtol: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    return _args.real(atol, "atol", lo=0.0, allow_none=True), _args.real(rtol, "rtol", lo=0.0, allow_none=True)


def _check_method(method: str) -> None:
    if not isinstance(method, str) or method not in ("tolerance", "entropy", "both"):
        raise InvalidArgumentError(f'method: unknown method {method!r}; expected "tolerance", "entropy" or "both"')


def _transition_kind(
    a: Optional[np.ndarray], b: np.ndarray, c: np.ndarray, transition: Optional[str]
) -> Tuple[str, int, int]:
    """The transition kind of ``ssm_ess`` (named, or read from the trailing shape of ``A``), and ``L, N``."""
    L, N = b.shape[-2:]
    if c.shape[-2:] != (L, N):
        raise ShapeError(f"C: trailing dimensions {c.shape[-2:]} differ from (L, N) = {(L, N)} of B")
    if transition is None:
        if a is None:
            kind = "identity"
        else:
            if a.ndim >= 3 and a.shape[-3:] == (L, N, N):
                kind = "dense"
            elif a.ndim >= 2 and a.shape[-2:] == (L, N):
                kind = "diagonal"
            elif a.ndim >= 1 and a.shape[-1] == L:
                kind = "scalar"
            else:
                kind = ""
            if not kind:
                raise ShapeError(
                    f"A: cannot tell the transition kind from A.ndim = {a.ndim} and B.ndim = {b.ndim}; "
                    "expected (..., L), (..., L, N) or (..., L, N, N), or pass transition="
                )
    else:
        kind = transition
        if kind not in ("identity", "scalar", "diagonal", "dense"):
            raise InvalidArgumentError(
                f'transition: unknown kind {kind!r}; expected "identity", "scalar", "diagonal" or "dense"'
            )
        if (kind == "identity") != (a is None):
            raise InvalidArgumentError("A: must be None exactly when transition is 'identity'")
    return kind, L, N


def ssm_ess(
    A: Optional[npt.ArrayLike],
    B: npt.ArrayLike,
    C: npt.ArrayLike,
    *,
    transition: Optional[str] = None,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Result:
    """ESS curves of time-varying state-space operators, from their factors.

    ``T[t, s] = C[t]^T A[t] A[t-1] ... A[s+1] B[s]`` for ``s < t`` (see the module docs);
    the result equals ``ess.effective_state_size(T, ...)`` on the materialised operator.

    Parameters
    ----------
    A : array or None
        Transitions. ``None``: identity (``A_t = I``, e.g. linear attention). Otherwise
        one of ``(..., L)`` scalar (``A_t = a_t I``), ``(..., L, N)`` diagonal, or
        ``(..., L, N, N)`` dense (``A[..., t, i, j]`` is row ``i``, column ``j`` of ``A_t``).
        The kind is read from the trailing shape, trying ``(L, N, N)``, then ``(L, N)``, then
        ``(L,)``, unless ``transition`` names it (needed only when ``L == N`` makes the trailing
        shape ambiguous).
    B, C : arrays ``(..., L, N)``
        Inputs ``b_t`` and outputs ``c_t``, ``N >= 1``. Leading dimensions of ``A``, ``B``
        and ``C`` (channels, heads, batch) broadcast against each other; each resulting
        channel gives one curve.
    transition : {"identity", "scalar", "diagonal", "dense"}, optional
        The kind of ``A``, when the shapes alone are ambiguous (e.g. broadcasting a
        scalar-decay array).
    method, atol, rtol, positions
        As in :func:`ess.effective_state_size`: ``"tolerance"`` counts singular values
        of ``H_t`` strictly above ``tau`` (numpy ``matrix_rank`` rules: default
        ``max(L-t, t) * eps * sigma_max`` with ``eps`` of the input dtype); ``"entropy"``
        is ``exp(-sum p ln p)``, ``p = sigma / sum(sigma)``; ``"both"`` gives an
        :class:`ess.EssCurves`.

    Returns
    -------
    float64 array ``(..., L)`` (or ``(..., len(positions))``) over the broadcast leading
    dimensions, or :class:`ess.EssCurves`.

    Raises
    ------
    ShapeError for mismatched shapes, ``N = 0`` or ``L = 0``; NonFiniteError for NaN/inf;
    DTypeError for non-float input; InvalidArgumentError for bad ``method``/``atol``/``rtol``.
    ``L = 1`` is valid and gives ``[0.]``, as the dense kernel does.

    Examples
    --------
    A diagonal SSM with ``N = 2`` states: the curve never exceeds 2 and equals the dense kernel's
    on the materialised operator.

    >>> import numpy as np, ess
    >>> from ess.structured import ssm_ess
    >>> rng = np.random.default_rng(0)
    >>> L, N = 8, 2
    >>> A = rng.uniform(0.5, 0.9, (L, N))
    >>> B, C = rng.standard_normal((L, N)), rng.standard_normal((L, N))
    >>> ssm_ess(A, B, C)
    array([0., 1., 2., 2., 2., 2., 2., 1.])
    >>> T = np.array([[C[t] @ (np.prod(A[s + 1 : t + 1], axis=0) * B[s]) if s < t else 0.0
    ...                for s in range(L)] for t in range(L)])
    >>> bool(np.array_equal(ssm_ess(A, B, C), ess.effective_state_size(T)))
    True
    >>> ssm_ess(A, B, C, method="entropy", positions=[4]).round(3)
    array([1.831])
    """
    _check_method(method)
    atol, rtol = _tols(atol, rtol)
    b = _as_float(B, "B")
    c = _as_float(C, "C")
    a = None if A is None else _as_float(A, "A")
    if b.ndim < 2:
        raise ShapeError(f"B: needs at least 2 dimensions (..., L, N), got shape {b.shape}")
    if c.ndim < 2:
        raise ShapeError(f"C: needs at least 2 dimensions (..., L, N), got shape {c.shape}")
    kind, L, N = _transition_kind(a, b, c, transition)
    tail = {"identity": (), "scalar": (L,), "diagonal": (L, N), "dense": (L, N, N)}[kind]
    lead = [b.shape[:-2], c.shape[:-2]]
    if a is not None:
        if a.ndim < len(tail) or a.shape[a.ndim - len(tail) :] != tail:
            raise ShapeError(
                f"A: expected shape (..., {', '.join(map(str, tail))}) for {kind} transitions "
                f"with B of shape {b.shape}, got {a.shape}"
            )
        lead.append(a.shape[: a.ndim - len(tail)])
    try:
        batch = np.broadcast_shapes(*lead)
    except ValueError:
        raise ShapeError(
            f"A, B, C: leading (channel) dimensions do not broadcast: {[tuple(s) for s in lead]}"
        ) from None
    dt = _common(a, b, c)

    def prep(x: np.ndarray, t: Tuple[int, ...], name: str) -> np.ndarray:
        x = x.astype(dt, copy=False)
        if x.shape[: x.ndim - len(t)] != batch:
            x = np.broadcast_to(x, batch + t)
        if not x.flags.c_contiguous:
            _args.gate(
                name, float(np.prod(batch + t, dtype=float)) * x.itemsize, f"a contiguous copy broadcast to {batch + t}"
            )
        return np.ascontiguousarray(x)

    b = prep(b, (L, N), "B")
    c = prep(c, (L, N), "C")
    if a is not None:
        a = prep(a, tail, "A")
    tol, ent = _core.ssm_ess_curves(a, kind, b, c, method, atol, rtol, _positions_list(positions))
    return _finish(tol, ent, method)


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(x)):
        idx = int(np.flatnonzero(~np.isfinite(x.ravel()))[0])
        raise NonFiniteError(f"{name} contains a non-finite value (NaN or inf) at flat index {idx}")


def _decays(at: np.ndarray, dtype: Any) -> np.ndarray:
    """``exp(delta * A)`` in the working dtype; an overflow is named as what it is (the decays
    are computed from finite ``A`` and ``delta``, so a non-finite value is never their fault)."""
    with np.errstate(over="ignore"):
        out = at.astype(dtype)
    if not np.all(np.isfinite(out)):
        idx = np.unravel_index(int(np.argmax(~np.isfinite(out))), out.shape)
        raise NonFiniteError(
            f"delta, A: exp(delta * A) overflows {np.dtype(dtype).name} at (channel/head, position"
            f"{', state' if out.ndim == 3 else ''}) = {tuple(int(v) for v in idx)}; a selective SSM has A < 0 "
            "(decays in (0, 1]); is A given as A_log or with the wrong sign?"
        )
    return out


def _scaled_inputs(bt: np.ndarray, dtype: Any) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = bt.astype(dtype)
    if not np.all(np.isfinite(out)):
        raise NonFiniteError(f"delta, B: delta * B overflows {np.dtype(dtype).name}")
    return out


def _factors_fit(a: np.ndarray, dl: np.ndarray, b: np.ndarray, c: np.ndarray, dtype: Any) -> bool:
    """Whether every Mamba factor (``exp(delta A)``, ``delta B``, ``C``) is surely finite in
    ``dtype``, from bounds in ``O(L D + D N)`` (products of the extremes); when not, the caller
    forms the factors in numpy, which names the one that overflows."""
    big = float(np.finfo(dtype).max) * 0.5
    top = 88.0 if np.dtype(dtype) == np.float32 else 709.0
    with np.errstate(over="ignore", invalid="ignore"):
        d_hi, d_lo = dl.max(axis=0), dl.min(axis=0)
        a_hi, a_lo = a.max(axis=1), a.min(axis=1)
        expo = np.maximum(np.maximum(d_hi * a_hi, d_hi * a_lo), np.maximum(d_lo * a_hi, d_lo * a_lo))
        scaled = float(np.abs(dl).max()) * float(np.abs(b).max())
        return bool(np.all(expo < top)) and scaled < big and float(np.abs(c).max()) < big


def mamba_ess(
    A: npt.ArrayLike,
    delta: npt.ArrayLike,
    B: npt.ArrayLike,
    C: npt.ArrayLike,
    D: Optional[npt.ArrayLike] = None,
    *,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Result:
    """ESS curves of a selective SSM (Mamba / S6) layer, one per channel, in its native
    parameterisation.

    Channel ``d``: ``T[t, s] = sum_n C[t, n] exp(A[d, n] (c_t - c_s)) delta[s, d] B[s, n]``
    with ``c = cumsum(delta[:, d])`` (zero-order-hold discretisation with the simplified
    ``B_bar = delta B`` of Mamba), plus ``D[d]`` on the diagonal. As a state-space
    system: ``A_t = diag(exp(delta[t, d] A[d]))``, ``b_t = delta[t, d] B[t]``, ``c_t = C[t]``.

    Parameters
    ----------
    A : (D_ch, N) state matrix (diagonal per channel; ``-exp(A_log)`` in Mamba).
    delta : (L, D_ch) step sizes after the softplus.
    B, C : (L, N) input and output projections (one group shared by all channels), or
        (L, D_ch, N) per channel.
    D : (D_ch,), optional. The skip term; it is on the diagonal of ``T`` and does not enter
        any ``H_t``, so it is only validated (shape, finiteness) and otherwise ignored.
    method, atol, rtol, positions : as in :func:`ssm_ess`.

    Returns
    -------
    float64 ``(D_ch, L)`` (or ``(D_ch, len(positions))``), or :class:`ess.EssCurves`.
    The theoretical state size of each channel is ``N``.

    Notes
    -----
    The factors are formed in float64 and rounded to the inputs' common dtype (float32
    inputs keep the float32 ``eps`` of the default threshold). The kernel forms them channel by
    channel from ``A``, ``delta``, ``B``, ``C`` read in place, so memory stays ``O(L N)`` per
    worker thread instead of three ``(D_ch, L, N)`` arrays; only when a factor may overflow the
    dtype are they formed in numpy (which names the overflowing one). ``exp(delta * A)`` is
    evaluated in float64; a decay below ``1e-308`` per step is 0
    (the channel forgets completely), exactly as a materialised float64 operator would have it.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.structured import mamba_ess
    >>> rng = np.random.default_rng(0)
    >>> L, D_ch, N = 10, 3, 4
    >>> A = -np.exp(rng.standard_normal((D_ch, N)))           # -exp(A_log)
    >>> delta = np.log1p(np.exp(rng.standard_normal((L, D_ch))))   # softplus
    >>> B, C = rng.standard_normal((L, N)), rng.standard_normal((L, N))
    >>> mamba_ess(A, delta, B, C)                             # (D_ch, L), at most N = 4
    array([[0., 1., 2., 3., 4., 4., 4., 3., 2., 1.],
           [0., 1., 2., 3., 4., 4., 4., 3., 2., 1.],
           [0., 1., 2., 3., 4., 4., 4., 3., 2., 1.]])
    """
    _check_method(method)
    atol, rtol = _tols(atol, rtol)
    given = [_as_float(x, name) for x, name in ((A, "A"), (delta, "delta"), (B, "B"), (C, "C"))]
    a, dl, b, c = (x.astype(np.float64) for x in given)
    if a.ndim != 2:
        raise ShapeError(f"A: expected shape (D_ch, N), got {a.shape}")
    Dch, N = a.shape
    if dl.ndim != 2 or dl.shape[1] != Dch:
        raise ShapeError(f"delta: expected shape (L, D_ch) = (L, {Dch}), got {dl.shape}")
    L = dl.shape[0]
    for name, x in (("B", b), ("C", c)):
        if x.shape not in ((L, N), (L, Dch, N)):
            raise ShapeError(f"{name}: expected shape (L, N) = {(L, N)} or (L, D_ch, N) = {(L, Dch, N)}, got {x.shape}")
    if D is not None:
        d = _as_float(D, "D")
        if d.shape != (Dch,):
            raise ShapeError(f"D: expected shape (D_ch,) = ({Dch},), got {d.shape}")
        _check_finite(d, "D")
    for name, x in (("A", a), ("delta", dl), ("B", b), ("C", c)):
        _check_finite(x, name)
    if N == 0:
        raise ShapeError("A: the state dimension is empty (N = 0)")
    dt = _common(*given)
    if L > 0 and Dch > 0 and _factors_fit(a, dl, b, c, dt):
        # The kernel forms the factors of each channel on the fly from the (float64) parameters,
        # read in place: no (D_ch, L, N) arrays.
        tol, ent = _core.mamba_ess_curves(
            np.ascontiguousarray(a),
            np.ascontiguousarray(dl),
            np.ascontiguousarray(b),
            np.ascontiguousarray(c),
            np.dtype(dt) == np.float32,
            method,
            atol,
            rtol,
            _positions_list(positions),
        )
        return _finish(tol, ent, method)
    # (D_ch, L, N) factors (the reference route; also where a factor overflows, to name it).
    with np.errstate(over="ignore"):  # an overflow is reported by _decays, naming delta * A
        at = np.exp(dl.T[:, :, None] * a[:, None, :])
    bb = b[None, :, :] if b.ndim == 2 else b.transpose(1, 0, 2)
    cc = c[None, :, :] if c.ndim == 2 else c.transpose(1, 0, 2)
    bt = dl.T[:, :, None] * bb
    at, bt, cc = _decays(at, dt), _scaled_inputs(bt, dt), np.asarray(cc, dtype=dt)
    return ssm_ess(at, bt, cc, transition="diagonal", method=method, atol=atol, rtol=rtol, positions=positions)


def mamba2_ess(
    A: npt.ArrayLike,
    delta: npt.ArrayLike,
    B: npt.ArrayLike,
    C: npt.ArrayLike,
    D: Optional[npt.ArrayLike] = None,
    *,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Result:
    """ESS curves of a Mamba-2 (SSD) layer, one per head, in its native parameterisation.

    Head ``h``: ``T[t, s] = C[t]^T B[s] delta[s, h] exp(A[h] (c_t - c_s))``,
    ``c = cumsum(delta[:, h])``: a scalar decay ``a_t = exp(delta[t, h] A[h])`` per head.
    All value channels (``headdim``) of a head share this operator, so it is computed once.

    Parameters
    ----------
    A : (H,) scalar state parameter per head (``-exp(A_log)``).
    delta : (L, H) step sizes after the softplus.
    B, C : (L, N) (one group) or (L, H, N) per head.
    D : (H,), optional; the skip term, diagonal only: validated, otherwise ignored.
    method, atol, rtol, positions : as in :func:`ssm_ess`.

    Returns
    -------
    float64 ``(H, L)`` or :class:`ess.EssCurves`; the theoretical state size is ``N``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.structured import mamba2_ess
    >>> rng = np.random.default_rng(0)
    >>> L, H, N = 10, 2, 3
    >>> A = -np.exp(rng.standard_normal(H))
    >>> delta = np.log1p(np.exp(rng.standard_normal((L, H))))
    >>> B, C = rng.standard_normal((L, N)), rng.standard_normal((L, N))
    >>> mamba2_ess(A, delta, B, C)                            # (H, L), at most N = 3
    array([[0., 1., 2., 3., 3., 3., 3., 3., 2., 1.],
           [0., 1., 2., 3., 3., 3., 3., 3., 2., 1.]])
    """
    _check_method(method)
    atol, rtol = _tols(atol, rtol)
    given = [_as_float(x, name) for x, name in ((A, "A"), (delta, "delta"), (B, "B"), (C, "C"))]
    a, dl, b, c = (x.astype(np.float64) for x in given)
    if a.ndim != 1:
        raise ShapeError(f"A: expected shape (H,), got {a.shape}")
    H = a.shape[0]
    if dl.ndim != 2 or dl.shape[1] != H:
        raise ShapeError(f"delta: expected shape (L, H) = (L, {H}), got {dl.shape}")
    L = dl.shape[0]
    if b.ndim not in (2, 3):
        raise ShapeError(f"B: expected shape (L, N) or (L, H, N), got {b.shape}")
    N = b.shape[-1]
    for name, x in (("B", b), ("C", c)):
        if x.shape not in ((L, N), (L, H, N)):
            raise ShapeError(f"{name}: expected shape (L, N) = {(L, N)} or (L, H, N) = {(L, H, N)}, got {x.shape}")
    if D is not None:
        d = _as_float(D, "D")
        if d.shape != (H,):
            raise ShapeError(f"D: expected shape (H,) = ({H},), got {d.shape}")
        _check_finite(d, "D")
    for name, x in (("A", a), ("delta", dl), ("B", b), ("C", c)):
        _check_finite(x, name)
    with np.errstate(over="ignore"):  # an overflow is reported by _decays, naming delta * A
        at = np.exp(dl.T * a[:, None])  # (H, L)
    bb = b[None] if b.ndim == 2 else b.transpose(1, 0, 2)
    cc = c[None] if c.ndim == 2 else c.transpose(1, 0, 2)
    bt = dl.T[:, :, None] * bb
    dt = _common(*given)
    at, bt, cc = _decays(at, dt), _scaled_inputs(bt, dt), np.asarray(cc, dtype=dt)
    return ssm_ess(at, bt, cc, transition="scalar", method=method, atol=atol, rtol=rtol, positions=positions)


def linear_attention_ess(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    gates: Optional[npt.ArrayLike] = None,
    *,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Result:
    """ESS curves of (gated) linear attention, one per head.

    ``T[t, s] = q_t^T diag(g_t) diag(g_{t-1}) ... diag(g_{s+1}) k_s`` for ``s < t``; without
    gates ``T[t, s] = q_t . k_s``. ``q`` and ``k`` are the features *after* the feature map
    ``phi``. A row normaliser ``T[t, :] /= z_t`` is a nonzero row scaling: it leaves the
    exact rank unchanged but changes singular values; to include it, pass ``q / z[..., None]``.

    Parameters
    ----------
    q, k : (..., L, d_k) float arrays (leading dimensions: heads, batch).
    gates : optional, ``(..., L)`` scalar decay per step (RetNet, Mamba-2-like) or
        ``(..., L, d_k)`` per-feature decay (GLA). ``gates[..., 0]`` never enters.
    method, atol, rtol, positions : as in :func:`ssm_ess`.

    Returns
    -------
    float64 ``(..., L)`` or :class:`ess.EssCurves`; the theoretical state size is ``d_k``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.structured import linear_attention_ess
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.random((2, 8, 3)), rng.random((2, 8, 3))   # 2 heads, L = 8, d_k = 3
    >>> linear_attention_ess(q, k)
    array([[0., 1., 2., 3., 3., 3., 2., 1.],
           [0., 1., 2., 3., 3., 3., 2., 1.]])
    >>> linear_attention_ess(q, k, gates=np.full((2, 8), 0.5), method="entropy").round(2)
    array([[0.  , 1.  , 1.32, 1.8 , 1.54, 1.33, 1.36, 1.  ],
           [0.  , 1.  , 1.15, 1.24, 1.1 , 1.16, 1.13, 1.  ]])
    """
    qa = _as_float(q, "q")
    ka = _as_float(k, "k")
    if qa.ndim < 2:
        raise ShapeError(f"q: needs at least 2 dimensions (..., L, d_k), got shape {qa.shape}")
    if ka.ndim < 2:
        raise ShapeError(f"k: needs at least 2 dimensions (..., L, d_k), got shape {ka.shape}")
    if qa.shape[-2:] != ka.shape[-2:]:
        raise ShapeError(f"k: trailing dimensions {ka.shape[-2:]} differ from (L, d_k) = {qa.shape[-2:]} of q")
    if gates is None:
        kind = "identity"
        g = None
    else:
        g = _as_float(gates, "gates")
        L, dk = qa.shape[-2:]
        if g.ndim >= 2 and g.shape[-2:] == (L, dk):
            kind = "diagonal"
        elif g.ndim >= 1 and g.shape[-1] == L:
            kind = "scalar"
        else:
            raise ShapeError(
                f"gates: expected shape (..., L) = (..., {L}) or (..., L, d_k) = (..., {L}, {dk}), got {g.shape}"
            )
    try:
        return ssm_ess(g, ka, qa, transition=kind, method=method, atol=atol, rtol=rtol, positions=positions)
    except ShapeError as e:
        msg = str(e).replace("B:", "k:", 1).replace("C:", "q:", 1).replace("A:", "gates:", 1)
        raise ShapeError(msg) from None
    except NonFiniteError as e:
        msg = str(e).replace("B ", "k ", 1).replace("C ", "q ", 1).replace("A ", "gates ", 1)
        raise NonFiniteError(msg) from None


# --- causal convolutions -----------------------------------------------------------------


def _conv_args(
    h: npt.ArrayLike, L: int, x1: Optional[npt.ArrayLike], x2: Optional[npt.ArrayLike], path: str, accuracy: float
) -> Tuple[np.ndarray, int, int, list, float]:
    """The checked arguments of :func:`conv_ess`: taps ``(..., k)`` in float64, ``L``, ``k``, the gates, accuracy."""
    ha = _as_float(h, "h").astype(np.float64)
    if ha.ndim < 1:
        raise ShapeError(f"h: needs at least 1 dimension (..., k), got shape {ha.shape}")
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)):
        raise InvalidArgumentError(f"L: must be an integer, got {type(L).__name__}")
    L = int(L)
    if L < 1:
        raise InvalidArgumentError(f"L: must be >= 1, got {L}")
    k = ha.shape[-1]
    if k < 1:
        raise ShapeError("h: the kernel is empty (k = 0)")
    if k > L:
        raise ShapeError(f"h: kernel length k = {k} exceeds the sequence length L = {L}")
    _check_finite(ha, "h")
    if path not in ("auto", "exact", "fast"):
        raise InvalidArgumentError(f'path: unknown path {path!r}; expected "auto", "exact" or "fast"')
    accuracy = _args.real(accuracy, "accuracy")
    if not accuracy > 0:
        raise InvalidArgumentError(f"accuracy: must be a finite positive number, got {accuracy!r}")
    gates: list = []
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            gates.append(None)
            continue
        xa = _as_float(x, name).astype(np.float64)
        if xa.ndim < 1 or xa.shape[-1] != L:
            raise ShapeError(f"{name}: expected shape (..., L) = (..., {L}), got {xa.shape}")
        _check_finite(xa, name)
        gates.append(xa)
    return ha, L, k, gates, accuracy


def _conv_gated(
    hb: np.ndarray,
    g1: Optional[np.ndarray],
    g2: Optional[np.ndarray],
    L: int,
    k: int,
    batch: Tuple[int, ...],
    method: str,
    atol: Optional[float],
    rtol: Optional[float],
    positions: Optional[npt.ArrayLike],
) -> Result:
    """Gated convolutions ``y_t = x2[t] sum_j h[j] x1[t-j] u_{t-j}`` through the structured kernel."""
    nb = hb.shape[0]
    # Shift-register realisation, state h_t = (u_t, ..., u_{t-k+1}) (size k):
    # A = down-shift, b_t = x1[t] e_0, c_t = x2[t] h. Exact; O(L k^3) per channel.
    shift = np.eye(k, k, -1)
    A = np.ascontiguousarray(np.broadcast_to(shift, (L, k, k)))
    tols: list = []
    ents: list = []
    for j in range(nb):
        Bj = np.zeros((L, k))
        Bj[:, 0] = 1.0 if g1 is None else g1[j]
        Cj = np.broadcast_to(hb[j], (L, k)) * (1.0 if g2 is None else g2[j][:, None])
        tj, ej = _core.ssm_ess_curves(
            A, "dense", Bj, np.ascontiguousarray(Cj), method, atol, rtol, _positions_list(positions)
        )
        tols.append(tj)
        ents.append(ej)
    tol = None if tols[0] is None else np.stack(tols).reshape(batch + tols[0].shape[-1:])
    ent = None if ents[0] is None else np.stack(ents).reshape(batch + ents[0].shape[-1:])
    return _finish(tol, ent, method)


def _conv_exact_factors(hb: np.ndarray, L: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact factors ``(B, C)`` (each ``(nb, L, k - 1)``) of ungated kernels: ``M = E Hk E^T``."""
    nb = hb.shape[0]
    n = k - 1
    # M = E Hk E^T with Hk[i, j] = h[i + j + 1] (i + j + 1 < k): X = E Hk, Y = E.
    idx = np.arange(n)[:, None] + np.arange(n)[None, :] + 1
    Hk = np.where(idx < k, hb[:, np.minimum(idx, k - 1)], 0.0)  # (nb, n, n)
    Bf = np.zeros((nb, L, n))
    m = min(n, L - 1)
    Bf[:, np.arange(m), np.arange(m)] = 1.0  # b_s = e_s, s < min(n, L-1)
    Cf = np.zeros((nb, L, n))
    # c_i = X[L-1-i] = Hk[L-1-i] for L-1-i < n, i >= 1.
    for i in range(max(1, L - n), L):
        Cf[:, i, :] = Hk[:, L - 1 - i, :]
    return Bf, Cf


def _conv_fast_factors(
    hb: np.ndarray, L: int, k: int, accuracy: float, max_rank: Optional[int], seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Factors ``(B, C)`` (each ``(nb, L, r)``) from the core's randomised factorisation ``M ~ X Y^T``."""
    nb = hb.shape[0]
    mr = min(L - 1, 1024) if max_rank is None else int(max_rank)
    if mr < 1:
        raise InvalidArgumentError(f"max_rank: must be >= 1, got {max_rank}")
    seed = _args.integer(seed, "seed", lo=0, hi=2**64 - 1)
    r_all = 1
    parts = []
    for j in range(nb):
        gj = np.zeros(L - 1)
        gj[: k - 1] = hb[j, 1:]
        if not np.any(gj):
            parts.append((np.zeros((L - 1, 1)), np.zeros((L - 1, 1))))
            continue
        # randomised range finder in the core (FFT Hankel products, faer QR/SVD); kernel j
        # draws from its own stream of the seed
        X, Y, err, s1 = _core.hankel_lowrank(gj, accuracy, mr, seed, j)
        if err > accuracy * s1:
            raise NumericalError(
                f"conv_ess: the fast path reached rank {X.shape[1]} (max_rank) with error bound "
                f"{err:.3g} > accuracy * ||M|| = {accuracy * s1:.3g} for kernel {j}; use path='exact' "
                "or a larger max_rank"
            )
        parts.append((X, Y))
        r_all = max(r_all, X.shape[1])
    Bf = np.zeros((nb, L, r_all))
    Cf = np.zeros((nb, L, r_all))
    for j, (X, Y) in enumerate(parts):
        r = X.shape[1]
        Bf[j, : L - 1, :r] = Y  # b_s = Y[s], s < L-1
        Cf[j, 1:, :r] = X[::-1]  # c_i = X[L-1-i], i >= 1
    return Bf, Cf


def conv_ess(
    h: npt.ArrayLike,
    L: int,
    *,
    x1: Optional[npt.ArrayLike] = None,
    x2: Optional[npt.ArrayLike] = None,
    path: str = "auto",
    accuracy: float = 1e-12,
    max_rank: Optional[int] = None,
    seed: int = 0,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
) -> Result:
    """ESS curves of causal convolutions ``T = diag(x2) Toeplitz(h) diag(x1)``.

    ``T[t, s] = x2[t] h[t - s] x1[s]`` for ``0 <= t - s < k`` (``k = h.shape[-1] <= L``);
    ``x1 = x2 = 1`` by default (a plain depthwise convolution; Hyena-style long convolutions
    pass the gates). ``h[..., 0]`` is on the diagonal and never enters. Every block ``H_t``
    is (up to the gates) the top-left ``(L-t) x t`` corner of one Hankel matrix
    ``M[i, j] = h[i + j + 1]``; a ``k``-tap kernel has ``rank(H_t) <= k - 1``.

    Paths
    -----
    ``"exact"``: without gates, factorises ``M`` exactly through its ``(k-1) x (k-1)`` nonzero
    corner (the blocks are the corners of ``M`` up to a row and column reversal, which keeps
    singular values) and runs the structured kernel with a state of size ``k - 1``; with
    gates, runs the shift-register realisation (state size ``k``, dense shift transition).
    Exact up to rounding (same guarantees as :func:`ssm_ess`), cost ``O(L k^3)``, memory
    ``O(n_positions k^2)``. Meant for short kernels.

    ``"fast"``: a randomised low-rank factorisation ``M ~ X Y^T``, computed in the Rust core
    (range finder with power iterations, Hankel products by real FFTs in ``O(L log L)``, faer
    QR and SVD; rank doubled until the a
    posteriori error estimate is below ``accuracy * ||M||_2`` or ``max_rank`` is reached),
    then the structured kernel with a state of size ``r = rank(X)``. Not available with the
    gates ``x1``, ``x2`` (:class:`InvalidArgumentError`). Cost
    ``O(r L log L + L r^3)``: efficient when the kernel's Hankel singular values decay
    (smooth or decaying long kernels: S4/Hyena-style), never ``L^4``. **Guarantee**: with
    probability at least ``1 - 1e-10`` (10 Gaussian probes, the a posteriori estimate of Halko-Martinsson-Tropp),
    every singular value of every ``H_t`` is within ``err`` of the exact one (Weyl; each
    ``H_t`` is a submatrix of ``M`` up to permutations), where ``err`` is the achieved bound; entropy-ESS is correspondingly
    approximate, and tolerance counts are exact for every singular value farther than that
    from the threshold. If the bound exceeds ``accuracy * ||M||_2`` at ``max_rank``, a
    :class:`NumericalError` is raised (use ``"exact"`` or the dense kernel).

    ``"auto"``: ``"exact"`` when ``k - 1 <= 64`` or gates are given, else ``"fast"``.

    Parameters
    ----------
    h : (..., k) kernels (leading dimensions: channels); ``1 <= k <= L``.
    L : sequence length (``>= 1``).
    x1, x2 : optional gates, ``(..., L)`` broadcasting against the kernels' leading dims.
    accuracy : relative target of the fast path (default ``1e-12``).
    max_rank : largest rank tried by the fast path (default ``min(L - 1, 1024)``).
    seed : seed of the fast path's random numbers, an integer in ``[0, 2**64)`` (results are
        reproducible; kernel ``j`` uses stream ``j`` of the seed).
    method, atol, rtol, positions : as in :func:`ssm_ess`.

    Examples
    --------
    A 3-tap kernel: every block has rank at most ``k - 1 = 2``, as the dense kernel finds on the
    Toeplitz operator. An exponential kernel has a rank-one Hankel matrix, which the fast path finds.

    >>> import numpy as np, ess
    >>> from ess.structured import conv_ess
    >>> h = np.array([1.0, -0.5, 0.25])
    >>> conv_ess(h, 8)
    array([0., 1., 2., 2., 2., 2., 2., 1.])
    >>> T = sum(np.diag(np.full(8 - i, h[i]), -i) for i in range(3))
    >>> bool(np.array_equal(conv_ess(h, 8), ess.effective_state_size(T)))
    True
    >>> conv_ess(np.exp(-np.arange(200) / 5.0), 256, path="fast", positions=[128])
    array([1.])
    """
    _check_method(method)
    atol, rtol = _tols(atol, rtol)
    ha, L, k, gates, accuracy = _conv_args(h, L, x1, x2, path, accuracy)
    lead = ha.shape[:-1]
    try:
        batch = np.broadcast_shapes(lead, *[g.shape[:-1] for g in gates if g is not None])
    except ValueError:
        raise ShapeError("h, x1, x2: leading dimensions do not broadcast") from None
    hb = np.broadcast_to(ha, batch + (k,)).reshape(-1, k)
    g1 = None if gates[0] is None else np.broadcast_to(gates[0], batch + (L,)).reshape(-1, L)
    g2 = None if gates[1] is None else np.broadcast_to(gates[1], batch + (L,)).reshape(-1, L)
    nb = hb.shape[0]
    gated = g1 is not None or g2 is not None
    if path == "auto":
        path = "exact" if (k - 1 <= 64 or gated) else "fast"
    if path == "fast" and gated:
        raise InvalidArgumentError(
            "path: the fast path does not support the gates x1, x2 (its Hankel factorisation has no "
            "time-invariant state); use path='exact' (O(L k^3)) or the dense kernel"
        )
    if path == "exact":
        # (L, k) state-space factors per channel, (L, k, k) transitions when gated
        per = L * (k + 1) * (k if gated else 2)
        _args.gate(
            "L",
            8.0 * per * (1 if gated else nb),
            f"the state-space factors of {nb} kernel(s) of length {k} over L = {L}",
        )
    else:
        _args.gate("L", 8.0 * nb * L * 16, f"the FFT work arrays of {nb} kernel(s) over L = {L}")
    if L == 1 or k == 1:
        # No strictly-lower entries: every block is zero.
        n_pos = L if positions is None else len(_positions_list(positions) or [])
        if positions is not None:
            # validate through the kernel (cheap) for consistent errors
            _core.ssm_ess_curves(
                None,
                "identity",
                np.zeros((1, L, 1)),
                np.zeros((1, L, 1)),
                method,
                atol,
                rtol,
                _positions_list(positions),
            )
        z = np.zeros(batch + (n_pos,))
        return _finish(z, z.copy(), method) if method == "both" else z
    if path == "exact" and gated:
        return _conv_gated(hb, g1, g2, L, k, batch, method, atol, rtol, positions)
    if path == "exact":
        Bf, Cf = _conv_exact_factors(hb, L, k)
    else:
        Bf, Cf = _conv_fast_factors(hb, L, k, accuracy, max_rank, seed)
    tol, ent = _core.ssm_ess_curves(None, "identity", Bf, Cf, method, atol, rtol, _positions_list(positions))
    shape = batch + (tol if tol is not None else ent).shape[-1:]  # type: ignore[union-attr]
    tol = None if tol is None else tol.reshape(shape)
    ent = None if ent is None else ent.reshape(shape)
    return _finish(tol, ent, method)
