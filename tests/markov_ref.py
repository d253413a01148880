"""Slow, obviously-correct references for the Markov-chain tests (numpy / mpmath)."""

from __future__ import annotations

import mpmath as mp
import numpy as np


def hit_dense(P, A):
    """Hitting times by a dense solve of (I - Q) h = 1 on the states that reach A a.s."""
    n = P.shape[0]
    A = np.unique(np.atleast_1d(A))
    inA = np.zeros(n, bool)
    inA[A] = True
    # reachability by matrix powers of the adjacency (small n)
    adj = (P > 0) & ~np.eye(n, dtype=bool)
    reach = inA.copy()
    while True:
        new = reach | (adj[:, reach].any(axis=1))
        if (new == reach).all():
            break
        reach = new
    adj_nt = adj & ~inA[:, None]  # no steps out of A
    bad = ~reach
    while True:
        new = bad | (adj_nt[:, bad].any(axis=1) & ~inA)
        if (new == bad).all():
            break
        bad = new
    h = np.zeros(n)
    h[bad & ~inA] = np.inf
    S = np.flatnonzero(~inA & ~bad)
    if S.size:
        h[S] = np.linalg.solve(np.eye(S.size) - P[np.ix_(S, S)], np.ones(S.size))
    return h


def stationary_dense(P):
    n = P.shape[0]
    M = np.vstack([(P.T - np.eye(n)), np.ones(n)])
    b = np.zeros(n + 1)
    b[-1] = 1
    return np.linalg.lstsq(M, b, rcond=None)[0]


def committor_dense(P, A, B):
    n = P.shape[0]
    q = np.zeros(n)
    q[B] = 1
    S = np.setdiff1d(np.arange(n), np.concatenate([A, B]))
    rhs = P[np.ix_(S, B)].sum(axis=1)
    q[S] = np.linalg.solve(np.eye(S.size) - P[np.ix_(S, S)], rhs)
    return q


def _mp_offdiag(P):
    n = P.shape[0]
    return [[mp.mpf(float(P[i, j])) if i != j else mp.mpf(0) for j in range(n)] for i in range(n)]


def hit_mpmath(P, A, dps=60):
    """Hitting times in high precision; the off-diagonal entries are the data."""
    with mp.workdps(dps):
        n = P.shape[0]
        off = _mp_offdiag(P)
        S = [i for i in range(n) if i not in set(int(a) for a in A)]
        Q = mp.matrix(len(S), len(S))
        for a, i in enumerate(S):
            Q[a, a] = mp.fsum(off[i])
            for b, j in enumerate(S):
                if i != j:
                    Q[a, b] = -off[i][j]
        x = mp.lu_solve(Q, mp.matrix([1] * len(S)))
        h = np.zeros(n)
        for a, i in enumerate(S):
            h[i] = float(x[a])
        return h


def stationary_mpmath(P, dps=120):
    with mp.workdps(dps):
        n = P.shape[0]
        off = _mp_offdiag(P)
        # pi (D - Q) = 0 with pi_0 = 1: solve for the others, then normalise
        G = mp.matrix(n, n)
        for i in range(n):
            G[i, i] = mp.fsum(off[i])
            for j in range(n):
                if i != j:
                    G[i, j] = -off[i][j]
        # unknowns pi_1..pi_{n-1}: sum_i pi_i G[i, j] = 0 for j = 1..n-1
        A = mp.matrix(n - 1, n - 1)
        b = mp.matrix(n - 1, 1)
        for jj, j in enumerate(range(1, n)):
            b[jj] = -G[0, j]
            for ii, i in enumerate(range(1, n)):
                A[jj, ii] = G[i, j]
        x = mp.lu_solve(A, b)
        pi = [mp.mpf(1)] + [x[i] for i in range(n - 1)]
        s = mp.fsum(pi)
        return np.array([float(p / s) for p in pi])


def committor_mpmath(P, A, B, dps=60):
    with mp.workdps(dps):
        n = P.shape[0]
        off = _mp_offdiag(P)
        AB = set(int(a) for a in A) | set(int(b) for b in B)
        S = [i for i in range(n) if i not in AB]
        Q = mp.matrix(len(S), len(S))
        r = mp.matrix(len(S), 1)
        for a, i in enumerate(S):
            Q[a, a] = mp.fsum(off[i])
            r[a] = mp.fsum(off[i][j] for j in B)
            for b, j in enumerate(S):
                if i != j:
                    Q[a, b] = -off[i][j]
        x = mp.lu_solve(Q, r)
        q = np.zeros(n)
        q[list(B)] = 1
        for a, i in enumerate(S):
            q[i] = float(x[a])
        return q
