"""Static figures of an :class:`ess.Report` (matplotlib; imported lazily).

Every function draws into a given :class:`matplotlib.figure.Figure` (a new one when ``fig`` is
``None``, created without pyplot so that saving works headless) and returns it. Legends sit outside
the axes, so they never cover data. :func:`save_figure` writes a figure as SVG, PDF or PNG at print
quality (fonts embedded as TrueType in PDF, text kept as text in SVG).

* :func:`curves`: per layer, ESS against position (tolerance and/or entropy), the mean over the
  layer's heads/channels with the band they span, the TSS line, the boundary bound ``min(t, L - t)``
  and the marker (delimiter / EOS) positions;
* :func:`heatmap`: per layer, heads/channels x positions, each layer on its own axis and colour scale;
* :func:`utilisation`: utilisation and fill per layer, with the saturation / collapse thresholds;
* :func:`samples` and :func:`sample_layers`: several samples of one report compared (curves
  overlaid, per-layer average ESS side by side), drawn by :mod:`ess.compare` like jobs of a sweep.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report

__all__ = ["curves", "heatmap", "utilisation", "samples", "sample_layers", "new_figure", "save_figure", "measures"]

#: colours of the two measures (matplotlib's tab10 blue and orange)
MEASURE_COLORS = {"tolerance": "#1f77b4", "entropy": "#ff7f0e"}
#: in :func:`curves`, the entropy-ESS gets its own (right) axis when its maximum is below this share of the tolerance-ESS's
TWIN_AXIS_RATIO = 0.25
MEASURE_LABELS = {"tolerance": "tolerance-ESS (numerical rank)", "entropy": "entropy-ESS (effective rank)"}


#: set by :meth:`ess.Report.plot` under an interactive matplotlib backend, so that its figures are pyplot's
#: (shown by ``plt.show()`` and in notebooks); figures are made without pyplot otherwise
_PYPLOT: "contextvars.ContextVar[bool]" = contextvars.ContextVar("ess_plots_pyplot", default=False)


def new_figure(width: float, height: float, pyplot: bool = False) -> Any:
    """A new :class:`matplotlib.figure.Figure` of ``width`` x ``height`` inches, made without pyplot
    (so that saving works headless) unless ``pyplot`` is true or :meth:`ess.Report.plot` asked for
    pyplot's figures (an interactive backend).

    Examples
    --------
    >>> from ess.plots import new_figure
    >>> fig = new_figure(4, 3)
    >>> type(fig).__name__, fig.get_size_inches().tolist()
    ('Figure', [4.0, 3.0])
    """
    if pyplot or _PYPLOT.get():
        import matplotlib.pyplot as plt

        return plt.figure(figsize=(width, height))
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def measures(report: "Report", measure: Optional[str]) -> List[str]:
    """The measures to draw: ``"tolerance"``, ``"entropy"``, ``"both"`` or ``None`` (both when both
    were computed, else the one that was). Raises :class:`~ess.errors.InvalidArgumentError`.

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 8).reshape(1, 6), method="entropy", progress=False)
    >>> ess.plots.measures(report, None)
    ['entropy']
    >>> ess.plots.measures(report, "tolerance")
    Traceback (most recent call last):
        ...
    ess.errors.InvalidArgumentError: measure: 'tolerance' was not computed (method='entropy')
    """
    t = report.table
    have = [m for m in ("tolerance", "entropy") if f"ess_{m}" in t and t[f"ess_{m}"].notna().any()]
    if measure is None:
        return have
    if measure == "both":
        want = ["tolerance", "entropy"]
    elif measure in ("tolerance", "entropy"):
        want = [measure]
    else:
        raise InvalidArgumentError(f"measure: expected 'tolerance', 'entropy' or 'both', got {measure!r}")
    missing = [m for m in want if m not in have]
    if missing:
        raise InvalidArgumentError(f"measure: {missing[0]!r} was not computed (method={report.meta.get('method')!r})")
    return want


def _sample_table(report: "Report", sample: Optional[int]) -> Any:
    t = report.table
    if sample is None:
        return t
    d = t[t["sample"] == sample]
    if d.empty:
        raise InvalidArgumentError(
            f"sample: {sample} not in the report (samples: {sorted(int(s) for s in t['sample'].unique())})"
        )
    return d


def _layers(df: Any) -> List[str]:
    return list(dict.fromkeys(df["layer"]))


def _kind(df: Any, layer: str) -> str:
    return str(df.loc[df["layer"] == layer, "kind"].iloc[0])


def _marker_positions(report: "Report", sample: Optional[int]) -> List[int]:
    if sample is None:
        ps = sorted({int(p) for v in report.markers.values() for p in v})
        return ps
    return [int(p) for p in report.markers.get(sample, [])]


def _reach(values: Sequence[Any], tss: float, top: float) -> float:
    """Top of a curves panel's ESS axis (before a 10% margin): the largest value a layer can reach,
    ``min(TSS, top)`` with ``top`` the largest boundary bound, or the largest of ``values`` (arrays,
    NaN ignored) if higher, or the TSS when it is drawn (within 1.25 ``top``); at least 1."""
    hi = max([float(np.nanmax(v)) for v in values if np.isfinite(np.asarray(v, float)).any()] + [0.0])
    return max(hi, min(tss, top), tss if tss <= 1.25 * top else 0.0, 1.0)


def _pivots(d: Any, ms: Sequence[str]) -> Tuple[Any, np.ndarray, Dict[str, Any]]:
    """One layer's rows ``d`` by position: ``(bound, pos, pivs)``, the boundary bound per position (a
    Series), the positions (array) and, per measure, the positions x heads/channels table of its ESS."""
    bound = d.groupby("position")["bound"].first()
    pos = bound.index.to_numpy()
    pivs = {m: d.pivot_table(index="position", columns="index", values=f"ess_{m}").reindex(pos) for m in ms}
    return bound, pos, pivs


def _entropy_on_right(pivs: Dict[str, Any], ms: Sequence[str]) -> bool:
    """Whether the entropy-ESS gets its own (right) axis: both measures drawn and its maximum below
    :data:`TWIN_AXIS_RATIO` of the tolerance-ESS's (else it would be a flat line at zero)."""
    if len(ms) != 2:
        return False
    hi_t, hi_e = float(np.nanmax(pivs["tolerance"].to_numpy())), float(np.nanmax(pivs["entropy"].to_numpy()))
    return hi_t > 0 and hi_e < TWIN_AXIS_RATIO * hi_t


