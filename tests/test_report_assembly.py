"""ess.analyze's table and summary, built from numpy columns (category name columns, the summary grouped by one
integer key), equal a straightforward construction: one Python dict per row from the curves the kernel returned,
plain string columns, and the per-layer summary grouped by (sample, index) on each layer's rows."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch", "pandas", "pyarrow")
torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

import ess  # noqa: E402
from ess.models.model import HybridConfig, HybridLM  # noqa: E402
from ess.report import CATEGORY_COLUMNS, TABLE_COLUMNS  # noqa: E402

AZ = sys.modules["ess.analyze"]


def _reference_table(seen, ids):
    """One dict per (layer, sample, operator, position), in analyze's order (layer, sample, operator, position)."""
    recs = []
    for name, s, kind, labels, tss, shared, tol, ent, P, L in seen:
        for i, lab in enumerate(labels):
            for j, t in enumerate(P.tolist()):
                recs.append(
                    {
                        "sample": s,
                        "layer": name,
                        "kind": kind,
                        "operator": lab,
                        "index": i,
                        "position": t,
                        "token": int(ids[s, t]),
                        "ess_tolerance": float(tol[i, j]),
                        "ess_entropy": float(ent[i, j]),
                        "tss": float(tss[i]),
                        "bound": min(t, L - t),
                        "shared": int(shared[i]),
                    }
                )
    return pd.DataFrame.from_records(recs, columns=list(TABLE_COLUMNS))


def _reference_summary(table, layer_meta, primary, sat, col):
    """The summary as first written: each layer's rows selected by name, operators grouped by the pair."""
    out = []
    for lm in layer_meta:
        d = table[table["layer"] == lm["layer"]]
        per_op = d.groupby(["sample", "index"]).agg(
            tol=("ess_tolerance", "mean"), ent=("ess_entropy", "mean"), tss=("tss", "first"), shared=("shared", "first")
        )
        att = d.assign(a=np.minimum(d["tss"].to_numpy(), d["bound"].to_numpy()))["a"].mean()
        prim = per_op["tol"] if primary == "tolerance" else per_op["ent"]
        avg = float(prim.mean())
        n = max(1, per_op.index.get_level_values(0).nunique())
        tss = float(per_op["tss"].mean())
        fill = avg / att if att > 0 else float("nan")
        out.append(
            {
                "layer": lm["layer"],
                "kind": lm["kind"],
                "module_type": lm["module_type"],
                "n_operators": int(per_op.groupby(level=1).ngroups),
                "channels": int(per_op["shared"].sum() // n),
                "tss": tss,
                "avg_ess_tolerance": float(per_op["tol"].mean()),
                "avg_ess_entropy": float(per_op["ent"].mean()),
                "max_ess_tolerance": float(d["ess_tolerance"].max()),
                "total_ess": float((prim * per_op["shared"]).sum()) / n,
                "total_tss": float((per_op["tss"] * per_op["shared"]).sum()) / n,
                "utilisation": avg / tss if tss > 0 else float("nan"),
                "attainable": float(att),
                "fill": fill,
                "saturated": bool(fill >= sat),
                "collapsed": bool(fill <= col),
                "note": lm["note"],
                "route": lm["route"],
            }
        )
    return pd.DataFrame(out)


def _mamba(n_layers):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(
        vocab_size=40, hidden_size=6, state_size=3, num_hidden_layers=n_layers, expand=2, conv_kernel=3
    )
    torch.manual_seed(0)
    return transformers.MambaForCausalLM(cfg).eval()


def _hybrid(n_layers):
    torch.manual_seed(0)
    kinds = ["conv", "ssm", "gated_linear_attention", "softmax_attention"]
    return HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=3, mixers=[kinds[i % 4] for i in range(n_layers)]))


