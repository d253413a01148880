"""Structured extractors of the recurrent and convolutional mixers of Hugging Face hybrids (issue 12).

Each hands over a state-space realisation (:class:`~ess.operators.base.Factors`), checked at run time
against the captured output of its stage (:func:`ess.operators.hf.verify`), and is matched by what the
module has (its parameters and submodules), not by its class name:

* gated short convolution (LFM2's ``Lfm2ShortConv``: ``y = C * conv(B * x)`` with ``B, C, x`` the three
  chunks of ``in_proj``): one operator per channel, ``T[t, s] = C_t w[t - s] B_s``, realised by a shift
  register of the ``k`` taps (dense shift transition); rank bound ``k - 1``. Operator on ``x``, output the
  input of ``out_proj`` (the conv bias is an additive offset, left out).
* RG-LRU (recurrent_gemma / Griffin's ``RecurrentGemmaRglru``): one operator per channel of state size 1,
  ``h_t = a_t h_{t-1} + sqrt(1 - a_t^2) i_t x_t`` (``a_t = 0`` and multiplier 1 at a reset, position 0), with
  the gates ``a_t``, ``i_t`` at the given input. Operator on the RG-LRU input (the output of the block's
  4-tap convolution, which is analysed as its own ``conv`` layer), output the RG-LRU output.
* gated delta rule (Qwen3-Next's ``Qwen3NextGatedDeltaNet``): per value head, the state ``S`` (``d_k x d_v``)
  follows ``S_t = e^{g_t} (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``; each value
  channel ``j`` is a state-space system with dense per-step transition ``e^{g_t} (I - beta_t k_t k_t^T)``,
  ``b_t = beta_t k_t``, ``c_t = q_t`` (after the L2 norms and the ``1/sqrt(d_k)`` scale), shared by the
  head's ``d_v`` channels. The arguments of the delta-rule kernel are captured by wrapping the kernel
  function of the module's forward during the pass; output: the kernel output (before the gated norm).
"""

from __future__ import annotations

import abc
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .base import Factors, OperatorSet, _StructuredMixin, register
from .hf import _continuation_problem, _LayerCaptures, verify
from .torch_nn import _bind

__all__ = [
    "GatedShortConvExtractor",
    "RGLRUExtractor",
    "GatedDeltaRuleExtractor",
    "RWKVTimeMixExtractor",
    "is_rwkv_time_mix",
    "MLSTMExtractor",
    "is_mlstm_layer",
    "is_gated_short_conv",
    "is_rglru",
    "is_gated_delta_net",
]


class _RecurrentBase(_StructuredMixin, _LayerCaptures):
    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._reset()

    @abc.abstractmethod
    def _reset(self) -> None:
        """Forget the captures of the previous call."""

    def clear(self) -> None:
        self._capture_error = None
        self._calls = None
        self._problem = None
        self._reset()


# ----------------------------------------------------------------------------------------------
# LFM2 gated short convolution
# ----------------------------------------------------------------------------------------------


def is_gated_short_conv(m: Any) -> bool:
    """An LFM2-style gated short convolution: a depthwise ``conv`` (a :class:`torch.nn.Conv1d`), an ``in_proj``
    Linear three times as wide as the convolution's channels (``B``, ``C``, ``x``), an ``out_proj``, and no
    ``A_log`` (which would make it an SSM mixer).

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_recurrent import is_gated_short_conv
    >>> cfg = transformers.Lfm2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                               num_attention_heads=2, num_key_value_heads=1, layer_types=["conv"])
    >>> block = transformers.Lfm2Model(cfg).layers[0].conv
    >>> type(block).__name__, is_gated_short_conv(block), is_gated_short_conv(block.conv)
    ('Lfm2ShortConv', True, False)
    """
    conv = getattr(m, "conv", None)
    inp = getattr(m, "in_proj", None)
    return (
        isinstance(m, torch.nn.Module)
        and isinstance(conv, torch.nn.Conv1d)
        and conv.groups == conv.in_channels == conv.out_channels
        and isinstance(inp, torch.nn.Linear)
        and inp.out_features == 3 * conv.in_channels
        and isinstance(getattr(m, "out_proj", None), torch.nn.Module)
        and not hasattr(m, "A_log")
    )


