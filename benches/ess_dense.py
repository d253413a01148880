"""Benchmark of the dense ESS kernel against two numpy loops on the same operators, in one run.

Operators: causal softmax attention with random Gaussian q, k (head dimension 64), and a
"fallback-heavy" operator: near-uniform causal attention (q, k scaled by 0.05, as in a
randomly initialised language model), whose blocks are close to rank one with singular values
spanning many decades, so that many splits take the accurate (QR/SVD) fallback.

Baselines, per split t (the loops a user would write), each computing the same curves:
  (a) svdvals: np.linalg.svd(T[t:, :t], compute_uv=False)
  (b) eigh:    Gram matrix of the smaller side, then np.linalg.eigvalsh
ess rows: tolerance-ESS at the default threshold, at rtol = 1e-3 (method="tolerance" alone), and
method="both" (tolerance + entropy); the fallback-heavy operator with method="both".

Flop-rate fraction: sum over splits of the (4/3) m^3 flops of one values-only symmetric
eigensolve of the smaller side (m = min(t, L - t)), divided by ess-both's wall time and by the
attainable rate measured in the same run with a large faer matrix product on all threads.

    python3 benches/ess_dense.py [--lengths 512 1024] [--blas-threads N]

Set --blas-threads (OPENBLAS_NUM_THREADS etc., before numpy loads) to pin the baselines' BLAS
threads; the value in effect is printed. Results go to stdout (and, with --out, to a file).
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--blas-threads", type=int, default=None)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--out", default=None, help="also write the report to this file (e.g. benches/results/dense.txt)")
    return ap.parse_args()


ARGS = _parse()
if ARGS.blas_threads is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)

import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import ess  # noqa: E402
from ess import _core  # noqa: E402
from ess.examples import softmax_attention  # noqa: E402

LINES: list[str] = []


def say(s: str = "") -> None:
    print(s, flush=True)
    LINES.append(s)


def _entropy(s: np.ndarray) -> float:
    smax = s.max(initial=0.0)
    if smax <= 0:
        return 0.0
    x = s[s > 0] / smax
    S = x.sum()
    return float(np.exp(np.log(S) - (x * np.log(x)).sum() / S))


def _threshold(s0: float, m: int, n: int, eps: float, rtol) -> float:
    return rtol * s0 if rtol is not None else max(m, n) * eps * s0


def baseline_svd(T: np.ndarray, rtol=None):
    L = T.shape[-1]
    tol, ent = np.zeros(L), np.zeros(L)
    eps = np.finfo(T.dtype).eps
    for t in range(1, L):
        s = np.linalg.svd(T[t:, :t], compute_uv=False)
        tol[t] = np.sum(s > _threshold(s[0], L - t, t, eps, rtol))
        ent[t] = _entropy(s)
    return tol, ent


def baseline_eigh(T: np.ndarray, rtol=None):
    L = T.shape[-1]
    tol, ent = np.zeros(L), np.zeros(L)
    eps = np.finfo(T.dtype).eps
    for t in range(1, L):
        H = T[t:, :t]
        G = H.T @ H if t <= L - t else H @ H.T
        s = np.sqrt(np.clip(np.linalg.eigvalsh(G), 0, None))[::-1]
        tol[t] = np.sum(s > _threshold(s[0], L - t, t, eps, rtol))
        ent[t] = _entropy(s)
    return tol, ent


def timed(f, *a, repeat: int = 1, **k):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f(*a, **k)
        best = min(best, time.perf_counter() - t0)
    return best, out


def eig_flops(L: int) -> float:
    m = np.minimum(np.arange(1, L), L - np.arange(1, L)).astype(float)
    return float(np.sum(4.0 / 3.0 * m**3))


def near_uniform_attention(L: int, d: int = 64, scale: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((L, d)) * scale
    k = rng.standard_normal((L, d)) * scale
    S = q @ k.T / np.sqrt(d)
    S = np.where(np.tril(np.ones((L, L), dtype=bool)), S, -np.inf)
    S -= S.max(axis=1, keepdims=True)
    P = np.exp(S)
    return P / P.sum(axis=1, keepdims=True)


def peak_gflops() -> float:
    n = 2048
    _core._dense_matmul_probe_seconds(512)  # warm up the thread pool
    secs = min(_core._dense_matmul_probe_seconds(n) for _ in range(3))
    return 2.0 * n**3 / secs / 1e9


def main() -> None:
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "(default)")
    say(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; "
        f"OPENBLAS_NUM_THREADS={blas}; RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(default)')}"
    )
    try:
        say(f"load average at start: {os.getloadavg()}")
    except OSError:  # pragma: no cover
        pass
    peak = peak_gflops()
    say(f"attainable rate (faer 2048^2 matmul, all threads): {peak:.1f} GFLOP/s")
    say()
    rtol = ARGS.rtol
    hdr = f"{'L':>5s} {'case':34s} {'ess [s]':>9s} {'eigh loop [s]':>14s} {'svd loop [s]':>13s} {'x eigh':>7s} {'x svd':>7s} {'mismatch':>8s}"
    say(hdr)
    say("-" * len(hdr))
    notes = []
    for L in ARGS.lengths:
        T = softmax_attention(L, 64, seed=L)
        rep = 3 if L <= 512 else 2
        # every timing is the best of the same number of runs, baselines and ess alike
        t_eig, (et, ee) = timed(baseline_eigh, T, repeat=rep)
        t_svd, (st_, se) = timed(baseline_svd, T, repeat=rep)
        t_eig_r, (et_r, _) = timed(baseline_eigh, T, rtol=rtol, repeat=rep)
        t_svd_r, (st_r, _) = timed(baseline_svd, T, rtol=rtol, repeat=rep)
        t_def, got_def = timed(ess.effective_state_size, T, method="tolerance", repeat=rep)
        t_rt, got_rt = timed(ess.effective_state_size, T, method="tolerance", rtol=rtol, repeat=rep)
        t_both, got_both = timed(ess.effective_state_size, T, method="both", repeat=rep)

        def row(case, t_ess, te, ts, mism, L=L):
            say(f"{L:5d} {case:34s} {t_ess:9.3f} {te:14.3f} {ts:13.3f} {te / t_ess:7.2f} {ts / t_ess:7.2f} {mism:8d}")

        row("softmax, tolerance (default)", t_def, t_eig, t_svd, int(np.sum(got_def != st_)))
        row(f"softmax, tolerance rtol={rtol:g}", t_rt, t_eig_r, t_svd_r, int(np.sum(got_rt != st_r)))
        row("softmax, both", t_both, t_eig, t_svd, int(np.sum(got_both.tolerance != st_)))
        rel = np.abs(got_both.entropy[1:] - se[1:]) / np.maximum(se[1:], 1e-300)
        notes.append(
            f"L={L}: softmax both: max relative entropy difference vs svd loop {rel.max():.1e}; "
            f"eigensolve-per-split flops {eig_flops(L):.3g} -> {eig_flops(L) / t_both / 1e9:.1f} GFLOP/s = "
            f"{eig_flops(L) / t_both / 1e9 / peak:.1%} of the measured {peak:.1f} GFLOP/s"
        )

        F = near_uniform_attention(L, seed=L)
        t_feig, (fet, fee) = timed(baseline_eigh, F, repeat=rep)
        t_fsvd, (fst, fse) = timed(baseline_svd, F, repeat=rep)
        t_fb, got_fb = timed(ess.effective_state_size, F, method="both", repeat=rep)
        row("near-uniform attention, both", t_fb, t_feig, t_fsvd, int(np.sum(got_fb.tolerance != fst)))
        rel = np.abs(got_fb.entropy[1:] - fse[1:]) / np.maximum(fse[1:], 1e-300)
        notes.append(
            f"L={L}: near-uniform (fallback-heavy) both: {t_fb:.3f} s = {t_fb / t_both:.2f}x softmax both; "
            f"max relative entropy difference vs svd loop {rel.max():.1e}"
        )
    say()
    say("ratios: baseline loop time / ess time, same operator and threshold, same run. mismatch: tolerance-ESS")
    say("splits differing from the svd loop (the svd loop decides counts at the rounding level itself).")
    for n in notes:
        say(n)
    try:
        say(f"load average at end: {os.getloadavg()}")
    except OSError:  # pragma: no cover
        pass
    if ARGS.out:
        os.makedirs(os.path.dirname(ARGS.out) or ".", exist_ok=True)
        with open(ARGS.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    sys.exit(main())
