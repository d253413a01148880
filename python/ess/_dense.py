"""Dense effective state size (the Python face of the Rust kernel)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, Union, overload

import numpy as np
import numpy.typing as npt

from . import _args, _core
from .errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError

__all__ = ["effective_state_size", "EssCurves", "split_points"]


class EssCurves(NamedTuple):
    """Both ESS curves of one call (``method="both"``), each float64 ``(..., n_positions)``.

    Examples
    --------
    >>> import ess
    >>> c = ess.effective_state_size(ess.examples.causal_convolution(6, k=3), method="both")
    >>> c.tolerance
    array([0., 1., 2., 2., 2., 1.])
    >>> c.entropy.round(3)
    array([0.   , 1.   , 1.989, 1.989, 1.989, 1.   ])
    >>> tol, ent = c                    # a NamedTuple: unpacks like a pair
    """

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


def split_points(
    L: int, *, stride: Optional[int] = None, num: Optional[int] = None, spacing: str = "linear"
) -> npt.NDArray[np.int64]:
    """A subset of the split points ``0..L-1`` for long contexts (``positions=`` of
    :func:`effective_state_size` and :func:`ess.analyze`, or ``--positions`` of the CLI).

    Every split costs about the same (one spectrum of a block of the operator), so the time of a
    curve falls in proportion to the number of points kept.

    Parameters
    ----------
    L : int
        Sequence length (``>= 1``).
    stride : int, optional
        Every ``stride``-th split from 0: ``0, stride, 2*stride, ... < L``. The mean of a curve over
        these points estimates its mean over all points (the per-layer averages of a report).
    num : int, optional
        About ``num`` points (duplicates after rounding are merged): with ``spacing="linear"``
        evenly spaced over ``[0, L-1]`` (both ends included); with ``spacing="log"`` geometrically
        spaced over ``[1, L-1]``, dense at the start of the sequence, for the *shape* of a curve on
        a log axis (its plain mean over-weights the early splits, where ESS is small; do not use it
        for averages).
    spacing : {"linear", "log"}
        With ``num`` only.

    Returns
    -------
    int64 array, strictly increasing, within ``[0, L)``.

    Notes
    -----
    Error of subsets in the per-layer averages (mean over heads and splits of the tolerance- and
    entropy-ESS), measured against all ``L`` splits of the same run (``python benches/analyze.py
    --subset-errors``; largest relative error over the layers):

    * random-init GPT-2-small shape (layers 0, 3, 7, 11; 12 heads each), L = 512: stride 4:
      tolerance 0.00 %, entropy 0.03 %; stride 8: 0.00 %, 0.09 %; stride 32: 0.00 %, 0.78 %;
    * random-init Llama shape (4 layers, 8 heads of dimension 64), L = 512: stride 8: 0.00 %,
      0.15 %; stride 32: 0.00 %, 1.09 %;
    * the built-in hybrid model (trained) on its 8 shipped MQAR sequences, L = 34: stride 2:
      1.1 %, 1.2 %; stride 4: 6.6 %, 6.5 %; stride 8: 20 %, 19 %;
    * log-spaced points (``num=64`` at L = 512): 45 % and 40 %: they are for the shape of a curve,
      not its mean.

    The tolerance-ESS of a random-init attention head is full rank, ``min(t, L - t)`` at every
    split, which a stride samples exactly; trained heads on real text vary more from split to
    split (the built-in model above, though at a short L). Check a stride on one sequence against
    all splits before relying on it for a trained model.

    Examples
    --------
    >>> import ess
    >>> ess.split_points(10, stride=4)
    array([0, 4, 8])
    >>> ess.split_points(1000, num=5, spacing="log")
    array([  1,   6,  32, 178, 999])
    """
    L = _args.integer(L, "L", lo=1)
    spacing = _args.choice(spacing, "spacing", ("linear", "log"))
    if (stride is None) == (num is None):
        raise InvalidArgumentError("stride, num: give exactly one of them")
    if stride is not None:
        if spacing != "linear":
            raise InvalidArgumentError("spacing: 'log' needs num=..., not stride=...")
        step = _args.integer(stride, "stride", lo=1)
        return np.arange(0, L, step, dtype=np.int64)
    k = _args.integer(num, "num", lo=1)
    if spacing == "linear":
        pts = np.rint(np.linspace(0, L - 1, k))
    else:
        if L < 2:
            return np.zeros(0, dtype=np.int64)
        pts = np.rint(np.geomspace(1, L - 1, k))
    return np.unique(pts.astype(np.int64))


def _torch_operand(T: Any) -> Any:
    """``T`` for the torch route: a torch tensor stays as it is (on its device, never copied to the
    host here); anything else goes through the usual host checks."""
    if type(T).__module__.startswith("torch") and hasattr(T, "detach"):
        import torch

        if T.is_sparse or T.layout != torch.strided:
            raise InvalidArgumentError(
                f"T: sparse torch tensors are not accepted (layout {T.layout}); pass T.to_dense()"
            )
        if not T.is_floating_point():  # half types are accepted (widened), as on the host route
            raise DTypeError(f"T: dtype {T.dtype} is not supported; pass a floating-point tensor (e.g. x.double())")
        return T
    T = _args.array(T, "T", kinds="fiub")
    if T.dtype not in (np.float32, np.float64):
        raise DTypeError(f"T: dtype {T.dtype} is not supported; pass float32 or float64 (e.g. x.astype(numpy.float64))")
    return T


@overload
def effective_state_size(
    T: npt.ArrayLike,
    *,
    method: Literal["both"],
    atol: Optional[float] = ...,
    rtol: Optional[float] = ...,
    positions: Optional[npt.ArrayLike] = ...,
    device: Any = ...,
    precision: str = ...,
) -> EssCurves: ...


@overload
def effective_state_size(
    T: npt.ArrayLike,
    *,
    method: Literal["tolerance", "entropy"] = ...,
    atol: Optional[float] = ...,
    rtol: Optional[float] = ...,
    positions: Optional[npt.ArrayLike] = ...,
    device: Any = ...,
    precision: str = ...,
) -> npt.NDArray[np.float64]: ...


@overload
def effective_state_size(
    T: npt.ArrayLike,
    *,
    method: str = ...,
    atol: Optional[float] = ...,
    rtol: Optional[float] = ...,
    positions: Optional[npt.ArrayLike] = ...,
    device: Any = ...,
    precision: str = ...,
) -> Union[npt.NDArray[np.float64], EssCurves]: ...


def effective_state_size(
    T: npt.ArrayLike,
    *,
    method: str = "tolerance",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[npt.ArrayLike] = None,
    device: Any = None,
    precision: str = "float64",
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
        Strictly increasing split points in ``[0, L)``; only those are computed (the cost of a split
        does not depend on the others). :func:`ess.split_points` builds strided and log-spaced sets.
    device : torch device or its name, optional
        ``None`` (default): the Rust kernel on the host (a torch tensor, on any device, is copied to
        the host). A device (``"cuda"``, ``"cuda:1"``, ``torch.device(...)``, or ``"cpu"``): the
        torch route on that device (module :mod:`ess._torch_dense`): for each split, the
        singular values of the blocks of all operators of the batch at once, by batched
        ``torch.linalg.svdvals`` (for the tolerance-ESS alone with ``atol``/``rtol``: the Gram
        matrix of the smaller side and ``eigvalsh``, the SVD where the Gram's rounding could change
        a count). A tensor already on that device is never copied to the host; only the curves
        come back. Same thresholds and entropy as the kernel. ``device="cpu"`` runs the same code
        on CPU torch (how the route is tested; the Rust kernel is faster there). Memory is
        estimated first: operators are processed in chunks that fit the device's free memory, and
        :class:`~ess.errors.TooLargeError` (naming ``T``) is raised if one operator does not fit.
    precision : {"float64", "float32"}
        Arithmetic of the torch route (the Rust kernel always computes in float64 and accepts
        only ``"float64"`` here). ``"float64"`` gives the kernel's answers: tolerance counts equal
        except where a singular value lies within about ``1e-8`` (relative) of the threshold,
        entropy within ``1e-6`` relative. ``"float32"`` is faster on GPUs; its default threshold
        uses the float32 ``eps`` (whatever the input dtype), so it cannot resolve ranks below
        about ``1e-6 * sigma_max``. Measured against the float64 kernel on CPU torch
        (``benches/analyze.py --gpu`` prints the same figures on a GPU): on softmax-attention
        operators (8 x random ``q, k`` of dimension 64, L = 128) and random-init GPT-2-small heads
        (layers 0 and 11, L = 256), tolerance counts with ``rtol=1e-3`` (and ``1e-2`` on the
        softmax operators) were equal at every split; with the default threshold (float32 ``eps`` against the kernel's float64
        ``eps``) they differed at 0.1 % to 0.5 % of the GPT-2 splits (by at most 2); entropy-ESS
        was within ``9e-7`` relative (``9e-8`` on the softmax operators).

    Returns
    -------
    float64 array ``(..., L)`` (or ``(..., len(positions))``), or :class:`EssCurves`.

    Notes
    -----
    ``0 <= entropy-ESS <= exact rank <= min(t, L-t)``. The curve near the end of the
    sequence is bounded by ``L - t`` (boundary effect). Computation is in float64 for both
    input dtypes; the GIL is released. See the README for the algorithm and its cost.

    References
    ----------
    R. N. Parnichkun, N. Tumma, A. W. Thomas, A. Moro, Q. An, T. Suzuki, A. Yamashita, M. Poli,
    S. Massaroli, "Quantifying Memory Utilization with Effective State-Size", ICML 2025;
    arXiv:2504.19561 (the blocks ``H_t`` and the effective state size measured on them).

    Examples
    --------
    >>> import numpy as np, ess
    >>> T = np.tril(np.ones((6, 6)))            # a running sum: rank 1 across every split
    >>> ess.effective_state_size(T)
    array([0., 1., 1., 1., 1., 1.])
    >>> ess.effective_state_size(T, device="cpu", positions=[2, 4])  # torch route, two splits
    array([1., 1.])
    """
    method = _args.choice(method, "method", ("tolerance", "entropy", "both"))
    atol = _args.real(atol, "atol", lo=0.0, allow_none=True)
    rtol = _args.real(rtol, "rtol", lo=0.0, allow_none=True)
    precision = _args.choice(precision, "precision", ("float64", "float32"))
    if device is None:
        if precision != "float64":
            raise InvalidArgumentError(
                "precision: the Rust kernel (device=None) computes in float64 only; pass device=... for the torch route"
            )
        T = _args.array(T, "T", kinds="fiub")
        tol, ent = _core.dense_ess_curves(T, method, atol, rtol, _positions_list(positions))
    else:
        from ._torch_dense import torch_dense_ess

        T = _torch_operand(T)
        tol, ent = torch_dense_ess(
            T,
            device=device,
            method=method,
            atol=atol,
            rtol=rtol,
            positions=_positions_list(positions),
            precision=precision,
        )
    if method == "both":
        assert tol is not None and ent is not None
        return EssCurves(tol, ent)
    out = tol if method == "tolerance" else ent
    assert out is not None
    return out
