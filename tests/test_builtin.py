"""The built-in model's reference layers: reconstruction of every extractor, and the shipped model."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch")
torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

import ess  # noqa: E402
from ess.analyze import discover  # noqa: E402
from ess.models.layers import GatedLinearAttention, LinearAttention, SelectiveSSM, ShortConv, SoftmaxAttention  # noqa: E402
from ess.models.model import HybridConfig, HybridLM  # noqa: E402
from ess.models.mqar import SEP, MQARConfig, generate  # noqa: E402
from ess.operators import find_extractor  # noqa: E402

ALL_MIXERS = ["conv", "ssm", "linear_attention", "gated_linear_attention", "softmax_attention"]
LAYERS = {
    "softmax": lambda d, h: SoftmaxAttention(d, h),
    "linear": lambda d, h: LinearAttention(d, h),
    "gla": lambda d, h: GatedLinearAttention(d, h),
    "ssm": lambda d, h: SelectiveSSM(d, d_state=4),
    "conv": lambda d, h: ShortConv(d, 4),
}


def _capture(layer, x):
    ex = find_extractor(layer, "layer")
    assert ex is not None
    hs = ex.attach()
    try:
        with torch.no_grad():
            layer(x)
    finally:
        for h in hs:
            h.remove()
    return ex


def _reconstruct_error(layer, x, sample=0):
    ex = _capture(layer, x)
    y = ex.captured_output(sample).to(torch.float64)
    yr = ex.reconstruct(sample)
    return float((yr - y).norm() / y.norm())


def _numpy_apply(ops, u):
    """Slow reference: y[i, t] = sum_{s <= t} T_i[t, s] u_i[s] with explicit loops over t."""
    n, L, _ = ops.shape
    out = np.zeros((n, L) + u.shape[2:])
    for t in range(L):
        out[:, t] = np.einsum("is,is...->i...", ops[:, t, : t + 1], u[:, : t + 1])
    return out


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_reconstruction(name, dtype, tol):
    torch.manual_seed(0)
    layer = LAYERS[name](16, 2).to(dtype)
    x = torch.randn(3, 23, 16, dtype=dtype)
    for s in range(3):
        assert _reconstruct_error(layer, x, s) <= tol


@settings(max_examples=10, deadline=None)
@given(
    name=st.sampled_from(sorted(LAYERS)),
    L=st.integers(1, 24),
    heads=st.sampled_from([1, 2, 4]),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_reconstruction_property(name, L, heads, scale, seed):
    torch.manual_seed(seed)
    layer = LAYERS[name](8, heads).to(torch.float64)
    x = scale * torch.randn(2, L, 8, dtype=torch.float64)
    ex = _capture(layer, x)
    y = ex.captured_output(1)
    yr = ex.reconstruct(1)
    assert torch.allclose(yr, y, rtol=1e-9, atol=1e-9 * float(y.abs().max() + 1e-300))
    ops = ex.operators(1)
    T = ops.operators
    assert T.dtype == np.float64 and T.shape[1:] == (L, L) and T.flags.c_contiguous
    assert np.all(np.isfinite(T))
    assert np.allclose(np.triu(T, 1), 0.0), "operators must be causal"
    assert len(ops.labels) == len(ops.tss) == T.shape[0]
    # the operators applied by a slow loop reproduce the layer's mixing
    with torch.no_grad():
        Tt, u = ex._mixing(1)
    ref = _numpy_apply(T, u.numpy())
    assert np.allclose(ref, (Tt @ u).numpy(), rtol=1e-10, atol=1e-12 * (np.abs(ref).max() + 1e-300))


@pytest.mark.parametrize("kind,tss", [("conv", 3), ("ssm", 4), ("linear_attention", 4), ("gated_linear_attention", 4)])
def test_structured_ess_within_tss(kind, tss):
    """Exact-rank bounds of the structured kernels: conv k taps <= k-1, SSM <= N, (gated) linear attention <= d_k."""
    torch.manual_seed(1)
    cfg = HybridConfig(d_model=16, n_heads=4, d_state=4, conv_kernel=4, mixers=[kind])
    m = HybridLM(cfg)
    tok = torch.randint(0, 64, (2, 40))
    r = ess.analyze(m, tok, progress=False)
    assert r.table["ess_tolerance"].max() <= tss
    assert (r.table["ess_entropy"] <= r.table["ess_tolerance"] + 1e-9).all()
    assert (r.table["ess_tolerance"] <= r.table["bound"]).all()


def test_ess_matches_numpy_reference():
    torch.manual_seed(2)
    m = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=3, mixers=["ssm", "softmax_attention"]))
    tok = torch.randint(0, 64, (1, 12))
    r = ess.analyze(m, tok, progress=False)
    found, _ = discover(m)
    hs = [h for _, e in found for h in e.attach()]
    with torch.no_grad():
        m(tok)
    for h in hs:
        h.remove()
    for name, ex in found:
        T = ex.operators(0).operators
        for i in range(T.shape[0]):
            ref = [0] + [np.linalg.matrix_rank(T[i, t:, :t]) for t in range(1, 12)]
            got = r.table[(r.table.layer == name) & (r.table["index"] == i)].sort_values("position")["ess_tolerance"]
            assert got.tolist() == ref


def test_mqar_generator():
    cfg = MQARConfig()
    tok, tgt, mask = generate(5, cfg, seed=3)
    assert tok.shape == (5, cfg.length) and tok.dtype == torch.int64
    assert (tok[:, 1 + 2 * cfg.n_pairs] == SEP).all(), "delimiter between the segments"
    assert int(mask.sum()) == 5 * cfg.n_queries
    for i in range(5):
        kv = {int(tok[i, 1 + 2 * j]): int(tok[i, 2 + 2 * j]) for j in range(cfg.n_pairs)}
        for p in torch.nonzero(mask[i]).flatten().tolist():
            assert tgt[i, p] == kv[int(tok[i, p])]
    assert torch.equal(generate(2, cfg, seed=7)[0], generate(2, cfg, seed=7)[0])
    with pytest.raises(ValueError):
        generate(1, MQARConfig(n_keys=4, n_pairs=8))


def test_model_bad_input():
    m = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["conv"], max_len=16))
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown mixer"):
        HybridLM(HybridConfig(mixers=["nope"]))


def test_shipped_model_and_inputs():
    """The shipped weights load, the recorded accuracy is reproduced, ESS stays within TSS."""
    from ess.models import SEP, WEIGHTS, builtin_info, builtin_inputs, load_builtin

    info = builtin_info()
    assert WEIGHTS.stat().st_size < 4 * 1024**2
    m = load_builtin()
    assert not m.training
    cfg = MQARConfig(**info["mqar_config"])
    tok, tgt, mask = generate(info["eval_sequences"], cfg, seed=info["eval_seed"])
    with torch.no_grad():
        pred = m(tok).argmax(-1)
    acc = float((pred[mask] == tgt[mask]).float().mean())
    assert abs(acc - info["accuracy"]) < 1e-6, (acc, info["accuracy"])
    inp = builtin_inputs(2)
    assert torch.equal(inp, tok[:2]) and (inp[:, 1 + 2 * cfg.n_pairs] == SEP).all()
    r = ess.analyze(m, inp, markers=[SEP], progress=False)
    t = r.table
    structured = t[t.kind.isin(["conv", "selective_ssm", "linear_attention"])]
    assert (structured.ess_tolerance <= structured.tss).all()
    assert (t.ess_tolerance <= t.bound).all()
    with pytest.raises(ValueError, match="n:"):
        builtin_inputs(9)


def test_shipped_delimiters_model_and_inputs():
    """The ``delimiters`` built-in: small weights that load, the recorded held-out accuracy is
    reproduced from the recorded task, the shipped inputs are the first held-out sequences with the
    delimiter at the recorded positions, and ESS stays within its bounds."""
    from ess.models import (
        DELIM,
        DELIM_WEIGHTS,
        builtin_delimiters_info,
        builtin_delimiters_inputs,
        delimiters_token_names,
        load_builtin_delimiters,
    )
    from ess.reproduce.delimiters import generate as generate_segments

    info = builtin_delimiters_info()
    assert DELIM_WEIGHTS.stat().st_size < 1024**2
    m = load_builtin_delimiters()
    assert not m.training
    assert [b.kind for b in m.blocks] == ["conv", "ssm", "gated_linear_attention", "softmax_attention"]
    tok, tgt, mask, delims = generate_segments(info["eval_sequences"], seed=info["eval_seed"], **info["task"])
    assert delims == info["delimiter_positions"] and info["task"]["n_segments"] >= 3
    with torch.no_grad():
        pred = m(tok).argmax(-1)
    acc = float((pred[mask] == tgt[mask]).float().mean())
    assert abs(acc - info["accuracy"]) < 1e-3, (acc, info["accuracy"])
    assert acc > 0.9
    inp = builtin_delimiters_inputs(8)
    assert torch.equal(inp, tok[:8]) and (inp[:, delims] == DELIM).all()
    names = delimiters_token_names(inp[0], info["task"]["n_keys"])
    assert names[0] == "BOS" and [i for i, n in enumerate(names) if n == "DELIM"] == delims
    r = ess.analyze(m, inp[:2], markers=[DELIM], rtol=1e-2, progress=False)
    t = r.table
    assert (t.ess_tolerance <= t.bound).all()
    structured = t[t.kind != "softmax_attention"]
    assert (structured.ess_tolerance <= structured.tss).all()
    with pytest.raises(ValueError, match="n:"):
        builtin_delimiters_inputs(9)


def test_delimiters_trainer_recurrent_gla_is_the_same_function():
    """scripts/train_delimiters.py trains gated linear attention through its recurrent form; it must
    compute what the layer (the quadratic form the analysis reads) computes."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_delimiters.py"
    spec = importlib.util.spec_from_file_location("train_delimiters", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    layer = GatedLinearAttention(16, 2)
    x = torch.randn(3, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(mod._gla_recurrent(layer, x), layer(x), rtol=1e-5, atol=1e-5)


def test_compact_trainer_is_the_same_model():
    """scripts/train_mqar_compact.py (the GPU variant of the trainer) defines the same function."""
    import pathlib
    import re
    import sys

    src = (pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_mqar_compact.py").read_text()
    # everything before the model is built, on the CPU (the script targets a GPU); the patterns
    # allow either quoting and spacing, so formatting the script does not break the test
    head = re.split(r"\n\s*m\s*=\s*LM\(\)", src)[0]
    head, n = re.subn(r"\bd\s*=\s*[\"']cuda[\"']", 'd = "cpu"', head)
    assert n == 1, "the device line of train_mqar_compact.py was not found"
    g: dict = {}
    argv = sys.argv
    try:
        sys.argv = ["x", "/dev/null"]
        exec(compile(head, "train_mqar_compact.py", "exec"), g)
    finally:
        sys.argv = argv
    c = g["LM"]()
    m = HybridLM(HybridConfig())
    m.load_state_dict(c.state_dict())  # strict: same parameter names and shapes
    tok, _, _ = generate(4, MQARConfig(), seed=5)
    gt, gg = g["gen"](4)
    assert gt.shape == tok.shape and torch.equal(gg[:, :-1], gt[:, 1:])
    assert (gt[:, 0] == 0).all() and (gt[:, 17] == SEP).all()
    with torch.no_grad():
        assert torch.allclose(c.eval()(tok), m.eval()(tok), atol=1e-6)


def test_model_data_files_are_packaged():
    """Every weight, config and input file of the built-in models is listed in pyproject.toml's maturin
    ``include`` (sdist and wheel), so ``pip install .`` ships what ``ess analyze`` loads."""
    import pathlib

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    included = {e["path"] for e in cfg["tool"]["maturin"]["include"] if set(e["format"]) >= {"sdist", "wheel"}}
    data = {
        f"python/ess/models/{p.name}"
        for p in (root / "python" / "ess" / "models").iterdir()
        if p.suffix in (".safetensors", ".json", ".npy")
    }
    assert {"python/ess/models/hybrid_delimiters.safetensors", "python/ess/models/delimiters_inputs.npy"} <= data
    assert data <= included, sorted(data - included)


@pytest.mark.parametrize("n", [0, 9, 1.0, True])
def test_shipped_inputs_count_is_checked(n):
    from ess.errors import DTypeError, OutOfRangeError
    from ess.models import builtin_delimiters_inputs, builtin_inputs

    for f in (builtin_inputs, builtin_delimiters_inputs):
        with pytest.raises((DTypeError, OutOfRangeError), match="^n: "):
            f(n)
