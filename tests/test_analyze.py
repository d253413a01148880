"""ess.analyze: the table, the summaries, memory budget, layer selection, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch", "pandas")
torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

import ess  # noqa: E402
from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError, TooLargeError  # noqa: E402
from ess.models.model import HybridConfig, HybridLM  # noqa: E402
from torch import nn  # noqa: E402


def small_model(mixers=("conv", "softmax_attention"), seed=0, **kw):
    torch.manual_seed(seed)
    return HybridLM(HybridConfig(d_model=16, n_heads=2, d_state=4, max_len=64, mixers=list(mixers), **kw))


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_table_and_summary():
    m = small_model(("conv", "ssm", "linear_attention", "softmax_attention"))
    tok = torch.randint(2, 64, (2, 20))
    tok[:, 9] = 1
    r = ess.analyze(m, tok, markers=[1], progress=False, tokens=[str(int(t)) for t in tok[0]])
    t = r.table
    assert list(t.columns) == [
        "sample",
        "layer",
        "kind",
        "operator",
        "index",
        "position",
        "token",
        "ess_tolerance",
        "ess_entropy",
        "tss",
        "bound",
        "shared",
    ]
    n_ops = {"conv": 16, "selective_ssm": 16, "linear_attention": 2, "softmax_attention": 2}
    assert len(t) == 2 * 20 * sum(n_ops.values())
    assert set(t.kind) == set(n_ops)
    assert (t.ess_tolerance[t.position == 0] == 0).all()
    assert (t.ess_tolerance <= t.bound).all() and (t.ess_entropy <= t.ess_tolerance + 1e-9).all()
    assert (t.token[(t["sample"] == 0)].to_numpy()[:20] == tok[0].numpy()).all()
    assert r.markers == {0: [9], 1: [9]}
    s = r.summary.set_index("kind")
    assert list(r.summary.layer) == [f"blocks.{i}.mixer" for i in range(4)]
    assert s.loc["softmax_attention", "tss"] == 20 and s.loc["linear_attention", "tss"] == 8
    assert s.loc["conv", "tss"] == 3 and s.loc["selective_ssm", "tss"] == 4
    assert s.loc["softmax_attention", "channels"] == 16  # 2 heads x 8 value channels share 2 operators
    # totals: channel-weighted sum of per-operator averages
    sm = t[t.kind == "softmax_attention"].groupby(["sample", "index"]).ess_tolerance.mean()
    assert np.isclose(s.loc["softmax_attention", "total_ess"], 8 * sm.sum() / 2)
    assert np.isclose(s.loc["softmax_attention", "avg_ess_tolerance"], sm.mean())
    assert np.isclose(s.loc["conv", "utilisation"], s.loc["conv", "avg_ess_tolerance"] / 3)
    # a random-weight conv fills its 3 states at interior positions
    assert s.loc["conv", "saturated"] and not s.loc["conv", "collapsed"]
    assert any("Boundary" in c for c in r.caveats)
    assert r.meta["length"] == 20 and r.meta["n_samples"] == 2


def test_positions_layers_and_methods():
    m = small_model()
    tok = torch.randint(0, 64, (1, 16))
    full = ess.analyze(m, tok, progress=False)
    pos = [1, 5, 8, 15]
    r = ess.analyze(m, tok, positions=np.array(pos), layers=["blocks.1.*"], progress=False)
    assert set(r.table.layer) == {"blocks.1.mixer"} and sorted(set(r.table.position)) == pos
    ref = full.table[(full.table.layer == "blocks.1.mixer") & full.table.position.isin(pos)]
    assert np.array_equal(ref.ess_tolerance.to_numpy(), r.table.ess_tolerance.to_numpy())
    e = ess.analyze(m, tok, method="entropy", progress=True)
    assert e.table.ess_tolerance.isna().all() and np.allclose(e.table.ess_entropy, full.table.ess_entropy)
    tl = ess.analyze(m, tok, method="tolerance", rtol=0.5, progress=False)
    assert (tl.table.ess_tolerance <= full.table.ess_tolerance).all()
    # numpy / list inputs and 1-D token ids are accepted
    r1 = ess.analyze(m, tok[0].numpy(), progress=False)
    assert np.array_equal(r1.table.ess_tolerance.to_numpy(), full.table.ess_tolerance.to_numpy())


def test_hooks_removed_and_model_unchanged():
    m = small_model()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ess.analyze(m, torch.randint(0, 64, (1, 8)), progress=False)
    assert _hooks(m) == 0 and m.training and all(mod.training for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = small_model()

    def forward(self, x):
        self.inner(x)
        raise RuntimeError("boom in forward")


def test_model_raising_in_forward():
    m = Boom()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        ess.analyze(m, torch.randint(0, 64, (1, 8)), progress=False)
    assert _hooks(m) == 0 and m.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class MyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def test_no_supported_layer():
    m = nn.Sequential(nn.Embedding(10, 4), MyAttention(), nn.Linear(4, 10))
    with pytest.raises(InvalidArgumentError, match="no supported.*MyAttention"):
        ess.analyze(m, torch.zeros(1, 5, dtype=torch.long), progress=False)


def test_skipped_modules_listed():
    class Hybrid(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = small_model(("conv",))
            self.extra = MyAttention()

        def forward(self, x):
            return self.lm(x)

    r = ess.analyze(Hybrid(), torch.zeros(1, 6, dtype=torch.long), progress=False)
    assert [n for n, _ in r.skipped] == ["extra"]
    assert "MyAttention" in r.skipped[0][1]
    assert any("not analysed" in c for c in r.caveats)


class HyenaLikeMixer(nn.Module):
    """A mixer ess has no extractor for, built like a Mamba mixer: projections around a short
    depthwise ``conv1d`` (which alone would be a supported layer) and a global FFT mixing."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(8, 16)
        self.conv1d = nn.Conv1d(16, 16, 4, groups=16, padding=3)
        self.out_proj = nn.Linear(16, 8)

    def forward(self, x):
        h = self.conv1d(self.in_proj(x).transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        return self.out_proj(h * torch.fft.rfft(h, dim=1).real[:, :1])


class MyDecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mixer = HyenaLikeMixer()

    def forward(self, x):
        return x + self.mixer(self.norm(x))


def test_unanalysed_mixer_named_by_its_own_class(tmp_path):
    """An unsupported mixer inside a decoder layer is reported under its own name and class: not as its
    inner conv1d (never analysed as if it were the layer), not as the decoder layer around it; the
    saved report lists it."""
    import json

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.layers = nn.ModuleList([MyDecoderLayer(), MyDecoderLayer()])
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.emb(x)
            for layer in self.layers:
                h = layer(h)
            causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
            return self.att(h, h, h, attn_mask=causal, need_weights=False)[0]

    torch.manual_seed(0)
    r = ess.analyze(Net().eval(), torch.randint(0, 10, (1, 6)), progress=False)
    assert list(r.summary.layer) == ["att"]
    assert [n for n, _ in r.skipped] == ["layers.0.mixer", "layers.1.mixer"]
    assert all(t.endswith("HyenaLikeMixer") for _, t in r.skipped)
    assert any("2 module(s)" in c and "not analysed" in c for c in r.caveats)
    out = r.save(tmp_path / "rep")
    js = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in js["skipped"]] == ["layers.0.mixer", "layers.1.mixer"]
    assert "HyenaLikeMixer" in (out / "report.html").read_text()


