"""ess.markov: closed forms, invariants, references, metastable accuracy, bad input."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ess
import ess.markov as mk
from markov_ref import (
    committor_dense,
    committor_mpmath,
    hit_dense,
    hit_mpmath,
    stationary_dense,
    stationary_mpmath,
)

METHODS = ["gth", "lu"]


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    fin = np.isfinite(b)
    assert (np.isfinite(a) == fin).all(), (a, b)
    d = np.abs(a[fin] - b[fin]) / np.maximum(np.abs(b[fin]), 1e-300)
    return float(d.max()) if d.size else 0.0


def random_chain(rng, n, density=0.4, self_loops=True):
    P = rng.random((n, n)) * (rng.random((n, n)) < density)
    P[np.arange(n), (np.arange(n) + 1) % n] += 0.3  # irreducible
    if not self_loops:
        np.fill_diagonal(P, 0)
    return P / P.sum(axis=1, keepdims=True)


def ring_chain(n, half=4, seed=0):
    """Banded ring: each state steps to i-half..i+half (mod n), 2*half+1 entries per row."""
    rng = np.random.default_rng(seed)
    offs = np.arange(-half, half + 1)
    rows = np.repeat(np.arange(n), offs.size)
    cols = (rows + np.tile(offs, n)) % n
    vals = rng.uniform(0.5, 1.5, size=rows.size).reshape(n, -1)
    vals /= vals.sum(axis=1, keepdims=True)
    return sp.csr_array((vals.ravel(), (rows, cols)), shape=(n, n))


# ----------------------------------------------------------------- closed forms


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_two_state(fmt):
    a, b = 0.3, 1e-9
    P = np.array([[1 - a, a], [b, 1 - b]])
    Pin = P if fmt == "dense" else sp.csr_array(P)
    assert rel(mk.hitting_times(Pin, [1]), [1 / a, 0]) < 1e-14
    assert rel(mk.hitting_times(Pin, [0]), [0, 1 / b]) < 1e-14
    assert rel(mk.stationary_distribution(Pin), [b / (a + b), a / (a + b)]) < 1e-14
    M = mk.mean_first_passage_times(Pin)
    assert rel(M, [[0, 1 / a], [1 / b, 0]]) < 1e-14
    assert rel(mk.kemeny_constant(Pin), 1 / (a + b)) < 1e-12


@pytest.mark.parametrize("n", [2, 3, 7, 50, 301])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_cycle_walk(n, fmt):
    P = np.zeros((n, n))
    i = np.arange(n)
    P[i, (i + 1) % n] += 0.5
    P[i, (i - 1) % n] += 0.5
    Pin = P if fmt == "dense" else sp.csr_array(P)
    k = np.arange(n)
    for method in METHODS:
        assert rel(mk.hitting_times(Pin, [0], method=method), k * (n - k)) < 1e-11
    if n <= 50:
        M = mk.mean_first_passage_times(Pin)
        d = (k[None, :] - k[:, None]) % n
        assert rel(M, d * (n - d)) < 1e-11


@pytest.mark.parametrize("p", [0.5, 0.3, 0.9, 1e-6])
def test_gamblers_ruin(p):
    N = 20
    P = np.zeros((N + 1, N + 1))
    P[0, 0] = P[N, N] = 1
    for i in range(1, N):
        P[i, i + 1] = p
        P[i, i - 1] = 1 - p
    k = np.arange(N + 1)
    if p == 0.5:
        win = k / N
        dur = k * (N - k)
    else:
        r = (1 - p) / p
        win = (1 - r**k) / (1 - r**N) if r < 1e6 else np.where(k == N, 1.0, 0.0) + 0 * k
        dur = None
    prob = mk.absorption_probabilities(P, [[0], [N]])
    if p != 1e-6:
        assert rel(prob[:, 1], win) < 1e-11
    assert np.allclose(prob.sum(axis=1), 1)
    assert rel(mk.committor(P, [0], [N]), prob[:, 1]) < 1e-14
    if dur is not None:
        assert rel(mk.hitting_times(P, [0, N]), dur) < 1e-12
    # with p = 1e-6 the win probability from state 1 is p^(N-1) * (something): tiny but positive
    if p == 1e-6:
        ref = committor_mpmath(P, [0], [N])
        assert rel(prob[:, 1], ref) < 1e-12
        assert 0 < prob[1, 1] < 1e-100


def test_birth_death_stationary_and_hitting():
    n = 60
    rng = np.random.default_rng(3)
    up = rng.uniform(1e-3, 0.5, n)
    down = rng.uniform(0.3, 0.5, n)
    up[-1] = 0
    down[0] = 0
    P = np.diag(up[:-1], 1) + np.diag(down[1:], -1)
    P += np.diag(1 - P.sum(axis=1))
    # detailed balance: pi_{i+1} = pi_i up_i / down_{i+1}
    logpi = np.concatenate([[0], np.cumsum(np.log(up[:-1]) - np.log(down[1:]))])
    pi = np.exp(logpi - logpi.max())
    pi /= pi.sum()
    assert rel(mk.stationary_distribution(P), pi) < 1e-12
    assert rel(mk.stationary_distribution(sp.csr_array(P)), pi) < 1e-12
    # E_0[T_k] for birth-death: sum_{j<k} (sum_{i<=j} pi_i) / (pi_j up_j)
    cum = np.cumsum(pi)
    steps = cum[:-1] / (pi[:-1] * up[:-1])
    h = mk.hitting_times(P, [n - 1])
    assert rel(h[0], steps.sum()) < 1e-11


# ----------------------------------------------------------------- invariants


@pytest.mark.parametrize("seed", range(3))
def test_kac_kemeny_and_reversible_committor(seed):
    rng = np.random.default_rng(seed)
    n = 40
    P = random_chain(rng, n)
    pi = mk.stationary_distribution(P)
    M = mk.mean_first_passage_times(P)
    assert np.all(np.diag(M) == 0)
    # Kac: mean return time 1 + sum_j P_ij M_ji = 1 / pi_i
    ret = 1 + (P * M.T).sum(axis=1)
    assert rel(ret, 1 / pi) < 1e-11
    # Kemeny: (M pi)_i independent of i, equal to the eigenvalue formula
    Kv = M @ pi
    assert rel(Kv, np.full(n, Kv[0])) < 1e-11
    lam = np.linalg.eigvals(P)
    lam = lam[np.argsort(-np.abs(lam - 1) < 1e-9)][1:] if False else np.delete(lam, np.argmin(np.abs(lam - 1)))
    K_eig = np.sum(1 / (1 - lam)).real
    assert rel(mk.kemeny_constant(P), K_eig) < 1e-9
    assert rel(mk.kemeny_constant(P), Kv[0]) < 1e-12
    # reversible chain (random symmetric weights): q- = 1 - q+
    Wt = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
    Wt = Wt + Wt.T + np.diag(np.ones(n)) + np.roll(np.eye(n), 1, axis=1) + np.roll(np.eye(n), -1, axis=1)
    R = Wt / Wt.sum(axis=1, keepdims=True)
    A, B = [0, 1], [n // 2]
    qf = mk.committor(R, A, B)
    qb = mk.committor(R, A, B, backward=True)
    assert rel(qb, 1 - qf) < 1e-10 or np.allclose(qb, 1 - qf, rtol=1e-10, atol=1e-14)
    assert rel(qf, committor_dense(R, np.array(A), np.array(B))) < 1e-10


def test_backward_committor_nonreversible():
    rng = np.random.default_rng(7)
    n = 25
    P = random_chain(rng, n)
    pi = stationary_dense(P)
    Rev = (P.T * pi[None, :]) / pi[:, None]
    A, B = np.array([0, 3]), np.array([10, 11])
    ref = committor_dense(Rev, B, A)
    assert np.allclose(mk.committor(P, A, B, backward=True), ref, rtol=1e-10, atol=1e-13)
    assert np.allclose(mk.committor(sp.csr_array(P), A, B, backward=True), ref, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------- hypothesis vs dense numpy


@st.composite
def chains(draw):
    n = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.floats(0.05, 1.0))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    rng = np.random.default_rng(seed)
    P = random_chain(rng, n, density) * scale
    P /= P.sum(axis=1, keepdims=True)
    k = draw(st.integers(1, n))
    target = rng.choice(n, size=k, replace=False)
    return P, target


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.sampled_from(["dense", "csr", "csr64", "coo"]), st.sampled_from(METHODS))
def test_hypothesis_vs_dense(ch, fmt, method):
    P, target = ch
    if fmt == "dense":
        Pin = P
    elif fmt == "csr":
        Pin = sp.csr_array(P)
    elif fmt == "csr64":
        Pin = sp.csr_array(P)
        Pin.indptr = Pin.indptr.astype(np.int64)
        Pin.indices = Pin.indices.astype(np.int64)
    else:
        Pin = sp.coo_array(P)
    h = mk.hitting_times(Pin, target, method=method)
    assert rel(h, hit_dense(P, target)) < 1e-9
    pi = mk.stationary_distribution(Pin)
    assert np.allclose(pi, stationary_dense(P), rtol=1e-9, atol=1e-14)
    n = P.shape[0]
    if n >= 3:
        A, B = target[:1], np.setdiff1d(np.arange(n), target)[:1]
        if B.size:
            q = mk.committor(Pin, A, B, method=method)
            assert np.allclose(q, committor_dense(P, A, B), rtol=1e-9, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 25), st.integers(0, 2**32 - 1))
def test_hypothesis_reducible_inf(n, seed):
    """Random reducible chains (with absorbing states and closed classes): inf exactly where
    the reference says the target is missed with positive probability."""
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) * (rng.random((n, n)) < 0.25)
    absorbing = rng.random(n) < 0.3
    P[absorbing] = 0
    P[np.arange(n), np.arange(n)] += absorbing + 1e-3
    P /= P.sum(axis=1, keepdims=True)
    t = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
    h = mk.hitting_times(P, t)
    r = hit_dense(P, t)
    assert rel(h, r) < 1e-8
    hs = mk.hitting_times(sp.csr_array(P), t)
    assert rel(hs, r) < 1e-8
    M = mk.mean_first_passage_times(P)
    assert rel(M[:, t[0]], hit_dense(P, [t[0]])) < 1e-8


# ----------------------------------------------------------------- larger sparse paths


def test_sparse_ring_paths_agree():
    n = 3000
    P = ring_chain(n, 4)
    from scipy.sparse.linalg import spsolve

    h = mk.hitting_times(P, [0])
    hl = mk.hitting_times(P, [0], method="lu")
    Q = P[1:, 1:]
    ref = spsolve(sp.identity(n - 1, format="csc") - Q.tocsc(), np.ones(n - 1))
    assert rel(h[1:], ref) < 1e-9
    assert rel(hl[1:], ref) < 1e-9
    pi = mk.stationary_distribution(P)
    assert np.abs(pi @ P - pi).max() / pi.min() < 1e-9


def test_sparse_random_dense_switch():
    """Random sparse chain: fill-in drives the sparse engine into its dense tail."""
    rng = np.random.default_rng(1)
    n = 1500
    A = (
        sp.random(n, n, density=5 / n, random_state=2, format="csr")
        + sp.diags(np.ones(n - 1), 1)
        + sp.diags([1.0], -(n - 1))
    )
    A = sp.csr_array(A)
    P = sp.csr_array(sp.diags(1 / A.sum(axis=1)) @ A)
    t = rng.choice(n, 3, replace=False)
    h = mk.hitting_times(P, t)
    assert rel(h, hit_dense(P.toarray(), t)) < 1e-9
    pi = mk.stationary_distribution(P)
    assert rel(pi, mk.stationary_distribution(P.toarray())) < 1e-10


# ----------------------------------------------------------------- metastable accuracy


EPS = [1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-15]


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_metastable_hitting_vs_mpmath(eps, fmt):
    P = mk.metastable_chain(3, 5, degree=2, eps=eps, seed=1)
    A = np.arange(10, 15)
    ref = hit_mpmath(P, A)
    Pin = P if fmt == "dense" else sp.csr_array(P)
    assert rel(mk.hitting_times(Pin, A), ref) <= 1e-12
    q = mk.committor(Pin, [2], A)
    assert rel(q, committor_mpmath(P, [2], A)) <= 1e-12
    M = mk.mean_first_passage_times(P)
    assert rel(M[:, 12], hit_mpmath(P, [12])) <= 1e-12


def test_naive_solve_fails_where_gth_does_not():
    """Documents the problem: the naive float64 solve of I - Q is off by >1e-3 at eps=1e-15."""
    P = mk.metastable_chain(3, 5, degree=2, eps=1e-15, seed=1)
    A = np.arange(10, 15)
    ref = hit_mpmath(P, A)
    S = np.arange(10)
    naive = np.linalg.solve(np.eye(10) - P[np.ix_(S, S)], np.ones(10))
    assert rel(naive, ref[S]) > 1e-3
    assert rel(mk.hitting_times(P, A)[S], ref[S]) <= 1e-12


def test_stationary_spanning_decades():
    # forward rare edges 1e-15, strong backward edges: pi decays by ~15 decades per cluster
    P = mk.metastable_chain(5, 3, degree=2, eps=1e-15, eps_back=0.5, seed=4)
    ref = stationary_mpmath(P)
    assert ref.max() / ref.min() > 1e50
    for Pin in (P, sp.csr_array(P)):
        pi = mk.stationary_distribution(Pin)
        assert rel(pi, ref) <= 1e-12


def test_hitting_time_scales_like_inverse_eps():
    prods = []
    for eps in [1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-15]:
        P = mk.metastable_chain(4, 6, degree=3, eps=eps, seed=2, sparse=True)
        h = mk.hitting_times(P, np.arange(18, 24))
        prods.append(h[0] * eps)
    prods = np.array(prods)
    assert np.all(np.isfinite(prods))
    assert prods.max() / prods.min() < 1.01  # a constant band: eps * E[T] -> constant
    assert prods.min() > 1


def test_metastable_decomposition_recovers_clusters():
    for eps in [1e-5, 1e-15]:
        P = mk.metastable_chain(4, 7, degree=3, eps=eps, seed=0)
        for Pin in (P, sp.csr_array(P)):
            d = mk.metastable_decomposition(Pin)
            assert d.n_clusters == 4
            assert (d.labels == np.repeat(np.arange(4), 7)).all()
            assert eps < d.threshold < 0.01
    # no scale separation: one cluster
    P = random_chain(np.random.default_rng(0), 20)
    assert mk.metastable_decomposition(P).n_clusters == 1


# ----------------------------------------------------------------- classes


def test_classes_vs_networkx():
    rng = np.random.default_rng(5)
    for _ in range(10):
        n = 30
        P = rng.random((n, n)) * (rng.random((n, n)) < 0.06)
        P[np.arange(n), np.arange(n)] += 0.1
        P /= P.sum(axis=1, keepdims=True)
        G = nx.DiGraph()
        G.add_nodes_from(range(n))
        G.add_edges_from(zip(*np.nonzero(P * (1 - np.eye(n)))))
        C = nx.condensation(G)
        closed_ref = sorted(sorted(C.nodes[c]["members"]) for c in C if C.out_degree(c) == 0)
        closed = [list(c) for c in mk.closed_classes(P)]
        assert closed == closed_ref
        trans_ref = sorted(set(range(n)) - set(x for c in closed_ref for x in c))
        assert list(mk.transient_states(sp.csr_array(P))) == trans_ref
        lab, _ = mk.communication_classes(P)
        for c in C:
            mem = list(C.nodes[c]["members"])
            assert len(set(lab[mem])) == 1
        assert len(set(lab)) == C.number_of_nodes()


def test_unreachable_is_inf_and_multiple_closed_classes():
    P = np.array([[0.5, 0.25, 0.25, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    h = mk.hitting_times(P, [3])
    assert h[1] == np.inf and h[0] == np.inf and h[3] == 0 and h[2] == 2
    with pytest.raises(ess.InvalidArgumentError, match="closed classes"):
        mk.stationary_distribution(P)
    ap = mk.absorption_probabilities(P, [[1], [2, 3]])
    assert np.allclose(ap[0], [0.5, 0.5])
    M = mk.mean_first_passage_times(P)
    assert M[1, 0] == np.inf and M[0, 1] == np.inf and M[2, 3] == 2 and M[3, 2] == 2


# ----------------------------------------------------------------- bad input


def test_bad_input():
    P = np.array([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ess.NotStochasticError, match="negative"):
        mk.hitting_times(np.array([[1.5, -0.5], [0.5, 0.5]]), [0])
    with pytest.raises(ess.NotStochasticError, match="row 1 sums"):
        mk.hitting_times(np.array([[0.5, 0.5], [0.5, 0.4]]), [0])
    with pytest.raises(ess.NonFiniteError):
        mk.stationary_distribution(np.array([[np.nan, 1.0], [0.5, 0.5]]))
    with pytest.raises(ess.ShapeError, match="square"):
        mk.hitting_times(np.ones((2, 3)) / 3, [0])
    with pytest.raises(ess.ShapeError):
        mk.hitting_times(np.ones(4), [0])
    with pytest.raises(ess.InvalidArgumentError, match="target set is empty"):
        mk.hitting_times(P, [])
    with pytest.raises(ess.OutOfRangeError, match="target"):
        mk.hitting_times(P, [2])
    with pytest.raises(ess.OutOfRangeError, match="target"):
        mk.hitting_times(P, [-1])
    with pytest.raises(ess.DTypeError, match="target"):
        mk.hitting_times(P, [0.5])
    with pytest.raises(ess.DTypeError):
        mk.hitting_times(P.astype(complex), [0])
    with pytest.raises(ess.InvalidArgumentError, match="method"):
        mk.hitting_times(P, [0], method="qr")
    with pytest.raises(ess.InvalidArgumentError, match="both A and B"):
        mk.committor(P, [0], [0])
    with pytest.raises(ess.InvalidArgumentError, match="B"):
        mk.committor(P, [0], [])
    with pytest.raises(ess.InvalidArgumentError, match="disjoint"):
        mk.absorption_probabilities(P, [[0], [0]])
    with pytest.raises(ess.ShapeError, match="no states"):
        mk.stationary_distribution(np.zeros((0, 0)))
    # sparse: a state with no outgoing edges
    S = sp.csr_array(np.array([[0.5, 0.5, 0], [0, 0, 0], [0, 0, 1.0]]))
    with pytest.raises(ess.NotStochasticError, match="row 1 has no outgoing"):
        mk.hitting_times(S, [2])
    # invalid CSR arrays straight into the core
    from ess import _core

    with pytest.raises(ess.OutOfRangeError):
        _core.markov_hitting_times((2, np.array([0, 1, 2]), np.array([0, 5]), np.array([1.0, 1.0])), [0])
    with pytest.raises(ess.InvalidArgumentError):
        _core.markov_hitting_times((2, np.array([0, 2, 1]), np.array([0, 1]), np.array([1.0, 1.0])), [0])
    with pytest.raises(ess.ShapeError):
        _core.markov_hitting_times((3, np.array([0, 1, 2]), np.array([0, 1]), np.array([1.0, 1.0])), [0])
    with pytest.raises(ess.DTypeError):
        _core.markov_hitting_times((2, np.array([0, 1, 2], np.int32), np.array([0, 1]), np.array([1.0, 1.0])), [0])
    with pytest.raises(ess.TooLargeError):
        mk.mean_first_passage_times(sp.identity(30000, format="csr"))


def test_row_sum_tolerance_is_stated():
    P = np.array([[0.5, 0.5 + 5e-10], [0.5, 0.5]])
    mk.hitting_times(P, [0])  # within 1e-9
    P[0, 1] += 2e-9
    with pytest.raises(ess.NotStochasticError, match="1e-9"):
        mk.hitting_times(P, [0])
    assert mk.ROW_SUM_TOL == 1e-9


def test_csr_duplicates_and_unsorted():
    # duplicates are summed, unsorted indices accepted, explicit zeros ignored
    data = np.array([0.25, 0.25, 0.5, 0.0, 1.0])
    indices = np.array([1, 1, 0, 1, 0])
    indptr = np.array([0, 3, 5])
    S = sp.csr_array((data, indices, indptr), shape=(2, 2))
    assert rel(mk.hitting_times(S, [1]), [2, 0]) < 1e-15


def test_kemeny_requires_irreducible():
    P = np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]])  # state 0 transient
    with pytest.raises(ess.InvalidArgumentError, match="irreducible"):
        mk.kemeny_constant(P)
    P2 = np.array([[1.0, 0], [0, 1.0]])
    with pytest.raises(ess.InvalidArgumentError, match="closed classes"):
        mk.kemeny_constant(P2)


def test_lu_path_loses_digits_on_metastable_chain():
    """The documented trade-off: LU is fine on well-conditioned chains, not on rare edges."""
    P = sp.csr_array(mk.metastable_chain(3, 5, degree=2, eps=1e-15, seed=1))
    A = np.arange(10, 15)
    ref = hit_mpmath(P.toarray(), A)
    assert rel(mk.hitting_times(P, A, method="gth"), ref) <= 1e-12
    assert rel(mk.hitting_times(P, A, method="lu"), ref) > 1e-6


def test_all_targets_and_single_state():
    P = np.array([[1.0]])
    assert mk.hitting_times(P, [0]).tolist() == [0.0]
    assert mk.stationary_distribution(P).tolist() == [1.0]
    assert mk.mean_first_passage_times(P).tolist() == [[0.0]]
    Q = np.full((3, 3), 1 / 3)
    assert mk.hitting_times(Q, [0, 1, 2]).tolist() == [0, 0, 0]


# ----------------------------------------------------------------- banded GTH path
# Sparse input whose pattern has a narrow band in natural or reverse Cuthill-McKee order
# (rings, paths, nearest-neighbour chains) runs the banded elimination.


def banded_chain(n, half, ring, rng, rare=None):
    """Random chain with transitions i -> i-half..i+half (mod n on a ring, clipped on a path);
    with ``rare``, about a fifth of the off-diagonal weights are scaled by ``rare``."""
    P = np.zeros((n, n))
    for i in range(n):
        for d in range(-half, half + 1):
            j = i + d
            if ring:
                j %= n
            elif not 0 <= j < n:
                continue
            w = rng.uniform(0.1, 1.0)
            if rare is not None and j != i and rng.random() < 0.2:
                w *= rare
            P[i, j] += w
    return P / P.sum(axis=1, keepdims=True)


def banded_cases(n_range, half_range, rares):
    """Hypothesis arguments (n, half, ring, seed, rare) of :func:`banded_chain`."""
    return given(
        st.integers(*n_range),
        st.integers(*half_range),
        st.booleans(),
        st.integers(0, 2**32 - 1),
        st.sampled_from(rares),
    )


def reference_stationary(P, rare):
    """The dense-input GTH engine (mpmath-tested above) as the reference; numpy is an
    independent cross-check, normwise and loose: its solves lose digits on long
    birth-death paths (entrywise errors up to ~1e-8 at n = 40, normwise 6e-8 worst seen
    over 900 paths of up to 140 states)."""
    ref = mk.stationary_distribution(P)
    if rare is None:
        npy = stationary_dense(P)
        assert np.max(np.abs(ref - npy)) <= 1e-5 * np.max(npy)
    return ref


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@banded_cases((1, 40), (1, 3), [None, 1e-6, 1e-12])
def test_hypothesis_banded_vs_dense(n, half, ring, seed, rare):
    rng = np.random.default_rng(seed)
    P = banded_chain(n, half, ring, rng, rare)
    ref_pi = reference_stationary(P, rare)
    Ps = sp.csr_array(P)
    assert rel(mk.stationary_distribution(Ps), ref_pi) < 1e-12
    k = int(rng.integers(1, n + 1))
    t = rng.choice(n, size=k, replace=False)
    ref_h = mk.hitting_times(P, t)
    assert rel(mk.hitting_times(Ps, t), ref_h) < 1e-12
    if rare is None:
        nh = hit_dense(P, t)
        assert np.max(np.abs(ref_h - nh)) <= 1e-6 * np.max(nh)
    if n >= 3:
        A, B = t[:1], np.setdiff1d(np.arange(n), t)[:1]
        if B.size:
            ref_q = committor_dense(P, A, B) if rare is None else mk.committor(P, A, B)
            q = mk.committor(Ps, A, B)
            if rare is None:
                assert np.allclose(q, ref_q, rtol=1e-9, atol=1e-13)
            else:
                assert rel(q, ref_q) < 1e-12
            ab = mk.absorption_probabilities(Ps, [A, B])
            assert np.allclose(ab[:, 1], q, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("half", [1, 2])
def test_banded_tiny_rings(n, half):
    rng = np.random.default_rng(n * 10 + half)
    P = banded_chain(n, half, True, rng)
    Ps = sp.csr_array(P)
    assert rel(mk.stationary_distribution(Ps), stationary_dense(P)) < 1e-12
    assert rel(mk.hitting_times(Ps, [0]), hit_dense(P, [0])) < 1e-12
    if n == 3:
        assert rel(mk.committor(Ps, [0], [2]), committor_dense(P, [0], [2])) < 1e-12


def metastable_ring(n_clusters, size, eps, seed):
    """Clusters of ``size`` states on a ring, each state linked to its ring neighbours at
    distance 1 and 2; links between clusters have weight ``eps``: a banded metastable chain."""
    rng = np.random.default_rng(seed)
    n = n_clusters * size
    P = np.zeros((n, n))
    for i in range(n):
        for d in (-2, -1, 1, 2):
            j = (i + d) % n
            P[i, j] = rng.uniform(0.2, 1.0) * (1.0 if i // size == j // size else eps)
        P[i, i] = 0.5
    return P / P.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("eps", EPS)
def test_banded_metastable_vs_mpmath(eps):
    P = metastable_ring(4, 8, eps, seed=5)
    Ps = sp.csr_array(P)
    A = np.arange(24, 32)
    assert rel(mk.hitting_times(Ps, A), hit_mpmath(P, A)) <= 1e-12
    assert rel(mk.stationary_distribution(Ps), stationary_mpmath(P)) <= 1e-12
    assert rel(mk.committor(Ps, [3], A), committor_mpmath(P, [3], A)) <= 1e-12


def test_banded_ring_rcm_matches_dense_engine():
    """A 200-state metastable ring (the wrap-around needs the Cuthill-McKee order) against
    the dense engine (dense input with n <= 256) on the same chain."""
    P = metastable_ring(4, 50, 1e-13, seed=6)
    Ps = sp.csr_array(P)
    assert rel(mk.stationary_distribution(Ps), mk.stationary_distribution(P)) <= 1e-12
    for A in ([0], np.arange(150, 200)):
        assert rel(mk.hitting_times(Ps, A), mk.hitting_times(P, A)) <= 1e-12
    assert rel(mk.committor(Ps, [0], [100]), mk.committor(P, [0], [100])) <= 1e-12


# ----------------------------------------------------------------- cyclic-band streaming GTH
# Sparse chains whose transitions satisfy |i - j| <= b or |i - j| >= n - b (b <= 24) take a
# streaming elimination straight from the CSR input (stationary distribution only); it
# hands over to the general route when some pivot is zero (not a single closed class).


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@banded_cases((4, 140), (1, 9), [None, 1e-8, 1e-15])
def test_hypothesis_cyclic_band_stationary(n, half, ring, seed, rare):
    rng = np.random.default_rng(seed)
    P = banded_chain(n, half, ring, rng, rare)
    ref = reference_stationary(P, rare)
    Ps = sp.csr_array(P)
    assert rel(mk.stationary_distribution(Ps), ref) < 1e-12
    # int64 indices and unsorted, duplicated entries give the same answer
    coo = Ps.tocoo()
    order = rng.permutation(coo.nnz)
    r, c, v = coo.row[order], coo.col[order], coo.data[order]
    dup = sp.csr_array(
        (np.concatenate([v / 2, v / 2]), (np.concatenate([r, r]), np.concatenate([c, c]))), shape=P.shape
    )
    dup.indptr = dup.indptr.astype(np.int64)
    dup.indices = dup.indices.astype(np.int64)
    assert rel(mk.stationary_distribution(dup), ref) < 1e-12


def test_cyclic_band_reducible_chains_take_the_general_route():
    rng = np.random.default_rng(3)
    n = 60
    # birth-death chain absorbed at 0: one closed class {0}, all else transient
    P = banded_chain(n, 1, False, rng)
    P[0] = 0.0
    P[0, 0] = 1.0
    pi = mk.stationary_distribution(sp.csr_array(P))
    assert pi[0] == 1.0 and np.all(pi[1:] == 0.0)
    # closed class in the middle, the last states transient
    P = banded_chain(n, 2, False, rng)
    P[:50, 50:] = 0.0
    P[:50] /= P[:50].sum(axis=1, keepdims=True)
    P[50:, :] = 0.0
    for i in range(50, n):
        P[i, i - 1] = 1.0
    pi = mk.stationary_distribution(sp.csr_array(P))
    ref = stationary_dense(P[:50, :50])
    assert rel(pi[:50], ref) < 1e-10 and np.all(pi[50:] == 0.0)
    # two closed classes: a clear error, not a number
    P = banded_chain(n, 2, False, rng)
    P[:30, 30:] = 0.0
    P[30:, :30] = 0.0
    P /= P.sum(axis=1, keepdims=True)
    with pytest.raises(ValueError, match="closed classes"):
        mk.stationary_distribution(sp.csr_array(P))


def test_cyclic_band_metastable_ring_vs_mpmath_large_eps_range():
    # rare edges down to 1e-15 along a ring of 4 x 8 states: entrywise accurate
    for eps in EPS:
        P = metastable_ring(4, 8, eps, seed=11)
        assert rel(mk.stationary_distribution(sp.csr_array(P)), stationary_mpmath(P)) <= 1e-12


def test_corrupt_csr_indptr_is_an_error_not_a_panic():
    P = sp.csr_array(np.array([[0.5, 0.5], [0.5, 0.5]]))
    P.indptr = np.array([0, 100, 4], dtype=P.indptr.dtype)  # row 0 runs past the data
    for f in (mk.stationary_distribution, lambda M: mk.hitting_times(M, [0])):
        with pytest.raises(ess.InvalidArgumentError, match="indptr"):
            f(P)
