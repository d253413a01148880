"""Built-in example operators, made in code (no model, no download).

Each function returns one causal ``L x L`` float64 operator ``T`` (``y = T u``) of a
classic sequence-mixing layer, with a known bound on its ESS:

* :func:`softmax_attention`: causal softmax attention of random queries and keys
  (typically full rank, ``min(t, L-t)``);
* :func:`selective_ssm_channel`: one channel of a Mamba-style selective SSM with state
  size ``N`` (rank ``<= N``);
* :func:`causal_convolution`: a depthwise causal convolution with ``k`` taps
  (rank ``<= k - 1``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _args

__all__ = ["softmax_attention", "selective_ssm_channel", "causal_convolution", "examples"]


def softmax_attention(L: int, d: int = 64, *, seed: int = 0) -> npt.NDArray[np.float64]:
    """``T[t, s] = softmax_s(q_t . k_s / sqrt(d))`` over ``s <= t``, random Gaussian ``q``, ``k``.

    Examples
    --------
    >>> import ess
    >>> T = ess.examples.softmax_attention(6, d=4)
    >>> T.shape, T.sum(axis=1).round(12)
    ((6, 6), array([1., 1., 1., 1., 1., 1.]))
    >>> ess.effective_state_size(T, method="tolerance")
    array([0., 1., 2., 3., 2., 1.])
    """
    _args.gate("L", 3.0 * 8 * L * L, f"the {L} x {L} operator")
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((L, d))
    k = rng.standard_normal((L, d))
    scores = q @ k.T / np.sqrt(d)
    scores[np.triu_indices(L, 1)] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    w = np.exp(scores)
    return np.asarray(w / w.sum(axis=1, keepdims=True), dtype=np.float64)


def selective_ssm_channel(L: int, N: int = 16, *, seed: int = 0) -> npt.NDArray[np.float64]:
    """One channel of a selective SSM (Mamba/S6): ``T[t, s] = sum_n C_t[n] exp(A[n] (c_t - c_s)) Delta_s B_s[n]``
    for ``s <= t``, with ``c = cumsum(Delta)``, ``A < 0`` diagonal, input-dependent ``Delta, B, C``.

    Examples
    --------
    >>> import ess
    >>> T = ess.examples.selective_ssm_channel(12, N=2)
    >>> ess.effective_state_size(T, method="tolerance")      # never above the state size N = 2
    array([0., 1., 2., 2., 2., 2., 2., 2., 2., 2., 2., 1.])
    """
    rng = np.random.default_rng(seed)
    A = -np.exp(rng.uniform(np.log(0.01), np.log(1.0), N))
    delta = np.log1p(np.exp(rng.standard_normal(L) - 1.0))  # softplus
    B = rng.standard_normal((L, N))
    C = rng.standard_normal((L, N))
    c = np.cumsum(delta)
    decay = np.exp(A[None, None, :] * (c[:, None, None] - c[None, :, None]))  # (t, s, n)
    T = np.einsum(
        "tn,tsn,sn->ts",
        C,
        np.where((np.arange(L)[:, None] >= np.arange(L)[None, :])[..., None], decay, 0.0),
        B * delta[:, None],
    )
    return np.asarray(T, dtype=np.float64)


def causal_convolution(L: int, k: int = 4, *, seed: int = 0) -> npt.NDArray[np.float64]:
    """Banded Toeplitz ``T[t, s] = h[t - s]`` for ``0 <= t - s < k`` (a depthwise causal conv).

    Examples
    --------
    >>> import ess
    >>> T = ess.examples.causal_convolution(8, k=3)
    >>> (T != 0).astype(int)[:4, :4]
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [0, 1, 1, 1]])
    >>> ess.effective_state_size(T, method="tolerance")      # at most k - 1 = 2
    array([0., 1., 2., 2., 2., 2., 2., 1.])
    """
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(k)
    T = np.zeros((L, L))
    for lag in range(min(k, L)):
        T += np.diag(np.full(L - lag, h[lag]), -lag)
    return T


def examples(L: int = 256) -> dict[str, tuple[npt.NDArray[np.float64], int]]:
    """Name -> (operator, theoretical state size) for the three examples at length ``L``.

    Examples
    --------
    >>> import ess
    >>> for name, (T, tss) in ess.examples.examples(L=32).items():
    ...     print(f"{name}: shape {T.shape}, TSS {tss}, max ESS {ess.effective_state_size(T, method='tolerance').max():.0f}")
    softmax attention (d=64): shape (32, 32), TSS 32, max ESS 16
    selective SSM channel (N=16): shape (32, 32), TSS 16, max ESS 16
    causal convolution (k=4): shape (32, 32), TSS 3, max ESS 3
    """
    return {
        "softmax attention (d=64)": (softmax_attention(L), L),
        "selective SSM channel (N=16)": (selective_ssm_channel(L, 16), 16),
        "causal convolution (k=4)": (causal_convolution(L, 4), 3),
    }
