"""The built-in hybrid language model (softmax attention, linear attention, selective SSM, short convolution)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import List

import torch
from torch import nn

from .layers import GatedLinearAttention, LinearAttention, SelectiveSSM, ShortConv, SoftmaxAttention
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["HybridConfig", "HybridLM", "Block"]

MIXERS = ("conv", "ssm", "linear_attention", "gated_linear_attention", "softmax_attention")


@dataclass
class HybridConfig:
    """Size and layer types of a :class:`HybridLM`: ``mixers`` names the sequence mixer of each block, in
    order (each one of ``MIXERS``); ``d_state`` is the state size of the SSM channels, ``conv_kernel`` the
    taps of the short convolution, ``max_len`` the number of learned positions.

    Examples
    --------
    >>> from ess.models.model import MIXERS, HybridConfig
    >>> cfg = HybridConfig(d_model=8, n_heads=2, mixers=["conv", "softmax_attention"])
    >>> cfg.mixers, cfg.d_state, MIXERS
    (['conv', 'softmax_attention'], 8, ('conv', 'ssm', 'linear_attention', 'gated_linear_attention', 'softmax_attention'))
    >>> cfg.to_json()
    '{"vocab_size": 64, "d_model": 8, "n_heads": 2, "d_state": 8, "conv_kernel": 4, "max_len": 256, "mixers": ["conv", "softmax_attention"]}'
    """

    vocab_size: int = 64
    d_model: int = 64
    n_heads: int = 4
    d_state: int = 8
    conv_kernel: int = 4
    max_len: int = 256
    mixers: List[str] = field(default_factory=lambda: ["conv", "ssm", "linear_attention", "softmax_attention"])

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(LN(x))`` then ``x + MLP(LN(x))``.

    Examples
    --------
    >>> import torch
    >>> from ess.models.model import Block, HybridConfig
    >>> block = Block(HybridConfig(d_model=8, n_heads=2), "ssm")
    >>> type(block.mixer).__name__, tuple(block(torch.zeros(1, 5, 8)).shape)
    ('SelectiveSSM', (1, 5, 8))
    """

    def __init__(self, cfg: HybridConfig, kind: str) -> None:
        super().__init__()
        if kind not in MIXERS:
            raise InvalidArgumentError(f"kind: unknown mixer {kind!r}; expected one of {MIXERS}")
        self.kind = kind
        self.norm1 = nn.LayerNorm(cfg.d_model)
        if kind == "conv":
            self.mixer: nn.Module = ShortConv(cfg.d_model, cfg.conv_kernel)
        elif kind == "ssm":
            self.mixer = SelectiveSSM(cfg.d_model, cfg.d_state)
        elif kind == "linear_attention":
            self.mixer = LinearAttention(cfg.d_model, cfg.n_heads)
        elif kind == "gated_linear_attention":
            self.mixer = GatedLinearAttention(cfg.d_model, cfg.n_heads)
        else:
            self.mixer = SoftmaxAttention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 2 * cfg.d_model), nn.GELU(), nn.Linear(2 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridLM(nn.Module):
    """Token + learned position embeddings, one block per entry of ``cfg.mixers``, tied output head.

    ``forward(tokens)`` takes int64 ``(B, L)`` token ids (``L <= max_len``) and returns logits ``(B, L, vocab)``.

    Examples
    --------
    >>> import torch
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, mixers=["conv", "softmax_attention"]))
    >>> [name for name, _ in model.named_modules() if name.endswith("mixer")]
    ['blocks.0.mixer', 'blocks.1.mixer']
    >>> tuple(model(torch.arange(2, 10).reshape(1, 8)).shape)       # logits (batch, length, vocab)
    (1, 8, 64)
    """

    def __init__(self, cfg: HybridConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HybridConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg, k) for k in cfg.mixers])
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected shape (batch, length), got {tuple(tokens.shape)}")
        L = tokens.shape[1]
        if L > self.cfg.max_len:
            raise ShapeError(f"tokens: length {L} exceeds max_len {self.cfg.max_len}")
        x = self.embed(tokens) + self.pos(torch.arange(L, device=tokens.device))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x) @ self.embed.weight.T
