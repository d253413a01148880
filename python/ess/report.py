"""``ess.Report``: the result of :func:`ess.analyze` (tables, flags, caveats, figures, files)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Report", "BOUNDARY_CAVEAT"]

BOUNDARY_CAVEAT = (
    "Boundary effect: the ESS at split t is at most min(t, L - t) (the block H_t has t columns and L - t rows), "
    "so positions near the start and the end of the sequence cannot show the full state a layer holds. "
    "Averages include those positions; the 'attainable' column (mean of min(TSS, t, L - t)) is the largest "
    "average any operator of the layer could reach, and 'fill' = average ESS / attainable."
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

        df = pd.DataFrame(rows)
        df["position"] = df["position"].astype(np.int64)
        df["index"] = df["index"].astype(np.int64)
        df["sample"] = df["sample"].astype(np.int64)
        if token_ids is not None and len(df):
            ids = np.asarray(token_ids)
            ok = (df["sample"].to_numpy() < ids.shape[0]) & (df["position"].to_numpy() < ids.shape[1])
            tok = np.full(len(df), -1, dtype=np.int64)
            tok[ok] = ids[df["sample"].to_numpy()[ok], df["position"].to_numpy()[ok]]
            df.insert(6, "token", tok)
        primary = "tolerance" if meta.get("method") in ("both", "tolerance") else "entropy"
        sat, col_thr = float(meta.get("saturation", 0.9)), float(meta.get("collapse", 0.1))
        recs = []
        for lm in layer_meta:
            d = df[df["layer"] == lm["layer"]]
            if d.empty:
                continue
            per_op = d.groupby(["sample", "index"]).agg(
                tol=("ess_tolerance", "mean"), ent=("ess_entropy", "mean"), tss=("tss", "first"), shared=("shared", "first")
            )
            att = d.assign(a=np.minimum(d["tss"].to_numpy(), d["bound"].to_numpy()))["a"].mean()
            prim = per_op["tol"] if primary == "tolerance" else per_op["ent"]
            avg = float(prim.mean())
            n_samples = max(1, per_op.index.get_level_values(0).nunique())
            total = float((prim * per_op["shared"]).sum()) / n_samples
            total_tss = float((per_op["tss"] * per_op["shared"]).sum()) / n_samples
            tss = float(per_op["tss"].mean())
            fill = avg / att if att > 0 else float("nan")
            recs.append(
                {
                    "layer": lm["layer"],
                    "kind": lm["kind"],
                    "module_type": lm.get("module_type", ""),
                    "n_operators": int(per_op.groupby(level=1).ngroups),
                    "channels": int(per_op["shared"].sum() // n_samples),
                    "tss": tss,
                    "avg_ess_tolerance": float(per_op["tol"].mean()),
                    "avg_ess_entropy": float(per_op["ent"].mean()),
                    "max_ess_tolerance": float(d["ess_tolerance"].max()),
                    "total_ess": total,
                    "total_tss": total_tss,
                    "utilisation": avg / tss if tss > 0 else float("nan"),
                    "attainable": float(att),
                    "fill": fill,
                    "saturated": bool(fill >= sat),
                    "collapsed": bool(fill <= col_thr),
                    "note": lm.get("note", ""),
                    "route": lm.get("route", "dense"),
                }
            )
        summary = pd.DataFrame(recs)
        caveats = [BOUNDARY_CAVEAT]
        if any("jacobian" in str(r["kind"]) or "lineari" in str(r["note"]) for r in recs):
            caveats.append(LINEARISATION_CAVEAT)
        if skipped:
            caveats.append(f"{len(skipped)} module(s) that look sequence-mixing were not analysed (no extractor): see 'skipped'.")
        meta = dict(meta)
        meta["primary_measure"] = primary
        return cls(df, summary, list(skipped), list(tokens) if tokens is not None else None, token_ids, dict(markers), caveats, meta)

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

    def plot(self, kind: str = "curves", **kwargs: Any) -> Any:
        """Draw a figure: ``"curves"`` (ESS vs position per layer, marker lines), ``"heatmap"``
        (layer x head/channel) or ``"utilisation"`` (bars); ``"all"`` returns a dict of the three.
        Keyword arguments go to the functions of :mod:`ess.plots` (``sample``, ``measure``, ``fig``)."""
        from . import plots

        fns = {"curves": plots.curves, "heatmap": plots.heatmap, "utilisation": plots.utilisation}
        if kind == "all":
            return {k: self.plot(k, **kwargs) for k in fns}
        if kind not in fns:
            raise ValueError(f"kind: expected one of {sorted(fns) + ['all']}, got {kind!r}")
        if "fig" not in kwargs:
            try:
                import matplotlib

                pyplot = matplotlib.get_backend().lower() != "agg"
            except ImportError as e:  # pragma: no cover
                raise ImportError("Report.plot needs matplotlib (pip install 'ess[analyze]')") from e
            if kind == "curves":
                kwargs["fig"] = None if not pyplot else _pyfig(6.0 * min(2, max(1, len(self.summary))), 2.8 * ((len(self.summary) + 1) // 2))
            elif pyplot:
                kwargs["fig"] = _pyfig(8, 4)
        if kind == "utilisation":
            kwargs.pop("sample", None)
            kwargs.pop("measure", None)
        return fns[kind](self, **kwargs)

    def figures_png(self, dpi: int = 90) -> Dict[str, bytes]:
        """The three figures as PNG bytes (headless)."""
        from . import plots

        out: Dict[str, bytes] = {}
        for name, fn in (("curves", plots.curves), ("heatmap", plots.heatmap), ("utilisation", plots.utilisation)):
            fig = fn(self)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            out[name] = buf.getvalue()
        return out

    def _html(self, figures: Optional[Dict[str, bytes]] = None, full: bool = True) -> str:
        fmt = {c: "{:.3g}".format for c in ("tss", "avg_ess_tolerance", "avg_ess_entropy", "max_ess_tolerance", "total_ess", "total_tss", "utilisation", "attainable", "fill")}
        parts = []
        if full:
            parts.append("<!DOCTYPE html><html><head><meta charset='utf-8'><title>ess report</title>"
                         "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px}"
                         "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%;display:block;margin:1em 0}"
                         ".caveat{background:#fff8e0;padding:.5em 1em;border-left:4px solid #e0b000}code{font-size:12px}</style></head><body>")
        m = self.meta
        parts.append(f"<h2>ess report</h2><p>model <code>{html.escape(str(m.get('model')))}</code> on {html.escape(str(m.get('device')))}; "
                     f"L = {m.get('length')}, {m.get('n_samples')} sample(s), method {html.escape(str(m.get('method')))}, "
                     f"flags on the {self.primary}-ESS (saturation &ge; {m.get('saturation')}, collapse &le; {m.get('collapse')} of attainable).</p>")
        parts.append("<h3>Layers</h3>" + self.summary.to_html(index=False, formatters=fmt, escape=True, classes="summary"))
        if self.skipped:
            parts.append("<h3>Skipped (no extractor)</h3><ul>" + "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(t)}</li>" for n, t in self.skipped) + "</ul>")
        parts.append("<h3>Caveats</h3>" + "".join(f"<p class='caveat'>{html.escape(c)}</p>" for c in self.caveats))
        if self.tokens is not None:
            parts.append("<h3>Tokens (sample 0)</h3><p><code>" + html.escape(" ".join(map(str, self.tokens))) + "</code></p>")
        elif self.token_ids is not None:
            parts.append("<h3>Token ids (sample 0)</h3><p><code>" + html.escape(" ".join(map(str, self.token_ids[0].tolist()))) + "</code></p>")
        if figures:
            parts.append("<h3>Figures</h3>")
            for name, png in figures.items():
                b64 = base64.b64encode(png).decode("ascii")
                parts.append(f"<figure><img alt='{name}' id='fig-{name}' src='data:image/png;base64,{b64}'><figcaption>{name}</figcaption></figure>")
        if full:
            parts.append("</body></html>")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        try:
            figs: Optional[Dict[str, bytes]] = {"curves": self.figures_png(dpi=70)["curves"]}
        except Exception:  # a notebook view must not fail on a plotting problem
            figs = None
        return self._html(figs, full=False)

    def save(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
        """Write ``report.html`` (self-contained, figures embedded), ``ess.csv`` (and ``ess.parquet``
        when pyarrow is installed), ``summary.csv``, ``summary.json`` and the figures as PNG into
        ``directory`` (created if needed). Returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        figs = self.figures_png()
        for name, png in figs.items():
            (d / f"{name}.png").write_bytes(png)
        (d / "report.html").write_text(self._html(figs), encoding="utf-8")
        self.table.to_csv(d / "ess.csv", index=False)
        try:
            import pyarrow  # noqa: F401

            self.table.to_parquet(d / "ess.parquet", index=False)
        except ImportError:
            pass
        self.summary.to_csv(d / "summary.csv", index=False)
        (d / "summary.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return d


def _pyfig(w: float, h: float) -> Any:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(w, h))


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
