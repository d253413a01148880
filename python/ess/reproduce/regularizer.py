"""Training with ESS: an entropy-ESS penalty or bonus on one layer, on MQAR.

The ESS paper proposes ESS-informed regularisers. Here the differentiable entropy-ESS of
:mod:`ess.differentiable` enters the training loss of the MQAR model of the ``mqar`` experiment
(short convolution + softmax attention): ``loss = CE + lam * mean_t ESS_t / min(t, L - t)`` over the
attention heads of the mixer, every ``stride``-th split and the batch. ``lam > 0`` penalises memory
use, ``lam < 0`` encourages it, ``lam = 0`` is the baseline. After training we measure, with the
Rust kernel (:func:`ess.analyze`), the layer's entropy- and tolerance-ESS on held-out sequences, and
the accuracy. Expected: ESS ordered with ``-lam``; what accuracy does is the experiment's finding.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List


from ._common import Result, Row, new_figure, timed
from ._mqar import make_model, train
from .mqar import layer_ess

NAME = "regularizer"


def ess_penalty(layer: Any, lam: float, stride: int = 2) -> Callable[[Any, Any], Any]:
    """A ``penalty(model, tokens)`` for :func:`._mqar.train`: ``lam`` times the mean normalised
    entropy-ESS of ``layer`` (a :class:`ess.models.layers.SoftmaxAttention`) on the batch. The layer's
    input is captured by a forward hook during the model's own forward pass.

    Examples
    --------
    >>> import torch
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> from ess.reproduce.regularizer import ess_penalty
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["softmax_attention"]))
    >>> penalty = ess_penalty(model.blocks[0].mixer, lam=0.1)
    >>> tokens = torch.arange(2, 10).reshape(1, 8)
    >>> _ = model(tokens)                                  # the hook captures the layer's input
    >>> p = penalty(model, tokens)
    >>> p.requires_grad, 0.0 < float(p.detach()) <= 0.1    # lam times a normalised ESS in (0, 1]
    (True, True)
    """
    import torch

    from ..differentiable import entropy_ess

    store: Dict[str, Any] = {}
    layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("x", inp[0]))

    def penalty(model: Any, tokens: Any) -> Any:
        x = store["x"]
        L = x.shape[1]
        pos = list(range(1, L, stride))
        q, k, _ = layer.project(x)
        T = layer.mixing(q, k)  # (B, H, L, L)
        e = entropy_ess(T, pos)  # (B, H, P)
        bound = torch.tensor([min(t, L - t) for t in pos], dtype=e.dtype)
        return lam * (e / bound).mean()

    return penalty


@timed
def run(quick: bool = False, seed: int = 0) -> Result:
    from ..models.mqar import MQARConfig, generate

    cfg = MQARConfig(vocab_size=24, n_keys=8, n_pairs=4, n_queries=4)
    steps, d_model = (60, 16) if quick else (600, 32)
    lams = [1.0, 0.0, -1.0] if quick else [1.0, 0.2, 0.0, -1.0]
    data = lambda b, s: generate(b, cfg, seed=s)  # noqa: E731
    ev = generate(128 if quick else 1000, cfg, seed=30_000 + seed)
    probe = ev[0][:4]
    out: List[Dict[str, Any]] = []
    for lam in lams:
        model = make_model("softmax_attention", vocab_size=cfg.vocab_size, d_model=d_model, n_heads=2, seed=seed)
        pen = ess_penalty(model.blocks[1].mixer, lam) if lam != 0 else None
        t = train(model, data, steps=steps, batch=32, lr=1e-2, seed=seed, eval_data=ev, penalty=pen)
        e = layer_ess(model, probe)
        out.append({"lam": lam, "accuracy": t.accuracy, "train_seconds": t.seconds, **e})
    ent = [o["avg_ent"] for o in out]  # lams decreasing, so ESS should increase along the list
    ordered = all(a < b for a, b in zip(ent, ent[1:]))
    res = Result(
        NAME,
        "Training with ESS: entropy-ESS penalty / bonus on softmax attention (MQAR)",
        "effective state-size (ESS) paper: ESS-informed regularisers",
        "quick" if quick else "full",
    )
    for o in out:
        res.rows.append(
            Row(
                f"lam = {o['lam']:+g}: entropy-ESS, tolerance-ESS (mean per head), accuracy",
                "(no number published for this setup)",
                f"{o['avg_ent']:.2f}, {o['avg_tol']:.2f}, {o['accuracy']:.3f}",
                None,
            )
        )
    res.rows.append(
        Row(
            "entropy-ESS ordered by lam (largest penalty first)",
            "penalty lowers ESS, bonus raises it",
            (" < " if ordered else ", ").join(f"{e:.2f}" for e in ent) + ("" if ordered else " (not ordered)"),
            bool(ordered),
        )
    )
    res.notes = [
        f"MQAR L = {cfg.length}, d_model {d_model}, {steps} steps; penalty on every 2nd split; ESS measured with the "
        "Rust kernel (ess.analyze, rtol 1e-2 for the tolerance-ESS) on 4 held-out sequences."
    ]
    res.numbers = {"runs": out, "steps": steps, "d_model": d_model}
    fig, ax = new_figure(2)
    colors = ["C3" if o["lam"] > 0 else "C2" if o["lam"] < 0 else "C7" for o in out]
    ax[0, 0].bar([f"{o['lam']:+g}" for o in out], ent, color=colors)
    ax[0, 0].set_xlabel("lam (penalty > 0, bonus < 0)")
    ax[0, 0].set_ylabel("entropy-ESS per head (held-out)")
    ax[0, 1].bar([f"{o['lam']:+g}" for o in out], [o["accuracy"] for o in out], color=colors)
    ax[0, 1].set_xlabel("lam")
    ax[0, 1].set_ylabel("MQAR accuracy")
    res.figures = {"regularizer": fig}
    return res
