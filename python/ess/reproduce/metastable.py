"""Metastable chains: the time to cross a sparse edge between clusters scales as ``1 / eps``.

Claim (metastable chain-of-thought paper, seed abstract "inference-time compute ... metastable Markov
process"): easy steps form densely connected clusters and hard steps are sparse edges of probability
``eps`` between them, so reaching the next cluster takes a time of order ``1 / eps`` (a phase
transition at long time scales), and a search that rewards the sparse edges shortens it.

Here: :func:`ess.markov.metastable_chain` (``n_clusters`` clusters of ``cluster_size`` states,
forward and backward rare edges of probability ``eps``) for ``eps`` from ``1e-2`` to ``1e-12``;
exact expected hitting times of the last cluster from state 0 by :func:`ess.markov.hitting_times`
(GTH elimination, no cancellation, so they stay accurate at ``eps = 1e-12``); the fitted slope of
``log h`` against ``log eps`` (published: ``-1``) and ``h * eps`` (should tend to a constant).
Also: :func:`ess.markov.metastable_decomposition` recovers the clusters, a Monte Carlo estimate
checks the exact value at the largest ``eps``, and "search" (every rare edge boosted by a factor
``b``) divides the hitting time by about ``b``.
"""

from __future__ import annotations

import numpy as np

from .. import markov
from ._common import Result, Row, fmt, new_figure, timed

NAME = "metastable"


def _monte_carlo(P: np.ndarray, start: int, target: set, n_runs: int, rng: np.random.Generator, cap: int) -> float:
    cum = np.cumsum(P, axis=1)
    times = []
    for _ in range(n_runs):
        s, t = start, 0
        while s not in target and t < cap:
            s = int(np.searchsorted(cum[s], rng.random() * cum[s, -1], side="right"))
            s = min(s, P.shape[0] - 1)
            t += 1
        times.append(t)
    return float(np.mean(times))


def _boosted(P: np.ndarray, K: int, M: int, eps: float, b: float) -> np.ndarray:
    """The same chain with every rare edge's probability multiplied by ``b`` (taken from the
    state's in-cluster mass, so rows stay stochastic)."""
    Q = P.copy()
    for c in range(K):
        for i, j in ([(c * M + M - 1, (c + 1) * M)] if c + 1 < K else []) + ([(c * M, c * M - 1)] if c > 0 else []):
            extra = (b - 1.0) * Q[i, j]
            inside = [k for k in range(c * M, (c + 1) * M) if Q[i, k] > 0]
            Q[i, inside] *= 1.0 - extra / Q[i, inside].sum()
            Q[i, j] *= b
    return Q


