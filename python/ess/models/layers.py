"""Reference sequence-mixing layers of the built-in model.

Each layer maps ``x`` of shape ``(B, L, d_model)`` to ``(B, L, d_model)`` and is written so
that its sequence mixing is an explicit causal operator ``T`` per head or channel (the
extractors in :mod:`ess.operators.reference` rebuild ``T`` from the layer's weights and its
input, and the tests check that ``T`` reproduces the layer's output):

* :class:`SoftmaxAttention`: causal multi-head softmax attention, ``T_h = softmax(q k^T / sqrt(d_h))``;
* :class:`LinearAttention`: ``T_h[t, s] = phi(q_t) . phi(k_s) / (sum_{s'<=t} phi(q_t) . phi(k_s') + eps)``
  with ``phi = elu + 1`` (a row-normalised linear attention, state ``d_h`` per head);
* :class:`GatedLinearAttention`: ``T_h[t, s] = q_t^T (prod_{r=s+1..t} diag(a_r)) k_s`` with data-dependent
  gates ``a_r in (0, 1)^{d_h}``;
* :class:`SelectiveSSM`: a Mamba (S6) style selective scan per channel with ``N`` states,
  ``h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t``, ``y_t = C_t h_t + D u_t``;
* :class:`ShortConv`: a depthwise causal convolution with ``k`` taps.

The mixing input ``u`` of the attention layers is the value projection; of the SSM and
convolution, the layer input after an input projection (SSM) or the layer input itself (conv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["SoftmaxAttention", "LinearAttention", "GatedLinearAttention", "SelectiveSSM", "ShortConv"]


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, L, d = x.shape
    return x.view(B, L, n_heads, d // n_heads).transpose(1, 2)  # (B, H, L, dh)


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, H, L, dh = x.shape
    return x.transpose(1, 2).reshape(B, L, H * dh)


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention (no positional encoding inside; the model adds it).

    Examples
    --------
    Causal: the first three outputs depend on the first three inputs only.

    >>> import torch
    >>> from ess.models.layers import SoftmaxAttention
    >>> _ = torch.manual_seed(0)
    >>> layer = SoftmaxAttention(d_model=8, n_heads=2)
    >>> x = torch.randn(1, 5, 8)
    >>> y = layer(x)
    >>> tuple(y.shape), bool(torch.allclose(layer(x[:, :3])[:, :3], y[:, :3]))   # causal
    ((1, 5, 8), True)
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise InvalidArgumentError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads = d_model, n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor):  # -> q, k, v each (B, H, L, dh)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return _heads(q, self.n_heads), _heads(k, self.n_heads), _heads(v, self.n_heads)

    def mixing(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The operators ``(B, H, L, L)``."""
        L = q.shape[-2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.out(_merge(self.mixing(q, k) @ v))


class LinearAttention(nn.Module):
    """Row-normalised causal linear attention with feature map ``elu(x) + 1``.

    Examples
    --------
    Causal: the first three outputs depend on the first three inputs only.

    >>> import torch
    >>> from ess.models.layers import LinearAttention
    >>> _ = torch.manual_seed(0)
    >>> layer = LinearAttention(d_model=8, n_heads=2)
    >>> x = torch.randn(1, 5, 8)
    >>> y = layer(x)
    >>> tuple(y.shape), bool(torch.allclose(layer(x[:, :3])[:, :3], y[:, :3], atol=1e-6))
    ((1, 5, 8), True)
    """

    eps: float = 1e-6

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise InvalidArgumentError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads = d_model, n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.elu(_heads(q, self.n_heads)) + 1, F.elu(_heads(k, self.n_heads)) + 1, _heads(v, self.n_heads)

    def mixing(self, fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
        """The operators ``(B, H, L, L)`` (quadratic form; the state of the recurrent form is ``d_h``)."""
        a = (fq @ fk.transpose(-1, -2)).tril()
        return a / (a.sum(dim=-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fq, fk, v = self.project(x)
        return self.out(_merge(self.mixing(fq, fk) @ v))


class GatedLinearAttention(nn.Module):
    """Gated linear attention (GLA): ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``.

    Examples
    --------
    Causal: the first three outputs depend on the first three inputs only.

    >>> import torch
    >>> from ess.models.layers import GatedLinearAttention
    >>> _ = torch.manual_seed(0)
    >>> layer = GatedLinearAttention(d_model=8, n_heads=2)
    >>> x = torch.randn(1, 5, 8)
    >>> y = layer(x)
    >>> tuple(y.shape), bool(torch.allclose(layer(x[:, :3])[:, :3], y[:, :3], atol=1e-6))
    ((1, 5, 8), True)
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise InvalidArgumentError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads = d_model, n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.gate = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        dh = self.d_model // self.n_heads
        loga = F.logsigmoid(_heads(self.gate(x), self.n_heads))  # (B, H, L, dh), log of a_t in (0, 1)
        return _heads(q, self.n_heads) / math.sqrt(dh), _heads(k, self.n_heads), _heads(v, self.n_heads), loga

    @staticmethod
    def mixing(q: torch.Tensor, k: torch.Tensor, loga: torch.Tensor) -> torch.Tensor:
        """The operators ``(B, H, L, L)``: ``sum_i q_t[i] exp(G_t[i] - G_s[i]) k_s[i]``, ``G = cumsum(log a)``."""
        G = loga.cumsum(dim=-2)
        L = q.shape[-2]
        diff = G.unsqueeze(-2) - G.unsqueeze(-3)  # (B, H, t, s, dh)
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp(diff.masked_fill(~mask[..., None], float("-inf")))
        return torch.einsum("bhti,bhtsi,bhsi->bhts", q, decay, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, loga = self.project(x)
        return self.out(_merge(self.mixing(q, k, loga) @ v))


class SelectiveSSM(nn.Module):
    """Mamba (S6) style selective SSM on ``d_inner`` channels with ``N`` states each.

    ``u = in_proj(x)``; ``Delta = softplus(dt_proj(x))``, ``B_t = B_proj(x)``, ``C_t = C_proj(x)``,
    ``A = -exp(A_log)``; per channel ``h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t``,
    ``y_t = C_t . h_t + D u_t``; output ``out_proj(y)``.

    Examples
    --------
    Causal: the first three outputs depend on the first three inputs only.

    >>> import torch
    >>> from ess.models.layers import SelectiveSSM
    >>> _ = torch.manual_seed(0)
    >>> layer = SelectiveSSM(d_model=8, d_state=4)
    >>> x = torch.randn(1, 5, 8)
    >>> y = layer(x)
    >>> tuple(y.shape), bool(torch.allclose(layer(x[:, :3])[:, :3], y[:, :3], atol=1e-6))
    ((1, 5, 8), True)
    """

    def __init__(self, d_model: int, d_state: int = 8, d_inner: int | None = None) -> None:
        super().__init__()
        d_inner = d_inner or d_model
        self.d_model, self.d_state, self.d_inner = d_model, d_state, d_inner
        self.in_proj = nn.Linear(d_model, d_inner)
        self.dt_proj = nn.Linear(d_model, d_inner)
        self.B_proj = nn.Linear(d_model, d_state, bias=False)
        self.C_proj = nn.Linear(d_model, d_state, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model)
        with torch.no_grad():  # dt initialised in [1e-3, 1e-1] as in Mamba
            dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def project(self, x: torch.Tensor):
        """``u, Delta (B, L, d_inner)``, ``Bm, Cm (B, L, N)``, ``A (d_inner, N)``."""
        return self.in_proj(x), F.softplus(self.dt_proj(x)), self.B_proj(x), self.C_proj(x), -torch.exp(self.A_log)

    def scan(self, u, delta, Bm, Cm, A) -> torch.Tensor:
        Bsz, L, d = u.shape
        h = u.new_zeros(Bsz, d, self.d_state)
        dA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, d, N)
        dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(-2)  # (B, L, d, N)
        ys = []
        # unbind (one view per step, one backward node) instead of indexing in the loop: indexing
        # would make autograd scatter into a full-size zero tensor at every step
        for a_t, b_t, c_t in zip(dA.unbind(1), dBu.unbind(1), Cm.unsqueeze(-1).unbind(1)):
            h = a_t * h + b_t
            ys.append((h @ c_t).squeeze(-1))
        return torch.stack(ys, dim=1) + u * self.D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.scan(*self.project(x)))


class ShortConv(nn.Module):
    """Depthwise causal convolution with ``kernel_size`` taps: ``y_t[c] = sum_j w[c, j] x_{t-j}[c]``.

    Implemented as Mamba and Hyena do: ``Conv1d(padding=k-1)`` then crop to the first ``L`` outputs.

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import ShortConv
    >>> layer = ShortConv(d_model=2, kernel_size=3)
    >>> with torch.no_grad():
    ...     _ = layer.conv.weight.fill_(1.0)
    ...     y = layer(torch.ones(1, 5, 2))
    >>> y[0, :, 0].tolist()                       # a sum over the last 3 positions
    [1.0, 2.0, 3.0, 3.0, 3.0]
    """

    def __init__(self, d_model: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.d_model, self.kernel_size = d_model, kernel_size
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, padding=kernel_size - 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        return self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)