def _entropy_axis(ax: Any, pivs: Dict[str, Any], ms: Sequence[str]) -> Any:
    """The right axis of a panel for a much smaller entropy-ESS (:func:`_entropy_on_right`), else ``None``."""
    if not _entropy_on_right(pivs, ms):
        return None
    hi_e = float(np.nanmax(pivs["entropy"].to_numpy()))
    twin = ax.twinx()
    twin.set_ylim(0, 1.15 * max(hi_e, 1e-9))
    twin.set_ylabel("entropy-ESS (right axis)", fontsize=8, color=MEASURE_COLORS["entropy"])
    twin.tick_params(axis="y", labelsize=7, colors=MEASURE_COLORS["entropy"])
    return twin


def _draw_measure(a: Any, m: str, piv: Any, pos: Any, band: bool, max_lines: int, handles: dict) -> None:
    """One measure on axis ``a``: the min-max band over heads/channels (with thin edges), up to
    ``max_lines`` individual operators, then the mean; new legend entries go into ``handles``."""
    c = MEASURE_COLORS[m]
    if band and piv.shape[1] > 1:
        lo, hi_ = piv.min(axis=1).to_numpy(), piv.max(axis=1).to_numpy()
        h = a.fill_between(pos, lo, hi_, color=c, alpha=0.15, lw=0)
        for edge in (lo, hi_):  # thin edges: each band stays readable where the two overlap
            a.plot(pos, edge, lw=0.5, alpha=0.6, color=c)
        handles.setdefault(f"{m}: range over heads/channels", h)
    for j in list(piv.columns)[: max(0, int(max_lines))]:
        a.plot(pos, piv[j].to_numpy(), lw=0.5, alpha=0.45, color=c)
    (h,) = a.plot(pos, piv.mean(axis=1).to_numpy(), lw=1.8, color=c)
    handles.setdefault(f"{m}: mean over heads/channels", h)