class GatedShortConvExtractor(_RecurrentBase):
    """LFM2's gated short convolution (see the module docs).

    Examples
    --------
    A one-layer LFM2 whose only block is a 3-tap gated convolution of 16 channels, on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.Lfm2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                               num_attention_heads=2, num_key_value_heads=1, layer_types=["conv"])
    >>> model = transformers.Lfm2ForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.model.layers[0].conv, "model.layers.0.conv")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.tss[:2]
    ('GatedShortConvExtractor', 'gated_conv', 'dense', (16, 6, 3), [2.0, 2.0])
    >>> ops.check_error < 1e-4                   # the factors reproduced the input of out_proj (float32 model)
    True
    """

    kind = "gated_conv"

    def _reset(self) -> None:
        self._proj: Optional[torch.Tensor] = None
        self._y: Optional[torch.Tensor] = None

    def attach(self) -> List[Any]:
        self._reset()

        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            hs = b["hidden_states"]
            self._calls = (int(hs.shape[0]), int(hs.shape[1]))
            self._problem = _continuation_problem(mod, b, recurrent=True)
            self._reset()

        def on_in(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._proj = out.detach()

        def on_out(mod: Any, args: Tuple[Any, ...]) -> None:
            self._y = args[0].detach()

        m = self.module
        return [
            m.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            m.in_proj.register_forward_hook(self._guard(on_in)),
            m.out_proj.register_forward_pre_hook(self._guard(on_out)),
        ]

    def _dims(self) -> Tuple[int, int, int]:
        L = 0 if self._calls is None else self._calls[1]
        return int(self.module.conv.in_channels), L, int(self.module.conv.kernel_size[0])

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        if self._proj is None or self._y is None:
            raise InvalidArgumentError(f"{self.name}: refused: in_proj or out_proj was not called as a module")
        m = self.module
        f64 = torch.float64
        Cn, L, k = self._dims()
        proj = self._proj[sample].to(f64).cpu()
        Bg, Cg, x = proj.chunk(3, dim=-1)  # (L, Cn) each
        w = m.conv.weight.detach().to(f64).cpu()[:, 0, :]  # (Cn, k)
        wl = w.flip(-1)  # tap at lag j
        shift = torch.diag(torch.ones(k - 1, dtype=f64), -1)
        A = np.broadcast_to(shift.numpy(), (Cn, L, k, k))
        Bf = torch.zeros(Cn, L, k, dtype=f64)
        Bf[:, :, 0] = Bg.T
        Cf = Cg.T[:, :, None] * wl[:, None, :]
        fac = Factors("dense", A, Bf.numpy(), Cf.numpy(), None)
        rec = fac.apply(x.T[:, :, None])[:, :, 0].T  # (L, Cn)
        if m.conv.bias is not None:
            rec = rec + Cg * m.conv.bias.detach().to(f64).cpu()
        err = verify(self.name, rec, self._y[sample], self._y.dtype, "gated convolution output (input of out_proj)")
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"channel {c}" for c in range(Cn)],
            tss=[float(k - 1)] * Cn,
            shared=None,
            factors=fac,
            check_error=err,
            note=f"gated short convolution C*conv(B*x), {k} taps; operator on x, output before out_proj; checked (rel. err {err:.1e})",
        )


# ----------------------------------------------------------------------------------------------
# RG-LRU
# ----------------------------------------------------------------------------------------------


def is_rglru(m: Any) -> bool:
    """A Griffin-style RG-LRU: a module holding the tensors ``recurrent_param``, ``input_gate_weight``,
    ``input_gate_bias``, ``recurrent_gate_weight`` and ``recurrent_gate_bias``.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_recurrent import is_rglru
    >>> cfg = transformers.RecurrentGemmaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, lru_width=16, block_types=["recurrent"])
    >>> block = transformers.RecurrentGemmaModel(cfg).layers[0].temporal_block
    >>> type(block.rg_lru).__name__, is_rglru(block.rg_lru), is_rglru(block)   # the block around it is not one
    ('RecurrentGemmaRglru', True, False)
    """
    return isinstance(m, torch.nn.Module) and all(
        isinstance(getattr(m, n, None), torch.Tensor)
        for n in (
            "recurrent_param",
            "input_gate_weight",
            "input_gate_bias",
            "recurrent_gate_weight",
            "recurrent_gate_bias",
        )
    )


