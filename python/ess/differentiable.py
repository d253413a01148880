"""Differentiable effective state size in PyTorch (CPU and GPU), for use inside training.

:func:`entropy_ess` is the entropy-ESS of :func:`ess.effective_state_size` (``method="entropy"``)
as a torch function of the operators, with gradients; :func:`soft_tolerance_ess` is a smooth
surrogate of the tolerance count. Both take causal operators ``T`` of shape ``(..., L, L)``
(any leading batch dimensions, float32 or float64, on any device) and return ``(..., L)`` (or
``(..., len(positions))``) with position 0 equal to 0, like the Rust kernel.

Conventions (identical to the Rust kernel, ``rust/ess-core/src/ess/mod.rs``): the block of split
``t`` is ``H_t = T[..., t:, :t]`` (only the strictly lower triangle enters); with ``sigma`` its
singular values and ``p_i = sigma_i / sum_j sigma_j``, the entropy-ESS is
``exp(-sum_i p_i ln p_i)`` (zero singular values contribute nothing), and 0 for an all-zero block.

Gradients
---------
The singular values come from :func:`torch.linalg.svdvals`, whose backward
``U diag(g) V^T`` is finite at repeated singular values as long as equal singular values get
equal coefficients ``g`` (true for any symmetric function of them, as here). The entropy is not
Lipschitz at a zero singular value: ``d ESS / d sigma_i`` behaves like ``-ln p_i`` and is
``+inf`` at ``p_i = 0`` (a new direction of memory appears infinitely fast). The backward here
uses a regularised derivative instead: the exact one wherever ``p_i >= floor`` (default
``1e-6``), damped linearly to 0 below it (``c_i * p_i / floor`` with ``c_i`` evaluated at
``p_i = floor``). It is continuous in ``sigma``, finite everywhere, and 0 at exactly zero
singular values; the latter is also what makes it well defined there (the singular vectors of
a zero singular value are arbitrary on each side). The forward value is exact.

Cost
----
``"blocks"`` (default on CPU): one batched values-only SVD per split, the block's own size:
``sum_t (L-t) t min(t, L-t) ~ L^4/19`` flops per operator for all splits (the same order as a
naive per-split SVD; the Rust kernel's Givens sweep is faster but not differentiable), ``L``
kernel launches, memory ``O(batch L^2)`` beyond autograd's saved tensors. ``"padded"``
(default on CUDA): every requested block zero-padded to ``L x L`` (zero padding adds only zero
singular values, which contribute nothing) and all splits done in one batched SVD call, about
``L^4`` flops and ``n_positions * batch * L^2`` memory but a single launch. The backward costs
about the same again (one SVD with vectors per block). Choose ``positions`` to pay only for the
splits you need (e.g. a strided subset inside a training loop).

References
----------
R. N. Parnichkun, N. Tumma, A. W. Thomas, A. Moro, Q. An, T. Suzuki, A. Yamashita, M. Poli,
S. Massaroli, "Quantifying Memory Utilization with Effective State-Size", ICML 2025;
arXiv:2504.19561 (ESS-based regularisers in training).

Examples
--------
>>> import torch, ess.differentiable as ed
>>> T = torch.randn(2, 16, 16, dtype=torch.float64).tril().requires_grad_()
>>> e = ed.entropy_ess(T)                  # (2, 16), same values as ess.effective_state_size
>>> e[:, 1:].mean().backward()             # finite gradients in T.grad
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError

__all__ = ["entropy_ess", "soft_tolerance_ess", "entropy_ess_from_singular_values", "block_singular_values"]


def _check_T(T: torch.Tensor) -> None:
    if not isinstance(T, torch.Tensor):
        raise DTypeError(f"T: expected a torch.Tensor, got {type(T).__name__}")
    if T.dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"T: must be float32 or float64, got {T.dtype}")
    if T.dim() < 2 or T.shape[-1] != T.shape[-2] or T.shape[-1] == 0:
        raise ShapeError(f"T: expected (..., L, L) with L >= 1, got shape {tuple(T.shape)}")


def _positions(positions: Optional[Union[Sequence[int], torch.Tensor]], L: int) -> list[int]:
    if positions is None:
        return list(range(L))
    if isinstance(positions, torch.Tensor):
        if positions.dtype.is_floating_point or positions.dim() != 1:
            raise DTypeError("positions: must be a 1-D integer sequence")
        positions = positions.tolist()
    out: list[int] = []
    for i, p in enumerate(positions):
        if isinstance(p, bool) or not isinstance(p, int):
            try:
                import numpy as np

                if isinstance(p, np.integer):
                    p = int(p)
                else:
                    raise TypeError
            except TypeError:
                raise DTypeError(f"positions: must be integers, got {type(p).__name__} at index {i}") from None
        if not 0 <= p < L:
            raise OutOfRangeError(f"positions: positions[{i}] = {p} is outside [0, {L}) for sequence length L = {L}")
        if out and out[-1] >= p:
            raise OutOfRangeError(
                f"positions: must be strictly increasing; positions[{i - 1}] = {out[-1]} >= positions[{i}] = {p}"
            )
        out.append(p)
    return out


def block_singular_values(
    T: torch.Tensor, positions: Optional[Sequence[int]] = None, *, strategy: str = "auto"
) -> list[torch.Tensor]:
    """Singular values (descending, differentiable) of the blocks ``T[..., t:, :t]``, one tensor
    ``(..., k_t)`` per requested split (``k_t = min(t, L - t)``; ``"padded"``: ``k_t = L``, the
    extra values being zeros up to rounding). Split 0 gives an empty ``(..., 0)`` tensor.

    Examples
    --------
    >>> import torch
    >>> from ess.differentiable import block_singular_values
    >>> T = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    >>> [s.round(decimals=6) for s in block_singular_values(T, positions=[0, 1, 2])]
    [tensor([], dtype=torch.float64), tensor([1.7321], dtype=torch.float64), tensor([2., 0.], dtype=torch.float64)]
    """
    _check_T(T)
    L = T.shape[-1]
    pos = _positions(positions, L)
    if strategy == "auto":
        strategy = "padded" if T.is_cuda else "blocks"
    if strategy not in ("blocks", "padded"):
        raise InvalidArgumentError(f"strategy: expected 'auto', 'blocks' or 'padded', got {strategy!r}")
    inner = [t for t in pos if t > 0]
    empty = T.new_zeros(T.shape[:-2] + (0,))
    if strategy == "blocks":
        return [torch.linalg.svdvals(T[..., t:, :t]) if t > 0 else empty for t in pos]
    if not inner:
        return [empty for _ in pos]
    idx = torch.arange(L, device=T.device)
    tt = torch.tensor(inner, device=T.device)
    mask = (idx[None, :, None] >= tt[:, None, None]) & (idx[None, None, :] < tt[:, None, None])  # (P, L, L)
    M = T.unsqueeze(-3) * mask.to(T.dtype)  # (..., P, L, L)
    S = torch.linalg.svdvals(M)  # (..., P, L)
    out, j = [], 0
    for t in pos:
        if t == 0:
            out.append(empty)
        else:
            out.append(S[..., j, :])
            j += 1
    return out


class _EntropyESS(torch.autograd.Function):
    """exp(entropy) of p = s / sum(s) along the last axis, with a regularised backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, floor: float) -> torch.Tensor:
        smax = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_zeros(s.shape[:-1] + (1,))
        pos = smax > 0
        x = torch.where(pos, s / torch.where(pos, smax, torch.ones_like(smax)), torch.zeros_like(s))
        S = x.sum(dim=-1)
        xlogx = torch.where(x > 0, x * torch.log(torch.where(x > 0, x, torch.ones_like(x))), torch.zeros_like(x))
        Sp = torch.where(S > 0, S, torch.ones_like(S))
        H = torch.log(Sp) - xlogx.sum(dim=-1) / Sp
        out = torch.where(S > 0, torch.exp(H), torch.zeros_like(H))
        ctx.save_for_backward(s, out)
        ctx.floor = floor
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        s, out = ctx.saved_tensors
        floor = ctx.floor
        total = s.sum(dim=-1, keepdim=True)
        ok = total > 0
        tot = torch.where(ok, total, torch.ones_like(total))
        p = s / tot
        H = torch.log(torch.where(out > 0, out, torch.ones_like(out))).unsqueeze(-1)
        # exact: d exp(H) / d s_i = exp(H) * (-(ln p_i + H) / total); below the floor the same
        # expression at p_i = floor, damped linearly to 0 at p_i = 0
        lp = torch.log(p.clamp_min(floor))
        damp = (p / floor).clamp(max=1.0)
        grad = out.unsqueeze(-1) * (-(lp + H) / tot) * damp
        grad = torch.where(ok, grad, torch.zeros_like(grad))
        return g.unsqueeze(-1) * grad, None