def _draw_references(ax: Any, bound: Any, tss: float, top: float, marks: Sequence[int], handles: dict) -> str:
    """The boundary bound, the TSS (when within 1.25 ``top``) and the marker positions on ``ax``;
    returns the TSS part of the panel's title."""
    pos = bound.index.to_numpy()
    # the bound on top: curves often sit on it
    (h,) = ax.plot(pos, bound.to_numpy(), ls=(0, (4, 3)), lw=1.0, color="0.15", zorder=4)
    handles.setdefault("boundary bound min(t, L - t)", h)
    if tss <= 1.25 * top:
        h = ax.axhline(tss, ls=":", lw=1.3, color="tab:red")
        handles.setdefault("TSS (theoretical state size)", h)
        suffix = f", TSS = {tss:g}"
    else:
        suffix = f", TSS = {tss:g} (above the range)"
    for p in marks:
        h = ax.axvline(p, color="0.55", lw=0.8, ls=(0, (1, 2)))
        handles.setdefault("marker token (delimiter / EOS)", h)
    return suffix


def _curves_panel(
    ax: Any, d: Any, layer: str, ms: Sequence[str], band: bool, max_lines: int, marks: Sequence[int], handles: dict
) -> bool:
    """One layer's panel of :func:`curves` on ``ax`` (``d``: the layer's rows); new legend entries go
    into ``handles``. Returns whether the entropy-ESS got its own right axis."""
    bound, pos, pivs = _pivots(d, ms)
    top = float(bound.max()) if len(bound) else 1.0
    twin = _entropy_axis(ax, pivs, ms)
    for m, piv in pivs.items():
        a = twin if (twin is not None and m == "entropy") else ax
        _draw_measure(a, m, piv, pos, band, max_lines, handles)
    tss = float(d["tss"].mean())
    # the vertical range: the largest value any operator of the layer can reach, min(TSS, max bound), or the
    # data if higher; a layer with a small TSS (a short convolution) is not flattened by a bound many times higher
    hi = _reach([pivs[m].to_numpy() for m in ms if not (twin is not None and m == "entropy")], tss, top)
    title = f"{layer} ({_kind(d, layer)})" + _draw_references(ax, bound, tss, top, marks, handles)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("split position t", fontsize=8)
    ax.set_ylabel("ESS (state dimensions)" if twin is None else "tolerance-ESS, bound, TSS", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlim(pos.min(), pos.max())
    ax.set_ylim(0, 1.1 * hi)
    ax.grid(alpha=0.25, lw=0.5)
    return twin is not None


def _curves_header(fig: Any, handles: dict, sample: Optional[int], any_twin: bool) -> None:
    """The title and the shared legend above the panels of :func:`curves`, then the panels moved up
    to just under the legend."""
    what = "sample %d" % sample if sample is not None else "mean over samples"
    H = fig.get_figheight()
    fig.suptitle(
        f"ESS per split position ({what})"
        + (": entropy-ESS on the right axis where it is much smaller" if any_twin else ""),
        fontsize=10,
        y=1.0 - 0.06 / H,
        va="top",
    )
    ncl = min(3, len(handles))
    leg = fig.legend(
        list(handles.values()),
        list(handles),
        loc="upper center",
        ncol=ncl,
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0 - 0.28 / H),
    )
    leg.set_in_layout(False)
    rows = (len(handles) + ncl - 1) // max(1, ncl)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - (0.36 + 0.15 * rows) / H))
    # then the panels (their titles included) are moved up to just under the legend, wherever its rows end
    px = fig.dpi * H
    gap = leg.get_window_extent().y0 - max(a.get_tightbbox().y1 for a in fig.axes if a.get_visible()) - 0.08 * fig.dpi
    if gap > 0:
        fig.subplots_adjust(top=fig.subplotpars.top + gap / px)


