"""The extractor interface: how one kind of torch module yields its sequence operators.

An :class:`Extractor` is attached to one module of a model before a forward pass. Its
hooks capture what the module needs (inputs, projections, gates; small ``(B, L, d)``
activations, never ``L x L`` matrices), and after the pass :meth:`Extractor.operators`
materialises the causal operators ``T`` (``y = T u`` along the sequence) of each head or
channel, for one batch element at a time, so that memory stays bounded by one layer.

Extractors are found through a registry keyed by predicate (usually a module type), which
users extend with :func:`register`.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "OperatorSet",
    "Factors",
    "SelectiveFactors",
    "ConvFactors",
    "Extractor",
    "register",
    "find_extractor",
    "registered",
    "keep_on_device",
    "operator_array",
]

_ON_DEVICE: "contextvars.ContextVar[bool]" = contextvars.ContextVar("ess_operators_on_device", default=False)


@contextlib.contextmanager
def keep_on_device() -> Any:
    """Inside this context, extractors that support it (the attention extractors) hand their
    :attr:`OperatorSet.operators` over as float64 torch tensors on the model's device instead of
    numpy arrays on the host (``ess.analyze`` uses it for its GPU route).

    Examples
    --------
    >>> from ess.operators.base import keep_on_device, operator_array
    >>> import torch
    >>> with keep_on_device():
    ...     type(operator_array(torch.zeros(1, 2, 2))).__name__
    'Tensor'
    >>> type(operator_array(torch.zeros(1, 2, 2))).__name__
    'ndarray'
    """
    token = _ON_DEVICE.set(True)
    try:
        yield
    finally:
        _ON_DEVICE.reset(token)


def operator_array(ops: Any) -> Any:
    """Operators ``(n, L, L)`` (a torch tensor) as :attr:`OperatorSet.operators`: a contiguous float64
    numpy array on the host, or, inside :func:`keep_on_device`, a contiguous float64 tensor on its
    own device (no copy to the host).

    Examples
    --------
    >>> import torch
    >>> from ess.operators.base import operator_array
    >>> a = operator_array(torch.ones(1, 2, 2, dtype=torch.float32))
    >>> type(a).__name__, a.dtype, a.flags["C_CONTIGUOUS"]
    ('ndarray', dtype('float64'), True)
    """
    import torch

    if _ON_DEVICE.get():
        return ops.detach().to(torch.float64).contiguous()
    return np.ascontiguousarray(ops.detach().cpu().numpy(), dtype=np.float64)


@dataclass
class Factors:
    """A state-space realisation of the operators of one layer, handed to the structured kernel
    (:func:`ess.structured.ssm_ess`) instead of dense ``L x L`` operators.

    Operator ``i``: ``T_i[t, s] = C[i, t]^T A[i, t] A[i, t-1] ... A[i, s+1] B[i, s]`` for ``s < t`` and
    ``T_i[t, t] = C[i, t]^T B[i, t] + D[i, t]`` (the diagonal enters no Hankel block; it is kept only
    for :meth:`materialize` and :meth:`apply`).

    Attributes
    ----------
    transition : ``"identity"``, ``"scalar"`` (``A`` is ``(n_ops, L)``), ``"diagonal"`` (``(n_ops, L, N)``)
        or ``"dense"`` (``(n_ops, L, N, N)``, row ``i`` column ``j`` of ``A_t`` at ``[..., t, i, j]``).
    A : transitions (``None`` for identity), float64.
    B, C : ``(n_ops, L, N)`` float64.
    D : optional ``(n_ops, L)`` direct term on the diagonal.

    Examples
    --------
    A scalar decay ``a = 0.5`` with ``N = 1`` and ``B = C = 1``: ``T[t, s] = 0.5^(t - s)``, rank one across
    every split:

    >>> import numpy as np, ess
    >>> from ess.operators.base import Factors
    >>> f = Factors("scalar", A=np.full((1, 4), 0.5), B=np.ones((1, 4, 1)), C=np.ones((1, 4, 1)))
    >>> f.shape
    (1, 4, 1)
    >>> f.materialize()[0]
    array([[1.   , 0.   , 0.   , 0.   ],
           [0.5  , 1.   , 0.   , 0.   ],
           [0.25 , 0.5  , 1.   , 0.   ],
           [0.125, 0.25 , 0.5  , 1.   ]])
    >>> f.apply(np.eye(4)[None]).numpy()[0].round(12)      # y = T u, by the recurrence
    array([[1.   , 0.   , 0.   , 0.   ],
           [0.5  , 1.   , 0.   , 0.   ],
           [0.25 , 0.5  , 1.   , 0.   ],
           [0.125, 0.25 , 0.5  , 1.   ]])
    >>> ess.structured.ssm_ess(f.A, f.B, f.C, transition=f.transition)
    array([[0., 1., 1., 1.]])
    """

    transition: str
    A: Optional[npt.NDArray[np.float64]]
    B: npt.NDArray[np.float64]
    C: npt.NDArray[np.float64]
    D: Optional[npt.NDArray[np.float64]] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        """``(n_ops, L, N)``."""
        n, L, N = self.B.shape
        return int(n), int(L), int(N)

    def nbytes(self) -> int:
        return int(sum(x.nbytes for x in (self.A, self.B, self.C, self.D) if x is not None))

    def _steps(self, torch: Any) -> Tuple[Any, Any, Any, Any]:
        f = torch.float64
        A = None if self.A is None else torch.from_numpy(np.ascontiguousarray(self.A, dtype=np.float64)).to(f)
        B = torch.from_numpy(np.ascontiguousarray(self.B, dtype=np.float64))
        C = torch.from_numpy(np.ascontiguousarray(self.C, dtype=np.float64))
        D = None if self.D is None else torch.from_numpy(np.ascontiguousarray(self.D, dtype=np.float64))
        return A, B, C, D

    def _advance(self, A: Any, h: Any, t: int) -> Any:
        """``A_t h`` for states ``h`` (n_ops, N, m)."""
        if self.transition == "identity":
            return h
        if self.transition == "scalar":
            return h * A[:, t, None, None]
        if self.transition == "diagonal":
            return h * A[:, t, :, None]
        return A[:, t] @ h

    def apply(self, u: Any) -> Any:
        """``y = T u`` for inputs ``u`` (torch or numpy, ``(n_ops, L, m)``: ``m`` channels sharing each
        operator), by the recurrence in float64 (``O(n_ops L N m)``); returns a float64 torch tensor."""
        import torch

        A, B, C, D = self._steps(torch)
        u = torch.as_tensor(u).to(torch.float64)
        n, L, N = self.shape
        m = u.shape[-1]
        h = torch.zeros(n, N, m, dtype=torch.float64)
        y = torch.empty(n, L, m, dtype=torch.float64)
        for t in range(L):
            if t > 0:
                h = self._advance(A, h, t)
            h = h + B[:, t, :, None] * u[:, t, None, :]
            y[:, t] = (C[:, t, :, None] * h).sum(1)
        if D is not None:
            y += D[:, :, None] * u
        return y

    def materialize(self) -> npt.NDArray[np.float64]:
        """The dense operators ``(n_ops, L, L)`` (float64, lower triangular)."""
        import torch

        A, B, C, D = self._steps(torch)
        n, L, N = self.shape
        out = torch.zeros(n, L, L, dtype=torch.float64)
        M = torch.zeros(n, N, L, dtype=torch.float64)  # the state of every source position
        for t in range(L):
            if t > 0:
                M[:, :, :t] = self._advance(A, M[:, :, :t], t)
            M[:, :, t] = B[:, t]
            out[:, t, : t + 1] = torch.bmm(C[:, t, None, :], M[:, :, : t + 1])[:, 0]
        if D is not None:
            out.diagonal(dim1=1, dim2=2).add_(D)
        return out.numpy()


class SelectiveFactors(Factors):
    """The factors of a selective SSM layer kept in its native parameters, the way
    :func:`ess.structured.mamba_ess` (``scalar=False``: Mamba-1, one operator per channel, diagonal
    transitions) or :func:`ess.structured.mamba2_ess` (``scalar=True``: Mamba-2 / SSD, one operator per
    head, scalar transitions) takes them: ``A_t = exp(delta[t] A)``, ``b_t = delta[t] B[t]``, ``c_t = C[t]``.

    ``ess.analyze`` hands these parameters to that kernel (:meth:`ess_curves`), which forms the factors of
    each operator in place; the ``(n_ops, L, N)`` arrays :attr:`A`, :attr:`B`, :attr:`C` of the plain
    :class:`Factors` are formed only when read (:meth:`materialize`, tests). :meth:`apply` runs the
    recurrence from the native parameters.

    Parameters
    ----------
    a : ``(n_ops, N)`` (Mamba-1) or ``(n_ops,)`` (Mamba-2) state parameters (``-exp(A_log)``), float64.
    delta : ``(L, n_ops)`` step sizes after the softplus, float64.
    b, c : ``(L, N)`` shared by all operators, or ``(L, n_ops, N)``, float64.
    d : optional ``(n_ops,)`` skip term (on the diagonal only).
    scalar : Mamba-2's scalar decay per operator.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.operators.base import SelectiveFactors
    >>> f = SelectiveFactors(-np.ones((2, 3)), np.full((5, 2), 0.1), np.ones((5, 3)), np.ones((5, 3)))
    >>> f.shape, f.transition, f.A.shape
    ((2, 5, 3), 'diagonal', (2, 5, 3))
    """

    def __init__(
        self,
        a: npt.NDArray[np.float64],
        delta: npt.NDArray[np.float64],
        b: npt.NDArray[np.float64],
        c: npt.NDArray[np.float64],
        d: Optional[npt.NDArray[np.float64]] = None,
        scalar: bool = False,
    ) -> None:
        f = np.float64
        self.a = np.ascontiguousarray(a, dtype=f)
        self.delta = np.ascontiguousarray(delta, dtype=f)
        self.b = np.ascontiguousarray(b, dtype=f)
        self.c = np.ascontiguousarray(c, dtype=f)
        self.d = None if d is None else np.ascontiguousarray(d, dtype=f)
        self.scalar = bool(scalar)
        self.transition = "scalar" if scalar else "diagonal"

    def __repr__(self) -> str:
        n, L, N = self.shape
        return f"SelectiveFactors({self.transition}, n_ops={n}, L={L}, N={N})"

    def _per_op(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``(L, N)`` or ``(L, n_ops, N)`` as ``(n_ops, L, N)`` (a broadcast view when shared)."""
        n, L, N = self.shape
        return np.broadcast_to(x[None], (n, L, N)) if x.ndim == 2 else x.transpose(1, 0, 2)

    @property
    def A(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        if self.scalar:
            return np.exp(self.delta.T * self.a[:, None])
        return np.exp(self.delta.T[:, :, None] * self.a[:, None, :])

    @property
    def B(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        return self.delta.T[:, :, None] * self._per_op(self.b)

    @property
    def C(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        return np.ascontiguousarray(self._per_op(self.c))

    @property
    def D(self) -> Optional[npt.NDArray[np.float64]]:  # type: ignore[override]  # noqa: N802
        if self.d is None:
            return None
        n, L, _ = self.shape
        return np.ascontiguousarray(np.broadcast_to(self.d[:, None], (n, L)))

    @property
    def shape(self) -> Tuple[int, int, int]:
        L, n = self.delta.shape
        return int(n), int(L), int(self.b.shape[-1])

    def nbytes(self) -> int:
        return int(sum(x.nbytes for x in (self.a, self.delta, self.b, self.c, self.d) if x is not None))

    def apply(self, u: Any) -> Any:
        """``y = T u`` for inputs ``u`` (``(n_ops, L, m)``) by the recurrence in float64, from the native
        parameters (the Rust core, operators in parallel, no ``(n_ops, L, N)`` array); returns a float64
        torch tensor on the CPU.

        Examples
        --------
        >>> import numpy as np
        >>> from ess.operators.base import SelectiveFactors
        >>> f = SelectiveFactors(-np.ones((1, 1)), np.full((3, 1), 1.0), np.ones((3, 1)), np.ones((3, 1)))
        >>> f.apply(np.ones((1, 3, 1)))[0, :, 0].numpy().round(4)   # 1, 1 + e^-1, 1 + e^-1 + e^-2
        array([1.    , 1.3679, 1.5032])
        """
        import torch

        from .. import _core

        u64 = np.ascontiguousarray(torch.as_tensor(u).detach().to("cpu", torch.float64).numpy())
        y = _core.selective_apply_f64(self.a, self.delta, self.b, self.c, self.d, u64, self.scalar)
        return torch.from_numpy(y)

    def ess_curves(
        self, method: str, atol: Optional[float], rtol: Optional[float], positions: Optional[npt.ArrayLike]
    ) -> Any:
        """The ESS curves of every operator by :func:`ess.structured.mamba_ess` (or
        :func:`~ess.structured.mamba2_ess`), which forms the factors in place."""
        from .. import structured

        fn = structured.mamba2_ess if self.scalar else structured.mamba_ess
        return fn(self.a, self.delta, self.b, self.c, method=method, atol=atol, rtol=rtol, positions=positions)


class ConvFactors(Factors):
    """Depthwise causal convolutions ``T_i[t, s] = h[i, t - s]`` for ``0 <= t - s < K`` (``h[i, 0]`` on
    the diagonal), kept as their kernels ``h`` ``(n_ops, K)``.

    ``ess.analyze`` hands the kernels to :func:`ess.structured.conv_ess` (its exact path: every Hankel
    block is a corner of one ``(K - 1) x (K - 1)`` Hankel matrix of the kernel, state ``K - 1``), through
    :meth:`ess_curves`. The arrays :attr:`A`, :attr:`B`, :attr:`C` are the shift-register realisation
    (state ``K``: the last ``K`` inputs; ``A_t`` the down-shift, ``b_t = e_0``, ``c_t = h``), broadcast views
    formed when read (:meth:`materialize`, :func:`ess.structured.ssm_ess`); :meth:`apply` convolves
    directly.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.operators.base import ConvFactors
    >>> f = ConvFactors(np.array([[1.0, 0.5, 0.25]]), 5)       # one channel, taps at lags 0, 1, 2
    >>> f.shape, f.transition
    ((1, 5, 3), 'dense')
    >>> f.materialize()[0]
    array([[1.  , 0.  , 0.  , 0.  , 0.  ],
           [0.5 , 1.  , 0.  , 0.  , 0.  ],
           [0.25, 0.5 , 1.  , 0.  , 0.  ],
           [0.  , 0.25, 0.5 , 1.  , 0.  ],
           [0.  , 0.  , 0.25, 0.5 , 1.  ]])
    >>> f.ess_curves("tolerance", None, None, None)           # rank of each Hankel block, at most K - 1 = 2
    array([[0., 1., 2., 2., 1.]])
    """

    def __init__(self, h: npt.NDArray[np.float64], L: int) -> None:
        self.h = np.ascontiguousarray(h, dtype=np.float64)
        if self.h.ndim != 2 or self.h.shape[1] < 1:
            raise ValueError(f"ConvFactors: kernels of shape (n_ops, K >= 1) expected, got {self.h.shape}")
        self.L = int(L)
        self.transition = "dense"

    def __repr__(self) -> str:
        n, L, K = self.shape
        return f"ConvFactors(n_ops={n}, L={L}, K={K})"

    @property
    def shape(self) -> Tuple[int, int, int]:
        return int(self.h.shape[0]), self.L, int(self.h.shape[1])

    @property
    def A(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        n, L, K = self.shape
        return np.broadcast_to(np.eye(K, k=-1), (n, L, K, K))

    @property
    def B(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        n, L, K = self.shape
        return np.broadcast_to(np.eye(1, K), (n, L, K))

    @property
    def C(self) -> npt.NDArray[np.float64]:  # type: ignore[override]  # noqa: N802
        n, L, K = self.shape
        return np.broadcast_to(self.h[:, None, :], (n, L, K))

    @property
    def D(self) -> Optional[npt.NDArray[np.float64]]:  # type: ignore[override]  # noqa: N802
        return None

    def nbytes(self) -> int:
        return int(self.h.nbytes)

    def materialize(self) -> npt.NDArray[np.float64]:
        """The banded Toeplitz operators ``(n_ops, L, L)`` (float64)."""
        n, L, K = self.shape
        out = np.zeros((n, L, L), dtype=np.float64)
        for j in range(min(K, L)):
            t = np.arange(j, L)
            out[:, t, t - j] = self.h[:, j : j + 1]
        return out

    def apply(self, u: Any) -> Any:
        """``y = T u`` for inputs ``u`` (``(n_ops, L, m)``): ``y[:, t] = sum_j h[:, j] u[:, t - j]`` in
        float64; returns a torch tensor."""
        import torch

        u = torch.as_tensor(u).to(torch.float64)
        h = torch.from_numpy(self.h)
        y = h[:, 0, None, None] * u
        for j in range(1, min(self.h.shape[1], self.L)):
            y[:, j:] += h[:, j, None, None] * u[:, :-j]
        return y

    def ess_curves(
        self, method: str, atol: Optional[float], rtol: Optional[float], positions: Optional[npt.ArrayLike]
    ) -> Any:
        """The ESS curves of every operator by :func:`ess.structured.conv_ess` (exact path; taps at lags
        of ``L`` or more never act and are left out)."""
        from .. import structured

        h = self.h[:, : min(self.h.shape[1], self.L)]
        return structured.conv_ess(h, self.L, path="exact", method=method, atol=atol, rtol=rtol, positions=positions)


@dataclass
class OperatorSet:
    """The causal operators of one layer on one input sequence.

    Attributes
    ----------
    layer : qualified module name in the model (``model.named_modules()``).
    kind : layer family, e.g. ``"softmax_attention"``, ``"linear_attention"``,
        ``"gated_linear_attention"``, ``"selective_ssm"``, ``"conv"``, ``"rnn_jacobian"``.
    operators : float64 array ``(n_ops, L, L)`` (a float64 torch tensor on the model's device inside
        :func:`keep_on_device`, for extractors that support it); operator ``i`` maps the layer's input
        sequence (per channel/head) to its output sequence, causal (lower triangular).
    labels : one label per operator, e.g. ``"head 3"`` or ``"channel 17"``.
    tss : theoretical state size of each operator (what its structure can hold: ``N``
        per SSM channel, ``d_k`` per linear-attention head, ``L`` for softmax attention, ``k-1``
        for a ``k``-tap convolution).
    shared : how many channels share each operator (all value channels of one attention
        head share one operator: it is computed once), or ``None`` for one each.
    note : caveats, e.g. ``"local linearisation (Jacobian at the given input)"``.
    factors : a state-space realisation (:class:`Factors`) given instead of (or besides) ``operators``;
        ``analyze`` then runs the structured kernel and never forms the operators (unless asked to).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.operators import OperatorSet
    >>> ops = OperatorSet("blocks.0.mixer", "conv", np.tril(np.ones((2, 4, 4))),
    ...                    labels=["channel 0", "channel 1"], tss=[3.0, 3.0])
    >>> ops.dense().shape, ops.shared, ops.factors is None
    ((2, 4, 4), None, True)
    """

    layer: str
    kind: str
    operators: Optional[npt.NDArray[np.float64]]
    labels: List[str]
    tss: List[float]
    shared: Optional[List[int]] = None
    note: str = ""
    factors: Optional[Factors] = None
    #: relative error of the run-time reconstruction check (``None``: not checked)
    check_error: Optional[float] = None

    def dense(self) -> npt.NDArray[np.float64]:
        """The dense operators: :attr:`operators`, or the factors materialised."""
        if self.operators is not None:
            return self.operators
        if self.factors is None:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"{self.layer}: neither operators nor factors")
        return self.factors.materialize()


class _StructuredMixin:
    """An extractor that hands over :class:`~ess.operators.base.Factors`; :meth:`operators` materialises
    them (``materialize=True`` in ``analyze``)."""

    structured = True

    def operators(self, sample: int = 0) -> OperatorSet:
        ops = self.factors(sample)  # type: ignore[attr-defined]
        ops.operators = ops.dense()
        return ops

    def estimate_bytes(self, sample: int = 0) -> int:
        n_ops, L, N = self._dims()  # type: ignore[attr-defined]
        return 8 * n_ops * L * L * 2 + self.estimate_factor_bytes(sample)

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        n_ops, L, N = self._dims()  # type: ignore[attr-defined]
        return 8 * n_ops * L * (3 * N + 1) + 8 * n_ops * L * N  # factors + the recurrence of the check


class Extractor(abc.ABC):
    """Abstract base. Subclasses set :attr:`kind` and implement :meth:`attach`,
    :meth:`n_samples`, :meth:`operators` and :meth:`estimate_bytes`.

    Examples
    --------
    A new layer type: a running sum along the sequence (``y_t = x_0 + ... + x_t`` in every channel), whose
    one operator is the lower-triangular matrix of ones. Its extractor records the input's shape in a
    forward hook and builds the operator afterwards; once registered, :func:`ess.analyze` finds it:

    >>> import numpy as np, torch, ess
    >>> from ess.operators import Extractor, OperatorSet, register
    >>> class RunningSum(torch.nn.Module):
    ...     def forward(self, x):                      # (batch, length, features)
    ...         return x.cumsum(1)
    >>> class RunningSumExtractor(Extractor):
    ...     kind = "running_sum"
    ...     def attach(self):
    ...         def hook(module, args, out):
    ...             self.shape = tuple(args[0].shape)
    ...         return [self.module.register_forward_hook(hook)]
    ...     def n_samples(self):
    ...         return self.shape[0]
    ...     def estimate_bytes(self, sample=0):
    ...         return 8 * self.shape[1] ** 2
    ...     def operators(self, sample=0):
    ...         L = self.shape[1]
    ...         return OperatorSet(self.name, self.kind, np.tril(np.ones((1, L, L))), ["all channels"], [1.0],
    ...                            shared=[self.shape[2]])
    >>> register(RunningSum, RunningSumExtractor)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), RunningSum())
    >>> report = ess.analyze(model, torch.randn(1, 6, 4), progress=False)
    >>> report.summary[["layer", "kind", "tss", "max_ess_tolerance"]]
      layer         kind  tss  max_ess_tolerance
    0     1  running_sum  1.0                1.0
    """

    kind: str = ""

    def __init__(self, module: Any, name: str) -> None:
        self.module = module
        self.name = name

    @abc.abstractmethod
    def attach(self) -> List[Any]:
        """Install hooks on ``self.module`` (or its submodules); return their handles.

        The caller removes every handle after the forward pass, also when it raises.
        """

    @contextlib.contextmanager
    def capturing(self) -> Iterator["Extractor"]:
        """Hooks attached for the duration of the ``with`` block and removed afterwards, also when the
        block raises: the protocol of :meth:`attach` in one statement.

        Examples
        --------
        >>> import torch
        >>> from ess.models.layers import ShortConv
        >>> from ess.operators import find_extractor
        >>> ex = find_extractor(ShortConv(d_model=2, kernel_size=3), "conv")
        >>> with ex.capturing(), torch.no_grad():
        ...     _ = ex.module(torch.randn(2, 5, 2))
        >>> ex.n_samples(), len(ex.module._forward_hooks)
        (2, 0)
        """
        handles = self.attach()
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @abc.abstractmethod
    def n_samples(self) -> int:
        """Number of captured batch elements."""

    @abc.abstractmethod
    def operators(self, sample: int = 0) -> OperatorSet:
        """Materialise the operators of batch element ``sample`` from the captures."""

    @abc.abstractmethod
    def estimate_bytes(self, sample: int = 0) -> int:
        """Bytes :meth:`operators` will allocate (checked against the memory budget first)."""

    def clear(self) -> None:  # noqa: B027 -- an optional hook: extractors that capture nothing keep the no-op
        """Drop the captures."""

    #: whether :meth:`factors` is implemented (the layer goes to the structured kernel)
    structured: bool = False

    def factors(self, sample: int = 0) -> OperatorSet:
        """The operators of batch element ``sample`` as a state-space realisation (``OperatorSet``
        with :attr:`OperatorSet.factors` set and ``operators`` ``None``), checked at run time."""
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"{self.name}: {type(self).__name__} has no structured form (its ``structured`` is False); use operators()"
        )

    def estimate_factor_bytes(self, sample: int = 0) -> int:
        """Bytes :meth:`factors` will allocate."""
        return 0


Predicate = Callable[[Any], bool]
Factory = Callable[[Any, str], Extractor]
_REGISTRY: List[Tuple[Predicate, Factory]] = []


def register(match: Union[type, Tuple[type, ...], Predicate], factory: Factory, *, first: bool = True) -> None:
    """Register ``factory(module, name) -> Extractor`` for modules matching ``match``.

    ``match`` is a module type (or tuple of types; matched with ``isinstance``) or a
    predicate ``module -> bool``. Later registrations take precedence (``first=True``), so a
    user can override a built-in extractor.

    Examples
    --------
    >>> import torch
    >>> from ess.operators import find_extractor, register
    >>> from ess.operators.jacobian import JacobianExtractor
    >>> class CumMax(torch.nn.Module):                 # a token mixer no extractor knows
    ...     def forward(self, x):
    ...         return x.cummax(1).values
    >>> find_extractor(CumMax(), "mixer") is None
    True
    >>> register(CumMax, JacobianExtractor)             # analyse it through its Jacobian
    >>> type(find_extractor(CumMax(), "mixer")).__name__
    'JacobianExtractor'
    """
    if isinstance(match, type) or (isinstance(match, tuple) and all(isinstance(t, type) for t in match)):
        types = match
        pred: Predicate = lambda m: isinstance(m, types)  # noqa: E731
    elif callable(match):
        pred = match
    else:
        raise TypeError(f"match must be a type, a tuple of types or a predicate, got {type(match).__name__}")
    if first:
        _REGISTRY.insert(0, (pred, factory))
    else:
        _REGISTRY.append((pred, factory))


def find_extractor(module: Any, name: str) -> Optional[Extractor]:
    """The extractor of the first registration matching ``module``, or ``None``.

    Examples
    --------
    >>> import torch
    >>> from ess.operators import find_extractor
    >>> type(find_extractor(torch.nn.MultiheadAttention(8, 2), "attn")).__name__
    'MultiheadAttentionExtractor'
    >>> find_extractor(torch.nn.LayerNorm(8), "norm") is None
    True
    """
    for pred, factory in _REGISTRY:
        if pred(module):
            return factory(module, name)
    return None


def registered() -> Sequence[Tuple[Predicate, Factory]]:
    """The registry, highest precedence first.

    Examples
    --------
    >>> import torch
    >>> from ess.operators import registered
    >>> len(registered()) > 10                      # the built-in extractors
    True
    >>> predicate, factory = registered()[-1]        # lowest precedence last
    >>> callable(predicate) and callable(factory)
    True
    """
    return tuple(_REGISTRY)
