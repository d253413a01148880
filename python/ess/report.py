"""``ess.Report``: the result of :func:`ess.analyze` (tables, flags, caveats, figures, files)."""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["Report", "BOUNDARY_CAVEAT", "TABLE_COLUMNS", "CATEGORY_COLUMNS"]

BOUNDARY_CAVEAT = (
    "Boundary effect: the ESS at split t is at most min(t, L - t) (the block H_t has t columns and L - t rows), "
    "so positions near the start and the end of the sequence cannot show the full state a layer holds. "
    "Averages include those positions; the 'attainable' column (mean of min(TSS, t, L - t)) is the largest "
    "average any operator of the layer could reach, and 'fill' = average ESS / attainable."
)

#: Columns of :attr:`Report.table`, in order (``token`` only when token ids were given); the types
#: are given there (:data:`CATEGORY_COLUMNS` are ``category`` columns).
TABLE_COLUMNS = (
    "sample",
    "layer",
    "kind",
    "operator",
    "index",
    "position",
    "token",
    "ess_tolerance",
    "ess_entropy",
    "tss",
    "bound",
    "shared",
)

LINEARISATION_CAVEAT = (
    "Jacobian operators (kind 'rnn_jacobian' or a note saying so) are local linearisations at the given input: "
    "their ESS describes the sensitivity of the outputs to the inputs there, not a global state size."
)