def curves(
    report: "Report",
    *,
    sample: Optional[int] = 0,
    measure: Optional[str] = None,
    band: bool = True,
    max_lines: int = 0,
    ncols: int = 2,
    fig: Any = None,
) -> Any:
    """ESS against position, one panel per layer. For each measure drawn (``measure``: ``"tolerance"``,
    ``"entropy"``, ``"both"``; default both when computed): the mean over the layer's heads/channels
    (thick) and the band between their minimum and maximum (shaded, ``band=False`` to drop it), plus
    up to ``max_lines`` individual operators (thin); when the entropy-ESS stays below a quarter of the
    tolerance-ESS it is drawn against its own axis on the right. Also the layer's TSS (dotted; noted in the title
    when above the plotted range), the boundary bound ``min(t, L - t)`` (dashed) and the marker tokens
    (delimiter / EOS, grey vertical lines). ``sample=None`` averages over samples.

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> fig = ess.plots.curves(report, measure="tolerance")
    >>> [ax.get_title() for ax in fig.axes]
    ['blocks.0.mixer (conv), TSS = 3', 'blocks.1.mixer (softmax_attention), TSS = 8 (above the range)']
    """
    ms = measures(report, measure)
    df = _sample_table(report, sample)
    layers = _layers(df)
    n = len(layers)
    ncol = max(1, min(int(ncols), n))
    nrow = (n + ncol - 1) // ncol
    if fig is None:
        fig = new_figure(5.2 * ncol, 2.7 * nrow + 0.7)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    marks = _marker_positions(report, sample)
    handles: dict = {}
    twins: List[str] = []  # the layers whose entropy-ESS sits on a right axis
    for k, layer in enumerate(layers):
        if _curves_panel(
            axes[k // ncol][k % ncol], df[df["layer"] == layer], layer, ms, band, max_lines, marks, handles
        ):
            twins.append(layer)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    _curves_header(fig, handles, sample, bool(twins))
    return fig


def heatmap(report: "Report", *, sample: Optional[int] = 0, measure: Optional[str] = None, fig: Any = None) -> Any:
    """ESS of every head/channel (rows) at every split position (columns), one panel per layer, each
    with its own number of rows and its own colour scale (0 to the layer's largest value), and the
    marker positions as ticks above the panel. ``measure``: ``"tolerance"`` or ``"entropy"`` (default:
    entropy when computed, the more informative of the two near the bounds); ``sample=None`` averages
    over samples.

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> fig = ess.plots.heatmap(report, measure="entropy")   # one panel and one colour bar per layer
    >>> len(fig.axes)
    4
    """
    ms = measures(report, measure)
    if len(ms) > 1:
        if measure == "both":
            raise InvalidArgumentError("measure: heatmap draws one measure, 'tolerance' or 'entropy', not 'both'")
        ms = ["entropy"]
    col = f"ess_{ms[0]}"
    df = _sample_table(report, sample)
    layers = _layers(df)
    n_ops = [int(df.loc[df["layer"] == l, "index"].nunique()) for l in layers]
    heights = [0.55 + min(o, 64) / 32.0 for o in n_ops]  # inches: 4 heads ~0.7, 64 channels 2.55
    gap = 0.55
    if fig is None:
        fig = new_figure(9.0, 0.9 + sum(heights) + gap * len(layers))
    gs = fig.add_gridspec(
        len(layers),
        2,
        height_ratios=heights,
        width_ratios=[40, 1],
        hspace=gap / (sum(heights) / len(heights)),
        wspace=0.03,
    )
    marks = _marker_positions(report, sample)
    for i, layer in enumerate(layers):
        d = df[df["layer"] == layer]
        piv = d.pivot_table(index="index", columns="position", values=col)
        M = piv.to_numpy()
        pos = piv.columns.to_numpy()
        ax = fig.add_subplot(gs[i, 0])
        vmax = float(np.nanmax(M)) if np.isfinite(M).any() else 1.0
        im = ax.imshow(
            M,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=0,
            vmax=max(vmax, 1e-12),
            extent=(pos.min() - 0.5, pos.max() + 0.5, M.shape[0] - 0.5, -0.5),
        )
        nop = M.shape[0]
        unit = "head" if "attention" in _kind(d, layer) else "channel"
        ax.set_ylabel(f"{unit} ({nop})", fontsize=7)
        if nop <= 8:
            ax.set_yticks(range(nop))
        ax.tick_params(labelsize=6)
        ax.set_title(f"{layer} ({_kind(d, layer)})", fontsize=8, loc="left")
        for p in marks:
            ax.plot([p], [-0.5], marker="v", color="red", ms=4, clip_on=False)
        if i == len(layers) - 1:
            ax.set_xlabel("split position t" + ("   (red triangles: marker tokens)" if marks else ""), fontsize=7)
        cax = fig.add_subplot(gs[i, 1])
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(f"{ms[0][:3]}-ESS", fontsize=6)
    what = "sample %d" % sample if sample is not None else "mean over samples"
    H = fig.get_figheight()
    fig.suptitle(f"{ms[0]}-ESS per head/channel and position ({what})", fontsize=10, y=1.0 - 0.06 / H, va="top")
    fig.subplots_adjust(left=0.09, right=0.92, top=1.0 - 0.6 / H, bottom=0.5 / H)
    return fig


def utilisation(report: "Report", *, fig: Any = None) -> Any:
    """Per layer: utilisation (average ESS / TSS) and fill (average ESS / attainable, the mean of
    ``min(TSS, t, L - t)``) of the measure the flags use, and the fill of the entropy-ESS when the
    flags use the tolerance-ESS; the saturation and collapse thresholds as lines. Bars are labelled
    with their percentage; the legend sits above the axes.

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> fig = ess.plots.utilisation(report)
    >>> ax = fig.axes[0]
    >>> ax.get_ylabel(), [t.get_text().replace(chr(10), " ") for t in ax.get_xticklabels()]
    ('fraction', ['blocks.0.mixer (conv)', 'blocks.1.mixer (softmax_attention)'])
    """
    s = report.summary
    if fig is None:
        fig = new_figure(max(7.5, 1.5 + 1.3 * len(s)), 3.8)
    ax = fig.subplots()
    x = np.arange(len(s))
    series = [
        ("utilisation", s["utilisation"].to_numpy(float), f"utilisation = {report.primary}-ESS / TSS", "#1f77b4"),
        ("fill", s["fill"].to_numpy(float), f"fill = {report.primary}-ESS / attainable", "#ff7f0e"),
    ]
    if report.primary == "tolerance" and "avg_ess_entropy" in s and s["avg_ess_entropy"].notna().any():
        att = s["attainable"].to_numpy(float)
        ent = np.divide(s["avg_ess_entropy"].to_numpy(float), att, out=np.full(len(s), np.nan), where=att > 0)
        series.append(("entropy fill", ent, "entropy-ESS / attainable", "#2ca02c"))
    w = 0.8 / len(series)
    for i, (_, v, label, c) in enumerate(series):
        bars = ax.bar(x - 0.4 + (i + 0.5) * w, v, width=w, label=label, color=c)
        ax.bar_label(bars, labels=[f"{100 * b:.0f}%" if np.isfinite(b) else "" for b in v], fontsize=6, padding=1)
    ax.axhline(
        report.meta.get("saturation", 0.9),
        color="tab:red",
        ls=":",
        lw=1,
        label=f"saturation threshold ({report.meta.get('saturation', 0.9):g})",
    )
    ax.axhline(
        report.meta.get("collapse", 0.1),
        color="tab:purple",
        ls=":",
        lw=1,
        label=f"collapse threshold ({report.meta.get('collapse', 0.1):g})",
    )
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a}\n({b})" for a, b in zip(s["layer"], s["kind"])], fontsize=7)
    vals = np.concatenate([v for _, v, _, _ in series]) if len(s) else np.array([1.0])
    ax.set_ylim(0, 1.12 * max(1.0, float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0))
    ax.set_ylabel("fraction", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.25, lw=0.5)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3, frameon=False, borderaxespad=0)
    fig.tight_layout()
    return fig


