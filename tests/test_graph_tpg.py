"""Token-priority graphs, retrieval, graph-SVM and W_fin: worked toy examples and references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError
from ess.graph import TokenPriorityGraphs

TOY = json.loads((Path(__file__).parent / "data" / "tpg_toy.json").read_text())
CYCLIC = TOY["datasets"][0]
SINGLE = TOY["datasets"][1]


# ---------------------------------------------------------------- slow references
def ref_graphs(windows, labels):
    """dict last token -> nx.DiGraph with edges label -> other tokens of the window."""
    out = {}
    for w, y in zip(windows, labels):
        g = out.setdefault(int(w[-1]), nx.DiGraph())
        g.add_nodes_from(int(x) for x in w)
        for x in w:
            if int(x) != int(y):
                g.add_edge(int(y), int(x))
    return out


def ref_retrieval(graphs, window):
    k = int(window[-1])
    toks = sorted(set(int(x) for x in window))
    g = graphs.get(k)
    if g is None:
        return toks, len(toks) == 1
    comp = {}
    for i, c in enumerate(nx.strongly_connected_components(g)):
        for v in c:
            comp[v] = i

    def outranks(a, b):
        return a in g and b in g and comp[a] != comp[b] and nx.has_path(g, a, b)

    maximal = [t for t in toks if not any(outranks(o, t) for o in toks)]
    det = len(maximal) == 1 or (all(t in g for t in maximal) and len({comp[t] for t in maximal}) == 1)
    return maximal, det


def ref_svm_column(g):
    """min ||w||^2 s.t. w_y = w_x (same SCC) or w_y - w_x >= 1: one variable per SCC (the
    equalities tie each SCC), weights = SCC sizes, solved by SLSQP from a feasible point."""
    C = nx.condensation(g)
    n = C.number_of_nodes()
    size = np.array([len(C.nodes[c]["members"]) for c in range(n)], dtype=float)
    topo = {c: i for i, c in enumerate(nx.topological_sort(C))}
    x0 = np.array([-float(topo[c]) for c in range(n)])
    cons = [{"type": "ineq", "fun": lambda z, a=a, b=b: z[a] - z[b] - 1} for a, b in C.edges]
    res = minimize(
        lambda z: size @ z**2,
        x0,
        jac=lambda z: 2 * size * z,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    # status 8 ("positive directional derivative") is SLSQP stalling at the optimum
    assert res.success or res.status == 8, res.message
    assert all(res.x[a] - res.x[b] >= 1 - 1e-7 for a, b in C.edges)
    return {v: res.x[C.graph["mapping"][v]] for v in g.nodes}, res.fun


# ---------------------------------------------------------------- the worked toy datasets
def test_toy_cyclic_graphs_sccs_retrieval():
    t = TokenPriorityGraphs(CYCLIC["windows"], CYCLIC["labels"], CYCLIC["vocab_size"])
    want = {int(k): sorted(map(tuple, v)) for k, v in CYCLIC["graph_edges_by_last_token"].items()}
    assert sorted(int(k) for k in t.last_tokens) == sorted(want)
    for k, edges in want.items():
        g = t.graph(k)
        assert sorted(zip(g.edges[0].tolist(), g.edges[1].tolist())) == edges
        nontrivial = [sorted(c.tolist()) for c in g.components if c.shape[0] > 1]
        expect = [sorted(CYCLIC["nontrivial_scc"][str(k)])] if str(k) in CYCLIC["nontrivial_scc"] else []
        assert nontrivial == expect
        # priority numbering: edges go from higher to lower numbers
        assert all(g.component_of(a) >= g.component_of(b) for a, b in edges)
    assert t.graph(3) is None and t.graph(5) is None
    for ex in CYCLIC["retrieval_examples"]:
        r = t.retrieval_set(ex["window"])
        assert r.tokens.tolist() == sorted(ex["retrieved"])
        assert r.determined
    s = t.summary()
    assert s["n_graphs"] == 4 and s["n_cyclic"] == 1 and s["n_acyclic"] == 3
    assert s["largest_scc"].tolist() == [1, 1, 2, 1]


def test_toy_cyclic_graph_svm_columns_exact():
    t = TokenPriorityGraphs(CYCLIC["windows"], CYCLIC["labels"], CYCLIC["vocab_size"])
    W = t.graph_svm()
    expect = np.zeros((6, 6))
    for k, col in CYCLIC["graph_svm_columns_one_hot"].items():
        for x, v in col.items():
            expect[int(x), int(k)] = v
    np.testing.assert_allclose(W, expect, atol=1e-13, rtol=0)
    S = t.graph_svm(sparse=True)
    np.testing.assert_allclose(S.toarray(), expect, atol=1e-13)
    # E = identity through the general (Clarabel) path gives the same W
    np.testing.assert_allclose(t.graph_svm(np.eye(6)), expect, atol=1e-7)
    # an orthogonal embedding: W_E = Q^T W Q
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))[0]
    np.testing.assert_allclose(t.graph_svm(Q), Q.T @ expect @ Q, atol=1e-6)


def _one_hot_loss(W, windows, labels, K):
    total = 0.0
    for w, y in zip(windows, labels):
        s = W[np.asarray(w), w[-1]]
        p = np.exp(s - s.max())
        p /= p.sum()
        total -= math.log(p[np.asarray(w) == y].sum())
    return total / len(labels)


def test_toy_minimum_losses_and_soft_composition():
    # cyclic: W = W_fin + c W_svm reaches the stated minimum loss as c grows
    t = TokenPriorityGraphs(CYCLIC["windows"], CYCLIC["labels"], 6)
    Wf = t.finite_component(CYCLIC["windows"], CYCLIC["labels"])
    Ws = t.graph_svm()
    loss = _one_hot_loss(Wf + 60 * Ws, CYCLIC["windows"], CYCLIC["labels"], 6)
    assert loss == pytest.approx(CYCLIC["minimum_training_loss"], abs=1e-9)
    law = t.soft_composition(CYCLIC["retrieval_examples"][0]["window"], Wf)
    assert law == pytest.approx(
        {int(k): v for k, v in CYCLIC["retrieval_examples"][0]["limit_next_token_law"].items()}, abs=1e-9
    )
    # single SCC: no hard retrieval, W_fin alone is the optimum
    t = TokenPriorityGraphs(SINGLE["windows"], SINGLE["labels"], 3)
    assert np.all(t.graph_svm() == 0)
    Wf = t.finite_component(SINGLE["windows"], SINGLE["labels"])
    assert _one_hot_loss(Wf, SINGLE["windows"], SINGLE["labels"], 3) == pytest.approx(
        SINGLE["minimum_training_loss"], abs=1e-10
    )
    for key, want in SINGLE["finite_component_next_token_law"].items():
        got = t.soft_composition(json.loads(key), Wf)
        assert got == pytest.approx({int(k): v for k, v in want.items()}, abs=1e-9)


# ---------------------------------------------------------------- random datasets vs references
@st.composite
def datasets(draw):
    K = draw(st.integers(1, 8))
    n = draw(st.integers(1, 12))
    L = draw(st.integers(1, 5))
    windows = [draw(st.lists(st.integers(0, K - 1), min_size=L, max_size=L)) for _ in range(n)]
    labels = [draw(st.sampled_from(w)) for w in windows]
    return K, windows, labels


@settings(max_examples=80, deadline=None)
@given(datasets(), st.data())
def test_random_datasets_match_reference(ds, data):
    K, windows, labels = ds
    t = TokenPriorityGraphs(np.array(windows), np.array(labels), K)
    ref = ref_graphs(windows, labels)
    assert sorted(ref) == t.last_tokens.tolist()
    for k, g in ref.items():
        ours = t.graph(k)
        assert set(zip(ours.edges[0].tolist(), ours.edges[1].tolist())) == set(g.edges)
        assert sorted(sorted(c.tolist()) for c in ours.components) == sorted(
            sorted(c) for c in nx.strongly_connected_components(g)
        )
    for _ in range(5):
        L = data.draw(st.integers(1, 6))
        w = data.draw(st.lists(st.integers(0, K - 1), min_size=L, max_size=L))
        r = t.retrieval_set(w)
        rt, rd = ref_retrieval(ref, w)
        assert r.tokens.tolist() == rt and r.determined == rd
    # batch retrieval equals single retrieval
    sets, det = t.retrieval_sets(np.array(windows))
    for w, s, d in zip(windows, sets, det):
        r = t.retrieval_set(w)
        assert s.tolist() == r.tokens.tolist() and d == r.determined
    # a training window always retrieves its own label (nothing in it outranks the label)
    for _w, y, s in zip(windows, labels, sets):
        assert y in s.tolist()
    # graph-SVM columns: feasible and as small as SLSQP's
    W = t.graph_svm()
    for k, g in ref.items():
        col = W[:, k]
        assert np.all(col[[v for v in range(K) if v not in g]] == 0)
        comp = {}
        for i, c in enumerate(nx.strongly_connected_components(g)):
            for v in c:
                comp[v] = i
        for y, x in g.edges:
            if comp[y] == comp[x]:
                assert abs(col[y] - col[x]) < 1e-9
            else:
                assert col[y] - col[x] >= 1 - 1e-9
        _, fun = ref_svm_column(g)
        assert col @ col <= fun + 1e-7


def test_padding_offsets_and_ragged_forms_agree():
    w = [[1, 2, 5, 4], [5, 0, 1], [4, 5, 3, 1], [0, 2]]
    y = [1, 5, 5, 0]
    padded = np.array([[1, 2, 5, 4], [5, 0, 1, -1], [4, 5, 3, 1], [0, 2, -1, -1]])
    left = np.array([[1, 2, 5, 4], [-1, 5, 0, 1], [4, 5, 3, 1], [-1, -1, 0, 2]])
    flat = np.concatenate([np.array(r) for r in w])
    off = np.array([0, 4, 7, 11, 13])
    forms = [
        TokenPriorityGraphs(w, y, 6),
        TokenPriorityGraphs(padded, y, 6, pad=-1),
        TokenPriorityGraphs(left, y, 6, pad=-1),
        TokenPriorityGraphs(flat, y, 6, offsets=off),
        TokenPriorityGraphs(padded.astype(np.int32), np.array(y, np.int32), 6, pad=-1),
    ]
    ref = forms[0]
    for f in forms[1:]:
        assert f.last_tokens.tolist() == ref.last_tokens.tolist()
        for k in ref.last_tokens:
            a, b = ref.graph(k), f.graph(k)
            assert a.edges[0].tolist() == b.edges[0].tolist() and a.edges[1].tolist() == b.edges[1].tolist()
        np.testing.assert_array_equal(f.graph_svm(), ref.graph_svm())


def test_large_vocabulary_builds_in_parallel():
    rng = np.random.default_rng(0)
    K, n, L = 5000, 20000, 16
    X = rng.integers(0, K, (n, L))
    y = X[np.arange(n), rng.integers(0, L, n)]
    t = TokenPriorityGraphs(X, y, K)
    s = t.summary()
    assert s["n_samples"].sum() == n
    k = int(t.last_tokens[0])
    ref = ref_graphs(X[X[:, -1] == k], y[X[:, -1] == k])[k]
    assert set(zip(t.graph(k).edges[0].tolist(), t.graph(k).edges[1].tolist())) == set(ref.edges)
    S = t.graph_svm(sparse=True)
    assert S.shape == (K, K)


# ---------------------------------------------------------------- bad input
def test_bad_input():
    X = np.array([[0, 1, 2], [2, 1, 0]])
    with pytest.raises(InvalidArgumentError, match=r"1 sample\(s\).*samples \[1\]"):
        TokenPriorityGraphs(X, np.array([1, 3]), 4)
    t = TokenPriorityGraphs(X, np.array([1, 3]), 4, unrealisable="exclude")
    assert t.unrealisable.tolist() == [1]
    assert t.last_tokens.tolist() == [2]
    with pytest.raises(InvalidArgumentError, match="unrealisable"):
        TokenPriorityGraphs(X, np.array([1, 1]), 4, unrealisable="drop")
    with pytest.raises(OutOfRangeError, match=r"windows: entry 2 = 5"):
        TokenPriorityGraphs(np.array([[0, 1, 5]]), np.array([0]), 4)
    with pytest.raises(OutOfRangeError, match=r"windows: entry 0 = -3"):
        TokenPriorityGraphs(np.array([[-3, 1, 2]]), np.array([1]), 4)
    with pytest.raises(OutOfRangeError, match="labels"):
        TokenPriorityGraphs(X, np.array([1, 7]), 4)
    with pytest.raises(ShapeError, match="labels"):
        TokenPriorityGraphs(X, np.array([1]), 4)
    with pytest.raises(DTypeError, match="windows"):
        TokenPriorityGraphs(X.astype(float), np.array([1, 1]), 4)
    with pytest.raises(DTypeError, match="labels"):
        TokenPriorityGraphs(X, np.array([1.0, 1.0]), 4)
    with pytest.raises(InvalidArgumentError, match="window 1 is empty"):
        TokenPriorityGraphs(np.array([[0, 1], [-1, -1]]), np.array([0, 0]), 4, pad=-1)
    with pytest.raises(InvalidArgumentError, match="window 1 is empty"):
        TokenPriorityGraphs(np.array([0, 1]), np.array([0, 0]), 4, offsets=np.array([0, 2, 2]))
    with pytest.raises(InvalidArgumentError, match="empty"):
        TokenPriorityGraphs(np.zeros((2, 0), np.int64), np.array([0, 0]), 4)
    with pytest.raises(InvalidArgumentError, match="offsets"):
        TokenPriorityGraphs(np.array([0, 1]), np.array([0]), 4, offsets=np.array([0, 3]))
    with pytest.raises(ShapeError, match="windows"):
        TokenPriorityGraphs(np.array([0, 1, 2]), np.array([0]), 4)
    with pytest.raises(InvalidArgumentError, match="vocab_size"):
        TokenPriorityGraphs(X, np.array([1, 1]), 0)
    t = TokenPriorityGraphs(X, np.array([1, 1]), 4)
    with pytest.raises(InvalidArgumentError, match="window"):
        t.retrieval_set([])
    with pytest.raises(OutOfRangeError):
        t.retrieval_set([0, 9])
    with pytest.raises(ShapeError, match="E"):
        t.graph_svm(np.eye(3))
    with pytest.raises(DTypeError, match="E"):
        t.graph_svm(np.eye(4).astype(complex))
    from ess.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="E"):
        t.graph_svm(np.full((4, 2), np.nan))


def test_infeasible_embedding_is_reported():
    # tokens 0 and 1 share one embedding but 0 must outrank 1: no W exists
    t = TokenPriorityGraphs(np.array([[0, 1, 2]]), np.array([0]), 3)
    E = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(InvalidArgumentError, match="infeasible"):
        t.graph_svm(E)
