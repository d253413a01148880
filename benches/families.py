"""Structured vs dense route of ``ess.analyze``, per recurrent / state-space family (issue 12's benchmark table).

    PYTHONPATH=python python3 benches/families.py [--length 256] [--long-length 2048] [--fit-lengths 128 512]
                                                 [--threads 2] [--repeat 3] [--dense-max 60] [--sample-ops 4]
                                                 [--families mamba rwkv ...] [--ssd-state 128]

For each family of the installed transformers (5.x) a random-weight model is built from a config (no hub access)
with **one recurrent mixer layer** whose per-operator shape is the family's published one where it matters for the
cost (the state each operator carries, its head dimensions, its convolution taps), and only a few channels or heads
(the number of operators scales both routes alike, so it does not change the ratio; it keeps the dense route
affordable). ``ess.analyze(model, ids, method="both", layers=[mixer])`` is timed through the structured route
(factors to ``ess.structured``, ``O(L N^3)`` per operator) and with ``materialize=True`` (the ``L x L`` operators
formed and sent to the dense kernel), on the same inputs (``use_cache=False``: the hybrids' caches cannot be built
for a model without attention layers in transformers 5.24). Shapes used (operators = what ``analyze`` reports):

============================  ===========================================================================
family (mixer)                shape
============================  ===========================================================================
mamba, falcon_mamba, jamba    Mamba-1: d_state 16 per channel (mamba-130m / falcon-mamba-7b / Jamba, the
                              configs' defaults), conv 4, expand 2; hidden 16 -> 32 channels = 32 operators
mamba2, bamba, zamba2,        Mamba-2 (SSD): head_dim 64, d_state 128 (Mamba-2's published default and the
falcon_h1, nemotron_h,        default of mamba2 / nemotron_h; the transformers configs of bamba, falcon_h1
granitemoehybrid              and granitemoehybrid default to 256, zamba2 to 64: ``--ssd-state`` changes it
                              for all six), 1 group, conv 4, expand 2; hidden 64 -> 2 heads = 2 operators
lfm2 (Lfm2ShortConv)          gated short convolution, L_cache 3 taps (state 2); hidden 32 -> 32 operators
recurrent_gemma               RG-LRU: state 1 per channel; its block's Conv1d: width 4 (state 3);
                              lru_width 32 -> 32 operators each (two rows)
rwkv (RwkvSelfAttention)      RWKV-4 time mixing: state 1 per channel; 32 channels (layer 0 of a 2-layer
                              model: transformers' RWKV init divides by num_hidden_layers - 1)
xlstm (xLSTMLayer)            mLSTM: xLSTM-7B's head dims, d_qk 256 (qk_dim_factor 0.5), d_v 512;
                              embedding 1024, 2 heads -> 2 operators of state 256
qwen3_next                    gated delta rule: Qwen3-Next's key/value head dim 128 (state 128 per value
(Qwen3NextGatedDeltaNet)      channel, dense transition), 1 key head, 2 value heads -> 2 operators
============================  ===========================================================================

Columns of the table: family, mixer class, kind, number of operators, their state size (TSS), L, structured and
dense seconds (``ess.analyze`` wall time after a warm-up at L = 16; best of ``--repeat`` runs for a run under 10 s,
since another job may share the cores), dense / structured, the share
of (operator, split) pairs whose tolerance-ESS is equal in the two routes, the largest relative entropy-ESS
difference; then at ``--long-length`` the structured route measured directly and the dense route extrapolated:
the forward pass measured at that length (in the structured run) plus ``a * L^p`` seconds per operator, a
least-squares power law fitted on the dense route's ESS part (operator formation + kernel, ``meta["seconds_ess"]``
per operator) at ``--fit-lengths`` and ``--length`` (default 128, 256, 512: the dense kernel's cost per operator
jumps once ``L`` passes twice the state size, e.g. 50x from 128 to 256 at ``N = 128``, so lengths below ``2 N``
would give a meaningless exponent; ``p`` is printed per row). The dense route at a length is timed whole
(``analyze(materialize=True)``) unless the fit on the shorter lengths predicts more than ``--dense-max`` seconds:
then on ``--sample-ops`` operators spread evenly over the layer (formed as ``analyze`` forms them, sent to the
same kernel), extrapolated to all (said in the row). The dense kernel's time per operator depends on the
operator's conditioning (splits that take its accurate QR/SVD fallback), so it varies between the operators of a
layer and between families of the same shape, and the extrapolation is rough. A layer without a
structured extractor (recurrent_gemma's plain Conv1d) runs the dense kernel in both routes: its long-length
column is extrapolated for both. Tolerance-ESS mismatches are diagnosed against numpy's SVD (the distance of
the nearest singular value to the threshold ``max(t, L - t) eps sigma_1``, in units of ``eps sigma_1``).
A failure (an exception from ess, a mismatch beyond the routes' contract, an empty result) is printed in its
row and its traceback on stderr; the run goes on. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

_IDS = dict(vocab_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=8192)


def configs(ssd_state: int) -> Dict[str, Dict[str, Any]]:
    """family -> keyword arguments of its transformers config (the shapes of the module docstring)."""
    m1 = dict(_IDS, hidden_size=16, state_size=16, num_hidden_layers=1, expand=2, conv_kernel=4, time_step_rank=4)
    ssd = dict(mamba_n_heads=2, mamba_d_head=64, mamba_n_groups=1, mamba_d_state=ssd_state, mamba_d_conv=4)
    ssd.update(mamba_expand=2, mamba_chunk_size=64)
    return {
        "mamba": m1,
        "falcon_mamba": m1,
        "jamba": dict(
            _IDS,
            **_ATTN,
            hidden_size=16,
            num_hidden_layers=1,
            num_experts=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=16,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_dt_rank=4,
            use_mamba_kernels=False,
        ),
        "mamba2": dict(
            _IDS,
            hidden_size=64,
            num_hidden_layers=1,
            state_size=ssd_state,
            num_heads=2,
            head_dim=64,
            expand=2,
            n_groups=1,
            conv_kernel=4,
            chunk_size=64,
        ),
        "bamba": dict(_IDS, **_ATTN, **ssd, hidden_size=64, num_hidden_layers=1, attn_layer_indices=[]),
        "zamba2": dict(
            _IDS,
            **_ATTN,
            hidden_size=64,
            num_hidden_layers=1,
            layers_block_type=["mamba"],
            mamba_d_state=ssd_state,
            n_mamba_heads=2,
            mamba_ngroups=1,
            chunk_size=64,
            use_mamba_kernels=False,
        ),
        "falcon_h1": dict(_IDS, **_ATTN, **ssd, hidden_size=64, num_hidden_layers=1, mamba_d_ssm=128, head_dim=16),
        "nemotron_h": dict(
            _IDS,
            **_ATTN,
            hidden_size=64,
            layers_block_type=["mamba"],
            head_dim=16,
            ssm_state_size=ssd_state,
            mamba_num_heads=2,
            mamba_head_dim=64,
            n_groups=1,
            conv_kernel=4,
            expand=2,
            chunk_size=64,
            use_mamba_kernels=False,
        ),
        "granitemoehybrid": dict(
            _IDS,
            **_ATTN,
            **ssd,
            hidden_size=64,
            num_hidden_layers=1,
            layer_types=["mamba"],
            num_local_experts=2,
            num_experts_per_tok=1,
            shared_intermediate_size=64,
        ),
        "lfm2": dict(_IDS, **_ATTN, hidden_size=32, num_hidden_layers=1, layer_types=["conv"], conv_L_cache=3),
        "recurrent_gemma": dict(
            _IDS,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=1,
            lru_width=32,
            attention_window_size=16,
            conv1d_width=4,
            block_types=["recurrent"],
        ),
        "rwkv": dict(
            vocab_size=64,
            context_length=8192,
            hidden_size=32,
            num_hidden_layers=2,
            attention_hidden_size=32,
            intermediate_size=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "xlstm": dict(
            _IDS,
            hidden_size=1024,
            embedding_dim=1024,
            num_hidden_layers=1,
            num_blocks=1,
            num_heads=2,
            qk_dim_factor=0.5,
            v_dim_factor=1.0,
            chunk_size=64,
        ),
        "qwen3_next": dict(
            _IDS,
            **_ATTN,
            hidden_size=64,
            head_dim=16,
            num_hidden_layers=1,
            layer_types=["linear_attention"],
            linear_conv_kernel_dim=4,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_num_key_heads=1,
            linear_num_value_heads=2,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
    }


def build(family: str, kwargs: Dict[str, Any]) -> Any:
    import torch
    import transformers

    cfg = transformers.CONFIG_MAPPING[family](**kwargs)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def mixers(model: Any) -> List[Tuple[str, str, str]]:
    """(name, class, kind) of the first recurrent mixer of each class (attention layers left out)."""
    from ess.analyze import discover

    found, _ = discover(model)
    out: Dict[str, Tuple[str, str, str]] = {}
    for name, ex in found:
        cls = type(ex.module).__name__
        if ex.kind != "softmax_attention" and cls not in out:
            out[cls] = (name, cls, ex.kind)
    return list(out.values())


def inputs(L: int) -> Dict[str, Any]:
    import torch

    ids = torch.randint(1, 64, (1, L), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "use_cache": False}


def timed_analyze(model: Any, L: int, layer: str, materialize: bool, repeat: int = 1) -> Tuple[Any, float]:
    """``ess.analyze`` on ``layer`` at length ``L``: (report, wall seconds). ``repeat > 1``: a run that took less
    than ``REPEAT_BELOW`` s is repeated, the shortest time kept (another job shares the cores)."""
    import ess

    best, rep = float("inf"), None
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        rep = ess.analyze(model, inputs(L), layers=[layer], method="both", progress=False, materialize=materialize)
        dt = time.perf_counter() - t0
        if dt < best:
            best, ess_s = dt, rep.meta["seconds_ess"]
        if dt >= REPEAT_BELOW:
            break
    rep.meta["seconds_ess"] = ess_s  # of the fastest run
    return rep, best


REPEAT_BELOW = 10.0


def sampled_dense(model: Any, L: int, layer: str, k: int) -> Tuple[float, float, Any, Any, np.ndarray]:
    """The dense route at ``L`` on ``k`` operators spread evenly over the layer's (formed as
    ``analyze(materialize=True)`` forms them, sent to the same kernel): (forward seconds, ESS seconds per
    operator, tolerance, entropy, the operators' indices)."""
    import torch

    import ess
    from ess.analyze import discover

    ex = dict(discover(model)[0])[layer]
    handles = ex.attach()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            model(**inputs(L))
    finally:
        for h in handles:
            h.remove()
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    T = np.asarray(ex.operators(0).operators)
    t_form = time.perf_counter() - t0
    n = T.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))
    t0 = time.perf_counter()
    res = ess.effective_state_size(np.ascontiguousarray(T[idx]), method="both")
    per_op = t_form / n + (time.perf_counter() - t0) / len(idx)
    ex.clear()
    return t_fwd, per_op, res.tolerance, res.entropy, idx


