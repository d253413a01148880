"""Dense ESS with torch on any device (the GPU route of :func:`ess.effective_state_size`).

The Rust kernel (:mod:`ess._core`) sweeps each operator with updated QR factors on the host. This
module is the route for operators that live on an accelerator (or for a torch-only environment):
for every requested split ``t`` it forms the block ``H_t = T[:, t:, :t]`` of *all* operators of the
batch at once and computes their singular values with batched torch linear algebra on the
operators' device. Nothing of the operators is copied to the host; only the curves (``batch x
n_positions`` numbers) come back.

Conventions (identical to the Rust kernel, see ``rust/ess-core/src/ess/dense.rs`` and
:func:`ess.effective_state_size`):

* only the strictly lower triangle enters any block;
* threshold ``tau``: neither ``atol`` nor ``rtol``: ``max(L-t, t) * eps * sigma_max(H_t)`` with ``eps``
  of the input dtype; ``atol`` alone: ``atol``; ``rtol`` alone: ``rtol * sigma_max``; both:
  ``max(atol, rtol * sigma_max)``; tolerance-ESS = number of singular values strictly above ``tau``;
* entropy-ESS ``exp(-sum p ln p)`` with ``p = sigma / sum(sigma)`` (0 for a zero block), computed on
  ``sigma / sigma_max``;
* operators whose magnitudes are beyond ``2^±500`` are rescaled by an exact power of two (``atol``
  with them), and each block handed to the SVD is rescaled by a power of two of its own.

Spectra. ``precision="float64"`` (default): singular values by ``torch.linalg.svdvals`` of each
block (accurate to a few ``eps * sigma_max``, as the Rust kernel and a numpy SVD). For the
tolerance-ESS alone with an explicit ``atol``/``rtol`` the cheaper route is tried first: the Gram
matrix of the smaller side and ``torch.linalg.eigvalsh``; a count is accepted only where no
eigenvalue lies within a rounding bound ``4 (m + k) eps ||H_t||_F^2`` of ``tau^2``, and the operators
of a split where one does are recomputed by the SVD. ``precision="float32"``: the same in float32
(the default threshold then uses the float32 ``eps``): faster on GPUs, with the accuracy stated in
:func:`ess.effective_state_size`.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _args
from .errors import InvalidArgumentError, NonFiniteError, OutOfRangeError, ShapeError, TooLargeError

__all__ = ["torch_dense_ess", "resolve_device", "PRECISIONS"]

PRECISIONS = ("float64", "float32")


def resolve_device(device: Any) -> Any:
    """``device`` (a ``torch.device``, or a string such as ``"cuda"``, ``"cuda:1"``, ``"cpu"``) as a
    ``torch.device``; :class:`InvalidArgumentError` naming ``device`` otherwise."""
    import torch

    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise InvalidArgumentError(
            f"device: expected a torch device or its name (e.g. 'cuda'), got {type(device).__name__} {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InvalidArgumentError(f"device: not a torch device: {device!r} ({str(e).splitlines()[0][:120]})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device: {device!r} requested but torch sees no CUDA device")
    return dev


def _free_bytes(dev: Any) -> Optional[int]:
    import torch

    if dev.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(dev)
            return int(free)
        except Exception:  # noqa: BLE001 - no estimate: no gate
            return None
    from . import _heap

    if _heap.active():  # free memory kept in the C heap during ess.analyze is not in MemAvailable
        _heap.release()
    return _args._available_bytes()


def working_bytes(batch: int, L: int, itemsize: int) -> int:
    """Bytes the route holds for a chunk of ``batch`` operators: the operators in the compute dtype,
    one block per operator (at most ``L^2 / 4`` values) and the solver's copy and workspace of it
    (two more blocks), plus the per-split vectors."""
    return int(itemsize * batch * (L * L + 3 * (L * L // 4 + L) + 8 * L))


def _chunk(batch: int, L: int, itemsize: int, dev: Any) -> int:
    """Operators per chunk that fit in the free memory of ``dev`` (all, when no estimate); at least one
    or :class:`TooLargeError` naming ``T``."""
    free = _free_bytes(dev)
    if free is None:
        return max(batch, 1)
    per = working_bytes(1, L, itemsize)
    usable = int(free * 0.8)
    if per > usable:
        raise TooLargeError(
            f"T: one operator of length L = {L} needs about {per / 2**30:.2f} GiB of working memory on {dev} "
            f"but {free / 2**30:.2f} GiB is free (fewer split points do not reduce it); use a shorter sequence, "
            "precision='float32', or another device"
        )
    return max(1, min(batch, usable // per))


def _pow2_exponent(amax: Any) -> Any:
    """Per operator, the exponent ``e`` with ``amax * 2^e`` near 1 (0 where ``amax == 0``)."""
    import torch

    pos = amax > 0
    e = torch.where(
        pos, -torch.round(torch.log2(torch.where(pos, amax, torch.ones_like(amax)))), torch.zeros_like(amax)
    )
    return e


def _thresholds(smax: Any, m: int, n: int, eps: float, atol: Any, rtol: Optional[float]) -> Any:
    """``tau`` per operator for blocks ``m x n`` with largest singular value ``smax`` (a tensor)."""
    import torch

    if atol is None and rtol is None:
        return max(m, n) * eps * smax
    if rtol is None:
        return atol.to(smax.dtype).expand_as(smax)
    r = rtol * smax
    return r if atol is None else torch.maximum(atol.to(smax.dtype), r)


def _entropy(s: Any) -> Any:
    """Entropy effective rank per row of ``s`` (singular values, any order); 0 for a zero row."""
    import torch

    smax = s.amax(dim=-1)
    safe = torch.where(smax > 0, smax, torch.ones_like(smax))
    x = s / safe[:, None]
    pos = x > 0
    xs = torch.where(pos, x, torch.ones_like(x))
    total = torch.where(pos, x, torch.zeros_like(x)).sum(dim=-1)
    xlogx = torch.where(pos, x * torch.log(xs), torch.zeros_like(x)).sum(dim=-1)
    tot_safe = torch.where(total > 0, total, torch.ones_like(total))
    h = torch.exp(torch.log(tot_safe) - xlogx / tot_safe)
    return torch.where(smax > 0, h, torch.zeros_like(h))


def _svd_values(H: Any) -> Any:
    """Singular values of each block of ``H`` (B, m, n), each block rescaled by a power of two of its own
    for the SVD and scaled back (exact)."""
    import torch

    bmax = H.abs().amax(dim=(-2, -1))
    e = _pow2_exponent(bmax)
    # 2^e in two factors: 2^e alone can overflow float32 for a block of subnormal magnitude
    e1 = torch.trunc(e / 2)
    e2 = e - e1
    s = torch.linalg.svdvals(H * torch.exp2(e1)[:, None, None] * torch.exp2(e2)[:, None, None])
    return s * torch.exp2(-e1)[:, None] * torch.exp2(-e2)[:, None]


def _gram_counts(H: Any, m: int, n: int, eps: float, eps_c: float, atol: Any, rtol: Optional[float]) -> Tuple[Any, Any]:
    """Tolerance counts from the Gram matrix of the smaller side, and the flags of the operators whose
    count the rounding of that route could change (to be recomputed by the SVD)."""
    import torch

    G = H.mT @ H if n <= m else H @ H.mT
    k = G.shape[-1]
    lam = torch.linalg.eigvalsh(G)
    lmax = lam[:, -1].clamp_min(0)
    smax = torch.sqrt(lmax)
    tau = _thresholds(smax, m, n, eps, atol, rtol)
    tau2 = tau * tau
    fro2 = G.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    bound = 4.0 * (m + k) * eps_c * fro2  # rounding of the Gram and of eigvalsh, in the compute precision
    count = (lam > tau2[:, None]).sum(dim=-1)
    unsure = ((lam - tau2[:, None]).abs() <= bound[:, None]).any(dim=-1)
    return count, unsure


def _as_tensor(T: Any, eps_input: Optional[float], precision: str) -> Tuple[Any, float]:
    """``T`` as a detached real torch tensor ``(..., L, L)``, and the machine epsilon of its input
    dtype (half types count as float32, as on the host route; at least float32's in float32 mode)."""
    import torch

    if isinstance(T, np.ndarray):
        T = torch.from_numpy(np.ascontiguousarray(T))
    if not isinstance(T, torch.Tensor):
        raise InvalidArgumentError(f"T: expected a torch tensor or numpy array, got {type(T).__name__}")
    T = T.detach()
    if T.is_complex():
        from .errors import DTypeError

        raise DTypeError(f"T: complex tensors are not supported (dtype {T.dtype})")
    if eps_input is None:
        if T.dtype == torch.float64 or not T.is_floating_point():
            eps_input = float(np.finfo(np.float64).eps)
        else:
            eps_input = float(np.finfo(np.float32).eps)
    if precision == "float32":
        eps_input = max(eps_input, float(np.finfo(np.float32).eps))
    if T.dim() < 2 or T.shape[-1] != T.shape[-2]:
        raise ShapeError(f"T: expected (..., L, L), got shape {tuple(T.shape)}")
    if int(T.shape[-1]) == 0:
        raise ShapeError("T: the operator is empty (L = 0)")
    return T, eps_input


def _split_list(positions: Optional[Sequence[int]], L: int) -> List[int]:
    """The split points as a list (all of ``0..L-1`` by default), checked: in range, increasing."""
    pos = list(range(L)) if positions is None else [int(p) for p in positions]
    for i, p in enumerate(pos):
        if not 0 <= p < L:
            raise OutOfRangeError(f"positions: positions[{i}] = {p} is outside [0, {L}) for sequence length L = {L}")
        if i and pos[i - 1] >= p:
            raise OutOfRangeError(
                f"positions: must be strictly increasing; positions[{i - 1}] = {pos[i - 1]} >= positions[{i}] = {p}"
            )
    return pos


def torch_dense_ess(
    T: Any,
    *,
    device: Any,
    method: str,
    atol: Optional[float],
    rtol: Optional[float],
    positions: Optional[Sequence[int]],
    precision: str = "float64",
    eps_input: Optional[float] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Tolerance and entropy curves (numpy float64 ``(..., n_positions)``, ``None`` for a curve not
    asked for) of the causal operators ``T`` (a torch tensor or numpy array ``(..., L, L)``) computed
    with torch on ``device``. Arguments are those of :func:`ess.effective_state_size` (already
    checked there, except what only this route sees)."""
    import torch

    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    cdtype = torch.float64 if precision == "float64" else torch.float32
    T, eps_input = _as_tensor(T, eps_input, precision)
    lead = tuple(T.shape[:-2])
    L = int(T.shape[-1])
    pos = _split_list(positions, L)
    batch = int(np.prod(lead)) if lead else 1
    want_tol = method in ("tolerance", "both")
    want_ent = method in ("entropy", "both")
    tol_out = np.zeros((batch, len(pos))) if want_tol else None
    ent_out = np.zeros((batch, len(pos))) if want_ent else None
    if batch and pos and L >= 2:
        Tf = T.reshape(batch, L, L)
        if not bool(torch.isfinite(Tf).all()):
            raise NonFiniteError("T: contains NaN or infinity")
        item = torch.empty((), dtype=cdtype).element_size()
        chunk = _chunk(batch, L, item, dev)
        for c0 in range(0, batch, chunk):
            c1 = min(batch, c0 + chunk)
            tol_c, ent_c = _chunk_curves(Tf[c0:c1], dev, cdtype, L, pos, method, atol, rtol, eps_input)
            if tol_out is not None:
                tol_out[c0:c1] = tol_c
            if ent_out is not None:
                ent_out[c0:c1] = ent_c
    shape = lead + (len(pos),)
    return (None if tol_out is None else tol_out.reshape(shape), None if ent_out is None else ent_out.reshape(shape))


def _chunk_curves(
    Tc: Any,
    dev: Any,
    cdtype: Any,
    L: int,
    pos: List[int],
    method: str,
    atol: Optional[float],
    rtol: Optional[float],
    eps: float,
) -> Tuple[np.ndarray, np.ndarray]:
    import torch

    B = int(Tc.shape[0])
    # the strictly lower triangle on the device (no copy to the host; a float32 input in float32 mode stays float32)
    wide = torch.float32 if (cdtype == torch.float32 and Tc.dtype == torch.float32) else torch.float64
    A = torch.tril(Tc.to(device=dev, dtype=wide), -1)
    amax = A.abs().amax(dim=(-2, -1))
    big = torch.log2(torch.where(amax > 0, amax, torch.ones_like(amax))).abs() > 500
    e = torch.where(big, _pow2_exponent(amax), torch.zeros_like(amax))
    if bool(big.any()):
        A = A * torch.exp2(e)[:, None, None]
    A = A.to(cdtype)
    atol_t = (
        None
        if atol is None
        else (torch.full((B,), atol, dtype=torch.float64, device=dev) * torch.exp2(e.to(torch.float64))).to(cdtype)
    )
    want_tol = method in ("tolerance", "both")
    want_ent = method in ("entropy", "both")
    tol = torch.zeros((B, len(pos)), dtype=torch.float64, device=dev)
    ent = torch.zeros((B, len(pos)), dtype=torch.float64, device=dev)
    try_gram = method == "tolerance" and (atol is not None or rtol is not None)
    eps_c = float(torch.finfo(cdtype).eps)
    for j, t in enumerate(pos):
        if t == 0:
            continue
        m, n = L - t, t
        H = A[:, t:, :t]
        if try_gram:
            count, unsure = _gram_counts(H, m, n, eps, eps_c, atol_t, rtol)
            if bool(unsure.any()):
                idx = torch.nonzero(unsure).reshape(-1)
                s = _svd_values(H[idx])
                tau = _thresholds(s.amax(dim=-1), m, n, eps, None if atol_t is None else atol_t[idx], rtol)
                count[idx] = (s > tau[:, None]).sum(dim=-1)
            tol[:, j] = count.to(torch.float64)
            continue
        s = _svd_values(H)
        if want_tol:
            tau = _thresholds(s.amax(dim=-1), m, n, eps, atol_t, rtol)
            tol[:, j] = (s > tau[:, None]).sum(dim=-1).to(torch.float64)
        if want_ent:
            ent[:, j] = _entropy(s.to(torch.float64))
    return tol.cpu().numpy(), ent.cpu().numpy()
