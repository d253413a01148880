"""Bad arguments at the public boundary: a class of ess.errors naming the argument, never a
bare numpy/pyo3 exception, never a silent truncation or a dropped mask (issue: nothing a user
passes may go unnoticed)."""

from __future__ import annotations

import numpy as np
import pytest

import ess
from ess.errors import (
    DTypeError,
    EssError,
    InvalidArgumentError,
    NonFiniteError,
    NotStochasticError,
    OutOfRangeError,
    ShapeError,
    TooLargeError,
)

T = np.tril(np.ones((6, 6)))
P = np.full((3, 3), 1.0 / 3.0)


@pytest.mark.parametrize(
    "call, cls, arg",
    [
        (lambda: ess.effective_state_size(T, method=None), InvalidArgumentError, "method"),
        (lambda: ess.effective_state_size(T, atol="0.1"), DTypeError, "atol"),
        (lambda: ess.effective_state_size(T, rtol=float("nan")), InvalidArgumentError, "rtol"),
        (lambda: ess.effective_state_size(T, positions=[2**70]), OutOfRangeError, "positions"),
        (lambda: ess.effective_state_size(T, positions=[1.5]), DTypeError, "positions"),
        (lambda: ess.effective_state_size([[1.0, 2.0], [3.0]]), ShapeError, "T"),
        (lambda: ess.effective_state_size(np.ma.masked_array(T, mask=T == 0)), InvalidArgumentError, "T"),
        (lambda: ess.markov.hitting_times(P, [0], method=None), InvalidArgumentError, "method"),
        (lambda: ess.markov.hitting_times(P, [2**70]), OutOfRangeError, "target"),
        (lambda: ess.markov.stationary_distribution(np.ma.masked_array(P)), InvalidArgumentError, "P"),
        (lambda: ess.ccmc.simulate_ccmc(P, [0], n_steps=3, seed=1.5), DTypeError, "seed"),
        (lambda: ess.ccmc.simulate_ccmc(P, [0], n_steps=2.0), DTypeError, "n_steps"),
        (lambda: ess.ccmc.simulate_ccmc(P, [0], n_steps=3, n_traj=-1), OutOfRangeError, "n_traj"),
        (lambda: ess.ccmc.simulate_ccmc(P, [0], n_steps=3, seed=2**64), OutOfRangeError, "seed"),
        (lambda: ess.ccmc.ccmc_transition(np.array([[1.5, -0.5], [0.5, 0.5]]), [0, 1]), NotStochasticError, "P"),
        (lambda: ess.ccmc.base_chain(np.eye(2) * 1e300, np.eye(2) * 1e10), NonFiniteError, "embeddings"),
        (lambda: ess.ccmc.identifiability([[0, 1]], 2.5), DTypeError, "vocab_size"),
        (lambda: ess.graph.strongly_connected_components([0], [1], 2**70), OutOfRangeError, "n_nodes"),
        (lambda: ess.graph.strongly_connected_components([0], [1], 1.5), DTypeError, "n_nodes"),
        (lambda: ess.graph.strongly_connected_components([[0, 1], [1]], [1, 0], 2), ShapeError, "src"),
        (lambda: ess.graph.strongly_connected_components([2**70], [0], 2), OutOfRangeError, "src"),
        (
            lambda: ess.structured.ssm_ess(None, np.ones((4, 2)), np.ones((4, 2)), method=None),
            InvalidArgumentError,
            "method",
        ),
        (lambda: ess.structured.ssm_ess(None, np.ones((4, 2)), np.ones((4, 2)), atol="0.1"), DTypeError, "atol"),
        (
            lambda: ess.structured.ssm_ess(None, np.ma.masked_array(np.ones((4, 2))), np.ones((4, 2))),
            InvalidArgumentError,
            "B",
        ),
        (lambda: ess.structured.conv_ess(np.ones(3), 8, rtol=-1.0), InvalidArgumentError, "rtol"),
        # found by scripts/hostile_census.py
        (lambda: ess.markov.hitting_times(np.broadcast_to(P, (4096,) * 3 + P.shape), [0]), TooLargeError, "P"),
        (
            lambda: ess.structured.ssm_ess(
                np.broadcast_to(np.full(4, 0.5), (10**6, 10**5, 4)), np.ones((4, 2)), np.ones((4, 2))
            ),
            TooLargeError,
            "A",
        ),
        (lambda: ess.structured.conv_ess(np.ones(3), 8, accuracy=True), DTypeError, "accuracy"),
        (lambda: ess.markov.committor(P, [0], [2], backward="yes"), DTypeError, "backward"),
        (lambda: ess.markov.absorption_probabilities(P, None), DTypeError, "sets"),
        (lambda: ess.markov.communication_classes(P, threshold="0.1"), DTypeError, "threshold"),
        (lambda: ess.markov.metastable_decomposition(P, threshold=True), DTypeError, "threshold"),
        (lambda: ess.markov.metastable_chain(1.5, 4), DTypeError, "n_clusters"),
        (lambda: ess.markov.metastable_chain(2, 2**62), TooLargeError, "cluster_size"),
        (lambda: ess.markov.metastable_chain(2, 4, degree="3"), DTypeError, "degree"),
        (lambda: ess.markov.metastable_chain(2, 4, seed=-1), OutOfRangeError, "seed"),
        (lambda: ess.markov.metastable_chain(2, 4, eps=[0.1]), DTypeError, "eps"),
        (lambda: ess.markov.metastable_chain(2, 4, sparse=2), DTypeError, "sparse"),
        (lambda: ess.ccmc.simulate_ccmc(P, [0], n_steps=3, n_traj=2**62), TooLargeError, "n_traj"),
        (lambda: ess.ccmc.fit_attention_mle([[0, 1], [1, 2]], [1, 2], 3, max_iter=-1), OutOfRangeError, "max_iter"),
        (lambda: ess.ccmc.fit_attention_mle([[0, 1], [1, 2]], [1, 2], 3, max_iter=2.0), DTypeError, "max_iter"),
        (
            lambda: ess.graph.strongly_connected_components([0], [1], 2, algorithm=None),
            InvalidArgumentError,
            "algorithm",
        ),
        (
            lambda: ess.graph.TokenPriorityGraphs(np.ma.masked_array([[0, 1], [1, 0]]), [1, 0], vocab_size=2),
            InvalidArgumentError,
            "windows",
        ),
    ],
)
def test_bad_argument_is_a_typed_error_naming_it(call, cls, arg) -> None:
    with pytest.raises(cls) as info:
        call()
    assert isinstance(info.value, EssError)
    assert str(info.value).startswith(arg), str(info.value)