def power_fit(lengths: List[int], per_op: List[float]) -> Tuple[float, float]:
    """Least-squares fit of ``time = a * L^p`` in log-log: (a, p)."""
    p, loga = np.polyfit(np.log(lengths), np.log(per_op), 1)
    return float(np.exp(loga)), float(p)


def diagnose(model: Any, layer: str, L: int, pairs: List[Tuple[int, int]], tol_s: Any, tol_d: Any) -> str:
    """For mismatching (operator, split) pairs: numpy's SVD count at the default threshold, and how far the
    nearest singular value lies from the threshold (units of eps sigma_1)."""
    import torch

    from ess.analyze import discover

    ex = dict(discover(model)[0])[layer]
    handles = ex.attach()
    try:
        with torch.no_grad():
            model(**inputs(L))
    finally:
        for h in handles:
            h.remove()
    T = np.asarray(ex.operators(0).operators)
    ex.clear()
    eps = np.finfo(np.float64).eps
    with_s = with_d = 0
    worst = 0.0
    for (i, t), a, b in zip(pairs, tol_s, tol_d):
        s = np.linalg.svd(T[i, t:, :t], compute_uv=False)
        thr = max(L - t, t) * eps * s[0]
        cnt = int(np.sum(s > thr))
        with_s += cnt == a
        with_d += cnt == b
        worst = max(worst, float(np.min(np.abs(s - thr)) / (eps * s[0])))
    return (
        f"{len(pairs)} mismatching splits: numpy SVD agrees with structured on {with_s}, with dense on {with_d}; "
        f"nearest singular value within {worst:.1f} eps sigma_1 of the threshold (largest over the splits)"
    )


