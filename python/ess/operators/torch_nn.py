"""Extractors for sequence-mixing layers of :mod:`torch.nn`.

* :class:`torch.nn.MultiheadAttention` (causal self-attention): one softmax operator per head,
  shared by that head's ``head_dim`` value channels. The mask the layer really used
  (``attn_mask``, ``key_padding_mask``, ``is_causal``) is applied; an attention whose mask lets a
  query see a later position is refused (the operator would not be causal).
* causal depthwise :class:`torch.nn.Conv1d` (``groups == in_channels == out_channels``, stride 1,
  zero padding ``dilation * (kernel_size - 1)`` whose extra outputs the caller crops, the way Mamba
  and Hyena use it): one banded Toeplitz operator per channel.
* :class:`torch.nn.RNN`, :class:`torch.nn.GRU`, :class:`torch.nn.LSTM` (unidirectional, any
  number of layers, ``batch_first`` or not, optional ``hx``): the Jacobian of the output
  sequence with respect to the input sequence at the given input (a local linearisation).
  Operator ``i`` belongs to output unit ``i``: ``T_i[t, s] = sum_j d y_t[i] / d u_s[j]``, the
  response of unit ``i`` at ``t`` to a unit perturbation of every input channel at ``s``. A sum
  (a fixed linear functional of the input channels) keeps the realisation bound: its Hankel
  ranks never exceed the state size of the linearised recurrence.

Matching is by exact type (a subclass may change the forward and is not matched).
All operators are computed in float64 with torch, on the module's device, then returned as numpy.
"""

from __future__ import annotations

import abc
import copy
import inspect
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError, OutOfRangeError, ShapeError
from .base import Extractor, OperatorSet, _StructuredMixin, operator_array, register

__all__ = [
    "MultiheadAttentionExtractor",
    "CausalConv1dExtractor",
    "RecurrentJacobianExtractor",
    "is_causal_depthwise_conv1d",
    "CONV_STRUCTURED_MAX_SPAN",
]