class RGLRUExtractor(_RecurrentBase):
    """recurrent_gemma's RG-LRU (see the module docs).

    Examples
    --------
    A one-layer recurrent_gemma with a 16-wide RG-LRU, on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.RecurrentGemmaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, lru_width=16, block_types=["recurrent"])
    >>> model = transformers.RecurrentGemmaForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.model.layers[0].temporal_block.rg_lru, "model.layers.0.temporal_block.rg_lru")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.tss[:2]
    ('RGLRUExtractor', 'rg_lru', 'scalar', (16, 6, 1), [1.0, 1.0])
    >>> ops.check_error < 1e-4                   # the factors reproduced the RG-LRU output (float32 model)
    True
    """

    kind = "rg_lru"

    def _reset(self) -> None:
        self._x: Optional[torch.Tensor] = None
        self._pos: Optional[torch.Tensor] = None
        self._out: Optional[torch.Tensor] = None
        self._h0: Optional[torch.Tensor] = None

    def attach(self) -> List[Any]:
        self._reset()

        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            x = b["activations"]
            self._reset()
            self._calls = (int(x.shape[0]), int(x.shape[1]))
            self._x = x.detach()
            self._pos = b["position_ids"].detach()
            h0 = getattr(mod, "recurrent_states", None)
            self._h0 = h0.detach().clone() if isinstance(h0, torch.Tensor) else None
            self._problem = None

        def post(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
            self._out = (out[0] if isinstance(out, tuple) else out).detach()

        return [
            self.module.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(post), with_kwargs=True),
        ]

    def _dims(self) -> Tuple[int, int, int]:
        L = 0 if self._calls is None else self._calls[1]
        return int(self.module.recurrent_param.shape[0]), L, 1

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        assert self._x is not None and self._pos is not None
        if self._out is None:
            raise InvalidArgumentError(f"{self.name}: the output was not captured")
        m = self.module
        f64 = torch.float64
        x = self._x[sample].to(f64).cpu()  # (L, W)
        L, W = x.shape
        H = int(m.input_gate_weight.shape[0])
        bw = W // H
        pos = self._pos[sample if self._pos.shape[0] > 1 else 0].cpu()
        reset = pos == 0
        if not bool(reset[0]) and self._h0 is not None and bool(self._h0.ne(0).any()):
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this layer: it continued from a cached recurrent state; analyse a full prefill"
            )
        xh = x.reshape(L, H, bw).permute(1, 0, 2)  # (H, L, bw)
        p = {
            n: getattr(m, n).detach().to(f64).cpu()
            for n in (
                "input_gate_weight",
                "input_gate_bias",
                "recurrent_gate_weight",
                "recurrent_gate_bias",
                "recurrent_param",
            )
        }
        ig = torch.sigmoid(torch.baddbmm(p["input_gate_bias"][:, None, :], xh, p["input_gate_weight"]))
        rg = torch.sigmoid(torch.baddbmm(p["recurrent_gate_bias"][:, None, :], xh, p["recurrent_gate_weight"]))
        ig = ig.permute(1, 0, 2).reshape(L, W)
        rg = rg.permute(1, 0, 2).reshape(L, W)
        log_a = -8.0 * rg * F.softplus(p["recurrent_param"])
        a = torch.exp(log_a)
        mult = torch.sqrt(torch.clamp(1.0 - torch.exp(2 * log_a), min=0.0))
        mult = torch.where(reset[:, None], torch.ones_like(mult), mult)
        a = torch.where(reset[:, None], torch.zeros_like(a), a)
        fac = Factors(
            "scalar", a.T.contiguous().numpy(), (ig * mult).T[:, :, None].contiguous().numpy(), np.ones((W, L, 1)), None
        )
        rec = fac.apply(x.T[:, :, None])[:, :, 0].T
        err = verify(self.name, rec, self._out[sample], self._out.dtype, "RG-LRU output")
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"channel {c}" for c in range(W)],
            tss=[1.0] * W,
            shared=None,
            factors=fac,
            check_error=err,
            note=f"RG-LRU (diagonal, state 1 per channel, gates at the given input); operator on the RG-LRU input (after the block's conv); checked (rel. err {err:.1e})",
        )


# ----------------------------------------------------------------------------------------------
# Qwen3-Next gated delta rule
# ----------------------------------------------------------------------------------------------


