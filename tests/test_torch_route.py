"""The torch route of the dense ESS (``effective_state_size(..., device=...)``, module
``ess._torch_dense``) against the Rust kernel, on CPU torch (the same code as on a GPU).

Tolerance counts must equal the kernel's except at a split where a singular value (LAPACK's, in
float64) lies within 1e-8 (relative) of the threshold; entropy-ESS within 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ess
from ess.errors import DTypeError, InvalidArgumentError, NonFiniteError, OutOfRangeError, ShapeError, TooLargeError
from reference import (
    conv_operator,
    ess_reference,
    linear_attention_operator,
    near_threshold,
    sliding_window_attention,
    ssm_operator,
)
from test_dense_accuracy import selective_ssm

pytestmark = pytest.mark.requires("torch")
torch = pytest.importorskip("torch")


def assert_same_as_kernel(T: np.ndarray, positions=None, **kw) -> None:
    """Torch route on CPU vs the Rust kernel, for the three methods."""
    eps = float(np.finfo(T.dtype).eps) if T.dtype in (np.float32, np.float64) else float(np.finfo(np.float64).eps)
    L = T.shape[-1]
    ops = np.asarray(T, dtype=np.float64).reshape(-1, L, L)
    P = np.arange(L) if positions is None else np.asarray(positions)
    host = ess.effective_state_size(T, method="both", positions=positions, **kw)
    dev = ess.effective_state_size(T, method="both", positions=positions, device="cpu", **kw)
    alone = ess.effective_state_size(T, method="tolerance", positions=positions, device="cpu", **kw)
    ent = ess.effective_state_size(T, method="entropy", positions=positions, device="cpu", **kw)
    assert dev.tolerance.shape == host.tolerance.shape == T.shape[:-2] + (len(P),)
    assert dev.tolerance.dtype == np.float64 and dev.entropy.dtype == np.float64
    np.testing.assert_array_equal(ent, dev.entropy)
    np.testing.assert_allclose(dev.entropy, host.entropy, rtol=1e-6, atol=0)
    ht = host.tolerance.reshape(ops.shape[0], -1)
    for name, got in (("both", dev.tolerance), ("tolerance", alone)):
        g = got.reshape(ops.shape[0], -1)
        for i, j in zip(*np.nonzero(g != ht)):
            _, _, detail = ess_reference(ops[i], eps=eps, **kw)
            s, tau = detail[int(P[j])]
            assert near_threshold(s, tau), (
                f"{name}: operator {i}, split {P[j]}: torch route {g[i, j]} vs kernel {ht[i, j]}; sigma = {s}, tau = {tau:.3e}"
            )


@st.composite
def operators(draw, max_L=20):
    L = draw(st.integers(1, max_L))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)), L, L) if draw(st.booleans()) else (L, L)
    kind = draw(st.sampled_from(["gauss", "lowrank", "ssm", "zero_rows"]))
    if kind == "gauss":
        T = rng.standard_normal(shape)
    elif kind == "lowrank":
        r = draw(st.integers(1, 4))
        T = np.tril(rng.standard_normal(shape[:-2] + (L, r)) @ rng.standard_normal(shape[:-2] + (r, L)))
    elif kind == "ssm":
        T = np.stack([ssm_operator(rng, L, draw(st.integers(1, 4))) for _ in range(int(np.prod(shape[:-2])))])
        T = T.reshape(shape)
    else:
        T = rng.standard_normal(shape)
        T[..., rng.integers(0, L, size=max(1, L // 3)), :] = 0.0
    T = T * 10.0 ** draw(st.floats(-20, 20))
    return T.astype(dtype)


@given(operators(), st.sampled_from([None, 1e-1, 1e-3, 1e-8]), st.sampled_from([None, 1e-3]))
def test_random_and_low_rank_operators_match_kernel(T, rtol, atol):
    if atol is not None:
        atol = atol * float(np.abs(T).max(initial=1.0))
    assert_same_as_kernel(T, rtol=rtol, atol=atol)


@settings(max_examples=30)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 24),
    st.integers(1, 5),
    st.sampled_from([0.5, 3.0, 8.0, 15.0]),
    st.sampled_from([0.0, 2.0, 6.0]),
    st.sampled_from([np.float64, np.float32]),
)
def test_rank_deficient_graded_operators_match_kernel(seed, L, N, decades, mixed, dtype):
    """Adversarial: exact low rank with singular values over many decades (the default threshold
    is decided by noise-level values)."""
    T = selective_ssm(np.random.default_rng(seed), L, N, decades, mixed).astype(dtype)
    assert_same_as_kernel(T)


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e160, 1e300])
def test_extreme_magnitudes(scale):
    rng = np.random.default_rng(1)
    T = np.tril(rng.standard_normal((2, 12, 3)) @ rng.standard_normal((2, 3, 12))) * scale
    T[1] = rng.standard_normal((12, 12)) * scale
    assert_same_as_kernel(T)
    assert_same_as_kernel(T, atol=1e-3 * scale)


def test_structured_families_and_positions():
    rng = np.random.default_rng(7)
    T = np.stack(
        [
            ssm_operator(rng, 30, 3),
            linear_attention_operator(rng, 30, 4),
            conv_operator(rng, 30, 5),
            sliding_window_attention(rng, 30, 6),
            np.zeros((30, 30)),
            np.tril(np.ones((30, 30))),
        ]
    )
    for kw in ({}, {"rtol": 1e-3}, {"atol": 1e-6}, {"atol": 1e-2, "rtol": 1e-2}):
        assert_same_as_kernel(T, **kw)
        assert_same_as_kernel(T, positions=[0, 1, 5, 14, 15, 16, 29], **kw)
    r = ess.effective_state_size(T, device="cpu")
    assert r[4].max() == 0 and (r[5, 1:] == 1).all()
    assert (ess.effective_state_size(T, method="entropy", device="cpu")[4] == 0).all()


def test_gram_route_falls_back_near_the_threshold():
    """Blocks with a singular value just around ``rtol * sigma_max``: the Gram route cannot decide
    them and hands them to the SVD, which must agree with the kernel."""
    rng = np.random.default_rng(3)
    L = 16
    for gap in (1e-3 * (1 + 1e-6), 1e-3 * (1 - 1e-6), 1e-3 * (1 + 1e-10)):
        U, _ = np.linalg.qr(rng.standard_normal((L, 3)))
        V, _ = np.linalg.qr(rng.standard_normal((L, 3)))
        T = np.tril(U @ np.diag([1.0, 0.3, gap]) @ V.T, -1)
        assert_same_as_kernel(T[None], rtol=1e-3)


def test_torch_tensor_input_and_dtypes():
    rng = np.random.default_rng(0)
    T = rng.standard_normal((2, 3, 10, 10))
    host = ess.effective_state_size(T, method="both")
    t = torch.from_numpy(T)
    for x in (t, t.float(), t.to(torch.bfloat16), t.requires_grad_(True)):
        got = ess.effective_state_size(x, method="both", device=torch.device("cpu"))
        ref = ess.effective_state_size(x, method="both")
        assert got.tolerance.shape == (2, 3, 10)
        np.testing.assert_array_equal(got.tolerance, ref.tolerance)
        np.testing.assert_allclose(got.entropy, ref.entropy, rtol=1e-6)
    np.testing.assert_array_equal(ess.effective_state_size(T, device="cpu"), host.tolerance)
    for bad in (
        np.ones((4, 4), dtype=np.int64),
        np.ones((4, 4), dtype=bool),
        np.ones((4, 4), dtype=np.float16),
        torch.ones(4, 4, dtype=torch.int32),
    ):
        with pytest.raises(DTypeError, match="T"):
            ess.effective_state_size(bad, device="cpu")
    empty = ess.effective_state_size(np.zeros((0, 4, 4)), device="cpu", method="both")
    assert empty.tolerance.shape == (0, 4)
    assert ess.effective_state_size(np.ones((1, 1)), device="cpu").tolist() == [0.0]


def test_float32_mode_accuracy():
    """The float32 mode's documented accuracy: softmax-attention operators (L = 128, random q, k) with
    rtol = 1e-3: tolerance counts equal (at most one split in a thousand allowed to differ), entropy
    within 1e-6 relative of the float64 kernel (measured: 9e-8)."""
    rng = np.random.default_rng(11)
    T = np.stack([sliding_window_attention(rng, 128, 128, d=64) for _ in range(4)])
    host = ess.effective_state_size(T, method="both", rtol=1e-3)
    f32 = ess.effective_state_size(T, method="both", rtol=1e-3, device="cpu", precision="float32")
    mism = float(np.mean(host.tolerance != f32.tolerance))
    rel = float(np.max(np.abs(f32.entropy - host.entropy) / np.maximum(host.entropy, 1e-300)))
    assert mism <= 1e-3, mism
    assert rel <= 1e-6, rel
    alone = ess.effective_state_size(T, method="tolerance", rtol=1e-3, device="cpu", precision="float32")
    assert float(np.mean(alone != host.tolerance)) <= 1e-3


def test_errors_name_the_argument(monkeypatch):
    T = np.tril(np.ones((6, 6)))
    with pytest.raises(InvalidArgumentError, match="precision"):
        ess.effective_state_size(T, precision="float32")
    with pytest.raises(InvalidArgumentError, match="precision"):
        ess.effective_state_size(T, device="cpu", precision="half")
    with pytest.raises(InvalidArgumentError, match="device"):
        ess.effective_state_size(T, device="not-a-device")
    with pytest.raises(InvalidArgumentError, match="device"):
        ess.effective_state_size(T, device=3.5)
    with pytest.raises(OutOfRangeError, match="positions"):
        ess.effective_state_size(T, device="cpu", positions=[3, 2])
    with pytest.raises(OutOfRangeError, match="positions"):
        ess.effective_state_size(T, device="cpu", positions=[6])
    with pytest.raises(ShapeError, match="T"):
        ess.effective_state_size(np.ones((3, 4)), device="cpu")
    with pytest.raises(ShapeError, match="T"):
        ess.effective_state_size(np.ones((0, 0)), device="cpu")
    bad = T.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match="T"):
        ess.effective_state_size(bad, device="cpu")
    with pytest.raises(DTypeError, match="T"):
        ess.effective_state_size(torch.ones(3, 3, dtype=torch.complex64), device="cpu")
    with pytest.raises(DTypeError, match="T"):
        ess.effective_state_size(np.array([["a"]]), device="cpu")
    from ess import _torch_dense

    monkeypatch.setattr(_torch_dense, "_free_bytes", lambda dev: 10_000)
    with pytest.raises(TooLargeError, match="T"):
        ess.effective_state_size(np.tril(np.ones((3, 64, 64))), device="cpu")


def test_batches_are_chunked_to_the_free_memory(monkeypatch):
    """With room for two operators at a time the curves are those of one call."""
    from ess import _torch_dense

    rng = np.random.default_rng(5)
    T = rng.standard_normal((5, 20, 20))
    full = ess.effective_state_size(T, device="cpu", method="both")
    per = _torch_dense.working_bytes(1, 20, 8)
    monkeypatch.setattr(_torch_dense, "_free_bytes", lambda dev: int(2.2 * per / 0.8))
    calls = []
    orig = _torch_dense._chunk_curves
    monkeypatch.setattr(_torch_dense, "_chunk_curves", lambda Tc, *a: calls.append(Tc.shape[0]) or orig(Tc, *a))
    part = ess.effective_state_size(T, device="cpu", method="both")
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(part.tolerance, full.tolerance)
    np.testing.assert_array_equal(part.entropy, full.entropy)


@pytest.mark.requires("transformers")
def test_analyze_torch_route_matches_host_and_keeps_operators_on_device():
    from transformers import GPT2Config, GPT2LMHeadModel

    from ess.operators.base import keep_on_device, operator_array

    cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    tok = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    a = ess.analyze(model, tok, progress=False)
    b = ess.analyze(model, tok, progress=False, device="cpu")
    c = ess.analyze(model, tok, progress=False, device="cpu", method="tolerance", rtol=1e-3)
    d = ess.analyze(model, tok, progress=False, method="tolerance", rtol=1e-3)
    assert a.meta["ess_device"].startswith("host") and b.meta["ess_device"] == "cpu"
    key = ["sample", "layer", "index", "position"]
    ta, tb = a.table.sort_values(key), b.table.sort_values(key)
    np.testing.assert_array_equal(ta.ess_tolerance.to_numpy(), tb.ess_tolerance.to_numpy())
    np.testing.assert_allclose(tb.ess_entropy.to_numpy(), ta.ess_entropy.to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(
        c.table.sort_values(key).ess_tolerance.to_numpy(), d.table.sort_values(key).ess_tolerance.to_numpy()
    )
    with pytest.raises(InvalidArgumentError, match="precision"):
        ess.analyze(model, tok, progress=False, precision="float16")
    with pytest.raises(InvalidArgumentError, match="device"):
        ess.analyze(model, tok, progress=False, device="nowhere")
    # the extractor hands tensors over inside keep_on_device (never numpy)
    from ess.analyze import discover

    found, _ = discover(model)
    name, ex = found[0]
    handles = ex.attach()
    try:
        with torch.no_grad():
            model(tok)
    finally:
        for h in handles:
            h.remove()
    with keep_on_device():
        ops = ex.operators(0)
    assert isinstance(ops.operators, torch.Tensor) and ops.operators.dtype == torch.float64
    host_ops = ex.operators(0)
    assert isinstance(host_ops.operators, np.ndarray)
    np.testing.assert_array_equal(ops.operators.numpy(), host_ops.operators)
    ex.clear()
    assert isinstance(operator_array(torch.zeros(1, 2, 2)), np.ndarray)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_route_matches_kernel():
    rng = np.random.default_rng(2)
    T = np.stack([sliding_window_attention(rng, 96, 96, d=16) for _ in range(3)] + [ssm_operator(rng, 96, 4)])
    host = ess.effective_state_size(T, method="both")
    for kw in ({}, {"rtol": 1e-3}):
        ref = ess.effective_state_size(T, method="both", **kw)
        dev = ess.effective_state_size(torch.from_numpy(T).cuda(), method="both", device="cuda", **kw)
        np.testing.assert_allclose(dev.entropy, host.entropy, rtol=1e-6)
        for i, j in zip(*np.nonzero(dev.tolerance != ref.tolerance)):
            s, tau = ess_reference(T[i], **kw)[2][j]
            assert near_threshold(s, tau)


def test_float32_mode_on_subnormal_and_float32_inputs():
    """Blocks of float32-subnormal magnitude (their power-of-two rescaling must not overflow in float32) and
    float32 inputs on the Gram route (its rounding bound is the compute precision's)."""
    rng = np.random.default_rng(4)
    T = np.tril(rng.standard_normal((2, 12, 2)) @ rng.standard_normal((2, 2, 12)), -1)
    tiny = (T * 1e-41).astype(np.float32)
    r = ess.effective_state_size(tiny, method="both", device="cpu", precision="float32", rtol=1e-3)
    assert np.isfinite(r.entropy).all() and r.tolerance.max() <= 2
    np.testing.assert_array_equal(r.tolerance, ess.effective_state_size(tiny, rtol=1e-3))
    f32 = rng.standard_normal((3, 24, 24)).astype(np.float32)
    assert_same_as_kernel(f32, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(__import__("sys").platform == "win32", reason="POSIX signals")
def test_sigint_stops_the_torch_route_between_splits():
    """Ctrl-C during the torch route raises KeyboardInterrupt within one split (a batched SVD of 96 blocks of
    at most 100 x 100 here, tens of milliseconds; the bound is loose for a loaded machine), and the process
    computes again afterwards."""
    from test_interrupt import interrupt_child

    # torch is imported and the route run once before the child says it is ready: the first call of the route
    # imports torch (about a second, longer on a loaded machine), and a KeyboardInterrupt that lands inside an
    # import's exec() of generated code (dataclasses) makes CPython 3.11 end the process by SIGINT at exit even
    # though the exception was caught (the flag behind that is set by any exec of a string). The interrupt must
    # land in the computation, which is what this test is about.
    setup = """
        import numpy as np, ess, torch
        T = np.tril(np.random.default_rng(0).random((96, 200, 200)))  # about 4 s uninterrupted
        ess.effective_state_size(T[:2, :8, :8], method="both", device="cpu")
        call = lambda: ess.effective_state_size(T, method="both", device="cpu")
    """
    r = interrupt_child(setup, delay=1.0, env={"OMP_NUM_THREADS": "1"})
    # the route is Python holding the GIL between torch calls: the parent's view bounds it
    assert r.seen < 2.0, f"KeyboardInterrupt took {r.seen:.2f} s"
    assert "after 1.0" in r.rest and r.returncode == 0, (r.rest, r.err)
