"""Self-attention as a context-conditioned Markov chain (CCMC); public API via ``ess.markov``.

Model (one attention layer, query = last token, tied output embeddings): the base chain
``P[k, j] = softmax_j(e_j^T W e_k)`` and, for a prompt ``X`` with token counts ``m_j``
(or position-weighted counts ``sum_{t: x_t = j} w_t``),

    P_X(k -> j) = m_j P[k, j] / sum_i m_i P[k, i]      (0 for tokens absent from X).

Tokens are ``0..V-1``; ``W`` is ``(V, V)`` with one-hot embeddings (``W[j, k]`` scores
candidate ``j`` for last token ``k``), or ``(d, d)`` with embeddings ``E`` of shape ``(V, d)``.

References
----------
M. E. Ildiz, Y. Huang, Y. Li, A. S. Rawat, S. Oymak, "From Self-Attention to Markov Models:
Unveiling the Dynamics of Generative Transformers", ICML 2024, PMLR 235:20955-20982 (the CCMC
view of one layer).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import numpy as np
import numpy.typing as npt

from . import _args, _core, _newton
from .errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError

__all__ = [
    "base_chain",
    "ccmc_transition",
    "simulate_ccmc",
    "CCMCSimulation",
    "fit_attention_mle",
    "identifiability",
    "IdentifiabilityReport",
]


def _real(a: object, arg: str) -> npt.NDArray[np.float64]:
    x = _args.array(a, arg, kinds="fiubcSUO")
    if x.dtype.kind not in "fiu":
        raise DTypeError(f"{arg}: dtype {x.dtype} is not supported; pass a real array")
    x = np.ascontiguousarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        from .errors import NonFiniteError

        raise NonFiniteError(f"{arg} contains a non-finite value (NaN or inf)")
    return x


def _tokens(a: object, arg: str, V: int, ndim: int) -> npt.NDArray[np.int64]:
    x = _args.array(a, arg, kinds="iufbcSUO")
    if x.size and x.dtype.kind not in "iu":
        raise DTypeError(f"{arg}: tokens must be integers, got dtype {x.dtype}")
    x = x.astype(np.int64)
    if x.ndim != ndim:
        raise ShapeError(f"{arg}: must have {ndim} dimension(s), got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= V):
        raise OutOfRangeError(f"{arg}: token ids must be in [0, {V}), got range [{x.min()}, {x.max()}]")
    return x


def base_chain(W: npt.ArrayLike, embeddings: Optional[npt.ArrayLike] = None) -> npt.NDArray[np.float64]:
    """Base chain ``P[k, j] = softmax_j(e_j^T W e_k)`` of a one-layer attention model.

    With ``embeddings=None``, ``W`` is ``(V, V)`` and ``e`` are one-hot (``P[k] = softmax(W[:, k])``);
    otherwise ``embeddings`` is ``(V, d)`` and ``W`` is ``(d, d)``. Returns ``(V, V)``, rows sum to 1
    (computed with the max-shift, so huge scores do not overflow).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import base_chain
    >>> W = np.array([[0.0, np.log(3)], [np.log(3), 0.0]])   # W[j, k]: score of candidate j after k
    >>> base_chain(W).round(12)
    array([[0.25, 0.75],
           [0.75, 0.25]])
    """
    Wm = _real(W, "W")
    if Wm.ndim != 2 or Wm.shape[0] != Wm.shape[1]:
        raise ShapeError(f"W: must be square 2-D, got shape {Wm.shape}")
    if embeddings is None:
        S = Wm.T  # S[k, j] = W[j, k]
    else:
        E = _real(embeddings, "embeddings")
        if E.ndim != 2 or E.shape[1] != Wm.shape[0]:
            raise ShapeError(f"embeddings: must be (V, {Wm.shape[0]}), got shape {E.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            S = (E @ Wm @ E.T).T
        if not np.all(np.isfinite(S)):
            from .errors import NonFiniteError

            k, j = np.argwhere(~np.isfinite(S))[0]
            raise NonFiniteError(
                f"embeddings: the score e_{j}^T W e_{k} overflows float64 (scores must stay below 1.8e308); "
                "rescale W or the embeddings"
            )
    S = S - S.max(axis=1, keepdims=True)
    P = np.exp(S)
    return P / P.sum(axis=1, keepdims=True)


def _counts(prompt: npt.NDArray[np.int64], V: int, w: Optional[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    m = np.zeros(V)
    np.add.at(m, prompt, 1.0 if w is None else w[: prompt.size])
    return m


def ccmc_transition(
    P: npt.ArrayLike, prompt: npt.ArrayLike, *, position_weights: Optional[npt.ArrayLike] = None
) -> npt.NDArray[np.float64]:
    """Prompt-conditioned transition matrix ``P_X`` (``(V, V)``): the base chain reweighted by the prompt's counts.

    ``P_X[k, j] = m_j P[k, j] / sum_i m_i P[k, i]``; columns of tokens absent from the prompt
    are 0. ``position_weights`` (length ``len(prompt)``, > 0) gives position-weighted counts.
    Rows whose base row gives the prompt zero mass raise :class:`InvalidArgumentError`.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import ccmc_transition
    >>> P = np.full((3, 3), 1 / 3)
    >>> ccmc_transition(P, [0, 0, 1]).round(12)   # token 0 twice, token 1 once, token 2 absent
    array([[0.66666667, 0.33333333, 0.        ],
           [0.66666667, 0.33333333, 0.        ],
           [0.66666667, 0.33333333, 0.        ]])
    """
    Pm = _real(P, "P")
    if Pm.ndim != 2 or Pm.shape[0] != Pm.shape[1]:
        raise ShapeError(f"P: must be square (V, V), got shape {Pm.shape}")
    V = Pm.shape[0]
    if Pm.size and Pm.min() < 0:
        from .errors import NotStochasticError

        i, j = np.unravel_index(int(np.argmin(Pm)), Pm.shape)
        raise NotStochasticError(
            f"P: entry ({i}, {j}) = {Pm[i, j]!r} is negative; a base chain has non-negative entries"
        )
    x = _tokens(prompt, "prompt", V, 1)
    if x.size == 0:
        raise ShapeError("prompt: the prompt is empty")
    w = None
    if position_weights is not None:
        w = _real(position_weights, "position_weights")
        if w.shape != x.shape or np.any(w <= 0):
            raise InvalidArgumentError("position_weights: needs one positive weight per prompt position")
    m = _counts(x, V, w)
    Q = Pm * m[None, :]
    z = Q.sum(axis=1, keepdims=True)
    if np.any(z <= 0):
        k = int(np.flatnonzero(z[:, 0] <= 0)[0])
        raise InvalidArgumentError(f"P: row {k} gives zero probability to every token of the prompt")
    return Q / z


class CCMCSimulation(NamedTuple):
    """Trajectories of :func:`simulate_ccmc` (arrays ``(n_traj, n_steps)``) and their summaries.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import simulate_ccmc
    >>> sim = simulate_ccmc(np.full((3, 3), 1 / 3), [0, 1, 2], n_steps=5, n_traj=4, seed=1)
    >>> sim.tokens.shape, sim.support.shape, sim.winner_share.shape
    ((4, 5), (4, 5), (4, 5))
    >>> bool(np.all(sim.tokens >= 0) and np.all(sim.tokens < 3))
    True
    >>> sim.mean_support().shape, float(sim.support[0, 0].round(12))   # uniform law on 3 tokens first
    ((5,), 3.0)
    """

    tokens: npt.NDArray[np.int64]
    support: npt.NDArray[np.float64]
    """Effective support of the next-token law before each step: ``exp(entropy)``."""
    winner_share: npt.NDArray[np.float64]
    """Largest (weighted) token count over the total count, after each step."""

    def mean_support(self) -> npt.NDArray[np.float64]:
        """Mean effective support over trajectories, per step."""
        return self.support.mean(axis=0)

    def mean_winner_share(self) -> npt.NDArray[np.float64]:
        """Mean winner share over trajectories, per step."""
        return self.winner_share.mean(axis=0)


def simulate_ccmc(
    P: npt.ArrayLike,
    prompt: npt.ArrayLike,
    n_steps: int,
    *,
    n_traj: int = 1,
    seed: int = 0,
    position_weights: Optional[npt.ArrayLike] = None,
) -> CCMCSimulation:
    """Generate by appending each sampled token to the prompt (the urn-like CCMC process).

    Runs ``n_traj`` independent trajectories in parallel (Rust, GIL released). Each step
    samples from ``P_X(k -> .)`` with the current counts and last token, then adds the token
    (weight 1, or ``position_weights[len(prompt) + step]``). Reproducible: trajectory ``r``
    uses xoshiro256++ seeded from ``(seed, r)``, independent of thread count.
    ``position_weights``, if given, has ``len(prompt) + n_steps`` positive entries.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import simulate_ccmc
    >>> sim = simulate_ccmc(np.full((2, 2), 0.5), [0, 1], n_steps=200, n_traj=50, seed=0)
    >>> sim.tokens.shape
    (50, 200)
    >>> sim.mean_winner_share()[[0, -1]].round(2)      # the urn drifts towards one token
    array([0.67, 0.76])
    >>> bool(np.array_equal(sim.tokens, simulate_ccmc(np.full((2, 2), 0.5), [0, 1], 200, n_traj=50, seed=0).tokens))
    True
    """
    Pm = _real(P, "P")
    x = _args.array(prompt, "prompt", kinds="iufbcSUO")
    if x.size and x.dtype.kind not in "iu":
        raise DTypeError(f"prompt: tokens must be integers, got dtype {x.dtype}")
    if x.ndim != 1:
        raise ShapeError(f"prompt: must be 1-D, got shape {x.shape}")
    n_steps = _args.integer(n_steps, "n_steps", lo=0, hi=2**62)
    n_traj = _args.integer(n_traj, "n_traj", lo=0, hi=2**62)
    seed = _args.integer(seed, "seed", lo=0, hi=2**64 - 1)
    w = None
    if position_weights is not None:
        w = _real(position_weights, "position_weights").ravel().tolist()
    tok, sup, win = _core.markov_ccmc_simulate(Pm, [int(t) for t in x], int(n_traj), int(n_steps), int(seed), w)
    return CCMCSimulation(tok, sup, win)


class IdentifiabilityReport(NamedTuple):
    """Which columns of ``W`` the (prompt, next token) samples determine.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import identifiability
    >>> r = identifiability(np.array([[1, 0], [2, 0], [2, 1]]), vocab_size=3)
    >>> r.identifiable, r.n_samples
    (array([ True, False, False]), array([2, 1, 0]))
    >>> r.components
    array([[ 0, -1, -1],
           [ 0,  0, -1],
           [ 0,  0, -1]])
    """

    identifiable: npt.NDArray[np.bool_]
    """Per column ``k``: every token co-occurs (transitively) in prompts ending in ``k``, so
    column ``k`` is determined up to one additive shift."""
    components: npt.NDArray[np.int64]
    """``(V, V)``: ``components[j, k]`` = connected component of token ``j`` in the
    co-occurrence graph of prompts ending in ``k``; ``-1`` if ``j`` never occurs there
    (``W[j, k]`` is then not determined at all)."""
    n_components: npt.NDArray[np.int64]
    n_samples: npt.NDArray[np.int64]
    """Number of samples whose prompt ends in ``k``."""


def _prompts(prompts: npt.ArrayLike, V: int) -> npt.NDArray[np.int64]:
    X = _tokens(prompts, "prompts", V, 2)
    if X.shape[1] == 0:
        raise ShapeError("prompts: prompts must be non-empty")
    return X


def identifiability(prompts: npt.ArrayLike, vocab_size: int) -> IdentifiabilityReport:
    """Identifiability of ``W`` from prompts (``(N, L)`` int array, all of length ``L``).

    Column ``k`` enters only through prompts ending in ``k``, and only through differences
    ``W[j, k] - W[j', k]`` of tokens present in the same prompt (the softmax is shift
    invariant). Hence ``W[:, k]`` is determined up to one shift exactly when the co-occurrence
    graph (tokens linked when they share a prompt ending in ``k``) is connected and covers
    the vocabulary; each connected component carries its own unknown shift. In this model
    the last token ``k`` occurs in every prompt ending in ``k``, so the tokens seen there are
    always linked through ``k``: in practice identifiability fails through coverage (tokens
    never seen with ``k``, whose entries are then undetermined), and the component labels
    matter for generalisations (e.g. prompts whose last position is masked out).

    Examples
    --------
    Prompts ending in 0 hold tokens 0, 1 and 2, so column 0 of ``W`` is identifiable; the one prompt
    ending in 1 never shows token 0 with it.

    >>> import numpy as np
    >>> from ess.markov import identifiability
    >>> r = identifiability(np.array([[1, 0], [2, 0], [2, 1]]), vocab_size=3)
    >>> r.identifiable
    array([ True, False, False])
    >>> r.components[:, 1]          # W[0, 1] is not determined at all
    array([-1,  0,  0])
    """
    V = _args.integer(vocab_size, "vocab_size", lo=1)
    _args.gate("vocab_size", 3.0 * 8 * V * V, f"the V x V component tables (V = {V})")
    X = _prompts(prompts, V)
    comps = np.full((V, V), -1, dtype=np.int64)
    ncomp = np.zeros(V, dtype=np.int64)
    nsamp = np.bincount(X[:, -1], minlength=V).astype(np.int64)
    for k in range(V):
        Xk = X[X[:, -1] == k]
        if Xk.shape[0] == 0:
            continue
        # Co-occurrence components: a star from each prompt's first token to its other tokens,
        # both directions, and the core's strongly connected components of that symmetric graph.
        L = Xk.shape[1]
        head = np.repeat(Xk[:, 0], L)
        tail = Xk.ravel()
        _, labels = _core.graph_scc(np.concatenate([head, tail]), np.concatenate([tail, head]), V)
        js = np.unique(tail)
        # Components numbered in the order of their smallest token.
        _, first, inv = np.unique(labels[js], return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first)] = np.arange(first.size)
        comps[js, k] = rank[inv]
        ncomp[k] = first.size
    ident = (ncomp == 1) & np.all(comps >= 0, axis=0)
    return IdentifiabilityReport(ident, comps, ncomp, nsamp)


def _mle_objective(
    b: npt.NDArray[np.float64], Z: npt.NDArray[np.float64], Y: npt.NDArray[np.float64], l2: float
) -> Tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Negative log-likelihood of the one-hot labels ``Y`` under ``softmax(Z + b)`` (rows) plus
    ``l2 |b|^2 / 2``, with its gradient and Hessian in ``b``."""
    z = Z + b
    zm = z.max(axis=1, keepdims=True)
    e = np.exp(z - zm)
    se = e.sum(axis=1, keepdims=True)
    lse = zm[:, 0] + np.log(se[:, 0])
    f = float(-(Y * np.where(Y > 0, z, 0)).sum() + lse.sum() + 0.5 * l2 * b @ b)
    p = e / se
    g = (p - Y).sum(axis=0) + l2 * b
    H = np.diag(p.sum(axis=0)) - p.T @ p + l2 * np.eye(b.shape[0])
    return f, g, H


