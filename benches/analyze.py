"""Benchmark of ess.analyze end to end.

1. A GPT-2-small-shaped random model (12 layers x 12 heads, d_model 768, L = 512; vocabulary
   reduced to 1024, which does not touch the attention) built from a config (no download):
   ``ess.analyze`` on ``--gpt2-layers`` of its layers (default 2: layers 0 and 11; its default
   ``method="both"``, both curves) against the pipeline a user would write for the same curves:
   eager attention with ``output_attentions=True``, then per head a numpy loop over split points
   with either the Gram matrix of the smaller side + ``eigvalsh`` or ``svd(compute_uv=False)``.
   Both pipelines pay one forward pass of the whole model; times per head are (forward + ESS of the
   measured heads) / heads. The numpy loops are timed on a sample of heads and extrapolated; their
   curves are checked against ess on those heads. The analyze time is split into forward, operator
   formation + checks + report, and the kernel (timed again alone on the same operators).
2. The built-in hybrid model on its shipped MQAR inputs, end to end.
3. A Mamba-130m-shaped random model (24 layers, d_model 768, expand 2: 1536 channels, d_state 16,
   transformers ``MambaForCausalLM`` from a config) at ``--mamba-length`` (default 2048), end to end through
   the structured route, against the dense route (``materialize=True``: the operators formed and sent to the
   dense kernel). The dense route is timed on layer 0 at L = 128 and 256 on a sample of channels (same
   operators as ``analyze`` forms), fitted with a least-squares power law ``time = a * L^p`` per operator and
   extrapolated to all channels and layers at the target length; the curves of the sampled channels are
   compared with the structured ones at L = 256 (tolerance counts equal, entropy relative difference).

4. ``--gpu``: the GPU route (``ess.analyze`` on a CUDA model: operators formed and consumed on the GPU, per-split
   spectra batched over heads) against a per-split ``torch.linalg.svdvals`` loop on the GPU per head (what the
   ESS paper's code does) and against the CPU kernel, for GPT-2-small at L = 1024 (all 144 heads) and one
   Llama-7B-shaped layer (32 heads of dimension 128, L = 4096); plus the float32 mode's accuracy. Slow
   baselines are timed on a sample (of heads, of splits) and extrapolated, as printed. ``--gpu --tiny`` runs
   the same code at a tiny size, on CPU torch when there is no GPU (a smoke test of the script).
5. ``--subset-errors``: the error that strided / log-spaced subsets of split points (``ess.split_points``)
   introduce into the per-layer averages, on random-init GPT-2- and Llama-shaped models and the built-in model.

    python benches/analyze.py [--length 512] [--gpt2-layers 2] [--sample-heads 2] [--threads N] [--mamba-only]
                              [--mamba-length 2048] [--gpu [--tiny]] [--subset-errors]

Runs the baselines in the same process on the same data.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import ess


def naive_head(A: np.ndarray) -> tuple:
    """Tolerance- and entropy-ESS of one L x L operator: one SVD per split (numpy)."""
    L = A.shape[0]
    tol = np.zeros(L)
    ent = np.zeros(L)
    eps = np.finfo(np.float64).eps
    for t in range(1, L):
        s = np.linalg.svd(A[t:, :t], compute_uv=False)
        if s[0] == 0:
            continue
        tol[t] = np.sum(s > max(L - t, t) * eps * s[0])
        p = s / s.sum()
        p = p[p > 0]
        ent[t] = np.exp(-(p * np.log(p)).sum())
    return tol, ent


def mamba_bench(L: int, sample_channels: int = 32, n_layers: int = 24) -> None:
    """Section 3 of the module docs. ``n_layers < 24``: ``analyze`` runs on the first ``n_layers`` layers of the
    24-layer model (``layers=``, the forward pass is the whole model's) and the per-layer time is extrapolated
    to 24 layers (stated in the output)."""
    from transformers import MambaConfig, MambaForCausalLM

    from ess.analyze import discover

    cfg = MambaConfig(
        vocab_size=1024,
        hidden_size=768,
        state_size=16,
        num_hidden_layers=24,
        expand=2,
        conv_kernel=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = MambaForCausalLM(cfg).eval()
    tok = torch.randint(0, cfg.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))
    print(f"\nMamba-130m shape (24 layers, d_model 768, 1536 channels, d_state 16), random weights, L = {L}")
    t0 = time.perf_counter()
    c0 = time.process_time()
    sel = None if n_layers >= 24 else [f"backbone.layers.{i}.mixer" for i in range(n_layers)]
    rep = ess.analyze(model, tok, progress=False, layers=sel)
    t_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    n_ops = len(rep.table[["layer", "index"]].drop_duplicates())
    per_layer = rep.meta["seconds_ess"] / n_layers
    print(
        f"  ess.analyze, structured route, end to end on {n_layers} of 24 layers: {t_s:8.1f} s wall ({cpu_s:.1f} s cpu; "
        f"forward of the whole model {rep.meta['seconds_forward']:.1f} s, factors + checks + ESS "
        f"{rep.meta['seconds_ess']:.1f} s = {per_layer:.1f} s per layer), {n_ops} operators; max reconstruction error "
        f"in the notes: {max(float(n.split('rel. err ')[1].rstrip(')')) for n in rep.summary.note):.1e}"
    )
    if n_layers < 24:
        t_s = rep.meta["seconds_forward"] + 24 * per_layer
        print(f"  whole model (24 layers), extrapolated linearly from the {n_layers} measured layers: {t_s:.0f} s")
    # dense route on layer 0, a sample of channels, at two lengths
    times = []
    lengths = [128, 256]
    agree = 0
    ent_diff = 0.0
    for Ld in lengths:
        found, _ = discover(model)
        ex = dict(found)["backbone.layers.0.mixer"]
        handles = ex.attach()
        try:
            with torch.no_grad():
                model(tok[:, :Ld])
        finally:
            for h in handles:
                h.remove()
        fs = ex.factors(0)
        T = fs.factors.materialize()[:sample_channels]
        t0 = time.perf_counter()
        res = ess.effective_state_size(T, method="both")
        times.append((time.perf_counter() - t0) / sample_channels)
        if Ld == lengths[-1]:
            from ess.structured import ssm_ess

            f = fs.factors
            st = ssm_ess(
                f.A[:sample_channels],
                f.B[:sample_channels],
                f.C[:sample_channels],
                transition=f.transition,
                method="both",
            )
            agree = int(sum(np.array_equal(st.tolerance[i], res.tolerance[i]) for i in range(sample_channels)))
            ent_diff = float(np.max(np.abs(st.entropy - res.entropy) / np.maximum(res.entropy, 1e-300)))
        ex.clear()
    p, loga = np.polyfit(np.log(lengths), np.log(times), 1)
    a = float(np.exp(loga))
    per_op = a * L**p
    dense_total = per_op * 1536 * 24
    print(
        f"  dense route (materialize=True), dense kernel on layer 0, {sample_channels} channels: "
        + ", ".join(f"L = {Ld}: {t * 1e3:.1f} ms per operator" for Ld, t in zip(lengths, times))
    )
    print(
        f"  dense fit: time(L) = {a:.3e} * L^{p:.2f} s per operator (least squares on L = {lengths}); at L = {L}: "
        f"{per_op:.1f} s per operator x 1536 channels x 24 layers = {dense_total:.0f} s = {dense_total / 3600:.1f} h "
        f"(extrapolated; operator formation not counted)"
    )
    print(f"  ratio dense / structured: {dense_total / t_s:.0f} x")
    print(
        f"  check at L = {lengths[-1]}, {sample_channels} channels of layer 0: tolerance-ESS curves identical for "
        f"{agree}/{sample_channels}, max relative entropy difference {ent_diff:.1e}"
    )


def gram_eigvalsh_head(A: np.ndarray) -> tuple:
    """Tolerance- and entropy-ESS of one L x L operator: per split, the Gram matrix of the smaller side of
    the block and ``numpy.linalg.eigvalsh`` (singular values as square roots of the eigenvalues)."""
    L = A.shape[0]
    tol = np.zeros(L)
    ent = np.zeros(L)
    eps = np.finfo(np.float64).eps
    for t in range(1, L):
        H = A[t:, :t]
        G = H.T @ H if t <= L - t else H @ H.T
        s = np.sqrt(np.clip(np.linalg.eigvalsh(G), 0, None))[::-1]
        if s[0] == 0:
            continue
        tol[t] = np.sum(s > max(L - t, t) * eps * s[0])
        p = s / s.sum()
        p = p[p > 0]
        ent[t] = np.exp(-(p * np.log(p)).sum())
    return tol, ent


def torch_svdvals_loop_head(A, positions, eps: float) -> tuple:
    """The ESS paper's loop on one operator (a torch tensor on its device): one ``torch.linalg.svdvals`` per
    split, tolerance- and entropy-ESS at ``positions``."""
    tol, ent = [], []
    L = A.shape[-1]
    for t in positions:
        if t == 0:
            tol.append(0.0)
            ent.append(0.0)
            continue
        s = torch.linalg.svdvals(A[t:, :t])
        smax = s[0]
        tol.append(float((s > max(L - t, t) * eps * smax).sum()))
        p = s / s.sum()
        p = p[p > 0]
        ent.append(float(torch.exp(-(p * torch.log(p)).sum())) if float(smax) > 0 else 0.0)
    return np.array(tol), np.array(ent)


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _layer_operators(model, tok, layer: str, device=None) -> tuple:
    """The operators of one attention layer as ``ess.analyze`` forms them (a torch tensor on the model's device
    when ``device`` is given, else numpy), and the time to form them."""
    from ess.analyze import discover
    from ess.operators.base import keep_on_device

    ex = dict(discover(model)[0])[layer]
    handles = ex.attach()
    try:
        with torch.no_grad():
            model(tok)
    finally:
        for h in handles:
            h.remove()
    t0 = time.perf_counter()
    if device is not None:
        with keep_on_device():
            T = ex.operators(0).operators
    else:
        T = ex.operators(0).operators
    dt = time.perf_counter() - t0
    ex.clear()
    return T, dt


def gpt2_bench(L: int, n_layers: int, sample_heads: int, blas_threads=None) -> None:
    """Section 1 of the module docs. ``blas_threads``: limit numpy's BLAS/LAPACK threads in the numpy loops
    (threadpoolctl); on a loaded machine the default threads of small eigensolves oversubscribe the cores
    and slow the baseline down many times."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=1024, n_positions=max(1024, L), n_embd=768, n_layer=12, n_head=12, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    tok = torch.randint(0, cfg.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))
    idx = sorted({round(i * 11 / max(n_layers - 1, 1)) for i in range(n_layers)}) if n_layers < 12 else list(range(12))
    layers = [f"transformer.h.{i}.attn" for i in idx]
    ess.analyze(model, tok[:, :32], progress=False, layers=layers)  # warm-up (imports, thread pools)

    t0 = time.perf_counter()
    rep = ess.analyze(model, tok, progress=False, layers=layers)
    t_ess = time.perf_counter() - t0
    n_heads = len(rep.table[["layer", "index"]].drop_duplicates())
    # the kernel alone on the same operators
    t_kernel = 0.0
    t_form = 0.0
    for name in layers:
        T, dt = _layer_operators(model, tok, name)
        t_form += dt
        t0 = time.perf_counter()
        ess.effective_state_size(T, method="both")
        t_kernel += time.perf_counter() - t0
    fwd = rep.meta["seconds_forward"]
    rest = t_ess - fwd - t_kernel
    print(
        f"\nGPT-2-small shape, random weights, L = {L}, attn_implementation = {model.config._attn_implementation}; "
        f"layers {idx} ({n_heads} heads); analyze's default method = {rep.meta['method']!r} (both curves)"
    )
    print(
        f"  ess.analyze end to end:            {t_ess:8.2f} s = {t_ess / n_heads:.3f} s per head  (forward of the "
        f"whole model {fwd:.2f} s; kernel alone on the same operators {t_kernel:.2f} s = {t_kernel / t_ess:.0%}; "
        f"the rest (captures, operator formation {t_form:.2f} s + checks, report) {rest:.2f} s = {rest / t_ess:.0%})"
    )

    # --- the pipeline a user would write: eager attention with output_attentions, a numpy loop per head
    m2 = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "_attn_implementation": "eager"}))
    m2.load_state_dict(model.state_dict())
    m2.config._attn_implementation = "eager"
    m2.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        att = m2(tok, output_attentions=True).attentions
    t_fwd = time.perf_counter() - t0
    assert att is not None and len(att) == 12, "output_attentions returned nothing"
    A = [a[0].double().numpy() for a in att]  # 12 x (12, L, L)
    sample = [(idx[k % len(idx)], h) for k, h in enumerate([0, 11, 3, 7, 5, 9][:sample_heads])]
    res = {}
    import contextlib

    if blas_threads:
        print(f"  numpy loops with BLAS/LAPACK limited to {blas_threads} thread(s) (threadpoolctl)")
    for label, fn in (("Gram + eigvalsh", gram_eigvalsh_head), ("svd(compute_uv=False)", naive_head)):
        t0 = time.perf_counter()
        agree = 0
        max_ent_diff = 0.0
        for lay, h in sample:
            if blas_threads:
                from threadpoolctl import threadpool_limits

                limit = threadpool_limits(limits=blas_threads)
            else:
                limit = contextlib.nullcontext()
            with limit:
                tol, ent = fn(A[lay][h])
            r = rep.table[(rep.table.layer == f"transformer.h.{lay}.attn") & (rep.table["index"] == h)].sort_values(
                "position"
            )
            agree += int(np.array_equal(r.ess_tolerance.to_numpy(), tol))
            max_ent_diff = max(
                max_ent_diff,
                float(np.max(np.abs(r.ess_entropy.to_numpy() - ent) / np.maximum(r.ess_entropy.to_numpy(), 1e-300))),
            )
        per = (time.perf_counter() - t0) / len(sample)
        total = t_fwd + per * n_heads
        res[label] = total
        print(
            f"  eager forward (output_attentions) {t_fwd:.2f} s + numpy loop {label}: {per:.3f} s/head on {len(sample)} "
            f"heads {sample} -> {total:.2f} s for {n_heads} heads = {total / n_heads:.3f} s per head; ratio pipeline / "
            f"ess.analyze = {total / t_ess:.2f} x; curves vs ess: tolerance identical on {agree}/{len(sample)} heads, "
            f"max relative entropy difference {max_ent_diff:.1e}"
        )
    print(
        f"  kernel-only ratio (numpy Gram + eigvalsh loop / kernel, ESS part alone): "
        f"{(res['Gram + eigvalsh'] - t_fwd) / t_kernel:.2f} x"
    )