@pytest.mark.requires("torch")
def test_torch_tensors_of_any_kind() -> None:
    torch = pytest.importorskip("torch")
    ref = ess.effective_state_size(T)
    t = torch.tensor(T, requires_grad=True)
    np.testing.assert_array_equal(ess.effective_state_size(t), ref)
    np.testing.assert_array_equal(ess.effective_state_size(torch.tensor(T, dtype=torch.bfloat16)), ref)
    np.testing.assert_array_equal(ess.effective_state_size(torch.tensor(T, dtype=torch.float16)), ref)
    with pytest.raises(InvalidArgumentError, match="T: sparse"):
        ess.effective_state_size(torch.tensor(T).to_sparse())
    with pytest.raises(DTypeError, match="T: complex"):
        ess.effective_state_size(torch.tensor(T, dtype=torch.complex64))
    pi = ess.markov.stationary_distribution(torch.tensor(P, requires_grad=True))
    np.testing.assert_allclose(pi, np.full(3, 1 / 3))
    # the Mamba helpers take tensors as they come out of a model (requires_grad, bfloat16)
    A, dl, B, C = -np.ones((2, 3)), np.full((8, 2), 0.1), np.ones((8, 3)), np.ones((8, 3))
    ref_m = ess.structured.mamba_ess(A, dl, B, C)
    got = ess.structured.mamba_ess(
        torch.tensor(A, requires_grad=True), torch.tensor(dl), torch.tensor(B), torch.tensor(C)
    )
    np.testing.assert_array_equal(got, ref_m)
    got16 = ess.structured.mamba_ess(*(torch.tensor(x).to(torch.bfloat16) for x in (A, dl, B, C)))
    assert got16.shape == ref_m.shape
    with pytest.raises(InvalidArgumentError, match="windows: sparse"):
        ess.graph.TokenPriorityGraphs(torch.tensor([[0, 1], [1, 0]]).to_sparse(), [1, 0], vocab_size=2)


def test_token_graph_index_is_not_truncated() -> None:
    g = ess.graph.TokenPriorityGraphs(np.array([[0, 1], [1, 0]]), np.array([1, 0]), vocab_size=2)
    with pytest.raises(DTypeError, match="k: must be an integer"):
        g.graph(1.5)
    assert g.graph(np.int64(1)) is not None


@pytest.mark.requires("scipy")
def test_decreasing_csr_indptr_is_named_as_such() -> None:
    sp = pytest.importorskip("scipy.sparse")
    P = sp.csr_array((np.array([1.0, 0.5, 0.5, 1.0]), np.array([0, 0, 1, 2]), np.array([0, 1, 3, 4])), shape=(3, 3))
    P.indptr[:] = np.array([0, 3, 1, 4])
    with pytest.raises(InvalidArgumentError, match="indptr is decreasing .* at row 1"):
        ess.markov.stationary_distribution(P)


@pytest.mark.requires("torch")
def test_memory_budget_from_the_environment_is_named(monkeypatch) -> None:
    pytest.importorskip("torch")
    from ess.analyze import _budget

    monkeypatch.setenv("ESS_MEMORY_BUDGET", "lots")
    with pytest.raises(InvalidArgumentError, match="ESS_MEMORY_BUDGET .*cannot parse 'lots'"):
        _budget(None)
    monkeypatch.setenv("ESS_MEMORY_BUDGET", "2G")
    assert _budget(None) == 2 * 1024**3


def test_mamba_decay_overflow_is_named() -> None:
    L, D, N = 8, 3, 2
    with pytest.raises(NonFiniteError, match=r"delta, A: exp\(delta \* A\) overflows float64"):
        ess.structured.mamba_ess(np.full((D, N), 5.0), np.full((L, D), 200.0), np.ones((L, N)), np.ones((L, N)))
    with pytest.raises(NonFiniteError, match=r"delta, A: exp\(delta \* A\) overflows float64"):
        ess.structured.mamba2_ess(np.full(D, 5.0), np.full((L, D), 200.0), np.ones((L, N)), np.ones((L, N)))