class Row:
    """One table row: a family's mixer layer."""

    def __init__(self, family: str, layer: str, cls: str, kind: str) -> None:
        self.family, self.layer, self.cls, self.kind = family, layer, cls, kind
        self.n_ops = 0
        self.tss = float("nan")
        self.t_s = self.t_d = self.t_s_long = self.t_d_long = float("nan")
        self.equal = self.ent = self.p = float("nan")
        self.notes: List[str] = []
        self.failed: Optional[str] = None


def compare(rep_s: Any, sel: np.ndarray, tol_d: Any, ent_d: Any) -> Tuple[float, float, np.ndarray]:
    """Share of equal tolerance-ESS values, max relative entropy difference, mask of the mismatches (``sel``:
    the rows of the structured route's table that the dense curves are of)."""
    a = rep_s.table
    ts, es = a.ess_tolerance.to_numpy()[sel], a.ess_entropy.to_numpy()[sel]
    neq = ts != tol_d
    ent = float(np.max(np.abs(es - ent_d) / np.maximum(np.abs(ent_d), 1e-12))) if len(es) else float("nan")
    return float(1.0 - neq.mean()), ent, neq


def dense_point(row: Row, model: Any, L: int, args: argparse.Namespace, fit: List[Tuple[int, float]]) -> Any:
    """Time the dense route at ``L``: whole (``analyze(materialize=True)``) when the fit so far predicts at most
    ``--dense-max`` s, else on ``--sample-ops`` operators. Appends (L, ESS seconds per operator) to ``fit``;
    returns (dense seconds, tolerance, entropy, rows): the curves flat, operator-major, of the rows ``rows`` of the
    layer's table (all, or the sampled operators')."""
    predicted = 0.0
    if len(fit) >= 2:
        a, p = power_fit([x for x, _ in fit], [y for _, y in fit])
        predicted = a * L**p * row.n_ops
    if predicted <= args.dense_max:
        rep_d, t_d = timed_analyze(model, L, row.layer, True, args.repeat)
        if "structured" in set(rep_d.summary.route):
            raise RuntimeError("materialize=True still took the structured route")
        fit.append((L, rep_d.meta["seconds_ess"] / row.n_ops))
        tol, ent = rep_d.table.ess_tolerance.to_numpy(), rep_d.table.ess_entropy.to_numpy()
        return t_d, tol, ent, np.arange(len(tol))
    t_fwd, per_op, tol, ent, idx = sampled_dense(model, L, row.layer, args.sample_ops)
    k = len(idx)
    print(f"  dense route at L = {L} (predicted {predicted:.0f} s) timed on {k} of {row.n_ops} operators")
    if k < row.n_ops:
        cmp = " (curves compared on those)" if L == args.length else ""
        row.notes.append(f"dense at L = {L} timed on {k} of {row.n_ops} operators{cmp}, extrapolated")
    fit.append((L, per_op))
    rows = (idx[:, None] * L + np.arange(L)[None, :]).reshape(-1)
    return t_fwd + per_op * row.n_ops, tol.reshape(-1), ent.reshape(-1), rows


