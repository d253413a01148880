"""Benchmark: structured ESS vs the dense kernel vs a numpy Gramian implementation.

    python benches/ess_structured.py [--quick]

Workloads (issue 3):
  * selective SSM (Mamba) layer: 64 channels, N = 16, L = 1024 and 4096;
  * linear attention: 8 heads, d_k = 64, L = 4096.

Baselines, same process, same data:
  * dense: ``ess.effective_state_size`` on the materialised operators. Where a full layer
    does not fit in time, it is timed on one operator at several L and extrapolated with a
    least-squares power law ``time = a * L^p`` (fit printed), times the number of operators;
  * numpy Gramian: the textbook recursions ``P_{t+1} = A P A^T + b b^T``,
    ``Q_t = A^T (Q_{t+1} + c c^T) A`` in numpy, batched over channels, and
    ``sigma = sqrt(eig(P_t Q_t))`` per split (no square roots: loses small singular values).
Build with ``maturin develop --profile fastrelease`` (or release) before timing.

Recorded 2026-11-22, ``maturin develop --release``, 2 shared CPU cores (other jobs running:
the process got ~0.3 cores on average, so absolute times are noisy; ratios are same-run):

    ess 0.1.0 from /work/wt3/python/ess; RAYON_NUM_THREADS=default, cpus=2
    dense kernel, one operator, L = 256: 0.144 s
    dense kernel, one operator, L = 512: 1.398 s
    dense kernel, one operator, L = 1024: 16.593 s
    dense fit: time(L) = 7.848e-10 * L^3.43 s per operator (least squares on L = [256, 512, 1024])
    [mamba L=1024] structured 4.122 s; dense 1092.8 s (measured on 2 channels, x 32); numpy Gramian 5.96 s; ch0 vs dense: tol equal 100.0%, max rel entropy diff 1.1e-13; numpy-Gramian tol equal 89.5% of splits; mean ESS 15.75
    [mamba L=4096] structured 17.804 s; dense 118533.3 s (extrapolated 7.85e-10*L^3.43 x 64); numpy Gramian 20.60 s; numpy-Gramian tol equal 89.3% of splits; mean ESS 15.94
    [linattn] structured 38.253 s; dense 7706.3 s (fit 2.68e-08*L^2.92 x 8); numpy Gramian 51.5 s (every 16th split timed, x16); numpy-Gramian tol equal 100.0%; structured mean ESS 63.00

    workload                    structured s     dense s  numpy-Gram s  dense/str  Gram/str  dense how
    Mamba 64ch N=16 L=1024             4.122      1092.8          5.96        265       1.4  measured on 2 channels, x 32
    Mamba 64ch N=16 L=4096            17.804    118533.3         20.60       6658       1.2  extrapolated 7.85e-10*L^3.43 x 64
    LinAttn 8h dk=64 L=4096           38.253      7706.3         51.46        201       1.3  extrapolated 2.68e-08*L^2.92 x 8
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import ess
from ess import structured as S


def timed(f, *a, **k):
    t0 = time.perf_counter()
    r = f(*a, **k)
    return time.perf_counter() - t0, r


def mamba_params(rng, L, D=64, N=16):
    A = -np.tile(np.arange(1, N + 1, dtype=np.float64), (D, 1)) * rng.uniform(0.5, 1.5, (D, 1))  # S4D-real
    delta = np.log1p(np.exp(rng.standard_normal((L, D)) * 0.5 - 3.0))  # softplus, ~0.05
    B = rng.standard_normal((L, N))
    C = rng.standard_normal((L, N))
    return A, delta, B, C


def mamba_operator_lowmem(A, delta, B, C, d):
    L = delta.shape[0]
    c = np.cumsum(delta[:, d])
    T = np.zeros((L, L))
    Bs = delta[:, d, None] * B
    for n in range(A.shape[1]):
        T += np.outer(C[:, n], Bs[:, n]) * np.exp(np.minimum(A[d, n] * (c[:, None] - c[None, :]), 0.0))
    return np.tril(T)


def numpy_gramian_ess(Adiag, Bf, Cf, rtol=None):
    """Textbook Gramians (squared), batched over channels: (D, L, N) diagonal transitions."""
    D, L, N = Bf.shape
    # forward P_t for t = 1..L-1: P_1 = b0 b0^T; P_{t+1} = A_t P_t A_t + b_t b_t^T
    Q = np.zeros((L, D, N, N))
    q = np.zeros((D, N, N))
    for t in range(L - 1, 0, -1):
        q = q + Cf[:, t, :, None] * Cf[:, t, None, :]
        a = Adiag[:, t]
        q = a[:, :, None] * q * a[:, None, :]
        Q[t] = q
    p = Bf[:, 0, :, None] * Bf[:, 0, None, :]
    tol = np.zeros((D, L))
    ent = np.zeros((D, L))
    for t in range(1, L):
        if t > 1:
            a = Adiag[:, t - 1]
            p = a[:, :, None] * p * a[:, None, :] + Bf[:, t - 1, :, None] * Bf[:, t - 1, None, :]
        ev = np.linalg.eigvals(p @ Q[t]).real
        sig = np.sqrt(np.clip(ev, 0, None))
        sig = -np.sort(-sig, axis=1)[:, : min(t, L - t)]
        smax = sig[:, :1]
        tau = rtol * smax if rtol is not None else max(t, L - t) * np.finfo(float).eps * smax
        tol[:, t] = (sig > tau).sum(1)
        pr = sig / np.maximum(sig.sum(1, keepdims=True), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent[:, t] = np.exp(-np.nansum(np.where(pr > 0, pr * np.log(pr), 0.0), axis=1))
    return tol, ent


def numpy_gramian_linattn(q, k, stride=1):
    """Linear attention: P_t = sum_{s<t} k_s k_s^T, Q_t = sum_{i>=t} q_i q_i^T (per head),
    evaluated at every ``stride``-th split."""
    Hh, L, dk = q.shape
    ts = np.arange(1, L, stride)
    Qs = {}
    acc = np.zeros((Hh, dk, dk))
    for t in range(L - 1, 0, -1):
        acc += q[:, t, :, None] * q[:, t, None, :]
        if (t - 1) % stride == 0:
            Qs[t] = acc.copy()
    P = np.zeros((Hh, dk, dk))
    tol = np.zeros((Hh, ts.size))
    j = 0
    for t in range(1, L):
        P += k[:, t - 1, :, None] * k[:, t - 1, None, :]
        if t in Qs:
            ev = np.linalg.eigvals(P @ Qs[t]).real
            sig = -np.sort(-np.sqrt(np.clip(ev, 0, None)), axis=1)[:, : min(t, L - t)]
            tol[:, j] = (sig > max(t, L - t) * np.finfo(float).eps * sig[:, :1]).sum(1)
            j += 1
    return tol


def fit_power(Ls, ts):
    p, loga = np.polyfit(np.log(Ls), np.log(ts), 1)
    return p, float(np.exp(loga))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller dense fits (for a smoke run)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"ess {ess.__version__} from {os.path.dirname(ess.__file__)}; "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}, cpus={os.cpu_count()}"
    )
    rows = []

    # ---- dense kernel scaling on one operator (for extrapolation) ----
    A, delta, B, C = mamba_params(rng, 4096)
    dense_L = [128, 256, 512] if args.quick else [256, 512, 1024]
    dense_t = []
    dense_res = {}
    for L in dense_L:
        T = mamba_operator_lowmem(A, delta[:L], B[:L], C[:L], 0)
        dt, dense_res[L] = timed(ess.effective_state_size, T, method="both")
        dense_t.append(dt)
        print(f"dense kernel, one operator, L = {L}: {dt:.3f} s")
    p, a = fit_power(dense_L, dense_t)
    print(f"dense fit: time(L) = {a:.3e} * L^{p:.2f} s per operator (least squares on L = {dense_L})")

    for L in (1024, 4096):
        Ad, dl, Bl, Cl = A, delta[:L], B[:L], C[:L]
        ts, res = timed(S.mamba_ess, Ad, dl, Bl, Cl, method="both")
        # numpy Gramian on the same factors
        at = np.exp(dl.T[:, :, None] * Ad[:, None, :])
        bt = dl.T[:, :, None] * Bl[None]
        ct = np.broadcast_to(Cl, (64, L, 16))
        tg, (gtol, gent) = timed(numpy_gramian_ess, at, bt, ct)
        # dense on the materialised operators: measured for all 64 at L = 1024 only if it fits
        if L <= dense_L[-1]:
            t1 = timed(ess.effective_state_size, mamba_operator_lowmem(Ad, dl, Bl, Cl, 1), method="both")[0]
            tdense = (dense_t[dense_L.index(L)] + t1) / 2 * 64
            how = "measured on 2 channels, x 32"
        else:
            tdense = a * L**p * 64
            how = f"extrapolated {a:.2e}*L^{p:.2f} x 64"
        # accuracy: dense on channel 0 (L = 1024 only)
        agree = ""
        if L in dense_res:
            dres = dense_res[L]
            agree = (
                f"ch0 vs dense: tol equal {np.mean(dres.tolerance == res.tolerance[0]) * 100:.1f}%, "
                f"max rel entropy diff {np.max(np.abs(dres.entropy - res.entropy[0]) / np.maximum(dres.entropy, 1)):.1e}; "
            )
        gram_agree = f"numpy-Gramian tol equal {np.mean(gtol == res.tolerance) * 100:.1f}% of splits"
        rows.append((f"Mamba 64ch N=16 L={L}", ts, tdense, how, tg))
        print(
            f"[mamba L={L}] structured {ts:.3f} s; dense {tdense:.1f} s ({how}); numpy Gramian {tg:.2f} s; "
            f"{agree}{gram_agree}; mean ESS {res.tolerance.mean():.2f}"
        )

    # ---- linear attention ----
    L, Hh, dk = 4096, 8, 64
    q = np.abs(rng.standard_normal((Hh, L, dk))) + 0.1
    k = np.abs(rng.standard_normal((Hh, L, dk))) + 0.1
    ts, res = timed(S.linear_attention_ess, q, k, method="both")
    # dense kernel scaling for linear attention (same cost model: operators are dense L x L)
    la_t = []
    for Lx in dense_L:
        T = np.tril(q[0, :Lx] @ k[0, :Lx].T)
        la_t.append(timed(ess.effective_state_size, T, method="both")[0])
    p2, a2 = fit_power(dense_L, la_t)
    tdense = a2 * L**p2 * Hh
    stride = 16
    tg, gtol = timed(numpy_gramian_linattn, q, k, stride)
    tg_full = tg * stride
    agree = np.mean(gtol == res.tolerance[:, 1::stride]) * 100
    rows.append((f"LinAttn 8h dk=64 L={L}", ts, tdense, f"extrapolated {a2:.2e}*L^{p2:.2f} x 8", tg_full))
    print(
        f"[linattn] structured {ts:.3f} s; dense {tdense:.1f} s (fit {a2:.2e}*L^{p2:.2f} x 8); numpy Gramian "
        f"{tg_full:.1f} s (every {stride}th split timed, x{stride}); numpy-Gramian tol equal {agree:.1f}%; "
        f"structured mean ESS {res.tolerance.mean():.2f}"
    )

    print()
    print(
        f"{'workload':<26}{'structured s':>14}{'dense s':>12}{'numpy-Gram s':>14}{'dense/str':>11}{'Gram/str':>10}  dense how"
    )
    for name, ts, td, how, tg in rows:
        print(f"{name:<26}{ts:>14.3f}{td:>12.1f}{tg:>14.2f}{td / ts:>11.0f}{tg / ts:>10.1f}  {how}")


if __name__ == "__main__":
    main()
