"""The trained one-layer attention model against the automaton prediction of its token-priority graphs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch")
torch = pytest.importorskip("torch")

from ess import automaton as A  # noqa: E402
from ess.errors import ShapeError  # noqa: E402

SEEDS = range(10)


@pytest.mark.parametrize("seed", SEEDS)
def test_published_experiment_cosine(seed):
    """K = 6 tokens, 6 windows of length 4 (distinct tokens), unit-norm embeddings of
    dimension 8, a cyclic graph; normalised GD, step 0.01, 4000 steps from W = 0."""
    ds = A.random_dataset(vocab_size=6, n_windows=6, length=4, dim=8, seed=seed)
    assert any(g.is_cyclic for g in ds.graphs())
    model = A.train(ds, steps=4000, lr=0.01, seed=seed)
    r = A.automaton_report(model, ds, seed=seed)
    assert r.cosine >= 0.97, r.cosine
    # hard retrieval: the layer's attention sits on the predicted set
    assert r.n_determined > 0
    assert r.retrieval_mass >= 0.95
    # soft composition: next-token law close to the W_fin prediction
    assert r.composition_tv <= 0.05
    assert r.composition_tv_train <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 40))
def test_published_experiment_cosine_more_seeds(seed):
    ds = A.random_dataset(seed=seed)
    r = A.automaton_report(A.train(ds, seed=seed), ds, seed=seed)
    assert r.cosine >= 0.97, r.cosine
    assert r.retrieval_mass >= 0.95


def test_model_output_is_attention_mass_per_token():
    ds = A.random_dataset(seed=3)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 8))
    m = A.OneLayerAttention(6, ds.E, W)
    X = torch.as_tensor(ds.windows)
    p = m(X).detach().numpy()
    E = ds.E
    for w, row in zip(ds.windows, p):
        s = E[w] @ W @ E[w[-1]]
        a = np.exp(s - s.max())
        a /= a.sum()
        ref = np.zeros(6)
        np.add.at(ref, w, a)
        np.testing.assert_allclose(row, ref, atol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_trainer_is_deterministic_and_report_accepts_W():
    ds = A.random_dataset(seed=1, dim=None)  # one-hot tokens
    m1 = A.train(ds, steps=300, seed=5)
    m2 = A.train(ds, steps=300, seed=5)
    assert torch.equal(m1.W, m2.W)
    r1 = A.automaton_report(m1, ds)
    r2 = A.automaton_report(m1.W.detach().numpy(), ds)
    assert r1.cosine == r2.cosine
    assert r1.W_svm.shape == (6, 6)
    with pytest.raises(ShapeError, match="model_or_W"):
        A.automaton_report(np.zeros((3, 3)), ds)


def test_import_ess_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ess; ess.graph; assert 'torch' not in sys.modules; ess.automaton; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