def is_gated_delta_net(m: Any) -> bool:
    """A Qwen3-Next-style gated delta net: ``A_log``, ``dt_bias``, a ``conv1d``, the head layout attributes
    (``num_k_heads``, ``num_v_heads``, ``head_k_dim``, ``head_v_dim``) and a forward that calls a function named
    ``*gated_delta_rule`` (the kernel the extractor wraps to capture its arguments).

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_recurrent import is_gated_delta_net
    >>> cfg = transformers.Qwen3NextConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, head_dim=8, layer_types=["linear_attention"],
    ...     linear_key_head_dim=4, linear_value_head_dim=4, linear_num_key_heads=1, linear_num_value_heads=2,
    ...     num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, shared_expert_intermediate_size=8)
    >>> mixer = transformers.Qwen3NextModel(cfg).layers[0].linear_attn
    >>> type(mixer).__name__, is_gated_delta_net(mixer), is_gated_delta_net(mixer.conv1d)
    ('Qwen3NextGatedDeltaNet', True, False)
    """
    return (
        isinstance(m, torch.nn.Module)
        and isinstance(getattr(m, "A_log", None), torch.Tensor)
        and isinstance(getattr(m, "dt_bias", None), torch.Tensor)
        and isinstance(getattr(m, "conv1d", None), torch.nn.Conv1d)
        and all(hasattr(m, n) for n in ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim"))
        and bool(_kernel_names(m))
    )


def _forward_fn(m: Any) -> Any:
    import inspect

    fwd = getattr(type(m), "forward", None)
    try:
        return inspect.unwrap(fwd) if fwd is not None else None
    except ValueError:
        return fwd


def _kernel_names(m: Any) -> List[str]:
    """Names of the delta-rule kernel functions the module's forward calls (global names of its code)."""
    code = getattr(_forward_fn(m), "__code__", None)
    return [n for n in getattr(code, "co_names", ()) if n.endswith("gated_delta_rule")]


_ACTIVE: Dict[int, "GatedDeltaRuleExtractor"] = {}
_PATCHED: Dict[Tuple[str, str], Tuple[Callable, int]] = {}


def _wrap(fn: Callable) -> Callable:
    def ess_capture_delta_rule(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        out = fn(query, key, value, *args, **kwargs)
        for ex in list(_ACTIVE.values()):
            if ex._running:
                ex._record(query, key, value, args, kwargs, out)
        return out

    ess_capture_delta_rule.ess_original = fn  # type: ignore[attr-defined]
    return ess_capture_delta_rule


class _PatchHandle:
    def __init__(self, ex: "GatedDeltaRuleExtractor", keys: List[Tuple[str, str]]) -> None:
        self.ex: Optional[GatedDeltaRuleExtractor] = ex
        self.keys = keys

    def remove(self) -> None:
        if self.ex is None:
            return
        _ACTIVE.pop(id(self.ex), None)
        for key in self.keys:
            orig, n = _PATCHED[key]
            if n > 1:
                _PATCHED[key] = (orig, n - 1)
            else:
                setattr(sys.modules[key[0]], key[1], orig)
                del _PATCHED[key]
        self.ex = None


class GatedDeltaRuleExtractor(_RecurrentBase):
    """Qwen3-Next's gated delta rule (see the module docs).

    Examples
    --------
    A one-layer Qwen3-Next whose only block is a gated delta net of 2 value heads (key and value dimension
    4), on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.Qwen3NextConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, head_dim=8, layer_types=["linear_attention"],
    ...     linear_key_head_dim=4, linear_value_head_dim=4, linear_num_key_heads=1, linear_num_value_heads=2,
    ...     num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, shared_expert_intermediate_size=8)
    >>> model = transformers.Qwen3NextForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.model.layers[0].linear_attn, "model.layers.0.linear_attn")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.shared
    ('GatedDeltaRuleExtractor', 'gated_delta_rule', 'dense', (2, 6, 4), [4, 4])
    >>> ops.check_error < 1e-4                   # the factors reproduced the kernel output (float32 model)
    True
    """

    kind = "gated_delta_rule"

    def _reset(self) -> None:
        self._cap: Optional[Dict[str, Any]] = None
        self._running = False

    def attach(self) -> List[Any]:
        self._reset()
        fwd = _forward_fn(self.module)
        mod_name = getattr(fwd, "__module__", None) or type(self.module).__module__
        g = vars(sys.modules[mod_name])
        keys = []
        for n in _kernel_names(self.module):
            if not callable(g.get(n)):
                continue
            key = (mod_name, n)
            if key in _PATCHED:
                orig, c = _PATCHED[key]
                _PATCHED[key] = (orig, c + 1)
            else:
                _PATCHED[key] = (g[n], 1)
                g[n] = _wrap(g[n])
            keys.append(key)
        _ACTIVE[id(self)] = self

        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            hs = b["hidden_states"]
            self._reset()
            self._calls = (int(hs.shape[0]), int(hs.shape[1]))
            self._problem = _continuation_problem(mod, b, recurrent=True)
            self._running = True

        def post(mod: Any, args: Tuple[Any, ...], out: Any) -> None:
            self._running = False

        return [
            _PatchHandle(self, keys),
            self.module.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(post)),
        ]

    def _record(self, q: Any, k: Any, v: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        try:
            g: Any = kwargs.get("g", args[0] if len(args) > 0 else None)
            beta: Any = kwargs.get("beta", args[1] if len(args) > 1 else None)
            init = kwargs.get("initial_state", args[2] if len(args) > 2 else None)
            o = out[0] if isinstance(out, tuple) else out
            self._cap = {
                "q": q.detach(),
                "k": k.detach(),
                "v": v.detach(),
                "g": g.detach(),
                "beta": beta.detach(),
                "l2": bool(kwargs.get("use_qk_l2norm_in_kernel", False)),
                "out": o.detach(),
                "init": None if init is None else init.detach(),
            }
        except Exception as e:  # noqa: BLE001
            self._capture_error = f"{type(e).__name__}: {e}"

    def _dims(self) -> Tuple[int, int, int]:
        L = 0 if self._calls is None else self._calls[1]
        return int(self.module.num_v_heads), L, int(self.module.head_k_dim)

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        H, L, N = self._dims()
        return 8 * H * L * (N * N + 3 * N + int(self.module.head_v_dim) * 2)

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        c = self._cap
        if c is None:
            raise InvalidArgumentError(
                f"{self.name}: refused: the gated delta rule kernel was not called through the module's forward"
            )
        if c["init"] is not None and bool(c["init"][sample].ne(0).any()):
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this layer: it continued from a cached recurrent state; analyse a full prefill"
            )
        f64 = torch.float64
        q, k, v = (c[n][sample].to(f64).cpu() for n in ("q", "k", "v"))  # (L, Hk, dk), (L, Hk, dk), (L, Hv, dv)
        g, beta = c["g"][sample].to(f64).cpu(), c["beta"][sample].to(f64).cpu()  # (L, Hv)
        L, Hk, dk = k.shape
        Hv, dv = v.shape[1], v.shape[2]
        if Hk != Hv:
            q = q.repeat_interleave(Hv // Hk, dim=1)
            k = k.repeat_interleave(Hv // Hk, dim=1)
        if c["l2"]:
            q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
            k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        q = q / dk**0.5
        qh, kh, vh = q.permute(1, 0, 2), k.permute(1, 0, 2), v.permute(1, 0, 2)  # (H, L, d)
        gh, bh = g.T, beta.T  # (H, L)
        eye = torch.eye(dk, dtype=f64)
        A = torch.exp(gh)[:, :, None, None] * (eye - bh[:, :, None, None] * kh[:, :, :, None] * kh[:, :, None, :])
        fac = Factors("dense", A.numpy(), (bh[:, :, None] * kh).contiguous().numpy(), qh.contiguous().numpy(), None)
        rec = fac.apply(vh).permute(1, 0, 2)  # (L, H, dv)
        out = c["out"][sample]
        err = verify(self.name, rec, out, out.dtype, "gated delta rule output (before the gated norm)")
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"head {h}" for h in range(Hv)],
            tss=[float(dk)] * Hv,
            shared=[dv] * Hv,
            factors=fac,
            check_error=err,
            note=f"gated delta rule (dense per-step transitions, state d_k per value channel); operator on v, output before the gated norm; checked (rel. err {err:.1e})",
        )


# ----------------------------------------------------------------------------------------------
# RWKV(-4) time mixing
# ----------------------------------------------------------------------------------------------


def is_rwkv_time_mix(m: Any) -> bool:
    """An RWKV time-mixing block: the tensors ``time_decay``, ``time_first`` and ``time_mix_value``, and the
    Linear layers ``key``, ``value``, ``receptance`` and ``output``.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_recurrent import is_rwkv_time_mix
    >>> cfg = transformers.RwkvConfig(vocab_size=32, context_length=16, hidden_size=8, num_hidden_layers=2,
    ...                               attention_hidden_size=8, intermediate_size=16)
    >>> block = transformers.RwkvModel(cfg).blocks[0]
    >>> is_rwkv_time_mix(block.attention), is_rwkv_time_mix(block.feed_forward)   # channel mixing is not one
    (True, False)
    """
    return (
        isinstance(m, torch.nn.Module)
        and all(isinstance(getattr(m, n, None), torch.Tensor) for n in ("time_decay", "time_first", "time_mix_value"))
        and all(isinstance(getattr(m, n, None), torch.nn.Linear) for n in ("key", "value", "receptance", "output"))
    )


class RWKVTimeMixExtractor(_RecurrentBase):
    """RWKV's WKV time mixing, one operator per channel with a state of size 1: at the given keys,
    ``wkv_t = (sum_{s<t} e^{(t-1-s) w + k_s} v_s + e^{u + k_t} v_t) / den_t`` is linear in the values ``v``:
    ``A = e^w`` (``w = -exp(time_decay)``), ``b_s = e^{k_s}``, ``c_t = e^{-w} / den_t`` (the denominator at the
    given input, a row scaling), ``e^{u + k_t} / den_t`` on the diagonal. Operator on the value projection,
    output the WKV before the receptance gate; checked against the input of ``output`` (``sigmoid(r) * wkv``).

    Examples
    --------
    A two-layer RWKV of width 8 (the first block analysed), on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.RwkvConfig(vocab_size=32, context_length=16, hidden_size=8, num_hidden_layers=2,
    ...                               attention_hidden_size=8, intermediate_size=16)
    >>> model = transformers.RwkvForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.rwkv.blocks[0].attention, "rwkv.blocks.0.attention")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.tss[:2]
    ('RWKVTimeMixExtractor', 'rwkv_time_mix', 'scalar', (8, 6, 1), [1.0, 1.0])
    >>> ops.check_error < 1e-4                   # the factors reproduced the gated WKV (float32 model)
    True
    """

    kind = "rwkv_time_mix"

    def _reset(self) -> None:
        self._k: Optional[torch.Tensor] = None
        self._v: Optional[torch.Tensor] = None
        self._r: Optional[torch.Tensor] = None
        self._y: Optional[torch.Tensor] = None

    def attach(self) -> List[Any]:
        self._reset()

        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            hs = b["hidden"]
            self._reset()
            self._calls = (int(hs.shape[0]), int(hs.shape[1]))
            self._problem = None
            st = b.get("state")
            if st is not None:
                lid = getattr(mod, "layer_id", None)
                try:
                    busy = any(bool(st[i][:, :, lid].ne(0).any()) for i in (1, 2, 3))
                except Exception:  # noqa: BLE001
                    busy = True
                if busy:
                    self._problem = (
                        "it continued from a cached state (the RWKV state is not empty); analyse a full prefill"
                    )

        def grab(attr: str) -> Callable:
            def hook(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
                setattr(self, attr, out.detach())

            return hook

        def on_out(mod: Any, args: Tuple[Any, ...]) -> None:
            self._y = args[0].detach()

        m = self.module
        return [
            m.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            m.key.register_forward_hook(self._guard(grab("_k"))),
            m.value.register_forward_hook(self._guard(grab("_v"))),
            m.receptance.register_forward_hook(self._guard(grab("_r"))),
            m.output.register_forward_pre_hook(self._guard(on_out)),
        ]

    def _dims(self) -> Tuple[int, int, int]:
        L = 0 if self._calls is None else self._calls[1]
        return int(self.module.key.out_features), L, 1

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        if self._k is None or self._v is None or self._r is None or self._y is None:
            raise InvalidArgumentError(f"{self.name}: refused: key/value/receptance/output were not called as modules")
        m = self.module
        f64 = torch.float64
        k = self._k[sample].to(f64).cpu()
        v = self._v[sample].to(f64).cpu()
        L, Cn = k.shape
        w = -torch.exp(m.time_decay.detach().to(f64).cpu())  # (Cn,) log decay per step
        u = m.time_first.detach().to(f64).cpu()
        K = k.max(0).values  # per-channel shift (exact: it cancels in the ratio)
        ek = torch.exp(k - K)
        # den_t e^{-K} = sum_{s<t} e^{(t-1-s) w + k_s - K} + e^{u + k_t - K}
        den = torch.empty(L, Cn, dtype=f64)
        acc = torch.zeros(Cn, dtype=f64)
        for t in range(L):
            den[t] = acc + torch.exp(u + k[t] - K)
            acc = acc * torch.exp(w) + ek[t]
        a = torch.exp(w)[:, None].expand(Cn, L).contiguous()
        fac = Factors(
            "scalar",
            a.numpy(),
            ek.T[:, :, None].contiguous().numpy(),
            (torch.exp(-w)[None, :] / den).T[:, :, None].contiguous().numpy(),
            None,
        )
        # the diagonal: T[t, t] = c_t b_t + D_t must be e^{u + k_t - K} / den_t
        fac.D = ((torch.exp(u + k - K) - torch.exp(-w) * ek) / den).T.contiguous().numpy()
        rec = fac.apply(v.T[:, :, None])[:, :, 0].T * torch.sigmoid(self._r[sample].to(f64).cpu())
        err = verify(self.name, rec, self._y[sample], self._y.dtype, "receptance-gated WKV (input of output)")
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"channel {c}" for c in range(Cn)],
            tss=[1.0] * Cn,
            shared=None,
            factors=fac,
            check_error=err,
            note=f"RWKV WKV time mixing (state 1 per channel, denominators at the given input); operator on the values, output before the receptance gate; checked (rel. err {err:.1e})",
        )


