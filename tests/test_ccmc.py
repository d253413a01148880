"""CCMC: base chain, prompt-conditioned transition, simulation, MLE and identifiability."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ess
import ess.markov as mk


def ref_transition(P, prompt, w=None):
    V = P.shape[0]
    m = np.zeros(V)
    for t, x in enumerate(prompt):
        m[x] += 1 if w is None else w[t]
    out = np.zeros((V, V))
    for k in range(V):
        z = sum(m[i] * P[k, i] for i in range(V))
        for j in range(V):
            out[k, j] = m[j] * P[k, j] / z
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from([0.1, 1.0, 50.0]))
def test_base_chain_and_transition(V, seed, scale):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(V, V)) * scale
    P = mk.base_chain(W)
    for k in range(V):
        e = np.exp(W[:, k] - W[:, k].max())
        assert np.allclose(P[k], e / e.sum(), rtol=1e-12, atol=1e-300)
    prompt = rng.integers(0, V, size=rng.integers(1, 10))
    w = rng.uniform(0.1, 2, size=prompt.size)
    assert np.allclose(mk.ccmc_transition(P, prompt), ref_transition(P, prompt), rtol=1e-12, atol=1e-300)
    assert np.allclose(
        mk.ccmc_transition(P, prompt, position_weights=w), ref_transition(P, prompt, w), rtol=1e-12, atol=1e-300
    )


def test_base_chain_embeddings():
    rng = np.random.default_rng(0)
    V, d = 6, 3
    E = rng.normal(size=(V, d))
    W = rng.normal(size=(d, d))
    P = mk.base_chain(W, E)
    S = E @ W @ E.T  # S[j, k] = e_j^T W e_k
    assert np.allclose(P, mk.base_chain(S))


def test_simulation_reproducible_and_statistics():
    rng = np.random.default_rng(1)
    V = 8
    P = mk.base_chain(rng.normal(size=(V, V)))
    prompt = np.array([0, 1, 2, 3, 1, 5])
    a = mk.simulate_ccmc(P, prompt, 200, n_traj=64, seed=7)
    b = mk.simulate_ccmc(P, prompt, 200, n_traj=64, seed=7)
    c = mk.simulate_ccmc(P, prompt, 200, n_traj=64, seed=8)
    assert (a.tokens == b.tokens).all() and (a.support == b.support).all()
    assert not (a.tokens == c.tokens).all()
    assert a.tokens.shape == (64, 200) and a.tokens.dtype == np.int64
    assert set(np.unique(a.tokens)) <= set(prompt)  # the support never grows
    # winner takes all: the share of the leading token grows and the effective support shrinks
    ws = a.mean_winner_share()
    assert ws[-1] > ws[0] and ws[-1] > 0.5
    assert a.mean_support()[-1] < a.mean_support()[0]
    assert np.all(a.support >= 1 - 1e-12) and np.all(a.support <= len(set(prompt)) + 1e-9)


def test_first_step_law():
    """The first sampled token follows P_X(last -> .) (chi-square bound at many samples)."""
    rng = np.random.default_rng(2)
    V = 5
    P = mk.base_chain(rng.normal(size=(V, V)))
    prompt = np.array([0, 1, 1, 3, 4, 2])
    n = 40000
    sim = mk.simulate_ccmc(P, prompt, 1, n_traj=n, seed=3)
    law = mk.ccmc_transition(P, prompt)[prompt[-1]]
    counts = np.bincount(sim.tokens[:, 0], minlength=V)
    exp = law * n
    chi2 = ((counts - exp) ** 2 / np.where(exp > 0, exp, 1)).sum()
    assert chi2 < 25  # 4 dof: p < 1e-4
    # position weights: the weight of each appended token is used
    w = np.concatenate([np.ones(prompt.size), [100.0]])
    sim2 = mk.simulate_ccmc(P, prompt, 1, n_traj=3, seed=0, position_weights=w)
    assert np.all(sim2.winner_share[:, 0] > 100 / 106 - 1e-12)


def sample_data(W, N, L, rng, V):
    P = mk.base_chain(W)
    X = rng.integers(0, V, size=(N, L))
    y = np.empty(N, dtype=np.int64)
    for i in range(N):
        law = mk.ccmc_transition(P, X[i])[X[i, -1]]
        y[i] = rng.choice(V, p=law)
    return X, y


def centred(W, comps):
    out = np.full_like(W, np.nan)
    for k in range(W.shape[1]):
        for c in np.unique(comps[:, k]):
            if c < 0:
                continue
            s = comps[:, k] == c
            out[s, k] = W[s, k] - W[s, k].mean()
    return out


def test_mle_recovers_w_as_samples_grow():
    V, L = 4, 5
    rng = np.random.default_rng(0)
    W = rng.normal(size=(V, V))
    errs = []
    for N in [400, 6400]:
        X, y = sample_data(W, N, L, np.random.default_rng(N), V)
        What, rep = mk.fit_attention_mle(X, y, V)
        assert rep.identifiable.all()
        err = np.nanmax(np.abs(What - centred(W, rep.components)))
        errs.append(err)
    assert errs[1] < errs[0] / 2  # ~ 1/sqrt(N)
    assert errs[1] < 0.2


def test_identifiability_report():
    V = 4
    # prompts ending in 0 never contain 3: W[3, 0] is undetermined (tokens 1 and 2 never
    # co-occur directly but are linked through 0, present in every prompt ending in 0);
    # prompts ending in 1 cover the vocabulary
    X = np.array([[1, 1, 0], [2, 2, 0], [0, 3, 1], [2, 1, 1], [3, 3, 2]])
    rep = mk.identifiability(X, V)
    assert list(rep.n_samples) == [2, 2, 1, 0]
    assert list(rep.identifiable) == [False, True, False, False]
    assert rep.components[3, 0] == -1 and rep.n_components[0] == 1
    assert rep.components[1, 0] == rep.components[2, 0] == rep.components[0, 0]
    assert rep.n_components[1] == 1
    y = np.array([1, 2, 3, 2, 3])
    What, _ = mk.fit_attention_mle(X, y, V)
    assert np.isnan(What[3, 0]) and np.all(np.isnan(What[:, 3]))
    assert np.isfinite(What[:, 1]).all()


def test_ccmc_bad_input():
    P = mk.base_chain(np.zeros((3, 3)))
    with pytest.raises(ess.OutOfRangeError, match="prompt"):
        mk.simulate_ccmc(P, [0, 5], 3)
    with pytest.raises(ess.ShapeError, match="prompt"):
        mk.simulate_ccmc(P, [], 3)
    with pytest.raises(ess.DTypeError, match="prompt"):
        mk.simulate_ccmc(P, [0.5], 3)
    with pytest.raises(ess.ShapeError, match="position_weights"):
        mk.simulate_ccmc(P, [0, 1], 3, position_weights=[1.0, 1.0])
    with pytest.raises(ess.InvalidArgumentError, match="position_weights"):
        mk.simulate_ccmc(P, [0, 1], 1, position_weights=[1.0, 1.0, -1.0])
    with pytest.raises(ess.NotStochasticError):
        mk.simulate_ccmc(np.ones((3, 3)), [0, 1], 3)
    with pytest.raises(ess.NonFiniteError):
        mk.base_chain(np.array([[np.nan]]))
    with pytest.raises(ess.ShapeError):
        mk.base_chain(np.zeros((2, 3)))
    with pytest.raises(ess.InvalidArgumentError, match="absent from its prompt"):
        mk.fit_attention_mle(np.array([[0, 1]]), np.array([2]), 3)
    with pytest.raises(ess.OutOfRangeError):
        mk.fit_attention_mle(np.array([[0, 7]]), np.array([0]), 3)
    Z = np.roll(np.eye(3), 1, axis=1)  # 0 -> 1 -> 2 -> 0 deterministically
    with pytest.raises(ess.InvalidArgumentError, match="zero probability"):
        mk.simulate_ccmc(Z, [0, 0], 2)  # token 1 is not in the prompt
    with pytest.raises(ess.InvalidArgumentError, match="zero probability"):
        mk.ccmc_transition(Z, [0, 0])
    assert mk.simulate_ccmc(P, [0, 1], 0, n_traj=2).tokens.shape == (2, 0)
