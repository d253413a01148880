"""Benchmark of the dense ESS kernel against two numpy baselines on the same data.

Operators: causal softmax attention with random Gaussian q, k (head dimension 64).
Baselines, per split t (the obvious loops a user would write):
  (a) svd:  np.linalg.svd(T[t:, :t], compute_uv=False)
  (b) eigh: Gram matrix of the smaller side, then np.linalg.eigvalsh
Both baselines compute tolerance- and entropy-ESS like ess does (method="both"); their
results are compared with ess's in the same run. GFLOP/s are nominal: the L^4/19 flop
count of the per-split SVD loop divided by the wall time.

    python3 benches/ess_dense.py [--lengths 256 512 1024] [--batch 12] [--batch-length 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import ess
from ess.examples import softmax_attention


def _entropy(s: np.ndarray) -> float:
    smax = s.max(initial=0.0)
    if smax <= 0:
        return 0.0
    x = s[s > 0] / smax
    S = x.sum()
    return float(np.exp(np.log(S) - (x * np.log(x)).sum() / S))


def baseline_svd(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    L = T.shape[-1]
    tol = np.zeros(L)
    ent = np.zeros(L)
    eps = np.finfo(T.dtype).eps
    for t in range(1, L):
        s = np.linalg.svd(T[t:, :t], compute_uv=False)
        tol[t] = np.sum(s > max(L - t, t) * eps * s[0])
        ent[t] = _entropy(s)
    return tol, ent


def baseline_eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    L = T.shape[-1]
    tol = np.zeros(L)
    ent = np.zeros(L)
    eps = np.finfo(T.dtype).eps
    for t in range(1, L):
        H = T[t:, :t]
        G = H.T @ H if t <= L - t else H @ H.T
        s = np.sqrt(np.clip(np.linalg.eigvalsh(G), 0, None))[::-1]
        tol[t] = np.sum(s > max(L - t, t) * eps * s[0])
        ent[t] = _entropy(s)
    return tol, ent


def timed(f, *a, repeat: int = 1, **k):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f(*a, **k)
        best = min(best, time.perf_counter() - t0)
    return best, out


def flops(L: int) -> float:
    return L**4 / 19


def compare(name, ref_tol, ref_ent, got):
    dtol = int(np.sum(ref_tol != got.tolerance))
    rel = np.abs(ref_ent - got.entropy) / np.maximum(ref_ent, 1e-300)
    return f"{name}: tol-ESS mismatches {dtol}, max rel entropy diff {np.nanmax(rel[1:]) if rel.size > 1 else 0:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--batch-length", type=int, default=512)
    args = ap.parse_args()

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['num_threads']} threads)" for i in threadpool_info())
    except Exception:  # pragma: no cover - informational only
        blas = "unknown"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; BLAS: {blas}")
    print(f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(default)')}  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print()
    hdr = (
        f"{'case':18s} {'ess both [s]':>12s} {'svd loop [s]':>13s} {'eigh loop [s]':>14s} {'x svd':>7s} {'x eigh':>7s} "
        f"{'GFLOP/s':>8s} {'ess tol [s]':>12s} {'tol x eigh':>10s}"
    )
    print(hdr)
    print("-" * len(hdr))
    notes = []
    for L in args.lengths:
        T = softmax_attention(L, 64, seed=L)
        t_ess, got = timed(ess.effective_state_size, T, method="both", repeat=3 if L <= 512 else 1)
        t_tol, got_tol = timed(ess.effective_state_size, T, method="tolerance", repeat=3 if L <= 512 else 1)
        t_svd, (rt, re) = timed(baseline_svd, T)
        t_eig, (et, ee) = timed(baseline_eigh, T)
        print(
            f"{'L=' + str(L):18s} {t_ess:12.3f} {t_svd:13.3f} {t_eig:14.3f} {t_svd / t_ess:7.1f} {t_eig / t_ess:7.1f} "
            f"{flops(L) / t_ess / 1e9:8.1f} {t_tol:12.3f} {t_eig / t_tol:10.1f}"
        )
        notes.append(f"L={L}: tolerance-only mismatches vs svd loop: {int(np.sum(got_tol != rt))}")
        notes.append(f"L={L}: " + compare("vs svd", rt, re, got) + "; " + compare("vs eigh", et, ee, got))
    B, L = args.batch, args.batch_length
    Ts = np.stack([softmax_attention(L, 64, seed=100 + h) for h in range(B)])
    t_ess, got = timed(ess.effective_state_size, Ts, method="both")
    t_tol, _ = timed(ess.effective_state_size, Ts, method="tolerance")
    t_svd = t_eig = 0.0
    mism = 0
    for h in range(B):
        ts, (rt, re) = timed(baseline_svd, Ts[h])
        te, _ = timed(baseline_eigh, Ts[h])
        t_svd += ts
        t_eig += te
        mism += int(np.sum(rt != got.tolerance[h]))
    print(
        f"{f'{B} heads, L={L}':18s} {t_ess:12.3f} {t_svd:13.3f} {t_eig:14.3f} {t_svd / t_ess:7.1f} {t_eig / t_ess:7.1f} "
        f"{B * flops(L) / t_ess / 1e9:8.1f} {t_tol:12.3f} {t_eig / t_tol:10.1f}"
    )
    notes.append(f"batch: tol-ESS mismatches vs svd loop over {B} heads: {mism}")
    print()
    print("ratios: baseline time / ess time (both curves from one call). GFLOP/s: nominal L^4/19 flops / ess-both wall time.")
    print("ess tol: method='tolerance' alone (Cholesky certificate route), compared with the eigh loop.")
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
