"""Every Hugging Face attention family as it comes (issue 11): tiny random-weight models of the installed
transformers (tests/hf_families.py), analysed exactly as ``ess.analyze`` attaches its extractors; every
head's operator equals the probabilities of the model's own eager attention (``output_attentions=True``)
to 1e-6 in float32, with left padding and sliding windows shorter than the sequence; gemma2's soft-cap and
gpt-oss's sinks are made to act. Hybrids: their attention layers are checked here, their recurrent mixers are
found by the structured extractors of issue 12 (tests/test_recurrent_families.py) and nothing is skipped."""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch", "transformers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_families import FAMILIES, WINDOW, build  # noqa: E402

import ess  # noqa: E402
from ess.analyze import discover  # noqa: E402
from ess.errors import InvalidArgumentError  # noqa: E402
from ess.operators.hf_attention import (  # noqa: E402
    BloomAttentionExtractor,
    FalconAttentionExtractor,
    InterfaceAttentionExtractor,
)

transformers.logging.set_verbosity_error()

B, L, PAD = 2, 10, 3  # sequence 1 is left-padded by PAD tokens
assert L > WINDOW

#: family -> (attention class, extractor, classes of the recurrent / convolutional mixers analysed besides it)
#: transformers < 5.25: FalconAttention has its own attention code (``_split_heads``, ALiBi added to the
#: logits) and its own extractor; from 5.25 it goes through the attention interface like the rest
FALCON_OWN_CODE = hasattr(
    importlib.import_module("transformers.models.falcon.modeling_falcon").FalconAttention, "_split_heads"
)

EXPECTED: Dict[str, Tuple[str, type, Tuple[str, ...]]] = {
    "llama": ("LlamaAttention", InterfaceAttentionExtractor, ()),
    "gpt2": ("GPT2Attention", InterfaceAttentionExtractor, ()),
    "qwen2": ("Qwen2Attention", InterfaceAttentionExtractor, ()),
    "qwen3": ("Qwen3Attention", InterfaceAttentionExtractor, ()),
    "mistral": ("MistralAttention", InterfaceAttentionExtractor, ()),
    "mixtral": ("MixtralAttention", InterfaceAttentionExtractor, ()),
    "gemma": ("GemmaAttention", InterfaceAttentionExtractor, ()),
    "gemma2": ("Gemma2Attention", InterfaceAttentionExtractor, ()),
    "gemma3_text": ("Gemma3Attention", InterfaceAttentionExtractor, ()),
    "phi": ("PhiAttention", InterfaceAttentionExtractor, ()),
    "phi3": ("Phi3Attention", InterfaceAttentionExtractor, ()),
    "gpt_neox": ("GPTNeoXAttention", InterfaceAttentionExtractor, ()),
    "gptj": ("GPTJAttention", InterfaceAttentionExtractor, ()),
    "opt": ("OPTAttention", InterfaceAttentionExtractor, ()),
    "falcon": ("FalconAttention", FalconAttentionExtractor if FALCON_OWN_CODE else InterfaceAttentionExtractor, ()),
    "bloom": ("BloomAttention", BloomAttentionExtractor, ()),
    "olmo2": ("Olmo2Attention", InterfaceAttentionExtractor, ()),
    "smollm3": ("SmolLM3Attention", InterfaceAttentionExtractor, ()),
    "gpt_oss": ("GptOssAttention", InterfaceAttentionExtractor, ()),
    "cohere": ("CohereAttention", InterfaceAttentionExtractor, ()),
    "starcoder2": ("Starcoder2Attention", InterfaceAttentionExtractor, ()),
    "jamba": ("JambaAttention", InterfaceAttentionExtractor, ("JambaMambaMixer",)),
    "bamba": ("BambaAttention", InterfaceAttentionExtractor, ("BambaMixer",)),
    "zamba2": ("Zamba2Attention", InterfaceAttentionExtractor, ("Zamba2MambaMixer",)),
    "falcon_h1": ("FalconH1Attention", InterfaceAttentionExtractor, ("FalconH1Mixer",)),
    "nemotron_h": ("NemotronHAttention", InterfaceAttentionExtractor, ("NemotronHMamba2Mixer",)),
    "granitemoehybrid": ("GraniteMoeHybridAttention", InterfaceAttentionExtractor, ("GraniteMoeHybridMambaLayer",)),
    "lfm2": ("Lfm2Attention", InterfaceAttentionExtractor, ("Lfm2ShortConv",)),
    "qwen3_next": ("Qwen3NextAttention", InterfaceAttentionExtractor, ("Qwen3NextGatedDeltaNet",)),
    "recurrent_gemma": ("RecurrentGemmaAttention", InterfaceAttentionExtractor, ("Conv1d", "RecurrentGemmaRglru")),
}
assert set(EXPECTED) == set(FAMILIES)

