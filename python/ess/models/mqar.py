"""Multi-query associative recall (MQAR) data.

A sequence is ``BOS k_1 v_1 ... k_n v_n SEP q_1 v(q_1) ... q_m v(q_m)``: ``n`` key-value pairs
(distinct keys), the delimiter ``SEP``, then ``m`` queries (keys drawn from the pairs), each
followed by its value. The model must predict ``v(q_i)`` at the position of ``q_i``; only those
positions are scored. Token ids: ``0`` = BOS, ``1`` = SEP, keys ``[2, 2 + n_keys)``, values
``[2 + n_keys, vocab)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from ..errors import InvalidArgumentError

__all__ = ["MQARConfig", "generate", "BOS", "SEP"]

BOS, SEP = 0, 1


@dataclass(frozen=True)
class MQARConfig:
    """A multi-query associative recall (MQAR) task: token 0 is ``BOS``, 1 is ``SEP``, the next ``n_keys``
    ids are keys and the rest of the ``vocab_size`` ids are values; a sequence lists ``n_pairs`` (key,
    value) pairs, then ``SEP``, then ``n_queries`` (key, value) queries drawn from those pairs (its
    ``length`` is ``2 + 2 n_pairs + 2 n_queries``).

    Examples
    --------
    >>> from ess.models import MQARConfig
    >>> cfg = MQARConfig(n_pairs=2, n_queries=2)
    >>> cfg.length, cfg.n_values                   # BOS, 2 pairs, SEP, 2 queries of (key, value)
    (10, 32)
    """

    vocab_size: int = 64
    n_keys: int = 30
    n_pairs: int = 8
    n_queries: int = 8

    @property
    def length(self) -> int:
        return 2 + 2 * self.n_pairs + 2 * self.n_queries

    @property
    def n_values(self) -> int:
        return self.vocab_size - 2 - self.n_keys


def generate(
    n: int, cfg: MQARConfig = MQARConfig(), *, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, targets, mask)``: int64 ``(n, L)`` inputs, int64 ``(n, L)`` next-token targets and a
    bool ``(n, L)`` mask of the scored positions (the query keys).

    Examples
    --------
    >>> from ess.models import MQARConfig, generate, token_names
    >>> cfg = MQARConfig(n_pairs=2, n_queries=2)
    >>> tokens, targets, mask = generate(1, cfg, seed=0)
    >>> token_names(tokens[0], cfg)
    ['BOS', 'k24', 'v8', 'k19', 'v9', 'SEP', 'k24', 'v8', 'k24', 'v8']
    >>> token_names(targets[0][mask[0]], cfg)      # the values the query keys must recall
    ['v8', 'v8']
    """
    if cfg.n_pairs > cfg.n_keys or cfg.n_values < 1:
        raise InvalidArgumentError("MQARConfig: need n_pairs <= n_keys and at least one value token")
    rng = np.random.default_rng(seed)
    L = cfg.length
    tokens = np.zeros((n, L), dtype=np.int64)
    targets = np.zeros((n, L), dtype=np.int64)
    mask = np.zeros((n, L), dtype=bool)
    for i in range(n):
        keys = rng.choice(cfg.n_keys, cfg.n_pairs, replace=False) + 2
        vals = rng.integers(0, cfg.n_values, cfg.n_pairs) + 2 + cfg.n_keys
        q = rng.integers(0, cfg.n_pairs, cfg.n_queries)
        seq = [BOS]
        for k, v in zip(keys, vals):
            seq += [k, v]
        seq.append(SEP)
        for j in q:
            seq += [keys[j], vals[j]]
        tokens[i] = seq
        targets[i, :-1] = tokens[i, 1:]
        qpos = 2 + 2 * cfg.n_pairs + 2 * np.arange(cfg.n_queries)
        mask[i, qpos] = True
    return torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(mask)