@timed
def run(quick: bool = False, seed: int = 0) -> Result:
    K, M = (3, 5) if quick else (4, 8)
    exps = np.arange(2, 13, 2 if quick else 1)
    eps_list = 10.0 ** (-exps.astype(float))
    h_list = []
    for eps in eps_list:
        P = markov.metastable_chain(K, M, degree=3, eps=float(eps), seed=seed)
        hit = markov.hitting_times(P, np.arange((K - 1) * M, K * M))
        h_list.append(float(hit[0]))
    h = np.array(h_list)
    slope, intercept = np.polyfit(np.log(eps_list), np.log(h), 1)
    heps = h * eps_list

    # clusters recovered from the chain alone
    P = markov.metastable_chain(K, M, degree=3, eps=1e-6, seed=seed)
    dec = markov.metastable_decomposition(P)
    truth = np.repeat(np.arange(K), M)
    recovered = dec.n_clusters == K and all(len(set(dec.labels[truth == c])) == 1 for c in range(K))

    # Monte Carlo check of the exact value at the largest eps
    rng = np.random.default_rng(seed)
    P2 = markov.metastable_chain(K, M, degree=3, eps=float(eps_list[0]), seed=seed)
    n_runs = 100 if quick else 1000
    mc = _monte_carlo(P2, 0, set(range((K - 1) * M, K * M)), n_runs, rng, cap=10**7)
    mc_rel = abs(mc - h[0]) / h[0]

    # search: boosting the rare edges by b divides the hitting time by ~b
    b = 10.0
    eps_s = 1e-6
    Pb = _boosted(markov.metastable_chain(K, M, degree=3, eps=eps_s, seed=seed), K, M, eps_s, b)
    h_plain = float(
        markov.hitting_times(
            markov.metastable_chain(K, M, degree=3, eps=eps_s, seed=seed), np.arange((K - 1) * M, K * M)
        )[0]
    )
    h_boost = float(markov.hitting_times(Pb, np.arange((K - 1) * M, K * M))[0])

    r = Result(
        NAME,
        "Metastable chains: hitting times between clusters scale as 1/eps",
        "metastable chain-of-thought (inference-time compute as a metastable Markov process)",
        "quick" if quick else "full",
    )
    spread = float(heps.max() / heps.min())
    r.rows = [
        Row(
            "slope of log h(0 -> last cluster) vs log eps",
            "-1 (h = Theta(1/eps))",
            f"{slope:.4f}",
            abs(slope + 1) < 0.02,
            f"eps = 1e-{exps[0]} .. 1e-{exps[-1]}, {len(exps)} values",
        ),
        Row(
            "h * eps over that range",
            "tends to a constant",
            f"{fmt(heps.min())} .. {fmt(heps.max())} (max/min {spread:.3f})",
            spread < 1.1,
        ),
        Row(
            "clusters recovered by metastable_decomposition",
            "the dense clusters",
            f"{dec.n_clusters} found, match = {recovered}",
            bool(recovered),
        ),
        Row(
            f"Monte Carlo vs exact h at eps = {eps_list[0]:g}",
            "(consistency check)",
            f"{fmt(mc)} vs {fmt(h[0])} ({n_runs} runs, rel. diff {mc_rel:.3f})",
            mc_rel < 0.35,
        ),
        Row(
            f"search: rare edges boosted x{b:g} (eps = {eps_s:g})",
            "fewer steps to reach the next cluster",
            f"h {fmt(h_plain)} -> {fmt(h_boost)} (ratio {h_plain / h_boost:.2f})",
            h_plain / h_boost > 0.8 * b,
        ),
    ]
    r.notes = [
        "The published result is a scaling law (a theorem: time Theta(1/eps) to cross a sparse edge), not a "
        "measured number; the rows check it over ten orders of magnitude with exact (GTH) hitting times.",
        f"Chain: {K} clusters of {M} states, in-cluster degree 3, rare edges forward and backward with probability eps.",
    ]
    r.numbers = {
        "n_clusters": K,
        "cluster_size": M,
        "eps": eps_list,
        "hitting_time": h,
        "h_times_eps": heps,
        "slope": slope,
        "intercept": intercept,
        "decomposition_clusters": dec.n_clusters,
        "recovered": recovered,
        "monte_carlo": {"eps": eps_list[0], "runs": n_runs, "mean": mc, "exact": h[0]},
        "search": {"boost": b, "eps": eps_s, "plain": h_plain, "boosted": h_boost},
    }
    fig, ax = new_figure(2)
    ax[0, 0].loglog(eps_list, h, "o-", label="exact hitting time (GTH)")
    ax[0, 0].loglog(eps_list, np.exp(intercept) * eps_list**-1.0, "k--", lw=1, label="C / eps")
    ax[0, 0].set_xlabel("rare-edge probability eps")
    ax[0, 0].set_ylabel("E[steps] state 0 -> last cluster")
    ax[0, 0].legend()
    ax[0, 1].semilogx(eps_list, heps, "o-")
    ax[0, 1].set_xlabel("eps")
    ax[0, 1].set_ylabel("h * eps")
    ax[0, 1].set_title(f"slope {slope:.4f}")
    r.figures = {"metastable_hitting_times": fig}
    return r
