"""ess.Report: figures, files, HTML (rendered in headless Chromium), JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.requires('torch', 'pandas', 'matplotlib')
torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import ess  # noqa: E402
from ess.models.model import HybridConfig, HybridLM  # noqa: E402


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    m = HybridLM(HybridConfig(d_model=16, n_heads=2, d_state=4, mixers=["conv", "ssm", "softmax_attention"]))
    tok = torch.randint(2, 64, (2, 24))
    tok[:, 11] = 1
    return ess.analyze(m, tok, markers=[1], tokens=[f"t{int(t)}" for t in tok[0]], progress=False)


def test_plot_kinds(report):
    from matplotlib.figure import Figure

    for kind in ("curves", "heatmap", "utilisation"):
        fig = report.plot(kind)
        assert isinstance(fig, Figure) and fig.axes
    figs = report.plot("all", sample=1, measure="entropy")
    assert set(figs) == {"curves", "heatmap", "utilisation"}
    curves = report.plot("curves")
    # one panel per layer; the marker (delimiter at position 11) is drawn as a vertical line
    vis = [ax for ax in curves.axes if ax.get_visible()]
    assert len(vis) == 3
    assert any(np.allclose(line.get_xdata(), 11) for line in vis[0].lines)
    with pytest.raises(ValueError, match="kind"):
        report.plot("pie")
    with pytest.raises(ValueError, match="measure"):
        report.plot("curves", measure="rank")
    with pytest.raises(ValueError, match="sample"):
        report.plot("curves", sample=7)


def test_save(tmp_path, report):
    d = report.save(tmp_path / "out")
    names = set(os.listdir(d))
    assert {"report.html", "ess.csv", "summary.csv", "summary.json", "curves.png", "heatmap.png", "utilisation.png"} <= names
    t = pd.read_csv(d / "ess.csv")
    assert len(t) == len(report.table) and list(t.columns) == list(report.table.columns)
    try:
        import pyarrow  # noqa: F401

        assert pd.read_parquet(d / "ess.parquet").equals(report.table)
    except ImportError:
        assert "ess.parquet" not in names
    js = json.loads((d / "summary.json").read_text())
    assert [l["layer"] for l in js["layers"]] == list(report.summary.layer)
    assert js["meta"]["length"] == 24 and js["markers"] == {"0": [11], "1": [11]}
    assert any("Boundary" in c for c in js["caveats"])
    html = (d / "report.html").read_text()
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == 3
    assert "http" not in html.replace("http-equiv", "")  # self-contained: no external resource
    assert "blocks.1.mixer" in html and " ".join(report.tokens) in html


def test_repr_html(report):
    h = report._repr_html_()
    assert "<table" in h and "data:image/png;base64," in h
    assert "ess.Report" in repr(report)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_html_renders_in_chromium(tmp_path, report):
    d = report.save(tmp_path / "out")
    html = (d / "report.html").read_text()
    # a probe (test-only copy) records each image's decoded size once the page has loaded
    probe = html.replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-probe',"
        "Array.from(document.images).map(i=>i.complete+':'+i.naturalWidth+'x'+i.naturalHeight).join(','))});</script></body>",
    )
    (d / "probe.html").write_text(probe)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", (d / "probe.html").as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"no probe in the rendered DOM; stderr: {out.stderr[-2000:]}"
    sizes = m.group(1).split(",")
    assert len(sizes) == 3
    for s in sizes:
        ok, wh = s.split(":")
        w, h = (int(v) for v in wh.split("x"))
        assert ok == "true" and w > 100 and h > 100, sizes
    # and a screenshot of the real page is not blank
    shot = tmp_path / "shot.png"
    subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,2400", (d / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.std() > 0.01
