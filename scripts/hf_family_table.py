#!/usr/bin/env python3
"""Table of the Hugging Face attention families ess analyses (issue 11): for each family, a tiny
random-weight causal LM built from the config in ``tests/hf_families.py`` (installed transformers,
no download), its attention layers found and captured as ``ess.analyze`` does (``discover``), and
every head's operator compared with the model's own eager attention probabilities
(``attn_implementation="eager"``, ``output_attentions=True``) on a left-padded batch.

    PYTHONPATH=python python3 scripts/hf_family_table.py [--length 24] [--pad 3] [--dtype float32]
                                                          [--only FAMILY,...] [--markdown]

Columns: family, attention class, extractor, attention layers x query heads, whether a sliding
window shorter than the sequence acts in some layer, max |operator - eager probability| over every
head, layer, sample and real (unpadded) query row, and seconds (wall time of the captured forward
plus building every operator, which includes ess's run-time check; the model build and the eager
reference are timed apart in the last column). Two extra rows make the model-specific terms act:
``gemma2+softcap`` (query and key projections scaled by 40, so logits run far past the cap; the
column ``uncapped`` gives how far a softmax without the cap would be) and ``gpt_oss+sinks``
(sinks set to linspace(-1, 2); ``rows`` gives the range of the operator's row sums).

Exit status 1 when any family exceeds ``--tol`` (default 1e-6) or fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tiny configs the tests use


def _inputs(torch: Any, B: int, L: int, pad: int, vocab: int) -> Tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :pad] = 0  # sample 1 left-padded
    return ids, mask


def _tweak(model: Any, variant: str, torch: Any) -> None:
    """Make gemma2's soft-cap or gpt-oss's sinks act."""
    with torch.no_grad():
        for layer in model.model.layers:
            att = layer.self_attn
            if variant == "softcap":
                att.q_proj.weight.mul_(40.0)
                att.k_proj.weight.mul_(40.0)
            elif variant == "sinks":
                att.sinks.copy_(torch.linspace(-1.0, 2.0, att.sinks.numel()))


def measure(family: str, variant: Optional[str], L: int, pad: int, dtype: str) -> Dict[str, Any]:
    import torch
    from hf_families import VOCAB, WINDOW, build

    from ess.analyze import discover

    t0 = time.perf_counter()
    model = build(family, "eager", dtype=getattr(torch, dtype))
    if variant:
        _tweak(model, variant, torch)
    ids, mask = _inputs(torch, 2, L, pad, VOCAB)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    probs = [a for a in ref.attentions if a is not None]  # hybrids: None for recurrent layers
    t_ref = time.perf_counter() - t0

    t1 = time.perf_counter()
    found, skipped = discover(model)
    handles: List[Any] = []
    try:
        for _, ex in found:
            handles += ex.attach()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    att = [(n, e) for n, e in found if e.kind == "softmax_attention"]
    if len(att) != len(probs):
        raise RuntimeError(f"{len(att)} attention extractors for {len(probs)} eager attention layers")
    worst, sliding, heads, rowsums = 0.0, False, 0, []
    for (_, ex), p in zip(att, probs):
        for b in range(2):
            s = ex.operators(b)
            T = s.operators
            rows = slice(pad, None) if b == 1 else slice(None)
            worst = max(worst, float(np.abs(T[:, rows] - p[b, :, rows].double().numpy()).max()))
            if b == 0 and L > WINDOW:  # a window shorter than the sequence: keys WINDOW back or more get 0
                sliding = sliding or bool(np.all(np.tril(T, -WINDOW) == 0))
            rowsums.append(T[:, rows].sum(-1))
        heads = int(T.shape[0])
    secs = time.perf_counter() - t1
    same = torch.equal(out.logits, ref.logits)  # the capture leaves the model's outputs unchanged
    row = {
        "family": family + (f"+{variant}" if variant else ""),
        "cls": type(att[0][1].module).__name__,
        "extractor": type(att[0][1]).__name__,
        "layers": f"{len(att)}x{heads}",
        "window": "yes" if sliding else "no",
        "err": worst,
        "secs": secs,
        "ref_secs": t_ref,
        "skipped": [t for _, t in skipped],
        "others": sorted({type(e.module).__name__ for _, e in found if e.kind != "softmax_attention"}),
        "outputs_same": same,
    }
    rs = np.concatenate([r.ravel() for r in rowsums])
    row["rows"] = f"{rs.min():.2f}-{rs.max():.2f}"
    if variant == "softcap":
        ex = att[0][1]
        cap = ex._cap
        q = cap["q"][0].double()
        k = cap["k"][0].double()
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        raw = torch.einsum("hld,hsd->hls", q, k) * float(cap["scaling"])
        nocap = torch.softmax(raw + cap["mask"][0].double(), dim=-1)
        row["uncapped"] = float((nocap - probs[0][0].double()).abs().max())
        row["max_logit_over_cap"] = float(raw.abs().max()) / float(cap["softcap"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=24, help="sequence length (default 24)")
    ap.add_argument("--pad", type=int, default=3, help="left padding of sample 1 (default 3)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--only", default="", help="comma-separated families")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()

    import torch
    import transformers
    from hf_families import FAMILIES

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    runs: List[Tuple[str, Optional[str]]] = [(f, None) for f in FAMILIES]
    runs += [("gemma2", "softcap"), ("gpt_oss", "sinks")]
    if args.only:
        want = set(args.only.split(","))
        runs = [r for r in runs if r[0] in want or f"{r[0]}+{r[1]}" in want]
    print(
        f"# transformers {transformers.__version__}, torch {torch.__version__}, {args.dtype}, "
        f"batch 2 x length {args.length} (sample 1 left-padded by {args.pad}), "
        f"{torch.get_num_threads()} torch threads"
    )
    head = ["family", "attention class", "extractor", "layers x heads", "window<L", "max |T - eager|", "seconds"]
    head += ["build+eager s", "row sums", "other mixers analysed"]
    rows, bad = [], []
    for fam, var in runs:
        try:
            r = measure(fam, var, args.length, args.pad, args.dtype)
        except Exception as e:  # noqa: BLE001 - a failing family is a row of the table
            bad.append(f"{fam}{'+' + var if var else ''}: {type(e).__name__}: {e}")
            continue
        if not (r["err"] <= args.tol) or r["skipped"] or not r["outputs_same"]:
            bad.append(f"{r['family']}: err {r['err']:.2e}, skipped {r['skipped']}, outputs same {r['outputs_same']}")
        extra = ""
        if "uncapped" in r:
            extra = (
                f" (logits up to {r['max_logit_over_cap']:.0f}x the cap; uncapped softmax off by {r['uncapped']:.2f})"
            )
        rows.append(
            [
                r["family"],
                r["cls"],
                r["extractor"].replace("AttentionExtractor", ""),
                r["layers"],
                r["window"],
                f"{r['err']:.1e}{extra}",
                f"{r['secs']:.2f}",
                f"{r['ref_secs']:.2f}",
                r["rows"],
                ", ".join(r["others"]) or "-",
            ]
        )
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
        for r in rows:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print(f"# {len(rows)} rows, {len(bad)} problems")
    for b in bad:
        print("PROBLEM", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