def entropy_ess_from_singular_values(sigma: torch.Tensor, *, floor: float = 1e-6) -> torch.Tensor:
    """Entropy effective rank ``exp(-sum p ln p)``, ``p = sigma / sum(sigma)``, along the last
    axis of ``sigma`` (non-negative; 0 for an all-zero row), with the regularised backward
    described in the module docstring (``floor``: share below which the derivative is damped).

    Examples
    --------
    >>> import torch
    >>> from ess.differentiable import entropy_ess_from_singular_values
    >>> sigma = torch.tensor([[1.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    >>> e = entropy_ess_from_singular_values(sigma)
    >>> e.detach().round(decimals=4)           # two equal values: 2; an all-zero row: 0
    tensor([2.0000, 1.7548, 0.0000], dtype=torch.float64)
    >>> e.sum().backward()
    >>> bool(torch.isfinite(sigma.grad).all())  # finite even at the zero singular values
    True
    """
    if not (0 < floor < 1):
        raise InvalidArgumentError(f"floor: must be in (0, 1), got {floor}")
    return _EntropyESS.apply(sigma, float(floor))


def _stack(vals: list[torch.Tensor], T: torch.Tensor) -> torch.Tensor:
    if not vals:
        return T.new_zeros(T.shape[:-2] + (0,))
    return torch.stack(vals, dim=-1)