def run_row(row: Row, model: Any, args: argparse.Namespace) -> None:
    L, LL = args.length, args.long_length
    timed_analyze(model, 16, row.layer, False)  # warm-up: imports, thread pools, lazy kernels
    timed_analyze(model, 16, row.layer, True)
    rep_s, row.t_s = timed_analyze(model, L, row.layer, False, args.repeat)
    if len(rep_s.table) == 0:
        raise RuntimeError("empty result from the structured route")
    sm = rep_s.summary.iloc[0]
    row.n_ops, row.tss = int(sm.n_operators), float(sm.tss)
    structured = sm.route == "structured"
    if not structured:
        row.notes.append(f"no structured extractor ({sm.route} route in both runs)")
    fit: List[Tuple[int, float]] = []
    for Lf in sorted(set(args.fit_lengths) | {L}):
        if Lf != L:
            dense_point(row, model, Lf, args, fit)
            continue
        row.t_d, tol_d, ent_d, sel = dense_point(row, model, L, args, fit)
        check(row, model, rep_s, sel, tol_d, ent_d)
    a, row.p = power_fit([x for x, _ in fit], [y for _, y in fit])
    print(
        f"  dense fit: time(L) = {a:.3e} * L^{row.p:.2f} s per operator (least squares on L = {[x for x, _ in fit]}: "
        + ", ".join(f"{y * 1e3:.2f}" for _, y in fit)
        + " ms per operator)"
    )
    if LL:
        long_lengths(row, model, LL, a, row.p, structured)