def _bind(module: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Arguments of ``module.forward`` by name, defaults included."""
    sig = inspect.signature(module.forward)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _causal_keep(L: int, device: Any) -> torch.Tensor:
    return torch.ones(L, L, dtype=torch.bool, device=device).tril_()


def _masked_softmax(scores: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """Row softmax of ``scores`` (..., L, S) over the entries where ``keep`` is True.

    Rows with no kept entry become zero (the layer itself would produce NaN or garbage there);
    the flag says whether that happened.
    """
    scores = scores.masked_fill(~keep, float("-inf"))
    empty = ~keep.any(dim=-1, keepdim=True)
    if bool(empty.any()):
        scores = scores.masked_fill(empty, 0.0)
        p = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
        return p, True
    return torch.softmax(scores, dim=-1), False


def _additive_to_keep(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a float additive mask into (keep, bias): entries at or below half the dtype's most
    negative value (or -inf) are masked, the rest are kept with their additive bias."""
    lo = torch.finfo(mask.dtype).min / 2 if mask.dtype.is_floating_point else -1e30
    keep = mask > lo
    bias = torch.where(keep, mask.to(torch.float64), torch.zeros((), dtype=torch.float64, device=mask.device))
    return keep, bias


class _Captures(Extractor):
    """Shared bookkeeping: a sample count, range checks, and hooks that never break the forward.

    A hook wrapped by :meth:`_guard` that raises records the error instead of propagating it into
    the model's forward pass; :meth:`operators` then raises it, naming the layer.
    """

    _capture_error: Optional[str] = None

    def _guard(self, fn: Any) -> Any:
        def hook(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported by operators()
                self._capture_error = f"{type(e).__name__}: {e}"

        return hook

    @abc.abstractmethod
    def _count(self) -> int:
        """Number of captured batch elements."""

    def n_samples(self) -> int:
        n = self._count()
        return max(n, 1) if self._capture_error is not None else n

    def _check_sample(self, sample: int) -> None:
        if self._capture_error is not None:
            raise InvalidArgumentError(f"{self.name}: capturing this layer's inputs failed ({self._capture_error})")
        n = self._count()
        if n == 0:
            raise InvalidArgumentError(
                f"{self.name}: nothing captured for this layer (it was not called in the forward pass, "
                "or attach() was not called before it)"
            )
        if not isinstance(sample, (int, np.integer)) or not 0 <= int(sample) < n:
            raise OutOfRangeError(f"{self.name}: sample {sample!r} out of range for {n} captured sequence(s)")


# ----------------------------------------------------------------------------------------------
# nn.MultiheadAttention
# ----------------------------------------------------------------------------------------------


def is_supported_mha(m: Any) -> bool:
    """Exact ``nn.MultiheadAttention`` without extra key/value positions (``add_bias_kv``,
    ``add_zero_attn`` add a key the sequence does not have)."""
    return type(m) is nn.MultiheadAttention and m.bias_k is None and m.bias_v is None and not m.add_zero_attn


class MultiheadAttentionExtractor(_Captures):
    """Softmax operators of a causal :class:`torch.nn.MultiheadAttention`, one per head.

    Operator ``h`` maps head ``h``'s value sequence ``v_h = value @ W_v[h]^T + b_v[h]`` (``(L,
    head_dim)``) to that head's output before ``out_proj``: ``T_h = softmax(q_h k_h^T / sqrt(head_dim)
    + mask)``. Dropout on the attention weights (training mode) is not applied.

    Examples
    --------
    >>> import torch
    >>> from ess.operators import find_extractor
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> ex = find_extractor(mha, "attn")
    >>> x = torch.randn(1, 5, 8)
    >>> causal = torch.ones(5, 5, dtype=torch.bool).triu(1)          # True = masked
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = mha(x, x, x, attn_mask=causal)
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.kind, ops.operators.shape, ops.labels
    ('MultiheadAttentionExtractor', 'softmax_attention', (2, 5, 5), ['head 0', 'head 1'])
    >>> ops.operators.sum(axis=-1).round(12)                          # each row is a softmax over the past
    array([[1., 1., 1., 1., 1.],
           [1., 1., 1., 1., 1.]])
    """

    kind = "softmax_attention"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._cap: Optional[Dict[str, Any]] = None

    def attach(self) -> List[Any]:
        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            q, k = b["query"], b["key"]
            if q.dim() == 2:  # unbatched (L, E)
                q, k = q.unsqueeze(0), k.unsqueeze(0)
                kpm = b.get("key_padding_mask")
                kpm = None if kpm is None else kpm.reshape(1, -1)
                am = b.get("attn_mask")
            else:
                if not mod.batch_first:
                    q, k = q.transpose(0, 1), k.transpose(0, 1)
                kpm = b.get("key_padding_mask")
                am = b.get("attn_mask")
            self._cap = {
                "q": q.detach(),
                "k": k.detach(),
                "attn_mask": _detach(am),
                "key_padding_mask": _detach(kpm),
                "is_causal": bool(b.get("is_causal", False)),
                "training": bool(mod.training),
            }

        return [self.module.register_forward_pre_hook(self._guard(pre), with_kwargs=True)]

    def _count(self) -> int:
        return 0 if self._cap is None else int(self._cap["q"].shape[0])

    def clear(self) -> None:
        self._capture_error = None
        self._cap = None

    def _lengths(self) -> Tuple[int, int]:
        assert self._cap is not None
        return int(self._cap["q"].shape[1]), int(self._cap["k"].shape[1])

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._cap is None:
            return 0
        L, S = self._lengths()
        # the result (numpy) plus the float64 scores and probabilities on the module's device
        return 3 * 8 * self.module.num_heads * L * S

    def _projections(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        assert self._cap is not None
        E, H = m.embed_dim, m.num_heads
        d = E // H
        f64 = torch.float64
        if m._qkv_same_embed_dim:
            wq, wk = m.in_proj_weight[:E], m.in_proj_weight[E : 2 * E]
        else:
            wq, wk = m.q_proj_weight, m.k_proj_weight
        bq = bk = None
        if m.in_proj_bias is not None:
            bq, bk = m.in_proj_bias[:E], m.in_proj_bias[E : 2 * E]
        x_q = self._cap["q"][sample].to(f64)
        x_k = self._cap["k"][sample].to(f64)
        q = x_q @ wq.detach().to(f64).T
        k = x_k @ wk.detach().to(f64).T
        if bq is not None and bk is not None:
            q = q + bq.detach().to(f64)
            k = k + bk.detach().to(f64)
        return q.reshape(-1, H, d).transpose(0, 1), k.reshape(-1, H, d).transpose(0, 1)  # (H, L, d)

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check_sample(sample)
        assert self._cap is not None
        m = self.module
        H = m.num_heads
        d = m.embed_dim // H
        L, S = self._lengths()
        if L != S:
            raise ShapeError(
                f"{self.name}: query length {L} != key length {S}; only self-attention over one sequence "
                "gives a causal sequence operator"
            )
        with torch.no_grad():
            q, k = self._projections(sample)
            dev = q.device
            scores = torch.einsum("hld,hsd->hls", q, k) / np.sqrt(d)
            keep = torch.ones(1, L, S, dtype=torch.bool, device=dev)
            am = self._cap["attn_mask"]
            if am is not None:
                am = am.to(dev)
                if am.dim() == 3:  # (B*H, L, S)
                    am = am[sample * H : (sample + 1) * H]
                else:
                    am = am.reshape(1, L, S)
                if am.dtype == torch.bool:
                    keep = keep & ~am  # True = not allowed
                else:
                    kp, bias = _additive_to_keep(am)
                    keep = keep & kp
                    scores = scores + bias
            kpm = self._cap["key_padding_mask"]
            if kpm is not None:
                row = kpm[sample].to(dev)
                if row.dtype == torch.bool:
                    keep = keep & ~row.reshape(1, 1, S)
                else:
                    kp, bias = _additive_to_keep(row.reshape(1, 1, S))
                    keep = keep & kp
                    scores = scores + bias
            if self._cap["is_causal"]:
                keep = keep & _causal_keep(L, dev)
            if bool(torch.triu(keep.expand(H, L, S), diagonal=1).any()):
                raise InvalidArgumentError(
                    f"{self.name}: this attention is not causal (its mask lets a position attend to a later "
                    "one); ESS needs a causal operator. Pass a causal attn_mask (e.g. "
                    "nn.Transformer.generate_square_subsequent_mask(L)) with is_causal=True"
                )
            p, empty_rows = _masked_softmax(scores, keep.expand(H, L, S))
            ops = operator_array(p)
        notes = []
        if empty_rows:
            notes.append("fully masked query rows set to zero")
        if self._cap["training"] and m.dropout > 0:
            notes.append("attention dropout (training mode) not applied")
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=ops,
            labels=[f"head {h}" for h in range(H)],
            tss=[float(L)] * H,
            shared=[d] * H,
            note="; ".join(notes),
        )


# ----------------------------------------------------------------------------------------------
# causal depthwise nn.Conv1d
# ----------------------------------------------------------------------------------------------


def is_causal_depthwise_conv1d(m: Any) -> bool:
    """Exact ``nn.Conv1d``, depthwise (``groups == in_channels == out_channels``), stride 1, zero
    padding of ``dilation * (kernel_size - 1)`` on each side: its first ``L`` outputs are the causal
    convolution of the input (the caller crops the rest).

    Examples
    --------
    >>> import torch
    >>> from ess.operators.torch_nn import is_causal_depthwise_conv1d
    >>> is_causal_depthwise_conv1d(torch.nn.Conv1d(4, 4, 3, groups=4, padding=2))
    True
    >>> is_causal_depthwise_conv1d(torch.nn.Conv1d(4, 4, 3, groups=4, padding=1))   # centred: sees the future
    False
    """
    if type(m) is not nn.Conv1d:
        return False
    if not (m.in_channels > 0 and m.groups == m.in_channels == m.out_channels):
        return False
    if tuple(m.stride) != (1,) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return False
    return tuple(m.padding) == (m.dilation[0] * (m.kernel_size[0] - 1),)


#: Largest span ``dilation * (kernel_size - 1)`` handed to the structured kernel (its exact path costs
#: ``O(L span^3)``); a longer one (a strongly dilated convolution) takes the dense route.
CONV_STRUCTURED_MAX_SPAN = 64


class CausalConv1dExtractor(_StructuredMixin, _Captures):
    """Each channel of a causal depthwise :class:`torch.nn.Conv1d`: a banded Toeplitz operator.

    ``T_c[t, s] = w[c, 0, k-1-(t-s)/dil]`` when ``t-s`` is a multiple of ``dil`` below ``k*dil``,
    else 0: the map from channel ``c`` of the input to the first ``L`` outputs of the channel. The bias is
    an additive offset, not part of the operator (``y - bias = T u``).

    The kernels are handed over as :class:`~ess.operators.base.ConvFactors` (:meth:`factors`), which
    ``ess.analyze`` sends to the structured kernel (:func:`ess.structured.conv_ess`); :meth:`operators`
    materialises them (``materialize=True``, or a span ``dil * (k - 1)`` above
    :data:`CONV_STRUCTURED_MAX_SPAN`). Either way the run-time check convolves the captured input with the
    kernels and refuses the layer unless that reproduces the captured output (its first ``L`` positions,
    less the bias) to the tolerance of the layer's dtype.

    Examples
    --------
    >>> import torch
    >>> from ess.operators import find_extractor
    >>> conv = torch.nn.Conv1d(3, 3, kernel_size=4, groups=3, padding=3)   # depthwise, padded to be causal
    >>> ex = find_extractor(conv, "conv")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = conv(torch.randn(1, 3, 6))[..., :6]                     # the caller crops the padding
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ex.structured, ops.factors.shape, ops.tss, ops.check_error < 1e-6
    ('CausalConv1dExtractor', True, (3, 6, 4), [3.0, 3.0, 3.0], True)
    >>> ex.operators(0).operators.shape                                # the dense form
    (3, 6, 6)
    """

    kind = "conv"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._span = int(module.dilation[0]) * (int(module.kernel_size[0]) - 1)
        self.structured = self._span <= CONV_STRUCTURED_MAX_SPAN
        self._x: Optional[torch.Tensor] = None  # (batch, channels, length)
        self._y: Optional[torch.Tensor] = None  # (batch, channels, length + padding)

    def attach(self) -> List[Any]:
        def hook(mod: Any, args: Tuple[Any, ...], out: Any) -> None:
            x = args[0]
            if x.dim() == 2:  # unbatched (C, L)
                x, out = x[None], out[None]
            self._x, self._y = x.detach(), out.detach()

        return [self.module.register_forward_hook(self._guard(hook))]

    def _count(self) -> int:
        return 0 if self._x is None else int(self._x.shape[0])

    def clear(self) -> None:
        self._capture_error = None
        self._x = self._y = None

    def _length(self) -> int:
        return 0 if self._x is None else int(self._x.shape[-1])

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        C, L = self.module.out_channels, self._length()
        return 8 * C * (self._span + 1) + 8 * 3 * C * L  # kernels + input, output and check in float64

    def estimate_bytes(self, sample: int = 0) -> int:
        C, L = self.module.out_channels, self._length()
        return 8 * C * L * L + self.estimate_factor_bytes(sample)

    def factors(self, sample: int = 0) -> OperatorSet:
        from .base import ConvFactors
        from .hf import verify

        self._check_sample(sample)
        assert self._x is not None and self._y is not None
        m = self.module
        f64 = torch.float64
        L = self._length()
        C = m.out_channels
        k = m.kernel_size[0]
        dil = m.dilation[0]
        w = m.weight.detach().to(f64).cpu()[:, 0, :]  # (C, k)
        h = torch.zeros(C, self._span + 1, dtype=f64)
        for j in range(k):
            h[:, (k - 1 - j) * dil] = w[:, j]  # tap j acts at lag (k - 1 - j) dil
        fac = ConvFactors(h.numpy(), L)
        rec = fac.apply(self._x[sample].to(f64).cpu()[:, :, None])[:, :, 0]  # (C, L)
        ref = self._y[sample, :, :L].to(f64).cpu()
        if m.bias is not None:
            ref = ref - m.bias.detach().to(f64).cpu()[:, None]
        err = verify(self.name, rec, ref, self._y.dtype, "convolution output (first L positions, less the bias)")
        bias = " (the bias is an additive offset, not part of the operator)" if m.bias is not None else ""
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"channel {c}" for c in range(C)],
            tss=[float(self._span)] * C,
            shared=None,
            factors=fac,
            check_error=err,
            note=f"causal depthwise convolution, {k} taps, dilation {dil}{bias}; checked (rel. err {err:.1e})",
        )


