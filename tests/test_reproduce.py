"""Quick presets of every `ess reproduce` experiment: they run, write their figure, JSON and table,
and their numbers point in the published direction (asserted with margins)."""

import json
import math

import numpy as np
import pytest

from ess import reproduce
from ess.errors import InvalidArgumentError


def _files_written(res, out):
    assert res.files
    for f in res.files:
        p = out / f
        assert p.is_file() and p.stat().st_size > 0, f
    assert any(f.endswith(".png") for f in res.files)
    data = json.loads((out / f"{res.name}.json").read_text())
    assert data["preset"] == "quick" and data["rows"]
    table = (out / f"{res.name}.md").read_text()
    assert "| quantity | published | ours | agrees |" in table
    assert table.count("\n|") == len(res.rows) + 2  # header, rule, one line per row (no stray pipes)
    return data


@pytest.mark.requires("matplotlib")
def test_metastable_quick(tmp_path):
    res = reproduce.run("metastable", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    n = res.numbers
    assert abs(n["slope"] + 1.0) < 0.02
    heps = np.asarray(n["h_times_eps"])
    assert heps.max() / heps.min() < 1.1
    assert n["recovered"]
    assert n["search"]["plain"] / n["search"]["boosted"] > 8.0
    assert all(r.agrees for r in res.rows)


@pytest.mark.requires("matplotlib")
def test_winner_quick(tmp_path):
    res = reproduce.run("winner", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    n = res.numbers
    s0, sT = n["support_first_last"]
    w0, wT = n["winner_first_last"]
    assert sT < 0.6 * s0
    assert wT > w0 + 0.15
    assert np.mean(n["generated_share_ccmc"]) > np.mean(n["generated_share_frozen"]) + 0.1


@pytest.mark.requires("torch", "matplotlib")
def test_graph_svm_quick(tmp_path):
    res = reproduce.run("graph-svm", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    cos = np.asarray(res.numbers["cosine"])
    assert len(cos) >= 3
    assert cos.min() > 0.95  # published 0.976-0.993 (full preset); a margin for the short quick training
    assert min(res.numbers["retrieval_mass"]) > 0.95


@pytest.mark.requires("torch", "pandas", "matplotlib")
def test_mqar_quick(tmp_path):
    res = reproduce.run("mqar", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    models = {m["label"]: m for m in res.numbers["models"]}
    for m in models.values():
        assert m["loss_last"] < m["loss_first"] - 0.2  # it trained
        assert m["accuracy"] > 1 / 14 + 0.05  # above chance over the 14 value tokens
        assert math.isfinite(m["avg_ent"]) and m["avg_ent"] <= m["avg_tol"] + 1.0
    lin, ssm, soft = models["linear attn dh 2"], models["SSM N=2"], models["softmax attn (dh 8)"]
    # ESS never exceeds the state the structure has; attention's cache lets it use more in total
    assert lin["avg_tol"] <= lin["tss"] + 1e-9 and ssm["avg_tol"] <= ssm["tss"] + 1e-9
    assert soft["total_ent"] > 1.2 * lin["total_ent"]
    assert set(res.numbers["spearman"]) >= {"total_tol", "total_ent", "total_tss"}


@pytest.mark.requires("torch", "pandas", "matplotlib")
def test_delimiters_quick(tmp_path):
    res = reproduce.run("delimiters", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    n = res.numbers
    L = 1 + 2 * 12 + 1
    bound = np.minimum(np.arange(L), L - np.arange(L))
    for m in n["models"].values():
        assert m["loss_last"] < m["loss_first"] - 0.2
        assert m["accuracy"] > 1 / 12 + 0.05
        c = np.asarray(m["curve"])
        assert c.shape == (L,) and np.all(np.isfinite(c)) and np.all(c <= bound + 1e-9)
        assert math.isfinite(m["drop"])
    # the published ordering is reported, not asserted: tiny quick models only partly learn to forget


@pytest.mark.requires("torch", "pandas", "matplotlib")
def test_regularizer_quick(tmp_path):
    res = reproduce.run("regularizer", quick=True, out=tmp_path)
    _files_written(res, tmp_path)
    pen, base, bonus = (r["avg_ent"] for r in res.numbers["runs"])
    assert pen < 0.8 * base
    assert bonus > 1.2 * base


@pytest.mark.requires("matplotlib")
def test_cli_reproduce(tmp_path, capsys):
    from ess.cli import main

    assert main(["reproduce", "winner", "--quick", "--out", str(tmp_path / "x"), "--seed", "1"]) == 0
    assert (tmp_path / "x" / "winner.md").is_file() and (tmp_path / "x" / "winner_takes_all.png").is_file()
    assert "published" in capsys.readouterr().out


def test_unknown_experiment():
    with pytest.raises(InvalidArgumentError):
        reproduce.run("nope")


@pytest.mark.requires("torch", "pandas", "safetensors")
def test_recommend_state_size():
    import ess
    from ess.models import builtin_inputs, load_builtin

    rep = ess.analyze(load_builtin(), builtin_inputs(1), rtol=1e-2, progress=False)
    rec = ess.recommend_state_size(rep, quantile=0.9)
    assert list(rec["layer"]) == list(rep.summary["layer"])
    for _, r in rec.iterrows():
        e = rep.table[(rep.table["layer"] == r["layer"]) & (rep.table["position"] > 0)]["ess_tolerance"].to_numpy()
        assert r["recommended"] == math.ceil(np.quantile(e, 0.9, method="higher"))
        assert r["recommended"] <= r["tss"] and r["rtol"] == 1e-2
    top = ess.recommend_state_size(rep, quantile=1.0)
    assert (top["recommended"] >= rec["recommended"]).all()
    with pytest.raises(InvalidArgumentError):
        ess.recommend_state_size(rep, quantile=0.0)
    ent = ess.analyze(load_builtin(), builtin_inputs(1), method="entropy", progress=False)
    with pytest.raises(InvalidArgumentError):
        ess.recommend_state_size(ent)


@pytest.mark.requires("scipy")
def test_spearman_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    from ess.reproduce._mqar import spearman

    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 9).astype(float)
        y = rng.standard_normal(9)
        if np.ptp(x) == 0:
            continue
        assert abs(spearman(x, y) - scipy_stats.spearmanr(x, y).statistic) < 1e-12
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_row_agrees_is_a_python_bool():
    # a comparison made with numpy yields np.bool_; rows keep Python bools (JSON, tables, `is True`)
    row = reproduce.Row("x", "1", "1", agrees=np.float64(1.0) > 0.5)
    assert row.agrees is True
    assert reproduce.Row("x", "1", "1").agrees is None