def check(row: Row, model: Any, rep_s: Any, sel: np.ndarray, tol_d: Any, ent_d: Any) -> None:
    """Compare the routes' curves at ``--length``; mismatches diagnosed in the row's notes."""
    row.equal, row.ent, neq = compare(rep_s, sel, tol_d, ent_d)
    if neq.any():
        t = rep_s.table.iloc[sel]
        idx = np.flatnonzero(neq)[:50]
        pairs = [(int(t["index"].iloc[j]), int(t.position.iloc[j])) for j in idx]
        L = int(rep_s.meta["length"])
        row.notes.append(diagnose(model, row.layer, L, pairs, t.ess_tolerance.to_numpy()[idx], tol_d[idx]))
    if not row.ent <= 1e-6:
        row.notes.append("ENTROPY MISMATCH beyond 1e-6 relative")


def long_lengths(row: Row, model: Any, LL: int, a: float, p: float, structured: bool) -> None:
    if structured:
        rep_l, row.t_s_long = timed_analyze(model, LL, row.layer, False)
        fwd = rep_l.meta["seconds_forward"]
    else:  # the dense kernel in both routes: not run at this length
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            model(**inputs(LL))
        fwd = time.perf_counter() - t0
    row.t_d_long = fwd + a * LL**p * row.n_ops
    if not structured:
        row.t_s_long = row.t_d_long
        row.notes.append(f"L = {LL}: both extrapolated")


def fmt(x: float, spec: str = "") -> str:
    """``spec`` if given, else three significant digits or so (no exponent above 1e-3)."""
    if x != x:
        return ""
    if spec:
        return format(x, spec)
    return format(x, ".0f" if abs(x) >= 100 else ".1f" if abs(x) >= 10 else ".2f" if abs(x) >= 0.1 else ".3f")


