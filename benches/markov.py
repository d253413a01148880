"""Benchmark of ess.markov against deeptime and scipy (one run, same process, same data).

    python benches/markov.py            # full: ring 1e5 and 1e6, random 1e4, dense 2000, accuracy
    python benches/markov.py --quick    # smaller sizes

Cases
-----
* ring n = 1e5, 1e6: banded ring, each state linked to i-4..i+4 (9 entries per row with the
  self-loop), symmetric random conductances (a reversible chain). Hitting times of {0},
  stationary distribution, committor {0} -> {n/2}.
* random sparse n = 1e4: ~6 random successors per state plus a ring (irreducible); fill-in
  heavy for any elimination.
* dense n = 2000: all-pairs mean first-passage times (ess: recursive GTH; numpy: the
  fundamental-matrix formula; deeptime: mfpt per target, timed on 10 targets and
  extrapolated to n).
* metastable chains (4 clusters of 8 states, eps = 1e-4 .. 1e-15): relative error of the
  hitting time of the last cluster and of the stationary distribution against a 60/120-digit
  mpmath reference.

deeptime's committor builds a dense n x n matrix; it is run in a subprocess with an address
space limit (RLIMIT_AS = 6 GiB) so that its failure is recorded instead of exhausting memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

import ess
import ess.markov as mk

HERE = os.path.dirname(os.path.abspath(__file__))


def ring(n: int, half: int = 4, seed: int = 0) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    offs = np.arange(1, half + 1)
    rows = np.repeat(np.arange(n), offs.size)
    cols = (rows + np.tile(offs, n)) % n
    c = rng.uniform(0.5, 1.5, rows.size)
    selfc = rng.uniform(0.5, 1.5, n)
    C = sp.coo_array(
        (
            np.concatenate([c, c, selfc]),
            (np.concatenate([rows, cols, np.arange(n)]), np.concatenate([cols, rows, np.arange(n)])),
        ),
        shape=(n, n),
    ).tocsr()
    d = np.asarray(C.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags(1 / d) @ C)


def random_sparse(n: int, k: int = 6, seed: int = 0) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), k + 1)
    cols = np.concatenate([rng.integers(0, n, size=(n, k)), ((np.arange(n) + 1) % n)[:, None]], axis=1).ravel()
    vals = rng.uniform(0.1, 1.0, rows.size)
    C = sp.coo_array((vals, (rows, cols)), shape=(n, n)).tocsr()
    d = np.asarray(C.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags(1 / d) @ C)


def timeit(f, repeat: int = 3, budget: float = 2.0):
    """Best of up to ``repeat`` runs, stopping once ``budget`` seconds have been spent (slow
    calls run once); the same rule for every implementation."""
    best = np.inf
    out = None
    spent = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        if spent >= budget:
            break
    return best, out


def maxrel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def scipy_hitting(P, A):
    n = P.shape[0]
    S = np.setdiff1d(np.arange(n), A)
    Q = P[S][:, S]
    h = np.zeros(n)
    h[S] = spsolve((sp.identity(S.size, format="csc") - Q).tocsc(), np.ones(S.size))
    return h


def scipy_committor(P, A, B):
    n = P.shape[0]
    S = np.setdiff1d(np.arange(n), np.concatenate([A, B]))
    Q = P[S][:, S]
    r = np.asarray(P[S][:, B].sum(axis=1)).ravel()
    q = np.zeros(n)
    q[B] = 1
    q[S] = spsolve((sp.identity(S.size, format="csc") - Q).tocsc(), r)
    return q


def deeptime_committor_subprocess(kind: str, n: int, limit_gib: float = 6.0):
    """Run deeptime's committor in a child with an address-space limit; (seconds or None, message)."""
    code = f"""
import sys, time, numpy as np
sys.path.insert(0, {HERE!r})
import importlib.util
spec = importlib.util.spec_from_file_location('bm', {os.path.join(HERE, "markov.py")!r})
bm = importlib.util.module_from_spec(spec); spec.loader.exec_module(bm)
from deeptime.markov.tools.analysis import committor
P = bm.{kind}({n})
t = time.perf_counter()
try:
    q = committor(P, [0], [{n // 2}])
    np.save(sys.argv[1], q)
    print('OK', time.perf_counter() - t)
except MemoryError as e:
    print('MemoryError', time.perf_counter() - t, str(e)[:120])
"""
    lim = int(limit_gib * 2**30)

    def pre():
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    out_file = f"/tmp/ess_bench_dt_committor_{os.getpid()}.npy"
    r = subprocess.run(
        [sys.executable, "-c", code, out_file], capture_output=True, text=True, preexec_fn=pre, timeout=1800
    )
    line = (r.stdout.strip().splitlines() or ["crashed: " + r.stderr.strip()[-200:]])[-1]
    if line.startswith("OK"):
        q = np.load(out_file)
        os.remove(out_file)
        return float(line.split()[1]), q, "ok"
    return None, None, line