def entropy_ess(
    T: torch.Tensor,
    positions: Optional[Sequence[int]] = None,
    *,
    floor: float = 1e-6,
    strategy: str = "auto",
) -> torch.Tensor:
    """Entropy-ESS of causal operators at every split (or at ``positions``), differentiable.

    Parameters
    ----------
    T : tensor ``(..., L, L)``, float32 or float64, any device
        Causal operators (row ``t`` is output ``t``); only the strictly lower triangle enters.
    positions : strictly increasing split points in ``[0, L)``; default all ``L``.
    floor : share ``p_i`` below which the derivative is damped (forward values are exact).
    strategy : ``"blocks"``, ``"padded"`` or ``"auto"`` (padded on CUDA); see *Cost* above.

    Returns
    -------
    tensor ``(..., n_positions)`` of ``T``'s dtype; 0 at split 0 and for all-zero blocks. Equal
    (to rounding) to ``ess.effective_state_size(T, method="entropy", positions=positions)``.

    Examples
    --------
    >>> import torch, ess.differentiable as ed
    >>> T = torch.tril(torch.ones(8, 8, dtype=torch.float64))   # running sum: every block has rank 1
    >>> ed.entropy_ess(T).round(decimals=6)   # tiny rounding singular values count (almost) nothing
    tensor([0., 1., 1., 1., 1., 1., 1., 1.], dtype=torch.float64)
    """
    sv = block_singular_values(T, positions, strategy=strategy)
    return _stack([entropy_ess_from_singular_values(s, floor=floor) if s.shape[-1] else s.sum(-1) * 0 for s in sv], T)


def soft_tolerance_ess(
    T: torch.Tensor,
    positions: Optional[Sequence[int]] = None,
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    temperature: float = 0.1,
    strategy: str = "auto",
) -> torch.Tensor:
    """Smooth surrogate of the tolerance-ESS: ``sum_i sigmoid((ln sigma_i - ln tau) / temperature)``.

    ``tau`` follows the kernel's convention: ``rtol * sigma_max`` (``rtol`` only), ``atol``, or
    ``max(atol, rtol * sigma_max)``; one of them is required (the default numerical-rank
    threshold ``~1e-16 sigma_max`` makes no sense for a surrogate). Each singular value counts
    between 0 and 1 by how many e-folds (in units of ``temperature``) it lies above ``tau``;
    as ``temperature -> 0`` the surrogate tends to the count (a value at exactly ``tau`` counts
    1/2). The derivative in ``sigma_i`` is ``s(1-s) / (temperature sigma_i)``, which tends to 0 at
    ``sigma_i -> 0`` for ``temperature < 1`` (zero singular values get coefficient 0, so it is
    well defined there); ``sigma_max`` is taken with ``amax`` (ties share the gradient). This is
    a surrogate, not the measure: report the tolerance-ESS from :func:`ess.effective_state_size`.

    Examples
    --------
    >>> import torch, ess.differentiable as ed
    >>> T = torch.tril(torch.ones(8, 8, dtype=torch.float64), -1)
    >>> s = ed.soft_tolerance_ess(T, rtol=1e-3, temperature=0.05)   # one value >> tau, the rest ~0
    >>> bool(((s[1:] - 1).abs() < 1e-6).all())
    True
    """
    if rtol is None and atol is None:
        raise InvalidArgumentError("rtol, atol: the surrogate needs an explicit threshold (rtol and/or atol)")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise InvalidArgumentError(f"{name}: must be a finite positive number, got {v}")
    if not (0 < temperature < 1):
        raise InvalidArgumentError(f"temperature: must be in (0, 1), got {temperature}")
    sv = block_singular_values(T, positions, strategy=strategy)
    tiny = torch.finfo(T.dtype).tiny
    outs = []
    for s in sv:
        if s.shape[-1] == 0:
            outs.append(s.sum(-1) * 0)
            continue
        smax = s.amax(dim=-1, keepdim=True)
        if rtol is not None and atol is not None:
            tau = torch.clamp(rtol * smax, min=atol)
        elif rtol is not None:
            tau = rtol * smax
        else:
            tau = torch.full_like(smax, float(atol))  # type: ignore[arg-type]
        z = (torch.log(s.clamp_min(tiny)) - torch.log(tau.clamp_min(tiny))) / temperature
        outs.append(torch.where(tau > 0, torch.sigmoid(z), torch.zeros_like(z)).sum(-1))
    return _stack(outs, T)