#: families whose sliding window (WINDOW < L) is exercised by the configs of tests/hf_families.py
SLIDING = {
    "qwen2",
    "qwen3",
    "mistral",
    "mixtral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt_oss",
    "starcoder2",
    "recurrent_gemma",
}


def no_hooks(model: Any) -> bool:
    """No hook of ess is left (transformers installs persistent hooks of its own for output_attentions)."""
    return not any(
        getattr(h, "__module__", "").startswith("ess")
        for m in model.modules()
        for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())
    )


def interface_untouched() -> bool:
    from transformers.modeling_utils import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = AttentionInterface._global_mapping
    return g["sdpa"] is sdpa_attention_forward and "eager" not in g


@contextlib.contextmanager
def attached(model: Any) -> Iterator[Dict[str, Any]]:
    """The extractors ``ess.analyze`` would attach (``discover``), attached; removed afterwards."""
    found, _ = discover(model)
    handles: List[Any] = []
    try:
        for _, ex in found:
            handles += ex.attach()
        yield {n: e for n, e in found if e.kind == "softmax_attention"}  # the recurrent ones run alongside
    finally:
        for h in handles:
            h.remove()


def inputs(seed: int = 0, padded: bool = True) -> Tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    if padded:
        mask[1, :PAD] = 0
    return ids, mask


def eager_run(model: Any, seed: int = 0, padded: bool = True) -> Tuple[Dict[str, Any], List[Any], Any]:
    ids, mask = inputs(seed, padded)
    with attached(model) as exts, torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert no_hooks(model) and interface_untouched()
    probs = [a for a in out.attentions if a is not None]  # hybrids: None for the recurrent layers
    assert len(probs) == len(exts)
    return exts, probs, out


def compare(exts: Dict[str, Any], probs: List[Any], padded: bool = True) -> Tuple[float, Dict[str, np.ndarray]]:
    """Max |operator - eager probabilities| over heads, layers and the real (unpadded) query rows."""
    worst, ops = 0.0, {}
    for (name, ex), ref in zip(exts.items(), probs):
        for b in range(B):
            s = ex.operators(b)
            T = s.operators
            H = ref.shape[1]
            assert T.shape == (H, L, L) and s.kind == "softmax_attention" and s.labels[0] == "head 0"
            assert np.all(np.triu(T, 1) == 0)
            rows = slice(PAD, None) if (b == 1 and padded) else slice(None)
            worst = max(worst, float(np.abs(T[:, rows] - ref[b, :, rows].double().numpy()).max()))
            if b == 1 and padded:
                assert np.all(T[:, PAD:, :PAD] == 0)  # padded keys are never read
            ops[f"{name}/{b}"] = T
    return worst, ops


