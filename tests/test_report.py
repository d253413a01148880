"""ess.Report: figures, export, files, HTML (rendered in headless Chromium as a user sees it), JSON."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch", "pandas", "matplotlib")
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


@pytest.fixture(scope="module")
def gpt2_report():
    """A two-sample report of a tiny GPT-2 (random weights, made from a config: no download)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=32)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 99, (2, 20), generator=torch.Generator().manual_seed(1))
    ids[:, 9] = 99
    return ess.analyze(m, ids, markers=[99], progress=False)


@pytest.fixture(scope="module")
def builtin_report():
    """The main job's report (what ``ess analyze`` runs with no arguments): the ``delimiters`` built-in on its
    two shipped sequences at rtol = 1e-2, delimiters at 17 and 34."""
    from ess.models import (
        DELIM,
        builtin_delimiters_info,
        builtin_delimiters_inputs,
        delimiters_token_names,
        load_builtin_delimiters,
    )

    x = builtin_delimiters_inputs(2)
    names = delimiters_token_names(x[0], builtin_delimiters_info()["task"]["n_keys"])
    return ess.analyze(load_builtin_delimiters(), x, rtol=1e-2, tokens=names, markers=[DELIM], progress=False)


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_plot_kinds(report):
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    figs = report.plot("all")
    assert list(figs) == ["curves", "heatmap", "utilisation", "samples", "layers"]
    assert all(isinstance(f, Figure) and f.axes for f in figs.values())
    curves = figs["curves"]
    vis = _visible(curves)
    assert len(vis) == 3  # one panel per layer
    for ax in vis:
        # both measures: mean lines in the two colours, the band over heads/channels, the bound, the marker at 11
        colors = {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines}
        assert {"#1f77b4", "#ff7f0e"} <= colors
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2
        assert any(np.allclose(line.get_xdata(), 11) for line in ax.lines)
        assert any(
            line.get_linestyle() == "--"
            and np.array_equal(line.get_ydata(), np.minimum(np.arange(24), 24 - np.arange(24)))
            for line in ax.lines
        )
    # conv (TSS 3) and SSM (TSS 4) draw their TSS line; attention's TSS (24) is off the range and named in the title
    assert any("TSS = 3" in ax.get_title() for ax in vis)
    assert any(np.allclose(line.get_ydata(), 3.0) for line in vis[0].lines)
    one = report.plot("curves", measure="entropy", sample=1, band=False)
    assert all(
        {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines} & {"#1f77b4"} == set() for ax in _visible(one)
    )
    # comparisons across samples: one line per sample (+ the bound), one bar series per sample
    samples = figs["samples"]
    assert len(_visible(samples)) == 3
    for ax in _visible(samples):
        vertical = [line for line in ax.lines if np.ptp(np.asarray(line.get_xdata(), float)) == 0]
        assert len(ax.lines) - len(vertical) == 2 + 1  # one line per sample and the bound
        assert [float(line.get_xdata()[0]) for line in vertical] == [11.0]  # the marker token
    assert len(figs["layers"].axes[0].containers) == 2
    with pytest.raises(ess.InvalidArgumentError, match="kind"):
        report.plot("pie")
    with pytest.raises(ess.InvalidArgumentError, match="measure"):
        report.plot("curves", measure="rank")
    with pytest.raises(ess.InvalidArgumentError, match="sample"):
        report.plot("curves", sample=7)
    with pytest.raises(ess.InvalidArgumentError, match="colour"):
        report.plot("heatmap", colour="red")
    with pytest.raises(ess.InvalidArgumentError, match="measure"):
        report.plot("heatmap", measure="both")


def test_heatmap_each_layer_at_its_own_width(report):
    fig = report.plot("heatmap", measure="tolerance", sample=0)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    t = report.table[report.table["sample"] == 0]
    want = [(t.loc[t["layer"] == l, "index"].nunique(), 24) for l in report.summary["layer"]]
    assert [im.get_array().shape for im in images] == want  # rows = that layer's heads/channels, no padding
    for im, layer in zip(images, report.summary["layer"]):
        a = np.ma.filled(im.get_array(), np.nan)
        assert np.isfinite(a).all()
        d = t[t["layer"] == layer].pivot_table(index="index", columns="position", values="ess_tolerance")
        np.testing.assert_allclose(a, d.to_numpy())
        assert im.get_clim() == (0.0, pytest.approx(float(d.to_numpy().max())))  # its own colour scale


