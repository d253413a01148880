"""Slow, obviously-correct numpy references for the tests."""

from __future__ import annotations

from typing import Optional

import numpy as np


def block_singular_values(T: np.ndarray, t: int) -> np.ndarray:
    """Singular values of H_t = T[t:, :t] (descending), in float64."""
    return np.linalg.svd(np.asarray(T, dtype=np.float64)[t:, :t], compute_uv=False)


def threshold(s: np.ndarray, m: int, n: int, eps: float, atol: Optional[float], rtol: Optional[float]) -> float:
    smax = float(s[0]) if s.size else 0.0
    if atol is None and rtol is None:
        return max(m, n) * eps * smax
    if rtol is None:
        return float(atol)  # type: ignore[arg-type]
    if atol is None:
        return rtol * smax
    return max(atol, rtol * smax)


def entropy_ess(s: np.ndarray) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def ess_reference(T: np.ndarray, *, atol=None, rtol=None, eps=None):
    """(tolerance curve, entropy curve, per-split (sigma, tau)) of one L x L operator."""
    T = np.asarray(T)
    if eps is None:
        eps = float(np.finfo(T.dtype).eps)
    T = np.tril(np.asarray(T, dtype=np.float64), -1)  # the only part any block sees
    L = T.shape[-1]
    tol = np.zeros(L)
    ent = np.zeros(L)
    detail = [(np.zeros(0), 0.0)]
    for t in range(1, L):
        # Each block is rescaled by an exact power of two of its own so that subnormal
        # entries (where LAPACK loses all precision) are compared on their exact values.
        H = T[t:, :t]
        bmax = float(np.abs(H).max(initial=0.0))
        e = -int(np.round(np.log2(bmax))) if bmax > 0 else 0
        s = np.linalg.svd(np.ldexp(H, e), compute_uv=False)
        tau = threshold(s, L - t, t, eps, None if atol is None else float(np.ldexp(atol, e)), rtol)
        tol[t] = np.sum(s > tau)
        ent[t] = entropy_ess(s)
        detail.append((s, tau))
    return tol, ent, detail


def near_threshold(s: np.ndarray, tau: float, rel: float = 1e-8) -> bool:
    """True when a singular value lies within `rel` (relative) of the threshold."""
    return bool(np.any(np.abs(s - tau) <= rel * max(tau, np.finfo(float).tiny)))


# --- structured operators with known rank bounds --------------------------------------


def ssm_operator(rng: np.random.Generator, L: int, N: int, decay=(0.5, 0.99)) -> np.ndarray:
    """Time-varying diagonal SSM: T[t, s] = c_t^T diag(prod_{r=s+1..t} a_r) b_s (s <= t)."""
    a = rng.uniform(*decay, size=(L, N))
    b = rng.standard_normal((L, N))
    c = rng.standard_normal((L, N))
    T = np.zeros((L, L))
    for s in range(L):
        state = b[s].copy()
        for t in range(s, L):
            if t > s:
                state = a[t] * state
            T[t, s] = c[t] @ state
    return T


def linear_attention_operator(rng: np.random.Generator, L: int, dk: int) -> np.ndarray:
    q = rng.standard_normal((L, dk))
    k = rng.standard_normal((L, dk))
    return np.tril(q @ k.T)


def conv_operator(rng: np.random.Generator, L: int, k: int) -> np.ndarray:
    h = rng.standard_normal(k)
    T = np.zeros((L, L))
    for lag in range(min(k, L)):
        T += np.diag(np.full(L - lag, h[lag]), -lag)
    return T


def sliding_window_attention(rng: np.random.Generator, L: int, w: int, d: int = 8) -> np.ndarray:
    q = rng.standard_normal((L, d))
    k = rng.standard_normal((L, d))
    S = q @ k.T / np.sqrt(d)
    i, j = np.indices((L, L))
    S[(j > i) | (i - j >= w)] = -np.inf
    S -= S.max(axis=1, keepdims=True)
    W = np.exp(S)
    return W / W.sum(axis=1, keepdims=True)