@dataclass
class Report:
    """ESS of the sequence-mixing layers of one model on some inputs.

    Attributes
    ----------
    table : tidy :class:`pandas.DataFrame`, one row per (sample, layer, operator, position), columns
        ``sample, layer, kind, operator, index, position, token, ess_tolerance, ess_entropy, tss,
        bound, shared`` (``bound = min(t, L - t)``; ``shared``: value channels using this operator).
        Rows in the order computed: layer by layer, then sample, operator, position. Types: ``layer``,
        ``kind`` and ``operator`` are ``category`` columns (:data:`CATEGORY_COLUMNS`; a few names repeated
        over millions of rows: one small integer code per row), their categories in sorted order, so
        sorting and grouping by them order the names as strings do (pass ``observed=True`` to
        ``groupby`` on pandas before 3.0, which otherwise adds empty groups for unseen names;
        ``.astype(str)`` gives plain strings); ``ess_tolerance``, ``ess_entropy`` and ``tss`` are float64,
        the others int64 (``token`` is -1 where a position has no token id). ``ess.csv`` holds the names
        as text; ``ess.parquet`` stores them dictionary-encoded and reads back as the same table.
    summary : one row per layer (averaged over samples): ``layer, kind, module_type, n_operators,
        channels, tss, avg_ess_tolerance, avg_ess_entropy, max_ess_tolerance, total_ess, total_tss,
        utilisation, attainable, fill, saturated, collapsed, note``.
        ``avg_*``: mean over operators and positions; ``total_ess``: sum over channels (an operator
        shared by ``c`` channels counts ``c`` times) of the per-channel average; ``utilisation``:
        average ESS / TSS; ``fill``: average ESS / attainable; ``saturated``: fill >= ``saturation``;
        ``collapsed``: fill <= ``collapse`` (both on the tolerance-ESS when computed, else entropy).
    skipped : ``(module name, type)`` of modules that look sequence-mixing but have no extractor.
    tokens : decoded tokens of the first sequence (when given), ``token_ids`` all token ids.
    markers : sample -> positions of marker tokens (delimiter / EOS).
    caveats : text caveats (boundary effect, local linearisation, ...).
    meta : model, device, length, method, thresholds, timings.

    Examples
    --------
    >>> import os, tempfile, torch, ess
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> report.n_samples, report.primary, report.meta["length"]
    (1, 'tolerance', 8)
    >>> report.summary[["layer", "tss", "attainable", "saturated"]]
                layer  tss  attainable  saturated
    0  blocks.0.mixer  3.0       1.875       True
    1  blocks.1.mixer  8.0       2.000       True
    >>> sorted(report.to_dict())
    ['caveats', 'layers', 'markers', 'meta', 'skipped', 'tokens']
    >>> fig = report.plot("curves", measure="entropy")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = report.save(d, interactive=False)
    ...     print(sorted(os.listdir(d)))
    ['curves.png', 'ess.csv', ...'heatmap.png', 'report.html', 'summary.csv', 'summary.json', 'utilisation.png']
    """

    table: Any
    summary: Any
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    tokens: Optional[List[str]] = None
    token_ids: Optional[np.ndarray] = None
    markers: Dict[int, List[int]] = field(default_factory=dict)
    caveats: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_rows(
        cls,
        rows: Dict[str, List[Any]],
        *,
        layer_meta: Sequence[Dict[str, Any]],
        skipped: Sequence[Tuple[str, str]],
        tokens: Optional[Sequence[str]],
        token_ids: Optional[np.ndarray],
        markers: Dict[int, List[int]],
        meta: Dict[str, Any],
    ) -> "Report":
        import pandas as pd

        df = _tidy_table(rows, token_ids)
        primary = "tolerance" if meta.get("method") in ("both", "tolerance") else "entropy"
        sat, col_thr = float(meta.get("saturation", 0.9)), float(meta.get("collapse", 0.1))
        recs = []
        where = _layer_rows(df)
        for lm in layer_meta:
            sel = where.get(lm["layer"])
            if sel is not None:
                d = df.iloc[sel] if isinstance(sel, slice) else df[sel]
                recs.append(_layer_summary(d, lm, primary, sat, col_thr))
        summary = pd.DataFrame(recs)
        caveats = [BOUNDARY_CAVEAT]
        if any("jacobian" in str(r["kind"]) or "lineari" in str(r["note"]) for r in recs):
            caveats.append(LINEARISATION_CAVEAT)
        if skipped:
            caveats.append(
                f"{len(skipped)} module(s) that look sequence-mixing were not analysed (no extractor): see 'skipped'."
            )
        meta = dict(meta)
        meta["primary_measure"] = primary
        return cls(
            df,
            summary,
            list(skipped),
            list(tokens) if tokens is not None else None,
            token_ids,
            dict(markers),
            caveats,
            meta,
        )

    @property
    def primary(self) -> str:
        return str(self.meta.get("primary_measure", "tolerance"))

    # ------------------------------------------------------------------ views
    def __repr__(self) -> str:
        return (
            f"<ess.Report: {len(self.summary)} layers, {self.meta.get('n_samples')} sample(s), L = {self.meta.get('length')}, "
            f"{len(self.skipped)} skipped, model {self.meta.get('model')}>"
        )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (what ``summary.json`` holds)."""
        return {
            "meta": _jsonable(self.meta),
            "layers": _jsonable(self.summary.to_dict(orient="records")),
            "skipped": [{"name": n, "type": t} for n, t in self.skipped],
            "caveats": list(self.caveats),
            "markers": {str(k): v for k, v in self.markers.items()},
            "tokens": self.tokens,
        }

    #: figure kinds of :meth:`plot` (those after "utilisation" need two samples or more)
    FIGURES = ("curves", "heatmap", "utilisation", "samples", "layers")

    @property
    def n_samples(self) -> int:
        return int(self.table["sample"].nunique()) if len(self.table) else 0

    def plot(
        self,
        kind: str = "curves",
        *,
        path: Union[None, str, "os.PathLike[str]"] = None,
        dpi: int = 300,
        _pyplot: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Draw a figure and return it (a :class:`matplotlib.figure.Figure`, made without pyplot):

        * ``"curves"``: ESS against position per layer, tolerance and/or entropy (``measure=``
          ``"tolerance"``, ``"entropy"``, ``"both"``), band over heads/channels, TSS, bound, markers;
        * ``"heatmap"``: heads/channels x positions per layer (``measure=`` one of the two);
        * ``"utilisation"``: utilisation and fill per layer;
        * ``"samples"``: the samples' curves overlaid per layer; ``"layers"``: average ESS per layer,
          sample by sample (both need two samples or more);
        * ``"all"``: a dict of every figure that applies.

        ``path``: also write the figure there, the format from the suffix (``.svg``, ``.pdf``,
        ``.eps``, ``.png`` at ``dpi``), at print quality (:func:`ess.plots.save_figure`); with
        ``"all"``, ``path`` is a directory that receives ``<kind>.pdf`` for every figure. Other keyword
        arguments go to the functions of :mod:`ess.plots` (``sample``, ``measure``, ``band``,
        ``max_lines``, ``ncols``, ``max_panels``, ``fig``); an unknown one raises
        :class:`~ess.errors.InvalidArgumentError`. Under an interactive matplotlib backend (a GUI, a
        notebook) with pyplot imported, the figure is pyplot's, so ``plt.show()`` shows it."""
        from . import plots

        fns = {
            "curves": plots.curves,
            "heatmap": plots.heatmap,
            "utilisation": plots.utilisation,
            "samples": plots.samples,
            "layers": plots.sample_layers,
        }
        if kind == "all":
            kinds = [k for k in self.FIGURES if k not in ("samples", "layers") or self.n_samples > 1]
            figs = {}
            for k in kinds:
                kw = {a: v for a, v in kwargs.items() if a in _KWARGS[k]}
                figs[k] = self.plot(k, _pyplot=_pyplot, **kw)
                if path is not None:
                    Path(path).mkdir(parents=True, exist_ok=True)
                    plots.save_figure(figs[k], Path(path) / f"{k}.pdf", dpi=dpi)
            return figs
        if kind not in fns:
            raise InvalidArgumentError(f"kind: expected one of {list(fns) + ['all']}, got {kind!r}")
        if kind in ("samples", "layers") and self.n_samples < 2:
            raise InvalidArgumentError(f"kind: {kind!r} compares samples and the report has {self.n_samples}")
        unknown = sorted(set(kwargs) - _KWARGS[kind])
        if unknown:
            raise InvalidArgumentError(
                f"{unknown[0]}: not an option of Report.plot({kind!r}) (options: {sorted(_KWARGS[kind])})"
            )
        token = plots._PYPLOT.set(_pyplot and _pyplot_backend())
        try:
            fig = fns[kind](self, **kwargs)
        finally:
            plots._PYPLOT.reset(token)
        if path is not None:
            plots.save_figure(fig, path, dpi=dpi)
        return fig

    def figures(self) -> Dict[str, Any]:
        """The figures of the HTML page (matplotlib), by name: ``curves``, ``heatmap``,
        ``utilisation``, and with two samples or more ``samples`` and ``layers`` (never pyplot's)."""
        return self.plot("all", _pyplot=False)

    def figures_png(self, dpi: int = 110) -> Dict[str, bytes]:
        """The figures of :meth:`figures` as PNG bytes (headless)."""
        out: Dict[str, bytes] = {}
        for name, fig in self.figures().items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            out[name] = buf.getvalue()
        return out

    # ------------------------------------------------------------------ HTML
    def findings(self) -> List[str]:
        """The page's summary, as sentences (HTML-escaped, with ``<b>`` emphasis): what saturates,
        what collapses, which layers use their state least, what the entropy-ESS adds, how much the
        samples differ."""
        s = self.summary
        if not len(s):
            return ["No layer was analysed."]
        out = self._extreme_findings(s)
        for more in (
            self._least_used_finding(s),
            self._entropy_finding(s),
            self._marker_finding(),
            self._total_finding(s),
            self._samples_finding(),
        ):
            if more:
                out.append(more)
        if self.skipped:
            out.append(f"<b>{len(self.skipped)} module(s) not analysed</b> (no extractor): listed below.")
        return out

    def _extreme_findings(self, s: Any) -> List[str]:
        """What saturates and what collapses (two sentences, one each)."""
        p = self.primary
        sat_thr, col_thr = float(self.meta.get("saturation", 0.9)), float(self.meta.get("collapse", 0.1))
        out = []
        sat = s[s["saturated"]]
        if len(sat):
            out.append(
                f"<b>Saturated</b> ({p}-ESS at least {sat_thr:.0%} of what the sequence lets a layer show): "
                + ", ".join(f"{_layer_name(r)} at {_pct(r['fill'])}" for _, r in sat.iterrows())
                + ". These layers use all the state that is attainable at this length; the ESS is bounded by "
                "min(TSS, t, L - t), not by the inputs."
            )
        else:
            out.append(f"<b>No layer saturates</b> (fill below {sat_thr:.0%} of attainable in every layer).")
        col = s[s["collapsed"]]
        if len(col):
            out.append(
                f"<b>Collapsed</b> (fill at most {col_thr:.0%}): "
                + ", ".join(f"{_layer_name(r)} at {_pct(r['fill'])}" for _, r in col.iterrows())
                + ": these layers carry almost no information from past to future positions on these inputs."
            )
        else:
            out.append(f"<b>No layer collapses</b> (fill above {col_thr:.0%} everywhere).")
        return out

    def _least_used_finding(self, s: Any) -> Optional[str]:
        """The layers that use their state least, ranked by fill (ESS / attainable), not by
        utilisation (ESS / TSS): an attention layer's TSS grows with L, so its utilisation is small at
        any length whatever it does."""
        p = self.primary
        u = s.dropna(subset=["fill"]).sort_values("fill")
        if not len(u) or u["saturated"].all() or u["collapsed"].all():
            return None  # nothing to rank, or said by the saturation/collapse sentences
        if float(u["fill"].max() - u["fill"].min()) < 0.02:
            return (
                f"<b>Every layer fills about {_pct(u['fill'].mean())} of what is attainable</b> (average {p}-ESS / "
                "mean of min(TSS, t, L - t))."
            )
        low = u.head(min(2, len(u)))
        return (
            f"<b>Least state used</b> (average {p}-ESS / attainable, the fill; TSS in brackets): "
            + "; ".join(
                f"{_layer_name(r)}: {_num(r['avg_ess_' + p])} of {_num(r['attainable'])} attainable dims "
                f"({_pct(r['fill'])}; TSS {_int_or_num(r['tss'])})"
                for _, r in low.iterrows()
            )
            + (f". Most: {_layer_name(u.iloc[-1])} ({_pct(u.iloc[-1]['fill'])})." if len(u) > 2 else ".")
        )

    def _entropy_finding(self, s: Any) -> Optional[str]:
        """What the entropy-ESS adds when the primary measure is the tolerance-ESS."""
        if self.primary != "tolerance" or not s["avg_ess_entropy"].notna().any():
            return None
        att = s["attainable"].to_numpy(float)
        ent = np.divide(s["avg_ess_entropy"].to_numpy(float), att, out=np.full(len(s), np.nan), where=att > 0)
        order = np.argsort(ent)
        parts = ", ".join(f"{_layer_name(s.iloc[i])} {_pct(ent[i])}" for i in order if np.isfinite(ent[i]))
        if (s["fill"] >= 0.95).all():
            return (
                "<b>The tolerance-ESS sits on its bound</b> min(TSS, t, L - t) in every layer, so it does not tell the "
                "layers apart here; the <b>entropy-ESS</b> (effective rank, how evenly the singular values spread) does. "
                f"Entropy-ESS as a share of attainable, lowest first: {parts}."
            )
        return f"<b>Entropy-ESS</b> (effective rank) as a share of attainable, lowest first: {parts}."

    @staticmethod
    def _total_finding(s: Any) -> Optional[str]:
        """The layer with the largest total state (summed over channels), when there are several."""
        tot = s.dropna(subset=["total_ess"])
        if len(tot) <= 1:
            return None
        r = tot.loc[tot["total_ess"].idxmax()]
        return (
            f"<b>Largest total state</b> (summed over channels): {_layer_name(r)}, {_num(r['total_ess'])} of "
            f"{_num(r['total_tss'])} dims."
        )

    def _samples_finding(self) -> Optional[str]:
        """How much the samples differ, on the entropy-ESS where both measures were computed."""
        if self.n_samples <= 1:
            return None
        both = self.table["ess_entropy"].notna().any() and self.table["ess_tolerance"].notna().any()
        cmp_ = "entropy" if both else self.primary
        per = self.table.groupby(["layer", "sample"], sort=False, observed=True)[f"ess_{cmp_}"].mean().unstack()
        spread = (per.max(axis=1) - per.min(axis=1)) / per.mean(axis=1).where(per.mean(axis=1) > 0)
        if not spread.notna().any():
            return None
        if float(spread.max()) < 0.01:
            return (
                f"<b>The {self.n_samples} samples agree</b>: the average {cmp_}-ESS of every layer differs by less "
                "than 1% between them (Figures 4 and 5)."
            )
        lay = spread.idxmax()
        return (
            f"<b>Across the {self.n_samples} samples</b> the average {cmp_}-ESS differs most in "
            f"<b>{html.escape(str(lay))}</b>: {_num(per.loc[lay].min())} to {_num(per.loc[lay].max())} dims, "
            f"{_pct(spread.max())} of its mean (Figures 4 and 5)."
        )

    def _marker_finding(self) -> Optional[str]:
        """How the ESS behaves at the marker tokens: per layer, the mean curve (over heads/channels) of the
        flag measure at the split just before a marker (``t`` = its position: the marker is the first future
        token) against the median of the three splits on either side (``t - 3 .. t - 1``, ``t + 2 .. t + 4``),
        over every marker at least 4 positions from either end and every sample; the layer that departs most,
        if any departs by 20% and half a dimension."""
        if not self.markers or not len(self.table):
            return None
        p = self.primary
        mean = self.table.groupby(["layer", "sample", "position"], observed=True)[f"ess_{p}"].mean()
        curves = {key: g.droplevel([0, 1]) for key, g in mean.groupby(level=[0, 1], observed=True)}
        L = int(self.meta.get("length") or int(self.table["position"].max()) + 1)
        rows = []
        for layer in self.summary["layer"]:
            at, after, base = [], [], []
            for smp, ps in self.markers.items():
                c = curves.get((layer, int(smp)))
                if c is None:
                    continue
                for q in ps:
                    nb = [t for t in (*range(q - 3, q), *range(q + 2, q + 5)) if t in c.index]
                    if q < 4 or q > L - 5 or q not in c.index or q + 1 not in c.index or len(nb) < 4:
                        continue
                    at.append(float(c[q]))
                    after.append(float(c[q + 1]))
                    base.append(float(np.median(c[nb])))
            if at:
                rows.append((layer, np.mean(at), np.mean(after), np.mean(base)))
        if not rows:
            return None
        rel = [(a - b) / b if b > 0 else 0.0 for _, a, _, b in rows]
        k = int(np.argmax(np.abs(rel)))
        layer, a, af, b = rows[k]
        where = sorted({q for ps in self.markers.values() for q in ps})
        pos = ("positions " if len(where) > 1 else "position ") + ", ".join(map(str, where[:12]))
        pos += ", ..." if len(where) > 12 else ""
        if abs(rel[k]) < 0.2 or abs(a - b) < 0.5:
            return (
                f"<b>At the marker tokens</b> ({pos}) no layer's {p}-ESS departs by 20% or more from the "
                "neighbouring splits."
            )
        kind = str(self.summary.set_index("layer").loc[layer, "kind"])
        others = [abs(r) for i, r in enumerate(rel) if i != k]
        return (
            f"<b>At the marker tokens</b> ({pos}): <b>{html.escape(str(layer))}</b> ({html.escape(kind)}) "
            f"{'peaks' if a > b else 'dips'} at the split just before a marker, {p}-ESS {_num(a)} dims against "
            f"{_num(b)} at the neighbouring splits ({rel[k]:+.0%}), and is at {_num(af)} right after it"
            + (f"; every other layer stays within {max(others):.0%} there" if others else "")
            + " (Figure 1, dotted lines)."
        )

    def _table_html(self) -> str:
        s = self.summary
        cols = [c for c in _COLUMNS if c[0] in s.columns]
        groups: List[Tuple[str, int]] = []
        for c in cols:
            if groups and groups[-1][0] == c[1]:
                groups[-1] = (c[1], groups[-1][1] + 1)
            else:
                groups.append((c[1], 1))
        h = ["<table class='layers'><thead><tr>"]
        h += [f"<th colspan='{n}' class='grp'>{html.escape(g)}</th>" for g, n in groups] + [
            "<th rowspan='2' class='grp' title='"
            + html.escape(
                _FLAG_TIP.format(
                    sat=self.meta.get("saturation", 0.9), col=self.meta.get("collapse", 0.1), p=self.primary
                )
            )
            + "'>flag</th></tr><tr>"
        ]
        for _key, _, head, unit, tip, _ in cols:
            u = f"<br><span class='unit'>{html.escape(unit)}</span>" if unit else ""
            h.append(f"<th title='{html.escape(tip)}'>{html.escape(head)}{u}</th>")
        h.append("</tr></thead><tbody>")
        # a column of whole numbers (TSS, the largest tolerance-ESS, counts) is printed as whole numbers
        whole = {c[0] for c in cols if c[5] == "num" and _whole(s[c[0]])}
        for _, r in s.iterrows():
            h.append("<tr>")
            for key, _, _, _, _, kind in cols:
                v = r[key]
                if kind == "text":
                    cell = html.escape(str(v))
                    if key == "layer" and "module_type" in r:
                        cell = f"<code>{cell}</code><br><span class='unit'>{html.escape(str(r['module_type']))}</span>"
                    h.append(f"<td class='txt'>{cell}</td>")
                elif kind == "int":
                    h.append(f"<td>{int(v):,}</td>")
                elif kind == "pct":
                    f = float(v)
                    w = max(0.0, min(100.0, 100 * f)) if np.isfinite(f) else 0.0
                    h.append(f"<td class='bar' style='--w:{w:.1f}%'>{_pct(f)}</td>")
                elif key in whole:
                    h.append(f"<td>{int(round(float(v))):,}</td>")
                else:
                    h.append(f"<td>{_num(v)}</td>")
            flag = (
                "<span class='flag sat'>saturated</span>"
                if r.get("saturated")
                else (
                    "<span class='flag col'>collapsed</span>"
                    if r.get("collapsed")
                    else "<span class='flag none'>&ndash;</span>"
                )
            )
            h.append(f"<td class='txt'>{flag}</td></tr>")
            if str(r.get("note", "") or ""):
                h.append(
                    f"<tr class='note'><td colspan='{len(cols) + 1}'>note: {html.escape(str(r['note']))}</td></tr>"
                )
        h.append("</tbody></table>")
        return "".join(h)

    def _html(self, figures: Optional[Dict[str, bytes]] = None, full: bool = True, interactive: bool = True) -> str:
        """The report as HTML: the whole page (``full``, from ``templates/report.html``) or its body
        alone (a notebook view); ``figures`` maps a figure kind to its PNG bytes."""
        divs: Dict[str, str] = {}
        scripts = []
        if full and interactive:
            from . import interactive as ia

            if ia.available():
                divs = ia.layer_divs(self)
                scripts.append(f"<script>{ia.plotly_js()}</script>")
        body = [self._heading_html()]
        if full:
            body.append(self._nav_html(bool(divs)))
        body.append(
            "<section id='summary'><h2>Summary</h2><ul class='findings'>"
            + "".join(f"<li>{f}</li>" for f in self.findings())
            + "</ul></section>"
        )
        body.append(
            "<section id='layers'><h2>Layers</h2><p class='hint'>Hover a column header for its definition. ESS and TSS in "
            "state dimensions; averages over heads/channels, positions and samples. Bars: share of 100%.</p>"
            + self._table_html()
            + "</section>"
        )
        if figures:
            body.extend(self._figures_html(figures))
        if divs:
            body.extend(self._interactive_html(divs))
        body.extend(self._notes_html())
        if not full:
            return "\n".join(body)
        return string.Template(_asset("report.html")).substitute(
            title=html.escape(str(self.meta.get("model"))),
            css=_asset("report.css"),
            head="".join("\n" + x for x in scripts),
            body="\n".join(body),
        )

    def _heading_html(self) -> str:
        m = self.meta
        what = f"<p class='lead'>{html.escape(str(m['title']))}</p>\n" if m.get("title") else ""
        return (
            "<h1>Effective state size report</h1>\n"
            + what
            + f"<p class='meta'>Model <code>{html.escape(str(m.get('model')))}</code> on {html.escape(str(m.get('device')))}; "
            f"sequence length L = {m.get('length')}, {m.get('n_samples')} sample(s); method {html.escape(str(m.get('method')))}"
            + self._threshold_text()
            + self._markers_text()
            + f"; flags on the {self.primary}-ESS (saturated: fill &ge; {m.get('saturation')}, collapsed: fill &le; "
            f"{m.get('collapse')}).</p>"
        )

    def _threshold_text(self) -> str:
        """The tolerance-ESS threshold as a clause (empty when only the entropy-ESS was computed)."""
        if self.meta.get("method") == "entropy":
            return ""
        rtol, atol = self.meta.get("rtol"), self.meta.get("atol")
        if rtol is None and atol is None:
            return (
                "; tolerance-ESS counts singular values above max(t, L - t) &middot; eps &middot; &sigma;<sub>max</sub>"
            )
        parts = ([f"{float(rtol):g} &middot; &sigma;<sub>max</sub>"] if rtol is not None else []) + (
            [f"{float(atol):g}"] if atol is not None else []
        )
        return "; tolerance-ESS counts singular values above " + (
            parts[0] if len(parts) == 1 else "max(" + ", ".join(parts) + ")"
        )

    def _markers_text(self) -> str:
        """Where the marker tokens are, as a clause (empty without markers)."""
        ms = {int(k): [int(q) for q in v] for k, v in self.markers.items() if len(v)}
        if not ms:
            return ""
        short = lambda v: ", ".join(map(str, v[:10])) + (", ..." if len(v) > 10 else "")  # noqa: E731
        vals = list(ms.values())
        if len(ms) == self.n_samples and all(v == vals[0] for v in vals):
            return f"; marker tokens (delimiter / EOS) at position{'s' if len(vals[0]) > 1 else ''} {short(vals[0])}"
        return "; marker tokens at " + "; ".join(f"sample {k}: {short(v)}" for k, v in sorted(ms.items()))

    @staticmethod
    def _nav_html(interactive: bool) -> str:
        toc = [("summary", "Summary"), ("layers", "Layers"), ("figures", "Figures")]
        if interactive:
            toc.append(("explore", "Interactive, per layer"))
        toc.append(("notes", "Caveats and inputs"))
        return "<nav>" + " &middot; ".join(f"<a href='#{a}'>{t}</a>" for a, t in toc) + "</nav>"

    def _figures_html(self, figures: Dict[str, bytes]) -> List[str]:
        parts = [
            "<section id='figures'><h2>Figures</h2><p class='hint'>Static figures (matplotlib). Each exports at print "
            "quality with <code>report.plot(kind, path='fig.pdf')</code> (or <code>.svg</code>).</p>"
        ]
        captions = _captions(self)
        for i, (name, png) in enumerate(figures.items(), 1):
            b64 = base64.b64encode(png).decode("ascii")
            cap = captions.get(name, name)
            parts.append(
                f"<figure id='fig-{name}'><img alt='{html.escape(_ALT.get(name, name))}' src='data:image/png;base64,{b64}'>"
                f"<figcaption><b>Figure {i}.</b> {cap} <span class='export'>Export: <code>report.plot('{name}', path='{name}.pdf')</code></span>"
                "</figcaption></figure>"
            )
        parts.append("</section>")
        return parts

    @staticmethod
    def _interactive_html(divs: Dict[str, str]) -> List[str]:
        parts = [
            "<section id='explore'><h2>Interactive, per layer</h2><p class='hint'>Hover for values (position, token, ESS); "
            "click a legend entry to hide or show it (individual heads/channels are listed there; with many channels only "
            "the first ones, hidden at first); drag to zoom, double-click to reset; the buttons switch between the two "
            "measures; the camera icon downloads SVG. The static figures above show the same data.</p>"
            "<noscript><p class='caveat'>JavaScript is off: the interactive figures are not shown; the static figures "
            "above hold the same data.</p></noscript>"
        ]
        for layer, div in divs.items():
            parts.append(
                f"<figure class='interactive' data-layer='{html.escape(layer)}'>{div}<figcaption>{html.escape(layer)}: ESS "
                "curves (top) and heads/channels x positions (bottom) on the same position axis.</figcaption></figure>"
            )
        parts.append("</section>")
        return parts

    def _notes_html(self) -> List[str]:
        parts = ["<section id='notes'>"]
        if self.skipped:
            parts.append(
                "<h2>Skipped (no extractor)</h2><ul>"
                + "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(t)}</li>" for n, t in self.skipped)
                + "</ul>"
            )
        parts.append("<h2>Caveats</h2>" + "".join(f"<p class='caveat'>{html.escape(c)}</p>" for c in self.caveats))
        if self.tokens is not None:
            parts.append(
                "<h3>Tokens (sample 0)</h3><p class='tokens'><code>"
                + html.escape(" ".join(map(str, self.tokens)))
                + "</code></p>"
            )
        elif self.token_ids is not None:
            parts.append(
                "<h3>Token ids (sample 0)</h3><p class='tokens'><code>"
                + html.escape(" ".join(map(str, self.token_ids[0].tolist())))
                + "</code></p>"
            )
        parts.append("</section>")
        return parts

    def _repr_html_(self) -> str:
        try:
            buf = io.BytesIO()
            self.plot("curves", _pyplot=False).savefig(buf, format="png", dpi=70)
            figs: Optional[Dict[str, bytes]] = {"curves": buf.getvalue()}
        except Exception:  # a notebook view must not fail on a plotting problem
            figs = None
        return self._html(figs, full=False)

    def save(
        self,
        directory: Union[str, "os.PathLike[str]"],
        *,
        figure_formats: Sequence[str] = ("png",),
        interactive: bool = True,
    ) -> Path:
        """Write ``report.html`` (self-contained: figures and, when plotly is installed and
        ``interactive``, plotly.js embedded), ``ess.csv`` (and ``ess.parquet`` when pyarrow is
        installed), ``summary.csv``, ``summary.json`` and the figures, one file per figure and format
        of ``figure_formats`` (``"png"``, ``"svg"``, ``"pdf"``, ``"eps"``), into ``directory``
        (created if needed). Returns the directory."""
        from . import plots

        fmts = [str(f).lower().lstrip(".") for f in figure_formats]
        bad = [f for f in fmts if f".{f}" not in plots._FORMATS]
        if bad:
            raise InvalidArgumentError(
                f"figure_formats: {bad[0]!r} is not one of {sorted(k[1:] for k in plots._FORMATS)}"
            )
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        figs = self.figures()
        pngs: Dict[str, bytes] = {}
        for name, fig in figs.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            pngs[name] = buf.getvalue()
            for f in fmts:
                if f == "png":
                    (d / f"{name}.png").write_bytes(pngs[name])
                else:
                    plots.save_figure(fig, d / f"{name}.{f}")
        (d / "report.html").write_text(self._html(pngs, interactive=interactive), encoding="utf-8")
        self.table.to_csv(d / "ess.csv", index=False)
        try:
            import pyarrow  # noqa: F401

            self.table.to_parquet(d / "ess.parquet", index=False)
        except ImportError:
            pass
        self.summary.to_csv(d / "summary.csv", index=False)
        (d / "summary.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return d


_KWARGS = {
    "curves": {"sample", "measure", "band", "max_lines", "ncols", "fig"},
    "heatmap": {"sample", "measure", "fig"},
    "utilisation": {"fig"},
    "samples": {"measure", "fig", "max_panels"},
    "layers": {"measure", "fig"},
}

# (column, group, header, unit, tooltip, format)
_COLUMNS = [
    ("layer", "Layer", "layer", "", "Qualified module name (and the module's class below it).", "text"),
    (
        "kind",
        "Layer",
        "kind",
        "",
        "Operator family the layer was analysed as (attention, convolution, SSM, ...).",
        "text",
    ),
    (
        "n_operators",
        "Size",
        "operators",
        "",
        "Distinct operators analysed: attention heads, or the channels of a convolution / SSM.",
        "int",
    ),
    (
        "channels",
        "Size",
        "channels",
        "",
        "Value channels the operators act on (an operator shared by c channels, as a head by its "
        "head dimension, counts c times).",
        "int",
    ),
    (
        "tss",
        "Size",
        "TSS",
        "dims",
        "Theoretical state size of one operator: the state dimension its recurrence holds (conv: kernel "
        "width - 1; SSM: state size; attention: grows with the sequence). No ESS can exceed it.",
        "num",
    ),
    (
        "avg_ess_tolerance",
        "ESS per operator",
        "mean tolerance",
        "dims",
        "Mean over operators, positions and samples of the "
        "tolerance-ESS: the numerical rank of the past-to-future block H_t (singular values above the threshold).",
        "num",
    ),
    (
        "avg_ess_entropy",
        "ESS per operator",
        "mean entropy",
        "dims",
        "Mean of the entropy-ESS: the effective rank exp(entropy of "
        "the normalised singular values) of H_t; lower than the tolerance-ESS when a few directions dominate.",
        "num",
    ),
    (
        "max_ess_tolerance",
        "ESS per operator",
        "max tolerance",
        "dims",
        "Largest tolerance-ESS of any operator at any position.",
        "num",
    ),
    (
        "total_ess",
        "Whole layer",
        "total ESS",
        "dims",
        "Sum over value channels of the per-channel average ESS (flag measure): the state the whole layer uses.",
        "num",
    ),
    (
        "total_tss",
        "Whole layer",
        "total TSS",
        "dims",
        "Sum over value channels of the TSS: the state the whole layer has.",
        "num",
    ),
    (
        "attainable",
        "Use of the state",
        "attainable",
        "dims",
        "Mean over positions of min(TSS, t, L - t): the largest average ESS any "
        "operator of this layer could show at this length (boundary effect).",
        "num",
    ),
    ("utilisation", "Use of the state", "utilisation", "%", "Average ESS (flag measure) / TSS.", "pct"),
    (
        "fill",
        "Use of the state",
        "fill",
        "%",
        "Average ESS (flag measure) / attainable: 100% means the layer shows all the state the sequence lets it show.",
        "pct",
    ),
]

_FLAG_TIP = (
    "saturated: fill >= {sat} on the {p}-ESS (the layer uses all attainable state); collapsed: fill <= {col} "
    "(almost no state carried); -: neither."
)

_ALT = {
    "curves": "ESS against split position, one panel per layer",
    "heatmap": "ESS per head or channel and position, one panel per layer",
    "utilisation": "utilisation and fill per layer, bars",
    "samples": "ESS curves of each sample overlaid, one panel per layer",
    "layers": "average ESS per layer, one bar per sample",
}


def _captions(r: "Report") -> Dict[str, str]:
    ms = [m for m in ("tolerance", "entropy") if r.table[f"ess_{m}"].notna().any()]
    both = len(ms) == 2
    cm = "entropy" if both else ms[0] if ms else r.primary
    return {
        "curves": (
            "ESS at each split position t, one panel per layer (sample 0): "
            + (
                "tolerance-ESS (blue) and entropy-ESS (orange; on its own axis, right, in panels where it stays below "
                "a quarter of the tolerance-ESS); "
                if both
                else f"{ms[0]}-ESS; "
                if ms
                else ""
            )
            + "thick line the mean over the layer's heads/channels, shaded the range they span; dashed the boundary bound "
            "min(t, L - t), dotted red the layer's TSS, dotted grey the marker tokens (delimiter / EOS). A curve on the "
            "dashed line is limited by the sequence, on the red line by the state. Each panel's vertical range is the "
            "largest value the layer can reach, min(TSS, t, L - t) (or the data if higher), so the dashed bound leaves "
            "the top of a panel whose TSS is small."
        ),
        "heatmap": (
            f"{cm}-ESS of every head/channel (rows) at every split position (columns), sample 0, one panel per layer "
            "with its own rows and colour scale; red triangles mark the marker tokens. Uniform rows: the heads/channels "
            "behave alike; a dark row: a head/channel that keeps little state."
        ),
        "utilisation": (
            f"Per layer: utilisation ({r.primary}-ESS / TSS), fill ({r.primary}-ESS / attainable)"
            + (" and the entropy-ESS / attainable" if r.primary == "tolerance" and both else "")
            + ", with the saturation and collapse thresholds of the flags."
        ),
        "samples": (
            f"Samples compared: per layer, the mean {cm}-ESS over heads/channels at each position, one line per sample; "
            "dashed the boundary bound (panels marked 'bound clipped' are zoomed on the curves), dotted grey the marker "
            "tokens. Where the lines separate, the layer's memory use depends on the input."
        ),
        "layers": f"Samples compared layer by layer: average {cm}-ESS (over heads/channels and positions), one bar per sample.",
    }


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    if not np.isfinite(f):
        return "&ndash;"
    if abs(f) >= 100:
        return f"{f:,.0f}"
    if abs(f) >= 10:
        return f"{f:.1f}"
    return f"{f:.2f}"


def _whole(col: Any) -> bool:
    """Whether every finite value of a column is a whole number (and one is finite)."""
    v = np.asarray(col, dtype=float)
    v = v[np.isfinite(v)]
    return bool(v.size) and bool(np.all(v == np.round(v)))


def _int_or_num(v: Any) -> str:
    """A whole number without decimals (a TSS of 16, not 16.0), anything else as :func:`_num`."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _num(v)
    return f"{int(f):,}" if np.isfinite(f) and f == round(f) else _num(f)


#: The table's string columns: :class:`pandas.Categorical` (``category`` dtype), categories in sorted order.
CATEGORY_COLUMNS = ("layer", "kind", "operator")


def _categorical_column(codes: Any, names: Sequence[str]) -> Any:
    """A ``category`` column from integer ``codes`` into ``names`` (distinct): the categories are the
    names in sorted order (so sorting and grouping by the column order the names as plain strings
    would), the codes renumbered to match and stored in the smallest integer type that holds them.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.report import _categorical_column
    >>> c = _categorical_column(np.array([0, 0, 1, 2]), ["b.1", "a", "b.0"])
    >>> list(c), list(c.categories), c.codes.dtype
    (['b.1', 'b.1', 'a', 'b.0'], ['a', 'b.0', 'b.1'], dtype('int8'))
    """
    import pandas as pd

    rank, cats = _sorted_categories(names)
    return pd.Categorical.from_codes(rank[np.asarray(codes)], categories=cats)


def _sorted_categories(names: Sequence[Any]) -> Tuple[np.ndarray, List[Any]]:
    """``(rank, categories)``: the distinct ``names`` in sorted order (the given order when they do not
    compare), and ``rank[i]`` the position of ``names[i]`` there, in the integer type pandas keeps the
    codes of that many categories in (:func:`_code_dtype`), with ``rank[-1] = -1`` one past the end
    (a missing value's code stays -1).

    Examples
    --------
    >>> from ess.report import _sorted_categories
    >>> _sorted_categories(["b", "c", "a"])
    (array([ 1,  2,  0, -1], dtype=int8), ['a', 'b', 'c'])
    """
    names = list(names)
    try:
        order = sorted(range(len(names)), key=names.__getitem__)
    except TypeError:  # names of mixed types: kept in the given order
        order = list(range(len(names)))
    rank = np.empty(len(names) + 1, dtype=_code_dtype(len(names)))
    rank[order] = np.arange(len(names))
    rank[-1] = -1
    return rank, [names[i] for i in order]


def _code_dtype(n_categories: int) -> Any:
    """The integer type of the codes of a ``category`` column of ``n_categories`` names (what pandas
    stores them in: codes of that type are taken without a copy).

    Examples
    --------
    >>> from ess.report import _code_dtype
    >>> _code_dtype(24), _code_dtype(1536)
    (<class 'numpy.int8'>, <class 'numpy.int16'>)
    """
    for t in (np.int8, np.int16, np.int32):
        if n_categories < np.iinfo(t).max:
            return t
    return np.int64


def _as_category(values: Any) -> Any:
    """``values`` (a list or array of names, or already a categorical) as a ``category`` column whose
    categories are sorted (:func:`_categorical_column`)."""
    import pandas as pd

    if isinstance(values, pd.Categorical):
        cats = list(values.categories)
        if cats == sorted(cats):
            return values
        return _categorical_column(values.codes, cats)
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return _categorical_column(codes, list(uniques))


def _tidy_table(rows: Dict[str, Any], token_ids: Optional[np.ndarray]) -> Any:
    """The per-split table from analyze's columns: integer index columns, ``category`` name columns
    (:data:`CATEGORY_COLUMNS`), and the token id at each split (-1 where the sample or position has
    none) when ``token_ids`` is given. Numpy columns are used as they are (not copied: the table of a
    large model is gigabytes)."""
    import pandas as pd

    cols: Dict[str, Any] = {}
    have_token = "token" in rows  # (ess.analyze fills it with the other columns)
    for k, v in rows.items():
        if k in CATEGORY_COLUMNS:
            v = _as_category(v)
        elif k in ("position", "index", "sample"):
            v = np.asarray(v)
            if v.dtype != np.int64:
                v = v.astype(np.int64)
        cols[k] = v
        if k == "position" and token_ids is not None and len(v) and not have_token:
            cols["token"] = None  # its place: after the position
    if "token" in cols and not have_token:
        smp, pos = cols["sample"], cols["position"]
        ids = np.asarray(token_ids)
        ok = (smp < ids.shape[0]) & (pos < ids.shape[1])
        if ok.all():
            tok = ids[smp, pos].astype(np.int64, copy=False)
        else:
            tok = np.full(len(smp), -1, dtype=np.int64)
            tok[ok] = ids[smp[ok], pos[ok]]
        cols["token"] = tok
    return pd.DataFrame(cols, copy=False)


def _layer_rows(df: Any) -> Dict[str, Any]:
    """Where each layer's rows are: layer name -> a ``slice`` when they are contiguous (as
    :func:`ess.analyze` writes them: layer by layer), else a boolean mask. One pass over the codes."""
    col = df["layer"]
    codes = col.cat.codes.to_numpy()
    names = list(col.cat.categories)
    if not len(codes):
        return {}
    starts = np.concatenate(([0], np.flatnonzero(codes[1:] != codes[:-1]) + 1))
    ends = np.append(starts[1:], len(codes))
    runs: Dict[int, List[Tuple[int, int]]] = {}
    for a, b in zip(starts.tolist(), ends.tolist()):
        runs.setdefault(int(codes[a]), []).append((a, b))
    out: Dict[str, Any] = {}
    for c, rs in runs.items():
        if c < 0:
            continue
        out[names[c]] = slice(rs[0][0], rs[0][1]) if len(rs) == 1 else codes == c
    return out


def _layer_summary(d: Any, lm: Dict[str, Any], primary: str, sat: float, col_thr: float) -> Dict[str, Any]:
    """One layer's summary row from its rows ``d`` of the tidy table: averages per operator, totals
    over channels (per sample), attainable ESS ``mean(min(TSS, bound))`` and the fill.

    The operators are grouped by one integer key ``sample * (max index + 1) + index`` (same groups,
    same order and same sums as grouping by the pair, at a fraction of the cost)."""
    import pandas as pd

    smp, idx = d["sample"].to_numpy(), d["index"].to_numpy()
    cols = {
        "tol": d["ess_tolerance"].to_numpy(),
        "ent": d["ess_entropy"].to_numpy(),
        "tss": d["tss"].to_numpy(),
        "shared": d["shared"].to_numpy(),
    }
    agg = {"tol": "mean", "ent": "mean", "tss": "first", "shared": "first"}
    if len(idx) and (smp.min() < 0 or idx.min() < 0):  # not as analyze writes them: group by the pair
        per_op = pd.DataFrame({"sample": smp, "index": idx, **cols}).groupby(["sample", "index"]).agg(agg)
        n_samples = max(1, per_op.index.get_level_values(0).nunique())
        n_operators = int(per_op.groupby(level=1).ngroups)
    else:
        stride = int(idx.max()) + 1 if len(idx) else 1
        per_op = pd.DataFrame(cols, copy=False).groupby(smp * stride + idx).agg(agg)
        keys = per_op.index.to_numpy()
        n_samples = max(1, len(np.unique(keys // stride)))
        n_operators = len(np.unique(keys % stride))
    att = pd.Series(np.minimum(cols["tss"], d["bound"].to_numpy())).mean()
    prim = per_op["tol"] if primary == "tolerance" else per_op["ent"]
    avg = float(prim.mean())
    tss = float(per_op["tss"].mean())
    fill = avg / att if att > 0 else float("nan")
    return {
        "layer": lm["layer"],
        "kind": lm["kind"],
        "module_type": lm.get("module_type", ""),
        "n_operators": n_operators,
        "channels": int(per_op["shared"].sum() // n_samples),
        "tss": tss,
        "avg_ess_tolerance": float(per_op["tol"].mean()),
        "avg_ess_entropy": float(per_op["ent"].mean()),
        "max_ess_tolerance": float(d["ess_tolerance"].max()),
        "total_ess": float((prim * per_op["shared"]).sum()) / n_samples,
        "total_tss": float((per_op["tss"] * per_op["shared"]).sum()) / n_samples,
        "utilisation": avg / tss if tss > 0 else float("nan"),
        "attainable": float(att),
        "fill": fill,
        "saturated": bool(fill >= sat),
        "collapsed": bool(fill <= col_thr),
        "note": lm.get("note", ""),
        "route": lm.get("route", "dense"),
    }


def _layer_name(r: Any) -> str:
    """A summary row's layer and kind, HTML-escaped, the layer in bold."""
    return f"<b>{html.escape(str(r['layer']))}</b> ({html.escape(str(r['kind']))})"


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "&ndash;"
    return f"{100 * f:.0f}%" if np.isfinite(f) else "&ndash;"


@functools.lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """A file shipped in ``ess/templates``: the page skeleton (``report.html``, with ``$name``
    placeholders for :class:`string.Template`) and its style sheet (``report.css``)."""
    return (Path(__file__).parent / "templates" / name).read_text(encoding="utf-8")


def _pyplot_backend() -> bool:
    """Whether pyplot is in use with a backend that shows figures (a GUI or a notebook's inline backend)."""
    import sys

    if "matplotlib.pyplot" not in sys.modules:
        return False
    import matplotlib

    return matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "pgf", "template")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x