def table(rows: List[Row], L: int, LL: int) -> str:
    head = (
        f"| family | mixer | kind | ops | TSS | L | structured [s] | dense [s] | dense / structured | equal tol-ESS "
        f"| max rel. entropy diff | dense fit p | L = {LL}: structured [s] | dense [s] (extrapolated) | ratio "
        "| notes |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        if r.failed:
            lines.append(f"| {r.family} | {r.cls} | {r.kind} | | | {L} | | | | | | | | | | FAILED: {r.failed} |")
            continue
        lines.append(
            f"| {r.family} | {r.cls} | {r.kind} | {r.n_ops} | {fmt(r.tss, '.0f')} | {L} | {fmt(r.t_s)} | {fmt(r.t_d)} "
            f"| {fmt(r.t_d / r.t_s)}x | {fmt(100 * r.equal, '.2f')} % | {fmt(r.ent, '.1e')} | {fmt(r.p)} "
            f"| {fmt(r.t_s_long)} | {fmt(r.t_d_long)} | {fmt(r.t_d_long / r.t_s_long)}x "
            f"| {'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def bench_family(family: str, kwargs: Dict[str, Any], args: argparse.Namespace) -> List[Row]:
    rows: List[Row] = []
    try:
        model = build(family, kwargs)
        found = mixers(model)
        if not found:
            raise RuntimeError("no recurrent mixer found")
    except Exception as e:  # a failure is a row, not the end of the run
        traceback.print_exc()
        row = Row(family, "", "", "")
        row.failed = f"{type(e).__name__}: {e}"[:300]
        return [row]
    for layer, cls, kind in found:
        row = Row(family, layer, cls, kind)
        rows.append(row)
        print(f"\n{family}: {layer} ({cls}, {kind})", flush=True)
        t0 = time.perf_counter()
        try:
            run_row(row, model, args)
        except Exception as e:
            traceback.print_exc()
            row.failed = f"{type(e).__name__}: {e}"[:300]
        print(
            f"  {row.n_ops} operators, TSS {fmt(row.tss, '.0f')}; L = {args.length}: structured {fmt(row.t_s)} s, "
            f"dense {fmt(row.t_d)} s; equal tolerance-ESS {fmt(100 * row.equal, '.2f')} %, max relative entropy "
            f"difference {fmt(row.ent, '.1e')}; L = {args.long_length}: structured {fmt(row.t_s_long)} s, dense "
            f"{fmt(row.t_d_long)} s (extrapolated); {'; '.join(row.notes)} [{time.perf_counter() - t0:.0f} s]"
            + (f" FAILED: {row.failed}" if row.failed else ""),
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=256, help="L of the measured comparison")
    ap.add_argument("--long-length", type=int, default=2048, help="structured measured, dense extrapolated (0: skip)")
    ap.add_argument("--fit-lengths", type=int, nargs="+", default=[128, 512], help="dense fit lengths besides --length")
    ap.add_argument("--repeat", type=int, default=3, help=f"best of N for runs under {REPEAT_BELOW:.0f} s")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and RAYON_NUM_THREADS (if not set)")
    ap.add_argument("--dense-max", type=float, default=60.0, help="predicted dense seconds above which to sample")
    ap.add_argument("--sample-ops", type=int, default=4, help="operators timed when the dense route is sampled")
    ap.add_argument("--families", nargs="+", default=None, help="default: all")
    ap.add_argument("--ssd-state", type=int, default=128, help="d_state of the Mamba-2 family")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # before the kernel's first call

    import torch
    import transformers

    import ess

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cfgs = configs(args.ssd_state)
    fams = args.families or list(cfgs)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}, load average "
        f"{os.getloadavg()[0]:.1f}; ess {ess.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; L = {args.length}, long L = {args.long_length}, fit lengths "
        f"{args.fit_lengths} + [{args.length}]"
    )
    t0 = time.perf_counter()
    rows: List[Row] = []
    for fam in fams:
        rows += bench_family(fam, cfgs[fam], args)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()}\n")
    print(table(rows, args.length, args.long_length))
    bad = [r for r in rows if r.failed or r.equal != 1.0 or not r.ent <= 1e-6]
    if bad:
        print("\nnot in agreement or failed: " + ", ".join(f"{r.family} ({r.cls})" for r in bad))


if __name__ == "__main__":
    main()
