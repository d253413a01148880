"""Benchmark of ess.analyze end to end.

1. A GPT-2-small-shaped random model (12 layers x 12 heads, d_model 768, L = 512; vocabulary
   reduced to 1024, which does not touch the attention) built from a config (no download):
   ``ess.analyze`` against the naive pipeline a user would write (eager attention with
   ``output_attentions=True``, then a numpy loop over split points with one SVD per split and
   head). The naive ESS loop is timed on a sample of heads and extrapolated to all 144; its curves
   are checked against ess on those heads.
2. The built-in hybrid model on its shipped MQAR inputs, end to end.
3. A Mamba-130m-shaped random model (24 layers, d_model 768, expand 2: 1536 channels, d_state 16,
   transformers ``MambaForCausalLM`` from a config) at ``--mamba-length`` (default 2048), end to end through
   the structured route, against the dense route (``materialize=True``: the operators formed and sent to the
   dense kernel). The dense route is timed on layer 0 at L = 128 and 256 on a sample of channels (same
   operators as ``analyze`` forms), fitted with a least-squares power law ``time = a * L^p`` per operator and
   extrapolated to all channels and layers at the target length; the curves of the sampled channels are
   compared with the structured ones at L = 256 (tolerance counts equal, entropy relative difference).

    python benches/analyze.py [--length 512] [--sample-heads 2] [--threads N] [--mamba-only] [--mamba-length 2048]

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

    cfg = MambaConfig(vocab_size=1024, hidden_size=768, state_size=16, num_hidden_layers=24, expand=2, conv_kernel=4,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
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
    print(f"  ess.analyze, structured route, end to end on {n_layers} of 24 layers: {t_s:8.1f} s wall ({cpu_s:.1f} s cpu; "
          f"forward of the whole model {rep.meta['seconds_forward']:.1f} s, factors + checks + ESS "
          f"{rep.meta['seconds_ess']:.1f} s = {per_layer:.1f} s per layer), {n_ops} operators; max reconstruction error "
          f"in the notes: {max(float(n.split('rel. err ')[1].rstrip(')')) for n in rep.summary.note):.1e}")
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
            st = ssm_ess(f.A[:sample_channels], f.B[:sample_channels], f.C[:sample_channels], transition=f.transition,
                         method="both")
            agree = int(sum(np.array_equal(st.tolerance[i], res.tolerance[i]) for i in range(sample_channels)))
            ent_diff = float(np.max(np.abs(st.entropy - res.entropy) / np.maximum(res.entropy, 1e-300)))
        ex.clear()
    p, loga = np.polyfit(np.log(lengths), np.log(times), 1)
    a = float(np.exp(loga))
    per_op = a * L**p
    dense_total = per_op * 1536 * 24
    print(f"  dense route (materialize=True), dense kernel on layer 0, {sample_channels} channels: "
          + ", ".join(f"L = {Ld}: {t * 1e3:.1f} ms per operator" for Ld, t in zip(lengths, times)))
    print(f"  dense fit: time(L) = {a:.3e} * L^{p:.2f} s per operator (least squares on L = {lengths}); at L = {L}: "
          f"{per_op:.1f} s per operator x 1536 channels x 24 layers = {dense_total:.0f} s = {dense_total / 3600:.1f} h "
          f"(extrapolated; operator formation not counted)")
    print(f"  ratio dense / structured: {dense_total / t_s:.0f} x")
    print(f"  check at L = {lengths[-1]}, {sample_channels} channels of layer 0: tolerance-ESS curves identical for "
          f"{agree}/{sample_channels}, max relative entropy difference {ent_diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--sample-heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--mamba-only", action="store_true", help="run only the Mamba-130m-shaped section")
    ap.add_argument("--mamba-length", type=int, default=2048)
    ap.add_argument("--mamba-layers", type=int, default=24, help="layers analysed (the rest extrapolated)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mamba_only:
        mamba_bench(args.mamba_length, n_layers=args.mamba_layers)
        return
    from transformers import GPT2Config, GPT2LMHeadModel

    L = args.length
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}")
    cfg = GPT2Config(vocab_size=1024, n_positions=max(1024, L), n_embd=768, n_layer=12, n_head=12, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    tok = torch.randint(0, cfg.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))

    # --- ess.analyze (default attention implementation)
    t0 = time.perf_counter()
    rep = ess.analyze(model, tok, progress=False)
    t_ess = time.perf_counter() - t0
    n_heads = len(rep.table[["layer", "index"]].drop_duplicates())
    print(f"\nGPT-2-small shape, random weights, L = {L}, attn_implementation = {model.config._attn_implementation}: {n_heads} heads")
    print(f"  ess.analyze end to end:            {t_ess:8.2f} s  (forward {rep.meta['seconds_forward']:.2f} s, "
          f"operators + ESS {rep.meta['seconds_ess']:.2f} s)")

    # --- naive: eager attention with output_attentions, numpy per-split SVD loop
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
    sample = [(0, 0), (11, 11), (5, 3), (8, 7)][: args.sample_heads]
    t0 = time.perf_counter()
    agree = 0
    max_ent_diff = 0.0
    for (l, h) in sample:
        tol, ent = naive_head(A[l][h])
        r = rep.table[(rep.table.layer == f"transformer.h.{l}.attn") & (rep.table["index"] == h)].sort_values("position")
        agree += int(np.array_equal(r.ess_tolerance.to_numpy(), tol))
        max_ent_diff = max(max_ent_diff, float(np.max(np.abs(r.ess_entropy.to_numpy() - ent))))
    t_sample = time.perf_counter() - t0
    per_head = t_sample / len(sample)
    t_naive = t_fwd + per_head * n_heads
    print(f"  naive eager forward (output_attentions): {t_fwd:6.2f} s")
    print(f"  naive numpy per-split SVD: {per_head:.2f} s/head measured on {len(sample)} heads {sample}, "
          f"x {n_heads} heads = {per_head * n_heads:.1f} s (extrapolated)")
    print(f"  naive total (extrapolated):        {t_naive:8.2f} s")
    print(f"  ratio naive / ess.analyze:         {t_naive / t_ess:8.1f} x")
    print(f"  check on sampled heads: tolerance-ESS curves identical for {agree}/{len(sample)}, "
          f"max |entropy-ESS difference| = {max_ent_diff:.2e}")

    # --- built-in model end to end
    from ess.models import SEP, builtin_info, builtin_inputs, load_builtin

    bm = load_builtin()
    inp = builtin_inputs(8)
    t0 = time.perf_counter()
    r2 = ess.analyze(bm, inp, markers=[SEP], progress=False)
    t_b = time.perf_counter() - t0
    n_ops = len(r2.table[["layer", "index"]].drop_duplicates())
    print(f"\nbuilt-in hybrid model (MQAR accuracy {builtin_info()['accuracy']:.3f}), 8 shipped sequences, L = {inp.shape[1]}, "
          f"{n_ops} operators per sequence: ess.analyze end to end {t_b:.2f} s")
    cols = ["layer", "kind", "n_operators", "tss", "avg_ess_tolerance", "avg_ess_entropy", "total_ess", "utilisation", "fill", "saturated", "collapsed"]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(r2.summary[cols].to_string(index=False))
    mamba_bench(args.mamba_length, n_layers=args.mamba_layers)


if __name__ == "__main__":
    main()