def _per_sample(report: "Report", ms: Sequence[str]) -> Any:
    """The report's table and per-(sample, layer) averages, with a ``job``-like ``group`` column of
    sample labels, in the form :mod:`ess.compare` draws."""
    t = report.table.assign(group="sample " + report.table["sample"].astype(str))
    agg = {f"avg_ess_{m}": (f"ess_{m}", "mean") for m in ms}
    s = t.groupby(["group", "layer"], sort=False, observed=True).agg(kind=("kind", "first"), **agg).reset_index()
    groups = ["sample %d" % k for k in sorted(int(v) for v in report.table["sample"].unique())]
    return t, s, groups


def samples(report: "Report", *, measure: Optional[str] = None, fig: Any = None, **kwargs: Any) -> Any:
    """The samples of the report compared: per layer, the mean ESS over heads/channels against
    position, one line per sample (:func:`ess.compare.curves_of`).

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.randint(2, 60, (2, 8)), progress=False)   # two samples
    >>> fig = ess.plots.samples(report, measure="entropy")
    >>> [ax.get_title() for ax in fig.axes]
    ['blocks.0.mixer (conv)', 'blocks.1.mixer (softmax_attention)']
    """
    from . import compare

    ms = measures(report, measure)
    m = "entropy" if len(ms) > 1 and measure is None else ms[0]
    if measure == "both":
        raise InvalidArgumentError("measure: the sample comparison draws one measure, 'tolerance' or 'entropy'")
    t, _, groups = _per_sample(report, [m])
    kwargs.setdefault("ncols", 2)
    fig = compare.curves_of(t, "group", groups, m, fig=fig, title=f"{m}-ESS per layer, samples overlaid", **kwargs)
    for ax in fig.axes:  # the marker tokens of any sample, as in :func:`curves`
        if ax.get_visible():
            for p in _marker_positions(report, None):
                ax.axvline(p, color="0.55", lw=0.8, ls=(0, (1, 2)), zorder=0)
    return fig


