"""Extractors for Hugging Face ``transformers`` (5.x) layers.

* Attention layers (any family): :mod:`ess.operators.hf_attention`, which also uses the cache
  guards below.
* ``MambaMixer`` (Mamba-1, selective SSM): one operator per inner channel ``d``,
  ``T_d[t, s] = sum_n C_t[n] exp(A[d, n] (c_t - c_s)) Delta_s[d] B_s[n] + D[d] [t == s]`` with
  ``c = cumsum(Delta[:, d])``. The input ``u`` of ``x_proj`` (the convolved, activated sequence)
  and its output (``dt`` rank part, ``B``, ``C``) are captured; ``Delta = softplus(dt_proj(dt))`` and
  ``A = -exp(A_log)`` are rebuilt from the weights. The operator maps ``u[:, d]`` to the scan output
  before the gate ``act(z)`` (a diagonal output scaling, left out as in the selective-SSM
  definition). ``x_proj`` is called as a module by the slow (torch) path and by the CUDA-kernel
  path alike; the fused training kernel (``mamba_inner_fn``, training mode with the kernels
  installed) calls no submodule and is refused with a clear error.
* ``Mamba2Mixer`` (Mamba-2, SSD): one operator per head, scalar decay,
  ``T_h[t, s] = (C_t . B_s) exp(A_h (c_t - c_s)) Delta_s[h] + D_h [t == s]`` with the head's group of
  ``B``, ``C``; shared by the head's ``head_dim`` channels. The output of ``in_proj`` is captured and
  the causal convolution of its ``xBC`` part is recomputed from ``conv1d``'s weights (the torch and
  CUDA paths both call ``in_proj`` as a module, neither calls ``conv1d`` as one). The operator
  maps the head's channels of ``x`` to the scan output before the gated RMS norm.

Operators assume the layer starts from an empty cache (a prefill); continuing from cached
keys or states is refused. The check does not depend on the keyword the cache arrives under
(``cache``, ``past_key_values``, ``cache_params`` across transformers versions): every argument
that behaves like a cache is asked what it holds for this layer (cached key length; previous
recurrent state, non-zero conv/SSM states), a cache that cannot be read is refused, and after an
attention call a cache holding more keys than there were queries is refused too. The Mamba
mixers are matched by exact class (``type(m).__module__`` and name), so importing this module does
not import ``transformers`` and a subclass with another forward is not matched.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .base import OperatorSet, register
from .torch_nn import _bind, _Captures, _causal_keep

__all__ = [
    "MambaMixerExtractor",
    "Mamba2MixerExtractor",
]


def _is_class(m: Any, module: str, name: str) -> bool:
    t = type(m)
    return t.__name__ == name and t.__module__ == module


def _is_mamba_mixer(m: Any) -> bool:
    return _is_class(m, "transformers.models.mamba.modeling_mamba", "MambaMixer")


def _is_mamba2_mixer(m: Any) -> bool:
    return _is_class(m, "transformers.models.mamba2.modeling_mamba2", "Mamba2Mixer")


_CACHE_METHODS = ("get_seq_length", "has_previous_state", "get_recurrent_state", "get_conv_state")


def _cache_like(v: Any) -> bool:
    """A key/value or recurrent-state cache, recognised by what it can do (any class, any keyword)."""
    if v is None or isinstance(v, (torch.Tensor, torch.nn.Module, str, bytes, int, float, bool)):
        return False
    return any(callable(getattr(v, n, None)) for n in _CACHE_METHODS) or (
        hasattr(v, "conv_states") and hasattr(v, "ssm_states")
    )


def _caches_in(b: Dict[str, Any]) -> List[Any]:
    """Every cache-like object among a call's bound arguments, including those in ``**kwargs``,
    whatever keyword it came under (``cache``, ``past_key_values``, ``cache_params``, ...)."""
    vals: List[Any] = []
    for v in b.values():
        vals.extend(v.values() if isinstance(v, dict) else (v,))
    return [v for v in vals if _cache_like(v)]


def _nonzero(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() > 0 and bool(x.detach().ne(0).any())
    if isinstance(x, (list, tuple)):
        return any(_nonzero(y) for y in x)
    return False


def _cache_state(cache: Any, layer_idx: Any, recurrent: bool) -> Optional[bool]:
    """Whether ``cache`` already holds something for layer ``layer_idx`` before the layer runs:
    ``True`` (a continuation), ``False`` (empty: a prefill), ``None`` (could not be read).

    Attention layers are asked for their cached key length; recurrent layers whether they have a
    previous state and whether their stored states are non-zero. Any probe that answers decides;
    a single "in use" wins over "empty".
    """
    answers: List[bool] = []
    idx = layer_idx if isinstance(layer_idx, int) else None
    if idx is not None:
        try:
            answers.append(int(cache.get_seq_length(idx)) > 0)
        except Exception:  # noqa: BLE001 - not an attention layer of this cache / no such method
            pass
        if recurrent:
            for probe in ("has_previous_state",):
                fn = getattr(cache, probe, None)
                if callable(fn):
                    try:
                        answers.append(bool(fn(idx)))
                    except Exception:  # noqa: BLE001
                        pass
            for getter in ("get_recurrent_state", "get_conv_state"):
                fn = getattr(cache, getter, None)
                if callable(fn):
                    try:
                        answers.append(_nonzero(fn(idx)))
                    except Exception:  # noqa: BLE001
                        try:
                            answers.append(_nonzero(fn(idx, state_idx=0)))
                        except Exception:  # noqa: BLE001
                            pass
            for attr in ("ssm_states", "conv_states"):  # older MambaCache layout
                st = getattr(cache, attr, None)
                if st is not None:
                    try:
                        answers.append(_nonzero(st[idx]))
                    except Exception:  # noqa: BLE001
                        pass
    if not answers:
        return None
    return any(answers)


def _continuation_problem(mod: Any, b: Dict[str, Any], recurrent: bool) -> Optional[str]:
    """Why this call of ``mod`` is not a prefill from an empty cache, or ``None`` when it is."""
    layer_idx = getattr(mod, "layer_idx", None)
    for cache in _caches_in(b):
        state = _cache_state(cache, layer_idx, recurrent)
        if state is None:
            return (
                f"it was given a cache ({type(cache).__name__}) whose contents for this layer could not be read, "
                "so it may continue from cached keys or states; analyse a full prefill with use_cache=False"
            )
        if state:
            what = "a cached state" if recurrent else "cached keys"
            return f"it continued from {what} ({type(cache).__name__} not empty); analyse a full prefill"
    return None


# ----------------------------------------------------------------------------------------------
# Mamba-1 and Mamba-2
# ----------------------------------------------------------------------------------------------


class _MixerBase(_Captures):
    kind = "selective_ssm"
    #: channels materialised per step (on an accelerator the step's result, chunk * L * L doubles, is
    #: built on the device and copied out)
    chunk_channels: int = 256

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._calls: Optional[Tuple[int, int]] = None  # (batch, length) seen by the mixer
        self._problem: Optional[str] = None
        self._mask: Optional[torch.Tensor] = None

    def _pre(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        b = _bind(mod, args, kwargs)
        hs = b["hidden_states"]
        self._calls = (int(hs.shape[0]), int(hs.shape[1]))
        self._problem = None
        self._problem = _continuation_problem(mod, b, recurrent=True)
        m = b.get("attention_mask")
        self._mask = m.detach() if isinstance(m, torch.Tensor) else None
        self._reset_captures()

    def _reset_captures(self) -> None:
        raise NotImplementedError

    def _captured(self) -> bool:
        raise NotImplementedError

    def _count(self) -> int:
        return 0 if self._calls is None else self._calls[0]

    def _check(self, sample: int) -> None:
        self._check_sample(sample)
        if self._problem is not None:
            raise InvalidArgumentError(f"{self.name}: cannot analyse this layer: {self._problem}")
        if not self._captured():
            raise InvalidArgumentError(
                f"{self.name}: the layer ran without calling its projection modules (the fused training "
                "kernel of mamba_ssm); put the model in eval mode (model.eval()) to analyse it"
            )

    def clear(self) -> None:
        self._capture_error = None
        self._calls = None
        self._problem = None
        self._mask = None
        self._reset_captures()


def _scan_operators(
    Cm: torch.Tensor, Bm: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, D: torch.Tensor, out: np.ndarray
) -> None:
    """Fill ``out[c, t, s] = sum_n C[t,n] exp(A[c,n] (cum[t,c]-cum[s,c])) dt[s,c] B[s,n]`` (``s <= t``) plus
    ``D[c]`` on the diagonal, ``cum = cumsum(dt)``: the selective scan run on all impulses at once.

    ``Cm``, ``Bm``: (L, N); ``dt``: (L, c); ``A``: (c, N); ``D``: (c,), float64 on one device. The
    state of every source position is carried forward (``M[:, :, s]``, decayed by
    ``exp(A dt_t)`` at each step, so never above its start: no overflow), and row ``t`` is ``C_t``
    read out of it: ``L^2 N`` multiply-adds per channel and no exponential of a difference.
    """
    L, N = Cm.shape
    c = dt.shape[1]
    on_cpu = dt.device.type == "cpu"
    res = torch.from_numpy(out) if on_cpu else torch.zeros(c, L, L, dtype=torch.float64, device=dt.device)
    res.zero_()
    M = torch.zeros(c, N, L, dtype=torch.float64, device=dt.device)
    a = torch.exp(A[None] * dt[:, :, None])  # (L, c, N) one-step decays
    for t in range(L):
        Mt = M[:, :, : t + 1]
        Mt[:, :, :t] *= a[t][:, :, None]
        Mt[:, :, t] = Bm[t][None, :] * dt[t][:, None]
        res[:, t, : t + 1] = torch.bmm(Cm[t].expand(c, 1, N), Mt)[:, 0]
    res.diagonal(dim1=1, dim2=2).add_(D[:, None])
    if not on_cpu:
        out[...] = res.cpu().numpy()


class MambaMixerExtractor(_MixerBase):
    """Mamba-1 (``transformers.models.mamba.modeling_mamba.MambaMixer``): one operator per channel."""

    def _reset_captures(self) -> None:
        self._u: Optional[torch.Tensor] = None  # (B, L, D_inner)
        self._xo: Optional[torch.Tensor] = None  # (B, L, R + 2N)

    def _captured(self) -> bool:
        return self._u is not None

    def attach(self) -> List[Any]:
        self._reset_captures()

        def on_x_proj(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._u = args[0].detach()
            self._xo = out.detach()

        return [
            self.module.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            self.module.x_proj.register_forward_hook(self._guard(on_x_proj)),
        ]

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._calls is None:
            return 0
        L = self._calls[1]
        Dn = int(self.module.intermediate_size)
        c = min(Dn, self.chunk_channels)
        N = int(self.module.ssm_state_size)
        return 8 * Dn * L * L + 8 * c * L * (L + 2 * N)

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        assert self._u is not None and self._xo is not None
        m = self.module
        f64 = torch.float64
        R, N, Dn = int(m.time_step_rank), int(m.ssm_state_size), int(m.intermediate_size)
        with torch.no_grad():
            xo = self._xo[sample].to(f64)
            L = xo.shape[0]
            ts, Bm, Cm = torch.split(xo, [R, N, N], dim=-1)
            w = m.dt_proj.weight.detach().to(f64)
            dt = ts @ w.T
            if m.dt_proj.bias is not None:
                dt = dt + m.dt_proj.bias.detach().to(f64)
            dt = F.softplus(dt)  # (L, Dn)
            A = -torch.exp(m.A_log.detach().to(f64))  # (Dn, N)
            D = m.D.detach().to(f64)
            ops = np.empty((Dn, L, L), dtype=np.float64)
            for c0 in range(0, Dn, self.chunk_channels):
                c1 = min(Dn, c0 + self.chunk_channels)
                _scan_operators(Cm, Bm, dt[:, c0:c1], A[c0:c1], D[c0:c1], ops[c0:c1])
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=ops,
            labels=[f"channel {d}" for d in range(Dn)],
            tss=[float(N)] * Dn,
            shared=None,
            note="Mamba selective SSM; operator on the x_proj input, output before the act(z) gate",
        )


class Mamba2MixerExtractor(_MixerBase):
    """Mamba-2 (``transformers.models.mamba2.modeling_mamba2.Mamba2Mixer``): one operator per head."""

    def _reset_captures(self) -> None:
        self._proj: Optional[torch.Tensor] = None  # (B, L, P) in_proj output

    def _captured(self) -> bool:
        return self._proj is not None

    def attach(self) -> List[Any]:
        self._reset_captures()

        def on_in_proj(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._proj = out.detach()

        return [
            self.module.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            self.module.in_proj.register_forward_hook(self._guard(on_in_proj)),
        ]

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._calls is None:
            return 0
        L = self._calls[1]
        H = int(self.module.num_heads)
        return 4 * 8 * H * L * L

    def inputs(self, sample: int = 0) -> torch.Tensor:
        """The post-convolution ``x`` (float64, ``(L, num_heads, head_dim)``) the operators act on."""
        return self._xbc(sample)[0]

    def _xbc(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(sample)
        assert self._proj is not None
        m = self.module
        f64 = torch.float64
        H, P, G, N = int(m.num_heads), int(m.head_dim), int(m.n_groups), int(m.ssm_state_size)
        inter, conv_dim = int(m.intermediate_size), int(m.conv_dim)
        proj = self._proj[sample].to(f64)  # (L, P_total)
        L = proj.shape[0]
        xbc = proj[:, -(conv_dim + H) : -H]
        dt_raw = proj[:, -H:]
        conv = m.conv1d
        k = conv.weight.shape[-1]
        y = F.conv1d(
            xbc.T.unsqueeze(0),
            conv.weight.detach().to(f64),
            None if conv.bias is None else conv.bias.detach().to(f64),
            padding=k - 1,
            groups=conv_dim,
        )[0, :, :L].T
        y = m.act(y)
        if self._mask is not None:
            y = y * self._mask[sample if self._mask.shape[0] > 1 else 0].to(y.device, f64)[:, None]
        x, Bm, Cm = torch.split(y, [inter, G * N, G * N], dim=-1)
        dt = F.softplus(dt_raw + m.dt_bias.detach().to(f64))
        lo, hi = m.time_step_limit
        dt = torch.clamp(dt, min=float(lo), max=float(hi))
        return x.reshape(L, H, P), Bm.reshape(L, G, N), Cm.reshape(L, G, N), dt

    def operators(self, sample: int = 0) -> OperatorSet:
        m = self.module
        H, P, G, N = int(m.num_heads), int(m.head_dim), int(m.n_groups), int(m.ssm_state_size)
        with torch.no_grad():
            _, Bm, Cm, dt = self._xbc(sample)
            L = dt.shape[0]
            rep = H // G
            Bh = Bm.repeat_interleave(rep, dim=1).permute(0, 2, 1)  # (L, N, H)
            Ch = Cm.repeat_interleave(rep, dim=1).permute(0, 2, 1)
            A = -torch.exp(m.A_log.detach().to(torch.float64))  # (H,)
            D = m.D.detach().to(torch.float64)
            ops = np.empty((H, L, L), dtype=np.float64)
            # scalar decay: contract over N first, then one decay per head
            cb = torch.einsum("tnh,snh->hts", Ch, Bh)
            cum = torch.cumsum(dt, dim=0)
            tri = _causal_keep(L, dt.device)
            diff = (cum.T[:, :, None] - cum.T[:, None, :]).masked_fill_(~tri, 0.0)
            T = cb * torch.exp(A[:, None, None] * diff) * dt.T[:, None, :]
            T.masked_fill_(~tri, 0.0)
            T += torch.diag_embed(D[:, None].expand(H, L))
            ops[...] = T.cpu().numpy()
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=ops,
            labels=[f"head {h}" for h in range(H)],
            tss=[float(N)] * H,
            shared=[P] * H,
            note="Mamba-2 (SSD, scalar decay per head); operator on the convolved x, output before the gated norm",
        )


register(_is_mamba_mixer, MambaMixerExtractor)
register(_is_mamba2_mixer, Mamba2MixerExtractor)
