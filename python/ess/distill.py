"""Choosing a state size for a distilled (recurrent) student from an ESS report.

Rationale. The block ``H_t`` of a layer's operator maps the past to the future at split ``t``; a
recurrence with ``N`` states per operator realises a block of rank at most ``N``, and by
Eckart-Young the best rank-``N`` approximation of ``H_t`` misses it by exactly ``sigma_{N+1}`` in
spectral norm. The tolerance-ESS at threshold ``tau`` (number of singular values above ``tau``) is
therefore the smallest state with which a student can match that block to within ``tau``. A
student must serve every split of every input with one fixed ``N``; taking a high quantile of the
tolerance-ESS over split points, samples and the layer's operators (heads or channels) asks for a
state that suffices, at that threshold, for that fraction of the blocks seen. The answer is only as
good as the inputs (use representative ones) and the length: where the ESS sits on its boundary
bound ``min(t, L - t)`` the length, not the layer, limited it, and the recommendation is a lower
bound (``at_bound`` reports how often that happened; analyse longer inputs then).

References
----------
R. N. Parnichkun, N. Tumma, A. W. Thomas, A. Moro, Q. An, T. Suzuki, A. Yamashita, M. Poli,
S. Massaroli, "Quantifying Memory Utilization with Effective State-Size", ICML 2025;
arXiv:2504.19561 (ESS to guide distillation into recurrent students).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["recommend_state_size"]


def recommend_state_size(report: Any, quantile: float = 0.95) -> Any:
    """Per layer, a state size for a distilled student: the ``quantile`` of the tolerance-ESS over
    split points (position 0 excluded), samples and operators, rounded up.

    Parameters
    ----------
    report : :class:`ess.Report` computed with ``method="both"`` or ``"tolerance"``. Its threshold
        (``report.meta["atol"]``/``["rtol"]``; both None means the numerical-rank default) is the
        stated accuracy of the recommendation: pass ``rtol=`` to :func:`ess.analyze` to choose it
        (e.g. ``rtol=1e-2``: blocks matched to 1% of their largest singular value).
    quantile : in ``(0, 1]``; 1 gives the maximum.

    Returns
    -------
    pandas.DataFrame, one row per layer: ``layer, kind, tss, recommended, quantile, atol, rtol,
    mean_ess, max_ess, at_bound`` (fraction of blocks whose ESS equals ``min(t, L - t)``: a large value
    means the length limited the measurement and ``recommended`` is a lower bound) and ``ratio``
    (``recommended / tss``: below 1 the layer uses less state than it has).

    Examples
    --------
    A small untrained model on two random sequences, blocks matched to 1% of their largest singular value:

    >>> import torch, ess
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> rep = ess.analyze(model, torch.randint(2, 60, (2, 16)), rtol=1e-2, progress=False)
    >>> ess.recommend_state_size(rep, quantile=0.95)[["layer", "tss", "recommended", "ratio"]]
                layer   tss  recommended  ratio
    0  blocks.0.mixer   3.0            3  1.000
    1  blocks.1.mixer  16.0            6  0.375
    """
    import pandas as pd

    q = float(quantile)
    if not (0.0 < q <= 1.0) or math.isnan(q):
        raise InvalidArgumentError(f"quantile: must be in (0, 1], got {quantile!r}")
    table = getattr(report, "table", None)
    if table is None or "ess_tolerance" not in table:
        raise InvalidArgumentError("report: expected an ess.Report with an ess_tolerance column")
    if report.meta.get("method") == "entropy" or table["ess_tolerance"].isna().all():
        raise InvalidArgumentError(
            "report: computed with method='entropy'; the recommendation needs the tolerance-ESS "
            "(analyze with method='both' or 'tolerance')"
        )
    recs = []
    t = table[table["position"] > 0]
    for layer, d in t.groupby("layer", sort=False, observed=True):
        e = d["ess_tolerance"].to_numpy(dtype=float)
        if e.size == 0:
            continue
        val = float(np.quantile(e, q, method="higher"))
        tss = float(d["tss"].iloc[0])
        bound = d["bound"].to_numpy(dtype=float)
        recs.append(
            {
                "layer": layer,
                "kind": d["kind"].iloc[0],
                "tss": tss,
                "recommended": int(math.ceil(val)),
                "quantile": q,
                "atol": report.meta.get("atol"),
                "rtol": report.meta.get("rtol"),
                "mean_ess": float(e.mean()),
                "max_ess": float(e.max()),
                "at_bound": float(np.mean(e >= bound)),
                "ratio": math.ceil(val) / tss if tss > 0 else float("nan"),
            }
        )
    return pd.DataFrame(recs)
