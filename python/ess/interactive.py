"""Interactive figures of an :class:`ess.Report` for the HTML page (plotly; optional, imported lazily).

One figure per layer: on top the ESS curves (mean over heads/channels, the band they span, each
head / channel as its own legend entry that can be toggled, the TSS and the boundary bound), below
the heads/channels x positions heatmap on the same position axis; hovering shows position, token and
value; buttons switch between the tolerance-ESS, the entropy-ESS and both; plotly's camera button
downloads the figure as SVG. The page embeds plotly.js once (:func:`plotly_js`), so nothing is
fetched at view time. Without plotly the report keeps its static figures only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report

__all__ = ["available", "plotly_js", "layer_figure", "layer_divs"]

#: individual head/channel traces drawn per measure (the band and the heatmap cover the rest)
MAX_TRACES = 16
#: heatmaps up to this many cells name the token of each cell on hover
MAX_TOKEN_CELLS = 20000

_COLORS = {"tolerance": "#1f77b4", "entropy": "#ff7f0e"}


def available() -> bool:
    """Whether plotly can be imported (the HTML page then carries the interactive figures).

    Examples
    --------
    >>> from ess import interactive
    >>> interactive.available()          # plotly is installed
    True
    """
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def plotly_js() -> str:
    """plotly.js itself (minified), to inline once in a page.

    Examples
    --------
    >>> from ess import interactive
    >>> js = interactive.plotly_js()
    >>> len(js) > 1_000_000, "plotly" in js[:2000].lower()
    (True, True)
    """
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _rgba(hex_color: str, a: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{a})"


def _hover_tokens(report: "Report", d: Any, pos: np.ndarray, sample: int) -> List[str]:
    """The token shown on hover at each position: decoded (sample 0, when given), else the id."""
    if sample == 0 and report.tokens is not None:
        return [str(report.tokens[p]) if p < len(report.tokens) else "" for p in pos]
    if "token" in d:
        tk = d.groupby("position")["token"].first().reindex(pos)
        return [str(int(v)) for v in tk.to_numpy()]
    return [""] * len(pos)


def _style_axes(fig: Any, twin: bool, unit: str) -> None:
    """Axis titles: one ESS axis, or tolerance left and entropy right (``twin``); heatmap rows reversed."""
    if twin:
        fig.update_yaxes(title_text="tolerance-ESS, bound, TSS", rangemode="tozero", row=1, col=1, secondary_y=False)
        fig.update_yaxes(
            title_text="entropy-ESS (right)",
            rangemode="tozero",
            showgrid=False,
            row=1,
            col=1,
            secondary_y=True,
            title_font=dict(color=_COLORS["entropy"]),
            tickfont=dict(color=_COLORS["entropy"]),
        )
    else:
        fig.update_yaxes(title_text="ESS (dims)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text=unit + "s", autorange="reversed", row=2, col=1)
    fig.update_xaxes(title_text="split position t", row=2, col=1)


#: per trace of a layer figure: the measure it belongs to (``None``: always shown) and, for a heatmap, its measure
_Tags = List[Tuple[Optional[str], Optional[str]]]

_HOVER = "t = %{x}<br>token %{customdata}<br>%{fullData.name}: %{y:.3f}<extra></extra>"


class _Layer(NamedTuple):
    """One layer of one sample, as its interactive figure draws it."""

    d: Any  #: the layer's rows of the report's table
    kind: str
    unit: str  #: "head" or "channel"
    bound: Any  #: position -> boundary bound (a pandas Series)
    pos: np.ndarray
    toks: List[str]  #: the token named on hover at each position
    pivs: Dict[str, Any]  #: measure -> positions x heads/channels table of its ESS
    tss: float
    top: float  #: the largest boundary bound (1 when there is none)


def _layer_data(report: "Report", layer: str, sample: int, ms: List[str]) -> _Layer:
    """The rows of ``layer`` in ``sample`` and what the figure derives from them, for the measures ``ms``."""
    from .plots import _pivots

    t = report.table
    d = t[(t["layer"] == layer) & (t["sample"] == sample)]
    kind = str(d["kind"].iloc[0])
    bound, pos, pivs = _pivots(d, ms)
    return _Layer(
        d=d,
        kind=kind,
        unit="head" if "attention" in kind else "channel",
        bound=bound,
        pos=pos,
        toks=_hover_tokens(report, d, pos, sample),
        pivs=pivs,
        tss=float(d["tss"].mean()),
        top=float(bound.max()) if len(bound) else 1.0,
    )


def _add_band(fig: Any, L: _Layer, m: str, sec: Dict[str, bool]) -> _Tags:
    """The band between the minimum and maximum over heads/channels of measure ``m`` (none for one operator)."""
    import plotly.graph_objects as go

    piv = L.pivs[m]
    if piv.shape[1] <= 1:
        return []
    lo = go.Scatter(
        x=L.pos,
        y=piv.min(axis=1).to_numpy(),
        mode="lines",
        line=dict(width=0),
        hoverinfo="skip",
        showlegend=False,
        legendgroup=f"band-{m}",
    )
    fig.add_trace(lo, row=1, col=1, **sec)
    hi = go.Scatter(
        x=L.pos,
        y=piv.max(axis=1).to_numpy(),
        mode="lines",
        line=dict(width=0),
        fill="tonexty",
        fillcolor=_rgba(_COLORS[m], 0.18),
        name=f"{m}: range over {L.unit}s",
        legendgroup=f"band-{m}",
        legendrank=2,
        hoverinfo="skip",
    )
    fig.add_trace(hi, row=1, col=1, **sec)
    return [(m, None), (m, None)]


def _add_lines(fig: Any, L: _Layer, m: str, sec: Dict[str, bool]) -> _Tags:
    """The mean of measure ``m`` over heads/channels (thick), then up to :data:`MAX_TRACES` of them
    (thin; hidden in the legend when more than 8)."""
    import plotly.graph_objects as go

    piv, c = L.pivs[m], _COLORS[m]
    mean = go.Scatter(
        x=L.pos,
        y=piv.mean(axis=1).to_numpy(),
        mode="lines",
        line=dict(color=c, width=2.5),
        name=f"{m}-ESS, mean",
        customdata=L.toks,
        hovertemplate=_HOVER,
        legendrank=1,
    )
    fig.add_trace(mean, row=1, col=1, **sec)
    cols = list(piv.columns)
    for j in cols[:MAX_TRACES]:
        one = go.Scatter(
            x=L.pos,
            y=piv[j].to_numpy(),
            mode="lines",
            line=dict(color=c, width=0.8),
            opacity=0.55,
            name=f"{m}: {L.unit} {j}",
            customdata=L.toks,
            hovertemplate=_HOVER,
            legendrank=100 + int(j),
            visible=True if len(cols) <= 8 else "legendonly",
        )
        fig.add_trace(one, row=1, col=1, **sec)
    return [(m, None)] * (1 + len(cols[:MAX_TRACES]))


def _add_heatmap(fig: Any, L: _Layer, m: str) -> _Tags:
    """The heads/channels x positions heatmap of measure ``m`` (bottom row)."""
    import plotly.graph_objects as go

    hm = L.d.pivot_table(index="index", columns="position", values=f"ess_{m}").reindex(columns=L.pos)
    if hm.size <= MAX_TOKEN_CELLS:  # hover names the token; on big layers only the position (the page stays small)
        hkw: Dict[str, Any] = {
            "text": [[f"token {tk}" for tk in L.toks]] * len(hm.index),
            "hovertemplate": "%{y}, t = %{x}, %{text}<br>" + m + "-ESS %{z:.3f}<extra></extra>",
        }
    else:
        hkw = {"hovertemplate": "%{y}, t = %{x}<br>" + m + "-ESS %{z:.3f}<extra></extra>"}
    fig.add_trace(
        go.Heatmap(
            z=hm.to_numpy(),
            x=L.pos,
            y=[f"{L.unit} {i}" for i in hm.index],
            colorscale="Viridis",
            zmin=0,
            **hkw,
            colorbar=dict(title=dict(text=f"{m[:3]}-ESS", side="right"), len=0.42, y=0.2, thickness=12),
            showscale=True,
            name=f"{m} heatmap",
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    return [(m, m)]


def _add_references(fig: Any, L: _Layer) -> _Tags:
    """The boundary bound and, when within 1.25 times its maximum, the TSS (top row, always shown)."""
    import plotly.graph_objects as go

    bound = go.Scatter(
        x=L.pos,
        y=L.bound.to_numpy(),
        mode="lines",
        line=dict(color="#555", dash="dash", width=1.2),
        name="bound min(t, L - t)",
        legendrank=3,
        hovertemplate="t = %{x}: bound %{y}<extra></extra>",
    )
    fig.add_trace(bound, row=1, col=1)
    if L.tss > 1.25 * L.top:
        return [(None, None)]
    tss = go.Scatter(
        x=[L.pos.min(), L.pos.max()],
        y=[L.tss, L.tss],
        mode="lines",
        line=dict(color="#d62728", dash="dot", width=1.5),
        name=f"TSS = {L.tss:g}",
        legendrank=4,
        hovertemplate=f"TSS = {L.tss:g}<extra></extra>",
    )
    fig.add_trace(tss, row=1, col=1)
    return [(None, None), (None, None)]


def _visibility(tags: _Tags, ms: List[str], sel: List[str]) -> List[Any]:
    """Which traces show when the measures ``sel`` are selected: their curves and one heatmap (the
    entropy-ESS's, else the first measure's, when both are selected)."""
    default = "entropy" if "entropy" in ms else ms[0]
    out: List[Any] = []
    for g, h in tags:
        if h is not None:
            out.append(h == (default if len(sel) > 1 else sel[0]))
        else:
            out.append(g is None or g in sel)
    return out


def _layout(fig: Any, layer: str, sample: int, L: _Layer, tags: _Tags, ms: List[str]) -> None:
    """The initial visibility, the measure buttons (when both measures were computed), title, size, legend."""
    for tr, v in zip(fig.data, _visibility(tags, ms, ms)):
        if tr.visible != "legendonly" or not v:
            tr.visible = v
    buttons = []
    if len(ms) > 1:
        for label, sel in (("both", ms), ("tolerance", ["tolerance"]), ("entropy", ["entropy"])):
            buttons.append(dict(label=label, method="restyle", args=[{"visible": _visibility(tags, ms, sel)}]))
    above = "" if L.tss <= 1.25 * L.top else f", TSS = {L.tss:g} (above the range)"
    fig.update_layout(
        title=dict(text=f"{layer} ({L.kind}), sample {sample}" + above, font=dict(size=14), x=0.0, xanchor="left"),
        height=560,
        margin=dict(l=60, r=30, t=70, b=50),
        template="plotly_white",
        legend=dict(font=dict(size=10), x=1.1, xanchor="left", y=1.0, yanchor="top"),
        hovermode="closest",
        updatemenus=[
            dict(
                type="buttons",
                direction="right",
                buttons=buttons,
                x=1.0,
                xanchor="right",
                y=1.1,
                yanchor="bottom",
                showactive=True,
                font=dict(size=11),
            )
        ]
        if buttons
        else [],
    )


def layer_figure(report: "Report", layer: str, *, sample: int = 0) -> Any:
    """The interactive figure of one layer (a :class:`plotly.graph_objects.Figure`).

    Examples
    --------
    >>> import torch, ess
    >>> from ess import interactive
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> fig = interactive.layer_figure(report, "blocks.0.mixer")
    >>> type(fig).__name__, sorted({trace.type for trace in fig.data})
    ('Figure', ['heatmap', 'scatter'])
    """
    from plotly.subplots import make_subplots

    from .plots import _entropy_on_right, _reach, measures

    ms = measures(report, None)
    L = _layer_data(report, layer, sample, ms)
    twin = _entropy_on_right(L.pivs, ms)  # as in the static figure: a much smaller entropy-ESS gets the right axis
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.58, 0.42],
        vertical_spacing=0.07,
        specs=[[{"secondary_y": twin}], [{}]],
    )
    tags: _Tags = []
    for m in L.pivs:
        sec = {"secondary_y": True} if twin and m == "entropy" else {}
        tags += _add_band(fig, L, m, sec) + _add_lines(fig, L, m, sec) + _add_heatmap(fig, L, m)
    tags += _add_references(fig, L)
    for p in report.markers.get(sample, []):
        fig.add_vline(x=p, line=dict(color="#888", width=1, dash="dot"))
    _layout(fig, layer, sample, L, tags, ms)
    _style_axes(fig, twin, L.unit)
    # as in the static figure: the ESS axis up to what the layer can reach (a bound many times higher leaves the top)
    hi = _reach([L.pivs[m].to_numpy() for m in ms if not (twin and m == "entropy")], L.tss, L.top)
    fig.update_yaxes(range=[0, 1.1 * hi], row=1, col=1, **({"secondary_y": False} if twin else {}))
    return fig


_CONFIG: Dict[str, Any] = {"displaylogo": False, "responsive": True}


def layer_divs(report: "Report", *, sample: int = 0) -> Dict[str, str]:
    """layer -> an HTML ``<div>`` with its interactive figure (plotly.js not included).

    Examples
    --------
    >>> import torch, ess
    >>> from ess import interactive
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> divs = interactive.layer_divs(report)
    >>> list(divs), divs["blocks.0.mixer"].lstrip().startswith("<div")
    (['blocks.0.mixer', 'blocks.1.mixer'], True)
    """
    out: Dict[str, str] = {}
    layers = list(dict.fromkeys(report.table.loc[report.table["sample"] == sample, "layer"]))
    for i, layer in enumerate(layers):
        fig = layer_figure(report, layer, sample=sample)
        cfg = dict(_CONFIG, toImageButtonOptions={"format": "svg", "scale": 1, "filename": f"ess-{layer}"})
        out[layer] = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"ifig-{i}",
            config=cfg,
            default_width="100%",
            default_height="560px",
        )
    return out