TIMES: Dict[str, Tuple[str, float, float]] = {}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_eager(family: str) -> None:
    t0 = time.perf_counter()
    model = build(family, "eager")
    cls, ext_type, mixers = EXPECTED[family]
    found, skipped = discover(model)
    att = [(n, e) for n, e in found if e.kind == "softmax_attention"]
    assert att and {type(e.module).__name__ for _, e in att} == {cls}
    assert all(type(e) is ext_type for _, e in att)
    assert sorted({type(e.module).__name__ for _, e in found if e.kind != "softmax_attention"}) == sorted(mixers)
    assert not skipped
    exts, probs, _ = eager_run(model)
    worst, ops = compare(exts, probs)
    assert worst <= 1e-6, f"{family}: operator differs from the eager probabilities by {worst:.2e}"
    if family in SLIDING:  # some layer's window is shorter than the sequence: keys before it get 0
        assert any(
            np.all(np.tril(T[:, :, :], -WINDOW) == 0) and not np.allclose(T.sum(-1)[:, -1], 0) for T in ops.values()
        )
    TIMES[family] = (cls, worst, time.perf_counter() - t0)
    print(f"\n{family:18s} {cls:28s} max|T - eager| = {worst:.1e}  {time.perf_counter() - t0:.2f} s")


def test_sliding_window_really_masks() -> None:
    """Mistral with window 4 over 10 tokens: every head of every layer reads at most 4 keys."""
    model = build("mistral", "eager")
    exts, probs, _ = eager_run(model)
    for ex in exts.values():
        T = ex.operators(0).operators
        assert np.all(np.tril(T, -WINDOW) == 0) and np.all(T[:, -1, -WINDOW:] > 0)


def test_gemma2_softcap_acts() -> None:
    model = build("gemma2", "eager")
    with torch.no_grad():  # large queries and keys: logits far beyond the cap of 2
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
            layer.self_attn.k_proj.weight.mul_(40.0)
    exts, probs, _ = eager_run(model)
    worst, _ = compare(exts, probs)
    assert worst <= 1e-6
    # without the cap the softmax would be far from the model's: the cap acts
    ex = exts["model.layers.0.self_attn"]
    cap = ex._cap
    q = cap["q"][0].double()
    k = cap["k"][0].double().repeat_interleave(2, dim=0)
    raw = torch.einsum("hld,hsd->hls", q, k) * float(cap["scaling"])
    assert float(raw.abs().max()) > 5 * float(cap["softcap"])
    nocap = torch.softmax(raw + cap["mask"][0].double(), dim=-1)
    assert float((nocap - probs[0][0].double()).abs().max()) > 0.1
    assert "soft-capping" in ex.operators(0).note