def test_bad_inputs():
    m = small_model()
    tok = torch.randint(0, 64, (1, 10))
    with pytest.raises(ShapeError, match="inputs"):
        ess.analyze(m, torch.zeros(1, 0, dtype=torch.long), progress=False)
    with pytest.raises(ShapeError, match="inputs"):
        ess.analyze(m, torch.zeros(0, 5, dtype=torch.long), progress=False)
    with pytest.raises(DTypeError, match="inputs"):
        ess.analyze(m, torch.zeros(1, 5, dtype=torch.complex64), progress=False)
    with pytest.raises(DTypeError, match="inputs"):
        ess.analyze(m, "hello", progress=False)
    with pytest.raises(DTypeError, match="inputs"):
        ess.analyze(m, np.array([["a", "b"]]), progress=False)
    with pytest.raises(InvalidArgumentError, match="inputs"):
        ess.analyze(m, None, progress=False)
    with pytest.raises(DTypeError, match="model"):
        ess.analyze(lambda x: x, tok, progress=False)
    # the model's own check of a wrong shape surfaces, and leaves no hooks
    with pytest.raises(ValueError, match="tokens"):
        ess.analyze(m, torch.zeros(1, 5, 3, dtype=torch.long), progress=False)
    assert _hooks(m) == 0
    with pytest.raises(OutOfRangeError, match="positions"):
        ess.analyze(m, tok, positions=[0, 10], progress=False)
    with pytest.raises(OutOfRangeError, match="positions"):
        ess.analyze(m, tok, positions=[-1, 3], progress=False)
    with pytest.raises(OutOfRangeError, match="increasing"):
        ess.analyze(m, tok, positions=[3, 3], progress=False)
    with pytest.raises(DTypeError, match="positions"):
        ess.analyze(m, tok, positions=[0.5], progress=False)
    with pytest.raises(InvalidArgumentError, match="method"):
        ess.analyze(m, tok, method="rank", progress=False)
    with pytest.raises(InvalidArgumentError, match="layers"):
        ess.analyze(m, tok, layers=["nope"], progress=False)
    with pytest.raises(InvalidArgumentError, match="saturation"):
        ess.analyze(m, tok, saturation=0.1, collapse=0.5, progress=False)
    with pytest.raises(ess.InvalidArgumentError, match="atol"):
        ess.analyze(m, tok, atol=-1.0, progress=False)
    assert _hooks(m) == 0


