"""Extractors for the package's own reference layers (:mod:`ess.models.layers`).

Each extractor hooks its layer, keeps the layer's input ``x`` (``(B, L, d_model)``, small) and
its output, and after the pass rebuilds the per-head or per-channel causal operators from the
layer's weights and ``x`` (the same formulas the layer's forward uses). :meth:`reconstruct`
applies the operators to the layer's mixing input and returns the layer output, which the tests
compare to the captured output.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, List, Optional

import numpy as np
import torch

from ..models.layers import GatedLinearAttention, LinearAttention, SelectiveSSM, ShortConv, SoftmaxAttention
from .base import Extractor, OperatorSet, register

__all__ = [
    "ReferenceExtractor",
    "SoftmaxAttentionExtractor",
    "LinearAttentionExtractor",
    "GatedLinearAttentionExtractor",
    "SelectiveSSMExtractor",
    "ShortConvExtractor",
]


class ReferenceExtractor(Extractor):
    """Common capture logic: a forward hook storing (detached) input and output of the module.

    Examples
    --------
    The extractors of the built-in model's layers capture the layer's input in a forward hook and
    rebuild the operators from it in float64:

    >>> import torch
    >>> from ess.models.layers import ShortConv
    >>> from ess.operators import find_extractor
    >>> from ess.operators.reference import ReferenceExtractor
    >>> layer = ShortConv(d_model=2, kernel_size=3)
    >>> ex = find_extractor(layer, "conv")
    >>> isinstance(ex, ReferenceExtractor), ex.n_samples()
    (True, 0)
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(2, 5, 2))
    >>> ex.n_samples()
    2
    """

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._x: Optional[torch.Tensor] = None
        self._y: Optional[torch.Tensor] = None
        self._m64: Any = None

    @property
    def m(self) -> Any:
        """A float64 copy of the layer: operators are rebuilt in float64 from the captured input, so
        that rounding of a float32 forward does not lift the numerical rank of low-rank operators."""
        if self._m64 is None:
            self._m64 = copy.deepcopy(self.module).to(torch.float64)
        return self._m64

    def attach(self) -> List[Any]:
        def hook(mod: Any, args: Any, out: Any) -> None:
            self._x = args[0].detach()
            self._y = out.detach()

        return [self.module.register_forward_hook(hook)]

    def n_samples(self) -> int:
        return 0 if self._x is None else int(self._x.shape[0])

    def _input(self, sample: int) -> torch.Tensor:
        if self._x is None:
            raise RuntimeError(f"{self.name}: nothing captured (run the forward pass with the hooks attached)")
        if not 0 <= sample < self._x.shape[0]:
            raise IndexError(f"sample {sample} out of range for {self._x.shape[0]} captured sequences")
        return self._x[sample : sample + 1].to(torch.float64)

    def captured_output(self, sample: int = 0) -> torch.Tensor:
        """The layer's own output for ``sample``, ``(L, d_model)``, in the layer's dtype."""
        self._input(sample)
        assert self._y is not None
        return self._y[sample]

    def length(self) -> int:
        return 0 if self._x is None else int(self._x.shape[1])

    @abc.abstractmethod
    def n_operators(self) -> int:
        """Number of operators the layer yields (heads or channel groups)."""

    def estimate_bytes(self, sample: int = 0) -> int:
        L = self.length()
        return 8 * self.n_operators() * L * L

    def clear(self) -> None:
        self._x = self._y = None
        self._m64 = None

    # operators(sample) -> OperatorSet; _mixing(sample) -> (T torch (n_ops, L, L), u torch (n_ops, L, c))
    @abc.abstractmethod
    def _mixing(self, sample: int) -> Any:
        """``(T, u)``: the operators ``(n_ops, L, L)`` and the mixed inputs ``(n_ops, L, c)`` (torch, float64)."""

    @abc.abstractmethod
    def _finish(self, mixed: torch.Tensor) -> torch.Tensor:
        """The layer output ``(L, d_model)`` from ``T @ u`` (output projection, gates)."""

    @torch.no_grad()
    def reconstruct(self, sample: int = 0) -> torch.Tensor:
        """The layer output ``(L, d_model)`` rebuilt (in float64) as ``finish(T @ u)`` from the materialised operators."""
        T, u = self._mixing(sample)
        return self._finish(T @ u)

    @torch.no_grad()
    def operators(self, sample: int = 0) -> OperatorSet:
        T, u = self._mixing(sample)
        ops = T.detach().to("cpu", torch.float64).numpy()
        labels, tss, shared, note = self._describe(ops.shape[0], ops.shape[1], u.shape[-1])
        return OperatorSet(self.name, self.kind, np.ascontiguousarray(ops), labels, tss, shared, note)

    @abc.abstractmethod
    def _describe(self, n: int, L: int, c: int) -> Any:
        """``(labels, tss, shared, note)`` of ``n`` operators of length ``L`` mixing ``c`` channels each."""


class _AttentionBase(ReferenceExtractor):
    def n_operators(self) -> int:
        return int(self.module.n_heads)

    def _finish(self, mixed: torch.Tensor) -> torch.Tensor:
        H, L, dh = mixed.shape
        return self.m.out(mixed.transpose(0, 1).reshape(L, H * dh))


class SoftmaxAttentionExtractor(_AttentionBase):
    """Softmax operators of :class:`ess.models.layers.SoftmaxAttention`, one per head (TSS ``L``).

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import SoftmaxAttention
    >>> from ess.operators import find_extractor
    >>> layer = SoftmaxAttention(d_model=8, n_heads=2)
    >>> ex = find_extractor(layer, "attn")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(1, 5, 8))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.operators.shape, ops.tss, float(ops.operators.sum(-1).round(12).min())
    ('SoftmaxAttentionExtractor', (2, 5, 5), [5.0, 5.0], 1.0)
    """

    kind = "softmax_attention"

    def _mixing(self, sample: int) -> Any:
        q, k, v = self.m.project(self._input(sample))
        return self.m.mixing(q, k)[0], v[0]

    def _describe(self, n: int, L: int, c: int) -> Any:
        return [f"head {h}" for h in range(n)], [float(L)] * n, [c] * n, ""


class LinearAttentionExtractor(_AttentionBase):
    """Row-normalised linear-attention operators of :class:`ess.models.layers.LinearAttention`, one per
    head (TSS: the head's feature dimension).

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import LinearAttention
    >>> from ess.operators import find_extractor
    >>> layer = LinearAttention(d_model=8, n_heads=2)
    >>> ex = find_extractor(layer, "attn")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(1, 5, 8))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.operators.shape, ops.tss
    ('LinearAttentionExtractor', (2, 5, 5), [4.0, 4.0])
    """

    kind = "linear_attention"

    def _mixing(self, sample: int) -> Any:
        fq, fk, v = self.m.project(self._input(sample))
        return self.m.mixing(fq, fk)[0], v[0]

    def _describe(self, n: int, L: int, c: int) -> Any:
        dk = self.module.d_model // self.module.n_heads
        return (
            [f"head {h}" for h in range(n)],
            [float(dk)] * n,
            [c] * n,
            "row-normalised (normaliser scales rows, rank unchanged)",
        )


class GatedLinearAttentionExtractor(_AttentionBase):
    """Gated linear-attention operators of :class:`ess.models.layers.GatedLinearAttention`, one per head
    (TSS: the head's key dimension).

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import GatedLinearAttention
    >>> from ess.operators import find_extractor
    >>> layer = GatedLinearAttention(d_model=8, n_heads=2)
    >>> ex = find_extractor(layer, "gla")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(1, 5, 8))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.dense().shape, ops.tss
    ('GatedLinearAttentionExtractor', (2, 5, 5), [4.0, 4.0])
    """

    kind = "gated_linear_attention"

    def _mixing(self, sample: int) -> Any:
        q, k, v, loga = self.m.project(self._input(sample))
        return self.m.mixing(q, k, loga)[0], v[0]

    def _describe(self, n: int, L: int, c: int) -> Any:
        dk = self.module.d_model // self.module.n_heads
        return [f"head {h}" for h in range(n)], [float(dk)] * n, [c] * n, ""


class SelectiveSSMExtractor(ReferenceExtractor):
    """Selective-SSM operators of :class:`ess.models.layers.SelectiveSSM`, one per channel (TSS: its
    state size ``N``).

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import SelectiveSSM
    >>> from ess.operators import find_extractor
    >>> layer = SelectiveSSM(d_model=4, d_state=3, d_inner=2)
    >>> ex = find_extractor(layer, "ssm")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(1, 6, 4))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.dense().shape, ops.tss
    ('SelectiveSSMExtractor', (2, 6, 6), [3.0, 3.0])
    """

    kind = "selective_ssm"

    def n_operators(self) -> int:
        return int(self.module.d_inner)

    def _mixing(self, sample: int) -> Any:
        m = self.m
        u, delta, Bm, Cm, A = m.project(self._input(sample))
        u, delta, Bm, Cm = u[0], delta[0], Bm[0], Cm[0]  # (L, d), (L, d), (L, N), (L, N)
        L = u.shape[0]
        c = delta.cumsum(0)  # (L, d)
        mask = torch.ones(L, L, dtype=torch.bool, device=u.device).tril()
        ops = []
        # one channel at a time keeps the (L, L, N) temporary small
        for d in range(u.shape[1]):
            diff = (c[:, None, d] - c[None, :, d]).masked_fill(~mask, 0.0)  # (t, s)
            decay = torch.exp(diff[..., None] * A[d])  # (t, s, N)
            T = torch.einsum("tn,tsn,sn->ts", Cm, decay, Bm) * delta[None, :, d]
            T = T.masked_fill(~mask, 0.0) + torch.diag(m.D[d].expand(L))
            ops.append(T)
        return torch.stack(ops), u.T.unsqueeze(-1)  # (d, L, L), (d, L, 1)

    def _finish(self, mixed: torch.Tensor) -> torch.Tensor:
        return self.m.out_proj(mixed[..., 0].T)

    def _describe(self, n: int, L: int, c: int) -> Any:
        N = float(self.module.d_state)
        return [f"channel {d}" for d in range(n)], [N] * n, None, "D skip term on the diagonal (does not enter ESS)"


class ShortConvExtractor(ReferenceExtractor):
    """Convolution operators of :class:`ess.models.layers.ShortConv`, one per channel (TSS: taps - 1).

    Examples
    --------
    >>> import torch
    >>> from ess.models.layers import ShortConv
    >>> from ess.operators import find_extractor
    >>> layer = ShortConv(d_model=2, kernel_size=3)
    >>> ex = find_extractor(layer, "conv")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = layer(torch.randn(1, 5, 2))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.operators.shape, ops.tss
    ('ShortConvExtractor', (2, 5, 5), [2.0, 2.0])
    """

    kind = "conv"

    def n_operators(self) -> int:
        return int(self.module.d_model)

    def _mixing(self, sample: int) -> Any:
        x = self._input(sample)[0]  # (L, d)
        L, d = x.shape
        k = self.module.kernel_size
        w = self.m.conv.weight[:, 0, :]  # (d, k); y_t = sum_j w[:, k-1-j] x_{t-j}
        T = x.new_zeros(d, L, L)
        idx = torch.arange(L, device=x.device)
        for j in range(min(k, L)):
            T[:, idx[j:], idx[: L - j]] = w[:, k - 1 - j, None]
        return T, x.T.unsqueeze(-1)

    def _finish(self, mixed: torch.Tensor) -> torch.Tensor:
        out = mixed[..., 0].T
        if self.m.conv.bias is not None:
            out = out + self.m.conv.bias
        return out

    def _describe(self, n: int, L: int, c: int) -> Any:
        k = float(self.module.kernel_size - 1)
        return [f"channel {d}" for d in range(n)], [k] * n, None, ""


register(SoftmaxAttention, SoftmaxAttentionExtractor)
register(LinearAttention, LinearAttentionExtractor)
register(GatedLinearAttention, GatedLinearAttentionExtractor)
register(SelectiveSSM, SelectiveSSMExtractor)
register(ShortConv, ShortConvExtractor)
