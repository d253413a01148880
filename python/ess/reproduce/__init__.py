"""Reproductions of the source papers' findings, each runnable from one command.

``ess reproduce NAME [--quick] [--out DIR]`` (or :func:`run`) runs one experiment and writes into
``DIR`` its figure(s) (PNG), ``NAME.json`` (every number) and ``NAME.md`` (a table putting the
published value or claim beside ours). ``--quick`` is a seconds-long preset (what the tests run);
the default preset is the full one (minutes on a CPU). Needs the ``analyze`` extra (matplotlib for
the figures; PyTorch and pandas for the trained-model experiments). Experiments:

* ``metastable``: hitting times between clusters of a metastable chain scale as ``1/eps``;
* ``winner``: winner-takes-all collapse of single-trajectory CCMC generation;
* ``graph-svm``: cosine between trained one-layer attention weights and the graph-SVM solution;
* ``mqar``: ESS tracks memory use on associative recall (accuracy vs ESS/TSS across mixers);
* ``delimiters``: per-position ESS around a delimiter for softmax, gated linear and linear attention;
* ``regularizer``: training with an entropy-ESS penalty or bonus (:mod:`ess.differentiable`) on MQAR.

Examples
--------
>>> from ess import reproduce
>>> res = reproduce.run("metastable", quick=True, out="repro")    # doctest: +SKIP
>>> print(res.table_markdown())                                     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

from ..errors import InvalidArgumentError
from ._common import Result, Row

__all__ = ["EXPERIMENTS", "run", "Result", "Row"]

#: experiment name -> module (inside this package) with a ``run(quick, seed)`` returning a Result
EXPERIMENTS = {
    "metastable": "metastable",
    "winner": "winner",
    "graph-svm": "graph_svm",
    "mqar": "mqar",
    "delimiters": "delimiters",
    "regularizer": "regularizer",
}


def run(name: str, *, quick: bool = False, out: Optional["os.PathLike[str] | str"] = None, seed: int = 0) -> Result:
    """Run experiment ``name`` (see :data:`EXPERIMENTS`); write its files into ``out`` when given.

    Examples
    --------
    The quick preset of the winner-takes-all experiment takes about a second:

    >>> import os, tempfile
    >>> from ess import reproduce
    >>> list(reproduce.EXPERIMENTS)
    ['metastable', 'winner', 'graph-svm', 'mqar', 'delimiters', 'regularizer']
    >>> with tempfile.TemporaryDirectory() as d:
    ...     res = reproduce.run("winner", quick=True, out=d)
    ...     print(sorted(os.path.basename(p) for p in res.files))
    ['winner.json', 'winner.md', 'winner_takes_all.png']
    >>> res.name, res.preset, all(row.agrees for row in res.rows)
    ('winner', 'quick', True)
    >>> print(res.table_markdown().splitlines()[0])
    # Winner-takes-all in single-trajectory CCMC generation
    >>> reproduce.run("no-such-experiment")
    Traceback (most recent call last):
        ...
    ess.errors.InvalidArgumentError: name: unknown experiment 'no-such-experiment'; expected one of metastable, winner, graph-svm, mqar, delimiters, regularizer
    """
    if name not in EXPERIMENTS:
        raise InvalidArgumentError(f"name: unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    mod = importlib.import_module(f".{EXPERIMENTS[name]}", __name__)
    res: Result = mod.run(quick=quick, seed=seed)
    if out is not None:
        res.write(out)
    return res
