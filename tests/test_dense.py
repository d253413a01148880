"""Dense ESS kernel against the numpy per-split SVD reference, invariants and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ess
from reference import (
    conv_operator,
    ess_reference,
    linear_attention_operator,
    near_threshold,
    sliding_window_attention,
    ssm_operator,
)

DTYPES = [np.float32, np.float64]


def assert_matches_reference(T, got_tol, got_ent, *, atol=None, rtol=None, ent_rtol=1e-6):
    ref_tol, ref_ent, detail = ess_reference(T, atol=atol, rtol=rtol)
    for t in range(T.shape[-1]):
        s, tau = detail[t]
        if got_tol is not None and got_tol[t] != ref_tol[t]:
            assert near_threshold(s, tau), (
                f"t={t}: tolerance-ESS {got_tol[t]} != reference {ref_tol[t]} (sigma={s}, tau={tau})"
            )
    if got_ent is not None:
        np.testing.assert_allclose(got_ent, ref_ent, rtol=ent_rtol, atol=0)


@st.composite
def random_operator(draw, max_L=24, batch=False):
    L = draw(st.integers(1, max_L))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    log_scale = draw(st.floats(-30, 30))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(1, 3)), L, L) if batch else (L, L)
    T = rng.standard_normal(shape) * 10.0**log_scale
    return T.astype(dtype)


@given(random_operator())
def test_generic_operators_match_svd_reference(T):
    c = ess.effective_state_size(T, method="both")
    assert c.tolerance.dtype == np.float64 and c.tolerance.shape == (T.shape[-1],)
    assert_matches_reference(T, c.tolerance, c.entropy)
    # Tolerance alone takes another route (a Cholesky certificate of full rank).
    alone = ess.effective_state_size(T, method="tolerance")
    assert_matches_reference(T, alone, None)
    ent = ess.effective_state_size(T, method="entropy")
    np.testing.assert_array_equal(ent, c.entropy)


@given(random_operator(batch=True), st.sampled_from([1e-1, 1e-3, 1e-6, 1e-10]))
def test_batches_with_rtol_match_reference(T, rtol):
    c = ess.effective_state_size(T, method="both", rtol=rtol)
    assert c.tolerance.shape == T.shape[:-1]
    alone = ess.effective_state_size(T, rtol=rtol)
    for b in range(T.shape[0]):
        assert_matches_reference(T[b], c.tolerance[b], c.entropy[b], rtol=rtol)
        assert_matches_reference(T[b], alone[b], None, rtol=rtol)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 12)).map(lambda s: (s[0], s[0])),
        elements=st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    )
)
def test_adversarial_entries_with_rtol(T):
    """Hypothesis-chosen entries (repeated values, zeros, mixed magnitudes), relative threshold."""
    c = ess.effective_state_size(T, method="both", rtol=1e-7)
    assert_matches_reference(T, c.tolerance, c.entropy, rtol=1e-7, ent_rtol=1e-6)


@given(random_operator(max_L=16), st.floats(0, 10))
def test_absolute_tolerance(T, atol_scale):
    atol = atol_scale * float(np.abs(T).max() if T.size else 0.0)
    got = ess.effective_state_size(T, atol=atol)
    assert_matches_reference(T, got, None, atol=atol)


@given(random_operator(max_L=16), st.integers(-60, 60))
def test_scale_invariance(T, e):
    T = T.astype(np.float64)
    base = ess.effective_state_size(T, method="both", rtol=1e-9)
    scaled = ess.effective_state_size(T * 10.0**e, method="both", rtol=1e-9)
    ref_tol, _, detail = ess_reference(T, rtol=1e-9)
    for t, (s, tau) in enumerate(detail):
        if not near_threshold(s, tau, 1e-6):
            assert base.tolerance[t] == scaled.tolerance[t]
    np.testing.assert_allclose(scaled.entropy, base.entropy, rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1.0, 1e30, 1e300])
def test_extreme_magnitudes_do_not_overflow(scale):
    rng = np.random.default_rng(0)
    T = np.tril(rng.standard_normal((20, 20)))
    ref = ess.effective_state_size(T, method="both")
    got = ess.effective_state_size(T * scale, method="both")
    np.testing.assert_array_equal(got.tolerance, ref.tolerance)
    np.testing.assert_allclose(got.entropy, ref.entropy, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 2, 3])
def test_tiny_lengths(L, dtype):
    T = np.tril(np.arange(1, L * L + 1, dtype=dtype).reshape(L, L))
    c = ess.effective_state_size(T, method="both")
    assert c.tolerance.shape == (L,) and c.tolerance[0] == 0 and c.entropy[0] == 0
    if L == 2:
        assert c.tolerance[1] == 1 and c.entropy[1] == pytest.approx(1.0)
    assert_matches_reference(T, c.tolerance, c.entropy)


def test_zero_operator_and_zero_blocks():
    c = ess.effective_state_size(np.zeros((2, 9, 9)), method="both")
    assert np.all(c.tolerance == 0) and np.all(c.entropy == 0)
    T = np.eye(6)  # only the diagonal, which no block sees
    c = ess.effective_state_size(T, method="both")
    assert np.all(c.tolerance == 0) and np.all(c.entropy == 0)


def test_upper_triangle_and_diagonal_are_ignored():
    rng = np.random.default_rng(1)
    T = rng.standard_normal((15, 15))
    a = ess.effective_state_size(T, method="both")
    b = ess.effective_state_size(np.tril(T, -1), method="both")
    np.testing.assert_array_equal(a.tolerance, b.tolerance)
    np.testing.assert_array_equal(a.entropy, b.entropy)


@given(random_operator(max_L=20), st.data())
def test_positions_subset_equals_full_curve(T, data):
    L = T.shape[-1]
    pos = sorted(data.draw(st.sets(st.integers(0, L - 1), max_size=L)))
    full = ess.effective_state_size(T, method="both", rtol=1e-8)
    sub = ess.effective_state_size(T, method="both", rtol=1e-8, positions=np.array(pos, dtype=np.int64))
    assert sub.tolerance.shape == (len(pos),)
    np.testing.assert_array_equal(sub.tolerance, full.tolerance[pos])
    np.testing.assert_allclose(sub.entropy, full.entropy[pos], rtol=1e-12)


# --- invariants of the ESS definition (README, Conventions) ----------------------------


@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.integers(1, 6))
def test_rank_bounds_of_structured_operators(seed, L, n):
    rng = np.random.default_rng(seed)
    cases = {
        "ssm": (ssm_operator(rng, L, n), n),
        "linear attention": (linear_attention_operator(rng, L, n), n),
        "convolution": (conv_operator(rng, L, n + 1), n),
        "sliding window": (sliding_window_attention(rng, L, n + 1), n),
    }
    t = np.arange(L)
    for name, (T, bound) in cases.items():
        c = ess.effective_state_size(T, method="both", rtol=1e-10)
        np.testing.assert_array_equal(ess.effective_state_size(T, rtol=1e-10), c.tolerance)
        exact = np.minimum(t, L - t)
        assert np.all(c.tolerance <= np.minimum(bound, exact)), name
        assert np.all(c.entropy <= c.tolerance + 1e-9), name
        assert np.all(c.entropy >= 0)
        assert_matches_reference(T, c.tolerance, c.entropy, rtol=1e-10)


@given(random_operator(max_L=16))
def test_entropy_below_rank_below_min(T):
    L = T.shape[-1]
    c = ess.effective_state_size(T, method="both")
    t = np.arange(L)
    assert np.all(c.entropy <= c.tolerance + 1e-9)
    assert np.all(c.tolerance <= np.minimum(t, L - t))


@given(st.integers(0, 2**32 - 1), st.integers(2, 20))
def test_diagonal_scalings_keep_rank(seed, L):
    rng = np.random.default_rng(seed)
    T = ssm_operator(rng, L, 3)
    D1 = np.exp(rng.uniform(-3, 3, L))
    D2 = np.exp(rng.uniform(-3, 3, L))
    a = ess.effective_state_size(T, rtol=1e-9)
    b = ess.effective_state_size(D1[:, None] * T * D2[None, :], rtol=1e-9)
    # Exact rank is invariant; the numerical one may only differ where sigma is near tau.
    ref_tol, _, detail = ess_reference(D1[:, None] * T * D2[None, :], rtol=1e-9)
    np.testing.assert_array_equal(b, ref_tol)
    assert np.all(b <= 3) and np.all(a <= 3)


def test_softmax_attention_is_full_rank():
    T = ess.examples.softmax_attention(64, 16, seed=3)
    t = np.arange(64)
    np.testing.assert_array_equal(ess.effective_state_size(T), np.minimum(t, 64 - t))


def test_float32_uses_float32_epsilon():
    rng = np.random.default_rng(4)
    T = np.tril(rng.standard_normal((30, 30))).astype(np.float32)
    got = ess.effective_state_size(T)
    ref, _, _ = ess_reference(T)  # eps of float32
    np.testing.assert_array_equal(got, ref)


def test_non_contiguous_and_negative_strides_are_copied():
    rng = np.random.default_rng(5)
    T = rng.standard_normal((2, 12, 12))
    ref = ess.effective_state_size(T, method="entropy")
    Tf = np.asfortranarray(T)
    np.testing.assert_array_equal(ess.effective_state_size(Tf, method="entropy"), ref)
    rev = T[::-1]  # negative stride on the batch axis
    np.testing.assert_array_equal(ess.effective_state_size(rev, method="entropy"), ref[::-1])
    big = np.zeros((2, 24, 24))
    big[:, ::2, ::2] = T
    np.testing.assert_array_equal(ess.effective_state_size(big[:, ::2, ::2], method="entropy"), ref)


def test_lists_are_accepted():
    got = ess.effective_state_size([[1.0, 0.0], [2.0, 1.0]])
    np.testing.assert_array_equal(got, [0, 1])


def test_batch_shape_is_kept():
    T = np.zeros((2, 3, 5, 5))
    assert ess.effective_state_size(T).shape == (2, 3, 5)
    assert ess.effective_state_size(T, positions=[1, 4]).shape == (2, 3, 2)
    assert ess.effective_state_size(np.zeros((0, 5, 5))).shape == (0, 5)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    T = np.zeros((4, 4))
    T[2, 1] = bad
    with pytest.raises(ess.NonFiniteError, match="T"):
        ess.effective_state_size(T)
    with pytest.raises(ValueError):
        ess.effective_state_size(T)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (5,), ()])
def test_bad_shapes_rejected(shape):
    with pytest.raises(ess.ShapeError, match="T"):
        ess.effective_state_size(np.zeros(shape))


def test_empty_operator_rejected():
    with pytest.raises(ess.ShapeError, match="empty"):
        ess.effective_state_size(np.zeros((0, 0)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, object, np.bool_, np.float16])
def test_bad_dtypes_rejected(dtype):
    with pytest.raises(ess.DTypeError, match="T"):
        ess.effective_state_size(np.zeros((3, 3), dtype=dtype))
    with pytest.raises(TypeError):
        ess.effective_state_size(np.zeros((3, 3), dtype=dtype))


@pytest.mark.parametrize(
    "positions, match",
    [([3, 1], "increasing"), ([0, 0], "increasing"), ([5], "outside"), ([-1], "negative"), ([[1]], "one-dimensional")],
)
def test_bad_positions_rejected(positions, match):
    with pytest.raises((ess.OutOfRangeError, ess.ShapeError), match=match):
        ess.effective_state_size(np.zeros((5, 5)), positions=positions)


def test_float_positions_rejected():
    with pytest.raises(ess.DTypeError, match="positions"):
        ess.effective_state_size(np.zeros((5, 5)), positions=[1.5])


@pytest.mark.parametrize("kw", [{"atol": -1.0}, {"rtol": -1e-3}, {"atol": float("nan")}, {"rtol": float("inf")}])
def test_bad_tolerances_rejected(kw):
    name = next(iter(kw))
    with pytest.raises(ess.InvalidArgumentError, match=name):
        ess.effective_state_size(np.zeros((4, 4)), **kw)


def test_unknown_method_rejected():
    with pytest.raises(ess.InvalidArgumentError, match="method"):
        ess.effective_state_size(np.zeros((4, 4)), method="nuclear")


def test_errors_are_typed():
    assert issubclass(ess.ShapeError, ValueError) and issubclass(ess.ShapeError, ess.EssError)
    assert issubclass(ess.DTypeError, TypeError)
    assert issubclass(ess.OutOfRangeError, IndexError)


def test_sizes_that_cannot_fit_are_refused_before_any_copy():
    huge = np.broadcast_to(np.float32(0.0), (100_000, 100_000))  # no memory behind it
    with pytest.raises(ess.TooLargeError, match="GiB"):
        ess.effective_state_size(huge)


def test_no_rust_panic_reaches_python():
    """Edge inputs give results or typed errors, never a PanicException."""
    cases = [np.zeros((1, 1)), np.zeros((2, 2)), np.full((3, 3), 1e308), np.full((3, 3), -5e-324)]
    for T in cases:
        try:
            ess.effective_state_size(T, method="both", atol=0.0, rtol=0.0)
        except ess.EssError:
            pass


def test_gil_is_released_during_the_kernel():
    """Another Python thread keeps running while the kernel works."""
    import threading
    import time

    T = np.stack([ess.examples.softmax_attention(256, 16, seed=s) for s in range(8)])
    done = threading.Event()
    ticks_during = 0
    took = [0.0]

    def work():
        t0 = time.perf_counter()
        ess.effective_state_size(T, method="both")
        took[0] = time.perf_counter() - t0
        done.set()

    th = threading.Thread(target=work)
    th.start()
    while not done.is_set():
        ticks_during += 1
        done.wait(0.001)
    th.join()
    # With the GIL held throughout, this loop (1 ms waits) could only have run before the call started
    # and after it ended: a tick or two. Released, it ticks about once a millisecond of the call
    # (counted against the call's own duration, so that a fast build or a slow machine does not matter).
    assert took[0] > 0.01
    assert ticks_during >= max(5, 0.2 * took[0] / 0.001), (ticks_during, took[0])


# --- tolerance-ESS by inertia (thresholds far above the squared route's noise floor) -------


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _operator_with_block(rng: np.random.Generator, sigma: np.ndarray, fill: float) -> np.ndarray:
    """An operator of length 2n whose block at split n has the singular values ``sigma``; the
    rest of its strictly lower triangle is Gaussian times ``fill``."""
    n = sigma.size
    T = np.tril(rng.standard_normal((2 * n, 2 * n)) * fill, -1)
    T[n:, :n] = (_orthogonal(rng, n) * sigma) @ _orthogonal(rng, n).T
    return T


@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 30),
    st.sampled_from([1e-1, 1e-3, 1e-5]),
    st.sampled_from([1e-1, 1e-4, 1e-7, 1e-10, 0.0]),
    st.integers(-250, 250),
)
def test_inertia_route_with_singular_values_clustered_at_the_threshold(seed, n, rtol, gap, e):
    """Singular values of the block at split n placed at rtol * sigma_max * (1 +- gap): the count
    at that split is exact wherever the gap exceeds the reference's 1e-8 uncertainty, at any
    magnitude; every other split agrees with the SVD reference."""
    rng = np.random.default_rng(seed)
    m = rng.integers(0, n)  # singular values 2..m+1 just above the threshold, the rest just below
    sigma = np.full(n, rtol)
    sigma[0] = 1.0
    sigma[1 : m + 1] *= 1.0 + gap * rng.uniform(0.5, 1.0, m)
    sigma[m + 1 :] *= 1.0 - gap * rng.uniform(0.5, 1.0, n - m - 1)
    T = _operator_with_block(rng, sigma, fill=0.3) * 2.0**e
    got = ess.effective_state_size(T, rtol=rtol)
    sub = ess.effective_state_size(T, rtol=rtol, positions=[n])
    if gap >= 1e-7:
        assert got[n] == sub[0] == (m + 1 if n > 1 else 1)
    assert_matches_reference(T, got, None, rtol=rtol)


@given(st.integers(0, 2**32 - 1), st.integers(3, 30), st.integers(1, 3), st.sampled_from([1e-2, 1e-4]))
def test_inertia_route_on_rank_deficient_blocks(seed, n, r, rtol):
    """A block of exact rank r < n (the remaining singular values are zero, far below the
    threshold): the inertia of G - tau^2 I counts r."""
    rng = np.random.default_rng(seed)
    r = min(r, n - 1)
    sigma = np.zeros(n)
    sigma[:r] = 10.0 ** rng.uniform(np.log10(rtol) + 0.5, 0.0, r)
    sigma[0] = 1.0
    T = _operator_with_block(rng, sigma, fill=1.0)
    for kw in ({"rtol": rtol}, {"atol": rtol * 0.5}, {"atol": rtol * 0.5, "rtol": rtol}):
        got = ess.effective_state_size(T, **kw)
        assert got[n] == r
        assert_matches_reference(T, got, None, **kw)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e-20, 1.0, 1e20, 1e150, 1e300])
@pytest.mark.parametrize("rtol", [1e-2, 1e-3])
def test_inertia_route_at_extreme_magnitudes(scale, rtol):
    """Softmax-attention-like operators scaled over 600 decades: counts at a relative threshold
    and at the matching absolute one agree with the SVD reference and with each other."""
    from ess.examples import softmax_attention

    T = softmax_attention(48, 8, seed=5) * scale
    got = ess.effective_state_size(T, rtol=rtol)
    assert_matches_reference(T, got, None, rtol=rtol)
    base = ess.effective_state_size(T / scale, rtol=rtol)
    np.testing.assert_array_equal(got, base)


def test_inertia_route_matches_svd_on_softmax_attention():
    """The route the benchmark times (tolerance alone, relative threshold), split by split
    against the SVD reference, on an operator where a band of middle splits is rank deficient
    at that threshold and the others are of full numerical rank."""
    from ess.examples import softmax_attention

    T = softmax_attention(160, 16, seed=3)
    for rtol in (1e-2, 1e-3):
        got = ess.effective_state_size(T, rtol=rtol)
        assert_matches_reference(T, got, None, rtol=rtol)
        assert np.any(got[1:] < np.minimum(np.arange(1, 160), 160 - np.arange(1, 160)))


def test_subnormal_entries_do_not_stall_the_gram_route() -> None:
    """Found by hypothesis: a subnormal operator with one entry near 1e-152 made faer's symmetric
    eigensolver report no convergence on the Gram matrix; that route is a shortcut, so the split
    now goes to the SVD routes (the answer matches an SVD of each block, rescaled exactly)."""
    T = np.full((9, 9), 2.2250738585072014e-309)
    T[7, 3] = 9.42959485e-153
    got = ess.effective_state_size(T, method="both", rtol=1e-7)
    want = []
    for t in range(9):
        if t == 0:
            want.append(0)
            continue
        H = np.tril(T, -1)[t:, :t] * 2.0**600  # exact power-of-two rescaling out of the subnormal range
        s = np.linalg.svd(H, compute_uv=False)
        want.append(int(np.sum(s > 1e-7 * s[0])) if s[0] > 0 else 0)
    np.testing.assert_array_equal(got.tolerance, want)
    assert np.all(np.isfinite(got.entropy))