def test_memory_budget(monkeypatch):
    m = small_model(("conv",))
    tok = torch.randint(0, 64, (1, 32))
    need = 16 * 32 * 32 * 8
    with pytest.raises(TooLargeError, match="shorter input.*positions"):
        ess.analyze(m, tok, memory_budget=need - 1, progress=False)
    ess.analyze(m, tok, memory_budget=need, progress=False)
    monkeypatch.setenv("ESS_MEMORY_BUDGET", "1K")
    with pytest.raises(TooLargeError, match="1.0 KiB"):
        ess.analyze(m, tok, progress=False)
    with pytest.raises(InvalidArgumentError, match="memory_budget"):
        ess.analyze(m, tok, memory_budget="lots", progress=False)
    with pytest.raises(InvalidArgumentError, match="memory_budget"):
        ess.analyze(m, tok, memory_budget=0, progress=False)


def test_float64_model_and_dict_inputs():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = small_model(("linear_attention",))

        def forward(self, input_ids=None, attention_mask=None):
            return self.lm(input_ids)

    w = Wrap().double()
    tok = torch.randint(0, 64, (1, 12))
    r = ess.analyze(w, {"input_ids": tok}, progress=False)
    assert r.meta["length"] == 12 and (r.table.ess_tolerance <= 8).all()
    assert (r.table.token.to_numpy()[:12] == tok[0].numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_model():
    m = small_model().cuda()
    r = ess.analyze(m, torch.randint(0, 64, (1, 12)), progress=False)
    assert r.meta["device"].startswith("cuda") and len(r.table)


class _SharedMixer(nn.Module):
    """One causal depthwise convolution applied twice (weights shared between two places)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 4)
        self.conv = nn.Conv1d(4, 4, 3, groups=4, padding=2)
        self.other = nn.Conv1d(4, 4, 2, groups=4, padding=1)

    def forward(self, x):
        h = self.emb(x).transpose(1, 2)
        L = h.shape[-1]
        h = self.conv(h)[..., :L]
        h = self.conv(h)[..., :L]
        return self.other(h)[..., :L]


def test_module_called_twice_is_refused_with_the_count():
    torch.manual_seed(0)
    m = _SharedMixer()
    x = torch.randint(0, 16, (1, 9))
    with pytest.raises(InvalidArgumentError, match=r"'conv' \(2 calls\) ran more than once"):
        ess.analyze(m, x, progress=False)
    r = ess.analyze(m, x, layers=["other"], progress=False)  # the other layer is analysed as usual
    assert set(r.table["layer"]) == {"other"}


def test_non_finite_weight_names_the_layer():
    torch.manual_seed(0)
    m = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=3, mixers=["conv", "softmax_attention"]))
    with torch.no_grad():
        next(p for n, p in m.named_parameters() if n.startswith("blocks.1.mixer")).view(-1)[0] = float("nan")
    from ess.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="layer 'blocks.1.mixer': operator 0 .* contains NaN or inf"):
        ess.analyze(m, torch.randint(0, 64, (1, 10)), layers=["blocks.1.mixer"], progress=False)


def test_user_hooks_run_once_on_a_float64_rnn():
    """The RNN Jacobian passes run on a hook-free copy: the user's hooks see the one real forward."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    net = Net().double()
    seen = []
    net.rnn.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    r = ess.analyze(net, (torch.randn(1, 7, 3, dtype=torch.float64),), progress=False)
    assert len(seen) == 1 and set(r.table["layer"]) == {"rnn"}