def _timed_analyze(model, tok, **kw):
    dev = next(model.parameters()).device
    _sync(dev)
    t0 = time.perf_counter()
    rep = ess.analyze(model, tok, progress=False, **kw)
    _sync(dev)
    return rep, time.perf_counter() - t0


def gpu_bench(tiny: bool, all_splits: bool) -> None:
    """Section 4 of the module docs. The GPU timings are taken on evenly spaced subsets of the split points
    (``ess.split_points(L, num=...)``; every block is timed at its own size, so the extrapolation to all
    splits is an unbiased estimate of the total) unless ``all_splits``; the CPU kernel always runs all splits
    (its sweep passes every split)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        print(f"\nGPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    else:
        print(
            f"\nno CUDA device: the GPU section runs on CPU torch (device='cpu', same code){' at a tiny size' if tiny else ''}"
        )
    eps = float(np.finfo(np.float64).eps)
    if tiny:
        g_L, g_layers, g_heads, g_embd, g_num = 48, 2, 4, 64, 12
        l_L, l_heads, l_hd, n_split_sample = 64, 4, 16, 8
    else:
        g_L, g_layers, g_heads, g_embd, g_num = 1024, 12, 12, 768, 128
        l_L, l_heads, l_hd, n_split_sample = 4096, 32, 128, 64
    g_pos = None if all_splits else ess.split_points(g_L, num=g_num)
    g_np = g_L if g_pos is None else len(g_pos)
    g_x = g_L / g_np

    # --- GPT-2-small, all heads
    cfg = GPT2Config(
        vocab_size=1024,
        n_positions=max(1024, g_L),
        n_embd=g_embd,
        n_layer=g_layers,
        n_head=g_heads,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval().to(dev)
    tok = torch.randint(0, cfg.vocab_size, (1, g_L), generator=torch.Generator().manual_seed(1)).to(dev)
    _timed_analyze(model, tok[:, :32], device=dev)  # warm-up
    n_heads = g_layers * g_heads
    print(
        f"GPT-2-small shape (layers {g_layers}, heads {g_heads}), random weights, L = {g_L}, {n_heads} heads; GPU times on "
        f"{g_np} evenly spaced splits, x {g_x:.1f} extrapolated to all splits:"
    )
    reps = {}
    for prec in ("float64", "float32"):
        rep, t = _timed_analyze(model, tok, device=dev, precision=prec, memory_budget="64G", positions=g_pos)
        reps[prec] = rep
        te = rep.meta["seconds_ess"]
        print(
            f"  ess.analyze, GPU route ({dev}), {prec}: {t:8.2f} s on the subset (forward {rep.meta['seconds_forward']:.2f} s, "
            f"ESS part {te:.2f} s) -> ESS part on all splits ~ {te * g_x:.1f} s = {te * g_x / n_heads:.3f} s per head"
        )
    key = ["layer", "index", "position"]
    a, b = reps["float64"].table.sort_values(key), reps["float32"].table.sort_values(key)
    e64 = a.ess_entropy.to_numpy()
    print(
        f"  float32 vs float64 route (default threshold, whose eps is float32's in float32 mode): tolerance counts differ "
        f"at {np.mean(a.ess_tolerance.to_numpy() != b.ess_tolerance.to_numpy()):.2%} of (head, split); max relative "
        f"entropy difference {np.max(np.abs(b.ess_entropy.to_numpy() - e64) / np.maximum(e64, 1e-300)):.1e}"
    )
    # per-split svdvals loop on the GPU (the paper's code), on a sample of heads
    T0, _ = _layer_operators(model, tok, "transformer.h.0.attn", device=dev)
    for rtol in (1e-3,):
        r64 = ess.effective_state_size(T0, method="both", rtol=rtol, device=dev, positions=g_pos)
        r32 = ess.effective_state_size(T0, method="both", rtol=rtol, device=dev, positions=g_pos, precision="float32")
        print(
            f"  float32 vs float64 route, layer 0, rtol = {rtol:g}: tolerance counts differ at "
            f"{np.mean(r64.tolerance != r32.tolerance):.2%} of (head, split); max relative entropy difference "
            f"{np.max(np.abs(r32.entropy - r64.entropy) / np.maximum(r64.entropy, 1e-300)):.1e}"
        )
    ns = 2 if not tiny else 1
    _sync(dev)
    t0 = time.perf_counter()
    agree = 0
    for h in range(ns):
        tol, ent = torch_svdvals_loop_head(T0[h], range(g_L) if g_pos is None else g_pos, eps)
        r = a[(a.layer == "transformer.h.0.attn") & (a["index"] == h)]
        agree += int(np.array_equal(r.ess_tolerance.to_numpy(), tol))
    _sync(dev)
    per = (time.perf_counter() - t0) / ns * g_x
    t64 = reps["float64"].meta["seconds_ess"] * g_x
    print(
        f"  per-split torch.linalg.svdvals loop on {dev}: ~{per:.2f} s per head on all splits ({ns} heads timed) -> "
        f"{per * n_heads:.1f} s for {n_heads} (extrapolated); ratio loop / ess GPU route (ESS part, float64) = "
        f"{per * n_heads / t64:.1f} x; tolerance curves identical on {agree}/{ns}"
    )
    # the CPU kernel on the same operators (one layer, extrapolated)
    T0h = T0.cpu().numpy()
    t0 = time.perf_counter()
    ess.effective_state_size(T0h, method="both")
    t_cpu = (time.perf_counter() - t0) * g_layers
    print(
        f"  CPU kernel (host, {os.cpu_count()} cpus): {t_cpu / g_layers:.2f} s per layer of {g_heads} heads -> {t_cpu:.1f} s "
        f"for {g_layers} layers; ratio CPU kernel / GPU route (ESS part, float64) = {t_cpu / t64:.1f} x"
    )
    del model, T0, reps
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # --- one Llama-7B-shaped layer
    lcfg = LlamaConfig(
        vocab_size=1024,
        hidden_size=l_heads * l_hd,
        intermediate_size=(11008 if not tiny else 128),
        num_hidden_layers=1,
        num_attention_heads=l_heads,
        num_key_value_heads=l_heads,
        max_position_embeddings=max(4096, l_L),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(lcfg).eval().to(dev)
    tok = torch.randint(0, 1024, (1, l_L), generator=torch.Generator().manual_seed(2)).to(dev)
    pos = ess.split_points(l_L, num=n_split_sample)
    print(
        f"Llama-7B-shaped layer ({l_heads} heads, head dim {l_hd}, hidden {l_heads * l_hd}), random weights, "
        f"L = {l_L}: times on {len(pos)} evenly spaced splits (ess.split_points(L, num={n_split_sample})), "
        f"extrapolated x {l_L / len(pos):.0f} to all splits (every block is timed at its own size)"
    )
    for prec in ("float64", "float32"):
        rep, t = _timed_analyze(lm, tok, device=dev, precision=prec, positions=pos, memory_budget="64G")
        te = rep.meta["seconds_ess"]
        print(
            f"  ess.analyze GPU route, {prec}: {t:.2f} s on the subset (ESS part {te:.2f} s) -> ESS of all "
            f"{l_L} splits x {l_heads} heads ~ {te * l_L / len(pos):.0f} s (extrapolated)"
        )
    Tl, _ = _layer_operators(lm, tok, "model.layers.0.self_attn", device=dev)
    _sync(dev)
    t0 = time.perf_counter()
    torch_svdvals_loop_head(Tl[0], pos, eps)
    _sync(dev)
    per = time.perf_counter() - t0
    print(
        f"  per-split torch.linalg.svdvals loop, one head on the subset: {per:.2f} s -> {per * l_heads * l_L / len(pos):.0f} s "
        f"for {l_heads} heads x {l_L} splits (extrapolated)"
    )
    t0 = time.perf_counter()
    ess.effective_state_size(Tl[:1].cpu().numpy(), method="both", positions=pos)
    per = time.perf_counter() - t0
    print(
        f"  CPU kernel, one head on the subset: {per:.2f} s (its sweep passes every split even for a subset; not "
        f"extrapolated) "
    )


def subset_errors() -> None:
    """Section 5 of the module docs: per-layer averages (mean over heads and splits) from subsets of split
    points against all splits, from one full run each (the curve at a split does not depend on the others)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from ess.models import builtin_inputs, load_builtin

    def report(label: str, rep, L: int, subsets) -> None:
        t = rep.table
        print(
            f"\n{label}: L = {L}, {len(rep.summary)} layers, {len(t[['layer', 'index']].drop_duplicates())} operators"
        )
        full = t.groupby("layer")[["ess_tolerance", "ess_entropy"]].mean()
        for name, p in subsets:
            sub = t[t.position.isin(p)].groupby("layer")[["ess_tolerance", "ess_entropy"]].mean()
            rel = (sub - full).abs() / full.abs()
            print(
                f"  {name:28s} ({len(p):4d} splits, {L / len(p):5.1f}x less work): max relative error of a layer's "
                f"average: tolerance {rel.ess_tolerance.max():.2%}, entropy {rel.ess_entropy.max():.2%} "
                f"(mean over layers {rel.ess_tolerance.mean():.2%}, {rel.ess_entropy.mean():.2%})"
            )

    def subsets(L):
        return [(f"stride {s}", ess.split_points(L, stride=s)) for s in (4, 8, 32) if s < L] + [
            (f"log-spaced, num {n}", ess.split_points(L, num=n, spacing="log")) for n in (64,)
        ]

    L = 512
    cfg = GPT2Config(
        vocab_size=1024, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    g = GPT2LMHeadModel(cfg).eval()
    tok = torch.randint(0, 1024, (1, L), generator=torch.Generator().manual_seed(1))
    lay = [f"transformer.h.{i}.attn" for i in (0, 3, 7, 11)]
    report(
        "GPT-2-small shape, random weights, layers 0, 3, 7, 11",
        ess.analyze(g, tok, progress=False, layers=lay),
        L,
        subsets(L),
    )
    lcfg = LlamaConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(lcfg).eval()
    report(
        "Llama shape (4 layers, 8 heads of dim 64), random weights", ess.analyze(lm, tok, progress=False), L, subsets(L)
    )
    bm = load_builtin()
    inp = builtin_inputs(8)
    Lb = int(inp.shape[1])
    report(
        "built-in hybrid model, 8 shipped MQAR sequences",
        ess.analyze(bm, inp, progress=False),
        Lb,
        [(f"stride {s}", ess.split_points(Lb, stride=s)) for s in (2, 4, 8)],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--gpt2-layers", type=int, default=2, help="GPT-2 layers analysed (evenly spread over the 12)")
    ap.add_argument("--sample-heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--mamba-only", action="store_true", help="run only the Mamba-130m-shaped section")
    ap.add_argument("--mamba-length", type=int, default=2048)
    ap.add_argument("--mamba-layers", type=int, default=24, help="layers analysed (the rest extrapolated)")
    ap.add_argument("--gpt2-only", action="store_true", help="run only the GPT-2 section")
    ap.add_argument("--blas-threads", type=int, default=None, help="BLAS threads of the numpy loops (default: numpy's)")
    ap.add_argument("--gpu", action="store_true", help="run only the GPU section (section 4)")
    ap.add_argument(
        "--tiny", action="store_true", help="with --gpu: tiny sizes (a smoke test; CPU torch without a GPU)"
    )
    ap.add_argument("--gpu-all-splits", action="store_true", help="with --gpu: time GPT-2 on all splits, not a subset")
    ap.add_argument("--subset-errors", action="store_true", help="run only section 5")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}, load average {os.getloadavg()[0]:.1f}"
    )
    if args.gpu:
        gpu_bench(args.tiny, args.gpu_all_splits)
        return
    if args.subset_errors:
        subset_errors()
        return
    if args.mamba_only:
        mamba_bench(args.mamba_length, n_layers=args.mamba_layers)
        return
    gpt2_bench(args.length, args.gpt2_layers, args.sample_heads, args.blas_threads)
    if args.gpt2_only:
        return

    # --- built-in model end to end
    from ess.models import SEP, builtin_info, builtin_inputs, load_builtin

    bm = load_builtin()
    inp = builtin_inputs(8)
    t0 = time.perf_counter()
    r2 = ess.analyze(bm, inp, markers=[SEP], progress=False)
    t_b = time.perf_counter() - t0
    n_ops = len(r2.table[["layer", "index"]].drop_duplicates())
    print(
        f"\nbuilt-in hybrid model (MQAR accuracy {builtin_info()['accuracy']:.3f}), 8 shipped sequences, L = {inp.shape[1]}, "
        f"{n_ops} operators per sequence: ess.analyze end to end {t_b:.2f} s"
    )
    cols = [
        "layer",
        "kind",
        "n_operators",
        "tss",
        "avg_ess_tolerance",
        "avg_ess_entropy",
        "total_ess",
        "utilisation",
        "fill",
        "saturated",
        "collapsed",
    ]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(r2.summary[cols].to_string(index=False))
    mamba_bench(args.mamba_length, n_layers=args.mamba_layers)


if __name__ == "__main__":
    main()
