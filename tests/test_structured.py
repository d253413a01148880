"""Structured ESS (ess.structured) against dense references.

References: (1) the dense kernel ``ess.effective_state_size`` on the materialised operator;
(2) a plain numpy SVD of every block ``H_t = T[t:, :t]``. Materialisation is written here
from the defining formulas (products of transitions, cumsum of step sizes), independently
of the kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.linalg import toeplitz

import ess
from ess import structured as S
from ess.errors import DTypeError, InvalidArgumentError, NonFiniteError, OutOfRangeError, ShapeError

EPS = np.finfo(np.float64).eps


# --- references ------------------------------------------------------------------------


def materialise(A, B, C, kind):
    """T[t, s] = C[t]^T A[t] ... A[s+1] B[s] for s <= t (one channel), column by column."""
    L, N = B.shape
    T = np.zeros((L, L))
    for s in range(L):
        x = B[s].astype(np.float64).copy()
        T[s, s] = C[s] @ x
        for t in range(s + 1, L):
            if kind == "scalar":
                x = A[t] * x
            elif kind == "diagonal":
                x = A[t] * x
            elif kind == "dense":
                x = A[t] @ x
            T[t, s] = C[t] @ x
    return T


def block_sigmas(T):
    L = T.shape[0]
    return [np.zeros(0)] + [np.linalg.svd(T[t:, :t], compute_uv=False) for t in range(1, L)]


def tau_of(sig, m, n, atol=None, rtol=None, eps=EPS):
    smax = sig[0] if sig.size else 0.0
    if atol is None and rtol is None:
        return max(m, n) * eps * smax
    if rtol is None:
        return atol
    if atol is None:
        return rtol * smax
    return max(atol, rtol * smax)


def entropy(sig):
    sig = sig[sig > 0]
    if sig.size == 0:
        return 0.0
    p = sig / sig.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def ambiguous(sig, tau, smax, L):
    """Splits whose count rounding may decide: a reference singular value within a band of
    the threshold (a backward-stable SVD is accurate to a few eps * sigma_max)."""
    band = 8 * EPS * smax
    return bool(np.any(np.abs(sig - tau) <= band)) or (tau > 0 and bool(np.any(np.abs(sig / tau - 1) < 1e-6)))


def compare(T, got_tol, got_ent, atol=None, rtol=None, ent_rtol=1e-6):
    """Structured curves vs the dense kernel and vs numpy per-split SVDs."""
    L = T.shape[0]
    dense = ess.effective_state_size(T, method="both", atol=atol, rtol=rtol)
    sigs = block_sigmas(T)
    assert got_tol[0] == 0 and got_ent[0] == 0
    for t in range(1, L):
        sig = sigs[t]
        tau = tau_of(sig, L - t, t, atol, rtol)
        smax = sig[0] if sig.size else 0.0
        # entropy: vs numpy and vs the dense kernel
        ref_e = entropy(sig)
        assert abs(got_ent[t] - ref_e) <= ent_rtol * max(ref_e, 1.0), (t, got_ent[t], ref_e)
        assert abs(got_ent[t] - dense.entropy[t]) <= ent_rtol * max(dense.entropy[t], 1.0)
        if not ambiguous(sig, tau, smax, L):
            assert got_tol[t] == dense.tolerance[t], (t, got_tol[t], dense.tolerance[t], sig, tau)
            assert got_tol[t] == np.sum(sig > tau)


# --- strategies ------------------------------------------------------------------------


@st.composite
def ssm_instance(draw):
    kind = draw(st.sampled_from(["identity", "scalar", "diagonal", "dense"]))
    L = draw(st.integers(1, 22))
    N = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # decay magnitudes from near 0 to above 1, log-uniform, random signs
    lo = draw(st.sampled_from([-6.0, -2.0, -0.5, 0.0]))
    hi = draw(st.sampled_from([-0.1, 0.0, 0.15, 0.4]))
    lo, hi = min(lo, hi), max(lo, hi)

    def mags(shape):
        return 10.0 ** rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)

    if kind == "identity":
        A = None
    elif kind == "scalar":
        A = mags(L)
    elif kind == "diagonal":
        A = mags((L, N))
    else:
        G = rng.standard_normal((L, N, N))
        G /= np.maximum(np.linalg.norm(G, 2, axis=(1, 2)), 1e-300)[:, None, None]
        A = G * mags(L)[:, None, None]
    B = rng.standard_normal((L, N))
    C = rng.standard_normal((L, N))
    # rank-deficient inputs now and then
    if draw(st.booleans()):
        B[:, -1] = 0.0
    if draw(st.booleans()):
        C[rng.random(L) < 0.3] = 0.0
    # overall magnitudes and a badly scaled state basis: b -> d b, c -> c / d (diagonal A
    # commutes with d, so T is unchanged)
    scale_b = 10.0 ** draw(st.sampled_from([-120, -8, 0, 8, 120]))
    scale_c = 10.0 ** draw(st.sampled_from([-100, 0, 6, 100]))
    spread = draw(st.sampled_from([0, 3, 12]))
    d = 10.0 ** rng.uniform(-spread, spread, N)
    return kind, A, B, C, scale_b, scale_c, d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ssm_instance(), st.sampled_from([(None, None), (None, 1e-8), (None, 1e-3)]))
def test_ssm_agrees_with_dense(inst, tols):
    kind, A, B, C, sb, sc, d = inst
    atol, rtol = tols
    T = materialise(A, B * sb, C * sc, kind)
    assume(np.all(np.isfinite(T)))
    Bs, Cs = B * sb, C * sc
    if kind != "dense":
        Bs, Cs = Bs * d, Cs / d
    got = S.ssm_ess(A, Bs, Cs, transition=kind, method="both", atol=atol, rtol=rtol)
    compare(T, got.tolerance, got.entropy, atol=atol, rtol=rtol)
    # invariants
    L, N = B.shape
    t = np.arange(L)
    bound = np.minimum(np.minimum(t, L - t), N)
    assert np.all(got.entropy >= 0)
    assert np.all(got.entropy <= got.tolerance + 1e-9) or rtol is not None
    assert np.all(got.tolerance <= bound)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.integers(1, 4), st.integers(0, 2**32 - 1), st.floats(-6, 3))
def test_atol_absolute_threshold(L, N, seed, log_atol):
    # B ~ 1e-150, C ~ 1e140: blocks of size ~1e-10; atol from 1e-16 to 1e-7 (above rounding noise)
    atol = 1e-10 * 10.0**log_atol
    rng = np.random.default_rng(seed)
    A = rng.uniform(0.2, 1.1, (L, N))
    B = rng.standard_normal((L, N)) * 1e-150
    C = rng.standard_normal((L, N)) * 1e140
    T = materialise(A, B, C, "diagonal")
    got = S.ssm_ess(A, B, C, method="tolerance", atol=atol)
    sigs = block_sigmas(T)
    for t in range(1, L):
        sig = sigs[t]
        if np.any(np.abs(sig / atol - 1) < 1e-6):
            continue
        assert got[t] == np.sum(sig > atol)


def test_growth_beyond_float_range():
    # a = 3 over L = 700 steps: T[t, s] = c_t 3^(t-s) b_s overflows float64 (3^700 ~ 1e334);
    # the reference is H_t / 3^(L-1), built from logarithms.
    rng = np.random.default_rng(1)
    L, N = 700, 3
    A = np.full(L, 3.0)
    B = rng.standard_normal((L, N))
    C = rng.standard_normal((L, N))
    got = S.ssm_ess(A, B, C, method="both", rtol=1e-9)
    assert np.all(np.isfinite(got.entropy))
    for t in [1, 2, 5, 350, 690, 698, 699]:
        i = np.arange(L - t)[:, None]
        s = np.arange(t)[None, :]
        H = (C[t:] @ B[:t].T) * np.exp(((t + i - s) - (L - 1)) * math.log(3.0))
        sig = np.linalg.svd(H, compute_uv=False)
        assert got.tolerance[t] == np.sum(sig > 1e-9 * sig[0]), t
        assert abs(got.entropy[t] - entropy(sig)) <= 1e-6 * entropy(sig), t


def test_strong_decay_no_underflow_loss():
    # a = 1e-3 per step and b tiny, c huge: the dense product is O(1); factors alone under/overflow.
    rng = np.random.default_rng(2)
    L, N = 60, 4
    A = np.full((L, N), 1e-3) * rng.uniform(0.5, 2, (L, N))
    B = rng.standard_normal((L, N)) * 1e-200
    C = rng.standard_normal((L, N)) * 1e200
    T = materialise(A, B, C, "diagonal")
    got = S.ssm_ess(A, B, C, method="both", rtol=1e-12)
    compare(T, got.tolerance, got.entropy, rtol=1e-12)


def test_batch_broadcast_and_positions():
    rng = np.random.default_rng(3)
    L, N = 15, 3
    A = rng.uniform(0.3, 1.0, (4, L, N))
    B = rng.standard_normal((L, N))  # shared
    C = rng.standard_normal((2, 1, L, N))
    full = S.ssm_ess(A, B, C, method="both")
    assert full.tolerance.shape == (2, 4, L)
    for i in range(2):
        for j in range(4):
            T = materialise(A[j], B, C[i, 0], "diagonal")
            compare(T, full.tolerance[i, j], full.entropy[i, j])
    pos = [0, 3, 7, 14]
    sub = S.ssm_ess(A, B, C, method="both", positions=pos)
    np.testing.assert_array_equal(sub.tolerance, full.tolerance[..., pos])
    np.testing.assert_allclose(sub.entropy, full.entropy[..., pos], rtol=1e-12)


def test_float32_inputs():
    rng = np.random.default_rng(4)
    L, N = 30, 4
    A = rng.uniform(0.5, 1.0, (L, N)).astype(np.float32)
    B = rng.standard_normal((L, N)).astype(np.float32)
    C = rng.standard_normal((L, N)).astype(np.float32)
    got = S.ssm_ess(A, B, C, method="both")
    T = materialise(A.astype(np.float64), B.astype(np.float64), C.astype(np.float64), "diagonal")
    dense = ess.effective_state_size(T, method="both", rtol=1e-4)
    got4 = S.ssm_ess(A, B, C, method="tolerance", rtol=1e-4)
    np.testing.assert_array_equal(got4, dense.tolerance)
    np.testing.assert_allclose(got.entropy, dense.entropy, rtol=1e-6)
    # mixed dtypes are promoted to float64
    mixed = S.ssm_ess(A, B.astype(np.float64), C, method="entropy")
    np.testing.assert_allclose(mixed, dense.entropy, rtol=1e-6)


# --- native parameterisations ------------------------------------------------------------


def mamba_operator(A, delta, B, C, D, d):
    """Mamba channel d, materialised: T[t, s] = sum_n C_t[n] exp(A[d,n] (c_t - c_s)) Delta_s[d] B_s[n] (+ D on the diagonal)."""
    L = delta.shape[0]
    c = np.cumsum(delta[:, d])
    T = np.zeros((L, L))
    for t in range(L):
        for s in range(t + 1):
            T[t, s] = np.sum(C[t] * np.exp(A[d] * (c[t] - c[s])) * delta[s, d] * B[s])
        T[t, t] += D[d]
    return T


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 18), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_mamba_native(L, N, Dch, seed):
    rng = np.random.default_rng(seed)
    A = -np.exp(rng.uniform(-1, 2, (Dch, N)))
    delta = np.log1p(np.exp(rng.standard_normal((L, Dch))))
    B = rng.standard_normal((L, N))
    C = rng.standard_normal((L, N))
    D = rng.standard_normal(Dch) * 10
    got = S.mamba_ess(A, delta, B, C, D, method="both")
    got0 = S.mamba_ess(A, delta, B, C, None, method="both")
    np.testing.assert_array_equal(got.tolerance, got0.tolerance)
    np.testing.assert_array_equal(got.entropy, got0.entropy)
    for d in range(Dch):
        T = mamba_operator(A, delta, B, C, D, d)
        compare(T, got.tolerance[d], got.entropy[d])
        # the direct term does not change the dense result either
        T0 = mamba_operator(A, delta, B, C, 0 * D, d)
        np.testing.assert_array_equal(ess.effective_state_size(T0), ess.effective_state_size(T))


def test_mamba2_native_and_per_head_bc():
    rng = np.random.default_rng(5)
    L, H, N = 20, 3, 4
    A = -np.exp(rng.uniform(-2, 1, H))
    delta = np.log1p(np.exp(rng.standard_normal((L, H))))
    B = rng.standard_normal((L, H, N))
    C = rng.standard_normal((L, H, N))
    got = S.mamba2_ess(A, delta, B, C, np.ones(H), method="both")
    for h in range(H):
        c = np.cumsum(delta[:, h])
        T = np.tril((C[:, h] @ B[:, h].T) * np.exp(A[h] * (c[:, None] - c[None, :])) * delta[None, :, h])
        compare(T, got.tolerance[h], got.entropy[h])
        assert np.all(got.tolerance[h] <= N)


@pytest.mark.parametrize("gate", [None, "scalar", "vector"])
def test_linear_attention(gate):
    rng = np.random.default_rng(6)
    Hh, L, dk = 2, 24, 5
    q = np.abs(rng.standard_normal((Hh, L, dk)))  # after an elu+1-like feature map
    k = np.abs(rng.standard_normal((Hh, L, dk)))
    g = None
    if gate == "scalar":
        g = rng.uniform(0.6, 1.0, (Hh, L))
    elif gate == "vector":
        g = rng.uniform(0.6, 1.0, (Hh, L, dk))
    got = S.linear_attention_ess(q, k, g, method="both")
    assert got.tolerance.shape == (Hh, L)
    for h in range(Hh):
        T = np.zeros((L, L))
        for t in range(L):
            for s in range(t + 1):
                prod = np.ones(dk)
                for r in range(s + 1, t + 1):
                    prod = prod * (1.0 if g is None else (g[h, r] if g.ndim == 2 else g[h, r]))
                T[t, s] = q[h, t] @ (prod * k[h, s])
        compare(T, got.tolerance[h], got.entropy[h])
        assert np.all(got.tolerance[h] <= dk)


# --- convolutions --------------------------------------------------------------------------


def conv_operator(h, L, x1=None, x2=None):
    col = np.zeros(L)
    col[: h.size] = h
    T = np.tril(toeplitz(col))
    if x1 is not None:
        T = T * x1[None, :]
    if x2 is not None:
        T = T * x2[:, None]
    return T


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 24), st.integers(1, 10), st.integers(0, 2**32 - 1), st.booleans())
def test_conv_exact(L, k, seed, gated):
    assume(k <= L)
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(k) * 10.0 ** rng.uniform(-50, 50)
    x1 = rng.uniform(0.1, 2, L) if gated else None
    x2 = rng.uniform(0.1, 2, L) if gated else None
    got = S.conv_ess(h, L, x1=x1, x2=x2, path="exact", method="both")
    T = conv_operator(h, L, x1, x2)
    compare(T, got.tolerance, got.entropy)
    assert np.all(got.tolerance <= max(k - 1, 0))


def test_conv_fast_long_kernel():
    L = 160
    n = np.arange(L)
    # long kernels with decaying Hankel singular values (decayed to ~1e-14 by n = L)
    h = np.stack([np.exp(-n / 5.0) * np.cos(n / 5.0), np.exp(-n / 5.0) + 0.5 * np.exp(-n / 4.0) * np.sin(n / 2.0)])
    rng = np.random.default_rng(7)
    x1 = rng.uniform(0.5, 1.5, L)
    x2 = rng.uniform(0.5, 1.5, L)
    got = S.conv_ess(h, L, path="fast", method="both", rtol=1e-8)
    auto = S.conv_ess(h, L, method="both", rtol=1e-8)
    np.testing.assert_array_equal(auto.tolerance, got.tolerance)
    for j in range(2):
        T = conv_operator(h[j], L)
        compare(T, got.tolerance[j], got.entropy[j], rtol=1e-8)
    # gated long kernel: exact shift-register path (auto picks it)
    hg = h[0, :80]
    gg = S.conv_ess(hg, 120, x1=x1[:120], x2=x2[:120], method="both", rtol=1e-8)
    compare(conv_operator(hg, 120, x1[:120], x2[:120]), gg.tolerance, gg.entropy, rtol=1e-8)
    with pytest.raises(InvalidArgumentError, match="gates"):
        S.conv_ess(h, L, x1=x1, path="fast")


def test_conv_fast_guarantee_reported():
    # white-noise long kernel: full-rank Hankel; a small max_rank cannot meet the accuracy
    rng = np.random.default_rng(8)
    with pytest.raises(ess.NumericalError, match=r"reached rank 8 \(max_rank\)"):
        S.conv_ess(rng.standard_normal(200), 200, path="fast", max_rank=8)
    # a max_rank below the first sketch's rank is honoured too (it used to start at rank 16 + 10)
    with pytest.raises(ess.NumericalError, match=r"reached rank 3 \(max_rank\)"):
        S.conv_ess(rng.standard_normal(64) * np.exp(-np.arange(64) / 3), 4096, path="fast", max_rank=3)


# The numpy route that conv_ess's fast path ran before the factorisation moved to the core:
# kept here as the slow reference (randomised range finder, FFT Hankel products, numpy QR/SVD).


def hankel_matmul_numpy(g, X, nfft, G):
    n = g.shape[0]
    Xr = np.fft.rfft(X[::-1], nfft, axis=0)
    y = np.fft.irfft(G[:, None] * Xr, nfft, axis=0)
    return y[n - 1 : 2 * n - 1]


def lowrank_hankel_numpy(g, accuracy, max_rank, rng):
    n = g.shape[0]
    nfft = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    G = np.fft.rfft(g, nfft)
    probes = rng.standard_normal((n, 10))
    r = min(n, 16)
    while True:
        Q, _ = np.linalg.qr(hankel_matmul_numpy(g, rng.standard_normal((n, r + 10)), nfft, G))
        for _ in range(2):
            Q, _ = np.linalg.qr(hankel_matmul_numpy(g, Q, nfft, G))
        MQ = hankel_matmul_numpy(g, Q, nfft, G)
        resid = hankel_matmul_numpy(g, probes, nfft, G) - Q @ (MQ.T @ probes)
        err = 10.0 * math.sqrt(2.0 / math.pi) * float(np.max(np.linalg.norm(resid, axis=0)))
        sigma1 = float(np.linalg.norm(MQ, 2)) if MQ.size else 0.0
        if err <= accuracy * sigma1 or Q.shape[1] >= n or r >= max_rank:
            U, sv, Vt = np.linalg.svd(MQ, full_matrices=False)
            keep = sv > max(accuracy * sigma1 - err, 0.0)
            keep[0] = True
            if not np.all(keep):
                err += float(sv[~keep].max())
            return (Q @ Vt.T[:, keep]) * sv[keep], U[:, keep], err, sigma1
        r = min(2 * r, n, max_rank)


def hankel_dense(g):
    n = g.size
    idx = np.arange(n)[:, None] + np.arange(n)[None, :]
    return np.where(idx < n, g[np.minimum(idx, n - 1)], 0.0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 200),
    st.sampled_from(["decaying", "oscillating", "noise"]),
    st.floats(-150, 150),
    st.sampled_from([1e-12, 1e-6, 1e-2]),
    st.integers(1, 64),
    st.integers(0, 2**32 - 1),
)
def test_hankel_lowrank_matches_numpy_route(n, kind, log_scale, accuracy, max_rank, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == "decaying":
        g = np.exp(-t / rng.uniform(1, 30))
    elif kind == "oscillating":
        g = np.exp(-t / rng.uniform(5, 50)) * np.cos(t * rng.uniform(0.1, 2)) + 0.3 * np.exp(-t / 3.0)
    else:
        g = rng.standard_normal(n)
    g = g * 10.0**log_scale
    M = hankel_dense(g)
    norm = np.linalg.norm(M, 2)
    X, Y, err, s1 = ess._core.hankel_lowrank(g, accuracy, max_rank, seed, 3)
    X0, Y0, err0, s10 = lowrank_hankel_numpy(g, accuracy, max_rank, np.random.default_rng(seed))
    rnd = 1e-13 * norm  # rounding of the FFT products, relative to ||M||
    # the sketch oversamples, but the factors returned never exceed max_rank
    assert X.shape == Y.shape and X.shape[0] == n and 1 <= X.shape[1] <= min(n, max_rank)
    np.testing.assert_allclose(Y.T @ Y, np.eye(Y.shape[1]), atol=1e-10)
    # the a posteriori bounds hold for both routes (probability >= 1 - 1e-10 each)
    assert np.linalg.norm(M - X @ Y.T, 2) <= err + rnd
    assert np.linalg.norm(M - X0 @ Y0.T, 2) <= err0 + rnd
    # sigma1 is a lower bound of ||M||, and both routes agree to within their bounds (Weyl)
    assert s1 <= norm * (1 + 1e-12) and abs(s1 - s10) <= err + err0 + rnd
    sv = np.linalg.svd(X @ Y.T, compute_uv=False)
    sv0 = np.linalg.svd(X0 @ Y0.T, compute_uv=False)
    np.testing.assert_array_less(np.abs(sv - sv0), err + err0 + rnd + 1e-300)
    # reproducible from (seed, stream)
    X2, Y2, err2, _ = ess._core.hankel_lowrank(g, accuracy, max_rank, seed, 3)
    np.testing.assert_array_equal(X2, X)
    assert err2 == err


def test_hankel_lowrank_bad_input():
    with pytest.raises(InvalidArgumentError, match="g"):
        ess._core.hankel_lowrank(np.zeros(0), 1e-12, 4, 0, 0)
    with pytest.raises(NonFiniteError, match="g"):
        ess._core.hankel_lowrank(np.array([1.0, np.inf]), 1e-12, 4, 0, 0)
    with pytest.raises(InvalidArgumentError, match="accuracy"):
        ess._core.hankel_lowrank(np.ones(4), 0.0, 4, 0, 0)
    with pytest.raises(InvalidArgumentError, match="max_rank"):
        ess._core.hankel_lowrank(np.ones(4), 1e-12, 0, 0, 0)
    with pytest.raises(OutOfRangeError, match="seed"):
        S.conv_ess(np.exp(-np.arange(100.0)), 100, path="fast", seed=-1)


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_ssm():
    L, N = 6, 2
    A = np.ones((L, N))
    B = np.ones((L, N))
    C = np.ones((L, N))
    with pytest.raises(ShapeError, match="C"):
        S.ssm_ess(A, B, np.ones((L, N + 1)))
    with pytest.raises(ShapeError, match="A"):
        S.ssm_ess(np.ones((L + 1, N)), B, C)
    with pytest.raises(ShapeError, match="A"):
        S.ssm_ess(np.ones((L, N, N, N, N)), B, C)
    with pytest.raises(ShapeError, match="broadcast"):
        S.ssm_ess(np.ones((3, L, N)), np.ones((2, L, N)), C)
    for name in "ABC":
        args = {"A": A.copy(), "B": B.copy(), "C": C.copy()}
        args[name][2, 1] = np.nan
        with pytest.raises(NonFiniteError, match=name):
            S.ssm_ess(args["A"], args["B"], args["C"])
    with pytest.raises(ShapeError, match="N = 0"):
        S.ssm_ess(np.ones((L, 0)), np.ones((L, 0)), np.ones((L, 0)))
    with pytest.raises(ShapeError, match="L = 0"):
        S.ssm_ess(None, np.ones((0, N)), np.ones((0, N)))
    # L = 1: valid, ess[0] = 0 as in the dense kernel
    np.testing.assert_array_equal(S.ssm_ess(np.ones((1, N)), np.ones((1, N)), np.ones((1, N))), [0.0])
    with pytest.raises(DTypeError, match="B"):
        S.ssm_ess(A, B.astype(np.int64), C)
    with pytest.raises(InvalidArgumentError, match="method"):
        S.ssm_ess(A, B, C, method="nope")
    with pytest.raises(InvalidArgumentError, match="atol"):
        S.ssm_ess(A, B, C, atol=-1.0)
    with pytest.raises(OutOfRangeError, match="positions"):
        S.ssm_ess(A, B, C, positions=[3, 2])
    with pytest.raises(OutOfRangeError, match="positions"):
        S.ssm_ess(A, B, C, positions=[L])
    with pytest.raises(InvalidArgumentError, match="transition"):
        S.ssm_ess(A, B, C, transition="weird")
    with pytest.raises(ShapeError, match="B"):
        S.ssm_ess(None, np.ones(5), np.ones(5))


def test_bad_input_wrappers():
    L, N, Dch = 5, 3, 2
    A = -np.ones((Dch, N))
    delta = np.ones((L, Dch))
    B = np.ones((L, N))
    with pytest.raises(ShapeError, match="delta"):
        S.mamba_ess(A, np.ones((L, Dch + 1)), B, B)
    with pytest.raises(ShapeError, match="C"):
        S.mamba_ess(A, delta, B, np.ones((L, N + 1)))
    with pytest.raises(ShapeError, match="D"):
        S.mamba_ess(A, delta, B, B, D=np.ones(Dch + 1))
    with pytest.raises(NonFiniteError, match="D"):
        S.mamba_ess(A, delta, B, B, D=np.array([0.0, np.inf]))
    with pytest.raises(NonFiniteError, match="delta"):
        S.mamba_ess(A, np.full((L, Dch), np.nan), B, B)
    with pytest.raises(ShapeError, match="A"):
        S.mamba2_ess(np.ones((2, 2)), delta, B, B)
    with pytest.raises(ShapeError, match="k"):
        S.linear_attention_ess(np.ones((L, N)), np.ones((L, N + 1)))
    with pytest.raises(NonFiniteError, match="q"):
        S.linear_attention_ess(np.full((L, N), np.inf), np.ones((L, N)))
    with pytest.raises(ShapeError, match="gates"):
        S.linear_attention_ess(np.ones((L, N)), np.ones((L, N)), np.ones(L + 1))
    with pytest.raises(ShapeError, match="h"):
        S.conv_ess(np.ones(7), 5)
    with pytest.raises(InvalidArgumentError, match="L"):
        S.conv_ess(np.ones(3), 0)
    with pytest.raises(NonFiniteError, match="h"):
        S.conv_ess(np.array([1.0, np.nan]), 5)
    with pytest.raises(ShapeError, match="x1"):
        S.conv_ess(np.ones(3), 5, x1=np.ones(4))
    with pytest.raises(InvalidArgumentError, match="path"):
        S.conv_ess(np.ones(3), 5, path="magic")
    np.testing.assert_array_equal(S.conv_ess(np.ones(1), 4), np.zeros(4))


def test_mamba_float32_and_positions():
    rng = np.random.default_rng(9)
    L, N, Dch = 40, 6, 3
    A = (-np.exp(rng.uniform(-1, 1, (Dch, N)))).astype(np.float32)
    delta = np.log1p(np.exp(rng.standard_normal((L, Dch)))).astype(np.float32)
    B = rng.standard_normal((L, N)).astype(np.float32)
    C = rng.standard_normal((L, N)).astype(np.float32)
    full = S.mamba_ess(A, delta, B, C, method="both", rtol=1e-3)
    f64 = S.mamba_ess(
        A.astype(np.float64),
        delta.astype(np.float64),
        B.astype(np.float64),
        C.astype(np.float64),
        method="both",
        rtol=1e-3,
    )
    np.testing.assert_allclose(full.entropy, f64.entropy, rtol=1e-4)
    pos = np.array([0, 1, 17, 39])
    sub = S.mamba_ess(A, delta, B, C, method="entropy", rtol=1e-3, positions=pos)
    np.testing.assert_allclose(sub, full.entropy[:, pos], rtol=1e-12)
    # float32 default threshold uses the float32 eps: noise-level values are not counted
    t32 = S.mamba_ess(A, delta, B, C)
    assert np.all(t32 <= N)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_mamba_in_place_route_equals_formed_factors(dtype, per_channel):
    """mamba_ess reads A, delta, B, C in place and forms the factors per channel in the kernel;
    the result equals ssm_ess on the (D, L, N) factors formed in numpy (same rounding to dtype)."""
    rng = np.random.default_rng(21)
    L, N, Dch = 37, 5, 4
    A = (-np.exp(rng.uniform(-1, 1.5, (Dch, N)))).astype(dtype)
    delta = np.log1p(np.exp(rng.standard_normal((L, Dch)) - 1.0)).astype(dtype)
    shape = (L, Dch, N) if per_channel else (L, N)
    B = rng.standard_normal(shape).astype(dtype)
    C = rng.standard_normal(shape).astype(dtype)
    a64, d64, b64, c64 = (x.astype(np.float64) for x in (A, delta, B, C))
    at = np.exp(d64.T[:, :, None] * a64[:, None, :]).astype(dtype)
    bb = b64.transpose(1, 0, 2) if per_channel else b64[None]
    cc = (c64.transpose(1, 0, 2) if per_channel else np.broadcast_to(c64[None], (Dch, L, N))).astype(dtype)
    bt = (d64.T[:, :, None] * bb).astype(dtype)
    want = S.ssm_ess(at, bt, cc, transition="diagonal", method="both")
    got = S.mamba_ess(A, delta, B, C, method="both")
    np.testing.assert_array_equal(got.tolerance, want.tolerance)
    np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-9)
    pos = np.array([1, 2, 20, 36])
    sub = S.mamba_ess(A, delta, B, C, method="tolerance", positions=pos, atol=1e-3)
    np.testing.assert_array_equal(sub, S.ssm_ess(at, bt, cc, transition="diagonal", positions=pos, atol=1e-3))


def test_windowed_backward_factors_match_stored():
    """Issue 16: the per-split storage is bounded. 2100 splits of an N = 64 state hold 70 MB of
    backward factors, over the kernel's 64 MiB per-channel budget, so the kernel keeps a window of
    about sqrt(2100) factors recomputed from checkpoints; the curves equal those of a positions
    subset small enough to be stored whole."""
    rng = np.random.default_rng(33)
    L, N = 2100, 64
    a = np.exp(-rng.uniform(0.0, 0.05, (1, L, N)))
    b = rng.standard_normal((1, L, N))
    c = rng.standard_normal((1, L, N))
    full = S.ssm_ess(a, b, c, method="both")
    pos = np.arange(0, L, 2)
    sub = S.ssm_ess(a, b, c, method="both", positions=pos)
    np.testing.assert_array_equal(sub.tolerance, full.tolerance[:, pos])
    np.testing.assert_array_equal(sub.entropy, full.entropy[:, pos])
    assert np.all(full.tolerance <= N)


def test_conv_positions_and_batch():
    rng = np.random.default_rng(10)
    h = rng.standard_normal((2, 3, 4))
    L = 12
    full = S.conv_ess(h, L, method="both")
    assert full.tolerance.shape == (2, 3, L)
    sub = S.conv_ess(h, L, method="tolerance", positions=[2, 5, 11])
    np.testing.assert_array_equal(sub, full.tolerance[..., [2, 5, 11]])
    x1 = rng.uniform(0.5, 1.5, (3, L))
    g = S.conv_ess(h, L, x1=x1, method="both")
    for i in range(2):
        for j in range(3):
            compare(conv_operator(h[i, j], L, x1[j]), g.tolerance[i, j], g.entropy[i, j])