@pytest.mark.parametrize(
    "make, options",
    [
        (_mamba, {}),  # the structured route (native Mamba parameters), every split
        (_hybrid, {"positions": [1, 2, 5, 8, 10], "method": "tolerance"}),  # structured and dense, a subset
    ],
    ids=["mamba", "hybrid"],
)
def test_table_and_summary_equal_a_row_by_row_reference(make, options, monkeypatch, tmp_path):
    """12 layers (so that sorted names differ from the layers' order: ``.10`` before ``.2``), two samples."""
    model = make(12)
    ids = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(2))
    seen = []
    append = AZ._EssPass._append

    def spy(self, name, s, ops, tol, ent, P, L, nops):
        shared = list(ops.shared or [1] * nops)
        seen.append((name, s, ops.kind, list(ops.labels), list(ops.tss), shared, np.array(tol), np.array(ent), P, L))
        return append(self, name, s, ops, tol, ent, P, L, nops)

    monkeypatch.setattr(AZ._EssPass, "_append", spy)
    rep = ess.analyze(model, ids, progress=False, **options)
    t = rep.table
    names = [x[0] for x in seen]
    assert len(set(names)) == 12 and sorted(set(names)) != list(dict.fromkeys(names))

    ref = _reference_table(seen, ids.numpy())
    assert list(t.columns) == list(TABLE_COLUMNS)
    for c in CATEGORY_COLUMNS:  # category columns, the categories sorted; the values those of the reference
        assert isinstance(t[c].dtype, pd.CategoricalDtype)
        assert list(t[c].cat.categories) == sorted(set(ref[c]))
    assert (
        t.drop(columns=list(CATEGORY_COLUMNS)).dtypes.to_dict()
        == ref.drop(columns=list(CATEGORY_COLUMNS)).dtypes.to_dict()
    )
    plain = t.astype({c: ref[c].dtype for c in CATEGORY_COLUMNS})
    pd.testing.assert_frame_equal(plain, ref, check_exact=True)

    lm = [
        {"layer": n, "kind": k, "module_type": type(model.get_submodule(n)).__name__, "note": note, "route": r}
        for n, k, note, r in zip(rep.summary["layer"], rep.summary["kind"], rep.summary["note"], rep.summary["route"])
    ]
    want = _reference_summary(ref, lm, rep.primary, rep.meta["saturation"], rep.meta["collapse"])
    assert list(rep.summary["layer"]) == list(dict.fromkeys(names))  # the layers' order, not sorted
    pd.testing.assert_frame_equal(rep.summary, want, check_exact=True)

    # what consumers do with the name columns gives what it gives on strings (groupby sorts names as strings)
    for by in (["layer"], ["layer", "sample"], ["operator"]):
        mine = t.groupby(by, observed=True)["ess_tolerance"].mean().reset_index()
        want = ref.groupby(by)["ess_tolerance"].mean().reset_index()
        pd.testing.assert_frame_equal(mine.astype({c: want[c].dtype for c in by}), want, check_exact=True)
    # files: the CSV holds the same text as the reference's, the Parquet file reads back the same table
    t.to_csv(tmp_path / "a.csv", index=False)
    ref.to_csv(tmp_path / "b.csv", index=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    t.to_parquet(tmp_path / "a.parquet", index=False)
    assert pd.read_parquet(tmp_path / "a.parquet").equals(t)


def test_from_rows_with_plain_lists_and_interleaved_layers():
    """Report.from_rows on Python lists with each layer's rows in several runs (not contiguous) gives category
    columns with sorted names and the summary of the straightforward construction."""
    rows = {k: [] for k in TABLE_COLUMNS if k != "token"}
    rng = np.random.default_rng(0)
    L = 9
    for s in (0, 1):
        for layer, kind, nops in (("z.mixer", "conv", 2), ("a.mixer", "selective_ssm", 3)):
            for i in range(nops):
                for t in range(L):
                    v = float(rng.integers(0, 4))
                    for k, x in zip(rows, (s, layer, kind, f"op {i}", i, t, v, v / 2, 4.0, min(t, L - t), 1 + i % 2)):
                        rows[k].append(x)
    lm = [
        {"layer": "z.mixer", "kind": "conv", "module_type": "Z", "note": "", "route": "dense"},
        {"layer": "a.mixer", "kind": "selective_ssm", "module_type": "A", "note": "n", "route": "structured"},
    ]
    meta = {"model": "m", "device": "cpu", "length": L, "n_samples": 2, "method": "both", "rtol": None, "atol": None}
    rep = ess.Report.from_rows(rows, layer_meta=lm, skipped=[], tokens=None, token_ids=None, markers={}, meta=meta)
    ref = pd.DataFrame(rows)
    assert list(rep.table["layer"].cat.categories) == ["a.mixer", "z.mixer"]
    pd.testing.assert_frame_equal(rep.table.astype({c: ref[c].dtype for c in CATEGORY_COLUMNS}), ref, check_exact=True)
    pd.testing.assert_frame_equal(rep.summary, _reference_summary(ref, lm, "tolerance", 0.9, 0.1), check_exact=True)


def test_assemble_frees_each_curve_and_writes_every_sample():
    """``_assemble`` consumes the chunks (no curve is left alive: each is dropped once its rows are copied, so the
    columns' pages can reuse its memory; the peak RSS this saves is measured in benches/report_assembly.py), the
    curves land in order, and the ``sample`` column, which starts from lazily zeroed memory and is written only
    where a chunk's sample is not zero, holds every chunk's sample."""
    import weakref

    rng = np.random.default_rng(3)
    cats = {"layer": {"b": 0, "a": 1}, "kind": {"conv": 0}, "operator": {"op 0": 0, "op 1": 1, "op 2": 2}}
    chunks, refs, want = [], [], []
    for layer, s, nops, L in ((0, 0, 3, 7), (0, 2, 3, 7), (1, 0, 2, 5), (1, 1, 2, 5)):
        P = np.arange(1, L, dtype=np.int64)
        tol = rng.integers(0, 4, (nops, len(P))).astype(float)
        ent = rng.random((nops, len(P)))
        refs += [weakref.ref(tol), weakref.ref(ent)]
        want.append((s, tol.copy(), ent.copy()))
        chunks.append(
            AZ._Rows(s, layer, 0, np.arange(nops), P, L, tol, ent, np.full(nops, 4.0), np.ones(nops, np.int64))
        )
        del tol, ent
    cols = AZ._assemble(chunks, cats)
    assert chunks == [] and all(r() is None for r in refs)
    at = 0
    for s, tol, ent in want:
        k = tol.size
        assert (cols["sample"][at : at + k] == s).all()
        np.testing.assert_array_equal(cols["ess_tolerance"][at : at + k], tol.ravel())
        np.testing.assert_array_equal(cols["ess_entropy"][at : at + k], ent.ravel())
        at += k
    assert at == len(cols["sample"]) and cols["sample"].dtype == np.int64