def fit_attention_mle(
    prompts: npt.ArrayLike,
    next_tokens: npt.ArrayLike,
    vocab_size: int,
    *,
    position_weights: Optional[npt.ArrayLike] = None,
    l2: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[npt.NDArray[np.float64], IdentifiabilityReport]:
    """Maximum-likelihood ``W`` (one-hot embeddings) from (prompt, next-token) samples.

    For each last token ``k`` the problem is a convex multinomial logit over the tokens of
    each prompt with offsets ``log m_j``: ``p(j | X) = m_j exp(W[j, k]) / sum_i m_i exp(W[i, k])``.
    Solved column by column by damped Newton with a small ridge ``l2 * ||W[:, k]||^2 / 2``
    (needed where the data separate, e.g. a token always chosen when present; it also
    selects the zero-mean representative of each shift class).

    Returns ``(W_hat, report)``: entries of tokens never seen with ``k`` are ``NaN``; on each
    connected component of the co-occurrence graph (see :func:`identifiability`) the column
    is centred to mean zero (the gauge). A next token absent from its prompt has probability
    zero under the model and raises :class:`InvalidArgumentError`.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import base_chain, fit_attention_mle
    >>> rng = np.random.default_rng(0)
    >>> prompts = np.array([rng.permutation(3) for _ in range(400)])
    >>> W = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    >>> P = base_chain(W)
    >>> next_tokens = np.array([rng.choice(3, p=P[x[-1]]) for x in prompts])
    >>> W_hat, report = fit_attention_mle(prompts, next_tokens, vocab_size=3)
    >>> report.identifiable
    array([ True,  True,  True])
    >>> W_hat[:, 0].round(1)          # column 0 centred to mean 0, close to W[:, 0]
    array([ 1.2, -0.1, -1.1])
    """
    V = _args.integer(vocab_size, "vocab_size", lo=1)
    _args.gate("vocab_size", 5.0 * 8 * V * V, f"the V x V weight and component tables (V = {V})")
    X = _prompts(prompts, V)
    y = _tokens(next_tokens, "next_tokens", V, 1)
    if y.shape[0] != X.shape[0]:
        raise ShapeError(f"next_tokens: expected {X.shape[0]} labels, got {y.shape[0]}")
    N, L = X.shape
    w = np.ones(L) if position_weights is None else _real(position_weights, "position_weights")
    if w.shape != (L,) or np.any(w <= 0):
        raise InvalidArgumentError(f"position_weights: needs {L} positive weights")
    l2 = _args.real(l2, "l2")
    if not l2 > 0:
        raise InvalidArgumentError(f"l2: must be > 0, got {l2}")
    max_iter = _args.integer(max_iter, "max_iter", lo=1, hi=10**6)
    tol = _args.real(tol, "tol", lo=0.0)
    Mc = np.zeros((N, V))
    np.add.at(Mc, (np.repeat(np.arange(N), L), X.ravel()), np.tile(w, N))
    bad = np.flatnonzero(Mc[np.arange(N), y] == 0)
    if bad.size:
        raise InvalidArgumentError(
            f"next_tokens: sample {int(bad[0])} has next token {int(y[bad[0]])} absent from its prompt "
            f"(probability zero under the model; {bad.size} such samples)"
        )
    rep = identifiability(X, V)
    W = np.full((V, V), np.nan)
    logM = np.where(Mc > 0, np.log(np.where(Mc > 0, Mc, 1.0)), -np.inf)
    for k in range(V):
        idx = np.flatnonzero(X[:, -1] == k)
        if idx.size == 0:
            continue
        seen = rep.components[:, k] >= 0
        cols = np.flatnonzero(seen)
        Z = logM[np.ix_(idx, cols)]
        Y = np.zeros((idx.size, cols.size))
        Y[np.arange(idx.size), np.searchsorted(cols, y[idx])] = 1.0
        objective = functools.partial(_mle_objective, Z=Z, Y=Y, l2=l2)
        beta, _ = _newton.minimize(objective, np.zeros(cols.size), tol=tol, max_iter=max_iter, name="fit_attention_mle")
        comp = rep.components[cols, k]
        for c in np.unique(comp):
            sel = comp == c
            beta[sel] -= beta[sel].mean()
        W[cols, k] = beta
    return W, rep
