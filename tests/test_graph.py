"""SCC kernel, condensation and reachability against scipy / networkx references."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components

import ess
from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError, TooLargeError
from ess.graph import condensation, strongly_connected_components


# ---------------------------------------------------------------- references
def scipy_scc(src, dst, n):
    if n == 0:
        return 0, np.zeros(0, dtype=np.int32)
    a = scipy.sparse.csr_array(
        (np.ones(len(src)), (np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64))), shape=(n, n)
    )
    return connected_components(a, directed=True, connection="strong")


def same_partition(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


ALGORITHMS = ("auto", "pearce", "fwbw")


def check_against_refs(src, dst, n):
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    rnc, rlab = scipy_scc(src, dst, n)
    out = []
    for algorithm in ALGORITHMS:
        nc, lab = strongly_connected_components(src, dst, n, algorithm=algorithm)
        assert nc == rnc
        assert lab.dtype == np.int32 and lab.shape == (n,)
        assert same_partition(lab, rlab)
        if n:
            assert lab.min() >= 0 and lab.max() == nc - 1
        # numbering: sinks first, every cross edge goes to a smaller number
        assert np.all(lab[src] >= lab[dst])
        out.append((nc, lab))
    return out[0]


# ---------------------------------------------------------------- graph strategies
@st.composite
def random_graphs(draw):
    n = draw(st.integers(0, 40))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    m = draw(st.integers(0, 3 * n + 5))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    return np.array(src, np.int64), np.array(dst, np.int64), n


@st.composite
def adversarial_graphs(draw):
    kind = draw(
        st.sampled_from(["selfloops", "duplicates", "isolated", "cycle", "path", "complete_dag", "two_cycles_bridge"])
    )
    n = draw(st.integers(1, 60))
    r = np.arange(n, dtype=np.int64)
    if kind == "selfloops":
        src, dst = r, r.copy()
    elif kind == "duplicates":
        base = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=10))
        e = np.array(base * 5, dtype=np.int64)
        src, dst = e[:, 0], e[:, 1]
    elif kind == "isolated":
        src = dst = np.zeros(0, np.int64)
    elif kind == "cycle":
        src, dst = r, np.roll(r, -1)
    elif kind == "path":
        src, dst = r[:-1], r[1:]
    elif kind == "complete_dag":
        i, j = np.triu_indices(n, 1)
        src, dst = i.astype(np.int64), j.astype(np.int64)
    else:
        h = max(n // 2, 1)
        src = np.concatenate([r[:h], r[h:], [0]])
        dst = np.concatenate([np.roll(r[:h], -1), np.roll(r[h:], -1), [n - 1]])
    perm = np.array(draw(st.permutations(range(n))), dtype=np.int64)
    return perm[src], perm[dst], n


@settings(max_examples=150, deadline=None)
@given(random_graphs())
def test_random_graphs_match_scipy(g):
    check_against_refs(*g)


@settings(max_examples=150, deadline=None)
@given(adversarial_graphs())
def test_adversarial_graphs_match_scipy(g):
    check_against_refs(*g)


@settings(max_examples=60, deadline=None)
@given(random_graphs(), st.randoms(use_true_random=False))
def test_relabelling_invariance(g, rnd):
    src, dst, n = g
    _, lab = check_against_refs(src, dst, n)
    perm = np.array(rnd.sample(range(n), n), dtype=np.int64) if n else np.zeros(0, np.int64)
    _, lab2 = strongly_connected_components(perm[src], perm[dst], n)
    # node v is now perm[v]
    assert same_partition(lab, lab2[perm] if n else lab2)


@settings(max_examples=80, deadline=None)
@given(random_graphs(), st.sampled_from(ALGORITHMS))
def test_condensation_and_reachability_match_networkx(g, algorithm):
    src, dst, n = g
    c = condensation(src, dst, n, algorithm=algorithm)
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    G.add_edges_from(zip(src.tolist(), dst.tolist()))
    ref_sccs = list(nx.strongly_connected_components(G))
    assert c.n_components == len(ref_sccs)
    assert same_partition(c.labels, [next(i for i, s in enumerate(ref_sccs) if v in s) for v in range(n)])
    assert c.sizes.sum() == n
    np.testing.assert_array_equal(c.sizes, np.bincount(c.labels, minlength=c.n_components))
    a, b = c.edges
    # acyclic by construction: every edge goes to a smaller number; deduplicated
    assert np.all(a > b)
    assert len(set(zip(a.tolist(), b.tolist()))) == a.shape[0]
    cross = {(int(c.labels[u]), int(c.labels[v])) for u, v in zip(src, dst) if c.labels[u] != c.labels[v]}
    assert cross == set(zip(a.tolist(), b.tolist()))
    D = nx.DiGraph()
    D.add_nodes_from(range(c.n_components))
    D.add_edges_from(zip(a.tolist(), b.tolist()))
    assert nx.is_directed_acyclic_graph(D)
    order = c.topological_order()
    pos = np.empty(c.n_components, dtype=np.int64)
    pos[order] = np.arange(c.n_components)
    assert np.all(pos[a] < pos[b])
    if c.n_components:
        qa, qb = np.meshgrid(np.arange(c.n_components), np.arange(c.n_components))
        got = c.reaches(qa.ravel(), qb.ravel())
        ref = [nx.has_path(D, int(x), int(y)) for x, y in zip(qa.ravel(), qb.ravel())]
        np.testing.assert_array_equal(got, ref)


def test_small_examples_and_numbering():
    # 0 -> 1 -> 2 -> 0, 2 -> 3, 4 isolated
    nc, lab = strongly_connected_components(np.array([0, 1, 2, 2]), np.array([1, 2, 0, 3]), 5)
    assert nc == 3
    assert lab[0] == lab[1] == lab[2]
    assert lab[3] < lab[0]
    c = condensation(np.array([0, 1, 2, 2]), np.array([1, 2, 0, 3]), 5)
    assert c.reaches(int(lab[0]), int(lab[3])) is True
    assert c.reaches(int(lab[3]), int(lab[0])) is False
    assert c.reaches(int(lab[4]), int(lab[4])) is True
    assert strongly_connected_components(np.zeros(0, np.int32), np.zeros(0, np.int32), 0)[0] == 0
    assert strongly_connected_components(np.zeros(0, np.int32), np.zeros(0, np.int32), 3)[0] == 3


def test_dtypes_and_layouts():
    rng = np.random.default_rng(0)
    n = 300
    src = rng.integers(0, n, 1000)
    dst = rng.integers(0, n, 1000)
    _, ref = scipy_scc(src, dst, n)
    for s, d in [
        (src.astype(np.int32), dst.astype(np.int32)),
        (src.astype(np.int64), dst.astype(np.int32)),
        (src.astype(np.uint16), dst.astype(np.uint32)),
        (np.repeat(src, 2)[::2], np.repeat(dst, 2)[::2]),  # non-contiguous
        (src.tolist(), dst.tolist()),
    ]:
        _, lab = strongly_connected_components(s, d, n)
        assert same_partition(lab, ref)


def test_long_path_and_big_cycle_no_recursion():
    n = 10_000_000
    r = np.arange(n, dtype=np.int32)
    nc, lab = strongly_connected_components(r[:-1], r[1:], n)
    assert nc == n
    assert lab[0] == n - 1 and lab[-1] == 0
    nc, lab = strongly_connected_components(r, np.roll(r, -1), n)
    assert nc == 1 and np.all(lab == 0)


def test_bad_input():
    a = np.array([0, 1, 2])
    with pytest.raises(OutOfRangeError, match=r"dst: entry 2 = 5"):
        strongly_connected_components(a, np.array([1, 2, 5]), 3)
    with pytest.raises(OutOfRangeError, match=r"src: entry 1 = -1"):
        strongly_connected_components(np.array([0, -1, 2]), a, 3)
    with pytest.raises(ShapeError, match="same length"):
        strongly_connected_components(a, np.array([0, 1]), 3)
    with pytest.raises(DTypeError, match="src"):
        strongly_connected_components(a.astype(float), a, 3)
    with pytest.raises(DTypeError, match="dst"):
        strongly_connected_components(a, np.array(["a", "b", "c"]), 3)
    with pytest.raises(ShapeError, match="one-dimensional"):
        strongly_connected_components(a.reshape(3, 1), a.reshape(3, 1), 3)
    with pytest.raises(InvalidArgumentError, match="n_nodes"):
        strongly_connected_components(a, a, -1)
    with pytest.raises(DTypeError, match="n_nodes"):
        strongly_connected_components(a, a, 3.0)
    with pytest.raises(OutOfRangeError):
        strongly_connected_components(a, a, 0)
    with pytest.raises(OutOfRangeError):
        strongly_connected_components(np.array([2**40]), np.array([0]), 3)
    c = condensation(a, a, 3)
    with pytest.raises(OutOfRangeError, match="a"):
        c.reaches(5, 0)
    with pytest.raises(DTypeError):
        c.reaches(0.5, 0)
    # the compiled layer checks too
    with pytest.raises(DTypeError, match="src"):
        ess._core.graph_scc(a.astype(np.float32), a, 3)
    with pytest.raises(ValueError):  # errors are ValueErrors too
        strongly_connected_components(a, np.array([1, 2, 5]), 3)
    with pytest.raises(InvalidArgumentError, match="algorithm"):
        strongly_connected_components(a, a, 3, algorithm="kosaraju")
    with pytest.raises(InvalidArgumentError, match="algorithm"):
        condensation(a, a, 3, algorithm="")
    # the forward-backward path (CSR + transpose) names the offending array too
    for alg in ALGORITHMS:
        with pytest.raises(OutOfRangeError, match=r"dst: entry 2 = 5"):
            strongly_connected_components(a, np.array([1, 2, 5]), 3, algorithm=alg)
        with pytest.raises(OutOfRangeError, match=r"src: entry 1 = -1"):
            strongly_connected_components(np.array([0, -1, 2]), a, 3, algorithm=alg)
    # sizes that cannot fit: a clear error before any allocation, not an abort
    with pytest.raises(TooLargeError, match="n_nodes"):
        strongly_connected_components(np.zeros(0, np.int64), np.zeros(0, np.int64), 4_000_000_000)
    with pytest.raises(TooLargeError, match="'fwbw' on 1 edges needs about .* GiB"):
        strongly_connected_components(np.zeros(1, np.int64), np.zeros(1, np.int64), 4_000_000_000, algorithm="fwbw")
    big = np.arange(300_000, dtype=np.int64)
    for alg in ALGORITHMS:
        bad = big.copy()
        bad[299_990] = 300_000
        with pytest.raises(OutOfRangeError, match=r"dst: entry 299990 = 300000"):
            strongly_connected_components(big, bad, 300_000, algorithm=alg)
        with pytest.raises(OutOfRangeError, match=r"src: entry 299990 = 300000"):
            strongly_connected_components(bad, big, 300_000, algorithm=alg)


def test_parallel_csr_large_random_matches_scipy():
    rng = np.random.default_rng(1)
    n = 50_000
    m = 400_000
    src = rng.integers(0, n, m)
    dst = rng.integers(0, n, m)
    check_against_refs(src, dst, n)


@pytest.mark.parametrize("n, m", [(100_000, 100_000), (100_000, 150_000), (70_000, 1_000_000), (300_000, 90_000)])
def test_large_graphs_all_algorithms_match_scipy(n, m):
    # sizes where "auto" takes the forward-backward path (n >= 65,536, m >= n) and where it
    # does not; sparse ones have many components besides the pivot's
    rng = np.random.default_rng(n + m)
    src = rng.integers(0, n, m)
    dst = rng.integers(0, n, m)
    check_against_refs(src, dst, n)
    check_against_refs(src.astype(np.int32), dst.astype(np.int32), n)


def test_forward_backward_with_ancestors_descendants_and_unrelated_parts():
    # a strongly connected core (the pivot's component), chains of small cycles feeding it,
    # fed by it, and disjoint from it; shuffled edge order and node ids
    rng = np.random.default_rng(5)
    core = 80_000
    parts = []
    r = np.arange(core)
    parts += [(r, (r + 1) % core), (r, rng.integers(0, core, core))]
    base = core
    for role in ("ancestor", "descendant", "unrelated"):
        k = 6_000
        v = base + np.arange(k)
        parts.append((v, base + (np.arange(k) // 3) * 3 + (np.arange(k) + 1) % 3))  # 3-cycles
        parts.append((v[:-3], v[3:]))  # chain between the cycles
        if role == "ancestor":
            parts.append((v[::5], rng.integers(0, core, v[::5].size)))
        elif role == "descendant":
            parts.append((rng.integers(0, core, v[::5].size), v[::5]))
        base += k
    src = np.concatenate([p[0] for p in parts])
    dst = np.concatenate([p[1] for p in parts])
    n = base
    perm = rng.permutation(n)
    order = rng.permutation(src.size)
    nc, lab = check_against_refs(perm[src][order], perm[dst][order], n)
    assert nc == 1 + 3 * 2_000