def test_gpt_oss_sinks_take_mass() -> None:
    model = build("gpt_oss", "eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-1.0, 2.0, layer.self_attn.sinks.numel()))
    exts, probs, _ = eager_run(model)
    worst, _ = compare(exts, probs)
    assert worst <= 1e-6
    rows = exts["model.layers.1.self_attn"].operators(0).operators.sum(-1)
    assert rows.max() < 0.99 and rows.min() > 0.0  # the sink takes mass, as in the model's own rows
    assert np.allclose(rows, probs[1][0].double().numpy().sum(-1), atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text", "qwen2", "falcon", "bamba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_equals_eager(family: str, dtype: Any) -> None:
    """The same weights under sdpa (boolean masks, or none at all) and eager (additive masks) give the same
    operators; the model's outputs are unchanged by the capture. float64 runs unpadded: the library's eager
    path overflows its own padding mask to -inf in float64 (NaN rows that reach the next layer)."""
    ops = {}
    padded = dtype == torch.float32
    for impl in ("eager", "sdpa"):
        model = build(family, impl, dtype=dtype)
        ids, mask = inputs(1)
        if not padded:
            mask = torch.ones_like(mask)
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask).logits
        with attached(model) as exts, torch.no_grad():
            captured = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(plain, captured) and no_hooks(model) and interface_untouched()
        ops[impl] = {n: [e.operators(b).operators for b in range(B)] for n, e in exts.items()}
    assert ops["eager"].keys() == ops["sdpa"].keys()
    for n in ops["eager"]:
        for b in range(B):
            rows = slice(PAD, None) if (b == 1 and padded) else slice(None)
            err = np.abs(ops["eager"][n][b][:, rows] - ops["sdpa"][n][b][:, rows]).max()
            assert err <= 1e-6  # float64: eager takes its softmax in float32, which moves later layers' inputs


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "qwen3_next"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_checked(family: str, dtype: Any) -> None:
    """Half-precision models pass the run-time check (tolerance by output dtype) and their operators agree
    with the float32 model's to the precision of the half-precision queries and keys."""
    ids, mask = inputs(3)
    ops = {}
    for dt in (torch.float32, dtype):
        model = build(family, "eager", dtype=dt)
        with attached(model) as exts, torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        ops[dt] = {n: e.operators(0) for n, e in exts.items()}
    for n, s in ops[dtype].items():
        assert "checked" in s.note
        assert np.abs(s.operators - ops[torch.float32][n].operators).max() < 0.05


def _flash_stand_in(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: Any = None,
    dropout: float = 0.0,
    sliding_window: Any = None,
    softcap: Any = None,
    s_aux: Any = None,
    **kwargs: Any,
) -> Tuple[Any, None]:
    """What a flash-attention kernel computes, in torch (no flash kernels on CPU): a 2-D padding mask or
    none, causal, a window of ``sliding_window`` keys, soft-capping, sinks."""
    Bq, H, Lq, d = query.shape
    k = key.repeat_interleave(H // key.shape[1], 1)
    v = value.repeat_interleave(H // value.shape[1], 1)
    s = query @ k.transpose(-1, -2) * (d**-0.5 if scaling is None else scaling)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    qi, ki = torch.arange(Lq)[:, None], torch.arange(Lq)[None, :]
    keep = (ki <= qi) & ((ki > qi - sliding_window) if sliding_window is not None else True)
    keep = keep[None, None]
    if attention_mask is not None:
        assert attention_mask.dim() == 2  # the flash mask interface hands a 2-D padding mask
        keep = keep & attention_mask.bool()[:, None, None, :]
    s = s.masked_fill(~keep, float("-inf"))
    if s_aux is not None:
        s = torch.cat([s, s_aux.reshape(1, -1, 1, 1).expand(Bq, H, Lq, 1)], -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)[..., :Lq]
    return (p @ v).transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
@pytest.mark.parametrize("padded", [True, False])
def test_flash_style_path(family: str, padded: bool, monkeypatch: Any) -> None:
    """The flash path (2-D padding mask or none; window, soft-cap and sinks passed as arguments) with a torch
    stand-in for the kernel under the real "flash_attention_2" key and its real mask function: operators
    equal the eager probabilities of the same weights."""
    from transformers.modeling_utils import AttentionInterface

    ref = build(family, "eager")
    with torch.no_grad():
        for layer in ref.model.layers:
            if hasattr(layer.self_attn, "sinks"):
                layer.self_attn.sinks.copy_(torch.linspace(-1.0, 2.0, layer.self_attn.sinks.numel()))
    _, probs, _ = eager_run(ref, padded=padded)
    model = build(family, "eager")
    model.load_state_dict(ref.state_dict())
    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", _flash_stand_in)
    model.config._attn_implementation = "flash_attention_2"
    ids, mask = inputs(padded=padded)
    with attached(model) as exts, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    masks = [e._cap["mask"] for e in exts.values()]
    assert all(m is None for m in masks) if not padded else all(m.dim() == 2 for m in masks)
    assert any(e._cap["sliding_window"] == WINDOW for e in exts.values())
    worst, _ = compare(exts, probs, padded)
    assert worst <= 1e-6


@pytest.mark.parametrize(
    "variant", [dict(alibi=True), dict(new_decoder_architecture=True, num_kv_heads=2), dict(multi_query=False)]
)
def test_falcon_variants(variant: Dict[str, Any]) -> None:
    """ALiBi, grouped keys (new decoder architecture), one key head per query head; the eager branch against
    its probabilities, the sdpa branch against the eager operators of the same weights."""
    cfg = transformers.FalconConfig(**FAMILIES["falcon"], **variant)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.FalconForCausalLM(cfg).eval()
    exts, probs, _ = eager_run(model)
    worst, eager_ops = compare(exts, probs)
    assert worst <= 1e-6
    model.config._attn_implementation = "sdpa"
    ids, mask = inputs()
    with attached(model) as exts2, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for n, ex in exts2.items():
        for b in range(B):
            rows = slice(PAD, None) if b == 1 else slice(None)
            s = ex.operators(b)
            assert ("sdpa branch" if FALCON_OWN_CODE else "sdpa_attention_forward") in s.note
            if variant.get("alibi") and FALCON_OWN_CODE:
                continue  # transformers' eager ALiBi branch adds the bias twice (logits and mask): it differs from sdpa
            assert np.abs(s.operators[:, rows] - eager_ops[f"{n}/{b}"][:, rows]).max() <= 1e-6
    if not variant.get("alibi") and FALCON_OWN_CODE:
        # sdpa config + output_attentions: Falcon's eager branch adds the boolean mask as 0/1 (not causal)
        with attached(model) as exts3, torch.no_grad():
            model(input_ids=ids, attention_mask=mask, output_attentions=True)
        with pytest.raises(InvalidArgumentError, match="transformer.h.0.self_attention.*boolean mask"):
            exts3["transformer.h.0.self_attention"].operators(0)


def test_verification_refuses_a_wrong_operator(monkeypatch: Any) -> None:
    """An attention function that does more than the operator models (here: a temperature the extractor
    cannot see) is refused, naming the layer; so is a forward that bypasses the interface."""
    from transformers.models.llama import modeling_llama

    model = build("llama", "eager")
    orig = modeling_llama.eager_attention_forward

    def hot(module: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        return orig(module, query * 1.5, *args, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", hot)
    ids, mask = inputs()
    with attached(model) as exts, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for name, ex in exts.items():
        with pytest.raises(InvalidArgumentError, match=f"{name}.*does not reproduce"):
            ex.operators(0)
    monkeypatch.undo()
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**FAMILIES["gpt2"], reorder_and_upcast_attn=True)
    ).eval()
    gpt2.config._attn_implementation = "eager"
    with attached(gpt2) as exts, torch.no_grad():
        gpt2(input_ids=ids)
    with pytest.raises(InvalidArgumentError, match="transformer.h.0.attn.*without calling the attention function"):
        exts["transformer.h.0.attn"].operators(0)


def test_interface_restored_when_forward_raises() -> None:
    model = build("qwen2", "sdpa")
    with pytest.raises(Exception):
        with attached(model):
            model(input_ids=torch.full((1, 4), 10_000))  # token id out of range
    assert no_hooks(model) and interface_untouched()


def test_cached_continuation_refused_generic() -> None:
    """Keys from an earlier call: refused by the cache guards, and by the captured key length."""
    model = build("gemma3_text", "sdpa")
    ids, _ = inputs()
    with torch.no_grad():
        cache = model(input_ids=ids[:, :6], use_cache=True).cache
    with attached(model) as exts, torch.no_grad():
        model(input_ids=ids[:, 6:], cache=cache, use_cache=True)
    for name, ex in exts.items():
        with pytest.raises(InvalidArgumentError, match=f"{name}.*cached keys"):
            ex.operators(0)
        ex._problem = None  # the capture alone: 10 keys for 4 queries
        with pytest.raises(InvalidArgumentError, match=rf"{name}.*\d+ keys for 4 queries"):
            ex.operators(0)


@pytest.mark.requires("pandas", "matplotlib")
@pytest.mark.parametrize("family", ["jamba", "recurrent_gemma"])
def test_hybrid_report(family: str, tmp_path: Any) -> None:
    """analyze on a hybrid: attention layers and recurrent mixers analysed (each by its own class, never the
    decoder layer), nothing skipped, and the report saves."""
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    model = build(family, "sdpa")
    r = ess.analyze(model, inputs()[0][:1], progress=False)
    cls, _, mixers = EXPECTED[family]
    assert set(r.summary.module_type) == {cls, *mixers}
    assert not r.skipped and not any("not analysed" in c for c in r.caveats)
    assert all("checked" in n for n in r.summary.note if "convolution, " not in n)
    assert set(r.summary.route) == {"dense", "structured"}
    out = r.save(tmp_path / "rep")
    assert (out / "summary.json").exists() and (out / "report.html").exists()


def test_no_false_alarms() -> None:
    """GPT-2's Conv1D projections (MLP included), norms, MoE blocks and the model classes are not mixers."""
    for family in ("gpt2", "gpt_oss", "recurrent_gemma", "qwen3_next"):
        model = build(family, "eager")
        _, skipped = discover(model)
        names = [t.rsplit(".", 1)[-1] for _, t in skipped]
        assert not any(
            n.endswith(("Conv1D", "Norm", "MLP", "Mlp", "Model", "ForCausalLM", "SparseMoeBlock")) for n in names
        ), names
    from ess.analyze import mixing_like

    assert not mixing_like(torch.nn.Conv2d(3, 8, 4)) and not mixing_like(torch.nn.Conv1d(8, 8, 1))
    assert mixing_like(torch.nn.Conv1d(8, 8, 4, groups=8, padding=3)) and mixing_like(torch.nn.GRU(4, 4))


#: tiny configs of causal LMs whose attention computes with code of its own (no attention interface) and
#: that ess has no extractor for: analyze refuses them naming the class and why
OUTSIDE_INTERFACE = {
    "gpt_neo": (
        "GPTNeoSelfAttention",
        dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]]),
    ),
    "mpt": ("MptAttention", dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)),
}