def test_legends_do_not_cover_data(report):
    """Every legend of every static figure lies outside every panel (so it covers no data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for kind, fig in report.plot("all").items():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        r = canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends or kind == "heatmap", kind  # the heatmap has colour bars, no legend
        for leg in legends:
            lb = leg.get_window_extent(r)
            for ax in _visible(fig):
                ab = ax.get_window_extent(r)
                assert not lb.overlaps(ab), (kind, ax.get_title(), lb, ab)
        w, h = canvas.get_width_height()
        for leg in legends:  # and inside the figure
            lb = leg.get_window_extent(r)
            assert lb.x0 >= -1 and lb.y0 >= -1 and lb.x1 <= w + 1 and lb.y1 <= h + 1, (kind, lb, (w, h))


def test_export_svg_pdf(tmp_path, report):
    svg = tmp_path / "curves.svg"
    fig = report.plot("curves", path=svg)
    assert fig.axes
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "blocks.1.mixer" in text  # text kept as text (editable), not paths
    pdf = tmp_path / "heatmap.pdf"
    report.plot("heatmap", path=pdf)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"/FontFile2" in data  # TrueType embedded (journals' requirement)
    assert b"Type3" not in data
    png = tmp_path / "u.png"
    report.plot("utilisation", path=png, dpi=300)
    import matplotlib.image as mpimg

    assert mpimg.imread(png).shape[1] >= 7.0 * 300 * 0.9  # 7.5 in wide at 300 dpi (tight bbox)
    report.plot("all", path=tmp_path / "all")
    assert sorted(os.listdir(tmp_path / "all")) == [
        "curves.pdf",
        "heatmap.pdf",
        "layers.pdf",
        "samples.pdf",
        "utilisation.pdf",
    ]
    with pytest.raises(ess.InvalidArgumentError, match="path"):
        report.plot("curves", path=tmp_path / "curves.jpeg")
    with pytest.raises(ess.InvalidArgumentError, match="path"):
        report.plot("curves", path=tmp_path / "missing" / "c.pdf")


@pytest.mark.requires("plotly")
def test_save(tmp_path, report):
    d = report.save(tmp_path / "out", figure_formats=("png", "svg"))
    names = set(os.listdir(d))
    figs = ["curves", "heatmap", "utilisation", "samples", "layers"]
    assert {"report.html", "ess.csv", "summary.csv", "summary.json"} | {f"{f}.png" for f in figs} | {
        f"{f}.svg" for f in figs
    } <= names
    t = pd.read_csv(d / "ess.csv")
    assert len(t) == len(report.table) and list(t.columns) == list(report.table.columns)
    assert pd.read_parquet(d / "ess.parquet").equals(report.table)
    js = json.loads((d / "summary.json").read_text())
    assert [l["layer"] for l in js["layers"]] == list(report.summary.layer)
    assert js["meta"]["length"] == 24 and js["markers"] == {"0": [11], "1": [11]}
    assert any("Boundary" in c for c in js["caveats"])
    html = (d / "report.html").read_text()
    imgs = re.findall(r"<figure id='fig-(\w+)'><img alt='[^']+' src='data:image/png;base64,[A-Za-z0-9+/=]+'>", html)
    assert imgs == figs
    # self-contained: no resource from elsewhere (plotly.js is inlined; its source merely mentions URLs)
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", markup)
    assert html.count("<figure class='interactive'") == 3 and "Plotly.newPlot" in html
    # summary first, then the table, figures, interactive figures, caveats
    order = [html.index(f"<section id='{s}'>") for s in ("summary", "layers", "figures", "explore", "notes")]
    assert order == sorted(order)
    # captions say what the figure shows
    caps = re.findall(r"<figcaption><b>Figure \d\.</b> ([^<]+)", html)
    assert len(caps) == 5 and all(len(c) > 60 for c in caps)
    # the table: grouped headers with tooltips, units, rounded numbers, flags as words
    table = html[html.index("<table class='layers'>") : html.index("</table>")]
    assert "True" not in table and "False" not in table and "e+" not in table
    assert table.count("<th title=") == 13 and "Use of the state" in table and ">dims<" in table
    assert table.count("saturated</span>") == int(report.summary["saturated"].sum())
    assert "blocks.1.mixer" in html and " ".join(report.tokens) in html
    with pytest.raises(ess.InvalidArgumentError, match="figure_formats"):
        report.save(tmp_path / "bad", figure_formats=("gif",))


def test_findings(report):
    f = report.findings()
    text = " ".join(f)
    s = report.summary
    for layer in s.loc[s["saturated"], "layer"]:
        assert layer in text
    assert ("Saturated" in text) == bool(s["saturated"].any()) and ("Collapsed" in text) == bool(s["collapsed"].any())
    lowest = s.sort_values("fill")["layer"].iloc[0]  # by fill: an attention layer's TSS grows with L
    assert (
        any("Least state used" in x and lowest in x for x in f)
        or any("Every layer fills about" in x for x in f)
        or s["saturated"].all()
        or s["collapsed"].all()
    )
    assert any("samples" in x for x in f)  # two samples: how much they differ


def _marker_report(peak):
    """A synthetic report: two layers, one operator each, L = 40, a marker at 20 in both samples; layer 'a' has a
    flat tolerance-ESS of 4, layer 'b' the same plus ``peak`` at the split t = 20 (just before the marker)."""
    L, rows = 40, {k: [] for k in ("sample", "layer", "kind", "operator", "index", "position")}
    rows.update({k: [] for k in ("ess_tolerance", "ess_entropy", "tss", "bound", "shared")})
    for smp in (0, 1):
        for layer in ("a", "b"):
            for t in range(L):
                bound = min(t, L - t)
                v = min(4.0, bound) + (peak if (layer == "b" and t == 20) else 0.0)
                for k, x in zip(rows, (smp, layer, "conv", "op", 0, t, v, v / 2, 8.0, bound, 1)):
                    rows[k].append(x)
    meta = {"model": "m", "device": "cpu", "length": L, "n_samples": 2, "method": "both", "rtol": None, "atol": None}
    lm = [{"layer": "a", "kind": "conv"}, {"layer": "b", "kind": "conv"}]
    return ess.Report.from_rows(
        rows, layer_meta=lm, skipped=[], tokens=None, token_ids=None, markers={0: [20], 1: [20]}, meta=meta
    )


def test_marker_finding():
    """The summary names the layer whose ESS departs at the split before a marker, with the values there, at
    the neighbouring splits and right after (reference: computed here from the curve by hand)."""
    f = " ".join(_marker_report(3.0).findings())
    # layer b: 7 at t = 20, median of t = 17..19, 22..24 is 4, 4 at t = 21: +75%
    assert "At the marker tokens</b> (position 20)" in f
    assert "<b>b</b> (conv) peaks at the split just before a marker, tolerance-ESS 7.00 dims against 4.00" in f
    assert "(+75%), and is at 4.00 right after it; every other layer stays within 0% there" in f
    quiet = " ".join(_marker_report(0.5).findings())  # +12%: below the 20% threshold
    assert "no layer's tolerance-ESS departs by 20% or more" in quiet


def test_builtin_report_reads_well(tmp_path, builtin_report):
    """The main job's page: the heading gives the threshold and the delimiters, the summary names what the
    built-in model shows (the conv saturates; gated linear attention peaks before each delimiter), the table
    prints whole numbers as such, and every curves panel is scaled to what its layer can reach."""
    r = builtin_report
    html = (r.save(tmp_path / "b", interactive=False) / "report.html").read_text()
    head = html[: html.index("<section id='summary'>")]
    assert (
        "0.01 &middot; &sigma;<sub>max</sub>" in head and "marker tokens (delimiter / EOS) at positions 17, 34" in head
    )
    summary = html[html.index("<section id='summary'>") : html.index("<section id='layers'>")]
    assert "<b>Saturated</b>" in summary and "<b>blocks.0.mixer</b> (conv)" in summary
    assert "<b>blocks.2.mixer</b> (gated_linear_attention) peaks at the split just before a marker" in summary
    table = html[html.index("<table class='layers'>") : html.index("</table>")]
    assert ">16.0<" not in table and ">16<" in table and ">51<" in table  # TSS of GLA and softmax, whole
    fig = r.plot("curves", measure="tolerance")
    for ax, (_, row) in zip(_visible(fig), r.summary.iterrows()):
        reach = min(row["tss"], 25.0)  # largest value the layer can reach: min(TSS, max of min(t, L - t))
        top = ax.get_ylim()[1]
        assert reach <= top <= 1.1 * max(reach, row["max_ess_tolerance"]) + 1e-9, (row["layer"], top)


@pytest.mark.requires("plotly")
def test_cli_page_heading(tmp_path, capsys):
    """``ess analyze`` puts what it ran (the CLI's title line) at the top of the page."""
    from ess.cli import main

    assert main(["analyze", "--out", str(tmp_path / "rep"), "--no-progress", "--samples", "1"]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    lead = re.search(r"<p class='lead'>([^<]*)</p>", html)
    assert lead and "built-in hybrid model &#x27;delimiters&#x27;" in lead.group(1) and "rtol=0.01" in lead.group(1)
    assert html.index("<p class='lead'>") < html.index("<section id='summary'>")


def test_static_only_page(tmp_path, report):
    """Without the interactive part (or without plotly) the page has the same static figures and no script."""
    html = (report.save(tmp_path / "static", interactive=False) / "report.html").read_text()
    assert "<script" not in html and "id='explore'" not in html
    assert re.findall(r"<figure id='fig-(\w+)'>", html) == ["curves", "heatmap", "utilisation", "samples", "layers"]


@pytest.mark.requires("plotly")
def test_interactive_layer_figure(report):
    from ess import interactive

    fig = interactive.layer_figure(report, "blocks.2.mixer")  # 2 attention heads
    names = [tr.name for tr in fig.data]
    for m in ("tolerance", "entropy"):
        assert f"{m}-ESS, mean" in names and f"{m}: head 0" in names and f"{m}: head 1" in names
        assert f"{m} heatmap" in names
    assert any((n or "").startswith("TSS") for n in names) or "above the range" in fig.layout.title.text
    assert "token %{customdata}" in fig.data[names.index("entropy: head 0")].hovertemplate
    assert list(fig.data[names.index("entropy: head 0")].customdata) == report.tokens
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["both", "tolerance", "entropy"]
    tol = dict(zip(names, buttons[1].args[0]["visible"]))
    assert (
        tol["tolerance-ESS, mean"]
        and not tol["entropy-ESS, mean"]
        and tol["tolerance heatmap"]
        and not tol["entropy heatmap"]
    )
    assert tol["bound min(t, L - t)"]
    # the conv layer (TSS 3, bound up to 12): its ESS axis ends at what it can reach, as in the static figure
    conv = interactive.layer_figure(report, "blocks.0.mixer")
    d = report.table[(report.table["layer"] == "blocks.0.mixer") & (report.table["sample"] == 0)]
    assert conv.layout.yaxis.range[1] == pytest.approx(1.1 * max(3.0, d["ess_tolerance"].max()))


@pytest.mark.requires("plotly", "transformers")
def test_gpt2_two_samples(tmp_path, gpt2_report):
    r = gpt2_report
    assert r.n_samples == 2 and len(r.summary) == 2
    figs = r.plot("all")
    assert list(figs) == ["curves", "heatmap", "utilisation", "samples", "layers"]
    hm = [ax.images[0].get_array().shape for ax in figs["heatmap"].axes if ax.images]
    assert hm == [(4, 20), (4, 20)]
    # random weights: near-uniform attention, entropy-ESS far below the tolerance-ESS (on the bound): the entropy
    # curves get their own axis on the right instead of lying flat at zero
    twins = [ax for ax in figs["curves"].axes if ax.get_ylabel() == "entropy-ESS (right axis)"]
    assert len(twins) == 2
    for ax in twins:
        assert {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines} == {"#ff7f0e"}
        assert ax.get_ylim()[1] < 0.5 * r.table["bound"].max()
    d = r.save(tmp_path / "gpt2")
    html = (d / "report.html").read_text()
    assert html.count("<figure class='interactive'") == 2 and "transformer.h.1.attn" in html
    assert "id='fig-samples'" in html and "id='fig-layers'" in html


def test_repr_html(report):
    h = report._repr_html_()
    assert "<table" in h and "data:image/png;base64," in h and "Summary" in h
    assert "ess.Report" in repr(report)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


# Injected (in a test-only copy) before anything else runs: records errors and console.error calls,
# then, once the page has loaded and plotly has drawn, the geometry of every figure.
_PROBE = """<script>window.__errs=[];window.addEventListener('error',function(e){window.__errs.push(String(e.message))});
(function(){var ce=console.error;console.error=function(){window.__errs.push(Array.prototype.slice.call(arguments).join(' '));return ce.apply(console,arguments)}})();
window.addEventListener('load',function(){setTimeout(function(){
var r=function(e){var b=e.getBoundingClientRect();return [b.left+scrollX,b.top+scrollY,b.width,b.height].map(Math.round)};
var data={errs:window.__errs,
imgs:Array.from(document.images).map(function(i){return {fig:i.closest('figure').id,ok:i.complete,w:i.naturalWidth,h:i.naturalHeight,rect:r(i)}}),
plots:Array.from(document.querySelectorAll('.js-plotly-plot')).map(function(d){var lg=d.querySelector('g.legend');return {id:d.id,
 lines:d.querySelectorAll('.scatterlayer .trace path.js-line').length,heat:d.querySelectorAll('.heatmaplayer image').length,rect:r(d),
 legend:lg?r(lg):null,areas:Array.from(d.querySelectorAll('.nsewdrag')).map(r)}}),
figs:Array.from(document.querySelectorAll('figure')).map(function(f){return {id:f.id||f.getAttribute('data-layer'),rect:r(f)}}),
scrollW:document.documentElement.scrollWidth,innerW:innerWidth,height:document.documentElement.scrollHeight,
resources:performance.getEntriesByType('resource').map(function(e){return e.name.slice(0,60)})};
document.body.setAttribute('data-probe',JSON.stringify(data))},500)});</script>"""


def _overlap(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
@pytest.mark.requires("plotly", "transformers")
@pytest.mark.parametrize("which", ["report", "gpt2_report", "builtin_report"])
def test_html_renders_in_chromium(tmp_path, request, which):
    rep = request.getfixturevalue(which)
    d = rep.save(tmp_path / "out")
    html = (d / "report.html").read_text()
    (d / "probe.html").write_text(html.replace("<meta charset='utf-8'>", "<meta charset='utf-8'>" + _PROBE, 1))
    width = 1200
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    out = subprocess.run(
        base + [f"--window-size={width},900", "--dump-dom", (d / "probe.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"no probe in the rendered DOM; stderr: {out.stderr[-2000:]}"
    p = json.loads(htmllib.unescape(m.group(1)))
    assert p["errs"] == [], p["errs"]  # no script error, no console error
    assert p["resources"] == []  # nothing fetched: the page is self-contained
    assert p["scrollW"] <= p["innerW"]  # nothing wider than the window
    n_layers = len(rep.summary)
    # every static figure decoded and shown at a readable size
    assert [i["fig"] for i in p["imgs"]] == [
        "fig-curves",
        "fig-heatmap",
        "fig-utilisation",
        "fig-samples",
        "fig-layers",
    ]
    for i in p["imgs"]:
        assert i["ok"] and i["w"] > 300 and i["h"] > 200, i
        assert i["rect"][2] >= 500 and i["rect"][3] >= 200 and i["rect"][0] + i["rect"][2] <= width, i
    # one interactive figure per layer, drawn: lines for the curves, one heatmap, legend beside the plot areas
    assert len(p["plots"]) == n_layers
    for q in p["plots"]:
        assert q["lines"] >= 4 and q["heat"] == 1, q
        assert q["rect"][2] >= 900 and q["rect"][3] >= 500, q
        assert len(q["areas"]) == 2 and q["legend"] is not None
        for a in q["areas"]:
            assert a[2] > 400 and a[3] > 100, q
            assert not _overlap(q["legend"], a), q  # the legend covers no data
    figs = [f["rect"] for f in p["figs"]]
    assert len(figs) == 5 + n_layers
    for k in range(len(figs) - 1):
        assert figs[k][1] + figs[k][3] <= figs[k + 1][1], (p["figs"][k], p["figs"][k + 1])  # stacked, never overlapping
    # a screenshot of the real page: every figure's region is painted (not blank) where the probe placed it
    shot = tmp_path / "shot.png"
    height = min(int(p["height"]), 16000)
    subprocess.run(
        base + [f"--window-size={width},{height}", f"--screenshot={shot}", (d / "report.html").as_uri()],
        capture_output=True,
        timeout=180,
    )
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (height, width)
    for f in p["imgs"] + p["plots"]:
        x, y, w, h = f["rect"]
        if y + h > height:
            continue
        region = img[y : y + h, x : x + w]
        assert region.std() > 0.05, f  # drawn, not blank
        assert (region.min(axis=2) < 0.5).mean() > 0.005, f  # with dark ink: axes, lines, text
