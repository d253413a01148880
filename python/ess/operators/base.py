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
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = ["OperatorSet", "Extractor", "register", "find_extractor", "registered"]


@dataclass
class OperatorSet:
    """The causal operators of one layer on one input sequence.

    Attributes
    ----------
    layer : qualified module name in the model (``model.named_modules()``).
    kind : layer family, e.g. ``"softmax_attention"``, ``"linear_attention"``,
        ``"gated_linear_attention"``, ``"selective_ssm"``, ``"conv"``, ``"rnn_jacobian"``.
    operators : float64 array ``(n_ops, L, L)``; operator ``i`` maps the layer's input
        sequence (per channel/head) to its output sequence, causal (lower triangular).
    labels : one label per operator, e.g. ``"head 3"`` or ``"channel 17"``.
    tss : theoretical state size of each operator (what its structure can hold: ``N``
        per SSM channel, ``d_k`` per linear-attention head, ``L`` for softmax attention, ``k-1``
        for a ``k``-tap convolution).
    shared : how many channels share each operator (all value channels of one attention
        head share one operator: it is computed once), or ``None`` for one each.
    note : caveats, e.g. ``"local linearisation (Jacobian at the given input)"``.
    """

    layer: str
    kind: str
    operators: npt.NDArray[np.float64]
    labels: List[str]
    tss: List[float]
    shared: Optional[List[int]] = None
    note: str = ""


class Extractor(abc.ABC):
    """Abstract base. Subclasses set :attr:`kind` and implement :meth:`attach`,
    :meth:`n_samples`, :meth:`operators` and :meth:`estimate_bytes`."""

    kind: str = ""

    def __init__(self, module: Any, name: str) -> None:
        self.module = module
        self.name = name

    @abc.abstractmethod
    def attach(self) -> List[Any]:
        """Install hooks on ``self.module`` (or its submodules); return their handles.

        The caller removes every handle after the forward pass, also when it raises.
        """

    @abc.abstractmethod
    def n_samples(self) -> int:
        """Number of captured batch elements."""

    @abc.abstractmethod
    def operators(self, sample: int = 0) -> OperatorSet:
        """Materialise the operators of batch element ``sample`` from the captures."""

    @abc.abstractmethod
    def estimate_bytes(self, sample: int = 0) -> int:
        """Bytes :meth:`operators` will allocate (checked against the memory budget first)."""

    def clear(self) -> None:
        """Drop the captures."""


Predicate = Callable[[Any], bool]
Factory = Callable[[Any, str], Extractor]
_REGISTRY: List[Tuple[Predicate, Factory]] = []


def register(match: Union[type, Tuple[type, ...], Predicate], factory: Factory, *, first: bool = True) -> None:
    """Register ``factory(module, name) -> Extractor`` for modules matching ``match``.

    ``match`` is a module type (or tuple of types; matched with ``isinstance``) or a
    predicate ``module -> bool``. Later registrations take precedence (``first=True``), so a
    user can override a built-in extractor.
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
    """The extractor of the first registration matching ``module``, or ``None``."""
    for pred, factory in _REGISTRY:
        if pred(module):
            return factory(module, name)
    return None


def registered() -> Sequence[Tuple[Predicate, Factory]]:
    """The registry, highest precedence first."""
    return tuple(_REGISTRY)
