"""Softmax attention of Hugging Face ``transformers`` (5.x) models, whatever the family.

**Every module that routes its attention through transformers' attention interface** (its forward
calls ``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` or indexes ``ALL_ATTENTION_FUNCTIONS``: Llama,
GPT-2, Qwen, Mistral, Gemma 1-3, Phi, GPT-NeoX, GPT-J, OPT, OLMo, SmolLM3, gpt-oss, Cohere, StarCoder2
and the attention layers of the hybrids, ...) is matched by what it does, not by its class: one
extractor, :class:`InterfaceAttentionExtractor`, no per-family code.

While the model runs, the key its config selects (``config._attn_implementation``: ``"eager"``,
``"sdpa"``, a flash or flex kernel, a user-registered one) is re-registered with
``AttentionInterface.register`` to a capturing function that records what each attached layer hands
its attention function (the query and key after RoPE and q/k norms, the value, the mask, ``scaling``,
``softcap``, ``sliding_window``, the ``s_aux`` sinks, ``dropout``, ``is_causal``, and
``num_key_value_groups`` from the module), then calls the very function the model would have called
and returns its result unchanged; for ``"eager"`` that is the module's own ``eager_attention_forward``
(the default its forward passes to ``get_interface``, read from the forward's globals). The key does
not change, so the mask interface (``ALL_MASK_ATTENTION_FUNCTIONS``) builds the mask it always builds
and no mask is dropped. The previous registration is restored when the hooks are removed (``analyze``
removes them also when the forward raises).

Operator of query head ``h`` (key/value head ``h // num_key_value_groups``), in float64::

    s = q_h k_h^T * scaling;  s = softcap * tanh(s / softcap)  (soft-capping, when given)
    s = s + mask  (additive float mask; entries at or below half the dtype's minimum are masked;
                   a boolean mask keeps True; no mask: causal when the call is causal, plus the
                   sliding window when the implementation applies it itself (flash: 2-D or no mask))
    T_h = exp(s) / (sum_kept exp(s) + exp(sink_h))   (the sink term only with ``s_aux``)

Operator ``h`` maps head ``h``'s value sequence (after ``v_proj``, before the output projection) to the
head's attention output; it is shared by the head's ``head_dim`` value channels (``shared``). Limits: a
model-local attention interface (an ``AttentionInterface()`` instance of its own overriding the key) or
a code path that bypasses the interface is never seen and the layer is refused; flex-attention block
masks are refused; the flash path (2-D or no mask, ``sliding_window``, ``softcap``, ``s_aux`` passed as
arguments) is modelled as above and tested with a torch stand-in for the kernel, not with the flash
kernels themselves (no GPU in the tests).

Every operator is **checked at run time**: applied to the captured values it must reproduce the
attention output the function returned (query rows that see no key are left out), to a tolerance set
by the dtype of that output (both are kept as ``PROBES`` random projections of the value channels, so
the capture holds queries and keys in full but values and outputs at a fraction of their size); a layer that fails is refused, naming it, and so is a layer whose
operator is not causal, that read cached keys (more keys than queries), that was called as
cross-attention, more than once in one forward (a module shared between depths), or never.

**Families that do not use the interface** get the smallest code reproducing their attention, checked
the same way: ``BloomAttention`` (ALiBi, always eager) and ``FalconAttention`` (RoPE or ALiBi, eager or
sdpa). A module that does neither is listed by ``analyze`` as skipped.
"""

from __future__ import annotations

import abc
import inspect
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import InvalidArgumentError, ShapeError
from .base import OperatorSet, operator_array, register
from .hf import _bind, _caches_in, _continuation_problem, _is_class, _LayerCaptures, refuse_unless

__all__ = [
    "InterfaceAttentionExtractor",
    "BloomAttentionExtractor",
    "FalconAttentionExtractor",
    "uses_attention_interface",
    "unsupported_reason",
    "VERIFY_RTOL",
]

#: Random projections of the value channels kept for the run-time check (of the values and of the
#: attention output; the operator acts on every channel alike, so an operator that is wrong on the values
#: is wrong on almost every projection of them).
PROBES = 8

