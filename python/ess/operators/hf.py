"""Extractors for Hugging Face ``transformers`` (5.x) layers.

* Attention layers (any family): :mod:`ess.operators.hf_attention`, which also uses the cache
  guards below.
* Mamba-1 mixers (``MambaMixer``, ``FalconMambaMixer``, ``JambaMambaMixer`` and any module built like them:
  :func:`is_selective_ssm`): one operator per inner channel ``d``, handed over as state-space factors
  ``A_t = diag(exp(Delta_t[d] A[d]))``, ``b_t = Delta_t[d] B_t``, ``c_t = C_t`` (``D[d]`` on the diagonal). The
  input ``u`` of ``x_proj`` and its output (``dt`` rank part, ``B``, ``C``; or the outputs of the ``dt``/``b``/``c``
  norms where the mixer has them) are captured; ``Delta = softplus(dt_proj(dt))`` and ``A = -exp(A_log)`` are
  rebuilt from the weights. The operator maps ``u[:, d]`` to the scan output before the gate ``act(z)``. The fused
  training kernel (``mamba_inner_fn``) calls no submodule and is refused with a clear error.
* Mamba-2 mixers (``Mamba2Mixer``, ``BambaMixer``, ``FalconH1Mixer``, ``GraniteMoeHybridMambaLayer``,
  ``Zamba2MambaMixer``, ``NemotronHMamba2Mixer`` and any module built like them: :func:`is_ssd_mixer`): one
  operator per head, scalar decay, shared by the head's ``head_dim`` channels. The output of ``in_proj`` (times
  ``mup_vector`` where the mixer has one) is captured and the causal convolution of its ``xBC`` part recomputed
  from ``conv1d``'s weights. The operator maps the head's channels of ``x`` to the scan output before the gated
  norm.

Every extraction is checked at run time (:func:`verify`): the factors applied to the captured input must
reproduce the captured output of that stage (:data:`RECON_RTOL` by dtype) or the layer is refused by name.
:meth:`operators` materialises the factors for the dense route (``analyze(..., materialize=True)``).

Operators assume the layer starts from an empty cache (a prefill); continuing from cached
keys or states is refused. The check does not depend on the keyword the cache arrives under
(``cache``, ``past_key_values``, ``cache_params`` across transformers versions): every argument
that behaves like a cache is asked what it holds for this layer (cached key length; previous
recurrent state, non-zero conv/SSM states), a cache that cannot be read is refused, and after an
attention call a cache holding more keys than there were queries is refused too (a recurrent layer
answers through its own states when the cache can tell them). The mixers are matched by what they
have (parameters, submodules, layout attributes), so importing this module does not import
``transformers``; a subclass or copy whose forward computes something else fails the run-time check.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .base import OperatorSet, SelectiveFactors, _StructuredMixin, register
from .torch_nn import _bind, _Captures

__all__ = [
    "MambaMixerExtractor",
    "Mamba2MixerExtractor",
    "is_selective_ssm",
    "is_ssd_mixer",
    "RECON_RTOL",
    "verify",
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
    """Every cache-like object among a call's bound arguments, including those in ``**kwargs`` and
    ``*args``, whatever keyword it came under (``cache``, ``past_key_values``, ``cache_params``, ...)."""
    vals: List[Any] = []
    for v in b.values():
        vals.extend(v.values() if isinstance(v, dict) else v if isinstance(v, (tuple, list)) else (v,))
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
    seq: List[bool] = []
    idx = layer_idx if isinstance(layer_idx, int) else None
    if idx is not None:
        try:
            seq.append(int(cache.get_seq_length(idx)) > 0)
        except Exception:  # noqa: BLE001 - not an attention layer of this cache / no such method
            pass
        if recurrent:
            fn = getattr(cache, "has_previous_state", None)
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
    # A recurrent layer answers through its own states when the cache can tell them; the key length of the
    # same layer index may belong to an attention block that ran first (Zamba2's hybrid layers).
    if not (recurrent and answers):
        answers += seq
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


class _LayerCaptures(_Captures):
    """Bookkeeping shared by the Hugging Face extractors: the ``(batch, length)`` of the captured
    call and the reason the layer cannot be analysed (a cached continuation, cross-attention, ...),
    which :meth:`_check` raises, naming the layer."""

    #: what the refusal calls the module ("layer", "attention")
    _noun = "layer"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._calls: Optional[Tuple[int, int]] = None  # (batch, length) seen by the module
        self._problem: Optional[str] = None

    def _count(self) -> int:
        return 0 if self._calls is None else self._calls[0]

    def _check(self, sample: int) -> None:
        self._check_sample(sample)
        if self._problem is not None:
            raise InvalidArgumentError(f"{self.name}: cannot analyse this {self._noun}: {self._problem}")


class _MixerBase(_LayerCaptures):
    kind = "selective_ssm"
    #: channels materialised per step (on an accelerator the step's result, chunk * L * L doubles, is
    #: built on the device and copied out)
    chunk_channels: int = 256

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._mask: Optional[torch.Tensor] = None

    def _pre(self, mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        b = _bind(mod, args, kwargs)
        hs = b["hidden_states"]
        self._calls = (int(hs.shape[0]), int(hs.shape[1]))
        self._problem = _continuation_problem(mod, b, recurrent=True)
        m = b.get("attention_mask")
        self._mask = m.detach() if isinstance(m, torch.Tensor) else None
        self._reset_captures()

    @abc.abstractmethod
    def _reset_captures(self) -> None:
        """Forget the captures of the previous call (each mixer captures its own stages)."""

    @abc.abstractmethod
    def _captured(self) -> bool:
        """Whether the projections this mixer's operators need were captured."""

    def _check(self, sample: int) -> None:
        super()._check(sample)
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