@pytest.mark.parametrize("family", list(OUTSIDE_INTERFACE))
def test_attention_outside_the_interface_refused_by_name(family: str) -> None:
    cls, kw = OUTSIDE_INTERFACE[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[family](**kw)).eval()
    found, skipped = discover(model)
    assert not found and {t.rsplit(".", 1)[-1] for _, t in skipped} == {cls}
    with pytest.raises(
        InvalidArgumentError,
        match=rf"without an extractor: \S+ \({cls}: .*not through transformers' attention interface",
    ):
        ess.analyze(model, torch.randint(1, 60, (1, 8)), progress=False)


def test_nothing_analysed_raises() -> None:
    """Supported layers that the forward never calls give no operator: analyze raises instead of
    returning an empty report."""

    class Unused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8)
            self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.emb(x)

    with pytest.raises(InvalidArgumentError, match="no layer was analysed.*mha"):
        ess.analyze(Unused(), torch.zeros(1, 6, dtype=torch.long), progress=False)


@pytest.mark.requires("pandas")
def test_analyze_padded_batch() -> None:
    """End to end on a left-padded batch (dict inputs, sdpa, a sliding layer shorter than the sequence):
    both sequences analysed, the padded one's operators read no padding."""
    pytest.importorskip("pandas")
    model = build("gemma3_text", "sdpa")
    ids, mask = inputs()
    r = ess.analyze(model, {"input_ids": ids, "attention_mask": mask}, progress=False)
    assert r.meta["n_samples"] == B and list(r.summary.layer) == [
        "model.layers.0.self_attn",
        "model.layers.1.self_attn",
    ]
    assert (r.table.ess_tolerance <= r.table.bound).all() and not r.skipped
    t = r.table[(r.table["sample"] == 1) & (r.table.position <= PAD)]
    assert (t.ess_tolerance == 0).all()  # nothing before the first real token reaches later outputs


def test_model_named_like_a_mixer_is_searched() -> None:
    """The model itself is never taken for one mixer: its supported layers are analysed."""

    class MyConvNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.conv = torch.nn.Conv1d(4, 4, 3, groups=4, padding=2)

        def forward(self, x: Any) -> Any:
            return self.conv(self.emb(x).transpose(1, 2))[..., : x.shape[1]]

    found, skipped = discover(MyConvNet())
    assert [n for n, _ in found] == ["conv"] and not skipped