# ----------------------------------------------------------------------------------------------
# xLSTM mLSTM
# ----------------------------------------------------------------------------------------------


def is_mlstm_layer(m: Any) -> bool:
    """An xLSTM mLSTM layer: an ``mlstm_backend`` submodule (the cell whose arguments and output are captured)
    and an ``out_proj``.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_recurrent import is_mlstm_layer
    >>> cfg = transformers.xLSTMConfig(vocab_size=32, hidden_size=16, embedding_dim=16, num_hidden_layers=1,
    ...                                num_blocks=1, num_heads=2, qk_dim_factor=0.5, chunk_size=4)
    >>> block = transformers.xLSTMModel(cfg).blocks[0]
    >>> type(block.mlstm_layer).__name__, is_mlstm_layer(block.mlstm_layer), is_mlstm_layer(block.ffn)
    ('xLSTMLayer', True, False)
    """
    return (
        isinstance(m, torch.nn.Module)
        and isinstance(getattr(m, "mlstm_backend", None), torch.nn.Module)
        and isinstance(getattr(m, "out_proj", None), torch.nn.Module)
    )


class MLSTMExtractor(_RecurrentBase):
    """xLSTM's mLSTM, one operator per head (shared by its value channels): with ``f_t = sigmoid(f~_t)``, the
    stabiliser ``m_t = max(log f_t + m_{t-1}, i~_t)`` (``m_{-1} = 0``), ``C_t = sum_s e^{F_t - F_s + i~_s - m_t}
    k_s v_s^T`` and the normaliser ``den_t = max(|q_t . n_t|, e^{-m_t}) + eps`` at the given input (a row
    scaling), ``h_t = C_t^T q_t / den_t`` (``q`` scaled by ``1/sqrt(d_qk)``): scalar transitions ``f_t``,
    ``b_s = e^{i~_s} k_s``, ``c_t = e^{-m_t} q_t / den_t``. The arguments and the output of the layer's
    ``mlstm_backend`` are captured; operator on the values, output the backend's ``h`` (before the multi-head
    norm and the output gate).

    Examples
    --------
    A one-block xLSTM with 2 heads (query/key dimension 4, value dimension 8), on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.xLSTMConfig(vocab_size=32, hidden_size=16, embedding_dim=16, num_hidden_layers=1,
    ...                                num_blocks=1, num_heads=2, qk_dim_factor=0.5, chunk_size=4)
    >>> model = transformers.xLSTMForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.backbone.blocks[0].mlstm_layer, "backbone.blocks.0.mlstm_layer")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.shared
    ('MLSTMExtractor', 'mlstm', 'scalar', (2, 6, 4), [8, 8])
    >>> ops.check_error < 1e-4                   # the factors reproduced the backend's output (float32 model)
    True
    """

    kind = "mlstm"
    eps = 1e-6

    def _reset(self) -> None:
        self._cap: Optional[Dict[str, Any]] = None
        self._h: Optional[torch.Tensor] = None

    def attach(self) -> List[Any]:
        self._reset()

        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            b = _bind(mod, args, kwargs)
            q = b["query"]
            self._reset()
            self._calls = (int(q.shape[0]), int(q.shape[2]))
            self._problem = None
            if any(isinstance(b.get(n), torch.Tensor) and bool(b[n].ne(0).any()) for n in ("c_initial", "n_initial")):
                self._problem = (
                    "it continued from a cached state (c_initial/n_initial not empty); analyse a full prefill"
                )
            self._cap = {n: b[n].detach() for n in ("query", "key", "value", "igate", "fgate")}
            mi = b.get("m_initial")
            self._cap["m0"] = None if mi is None else mi.detach()

        def post(mod: Any, args: Tuple[Any, ...], out: Any) -> None:
            self._h = (out[0] if isinstance(out, tuple) else out).detach()

        be = self.module.mlstm_backend
        return [
            be.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            be.register_forward_hook(self._guard(post)),
        ]

    def _dims(self) -> Tuple[int, int, int]:
        L = 0 if self._calls is None else self._calls[1]
        H = 0 if self._cap is None else int(self._cap["query"].shape[1])
        N = 0 if self._cap is None else int(self._cap["query"].shape[3])
        return H, L, N

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        if self._cap is None or self._h is None:
            raise InvalidArgumentError(f"{self.name}: refused: the mLSTM backend was not called as a module")
        f64 = torch.float64
        q, k, v = (self._cap[n][sample].to(f64).cpu() for n in ("query", "key", "value"))  # (H, L, d)
        ig, fg = (self._cap[n][sample].to(f64).cpu() for n in ("igate", "fgate"))  # (H, L)
        H, L, dk = q.shape
        qs = q * dk**-0.5
        logf = F.logsigmoid(fg)
        m0 = self._cap["m0"]
        m = torch.zeros(H, dtype=f64) if m0 is None else m0[sample].to(f64).cpu().reshape(H)
        n = torch.zeros(H, dk, dtype=f64)
        ms = torch.empty(H, L, dtype=f64)
        den = torch.empty(H, L, dtype=f64)
        for t in range(L):
            m_new = torch.maximum(logf[:, t] + m, ig[:, t])
            n = torch.exp(logf[:, t] + m - m_new)[:, None] * n + torch.exp(ig[:, t] - m_new)[:, None] * k[:, t]
            m = m_new
            ms[:, t] = m
            den[:, t] = torch.maximum((qs[:, t] * n).sum(-1).abs(), torch.exp(-m)) + self.eps
        a = torch.exp(logf)
        fac = Factors(
            "scalar",
            a.contiguous().numpy(),
            (torch.exp(ig)[:, :, None] * k).contiguous().numpy(),
            (torch.exp(-ms)[:, :, None] * qs / den[:, :, None]).contiguous().numpy(),
            None,
        )
        rec = fac.apply(v)  # (H, L, dv)
        err = verify(self.name, rec, self._h[sample], self._h.dtype, "mLSTM backend output")
        dv = int(v.shape[-1])
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"head {h}" for h in range(H)],
            tss=[float(dk)] * H,
            shared=[dv] * H,
            factors=fac,
            check_error=err,
            note=f"xLSTM mLSTM (scalar forget gate, state d_qk per value channel, normaliser at the given input); operator on v, output before the multi-head norm; checked (rel. err {err:.1e})",
        )


register(is_gated_short_conv, GatedShortConvExtractor)
register(is_mlstm_layer, MLSTMExtractor)
register(is_rwkv_time_mix, RWKVTimeMixExtractor)
register(is_rglru, RGLRUExtractor)
register(is_gated_delta_net, GatedDeltaRuleExtractor)