# ----------------------------------------------------------------------------------------------
# nn.RNN / nn.GRU / nn.LSTM
# ----------------------------------------------------------------------------------------------


def is_supported_rnn(m: Any) -> bool:
    """Exact ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM``, unidirectional (a reverse direction is anti-causal)."""
    return type(m) in (nn.RNN, nn.GRU, nn.LSTM) and not m.bidirectional


class RecurrentJacobianExtractor(_Captures):
    """Local linearisation of a unidirectional :class:`torch.nn.RNN`, ``GRU`` or ``LSTM``.

    Operator ``i`` (output unit ``i`` of the last layer) is ``T_i[t, s] = sum_j d y_t[i] / d u_s[j]``
    at the captured input and initial state. Computed exactly by forward-mode AD, one tangent per
    source position ``s`` (``torch.func.jvp`` under ``vmap``, chunked; ``jacobian_mode="forward"``),
    or by reverse mode, one backward pass per target position (``"reverse"``); ``"auto"`` tries forward
    and falls back to reverse. It runs in float64 (through a float64 copy of a float32/bf16 module,
    at the captured input), with cuDNN disabled and dropout between layers off (the module is put in
    eval mode for the computation and restored).

    Examples
    --------
    >>> import torch
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> gru = torch.nn.GRU(3, 4, batch_first=True)
    >>> ex = find_extractor(gru, "gru")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = gru(torch.randn(1, 5, 3))
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.kind, ops.operators.shape[1:]
    ('RecurrentJacobianExtractor', 'rnn_jacobian', (5, 5))
    """

    kind = "rnn_jacobian"
    jacobian_mode: str = "auto"
    #: elements (batch x length x width) one forward-mode chunk may hold
    chunk_elements: int = 1 << 23

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._x: Optional[torch.Tensor] = None  # (B, L, I)
        self._hx: Any = None  # per layer (layers, B, H) or a pair for LSTM
        self._packed = False
        self._busy = False
        self._work: Any = None  # the module the Jacobian runs through (a float64 copy if needed)

    def attach(self) -> List[Any]:
        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            if self._busy:  # our own Jacobian passes, if the hooks are still attached
                return
            b = _bind(mod, args, kwargs)
            x, hx = b["input"], b.get("hx")
            if isinstance(x, nn.utils.rnn.PackedSequence):
                self._packed = True
                self._x = None
                return
            self._packed = False
            if x.dim() == 2:  # unbatched (L, I); hx (layers, H)
                x = x.unsqueeze(0)
                if hx is not None:
                    hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
            elif not mod.batch_first:
                x = x.transpose(0, 1)
            self._x = x.detach()
            if hx is None:
                self._hx = None
            elif isinstance(hx, tuple):
                self._hx = tuple(h.detach() for h in hx)
            else:
                self._hx = hx.detach()

        return [self.module.register_forward_pre_hook(self._guard(pre), with_kwargs=True)]

    def _count(self) -> int:
        if self._packed:
            return 1  # so that operators() explains the problem
        return 0 if self._x is None else int(self._x.shape[0])

    def clear(self) -> None:
        self._capture_error = None
        self._x = self._hx = None
        self._packed = False

    def _n_out(self) -> int:
        m = self.module
        return int(getattr(m, "proj_size", 0) or m.hidden_size)

    def _state_size(self) -> int:
        m = self.module
        if type(m) is nn.LSTM:
            return m.num_layers * (self._n_out() + m.hidden_size)
        return m.num_layers * m.hidden_size

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._x is None:
            return 0
        L = int(self._x.shape[1])
        return 8 * self._n_out() * L * L + 8 * self.chunk_elements * 4

    def _run(self, u: torch.Tensor, hx: Any) -> torch.Tensor:
        """Output sequence (nb, L, n_out) of the module for a batch ``u`` (nb, L, I)."""
        m = self._work if self._work is not None else self.module
        x = u if m.batch_first else u.transpose(0, 1)
        out = m(x, hx)[0]
        return out if m.batch_first else out.transpose(0, 1)

    def _hx_for(self, sample: int, nb: int, dtype: Any) -> Any:
        if self._hx is None:
            return None
        if isinstance(self._hx, tuple):
            return tuple(h[:, sample : sample + 1].to(dtype).expand(-1, nb, -1).contiguous() for h in self._hx)
        return self._hx[:, sample : sample + 1].to(dtype).expand(-1, nb, -1).contiguous()

    def _forward_mode(self, u: torch.Tensor, sample: int) -> np.ndarray:
        """Jacobian columns by ``torch.func``: ``jvp`` of the module at ``u`` under ``vmap`` over
        tangents, the tangent of source position ``s`` being 1 on every input feature of ``u_s``.
        The primal pass runs once per chunk and only the tangents are batched; a chunk holds at
        most ``chunk_elements`` (tangents x length x width) elements."""
        from torch.func import jvp, vmap

        L, I = u.shape
        n_out = self._n_out()
        width = I + 4 * max(self.module.hidden_size, n_out) * self.module.num_layers
        chunk = max(1, min(L, self.chunk_elements // max(1, L * width)))
        hx = self._hx_for(sample, 1, u.dtype)

        def column(tangent: torch.Tensor) -> torch.Tensor:
            # (L, n_out): sum_j d y_t[h] / d u_s[j] for the source position s of `tangent`
            return jvp(lambda x: self._run(x.unsqueeze(0), hx)[0], (u,), (tangent,))[1]

        columns = vmap(column)
        ops = np.zeros((n_out, L, L), dtype=np.float64)
        for s0 in range(0, L, chunk):
            s1 = min(L, s0 + chunk)
            nb = s1 - s0
            tangent = torch.zeros((nb, L, I), dtype=u.dtype, device=u.device)
            idx = torch.arange(nb, device=u.device)
            tangent[idx, s0 + idx, :] = 1.0
            tan = columns(tangent)  # tan[i, t, h] = sum_j d y_t[h] / d u_{s0+i}[j]
            ops[:, :, s0:s1] = tan.detach().to(torch.float64).permute(2, 1, 0).cpu().numpy()
        return ops

    def _reverse_mode(self, u: torch.Tensor, sample: int) -> np.ndarray:
        L, I = u.shape
        n_out = self._n_out()
        ub = u.unsqueeze(0).expand(n_out, L, I).clone().requires_grad_(True)
        with torch.enable_grad():
            y = self._run(ub, self._hx_for(sample, n_out, u.dtype))  # (n_out, L, n_out)
            diag = torch.diagonal(y, dim1=0, dim2=2)  # (L, n_out): y[b, t, b]
            ops = np.zeros((n_out, L, L), dtype=np.float64)
            for t in range(L):
                (g,) = torch.autograd.grad(diag[t].sum(), ub, retain_graph=t < L - 1)
                ops[:, t, :] = g.sum(-1).detach().to(torch.float64).cpu().numpy()
        return ops

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check_sample(sample)
        if self._packed:
            raise InvalidArgumentError(
                f"{self.name}: the layer was called with a PackedSequence; pass a padded tensor to analyse it"
            )
        assert self._x is not None
        m = self.module
        p = next(m.parameters())
        mode = self.jacobian_mode
        if mode not in ("auto", "forward", "reverse"):
            raise InvalidArgumentError(f"jacobian_mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
        # the Jacobian is taken in float64 on a copy of the module (float32 round-off would
        # otherwise show up as spurious singular values above the float64 tolerance), with no
        # hooks: the user's own forward hooks must not run again during the Jacobian passes
        work = copy.deepcopy(m).to(torch.float64)
        for hooks in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            d = getattr(work, hooks, None)
            if d is not None:
                d.clear()
        u = self._x[sample].to(device=p.device, dtype=torch.float64)
        was_training = m.training
        try:
            self._busy = True
            self._work = work
            work.eval()
            with torch.backends.cudnn.flags(enabled=False):
                ops = None
                if mode in ("auto", "forward"):
                    try:
                        ops = self._forward_mode(u, sample)
                    except (RuntimeError, NotImplementedError):
                        if mode == "forward":
                            raise
                if ops is None:
                    ops = self._reverse_mode(u, sample)
        finally:
            self._busy = False
            self._work = None
            m.train(was_training)
        n_out = self._n_out()
        note = "local linearisation: Jacobian d y_t[i] / d u_s summed over input channels, at the given input" + (
            " and initial state" if self._hx is not None else " (zero initial state)"
        )
        if was_training and m.dropout > 0:
            note += "; inter-layer dropout off"
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=ops,
            labels=[f"unit {i}" for i in range(n_out)],
            tss=[float(self._state_size())] * n_out,
            shared=None,
            note=note,
        )


register(is_supported_mha, MultiheadAttentionExtractor)
register(is_causal_depthwise_conv1d, CausalConv1dExtractor)
register(is_supported_rnn, RecurrentJacobianExtractor)