#: Largest accepted relative error (per head, Frobenius norm over the compared rows) between the operator
#: applied to the captured values and the attention output of the layer, by the dtype of that output. Many
#: libraries take the softmax in float32 whatever the model dtype, hence float64's bound.
VERIFY_RTOL: Dict[torch.dtype, float] = {
    torch.float64: 1e-5,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


# ----------------------------------------------------------------------------------------------
# the operator of one attention call, and its check
# ----------------------------------------------------------------------------------------------


def _probabilities(
    scores: torch.Tensor, keep: torch.Tensor, sinks: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row softmax of ``scores`` (H, L, S) over the kept entries, with an optional extra logit per head
    (``sinks``, (H,)) that takes probability mass without reading a position. Returns the
    probabilities and the (H, L) flags of rows that keep no entry (zero rows)."""
    # in place on one fresh tensor (an (H, L, S) float64 copy costs as much as a softmax pass); masked
    # entries are -inf, so exp gives exactly 0 there (also in rows that keep nothing: their max is
    # replaced by 0), and no second masking pass is needed
    s = scores.masked_fill(~keep, float("-inf"))
    empty = ~keep.any(dim=-1)
    if sinks is not None:
        sk = sinks.to(s)[:, None, None].expand(s.shape[0], s.shape[1], 1)
        s = torch.cat([s, sk], dim=-1)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = s.sub_(m).exp_()
    p = e.div_(e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny))
    p = p[..., : scores.shape[-1]]
    return p, empty


def _causal(keep: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether the probabilities ``p`` (H, L, S) are causal: certain from the (often un-expanded) ``keep``
    flags when they keep nothing above the diagonal, else checked on ``p`` itself (a mask may keep
    future positions whose probabilities underflow to 0)."""
    if not bool(torch.triu(keep, diagonal=1 + p.shape[-1] - p.shape[-2]).any()):
        return True
    return not bool(torch.triu(p, diagonal=1).ne(0).any())


def _keep_from_mask(
    name: str, mask: Any, sample: int, L: int, S: int, dev: Any
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(keep (1|H, L, S) bool, additive bias or None) of the mask an attention function received, or
    (None, None) when there is no mask (or a 2-D padding mask, handled by the caller)."""
    if mask is None:
        return None, None
    if not isinstance(mask, torch.Tensor):
        raise InvalidArgumentError(
            f"{name}: unsupported attention mask type {type(mask).__name__} (e.g. a flex-attention BlockMask); "
            "load the model with attn_implementation='eager' or 'sdpa'"
        )
    if mask.dim() != 4:
        raise ShapeError(f"{name}: unexpected attention mask of shape {tuple(mask.shape)}")
    if mask.shape[-2] != L or mask.shape[-1] < S:
        raise ShapeError(f"{name}: attention mask of shape {tuple(mask.shape)} does not match {L} queries and {S} keys")
    m = mask[sample if mask.shape[0] > 1 else 0, :, :, :S].to(dev)
    if m.dtype == torch.bool:
        return m, None
    lo = torch.finfo(m.dtype).min / 2 if m.dtype.is_floating_point else -1e30
    keep = m > lo
    bias = torch.where(keep, m.to(torch.float64), torch.zeros((), dtype=torch.float64, device=dev))
    return keep, bias


def _verify(
    name: str, ops: torch.Tensor, v: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype
) -> float:
    """Refuse unless ``ops`` (H, L, S) applied to ``v`` (H, S, dv) gives ``out`` (H, L, dv) on the query
    rows ``rows`` (H, L bool) to the tolerance of ``dtype``; returns the largest relative error."""
    if not (bool(torch.isfinite(ops).all()) and bool(torch.isfinite(out[rows]).all())):
        raise InvalidArgumentError(
            f"{name}: refused: the layer's attention inputs or outputs contain NaN or infinity (e.g. a float64 "
            "model whose eager padding mask overflowed); nothing can be checked"
        )
    rec = torch.einsum("hls,hsd->hld", ops, v)
    worst = 0.0
    for h in range(ops.shape[0]):
        r = rows[h]
        if not bool(r.any()):
            continue
        ref = out[h][r]
        den = max(float(torch.linalg.vector_norm(ref)), float(torch.linalg.vector_norm(v[h])) * 1e-6, 1e-300)
        e = float(torch.linalg.vector_norm(rec[h][r] - ref)) / den
        worst = e if not math.isfinite(e) else max(worst, e)
        if not math.isfinite(worst):
            break
    return refuse_unless(
        name,
        worst,
        VERIFY_RTOL,
        dtype,
        "the reconstructed attention operator does not reproduce the layer's attention output",
        "this layer computes its attention in a way the extractor does not model",
    )


def _kv_per_query_head(x: torch.Tensor, H: int, name: str) -> torch.Tensor:
    """(Hkv, S, d) -> (H, S, d): query head h reads key/value head h // (H // Hkv) (``repeat_kv``)."""
    Hkv = x.shape[0]
    if H % Hkv:
        raise ShapeError(f"{name}: {H} query heads are not a multiple of {Hkv} key/value heads")
    return x.repeat_interleave(H // Hkv, dim=0) if Hkv != H else x


def _operator_set(name: str, ops: torch.Tensor, dv: int, empty: bool, err: float, notes: List[str]) -> OperatorSet:
    H, L = ops.shape[0], ops.shape[1]
    notes = list(notes)
    if empty:
        notes.append("query rows that see no key (padding) set to zero")
    notes.append(f"checked: reproduces the layer's attention output (max relative error {err:.1e})")
    return OperatorSet(
        layer=name,
        kind="softmax_attention",
        operators=operator_array(ops),
        labels=[f"head {h}" for h in range(H)],
        tss=[float(L)] * H,
        shared=[dv] * H,
        note="; ".join(notes),
    )


class _AttentionCapture(_LayerCaptures):
    """Shared bookkeeping of the HF attention extractors: cache guards (a pre-hook reading every
    cache-like argument, a post-hook comparing cached keys with queries), cross-attention refusal."""

    kind = "softmax_attention"
    _noun = "attention"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._seen: Tuple[List[Any], Optional[int]] = ([], None)
        self._training = False
        self._module_calls = 0
        self._reset()

    @abc.abstractmethod
    def _reset(self) -> None:
        """Forget the captures of the previous call."""

    def _pre(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        b = _bind(mod, args, kwargs)
        self._module_calls += 1
        self._problem = None
        self._training = bool(mod.training)
        if b.get("encoder_hidden_states") is not None or b.get("key_value_states") is not None:
            self._problem = "it was called as cross-attention (encoder states given)"
        self._problem = self._problem or _continuation_problem(mod, b, recurrent=False)
        hs = b.get("hidden_states")
        self._seen = (_caches_in(b), int(hs.shape[-2]) if isinstance(hs, torch.Tensor) and hs.dim() >= 2 else None)
        self._pre_extra(b)

    def _pre_extra(self, b: Dict[str, Any]) -> None:
        pass

    def _post(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        """After the call: a cache now holding more keys for this layer than there were queries means
        the layer attended to keys from an earlier call (whatever the cache said before)."""
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

    def _guards(self) -> List[Any]:
        return [
            self.module.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(self._post), with_kwargs=True),
        ]

    def _check(self, sample: int) -> None:
        super()._check(sample)
        if self._module_calls > 1:
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this attention: the module ran {self._module_calls} times in one forward "
                "(a module shared between several depths); its calls cannot be told apart"
            )

    def clear(self) -> None:
        self._capture_error = None
        self._problem = None
        self._seen = ([], None)
        self._module_calls = 0
        self._reset()


# ----------------------------------------------------------------------------------------------
# the attention interface
# ----------------------------------------------------------------------------------------------


def _forward_function(cls: type) -> Optional[Any]:
    try:
        return inspect.unwrap(cls.forward)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None


def uses_attention_interface(m: Any) -> bool:
    """A causal self-attention module whose forward goes through transformers' attention interface
    (its code refers to ``ALL_ATTENTION_FUNCTIONS``), whatever its class; cross-attention modules and
    bidirectional ones (``is_causal`` False) are not matched.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf_attention import uses_attention_interface
    >>> cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                num_attention_heads=2, num_key_value_heads=1)
    >>> layer = transformers.LlamaModel(cfg).layers[0]
    >>> uses_attention_interface(layer.self_attn), uses_attention_interface(layer.mlp)
    (True, False)
    """
    if not isinstance(m, torch.nn.Module) or not hasattr(m, "config"):
        return False
    fwd = _forward_function(type(m))
    code = getattr(fwd, "__code__", None)
    if code is None or "ALL_ATTENTION_FUNCTIONS" not in code.co_names:
        return False
    if getattr(m, "is_cross_attention", False) is True or getattr(m, "is_causal", True) is False:
        return False
    return True


def unsupported_reason(m: Any) -> str:
    """Why a module of ``transformers`` whose class names attention has no extractor here (for the
    message of ``analyze`` when nothing can be analysed); ``""`` for any other module.

    Examples
    --------
    BERT's self-attention goes through the interface but sees the whole sequence:

    >>> import transformers
    >>> from ess.operators.hf_attention import unsupported_reason
    >>> cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                               num_attention_heads=2)
    >>> layer = transformers.BertModel(cfg).encoder.layer[0]
    >>> unsupported_reason(layer.attention.self)
    'it is cross-attention or bidirectional (is_causal False), not causal self-attention'
    >>> unsupported_reason(layer.intermediate)       # not an attention module
    ''
    """
    if not isinstance(m, torch.nn.Module) or not type(m).__module__.startswith("transformers."):
        return ""
    if "attention" not in type(m).__name__.lower():
        return ""
    code = getattr(_forward_function(type(m)), "__code__", None)
    if code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names:
        return "it is cross-attention or bidirectional (is_causal False), not causal self-attention"
    return (
        "its forward computes attention with code of its own, not through transformers' attention interface, "
        "which is what ess captures besides Bloom's and Falcon's attention"
    )


def _eager_default(module: Any) -> Callable:
    """The eager attention function ``module``'s forward passes to ``get_interface`` as its default:
    the global ``*eager_attention_forward`` its code names (``eager_attention_forward`` in 455 of 460
    modelling files of transformers 5.24)."""
    fwd = _forward_function(type(module))
    g = getattr(fwd, "__globals__", {})
    names = [
        n for n in getattr(getattr(fwd, "__code__", None), "co_names", ()) if n.endswith("eager_attention_forward")
    ]
    fns = list({id(g[n]): g[n] for n in names if callable(g.get(n))}.values())
    if len(fns) != 1:
        raise InvalidArgumentError(
            f"{type(module).__name__}: cannot tell which eager attention function its forward uses "
            f"(found {names or 'none'}); load the model with attn_implementation='sdpa'"
        )
    return fns[0]


class _Registry:
    """Reference-counted re-registration of attention-interface keys to the capturing function."""

    def __init__(self) -> None:
        self.saved: Dict[str, Tuple[bool, Any]] = {}  # key -> (was registered, previous function)
        self.count: Dict[str, int] = {}
        self.active: Dict[int, "InterfaceAttentionExtractor"] = {}

    def install(self, key: str) -> None:
        from transformers.modeling_utils import AttentionInterface

        mapping = AttentionInterface._global_mapping
        if self.count.get(key, 0) == 0:
            had = key in mapping
            prev: Any = mapping.get(key)
            self.saved[key] = (had, prev)
            AttentionInterface.register(key, _capturing(key, prev))
        self.count[key] = self.count.get(key, 0) + 1

    def uninstall(self, key: str) -> None:
        from transformers.modeling_utils import AttentionInterface

        n = self.count.get(key, 0) - 1
        if n > 0:
            self.count[key] = n
            return
        self.count.pop(key, None)
        had, prev = self.saved.pop(key, (False, None))
        mapping = AttentionInterface._global_mapping
        if had:
            mapping[key] = prev
        else:
            mapping.pop(key, None)


_REG = _Registry()


def _capturing(key: str, original: Optional[Callable]) -> Callable:
    def ess_capture_attention(
        module: Any, query: Any, key_: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ) -> Any:
        fn = original if original is not None else _eager_default(module)
        out = fn(module, query, key_, value, attention_mask, *args, **kwargs)
        ex = _REG.active.get(id(module))
        if ex is not None and ex.module is module:
            ex._record(fn, query, key_, value, attention_mask, args, kwargs, out)
        return out

    ess_capture_attention.ess_key = key  # type: ignore[attr-defined]
    return ess_capture_attention


class _Handle:
    def __init__(self, ex: "InterfaceAttentionExtractor", key: Optional[str]) -> None:
        self.ex, self.key = ex, key

    def remove(self) -> None:
        if self.ex is None:
            return
        if _REG.active.get(id(self.ex.module)) is self.ex:
            del _REG.active[id(self.ex.module)]
        if self.key is not None:
            _REG.uninstall(self.key)
        self.ex = None  # type: ignore[assignment]


class InterfaceAttentionExtractor(_AttentionCapture):
    """Any causal self-attention routed through transformers' attention interface (see the module doc).

    Examples
    --------
    A one-layer Llama with 2 query heads sharing one key/value head, on 6 tokens:

    >>> import numpy as np, torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                num_attention_heads=2, num_key_value_heads=1)
    >>> model = transformers.LlamaForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.model.layers[0].self_attn, "model.layers.0.self_attn")
    >>> with ex.capturing(), torch.no_grad():   # a capturing attention function under the model's key
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.kind, ops.operators.shape, ops.labels, ops.shared
    ('InterfaceAttentionExtractor', 'softmax_attention', (2, 6, 6), ['head 0', 'head 1'], [8, 8])
    >>> ops.operators.sum(axis=-1).round(12)     # each row a softmax over the past
    array([[1., 1., 1., 1., 1., 1.],
           [1., 1., 1., 1., 1., 1.]])
    >>> bool((np.triu(ops.operators, 1) == 0).all()), "checked" in ops.note
    (True, True)
    """

    _attach_problem: Optional[str] = None

    def _reset(self) -> None:
        self._cap: Optional[Dict[str, Any]] = None
        self._fn_calls = 0
        self._batch = 0

    def attach(self) -> List[Any]:
        self._reset()
        self._attach_problem: Optional[str] = None
        key = getattr(getattr(self.module, "config", None), "_attn_implementation", None)
        if not isinstance(key, str):
            self._attach_problem = "its config names no attention implementation (config._attn_implementation)"
            key = None
        elif key == "eager":
            try:
                _eager_default(self.module)
            except InvalidArgumentError as e:
                self._attach_problem = str(e)
        if key is not None and key.startswith("paged|") and key != "paged|eager":
            key = key.removeprefix("paged|")
        if id(self.module) in _REG.active:
            raise InvalidArgumentError(f"{self.name}: another extractor is already attached to this module")
        _REG.active[id(self.module)] = self
        if key is not None:
            try:
                _REG.install(key)
            except Exception:
                del _REG.active[id(self.module)]
                raise
        return [*self._guards(), _Handle(self, key)]

    def _record(
        self, fn: Any, q: Any, k: Any, v: Any, mask: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any
    ) -> None:
        try:
            self._fn_calls += 1
            if self._fn_calls > 1 or self._module_calls > 1:
                return
            o = out[0] if isinstance(out, (tuple, list)) else out
            kw = dict(kwargs)
            if args:  # positional extras of the eager signature: (scaling, dropout)
                for n, a in zip(("scaling", "dropout"), args):
                    kw.setdefault(n, a)
            sinks = kw.get("s_aux")
            if not (o.dim() == 4 and v.dim() == 4 and o.shape[-1] == v.shape[-1]):
                raise ShapeError(f"the attention function returned an output of shape {tuple(o.shape)}")
            # the check needs only what the operator does to the values: random projections of the value
            # channels (PROBES of them) of the values and of the output, not the full tensors
            dv = int(v.shape[-1])
            f = torch.float64 if v.dtype == torch.float64 else torch.float32
            g = torch.Generator(device="cpu").manual_seed(dv)
            R = torch.randn(dv, min(dv, PROBES), generator=g, dtype=f).to(v.device)
            self._cap = {
                "q": q.detach(),
                "k": k.detach(),
                "v": torch.matmul(v.detach().to(f), R),  # (B, Hkv, S, probes)
                "out": torch.matmul(o.detach().to(f), R),  # (B, L, H, probes)
                "out_dtype": o.dtype,
                "dv": dv,
                "mask": mask.detach() if isinstance(mask, torch.Tensor) else mask,
                "scaling": kw.get("scaling"),
                "softcap": kw.get("softcap"),
                "sliding_window": kw.get("sliding_window"),
                "sinks": sinks.detach() if isinstance(sinks, torch.Tensor) else None,
                "dropout": float(kw.get("dropout") or 0.0),
                "is_causal": kw.get("is_causal"),
                "position_bias": kw.get("position_bias"),
                "fn": getattr(fn, "__qualname__", type(fn).__name__),
            }
        except Exception as e:  # noqa: BLE001 - reported by operators()
            self._capture_error = f"{type(e).__name__}: {e}"

    def _pre_extra(self, b: Dict[str, Any]) -> None:
        hs = b.get("hidden_states")
        self._batch = int(hs.shape[0]) if isinstance(hs, torch.Tensor) and hs.dim() >= 3 else 1

    def _count(self) -> int:
        if self._module_calls == 0:
            return 0
        return int(self._cap["q"].shape[0]) if self._cap is not None else self._batch

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._cap is None:
            return 0
        H, L = int(self._cap["q"].shape[1]), int(self._cap["q"].shape[2])
        S = int(self._cap["k"].shape[2])
        return 4 * 8 * H * L * S

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        if self._attach_problem:
            raise InvalidArgumentError(f"{self.name}: cannot analyse this attention: {self._attach_problem}")
        if self._fn_calls > 1:
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this attention: the module called its attention function {self._fn_calls} "
                "times in one forward; its calls cannot be told apart"
            )
        cap = self._cap
        if cap is None:
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this attention: {type(self.module).__name__} ran without calling the "
                "attention function registered for its attention implementation (a code path of its own, e.g. "
                "GPT-2's reorder_and_upcast_attn, or a model-local attention interface)"
            )
        name = self.name
        with torch.no_grad():
            q = cap["q"][sample].to(torch.float64)  # (H, L, d)
            H, L, d = q.shape
            kb = cap["k"][sample if cap["k"].shape[0] > 1 else 0]
            vb = cap["v"][sample if cap["v"].shape[0] > 1 else 0]
            S = int(kb.shape[-2])
            if S != L:
                raise InvalidArgumentError(
                    f"{name}: cannot analyse this attention: it attended to {S} keys for {L} queries (cached keys "
                    "from an earlier call, a pre-allocated static cache, or cross-attention); analyse a full prefill "
                    "with use_cache=False"
                )
            k = _kv_per_query_head(kb.to(torch.float64), H, name)
            v = _kv_per_query_head(vb.to(torch.float64), H, name)
            dev = q.device
            scaling = cap["scaling"]
            scaling = d**-0.5 if scaling is None else float(scaling)
            scores = torch.einsum("hld,hsd->hls", q, k) * scaling
            if cap["softcap"] is not None:
                c = float(cap["softcap"])
                scores = torch.tanh(scores / c) * c
            pb = cap["position_bias"]
            if isinstance(pb, torch.Tensor):
                scores = scores + pb[sample if pb.shape[0] > 1 else 0].to(dev, torch.float64)[..., :S]
            keep, bias = self._keep_and_bias(cap, sample, L, S, dev)
            keep_1 = keep  # (1|H, L, S): the causality check reads this one, not H expanded copies
            keep = keep.expand(H, L, S)
            if bias is not None:
                scores = scores + bias
            sinks = cap["sinks"]
            p, empty = _probabilities(scores, keep, None if sinks is None else sinks.to(dev, torch.float64).reshape(-1))
            if not _causal(keep_1, p):
                raise InvalidArgumentError(
                    f"{name}: cannot analyse this attention: it is not causal (a position attends to a later one); "
                    "ESS needs a causal operator"
                )
            out = cap["out"][sample].to(torch.float64)  # (L, H, probes) as the interface returns it
            if out.dim() != 3 or out.shape[0] != L or out.shape[1] != H:
                raise ShapeError(
                    f"{name}: the attention function returned an output of shape {tuple(cap['out'].shape)}"
                )
            err = _verify(name, p, v, out.transpose(0, 1), ~empty, cap["out_dtype"])
        notes = [f"{type(self.module).__name__} via the attention interface ({cap['fn']})"]
        if cap["softcap"] is not None:
            notes.append(f"logit soft-capping {float(cap['softcap']):g}")
        if sinks is not None:
            notes.append("attention sinks (rows sum to less than 1)")
        if self._training and cap["dropout"] > 0:
            notes.append("attention dropout (training mode) not applied")
        return _operator_set(name, p, int(cap["dv"]), bool(empty.any()), err, notes)

    def _keep_and_bias(
        self, cap: Dict[str, Any], sample: int, L: int, S: int, dev: Any
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Which keys each query may see (``(1 or H, L, S)`` bool) and an additive score bias, from the
        captured mask: a flash-style 2-D padding mask, none (causal unless the call said otherwise,
        with the sliding window), or a 4-D boolean/additive mask."""
        mask = cap["mask"]
        causal = torch.ones(L, S, dtype=torch.bool, device=dev).tril_()
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:  # flash-style padding mask: 1 = token
            row = mask[sample if mask.shape[0] > 1 else 0, -S:].to(dev).bool()
            return self._window(causal & row[None, :], cap["sliding_window"])[None], None
        if mask is None:
            is_causal = cap["is_causal"]
            is_causal = getattr(self.module, "is_causal", True) if is_causal is None else bool(is_causal)
            if is_causal and L > 1:
                return self._window(causal, cap["sliding_window"])[None], None
            return torch.ones(1, L, S, dtype=torch.bool, device=dev), None
        keep, bias = _keep_from_mask(self.name, mask, sample, L, S, dev)
        assert keep is not None
        return keep, bias

    @staticmethod
    def _window(keep: torch.Tensor, window: Any) -> torch.Tensor:
        if window is None:
            return keep
        L, S = keep.shape[-2:]
        qi = torch.arange(L, device=keep.device)[:, None] + (S - L)
        ki = torch.arange(S, device=keep.device)[None, :]
        return keep & (ki > qi - int(window))


# ----------------------------------------------------------------------------------------------
# families without the interface: Bloom, Falcon
# ----------------------------------------------------------------------------------------------


class _FusedQKVAttention(_AttentionCapture):
    """Captures the fused ``query_key_value`` projection and the input of ``dense`` (the attention
    output before the output projection); subclasses split, position-encode and score."""

    def _reset(self) -> None:
        self._fused: Optional[torch.Tensor] = None
        self._ctx: Optional[torch.Tensor] = None
        self._args: Dict[str, Any] = {}

    def attach(self) -> List[Any]:
        self._reset()

        def on_qkv(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._fused = out.detach()

        def on_dense(mod: Any, args: Tuple[Any, ...]) -> None:
            self._ctx = args[0].detach()

        return [
            *self._guards(),
            self.module.query_key_value.register_forward_hook(self._guard(on_qkv)),
            self.module.dense.register_forward_pre_hook(self._guard(on_dense)),
        ]

    def _pre_extra(self, b: Dict[str, Any]) -> None:
        keep = ("alibi", "attention_mask", "position_embeddings", "output_attentions")
        self._args = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in b.items() if k in keep}

    def _count(self) -> int:
        return 0 if self._fused is None else int(self._fused.shape[0])

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._fused is None:
            return 0
        L = int(self._fused.shape[1])
        return 4 * 8 * int(self.module.num_heads) * L * L

    @abc.abstractmethod
    def _qkv(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 (H, L, d), (Hkv, L, d), (Hkv, L, d) as the attention reads them."""

    @abc.abstractmethod
    def _scores(
        self, q: torch.Tensor, k: torch.Tensor, sample: int
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(scores (H, L, L) before the mask, keep, additive bias or None)."""

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        if self._ctx is None:
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this attention: its output projection ('dense') was not called as a "
                "module (tensor-parallel slow_but_exact path)"
            )
        name = self.name
        with torch.no_grad():
            q, k, v = self._qkv(sample)
            H, L, d = q.shape
            k = _kv_per_query_head(k, H, name)
            v = _kv_per_query_head(v, H, name)
            scores, keep, bias = self._scores(q, k, sample)
            if bias is not None:
                scores = scores + bias
            p, empty = _probabilities(scores, keep.expand(H, L, L), None)
            if not _causal(keep, p):
                raise InvalidArgumentError(f"{name}: cannot analyse this attention: it is not causal")
            ctx = self._ctx[sample].to(torch.float64).reshape(L, H, -1).transpose(0, 1)
            err = _verify(name, p, v, ctx, ~empty, self._ctx.dtype)
        return _operator_set(name, p, int(v.shape[-1]), bool(empty.any()), err, self._notes())

    def _notes(self) -> List[str]:
        return []

    def _mask(self, sample: int, L: int, dev: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        keep, bias = _keep_from_mask(self.name, self._args.get("attention_mask"), sample, L, L, dev)
        if keep is None:  # no mask: attends everywhere (refused below as not causal) unless sdpa is causal
            keep = torch.ones(1, L, L, dtype=torch.bool, device=dev)
        return keep, bias


def _is_bloom_attention(m: Any) -> bool:
    # (should a release route it through the attention interface, as Falcon's since 5.25, that extractor takes it)
    return _is_class(m, "transformers.models.bloom.modeling_bloom", "BloomAttention") and not uses_attention_interface(
        m
    )


def _is_falcon_attention(m: Any) -> bool:
    # transformers >= 5.25 routes FalconAttention through the attention interface (ALiBi as part of the
    # additive mask): that class is the interface extractor's; only the older one, with its own code, is ours.
    return _is_class(m, "transformers.models.falcon.modeling_falcon", "FalconAttention") and not (
        uses_attention_interface(m)
    )


class BloomAttentionExtractor(_FusedQKVAttention):
    """``BloomAttention`` (ALiBi; its own eager code, no attention interface):
    ``T_h = softmax(beta * alibi_h + q_h k_h^T / sqrt(d) + mask)``.

    Examples
    --------
    >>> import numpy as np, torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.BloomConfig(vocab_size=32, hidden_size=16, n_layer=1, n_head=2)
    >>> model = transformers.BloomForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.transformer.h[0].self_attention, "transformer.h.0.self_attention")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.operators(0)
    >>> type(ex).__name__, ops.operators.shape, ops.note.split(";")[0]
    ('BloomAttentionExtractor', (2, 6, 6), 'BloomAttention (ALiBi)')
    >>> bool(np.allclose(ops.operators.sum(axis=-1), 1)), bool((np.triu(ops.operators, 1) == 0).all())
    (True, True)
    """

    def _qkv(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._fused is not None
        q, k, v = self.module._reshape(self._fused[sample : sample + 1])
        return q[0].to(torch.float64), k[0].to(torch.float64), v[0].to(torch.float64)

    def _scores(
        self, q: torch.Tensor, k: torch.Tensor, sample: int
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        m = self.module
        H, L, _ = q.shape
        alibi = self._args.get("alibi")
        if not isinstance(alibi, torch.Tensor):
            raise InvalidArgumentError(f"{self.name}: no alibi tensor was passed to the layer")
        a = alibi.reshape(-1, H, alibi.shape[-2], alibi.shape[-1])
        a = a[sample if a.shape[0] > 1 else 0].to(q.device, torch.float64)[..., :L]  # (H, 1, L)
        scores = float(m.beta) * a + torch.einsum("hld,hsd->hls", q, k) * float(m.inv_norm_factor)
        keep, bias = self._mask(sample, L, q.device)
        return scores, keep, bias

    def _notes(self) -> List[str]:
        return ["BloomAttention (ALiBi)"]


class FalconAttentionExtractor(_FusedQKVAttention):
    """``FalconAttention`` of transformers before 5.25 (its own code, no attention interface): RoPE or ALiBi,
    multi-query or grouped keys, and the sdpa or eager branch the forward takes
    (``config._attn_implementation == 'sdpa'`` and no ``output_attentions``). From 5.25 the class calls the
    attention interface (ALiBi travels in the additive mask) and :class:`InterfaceAttentionExtractor` takes it.

    Examples
    --------
    >>> import numpy as np, torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.FalconConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    >>> model = transformers.FalconForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.transformer.h[0].self_attention, "transformer.h.0.self_attention")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.operators(0)
    >>> type(ex).__name__ in ("FalconAttentionExtractor", "InterfaceAttentionExtractor"), ops.operators.shape
    (True, (2, 6, 6))
    >>> "sdpa" in ops.note.split(";")[0]
    True
    >>> bool(np.allclose(ops.operators.sum(axis=-1), 1)), bool((np.triu(ops.operators, 1) == 0).all())
    (True, True)
    """

    def _qkv(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._fused is not None
        m = self.module
        q, k, v = m._split_heads(self._fused[sample : sample + 1])  # (1, L, H|Hkv, d)
        L = q.shape[1]
        nkv = m.num_heads if m.new_decoder_architecture else m.num_kv_heads
        q = q.transpose(1, 2).reshape(1, m.num_heads, L, m.head_dim).to(torch.float64)
        k = k.transpose(1, 2).reshape(1, nkv, L, m.head_dim).to(torch.float64)
        v = v.transpose(1, 2).reshape(1, nkv, L, m.head_dim).to(torch.float64)
        if self._args.get("alibi") is None:
            pe = self._args.get("position_embeddings")
            if pe is None:
                raise InvalidArgumentError(f"{self.name}: no position_embeddings were passed to the layer")
            cos, sin = pe
            i = sample if cos.shape[0] > 1 else 0
            rope = sys.modules[type(m).__module__].apply_rotary_pos_emb
            q, k = rope(q, k, cos[i : i + 1].to(q.device, torch.float64), sin[i : i + 1].to(q.device, torch.float64))
        return q[0], k[0], v[0]

    def _sdpa(self) -> bool:
        return self.module.config._attn_implementation == "sdpa" and not self._args.get("output_attentions")

    def _scores(
        self, q: torch.Tensor, k: torch.Tensor, sample: int
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        m = self.module
        H, L, d = q.shape
        qk = torch.einsum("hld,hsd->hls", q, k)
        mask = self._args.get("attention_mask")
        if mask is None and self._sdpa() and L > 1 and m.is_causal:
            keep = torch.ones(1, L, L, dtype=torch.bool, device=q.device).tril_()
            bias = None
        else:
            keep, bias = self._mask(sample, L, q.device)
        alibi = self._args.get("alibi")
        if not self._sdpa() and isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            raise InvalidArgumentError(
                f"{self.name}: cannot analyse this attention: FalconAttention's eager branch (taken for "
                "output_attentions=True) adds the boolean mask an sdpa-configured model builds to its logits as "
                "numbers (0/1), so the layer attends to later positions; analyse without output_attentions, or load "
                "the model with attn_implementation='eager'"
            )
        if alibi is None or self._sdpa():  # sdpa: the model folded alibi / sqrt(d) into the mask
            return qk / math.sqrt(d), keep, bias
        a = alibi.reshape(-1, H, 1, alibi.shape[-1])[sample if alibi.shape[0] > H else 0].to(q.device, torch.float64)
        return (qk + a[..., :L]) * float(m.inv_norm_factor), keep, bias

    def _notes(self) -> List[str]:
        alibi = self._args.get("alibi") is not None
        return [f"FalconAttention ({'ALiBi' if alibi else 'RoPE'}, {'sdpa' if self._sdpa() else 'eager'} branch)"]


register(uses_attention_interface, InterfaceAttentionExtractor)
register(_is_bloom_attention, BloomAttentionExtractor)
register(_is_falcon_attention, FalconAttentionExtractor)
