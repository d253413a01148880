"""Extractors for torch.nn layers: reconstruction, Jacobians, predicates, bad input."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, List

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch")
torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import ess  # noqa: E402
from ess.errors import InvalidArgumentError, OutOfRangeError, ShapeError  # noqa: E402
from ess.operators import find_extractor  # noqa: E402
from ess.operators.torch_nn import (  # noqa: E402
    CausalConv1dExtractor,
    MultiheadAttentionExtractor,
    RecurrentJacobianExtractor,
    is_causal_depthwise_conv1d,
)


@contextlib.contextmanager
def attached(ext: Any) -> Iterator[Any]:
    handles: List[Any] = ext.attach()
    try:
        yield ext
    finally:
        for h in handles:
            h.remove()


def rel_err(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-5


def no_hooks(m: nn.Module) -> bool:
    return all(len(getattr(mod, attr)) == 0 for mod in m.modules() for attr in ("_forward_pre_hooks", "_forward_hooks"))


# --------------------------------------------------------------------------- MultiheadAttention


def mha_reconstruct(m: nn.MultiheadAttention, ops: np.ndarray, value: torch.Tensor) -> np.ndarray:
    """Output of the layer for one sample given the per-head operators: ``value`` is (L, E)."""
    E, H = m.embed_dim, m.num_heads
    d = E // H
    W = m.in_proj_weight[2 * E :] if m._qkv_same_embed_dim else m.v_proj_weight
    v = value.double() @ W.detach().double().T
    if m.in_proj_bias is not None:
        v = v + m.in_proj_bias[2 * E :].detach().double()
    v = v.numpy().reshape(-1, H, d)
    heads = np.einsum("hls,shd->lhd", ops, v).reshape(-1, E)
    out = heads @ m.out_proj.weight.detach().double().numpy().T
    if m.out_proj.bias is not None:
        out = out + m.out_proj.bias.detach().double().numpy()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", ["float", "bool", "bool_is_causal", "fast_path", "3d"])
def test_mha_reconstruction(dtype: torch.dtype, batch_first: bool, mask_kind: str) -> None:
    torch.manual_seed(0)
    B, L, E, H = 3, 9, 16, 4
    m = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=dtype).eval()
    x = torch.randn(B, L, E, dtype=dtype)
    xin = x if batch_first else x.transpose(0, 1)
    kwargs: dict = {}
    if mask_kind == "float":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L, dtype=dtype)
    elif mask_kind == "bool":
        kwargs["attn_mask"] = torch.ones(L, L, dtype=torch.bool).triu(1)
    elif mask_kind == "bool_is_causal":
        kwargs["attn_mask"] = torch.ones(L, L, dtype=torch.bool).triu(1)
        kwargs["is_causal"] = True
    elif mask_kind == "fast_path":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L, dtype=dtype)
        kwargs["is_causal"] = True
        kwargs["need_weights"] = False
    else:  # a per-(batch, head) mask: causal, plus a band for some heads
        base = torch.ones(L, L, dtype=torch.bool).triu(1)
        masks = base.expand(B * H, L, L).clone()
        masks[::2] |= torch.ones(L, L, dtype=torch.bool).tril(-3)  # sliding window of 3 on even heads
        kwargs["attn_mask"] = masks
    ext = find_extractor(m, "attn")
    assert isinstance(ext, MultiheadAttentionExtractor)
    with torch.no_grad(), attached(ext):
        out = m(xin, xin, xin, **kwargs)[0]
    assert no_hooks(m)
    out = out if batch_first else out.transpose(0, 1)
    assert ext.n_samples() == B
    for b in range(B):
        s = ext.operators(b)
        assert s.kind == "softmax_attention" and s.operators.shape == (H, L, L)
        assert s.operators.dtype == np.float64 and s.operators.flags.c_contiguous
        assert s.shared == [E // H] * H and s.tss == [float(L)] * H and len(s.labels) == H
        assert np.all(np.triu(s.operators, 1) == 0)
        np.testing.assert_allclose(s.operators.sum(-1), 1.0, rtol=1e-12)
        assert rel_err(mha_reconstruct(m, s.operators, x[b]), out[b].double().numpy()) <= tol(dtype)
    if mask_kind == "3d":  # the band is really used
        assert np.all(s.operators[0][np.tril_indices(L, -3)] == 0)
        assert np.all(s.operators[1][np.tril_indices(L, -3)] > 0)
    assert ext.estimate_bytes(0) >= 8 * H * L * L


def test_mha_separate_kv_dims_no_bias_and_padding() -> None:
    torch.manual_seed(1)
    B, L, E, H = 2, 7, 12, 3
    m = nn.MultiheadAttention(E, H, bias=False, kdim=5, vdim=6, batch_first=True, dtype=torch.float64).eval()
    q = torch.randn(B, L, E, dtype=torch.float64)
    k = torch.randn(B, L, 5, dtype=torch.float64)
    v = torch.randn(B, L, 6, dtype=torch.float64)
    kpm = torch.zeros(B, L, dtype=torch.bool)
    kpm[1, 2] = True  # one padded key in the second sequence
    mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    ext = MultiheadAttentionExtractor(m, "x")
    with torch.no_grad(), attached(ext):
        out = m(q, k, v, attn_mask=mask, key_padding_mask=kpm)[0]
    for b in range(B):
        ops = ext.operators(b).operators
        vv = v[b] @ m.v_proj_weight.detach().T
        heads = np.einsum("hls,shd->lhd", ops, vv.numpy().reshape(L, H, -1)).reshape(L, E)
        rec = heads @ m.out_proj.weight.detach().numpy().T
        assert rel_err(rec, out[b].numpy()) <= 1e-9
    assert np.all(ext.operators(1).operators[:, :, 2] == 0)


def test_mha_unbatched_input() -> None:
    torch.manual_seed(2)
    L, E, H = 6, 8, 2
    m = nn.MultiheadAttention(E, H, dtype=torch.float64).eval()
    x = torch.randn(L, E, dtype=torch.float64)
    ext = MultiheadAttentionExtractor(m, "x")
    with torch.no_grad(), attached(ext):
        out = m(x, x, x, attn_mask=torch.ones(L, L, dtype=torch.bool).triu(1))[0]
    assert ext.n_samples() == 1
    assert rel_err(mha_reconstruct(m, ext.operators(0).operators, x), out.numpy()) <= 1e-9


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    L=st.integers(1, 12),
    H=st.sampled_from([1, 2, 4]),
    d=st.integers(1, 4),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_mha_property(L: int, H: int, d: int, scale: float, seed: int) -> None:
    torch.manual_seed(seed)
    E = H * d
    m = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64).eval()
    x = scale * torch.randn(2, L, E, dtype=torch.float64)
    ext = MultiheadAttentionExtractor(m, "p")
    with torch.no_grad(), attached(ext):
        out = m(x, x, x, attn_mask=nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64))[0]
    for b in range(2):
        ops = ext.operators(b).operators
        assert np.all(np.isfinite(ops)) and np.all(np.triu(ops, 1) == 0) and np.all(ops >= 0)
        assert rel_err(mha_reconstruct(m, ops, x[b]), out[b].numpy()) <= 1e-9


def test_mha_not_causal_is_refused() -> None:
    m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 8)
    ext = MultiheadAttentionExtractor(m, "enc")
    with torch.no_grad(), attached(ext):
        m(x, x, x)
    with pytest.raises(InvalidArgumentError, match="enc.*not causal"):
        ext.operators(0)
    # a window that also looks one step ahead
    ext2 = MultiheadAttentionExtractor(m, "enc")
    with torch.no_grad(), attached(ext2):
        m(x, x, x, attn_mask=torch.ones(5, 5, dtype=torch.bool).triu(2))
    with pytest.raises(InvalidArgumentError, match="not causal"):
        ext2.operators(0)


def test_mha_cross_lengths_refused() -> None:
    m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ext = MultiheadAttentionExtractor(m, "x")
    with torch.no_grad(), attached(ext):
        m(torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 8))
    with pytest.raises(ShapeError, match="query length 4 != key length 6"):
        ext.operators(0)


def test_mha_unsupported_variants_not_matched() -> None:
    assert find_extractor(nn.MultiheadAttention(8, 2, add_bias_kv=True), "a") is None
    assert find_extractor(nn.MultiheadAttention(8, 2, add_zero_attn=True), "a") is None

    class MyMHA(nn.MultiheadAttention):
        pass

    assert find_extractor(MyMHA(8, 2), "a") is None


def test_sample_checks_and_empty_capture() -> None:
    m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ext = MultiheadAttentionExtractor(m, "layer7")
    assert ext.n_samples() == 0 and ext.estimate_bytes() == 0
    with pytest.raises(InvalidArgumentError, match="layer7: nothing captured"):
        ext.operators(0)
    x = torch.randn(2, 3, 8)
    with torch.no_grad(), attached(ext):
        m(x, x, x, attn_mask=torch.ones(3, 3, dtype=torch.bool).triu(1))
    for bad in (2, -1, 1.5):
        with pytest.raises(OutOfRangeError, match="out of range"):
            ext.operators(bad)  # type: ignore[arg-type]
    ext.clear()
    assert ext.n_samples() == 0


def test_hooks_removed_when_forward_raises() -> None:
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ext = MultiheadAttentionExtractor(m, "x")
    with pytest.raises(Exception):
        with attached(ext):
            m(torch.randn(1, 3, 5), torch.randn(1, 3, 5), torch.randn(1, 3, 5))  # wrong width
    assert no_hooks(m)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


# --------------------------------------------------------------------------- Conv1d


def causal_conv(C: int, k: int, dil: int = 1, bias: bool = True, dtype: torch.dtype = torch.float64) -> nn.Conv1d:
    return nn.Conv1d(C, C, k, groups=C, padding=dil * (k - 1), dilation=dil, bias=bias, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,dil,L", [(4, 1, 10), (3, 2, 9), (1, 1, 5), (5, 1, 3), (2, 3, 4)])
def test_conv_reconstruction(dtype: torch.dtype, k: int, dil: int, L: int) -> None:
    torch.manual_seed(3)
    C, B = 5, 2
    m = causal_conv(C, k, dil, dtype=dtype)
    x = torch.randn(B, C, L, dtype=dtype)
    ext = find_extractor(m, "conv")
    assert isinstance(ext, CausalConv1dExtractor)
    with torch.no_grad(), attached(ext):
        y = m(x)[..., :L]  # padding then cropping, as Mamba does
    y = (y - m.bias.detach()[:, None]).double().numpy()
    for b in range(B):
        s = ext.operators(b)
        assert s.operators.shape == (C, L, L) and s.kind == "conv" and s.tss == [float((k - 1) * dil)] * C
        assert np.all(np.triu(s.operators, 1) == 0)
        rec = np.einsum("cts,cs->ct", s.operators, x[b].double().numpy())
        assert rel_err(rec, y[b]) <= tol(dtype)
        # the structured form: checked against the captured output, same curves as the dense kernel
        f = ext.factors(b)
        assert ext.structured and f.operators is None and f.check_error is not None and f.check_error <= tol(dtype)
        assert "checked" in f.note
        np.testing.assert_array_equal(f.factors.materialize(), s.operators)
        got = f.factors.ess_curves("both", None, None, None)
        want = ess.effective_state_size(s.operators, method="both")
        np.testing.assert_array_equal(got.tolerance, want.tolerance)
        np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-9, atol=1e-12)
        sf = ess.structured.ssm_ess(f.factors.A, f.factors.B, f.factors.C, transition="dense")
        np.testing.assert_array_equal(sf, want.tolerance)
    assert ext.estimate_bytes(0) >= 8 * C * L * L
    assert 0 < ext.estimate_factor_bytes(0) < 8 * C * L * L or L <= 4


def test_conv_refused_when_its_weights_changed() -> None:
    """The run-time check: kernels that no longer produce the captured output are refused, naming the layer."""
    m = causal_conv(3, 4)
    ext = CausalConv1dExtractor(m, "blocks.0.conv")
    with torch.no_grad(), attached(ext):
        m(torch.randn(1, 3, 8, dtype=torch.float64))
    with torch.no_grad():
        m.weight.mul_(1.5)
    with pytest.raises(InvalidArgumentError, match=r"blocks\.0\.conv: refused.*relative error"):
        ext.factors(0)
    with pytest.raises(InvalidArgumentError, match=r"blocks\.0\.conv: refused"):
        ext.operators(0)


def test_conv_of_a_long_span_takes_the_dense_route() -> None:
    from ess.operators.torch_nn import CONV_STRUCTURED_MAX_SPAN

    m = causal_conv(2, 3, dil=CONV_STRUCTURED_MAX_SPAN // 2 + 1)
    ext = CausalConv1dExtractor(m, "c")
    assert not ext.structured
    x = torch.randn(1, 2, 150, dtype=torch.float64)
    with torch.no_grad(), attached(ext):
        y = m(x)[..., :150] - m.bias.detach()[:, None]
    rec = np.einsum("cts,cs->ct", ext.operators(0).operators, x[0].numpy())
    assert rel_err(rec, y[0].numpy()) <= 1e-12


@settings(max_examples=30, deadline=None)
@given(
    C=st.integers(1, 4),
    k=st.integers(1, 6),
    dil=st.integers(1, 3),
    L=st.integers(1, 16),
    scale=st.sampled_from([1e-30, 1.0, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_conv_property(C: int, k: int, dil: int, L: int, scale: float, seed: int) -> None:
    torch.manual_seed(seed)
    m = causal_conv(C, k, dil, bias=False)
    with torch.no_grad():
        m.weight.mul_(scale)
    x = torch.randn(1, C, L, dtype=torch.float64)
    ext = CausalConv1dExtractor(m, "c")
    with torch.no_grad(), attached(ext):
        y = m(x)[..., :L]
    ops = ext.operators(0).operators
    rec = np.einsum("cts,cs->ct", ops, x[0].numpy())
    assert rel_err(rec, y[0].numpy()) <= 1e-12 or np.all(y.numpy() == 0)
    # banded Toeplitz: the Hankel rank is at most the memory (k-1)*dil
    if L >= 2:
        ranks = ess.effective_state_size(ops)
        assert np.all(ranks <= (k - 1) * dil)


def test_conv_unbatched() -> None:
    m = causal_conv(3, 3)
    x = torch.randn(3, 6, dtype=torch.float64)
    ext = CausalConv1dExtractor(m, "c")
    with torch.no_grad(), attached(ext):
        y = m(x)[..., :6] - m.bias.detach()[:, None]
    rec = np.einsum("cts,cs->ct", ext.operators(0).operators, x.numpy())
    assert rel_err(rec, y.numpy()) <= 1e-12


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(4, 4, 3, groups=4, padding="same"),  # non-causal
        nn.Conv1d(4, 4, 3, groups=4, padding=0),  # valid (shifted)
        nn.Conv1d(4, 4, 3, groups=4, padding=1),  # centred
        nn.Conv1d(4, 4, 3, groups=1, padding=2),  # mixes channels
        nn.Conv1d(4, 8, 3, groups=4, padding=2),  # depth multiplier 2
        nn.Conv1d(4, 4, 3, groups=4, padding=2, stride=2),
        nn.Conv1d(4, 4, 3, groups=4, padding=2, padding_mode="circular"),
        nn.Conv1d(4, 4, 3, groups=4, padding=2, dilation=2),  # padding too small for the dilation
        nn.ConvTranspose1d(4, 4, 3, groups=4, padding=2),
        nn.Linear(4, 4),
    ],
)
def test_conv_predicate_rejects(conv: nn.Module) -> None:
    assert not is_causal_depthwise_conv1d(conv)
    assert find_extractor(conv, "c") is None


def test_conv_not_called_has_no_samples() -> None:
    ext = CausalConv1dExtractor(causal_conv(2, 3), "c")
    assert ext.n_samples() == 0
    with pytest.raises(InvalidArgumentError, match="nothing captured"):
        ext.operators(0)


# --------------------------------------------------------------------------- RNN / GRU / LSTM


def reference_jacobian(m: nn.Module, u: torch.Tensor, hx: Any = None) -> np.ndarray:
    """(n_out, L, L) from torch.autograd.functional.jacobian, summed over input channels."""

    def f(v: torch.Tensor) -> torch.Tensor:
        x = v.unsqueeze(0) if m.batch_first else v.unsqueeze(1)
        out = m(x, hx)[0]
        return out[0] if m.batch_first else out[:, 0]

    J = torch.autograd.functional.jacobian(f, u)  # (L, n_out, L, I)
    return J.sum(-1).permute(1, 0, 2).double().numpy()


def make_rnn(kind: str, **kw: Any) -> nn.Module:
    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
    return cls(**kw)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_rnn_jacobian(kind: str, num_layers: int, batch_first: bool, mode: str) -> None:
    torch.manual_seed(4)
    B, L, I, H = 2, 7, 3, 5
    m = make_rnn(kind, input_size=I, hidden_size=H, num_layers=num_layers, batch_first=batch_first).double()
    x = torch.randn(B, L, I, dtype=torch.float64)
    ext = find_extractor(m, "rnn")
    assert isinstance(ext, RecurrentJacobianExtractor)
    ext.jacobian_mode = mode
    with torch.no_grad(), attached(ext):
        m(x if batch_first else x.transpose(0, 1))
    assert ext.n_samples() == B
    for b in range(B):
        s = ext.operators(b)
        assert s.kind == "rnn_jacobian" and "linearisation" in s.note
        assert s.operators.shape == (H, L, L) and np.all(np.triu(s.operators, 1) == 0)
        state = num_layers * (2 * H if kind == "lstm" else H)
        assert s.tss == [float(state)] * H
        assert rel_err(s.operators, reference_jacobian(m, x[b])) <= 1e-9


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_rnn_jacobian_with_initial_state_float32(kind: str) -> None:
    torch.manual_seed(5)
    B, L, I, H, layers = 2, 6, 4, 3, 2
    m = make_rnn(kind, input_size=I, hidden_size=H, num_layers=layers, batch_first=True)
    x = torch.randn(B, L, I)
    h0 = torch.randn(layers, B, H)
    hx: Any = (h0, torch.randn(layers, B, H)) if kind == "lstm" else h0
    ext = RecurrentJacobianExtractor(m, "r")
    with torch.no_grad(), attached(ext):
        m(x, hx)
    m64 = copy.deepcopy(m).double()
    for b in range(B):
        hb = tuple(h[:, b : b + 1] for h in hx) if kind == "lstm" else hx[:, b : b + 1]
        ops = ext.operators(b).operators
        assert rel_err(ops, reference_jacobian(m, x[b], hb)) <= 1e-5
        # computed in float64 at the float32 input: matches the float64 Jacobian to round-off
        hb64 = tuple(h.double() for h in hb) if kind == "lstm" else hb.double()
        assert rel_err(ops, reference_jacobian(m64, x[b].double(), hb64)) <= 1e-12
        # so its exact rank respects the state size (no float32 noise above the float64 tolerance)
        assert ess.effective_state_size(ops).max() <= layers * (2 * H if kind == "lstm" else H)
    assert "initial state" in ext.operators(0).note
    assert next(m.parameters()).dtype == torch.float32  # the module itself is untouched


def test_lstm_proj_size_and_unbatched() -> None:
    torch.manual_seed(6)
    m = nn.LSTM(3, 6, proj_size=2, num_layers=2).double()
    u = torch.randn(5, 3, dtype=torch.float64)  # unbatched (L, I)
    ext = RecurrentJacobianExtractor(m, "l")
    with torch.no_grad(), attached(ext):
        m(u)
    s = ext.operators(0)
    assert s.operators.shape == (2, 5, 5) and s.tss == [float(2 * (2 + 6))] * 2
    assert rel_err(s.operators, reference_jacobian(m, u)) <= 1e-9


def test_rnn_linear_regime_rank_bound_and_chunking() -> None:
    # a ReLU RNN with positive weights and inputs stays in its linear regime: the Jacobian is the
    # exact operator (reconstructs the output) and its Hankel rank is bounded by the hidden size
    torch.manual_seed(7)
    H, I, L = 3, 2, 14
    m = nn.RNN(I, H, nonlinearity="relu", bias=False, batch_first=True).double()
    with torch.no_grad():
        m.weight_ih_l0.uniform_(0.1, 1.0)
        m.weight_hh_l0.uniform_(0.0, 0.3)
    u = torch.rand(1, L, I, dtype=torch.float64)
    ext = RecurrentJacobianExtractor(m, "r")
    ext.chunk_elements = 50  # several forward-mode chunks
    with torch.no_grad(), attached(ext):
        y = m(u)[0]
    ops = ext.operators(0).operators
    # the summed Jacobian reconstructs the output when every input channel carries the same signal
    u_same = u[0, :, :1].expand(L, I)
    ext2 = RecurrentJacobianExtractor(m, "r")
    with torch.no_grad(), attached(ext2):
        y2 = m(u_same.unsqueeze(0).contiguous())[0]
    ops2 = ext2.operators(0).operators
    rec = np.einsum("hts,s->th", ops2, u_same[:, 0].numpy())
    assert rel_err(rec, y2[0].numpy()) <= 1e-12
    assert ess.effective_state_size(ops).max() <= H
    assert rel_err(ops, reference_jacobian(m, u[0])) <= 1e-12
    assert y.shape == (1, L, H)


def test_rnn_unsupported_and_bad_input() -> None:
    assert find_extractor(nn.GRU(3, 4, bidirectional=True), "g") is None
    assert find_extractor(nn.RNNCell(3, 4), "g") is None
    m = nn.GRU(3, 4, batch_first=True)
    ext = RecurrentJacobianExtractor(m, "gru0")
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, 3), [5, 3], batch_first=True)
    with torch.no_grad(), attached(ext):
        m(packed)
    with pytest.raises(InvalidArgumentError, match="gru0.*PackedSequence"):
        ext.operators(0)
    ext.jacobian_mode = "sideways"
    with torch.no_grad(), attached(ext):
        m(torch.randn(1, 4, 3))
    with pytest.raises(InvalidArgumentError, match="jacobian_mode"):
        ext.operators(0)


def test_rnn_training_mode_restored() -> None:
    m = nn.LSTM(3, 4, num_layers=2, dropout=0.5, batch_first=True).double().train()
    x = torch.randn(1, 5, 3, dtype=torch.float64)
    ext = RecurrentJacobianExtractor(m, "l")
    with torch.no_grad(), attached(ext):
        m(x)
    s = ext.operators(0)
    assert m.training and "dropout off" in s.note
    m.eval()
    assert rel_err(s.operators, reference_jacobian(m, x[0])) <= 1e-9


def test_capture_failure_does_not_break_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    from ess.operators import torch_nn

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("unexpected call signature")

    monkeypatch.setattr(torch_nn, "_bind", boom)
    m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)
    ext = MultiheadAttentionExtractor(m, "odd")
    with torch.no_grad(), attached(ext):
        out = m(x, x, x)[0]  # the forward itself is unaffected
    assert out.shape == (1, 3, 8)
    assert ext.n_samples() == 1
    with pytest.raises(InvalidArgumentError, match="odd: capturing .* failed .*unexpected call signature"):
        ext.operators(0)
    ext.clear()
    assert ext.n_samples() == 0


def test_rnn_operators_with_hooks_still_attached() -> None:
    # the Jacobian passes run the module again: a still-attached hook must not overwrite the capture
    m = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    ext = RecurrentJacobianExtractor(m, "g")
    with attached(ext):
        with torch.no_grad():
            m(x)
        first = ext.operators(1).operators
        assert ext.n_samples() == 2
        again = ext.operators(1).operators
    np.testing.assert_array_equal(first, again)
    assert rel_err(first, reference_jacobian(m, x[1])) <= 1e-12