#: Largest accepted relative error (Frobenius norm over the sequence) of the run-time check of a
#: recurrent layer (factors applied to the captured input against the captured output of that stage),
#: by the dtype of the layer's output. The libraries run their scans in float32 whatever the model dtype,
#: hence float64's bound.
RECON_RTOL: Dict[torch.dtype, float] = {
    torch.float64: 1e-5,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


def rel_error(rec: torch.Tensor, ref: torch.Tensor, direct: Optional[torch.Tensor] = None) -> float:
    """``||rec - ref|| / ||ref - direct||`` in float64 (0 when both vanish): the error relative to the part of
    the output that goes through the state (``direct``: the skip term ``D u``, which would otherwise hide an
    error of the recurrence), but never relative to less than 1% of ``||ref||``."""
    rec = rec.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    den = float(torch.linalg.vector_norm(ref))
    if direct is not None:  # never below 1% of the output: rounding of the output scales with all of it
        base = ref - direct.detach().to(torch.float64).cpu()
        den = max(float(torch.linalg.vector_norm(base)), 0.01 * den)
    num = float(torch.linalg.vector_norm(rec - ref))
    if not (np.isfinite(num) and np.isfinite(den)):
        return float("inf")
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def verify(
    name: str,
    rec: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    direct: Optional[torch.Tensor] = None,
) -> float:
    """Refuse the layer ``name`` unless ``rec`` reproduces ``ref`` (the captured output of ``what``) to the
    tolerance of ``dtype``, relative to the part of ``ref`` beyond ``direct`` (see :func:`rel_error`); returns
    the relative error.

    Examples
    --------
    >>> import torch
    >>> from ess.operators.hf import verify
    >>> ref = torch.tensor([[3.0, 0.0], [0.0, 4.0]])       # the captured output, norm 5
    >>> verify("mixer", ref + 1e-6, ref, torch.float32, "scan output") < 1e-6
    True
    >>> verify("mixer", 2 * ref, ref, torch.float32, "scan output")  # off by the whole output: refused
    Traceback (most recent call last):
    ...
    ess.errors.InvalidArgumentError: mixer: refused: ... (relative error 1.00e+00 > 1e-04 for torch.float32); ...
    """
    return refuse_unless(
        name,
        rel_error(rec, ref, direct),
        RECON_RTOL,
        dtype,
        f"the extracted operators do not reproduce the layer's {what}",
        "this layer computes something the extractor does not model (a changed implementation or a custom "
        "subclass). Pass it to ess.analyze(..., jacobian=[name]) for a local linearisation instead",
    )


def refuse_unless(
    name: str, err: float, tolerances: Dict[torch.dtype, float], dtype: torch.dtype, what: str, hint: str
) -> float:
    """The run-time check of every extractor: return the relative error ``err`` when it is within the
    tolerance of ``dtype`` (``tolerances``; 5e-2 for other dtypes), else refuse the layer ``name``."""
    tol = tolerances.get(dtype, 5e-2)
    if not err <= tol:
        raise InvalidArgumentError(
            f"{name}: refused: {what} (relative error {err:.2e} > {tol:.0e} for {dtype}); {hint}"
        )
    return err


def _has(m: Any, *names: str) -> bool:
    return all(hasattr(m, n) for n in names)


def _module(m: Any, name: str) -> bool:
    return isinstance(getattr(m, name, None), torch.nn.Module)


def _param(m: Any, name: str, ndim: int) -> bool:
    p = getattr(m, name, None)
    return isinstance(p, torch.Tensor) and p.dim() == ndim


def is_selective_ssm(m: Any) -> bool:
    """A Mamba-1 style mixer (MambaMixer, FalconMambaMixer, JambaMambaMixer, renamed copies): by what it
    has: ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``out_proj``, a 2-D ``A_log`` and a ``D``.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf import is_selective_ssm
    >>> cfg = transformers.MambaConfig(vocab_size=32, hidden_size=8, state_size=4, num_hidden_layers=1)
    >>> mixer = transformers.MambaModel(cfg).layers[0].mixer
    >>> is_selective_ssm(mixer), is_selective_ssm(mixer.conv1d)
    (True, False)
    """
    return (
        isinstance(m, torch.nn.Module)
        and all(_module(m, n) for n in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"))
        and _param(m, "A_log", 2)
        and _param(m, "D", 1)
        and _has(m, "time_step_rank", "ssm_state_size", "intermediate_size")
    )


def is_ssd_mixer(m: Any) -> bool:
    """A Mamba-2 style mixer (Mamba2Mixer, BambaMixer, FalconH1Mixer, GraniteMoeHybridMambaLayer,
    Zamba2MambaMixer, NemotronHMamba2Mixer, renamed copies): ``in_proj``, ``conv1d``, ``out_proj``, a 1-D
    ``A_log`` (one decay per head), ``D``, ``dt_bias`` and the head layout attributes.

    Examples
    --------
    >>> import transformers
    >>> from ess.operators.hf import is_selective_ssm, is_ssd_mixer
    >>> cfg = transformers.Mamba2Config(vocab_size=32, hidden_size=8, state_size=4, num_heads=2, head_dim=8,
    ...                                 n_groups=1, num_hidden_layers=1)
    >>> mixer = transformers.Mamba2Model(cfg).layers[0].mixer
    >>> type(mixer).__name__, is_ssd_mixer(mixer), is_selective_ssm(mixer)   # one decay per head, not per channel
    ('Mamba2Mixer', True, False)
    """
    return (
        isinstance(m, torch.nn.Module)
        and all(_module(m, n) for n in ("in_proj", "conv1d", "out_proj"))
        and _param(m, "A_log", 1)
        and _param(m, "D", 1)
        and isinstance(getattr(m, "dt_bias", None), torch.Tensor)
        and _has(m, "num_heads", "head_dim", "n_groups", "ssm_state_size", "intermediate_size", "conv_dim")
    )


class MambaMixerExtractor(_StructuredMixin, _MixerBase):
    """Mamba-1 selective SSM (``MambaMixer`` and the mixers built like it: ``FalconMambaMixer`` and
    ``JambaMambaMixer`` with RMS norms on ``B``, ``C`` and the time step): one operator per channel,
    ``A_t = diag(exp(Delta_t[d] A[d]))``, ``b_t = Delta_t[d] B_t``, ``c_t = C_t``, ``D[d]`` on the diagonal.

    Captured: the input and output of ``x_proj`` (the convolved, activated, masked sequence ``u`` and the
    time-step/B/C projections), the outputs of the ``dt``/``b``/``c`` norms when the mixer has them, the gate
    (``in_proj``'s second half) and the input of ``out_proj``. Run-time check: the factors applied to ``u``,
    times ``silu(gate)``, must reproduce the input of ``out_proj``.

    Examples
    --------
    A one-layer Mamba with 16 inner channels and state size 4, on 6 tokens:

    >>> import torch, transformers, ess
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.MambaConfig(vocab_size=32, hidden_size=8, state_size=4, num_hidden_layers=1,
    ...                                expand=2, conv_kernel=4, time_step_rank=2)
    >>> model = transformers.MambaForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.backbone.layers[0].mixer, "backbone.layers.0.mixer")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.kind, ops.factors.transition, ops.factors.shape, ops.labels[:2]
    ('MambaMixerExtractor', 'selective_ssm', 'diagonal', (16, 6, 4), ['channel 0', 'channel 1'])
    >>> ops.check_error < 1e-4                   # the factors reproduced the scan output (float32 model)
    True
    >>> f = ops.factors
    >>> bool((ess.structured.ssm_ess(f.A, f.B, f.C, transition=f.transition) <= 4).all())  # state size bounds it
    True
    >>> ex.operators(0).operators.shape          # materialised for the dense route
    (16, 6, 6)
    """

    _NORMS = ("dt_layernorm", "b_layernorm", "c_layernorm")

    def _reset_captures(self) -> None:
        self._u: Optional[torch.Tensor] = None  # (B, L, D_inner)
        self._xo: Optional[torch.Tensor] = None  # (B, L, R + 2N)
        self._norm_out: Dict[str, torch.Tensor] = {}
        self._gate: Optional[torch.Tensor] = None
        self._y: Optional[torch.Tensor] = None

    def _captured(self) -> bool:
        return self._u is not None

    def attach(self) -> List[Any]:
        self._reset_captures()
        m = self.module
        Dn = int(m.intermediate_size)

        def on_x_proj(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._u = args[0].detach()
            self._xo = out.detach()

        def on_in_proj(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            # (a copy of the gate half: a view would hold in_proj's whole output until the analysis ends)
            self._gate = out[..., Dn : 2 * Dn].detach().clone()

        def on_out_proj(mod: Any, args: Tuple[Any, ...]) -> None:
            self._y = args[0].detach()

        hs = [
            m.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            m.x_proj.register_forward_hook(self._guard(on_x_proj)),
            m.in_proj.register_forward_hook(self._guard(on_in_proj)),
            m.out_proj.register_forward_pre_hook(self._guard(on_out_proj)),
        ]
        for nm in self._NORMS:
            sub = getattr(m, nm, None)
            if isinstance(sub, torch.nn.Module):

                def on_norm(mod: Any, args: Tuple[Any, ...], out: torch.Tensor, nm: str = nm) -> None:
                    self._norm_out[nm] = out.detach()

                hs.append(sub.register_forward_hook(self._guard(on_norm)))
        return hs

    def _dims(self) -> Tuple[int, int, int]:
        m = self.module
        L = 0 if self._calls is None else self._calls[1]
        return int(m.intermediate_size), L, int(m.ssm_state_size)

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        # native parameters (delta, B, C, A) and the check's copies (L, Dn); the kernel's
        # O(L N^2) per worker thread
        Dn, L, N = self._dims()
        return 8 * (6 * L * Dn + 2 * L * N + Dn * N) + 8 * 4 * L * N * N

    def factors(self, sample: int = 0) -> OperatorSet:
        self._check(sample)
        assert self._u is not None and self._xo is not None
        m = self.module
        f64 = torch.float64
        R, N, Dn = int(m.time_step_rank), int(m.ssm_state_size), int(m.intermediate_size)
        missing = [
            nm for nm in self._NORMS if isinstance(getattr(m, nm, None), torch.nn.Module) and nm not in self._norm_out
        ]
        if missing:
            raise InvalidArgumentError(f"{self.name}: refused: the mixer has {missing} but did not call them")
        with torch.no_grad():
            xo = self._xo[sample].to(f64).cpu()
            ts, Bm, Cm = torch.split(xo, [R, N, N], dim=-1)
            if "dt_layernorm" in self._norm_out:
                ts = self._norm_out["dt_layernorm"][sample].to(f64).cpu()
                Bm = self._norm_out["b_layernorm"][sample].to(f64).cpu()
                Cm = self._norm_out["c_layernorm"][sample].to(f64).cpu()
            w = m.dt_proj.weight.detach().to(f64).cpu()
            dt = ts @ w.T
            if m.dt_proj.bias is not None:
                dt = dt + m.dt_proj.bias.detach().to(f64).cpu()
            dt = F.softplus(dt)  # (L, Dn)
            A = -torch.exp(m.A_log.detach().to(f64).cpu())  # (Dn, N)
            D = m.D.detach().to(f64).cpu()
            # native parameters: the structured kernel forms exp(dt A), dt B, C per channel in place
            fac = SelectiveFactors(A.numpy(), dt.numpy(), Bm.numpy(), Cm.numpy(), D.numpy())
            u = self._u[sample].to(f64).cpu()  # (L, Dn)
            rec = fac.apply(u.T[:, :, None])[:, :, 0].T  # (L, Dn)
            err = None
            if self._y is not None and self._gate is not None:
                sg = F.silu(self._gate[sample].to(f64).cpu())
                rec = rec * sg
                err = verify(
                    self.name,
                    rec,
                    self._y[sample],
                    self._y.dtype,
                    "scan output (input of out_proj)",
                    direct=D[None, :] * u * sg,
                )
            else:
                raise InvalidArgumentError(
                    f"{self.name}: refused: the gate or the input of out_proj was not captured; nothing to check against"
                )
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"channel {d}" for d in range(Dn)],
            tss=[float(N)] * Dn,
            shared=None,
            note=f"Mamba selective SSM; operator on the x_proj input, output before the act(z) gate; checked (rel. err {err:.1e})",
            factors=fac,
            check_error=err,
        )


class Mamba2MixerExtractor(_StructuredMixin, _MixerBase):
    """Mamba-2 / SSD (``Mamba2Mixer`` and the mixers built like it: ``BambaMixer``, ``FalconH1Mixer`` with
    its multipliers, ``GraniteMoeHybridMambaLayer``, ``Zamba2MambaMixer``, ``NemotronHMamba2Mixer``): one
    operator per head, scalar decay ``a_t = exp(Delta_t[h] A_h)``, ``b_t = Delta_t[h] B_t``, ``c_t = C_t``
    (the head's group), shared by the head's ``head_dim`` channels.

    Captured: the output of ``in_proj`` (times ``mup_vector`` when the mixer has one), from which the causal
    convolution of ``xBC`` is recomputed from ``conv1d``'s weights (neither the torch nor the CUDA path
    calls ``conv1d`` as a module), and the scan output (the input of the gated ``norm``, or of ``out_proj``
    divided out of the ``silu(gate)`` when there is no norm). Run-time check: the factors applied to the
    convolved ``x`` reproduce it.

    Examples
    --------
    A one-layer Mamba-2 with 2 heads of 8 channels and state size 4, on 6 tokens:

    >>> import torch, transformers
    >>> from ess.operators import find_extractor
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.Mamba2Config(vocab_size=32, hidden_size=8, state_size=4, num_heads=2, head_dim=8,
    ...                                 n_groups=1, conv_kernel=4, chunk_size=4, num_hidden_layers=1)
    >>> model = transformers.Mamba2ForCausalLM(cfg).eval()
    >>> ex = find_extractor(model.backbone.layers[0].mixer, "backbone.layers.0.mixer")
    >>> with ex.capturing(), torch.no_grad():
    ...     _ = model(torch.arange(1, 7)[None], use_cache=False)
    >>> ops = ex.factors(0)
    >>> type(ex).__name__, ops.factors.transition, ops.factors.shape, ops.labels, ops.shared
    ('Mamba2MixerExtractor', 'scalar', (2, 6, 4), ['head 0', 'head 1'], [8, 8])
    >>> ops.check_error < 1e-4                   # the factors reproduced the scan output (float32 model)
    True
    >>> tuple(ex.inputs(0).shape)                # the convolved x they act on: (L, heads, head_dim)
    (6, 2, 8)
    """

    def _reset_captures(self) -> None:
        self._proj: Optional[torch.Tensor] = None  # (B, L, P) in_proj output
        self._normin: Optional[torch.Tensor] = None
        self._y: Optional[torch.Tensor] = None

    def _captured(self) -> bool:
        return self._proj is not None

    def attach(self) -> List[Any]:
        self._reset_captures()
        m = self.module

        def on_in_proj(mod: Any, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            self._proj = out.detach()

        def on_norm(mod: Any, args: Tuple[Any, ...]) -> None:
            self._normin = args[0].detach()

        def on_out_proj(mod: Any, args: Tuple[Any, ...]) -> None:
            self._y = args[0].detach()

        hs = [
            m.register_forward_pre_hook(self._guard(self._pre), with_kwargs=True),
            m.in_proj.register_forward_hook(self._guard(on_in_proj)),
            m.out_proj.register_forward_pre_hook(self._guard(on_out_proj)),
        ]
        norm = getattr(m, "norm", None)
        if isinstance(norm, torch.nn.Module) and not isinstance(norm, torch.nn.Identity):
            hs.append(norm.register_forward_pre_hook(self._guard(on_norm)))
        return hs

    def _dims(self) -> Tuple[int, int, int]:
        m = self.module
        L = 0 if self._calls is None else self._calls[1]
        return int(m.num_heads), L, int(m.ssm_state_size)

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        H, L, N = self._dims()
        P = int(self.module.head_dim)
        return 8 * H * L * (2 * N + 2) + 8 * H * L * (N * P + 2 * P) + 8 * L * int(self.module.conv_dim) * 2

    def inputs(self, sample: int = 0) -> torch.Tensor:
        """The post-convolution ``x`` (float64, ``(L, num_heads, head_dim)``) the operators act on."""
        return self._xbc(sample)[0]

    def _projection(self, sample: int) -> torch.Tensor:
        assert self._proj is not None
        proj = self._proj[sample].to(torch.float64)
        mup = getattr(self.module, "mup_vector", None)
        if isinstance(mup, torch.Tensor):
            proj = proj * mup.detach().to(proj.device, torch.float64).reshape(-1)
        return proj

    def _xbc(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(sample)
        m = self.module
        f64 = torch.float64
        H, P, G, N = int(m.num_heads), int(m.head_dim), int(m.n_groups), int(m.ssm_state_size)
        inter, conv_dim = int(m.intermediate_size), int(m.conv_dim)
        proj = self._projection(sample)  # (L, P_total)
        L = proj.shape[0]
        xbc = proj[:, -(conv_dim + H) : -H]
        dt_raw = proj[:, -H:]
        conv = m.conv1d
        k = conv.weight.shape[-1]
        y = F.conv1d(
            xbc.T.unsqueeze(0),
            conv.weight.detach().to(proj.device, f64),
            None if conv.bias is None else conv.bias.detach().to(proj.device, f64),
            padding=k - 1,
            groups=conv_dim,
        )[0, :, :L].T
        act = getattr(m, "act", None)
        y = act(y) if act is not None else F.silu(y)
        if self._mask is not None:
            y = y * self._mask[sample if self._mask.shape[0] > 1 else 0].to(y.device, f64)[:, None]
        x, Bm, Cm = torch.split(y, [inter, G * N, G * N], dim=-1)
        dt = F.softplus(dt_raw + m.dt_bias.detach().to(y.device, f64))
        lim = getattr(m, "time_step_limit", None)
        if lim is not None:
            lo, hi = lim
            dt = torch.clamp(dt, min=float(lo), max=float(hi))
        return x.reshape(L, H, P).cpu(), Bm.reshape(L, G, N).cpu(), Cm.reshape(L, G, N).cpu(), dt.cpu()

    def factors(self, sample: int = 0) -> OperatorSet:
        m = self.module
        H, P, G, N = int(m.num_heads), int(m.head_dim), int(m.n_groups), int(m.ssm_state_size)
        inter, conv_dim = int(m.intermediate_size), int(m.conv_dim)
        with torch.no_grad():
            x, Bm, Cm, dt = self._xbc(sample)
            L = dt.shape[0]
            rep = H // G
            A = -torch.exp(m.A_log.detach().to(torch.float64).cpu())  # (H,)
            D = m.D.detach().to(torch.float64).cpu()
            # native parameters for mamba2_ess (scalar decay exp(dt A) per head, dt B, C)
            fac = SelectiveFactors(
                A.numpy(),
                dt.numpy(),
                (Bm.repeat_interleave(rep, dim=1) if G > 1 else Bm[:, 0]).numpy(),  # (L, H, N) or shared (L, N)
                (Cm.repeat_interleave(rep, dim=1) if G > 1 else Cm[:, 0]).numpy(),
                D.numpy(),
                scalar=True,
            )
            rec = fac.apply(x.permute(1, 0, 2)).permute(1, 0, 2).reshape(L, H * P)
            direct = (D[None, :, None] * x).reshape(L, H * P)
            if self._normin is not None:
                err = verify(
                    self.name,
                    rec,
                    self._normin[sample],
                    self._normin.dtype,
                    "scan output (input of the gated norm)",
                    direct=direct,
                )
            elif self._y is not None:
                proj = self._projection(sample).cpu()
                sg = F.silu(proj[:, -(inter + conv_dim + H) : -(conv_dim + H)])
                err = verify(
                    self.name,
                    rec * sg,
                    self._y[sample],
                    self._y.dtype,
                    "gated scan output (input of out_proj)",
                    direct=direct * sg,
                )
            else:
                raise InvalidArgumentError(
                    f"{self.name}: refused: the scan output was not captured; nothing to check against"
                )
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=None,
            labels=[f"head {h}" for h in range(H)],
            tss=[float(N)] * H,
            shared=[P] * H,
            note=f"Mamba-2 (SSD, scalar decay per head); operator on the convolved x, output before the gated norm; checked (rel. err {err:.1e})",
            factors=fac,
            check_error=err,
        )


register(is_selective_ssm, MambaMixerExtractor)
register(is_ssd_mixer, Mamba2MixerExtractor)
