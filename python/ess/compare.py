"""Comparison figures and the combined report of a sweep (:class:`ess.sweep.SweepResults`).

Every figure function takes the loaded results (:func:`ess.sweep.load`), draws into a given
:class:`matplotlib.figure.Figure` (a new one, made without pyplot, when ``fig`` is ``None``) and
returns it. Jobs are told apart by colour, in the order of ``results.jobs``; layers are matched by
their qualified module name (jobs of different architectures simply have different layers).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Union

import numpy as np

from .errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from .sweep import SweepResults

__all__ = ["layers", "curves", "layers_of", "curves_of", "save_report"]


def _measure(results: "SweepResults", measure: Optional[str]) -> str:
    t = results.table
    if measure is None:
        measure = "tolerance" if len(t) and t["ess_tolerance"].notna().any() else "entropy"
    if measure not in ("tolerance", "entropy"):
        raise InvalidArgumentError(f"measure: expected 'tolerance' or 'entropy', got {measure!r}")
    return measure


def _done_jobs(results: "SweepResults") -> List[str]:
    jobs = [j for j in results.jobs["job"] if j in set(results.table["job"])] if len(results.table) else []
    if not jobs:
        raise InvalidArgumentError(f"results: no finished job in {str(results.root)!r} to compare")
    return jobs


def _colors(n: int) -> List[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    return [cmap(i if n <= 20 else i / max(1, n - 1)) for i in range(n)]


def _figure(w: float, h: float) -> Any:
    from .plots import new_figure

    return new_figure(w, h)


def layers(results: "SweepResults", *, measure: Optional[str] = None, fig: Any = None) -> Any:
    """Average ESS per layer (over operators, positions and samples), one bar per job side by side
    in each layer's group (a job without that layer has no bar).

    Examples
    --------
    >>> import tempfile
    >>> import ess.compare, ess.sweep as sweep
    >>> jobs = sweep.grid({"name": "seq-{seed}", "model": "builtin", "inputs": {"random": {"length": 8, "seed": "{seed}"}},
    ...                    "options": {"layers": "blocks.3.mixer"}}, seed=[0, 1])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = sweep.run(jobs, d, progress=False)
    ...     fig = ess.compare.layers(sweep.load(d))
    >>> fig.axes[0].get_ylabel()
    'average tolerance-ESS (state dimensions)'
    """
    m = _measure(results, measure)
    jobs = _done_jobs(results)
    return layers_of(results.summary, "job", jobs, m, fig=fig, title=f"average {m}-ESS per layer, {len(jobs)} job(s)")


def layers_of(
    summary: Any, group: str, groups: Sequence[Any], measure: str, *, fig: Any = None, title: Optional[str] = None
) -> Any:
    """Layer-by-layer comparison of any groups (jobs of a sweep, samples of one report): ``summary``
    has columns ``layer``, ``kind``, ``group`` and ``avg_ess_<measure>``; one bar per group in each
    layer's cluster, in the order of ``groups``, legend outside the axes on the right.

    Examples
    --------
    >>> import pandas as pd
    >>> from ess.compare import layers_of
    >>> summary = pd.DataFrame({"layer": ["l0", "l0", "l1", "l1"], "kind": ["conv", "conv", "ssm", "ssm"],
    ...                         "group": ["a", "b", "a", "b"], "avg_ess_entropy": [1.5, 2.0, 3.0, 2.5]})
    >>> fig = layers_of(summary, "group", ["a", "b"], "entropy")
    >>> [float(bar.get_height()) for bar in fig.axes[0].patches]
    [1.5, 3.0, 2.0, 2.5]
    """
    m = measure
    s = summary
    names = list(dict.fromkeys(s["layer"]))
    kinds = s.groupby("layer")["kind"].first()
    n, k = len(names), len(groups)
    if fig is None:
        fig = _figure(min(18.0, 3.0 + n * (0.6 + 0.18 * k)), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(1, k)
    x = np.arange(n)
    for i, (g, c) in enumerate(zip(groups, _colors(k))):
        d = s[s[group] == g].set_index("layer")
        vals = np.array([float(d.loc[l, f"avg_ess_{m}"]) if l in d.index else np.nan for l in names])
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width=width, color=c, label=str(g))
    ax.set_xticks(x)
    ax.set_xticklabels([f"{l}\n({kinds[l]})" for l in names], fontsize=7)
    top = np.nanmax(s[f"avg_ess_{m}"].to_numpy()) if len(s) else 1.0
    ax.set_ylim(0, 1.15 * max(float(top), 1e-9))
    ax.set_ylabel(f"average {m}-ESS (state dimensions)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.25, lw=0.5)
    ax.set_title(title or f"average {m}-ESS per layer", fontsize=10)
    ax.legend(fontsize=7, ncol=max(1, (k + 1) // 12 + 1), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def curves(
    results: "SweepResults",
    *,
    measure: Optional[str] = None,
    sample: Optional[int] = None,
    max_panels: int = 12,
    fig: Any = None,
) -> Any:
    """ESS against position, one panel per layer (at most ``max_panels``), one line per job: the
    mean over the layer's operators (and over samples, unless ``sample`` is given); the boundary
    bound ``min(t, L - t)`` dashed (of the longest job).

    Examples
    --------
    >>> import tempfile
    >>> import ess.compare, ess.sweep as sweep
    >>> jobs = sweep.grid({"name": "seq-{seed}", "model": "builtin", "inputs": {"random": {"length": 8, "seed": "{seed}"}},
    ...                    "options": {"layers": "blocks.3.mixer"}}, seed=[0, 1])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = sweep.run(jobs, d, progress=False)
    ...     fig = ess.compare.curves(sweep.load(d), measure="entropy")
    >>> [ax.get_title() for ax in fig.axes]
    ['blocks.3.mixer (softmax_attention)']
    >>> [t.get_text() for t in fig.legends[0].get_texts()]
    ['seq-0', 'seq-1', 'min(t, L-t)']
    """
    m = _measure(results, measure)
    jobs = _done_jobs(results)
    t = results.table if sample is None else results.table[results.table["sample"] == sample]
    if not len(t):
        raise InvalidArgumentError(f"sample: {sample} is in no job's table")
    return curves_of(t, "job", jobs, m, max_panels=max_panels, fig=fig)


def curves_of(
    table: Any,
    group: str,
    groups: Sequence[Any],
    measure: str,
    *,
    max_panels: int = 12,
    fig: Any = None,
    title: Optional[str] = None,
    ncols: int = 3,
) -> Any:
    """Curves of any groups overlaid (jobs of a sweep, samples of one report): ``table`` is a tidy
    ESS table with a ``group`` column; per layer (at most ``max_panels``) one line per group, the
    mean over the layer's operators (and whatever else the group pools), the bound dashed (a panel
    whose curves stay under 40% of the bound is zoomed on the curves, marked "bound clipped"); one
    legend for the figure, on the right outside the panels; ``ncols`` panels per row.

    Examples
    --------
    Any tidy table with a group column works; here two made-up groups of one layer:

    >>> import pandas as pd
    >>> from ess.compare import curves_of
    >>> table = pd.DataFrame({"layer": "mixer", "kind": "conv", "group": ["a"] * 4 + ["b"] * 4,
    ...                       "position": [0, 1, 2, 3] * 2, "ess_tolerance": [0, 1, 2, 1, 0, 1, 1, 1],
    ...                       "bound": [0, 1, 2, 1] * 2})
    >>> fig = curves_of(table, "group", ["a", "b"], "tolerance")
    >>> [line.get_ydata().tolist() for line in fig.axes[0].get_lines()[:2]]
    [[0.0, 1.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    """
    col = f"ess_{measure}"
    t = table
    all_names = list(dict.fromkeys(t["layer"]))
    names = all_names[:max_panels]
    ncol = max(1, min(int(ncols), len(names)))
    nrow = (len(names) + ncol - 1) // ncol
    if fig is None:
        fig = _figure(4.6 * ncol + 1.8, 2.8 * nrow + (0.4 if title else 0.0))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    mean = t.groupby(["layer", group, "position"], sort=False, observed=True)[col].mean()
    bound = t.groupby(["layer", "position"], sort=False, observed=True)["bound"].max()
    colors = dict(zip(groups, _colors(len(groups))))
    for p, layer in enumerate(names):
        ax = axes[p // ncol][p % ncol]
        ml = mean.loc[layer]
        for g in groups:
            if g in ml.index.get_level_values(0):
                c = ml.loc[g].sort_index()
                ax.plot(c.index.to_numpy(), c.to_numpy(), lw=1.2, color=colors[g], label=str(g))
        b = bound.loc[layer].sort_index()
        ax.plot(b.index.to_numpy(), b.to_numpy(), ls="--", lw=0.8, color="0.5", label="min(t, L-t)")
        kind = t.loc[t["layer"] == layer, "kind"].iloc[0]
        hi = float(np.nanmax(ml.to_numpy())) if len(ml) else 0.0
        clipped = len(b) and 0 < hi < 0.4 * float(b.max())
        ax.set_title(f"{layer} ({kind})", fontsize=8)
        if clipped:  # the curves would be a flat line under a bound many times higher: zoom on them
            ax.set_ylim(0, 1.3 * hi)
            ax.set_title("bound clipped", loc="right", fontsize=6, color="0.4")
        ax.set_xlabel("split position t", fontsize=7)
        ax.set_ylabel(f"{measure}-ESS", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5)
        if not clipped:
            ax.set_ylim(bottom=0)
    for p in range(len(names), nrow * ncol):
        axes[p // ncol][p % ncol].set_visible(False)
    seen: dict = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    order = [k for k in seen if k != "min(t, L-t)"] + ["min(t, L-t)"]  # groups first, the bound last
    if len(all_names) > len(names):
        fig.text(0.01, 0.005, f"first {len(names)} of {len(all_names)} layers (max_panels={max_panels})", fontsize=7)
    top, st = 1.0, None
    if title:
        st = fig.suptitle(title, fontsize=10)
        top = 1.0 - 0.4 / fig.get_figheight()
    leg = fig.legend([seen[k] for k in order], order, fontsize=7, loc="upper left")
    leg.set_in_layout(False)
    W = fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1.0 - (leg.get_window_extent().width / fig.dpi + 0.2) / W, top))
    if st is not None:  # the panels (titles included) right under the figure's title
        gap = st.get_window_extent().y0 - max(a.get_tightbbox().y1 for a in fig.axes if a.get_visible())
        if gap > 0.1 * fig.dpi:
            fig.subplots_adjust(top=fig.subplotpars.top + (gap - 0.1 * fig.dpi) / (fig.dpi * fig.get_figheight()))
    # beside the first row of panels, not in the figure's far corner
    vis = [a.get_position() for a in fig.axes if a.get_visible()]
    leg.set_bbox_to_anchor((max(b.x1 for b in vis) + 0.1 / W, max(b.y1 for b in vis)), transform=fig.transFigure)
    return fig


_CAPTIONS = {
    "layers": "Average {m}-ESS of each layer (over its heads/channels, positions and samples), one bar per job: "
    "which layers hold more state in which job.",
    "curves": "Mean {m}-ESS over each layer's heads/channels against the split position t, jobs overlaid; dashed: the "
    "boundary bound min(t, L - t).",
}


def _png(fig: Any, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_report(results: "SweepResults", directory: Union[str, "os.PathLike[str]"]) -> Path:
    """Write ``report.html`` (job table with errors, per-layer average ESS job by job, the two
    comparison figures embedded), ``layers.png``, ``curves.png``, ``table.parquet``,
    ``summary.parquet`` and ``jobs.csv`` into ``directory`` (each file written atomically).
    Returns the directory.

    Examples
    --------
    >>> import os, tempfile
    >>> import ess.compare, ess.sweep as sweep
    >>> job = sweep.Job("short", "builtin", inputs=[0, 5, 20, 6, 21, 1, 5, 20], options={"layers": "blocks.3.mixer"})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = sweep.run([job], os.path.join(d, "results"), progress=False)
    ...     out = ess.compare.save_report(sweep.load(os.path.join(d, "results")), os.path.join(d, "report"))
    ...     print(sorted(os.listdir(out)))
    ['curves.png', 'jobs.csv', 'layers.png', 'report.html', 'summary.json', 'summary.parquet', 'table.parquet']
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .sweep import _atomic_write

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    m = _measure(results, None)
    figs = {}
    if len(results.table):
        figs = {"layers": _png(layers(results)), "curves": _png(curves(results))}
    for name, png in figs.items():
        _atomic_write(d / f"{name}.png", png)
    for name, df in (("table", results.table), ("summary", results.summary)):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
        _atomic_write(d / f"{name}.parquet", buf.getvalue().to_pybytes())
    _atomic_write(d / "jobs.csv", results.jobs.to_csv(index=False).encode("utf-8"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ess sweep</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%;display:block;margin:1em 0}"
        ".failed{color:#a00}</style></head><body>",
        f"<h2>ess sweep</h2><p>results <code>{html.escape(str(results.root))}</code>: {len(results.jobs)} job(s) recorded, "
        f"{int((results.jobs['status'] == 'done').sum()) if len(results.jobs) else 0} done, {len(results.failed)} failed; "
        f"comparisons on the {m}-ESS.</p>",
        "<h3>Jobs</h3>" + results.jobs.to_html(index=False, escape=True, na_rep="", float_format="{:.3g}".format),
    ]
    if len(results.summary):
        piv = results.summary.pivot_table(index="layer", columns="job", values=f"avg_ess_{m}", sort=False)
        parts.append(
            f"<h3>Average {m}-ESS per layer and job</h3>"
            + piv.to_html(escape=True, float_format="{:.3g}".format, na_rep="")
        )
    if figs:
        parts.append("<h3>Figures</h3>")
        for name, png in figs.items():
            b64 = base64.b64encode(png).decode("ascii")
            cap = _CAPTIONS[name].format(m=m)
            parts.append(
                f"<figure><img alt='{html.escape(cap)}' id='fig-{name}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
    fails = [(n, r) for n, r in sorted(results.records.items()) if r["status"] == "failed"]
    if fails:
        parts.append("<h3>Failed jobs</h3>")
        for n, r in fails:
            parts.append(
                f"<p class='failed'><b>{html.escape(n)}</b>: {html.escape(str(r.get('error')))}</p>"
                f"<details><summary>traceback</summary><pre>{html.escape(str(r.get('traceback')))}</pre></details>"
            )
    parts.append("</body></html>")
    _atomic_write(d / "report.html", "\n".join(parts).encode("utf-8"))
    _atomic_write(
        d / "summary.json",
        (json.dumps({"jobs": json.loads(results.jobs.to_json(orient="records"))}, indent=1) + "\n").encode("utf-8"),
    )
    return d
