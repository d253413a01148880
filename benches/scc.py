"""Benchmark: strongly connected components from numpy edge arrays, and token-priority graphs.

Run on the release build (what pip installs; LTO):  pip install . && python benches/scc.py

Every baseline runs in this process on the same arrays. Times are the best of ``--repeat``
runs (wall clock). Requires scipy; networkx and rustworkx are used when installed.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
import scipy
import scipy.sparse
from scipy.sparse.csgraph import connected_components

import ess
from ess.graph import TokenPriorityGraphs, strongly_connected_components


def best(fn, repeat):
    ts = []
    out = None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def scipy_csr(src, dst, n):
    return scipy.sparse.csr_array((np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(n, n))


def scipy_scc(a):
    return connected_components(a, directed=True, connection="strong")


def same_partition(a, b):
    # equal partitions iff the label pairs form a bijection
    k = np.unique(a.astype(np.int64) * (int(b.max()) + 1) + b)
    return k.shape[0] == np.unique(a).shape[0] == np.unique(b).shape[0]


def row(name, t, ref=None):
    ratio = f"{ref / t:8.2f}x" if ref is not None else ""
    print(f"  {name:<44s} {t * 1e3:10.1f} ms  {ratio}")


def bench_graph(label, n, m, repeat, rng, with_nx=False, with_rx=False):
    src = rng.integers(0, n, m, dtype=np.int64)
    dst = rng.integers(0, n, m, dtype=np.int64)
    print(f"\n{label}: n = {n:,} nodes, m = {m:,} edges (int64 ids)")
    # one untimed call of each side first (first-touch page faults of fresh arrays)
    strongly_connected_components(src, dst, n)
    scipy_scc(scipy_csr(src, dst, n))
    t_ess, (nc, lab) = best(lambda: strongly_connected_components(src, dst, n), repeat)
    s32, d32 = src.astype(np.int32), dst.astype(np.int32)
    t_ess32, _ = best(lambda: strongly_connected_components(s32, d32, n), repeat)
    t_pearce, (pnc, plab) = best(lambda: strongly_connected_components(src, dst, n, algorithm="pearce"), repeat)
    t_fwbw, (fnc, flab) = best(lambda: strongly_connected_components(src, dst, n, algorithm="fwbw"), repeat)
    t_csr, a = best(lambda: scipy_csr(src, dst, n), repeat)
    t_cc, (snc, slab) = best(lambda: scipy_scc(a), repeat)
    t_sp, _ = best(lambda: scipy_scc(scipy_csr(src, dst, n)), repeat)
    assert nc == snc and same_partition(lab, slab), "partition differs from scipy"
    assert pnc == fnc == nc and same_partition(plab, slab) and same_partition(flab, slab)
    sizes = np.bincount(lab)
    print(f"  components: {nc:,} (largest {sizes.max():,}); partition == scipy: True")
    row("ess.graph.strongly_connected_components", t_ess)
    row("ess (int32 ids)", t_ess32)
    row('  ess algorithm="pearce" (depth-first only)', t_pearce)
    row('  ess algorithm="fwbw" (forward-backward)', t_fwbw)
    row("scipy end to end (csr_array + connected_components)", t_sp)
    row("  scipy csr_array construction", t_csr)
    row("  scipy connected_components(strong) on CSR", t_cc)
    print(
        f"  ratio scipy end to end / ess: {t_sp / t_ess:.2f}x  (int32: {t_sp / t_ess32:.2f}x); scipy SCC only / ess end to end: {t_cc / t_ess:.2f}x"
    )
    res = {
        "ess": t_ess,
        "ess32": t_ess32,
        "pearce": t_pearce,
        "fwbw": t_fwbw,
        "scipy": t_sp,
        "scipy_csr": t_csr,
        "scipy_cc": t_cc,
    }
    if with_nx:
        try:
            import networkx as nx

            def run_nx():
                G = nx.DiGraph()
                G.add_nodes_from(range(n))
                G.add_edges_from(zip(src.tolist(), dst.tolist()))
                return sum(1 for _ in nx.strongly_connected_components(G))

            t_nx, nnx = best(run_nx, 1)
            assert nnx == nc
            row("networkx (DiGraph build + SCC)", t_nx)
            print(f"  ratio networkx / ess: {t_nx / t_ess:.1f}x")
            res["networkx"] = t_nx
        except ImportError:
            print("  networkx not installed")
    if with_rx:
        try:
            import rustworkx as rx

            def run_rx():
                G = rx.PyDiGraph(multigraph=True)
                G.add_nodes_from(range(n))
                G.extend_from_edge_list(list(zip(src.tolist(), dst.tolist())))
                return len(rx.strongly_connected_components(G))

            t_rx, nrx = best(run_rx, 1)
            assert nrx == nc
            row("rustworkx (PyDiGraph build + SCC)", t_rx)
            print(f"  ratio rustworkx / ess: {t_rx / t_ess:.1f}x")
            res["rustworkx"] = t_rx
        except ImportError:
            print("  rustworkx not installed")
    return res


def bench_tpg(n_windows, length, vocab, repeat, rng, baseline_fraction=0.0):
    print(f"\ntoken-priority graphs: {n_windows:,} windows of length {length}, vocabulary {vocab:,}")
    X = rng.integers(0, vocab, (n_windows, length), dtype=np.int64)
    y = X[np.arange(n_windows), rng.integers(0, length, n_windows)]
    t_ess, t = best(lambda: TokenPriorityGraphs(X, y, vocab), repeat)
    s = t.summary()
    print(
        f"  graphs: {s['n_graphs']:,}, cyclic {s['n_cyclic']:,}, edges {int(s['n_edges'].sum()):,}, SCCs {int(s['n_components'].sum()):,}"
    )
    row("ess.graph.TokenPriorityGraphs (graphs + SCCs + DAGs)", t_ess)

    if baseline_fraction <= 0:
        return
    nb = int(n_windows * baseline_fraction)
    Xb, yb = X[:nb], y[:nb]
    t_essb, tb = best(lambda: TokenPriorityGraphs(Xb, yb, vocab), repeat)
    sb = tb.summary()
    print(f"  on the first {nb:,} windows:")
    row("  ess.graph.TokenPriorityGraphs", t_essb)

    def numpy_scipy():
        # Vectorised baseline: one node per (last token, token) pair, all graphs as one
        # block-diagonal graph, SCCs by scipy.
        k = np.repeat(Xb[:, -1], length)
        x = Xb.ravel()
        yy = np.repeat(yb, length)
        keep = x != yy
        pair_x = k * vocab + x
        nodes, inv = np.unique(pair_x, return_inverse=True)
        pair_y = k * vocab + yy
        src = np.searchsorted(nodes, pair_y[keep])
        dst = inv[keep]
        e = np.unique(src * nodes.shape[0] + dst)
        a = scipy_csr(e // nodes.shape[0], e % nodes.shape[0], nodes.shape[0])
        return scipy_scc(a)

    t_np, (nc, _) = best(numpy_scipy, 1)
    assert nc == int(sb["n_components"].sum())
    row("  numpy unique/searchsorted + scipy SCC (baseline)", t_np)
    print(f"  ratio baseline / ess: {t_np / t_essb:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument(
        "--tpg-baseline",
        type=float,
        default=0.05,
        help="fraction of the windows for the (slow) numpy+scipy token-graph baseline; 0 to skip",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"ess {ess.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, cpus {os.cpu_count()}, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}"
    )
    s = 10 if args.quick else 1
    bench_graph("giant component", 1_000_000 // s, 10_000_000 // s, args.repeat, rng)
    bench_graph("many components", 1_000_000 // s, 1_500_000 // s, args.repeat, rng, with_rx=True)
    bench_graph("networkx / rustworkx size", 100_000 // s, 1_000_000 // s, args.repeat, rng, with_nx=True, with_rx=True)
    bench_tpg(1_000_000 // s, 64, 50_000 // s, max(1, args.repeat - 1), rng, args.tpg_baseline)


if __name__ == "__main__":
    main()
