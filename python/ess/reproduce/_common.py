"""Shared plumbing of the reproductions: the result record and how it is written to disk."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["Row", "Result", "jsonable", "new_figure", "save_figure"]


@dataclass
class Row:
    """One line of the side-by-side table: a published value or claim beside ours.

    Examples
    --------
    >>> from ess.reproduce import Row
    >>> row = Row("hitting time ratio", published="1/eps", ours="0.98/eps", agrees=True)
    >>> row.agrees, row.note
    (True, '')
    """

    quantity: str
    published: str
    ours: str
    agrees: Optional[bool] = None
    note: str = ""

    def __post_init__(self) -> None:
        # comparisons made with numpy give np.bool_; the table and the JSON want a Python bool
        if self.agrees is not None:
            self.agrees = bool(self.agrees)


@dataclass
class Result:
    """What one experiment produced: its table rows, its numbers (JSON-ready) and its figures.

    Examples
    --------
    >>> from ess.reproduce import Result, Row
    >>> res = Result("demo", "A demonstration", "no paper", "quick", rows=[Row("answer", "42", "42", agrees=True)])
    >>> print(res.table_markdown())
    # A demonstration
    <BLANKLINE>
    Source: no paper. Preset: `quick`. Wall time: 0.0 s.
    <BLANKLINE>
    | quantity | published | ours | agrees |
    |---|---|---|---|
    | answer | 42 | 42 | yes |
    <BLANKLINE>
    """

    name: str
    title: str
    source: str
    preset: str
    rows: List[Row] = field(default_factory=list)
    numbers: Dict[str, Any] = field(default_factory=dict)
    figures: Dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    notes: List[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    files: List[str] = field(default_factory=list)

    def table_markdown(self) -> str:
        lines = [
            f"# {self.title}",
            "",
            f"Source: {self.source}. Preset: `{self.preset}`. Wall time: {self.wall_seconds:.1f} s.",
            "",
            "| quantity | published | ours | agrees |",
            "|---|---|---|---|",
        ]
        for r in self.rows:
            mark = {True: "yes", False: "**no**", None: "n/a"}[r.agrees]
            ours = r.ours + (f" ({r.note})" if r.note else "")
            lines.append(f"| {r.quantity} | {r.published} | {ours} | {mark} |")
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out: "os.PathLike[str] | str") -> List[str]:
        """Write ``<name>.json``, ``<name>.md`` and each figure as ``<stem>.png`` into ``out``;
        returns the paths written."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for stem, fig in self.figures.items():
            p = d / f"{stem}.png"
            save_figure(fig, p)
            paths.append(str(p))
        self.files = [os.path.basename(p) for p in paths] + [f"{self.name}.json", f"{self.name}.md"]
        payload = {
            "name": self.name,
            "title": self.title,
            "source": self.source,
            "preset": self.preset,
            "wall_seconds": self.wall_seconds,
            "rows": jsonable([r.__dict__ for r in self.rows]),
            "numbers": jsonable(self.numbers),
            "notes": self.notes,
            "files": self.files,
        }
        pj = d / f"{self.name}.json"
        pj.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n", encoding="utf-8")
        pm = d / f"{self.name}.md"
        pm.write_text(self.table_markdown(), encoding="utf-8")
        return paths + [str(pj), str(pm)]


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple = (5.0, 3.6)) -> Any:
    """A figure without pyplot's global state (safe in threads and headless)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: "os.PathLike[str] | str") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def timed(fn: Callable[..., Result]) -> Callable[..., Result]:
    def wrapper(*args: Any, **kwargs: Any) -> Result:
        t0 = time.perf_counter()
        r = fn(*args, **kwargs)
        r.wall_seconds = time.perf_counter() - t0
        return r

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    return f"{x:.{digits}g}"
