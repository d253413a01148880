"""Extractors for Hugging Face ``transformers`` (5.x) layers.

* ``GPT2Attention`` (self-attention) and ``LlamaAttention``: one softmax operator per query head,
  ``T_h = softmax(q_h k_h^T * scaling + mask)`` (RoPE applied to ``q``, ``k`` for Llama; with
  grouped-query attention head ``h`` reads key head ``h // n_rep``). Whatever the configured
  attention implementation (eager, sdpa, flash), the queries and keys are captured from the
  projection modules the forward calls (``c_attn``; ``q_proj``/``k_proj`` plus the
  ``position_embeddings`` the decoder layer passes), never from ``output_attentions`` (sdpa
  returns no weights). The mask is the one the model handed to this layer (``None`` = causal
  only; a boolean mask keeps ``True``; a float mask is additive, entries at the dtype's most
  negative value are masked; a 2-D padding mask keeps ``1``), always intersected with the
  causal mask. Operator ``h`` maps head ``h``'s value sequence to its output before the output
  projection; ``shared`` is ``head_dim``.
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
attention call a cache holding more keys than there were queries is refused too. Matching is by exact class (``type(m).__module__`` and name), so
importing this module does not import ``transformers`` and a subclass with another forward is
not matched.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError, ShapeError
from .base import OperatorSet, register
from .torch_nn import _additive_to_keep, _bind, _Captures, _causal_keep, _masked_softmax

__all__ = [
    "GPT2AttentionExtractor",
    "LlamaAttentionExtractor",
    "MambaMixerExtractor",
    "Mamba2MixerExtractor",
]


def _is_class(m: Any, module: str, name: str) -> bool:
    t = type(m)
    return t.__name__ == name and t.__module__ == module


def _is_gpt2_self_attention(m: Any) -> bool:
    return _is_class(m, "transformers.models.gpt2.modeling_gpt2", "GPT2Attention") and not m.is_cross_attention


def _is_llama_attention(m: Any) -> bool:
    return _is_class(m, "transformers.models.llama.modeling_llama", "LlamaAttention")


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
# attention
# ----------------------------------------------------------------------------------------------


class _HFAttention(_Captures):
    kind = "softmax_attention"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._q: Optional[torch.Tensor] = None  # (B, L, H*d) as the projection returned it
        self._k: Optional[torch.Tensor] = None  # (B, L, Hkv*d)
        self._mask: Any = None
        self._extra: Dict[str, Any] = {}
        self._problem: Optional[str] = None
        self._seen: Tuple[List[Any], Optional[int]] = ([], None)  # caches and query length of the call in flight

    def _pre(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        b = _bind(mod, args, kwargs)
        self._mask = b.get("attention_mask")
        if isinstance(self._mask, torch.Tensor):
            self._mask = self._mask.detach()
        self._problem = None
        if b.get("encoder_hidden_states") is not None:
            self._problem = "it was called as cross-attention (encoder_hidden_states given)"
        self._problem = self._problem or _continuation_problem(mod, b, recurrent=False)
        hs = b.get("hidden_states")
        self._seen = (_caches_in(b), int(hs.shape[-2]) if isinstance(hs, torch.Tensor) and hs.dim() >= 2 else None)
        self._extra = {"training": bool(mod.training), **self._pre_extra(b)}

    def _post(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        """After the call: a cache now holding more keys for this layer than there were queries
        means the layer attended to keys from an earlier call (whatever the cache said before)."""
        caches, n_queries = self._seen
        self._seen = ([], None)
        layer_idx = getattr(mod, "layer_idx", None)
        if self._problem is not None or n_queries is None or not isinstance(layer_idx, int):
            return
        for cache in caches:
            try:
                n_keys = int(cache.get_seq_length(layer_idx))
            except Exception:  # noqa: BLE001 - not readable: the pre-call check decided
                continue
            if n_keys > n_queries:
                self._problem = (
                    f"it attended to {n_keys} keys for {n_queries} queries (cached keys from an earlier call); "
                    "analyse a full prefill"
                )

    def _pre_extra(self, b: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def _count(self) -> int:
        return 0 if self._q is None else int(self._q.shape[0])

    def clear(self) -> None:
        self._capture_error = None
        self._q = self._k = self._mask = None
        self._extra = {}
        self._problem = None

    def _heads(self) -> int:
        raise NotImplementedError

    def _qk(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """float64 queries (H, L, d) and keys (H, L, d), one key head per query head."""
        raise NotImplementedError

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._q is None:
            return 0
        L = int(self._q.shape[1])
        return 3 * 8 * self._heads() * L * L

    def _keep_and_bias(self, sample: int, H: int, L: int, dev: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        mask = self._mask
        keep = _causal_keep(L, dev).unsqueeze(0)
        if mask is None:
            return keep, None
        if not isinstance(mask, torch.Tensor):
            raise InvalidArgumentError(
                f"{self.name}: unsupported attention mask type {type(mask).__name__} (e.g. a flex-attention "
                "BlockMask); use attn_implementation='eager' or 'sdpa'"
            )
        mask = mask.to(dev)
        if mask.dim() == 2:  # (B, S) padding mask (flash-attention style): 1 = token
            if mask.shape[-1] != L:
                raise ShapeError(f"{self.name}: attention mask covers {mask.shape[-1]} keys for {L} queries")
            row = mask[sample if mask.shape[0] > 1 else 0].bool()
            return keep & row.reshape(1, 1, L), None
        if mask.dim() != 4:
            raise ShapeError(f"{self.name}: unexpected attention mask of shape {tuple(mask.shape)}")
        if mask.shape[-1] != L or mask.shape[-2] != L:
            raise ShapeError(
                f"{self.name}: attention mask of shape {tuple(mask.shape)} does not match {L} queries and keys "
                "(cached keys?); analyse a full prefill"
            )
        m = mask[sample if mask.shape[0] > 1 else 0]  # (1 or H, L, L)
        if m.dtype == torch.bool:
            return keep & m, None
        kp, bias = _additive_to_keep(m)
        return keep & kp, bias

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check_sample(sample)
        if self._problem is not None:
            raise InvalidArgumentError(f"{self.name}: cannot analyse this attention: {self._problem}")
        if self._k is None or self._k.shape[:2] != self._q.shape[:2]:  # type: ignore[union-attr]
            raise InvalidArgumentError(f"{self.name}: queries and keys were not both captured in one forward pass")
        with torch.no_grad():
            q, k = self._qk(sample)
            H, L, d = q.shape
            scores = torch.einsum("hld,hsd->hls", q, k) * float(self.module.scaling)
            keep, bias = self._keep_and_bias(sample, H, L, q.device)
            if bias is not None:
                scores = scores + bias
            p, empty = _masked_softmax(scores, keep.expand(H, L, L))
            ops = np.ascontiguousarray(p.cpu().numpy(), dtype=np.float64)
        notes = []
        if empty:
            notes.append("fully masked query rows (padding) set to zero")
        if self._extra.get("training") and float(getattr(self, "_dropout", 0.0)) > 0:
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


class GPT2AttentionExtractor(_HFAttention):
    """GPT-2 self-attention (``transformers.models.gpt2.modeling_gpt2.GPT2Attention``)."""

    def attach(self) -> List[Any]:
        E = self.module.embed_dim

        def on_c_attn(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._q = out[..., :E].detach()
            self._k = out[..., E : 2 * E].detach()

        self._dropout = float(self.module.attn_dropout.p)
        return [
            self.module.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(self._post), with_kwargs=True),
            self.module.c_attn.register_forward_hook(self._guard(on_c_attn)),
        ]

    def _heads(self) -> int:
        return int(self.module.num_heads)

    def _qk(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        assert self._q is not None and self._k is not None
        H, d = self.module.num_heads, self.module.head_dim
        q = self._q[sample].to(torch.float64)
        k = self._k[sample].to(torch.float64)
        L = q.shape[0]
        return q.reshape(L, H, d).transpose(0, 1), k.reshape(L, H, d).transpose(0, 1)


class LlamaAttentionExtractor(_HFAttention):
    """Llama attention (``transformers.models.llama.modeling_llama.LlamaAttention``): RoPE, GQA."""

    def attach(self) -> List[Any]:
        def on_q(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._q = out.detach()

        def on_k(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._k = out.detach()

        self._dropout = float(getattr(self.module, "attention_dropout", 0.0))
        return [
            self.module.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(self._post), with_kwargs=True),
            self.module.q_proj.register_forward_hook(self._guard(on_q)),
            self.module.k_proj.register_forward_hook(self._guard(on_k)),
        ]

    def _pre_extra(self, b: Dict[str, Any]) -> Dict[str, Any]:
        pe = b.get("position_embeddings")
        if pe is None:
            return {"cos": None, "sin": None}
        cos, sin = pe
        return {"cos": cos.detach(), "sin": sin.detach()}

    def _heads(self) -> int:
        return int(self.module.config.num_attention_heads)

    def _qk(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        assert self._q is not None and self._k is not None
        d = int(self.module.head_dim)
        cos, sin = self._extra.get("cos"), self._extra.get("sin")
        if cos is None or sin is None:
            raise InvalidArgumentError(f"{self.name}: no position_embeddings were passed to the attention layer")
        q = self._q[sample].to(torch.float64)
        k = self._k[sample].to(torch.float64)
        L = q.shape[0]
        q = q.reshape(1, L, -1, d).transpose(1, 2)  # (1, H, L, d)
        k = k.reshape(1, L, -1, d).transpose(1, 2)  # (1, Hkv, L, d)
        i = sample if cos.shape[0] > 1 else 0  # position embeddings broadcast over the batch or not
        cb, sb = cos[i : i + 1], sin[i : i + 1]
        rope = sys.modules[type(self.module).__module__].apply_rotary_pos_emb
        q, k = rope(q, k, cb.to(q.device, torch.float64), sb.to(q.device, torch.float64))
        H, Hkv = q.shape[1], k.shape[1]
        if H % Hkv:
            raise ShapeError(f"{self.name}: {H} query heads are not a multiple of {Hkv} key heads")
        k = k.repeat_interleave(H // Hkv, dim=1)
        return q[0], k[0]


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


register(_is_gpt2_self_attention, GPT2AttentionExtractor)
register(_is_llama_attention, LlamaAttentionExtractor)
register(_is_mamba_mixer, MambaMixerExtractor)
register(_is_mamba2_mixer, Mamba2MixerExtractor)
