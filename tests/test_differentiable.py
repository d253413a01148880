"""ess.differentiable: values against the Rust kernel and a numpy reference, gradcheck,
finiteness at degenerate spectra, the tolerance surrogate."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ess
from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError

pytestmark = pytest.mark.requires("torch")
torch = pytest.importorskip("torch")
ed = pytest.importorskip("ess.differentiable")

STRATEGIES = ("blocks", "padded")


def _ref_entropy(T: np.ndarray) -> np.ndarray:
    """Obviously-correct reference: numpy SVD of every block, the kernel's entropy formula."""
    L = T.shape[-1]
    out = np.zeros(L)
    for t in range(1, L):
        s = np.linalg.svd(T[t:, :t], compute_uv=False)
        s = s[s > 0]
        if s.size:
            p = s / s.sum()
            out[t] = np.exp(-(p * np.log(p)).sum())
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_rust_kernel_and_reference(strategy):
    rng = np.random.default_rng(0)
    T = rng.standard_normal((3, 2, 13, 13))
    T[0, 0] = np.tril(np.outer(rng.standard_normal(13), rng.standard_normal(13)))  # rank-1 blocks
    T[1, 1, :, :] = 0.0  # zero operator
    got = ed.entropy_ess(torch.from_numpy(T), strategy=strategy).numpy()
    rust = ess.effective_state_size(T, method="entropy")
    np.testing.assert_allclose(got, rust, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got[2, 0], _ref_entropy(T[2, 0]), rtol=1e-10, atol=1e-12)
    both = ess.effective_state_size(T, method="both")
    np.testing.assert_allclose(got, both.entropy, rtol=1e-10, atol=1e-10)


def test_positions_and_float32():
    rng = np.random.default_rng(1)
    T = rng.standard_normal((2, 20, 20)).astype(np.float32)
    pos = [0, 3, 10, 19]
    got = ed.entropy_ess(torch.from_numpy(T), pos)
    assert got.dtype == torch.float32 and got.shape == (2, 4)
    rust = ess.effective_state_size(T, method="entropy", positions=pos)
    np.testing.assert_allclose(got.numpy(), rust, rtol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradcheck_float64(strategy):
    g = torch.Generator().manual_seed(3)
    T = torch.randn(2, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ed.entropy_ess(x, strategy=strategy), (T,))
    assert torch.autograd.gradcheck(
        lambda x: ed.soft_tolerance_ess(x, rtol=0.1, temperature=0.3, strategy=strategy), (T,)
    )
    assert torch.autograd.gradcheck(lambda x: ed.entropy_ess(x, [2, 4, 5], strategy=strategy), (T,))


def _repeated_block(k: int = 6) -> torch.Tensor:
    """An operator whose block at split k is Q1 diag(2, 2, 1, 0, 0, 0) Q2^T (repeated and zero values)."""
    g = torch.Generator().manual_seed(5)
    Q1, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=g))
    H = Q1 @ torch.diag(torch.tensor([2.0, 2.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)) @ Q2.T
    T = torch.zeros(2 * k, 2 * k, dtype=torch.float64)
    T[k:, :k] = H
    return T


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_repeated_and_zero_singular_values(strategy):
    T = _repeated_block().requires_grad_()
    e = ed.entropy_ess(T, [6], strategy=strategy)
    p = np.array([2.0, 2.0, 1.0]) / 5.0
    assert abs(e.item() - np.exp(-(p * np.log(p)).sum())) < 1e-12
    e.sum().backward()
    assert torch.isfinite(T.grad).all()
    # the entropy is smooth in the nonzero repeated values: a directional derivative along a
    # perturbation that keeps the rank agrees with finite differences
    Tn = T.detach()
    D = torch.zeros_like(Tn)
    D[6:, :6] = Tn[6:, :6] @ torch.diag(torch.linspace(0.5, 1.5, 6, dtype=torch.float64))
    h = 1e-6
    fd = (ed.entropy_ess(Tn + h * D, [6]) - ed.entropy_ess(Tn - h * D, [6])).item() / (2 * h)
    assert abs(fd - float((T.grad * D).sum())) < 1e-6


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_finite_gradients_degenerate_operators(strategy):
    L = 9
    ops = [
        torch.zeros(L, L, dtype=torch.float64),
        torch.tril(torch.ones(L, L, dtype=torch.float64)),  # rank-1 blocks
        torch.diag(torch.ones(L - 1, dtype=torch.float64), -1),  # shift: rank 1, repeated structure
        torch.tril(torch.ones(L, L, dtype=torch.float64)) * 1e-200,
    ]
    for T in ops:
        T = T.clone().requires_grad_()
        for f in (
            lambda x: ed.entropy_ess(x, strategy=strategy),
            lambda x: ed.soft_tolerance_ess(x, rtol=1e-3, strategy=strategy),
        ):
            out = f(T)
            assert torch.isfinite(out).all()
            out.sum().backward()
            assert torch.isfinite(T.grad).all()
            T.grad = None


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(2, 10),
    rank=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-150, 1e-3, 1.0, 1e100]),
)
def test_hypothesis_agrees_and_grad_finite(L, rank, seed, scale):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((L, rank)) @ rng.standard_normal((rank, L)) if rank else np.zeros((L, L))
    T = np.tril(A) * scale
    Tt = torch.from_numpy(T).requires_grad_()
    e = ed.entropy_ess(Tt)
    np.testing.assert_allclose(e.detach().numpy(), ess.effective_state_size(T, method="entropy"), rtol=1e-8, atol=1e-8)
    assert (e.detach().numpy() <= np.minimum(np.arange(L), L - np.arange(L)) + 1e-9).all()
    e.sum().backward()
    assert torch.isfinite(Tt.grad).all()


def test_soft_tolerance_tends_to_count():
    rng = np.random.default_rng(2)
    T = rng.standard_normal((16, 16))
    U, _, Vt = np.linalg.svd(rng.standard_normal((16, 16)))
    T = U @ np.diag(np.logspace(0, -8, 16)) @ Vt  # spread spectrum, values far from tau in log units
    hard = ess.effective_state_size(np.tril(T), method="tolerance", rtol=3e-4)
    soft = ed.soft_tolerance_ess(torch.from_numpy(np.tril(T)), rtol=3e-4, temperature=0.02).numpy()
    assert np.abs(soft - hard).max() < 0.6
    assert np.abs(soft - hard).mean() < 0.1


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    T = torch.randn(2, 16, 16, dtype=torch.float64)
    np.testing.assert_allclose(ed.entropy_ess(T.cuda()).cpu().numpy(), ed.entropy_ess(T).numpy(), rtol=1e-9, atol=1e-9)


def test_bad_arguments():
    T = torch.zeros(4, 4)
    with pytest.raises(DTypeError):
        ed.entropy_ess(T.to(torch.int64))
    with pytest.raises(ShapeError):
        ed.entropy_ess(torch.zeros(3, 4))
    with pytest.raises(OutOfRangeError):
        ed.entropy_ess(T, [0, 4])
    with pytest.raises(OutOfRangeError):
        ed.entropy_ess(T, [2, 1])
    with pytest.raises(InvalidArgumentError):
        ed.entropy_ess(T, strategy="fast")
    with pytest.raises(InvalidArgumentError):
        ed.soft_tolerance_ess(T)
    with pytest.raises(InvalidArgumentError):
        ed.soft_tolerance_ess(T, rtol=0.1, temperature=2.0)
