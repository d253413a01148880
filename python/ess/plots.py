"""Figures of an :class:`ess.Report` (matplotlib; imported lazily).

Every function draws into a given :class:`matplotlib.figure.Figure` (a new one when ``fig`` is
``None``, created without pyplot so that saving works headless) and returns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report

__all__ = ["curves", "heatmap", "utilisation", "new_figure"]


def new_figure(width: float, height: float, pyplot: bool = False) -> Any:
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=(width, height))
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _measure_col(report: "Report", measure: Optional[str]) -> str:
    m = measure or report.primary
    if m not in ("tolerance", "entropy"):
        raise ValueError(f"measure: expected 'tolerance' or 'entropy', got {m!r}")
    col = f"ess_{m}"
    if report.table[col].isna().all():
        raise ValueError(f"measure {m!r} was not computed (method={report.meta.get('method')!r})")
    return col


def curves(report: "Report", *, sample: int = 0, measure: Optional[str] = None, max_lines: int = 16, fig: Any = None) -> Any:
    """ESS against position, one panel per layer: every operator (thin, at most ``max_lines``), their
    mean (thick), the layer's TSS and the boundary bound ``min(t, L - t)`` (dashed), and vertical
    lines at the marker tokens (delimiter / EOS)."""
    col = _measure_col(report, measure)
    df = report.table[report.table["sample"] == sample]
    if df.empty:
        raise ValueError(f"sample {sample} not in the report (samples: {sorted(report.table['sample'].unique())})")
    layers = list(dict.fromkeys(df["layer"]))
    n = len(layers)
    ncol = min(2, n)
    nrow = (n + ncol - 1) // ncol
    if fig is None:
        fig = new_figure(6.0 * ncol, 2.8 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    marks = report.markers.get(sample, [])
    for k, layer in enumerate(layers):
        ax = axes[k // ncol][k % ncol]
        d = df[df["layer"] == layer]
        piv = d.pivot_table(index="position", columns="index", values=col)
        pos = piv.index.to_numpy()
        for j in list(piv.columns)[:max_lines]:
            ax.plot(pos, piv[j].to_numpy(), lw=0.6, alpha=0.35, color="tab:blue")
        ax.plot(pos, piv.mean(axis=1).to_numpy(), lw=2.0, color="tab:blue", label="mean over operators")
        bound = d.groupby("position")["bound"].first().reindex(pos).to_numpy()
        ax.plot(pos, bound, ls="--", lw=1.0, color="0.4", label="min(t, L-t)")
        tss = float(d["tss"].mean())
        if tss < float(np.max(bound)) * 1.5 + 1:
            ax.axhline(tss, ls=":", lw=1.2, color="tab:red", label=f"TSS = {tss:g}")
        for p in marks:
            ax.axvline(p, color="tab:green", lw=0.8, alpha=0.7)
        kind = d["kind"].iloc[0]
        ax.set_title(f"{layer} ({kind})", fontsize=9)
        ax.set_xlabel("position t")
        ax.set_ylabel(col.replace("_", " "))
        ax.set_ylim(bottom=0)
        if k == 0:
            ax.legend(fontsize=7, loc="upper right")
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    if marks:
        fig.text(0.01, 0.005, "green lines: marker tokens (delimiter / EOS)", fontsize=7)
    fig.tight_layout()
    return fig


def heatmap(report: "Report", *, sample: Optional[int] = None, measure: Optional[str] = None, fig: Any = None) -> Any:
    """Average ESS (over positions, and samples unless ``sample`` is given) per layer (rows) and
    head/channel (columns); layers with fewer operators are padded blank."""
    col = _measure_col(report, measure)
    df = report.table if sample is None else report.table[report.table["sample"] == sample]
    layers = list(dict.fromkeys(df["layer"]))
    avg = df.groupby(["layer", "index"])[col].mean()
    width = int(df["index"].max()) + 1
    M = np.full((len(layers), width), np.nan)
    for i, layer in enumerate(layers):
        s = avg.loc[layer]
        M[i, s.index.to_numpy()] = s.to_numpy()
    if fig is None:
        fig = new_figure(min(14.0, 3.0 + 0.12 * width), 1.2 + 0.45 * len(layers))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(M), aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([f"{l} ({df[df['layer'] == l]['kind'].iloc[0]})" for l in layers], fontsize=8)
    ax.set_xlabel("head / channel index")
    ax.set_title(f"average {col.replace('_', ' ')} per operator", fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def utilisation(report: "Report", *, fig: Any = None) -> Any:
    """Per layer: utilisation (average ESS / TSS) and fill (average ESS / attainable ESS), with the
    saturation and collapse thresholds."""
    s = report.summary
    if fig is None:
        fig = new_figure(max(5.0, 1.0 + 0.9 * len(s)), 3.4)
    ax = fig.subplots()
    x = np.arange(len(s))
    ax.bar(x - 0.2, s["utilisation"].to_numpy(), width=0.4, label="utilisation = ESS / TSS")
    ax.bar(x + 0.2, s["fill"].to_numpy(), width=0.4, label="fill = ESS / attainable")
    ax.axhline(report.meta.get("saturation", 0.9), color="tab:red", ls=":", lw=1, label="saturation threshold")
    ax.axhline(report.meta.get("collapse", 0.1), color="tab:purple", ls=":", lw=1, label="collapse threshold")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a}\n({b})" for a, b in zip(s["layer"], s["kind"])], fontsize=7, rotation=0)
    ax.set_ylim(0, 1.05 * max(1.0, float(np.nanmax(s[["utilisation", "fill"]].to_numpy())) if len(s) else 1.0))
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