def sample_layers(report: "Report", *, measure: Optional[str] = None, fig: Any = None) -> Any:
    """The samples of the report compared layer by layer: average ESS (over heads/channels and
    positions) per layer, one bar per sample (:func:`ess.compare.layers_of`).

    Examples
    --------
    >>> import torch, ess, ess.plots
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.randint(2, 60, (2, 8)), progress=False)   # two samples
    >>> fig = ess.plots.sample_layers(report)
    >>> fig.axes[0].get_title()
    'average entropy-ESS per layer, by sample'
    """
    from . import compare

    ms = measures(report, measure)
    if measure == "both":
        raise InvalidArgumentError("measure: the layer comparison draws one measure, 'tolerance' or 'entropy'")
    m = "entropy" if len(ms) > 1 and measure is None else ms[0]
    _, s, groups = _per_sample(report, [m])
    return compare.layers_of(s, "group", groups, m, fig=fig, title=f"average {m}-ESS per layer, by sample")


_FORMATS = {".svg": "svg", ".pdf": "pdf", ".png": "png", ".eps": "eps"}


def save_figure(fig: Any, path: Union[str, "os.PathLike[str]"], *, dpi: int = 300) -> Path:
    """Write ``fig`` to ``path``, the format taken from the suffix (``.svg``, ``.pdf``, ``.eps``,
    ``.png``), at print quality: vector formats keep text as text (SVG) or embed TrueType fonts
    (PDF/EPS, as journals ask), PNG at ``dpi`` (300 by default); tight bounding box.

    Examples
    --------
    >>> import os, tempfile
    >>> from ess.plots import new_figure, save_figure
    >>> fig = new_figure(3, 2)
    >>> _ = fig.add_subplot().plot([0, 1, 2], [0, 1, 0])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_figure(fig, os.path.join(d, "curve.svg"))
    ...     print(p.name, p.read_text().lstrip().startswith("<?xml"))
    curve.svg True
    >>> save_figure(fig, "curve.txt")
    Traceback (most recent call last):
        ...
    ess.errors.InvalidArgumentError: path: 'curve.txt' has no figure suffix; expected one of ['.eps', '.pdf', '.png', '.svg']
    """
    import matplotlib

    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidArgumentError(f"path: {str(path)!r} has no figure suffix; expected one of {sorted(_FORMATS)}")
    if not p.parent.is_dir():
        raise InvalidArgumentError(f"path: the directory {str(p.parent)!r} does not exist")
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}):
        fig.savefig(p, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return p