def sparse_case(name: str, P, kind: str, do_dt_committor: bool, rows: list):
    import deeptime.markov.tools.analysis as dta

    n = P.shape[0]
    A, B = np.array([0]), np.array([n // 2])
    print(f"\n## {name}: n = {n}, nnz = {P.nnz}")
    t_g, h_g = timeit(lambda: mk.hitting_times(P, A))
    t_l, h_l = timeit(lambda: mk.hitting_times(P, A, method="lu"))
    t_s, h_s = timeit(lambda: scipy_hitting(P, A))
    t_d, h_d = timeit(lambda: dta.mfpt(P, 0))
    rows.append((name, "hitting times of {0}", "ess gth", t_g, None, 0.0))
    rows.append((name, "hitting times of {0}", "ess lu", t_l, t_g / t_l, maxrel(h_l, h_g)))
    rows.append((name, "hitting times of {0}", "scipy spsolve(I-Q)", t_s, t_s / t_g, maxrel(h_s, h_g)))
    rows.append((name, "hitting times of {0}", "deeptime mfpt", t_d, t_d / t_g, maxrel(h_d, h_g)))
    t_g, p_g = timeit(lambda: mk.stationary_distribution(P))
    t_d, p_d = timeit(lambda: dta.stationary_distribution(P))
    rows.append((name, "stationary distribution", "ess gth", t_g, None, 0.0))
    rows.append((name, "stationary distribution", "deeptime", t_d, t_d / t_g, maxrel(p_d, p_g)))
    t_g, q_g = timeit(lambda: mk.committor(P, A, B))
    t_s, q_s = timeit(lambda: scipy_committor(P, A, B))
    rows.append((name, "committor {0}->{n/2}", "ess gth", t_g, None, 0.0))
    rows.append((name, "committor {0}->{n/2}", "scipy spsolve", t_s, t_s / t_g, maxrel(q_s, q_g)))
    if do_dt_committor:
        t_d, q_d, msg = deeptime_committor_subprocess(kind, n)
        if t_d is None:
            rows.append(
                (
                    name,
                    "committor {0}->{n/2}",
                    f"deeptime committor: FAILED ({msg[:60]})",
                    float("nan"),
                    None,
                    float("nan"),
                )
            )
        else:
            rows.append((name, "committor {0}->{n/2}", "deeptime committor", t_d, t_d / t_g, maxrel(q_d, q_g)))


def dense_case(n: int, rows: list):
    import deeptime.markov.tools.analysis as dta

    rng = np.random.default_rng(0)
    P = rng.random((n, n))
    P /= P.sum(axis=1, keepdims=True)
    name = f"dense n={n}"
    print(f"\n## {name}")
    t_e, M = timeit(lambda: mk.mean_first_passage_times(P))

    def fundamental():
        pi = mk.stationary_distribution(P)
        Z = np.linalg.inv(np.eye(n) - P + np.outer(np.ones(n), pi))
        return (np.diag(Z)[None, :] - Z) / pi[None, :]

    t_z, Mz = timeit(fundamental)
    k = 10
    t_d, cols = timeit(lambda: [dta.mfpt(P, j) for j in range(k)])
    t_d_full = t_d * n / k
    err_d = max(maxrel(cols[j][np.arange(n) != j], M[np.arange(n) != j, j]) for j in range(k))
    off = ~np.eye(n, dtype=bool)
    rows.append((name, "all-pairs MFPT", "ess (recursive GTH)", t_e, None, 0.0))
    rows.append((name, "all-pairs MFPT", "numpy fundamental matrix", t_z, t_z / t_e, maxrel(Mz[off], M[off])))
    rows.append((name, "all-pairs MFPT", f"deeptime mfpt x n (extrapolated from {k})", t_d_full, t_d_full / t_e, err_d))
    t_k, K = timeit(lambda: mk.kemeny_constant(P))
    print(f"kemeny constant {K:.10g} in {t_k:.3f}s")


def accuracy_table(eps_list):
    import deeptime.markov.tools.analysis as dta

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from markov_ref import hit_mpmath, stationary_mpmath

    print("\n## Metastable accuracy (4 clusters x 8 states, target = last cluster; max relative error vs mpmath)")
    print(
        "| eps | ess gth dense | ess gth sparse | ess lu | numpy solve(I-Q) | scipy spsolve | deeptime mfpt | eps*E_0[T] |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for eps in eps_list:
        P = mk.metastable_chain(4, 8, degree=3, eps=eps, seed=3)
        A = np.arange(24, 32)
        ref = hit_mpmath(P, A)
        S = np.arange(24)
        Ps = sp.csr_array(P)
        e = lambda h, S=S, ref=ref: maxrel(np.asarray(h)[S], ref[S])
        naive = np.linalg.solve(np.eye(24) - P[np.ix_(S, S)], np.ones(24))
        cells = [
            e(mk.hitting_times(P, A)),
            e(mk.hitting_times(Ps, A)),
            e(mk.hitting_times(Ps, A, method="lu")),
            maxrel(naive, ref[S]),
            e(scipy_hitting(Ps, A)),
            e(dta.mfpt(P, A)),
        ]
        print(f"| {eps:.0e} | " + " | ".join(f"{c:.1e}" for c in cells) + f" | {eps * ref[0]:.4f} |")
    print("\n## Stationary distribution spanning decades (5 clusters x 3 states, forward eps, backward 0.5)")
    print("| eps | pi_max/pi_min | ess gth dense | ess gth sparse | deeptime | numpy eig |")
    print("|---|---|---|---|---|---|")
    for eps in [1e-4, 1e-8, 1e-12, 1e-15]:
        P = mk.metastable_chain(5, 3, degree=2, eps=eps, eps_back=0.5, seed=4)
        ref = stationary_mpmath(P)
        w, V = np.linalg.eig(P.T)
        v = np.real(V[:, np.argmin(np.abs(w - 1))])
        v = v / v.sum()
        cells = [
            maxrel(mk.stationary_distribution(P), ref),
            maxrel(mk.stationary_distribution(sp.csr_array(P)), ref),
            maxrel(dta.stationary_distribution(P), ref),
            maxrel(v, ref),
        ]
        print(f"| {eps:.0e} | {ref.max() / ref.min():.1e} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import deeptime
    import scipy

    print(f"ess {ess.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, deeptime {deeptime.__version__}")
    print(f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(default)')}, cpus={os.cpu_count()}")
    rows: list = []
    sizes = [10_000] if args.quick else [100_000, 1_000_000]
    for n in sizes:
        sparse_case(f"ring n={n:.0e}", ring(n), "ring", True, rows)
    sparse_case(
        "random n=1e4" if not args.quick else "random n=2e3",
        random_sparse(10_000 if not args.quick else 2000),
        "random_sparse",
        True,
        rows,
    )
    dense_case(500 if args.quick else 2000, rows)
    print("\n## Timings (seconds; ratio = baseline time / ess gth time; rel. diff vs ess gth)")
    print("| case | quantity | implementation | time [s] | ratio | max rel diff |")
    print("|---|---|---|---|---|---|")
    for case, q, impl, t, ratio, err in rows:
        rs = "" if ratio is None else f"{ratio:.1f}x"
        print(f"| {case} | {q} | {impl} | {t:.3f} | {rs} | {err:.1e} |")
    accuracy_table([1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-15])


if __name__ == "__main__":
    main()
