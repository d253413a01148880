"""Tiny MQAR training on a CPU, shared by the ``mqar``, ``delimiters`` and ``regularizer`` experiments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


@dataclass
class Trained:
    """A trained model with its accuracy on held-out sequences and its loss history."""

    model: Any
    accuracy: float
    losses: List[float]
    seconds: float
    extra: Dict[str, Any] = field(default_factory=dict)


def make_model(
    mixer: str,
    *,
    vocab_size: int,
    d_model: int,
    n_heads: int = 1,
    d_state: int = 8,
    max_len: int = 128,
    seed: int = 0,
    first: Optional[str] = "conv",
) -> Any:
    """A two-block :class:`ess.models.model.HybridLM`: a short convolution (builds key-value
    bigrams) then the mixer under study (the recall). ``first=None``: the mixer alone twice."""
    import torch

    from ..models.model import HybridConfig, HybridLM

    torch.manual_seed(seed)
    mixers = [first, mixer] if first else [mixer, mixer]
    cfg = HybridConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        n_heads=n_heads,
        d_state=d_state,
        conv_kernel=3,
        max_len=max_len,
        mixers=mixers,
    )
    return HybridLM(cfg)


def accuracy(model: Any, tokens: Any, targets: Any, mask: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(tokens).argmax(-1)
    model.train()
    return float((pred[mask] == targets[mask]).float().mean())


def train(
    model: Any,
    data: Callable[[int, int], Tuple[Any, Any, Any]],
    *,
    steps: int,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    eval_data: Optional[Tuple[Any, Any, Any]] = None,
    penalty: Optional[Callable[[Any, Any], Any]] = None,
    threads: int = 1,
) -> Trained:
    """AdamW with a one-cycle schedule on fresh batches ``data(batch, seed_i)``; cross-entropy on the
    scored positions, plus ``penalty(model, tokens)`` when given (a differentiable scalar)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        losses: List[float] = []
        t0 = time.perf_counter()
        model.train()
        for i in range(steps):
            x, y, m = data(batch, 1_000_003 * (seed + 1) + i)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits[m], y[m])
            total = loss + penalty(model, x) if penalty is not None else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        secs = time.perf_counter() - t0
        acc = accuracy(model, *eval_data) if eval_data is not None else float("nan")
    finally:
        torch.set_num_threads(old)
    return Trained(model, acc, losses, secs)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # average ranks of ties
        tie = a == v
        r[tie] = r[tie].mean()
    return r
