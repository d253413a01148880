"""The generic Jacobian route: any token-mixing module a user names (a custom research layer: Hyena,
RetNet, ...), analysed through its input-output Jacobian at the given input.

Operator ``i`` (output feature ``i``) is ``T_i[t, s] = sum_j d y_t[i] / d u_s[j]`` at the captured input:
a **local linearisation** (exact for a layer linear in its input, a first-order picture otherwise), computed
in float64 with :mod:`torch.func` (reverse mode, ``jacrev``) through a float64 copy of the module. The
input is the first positional argument, ``(batch, length, features)``, the output the first tensor the
module returns, ``(batch, length, features)``; every other argument is passed as captured (floating tensors
in float64). The full Jacobian (``L * d_out * L * d_in`` doubles) is estimated before it is formed and
checked against the memory budget of ``analyze``.

Run-time checks: the float64 copy, called on the captured arguments, must reproduce the captured output to
the tolerance of its dtype (a module whose output depends on state that was not captured is refused), and
the Jacobian must be causal (no output depends on a later input beyond rounding).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import InvalidArgumentError, ShapeError
from .base import OperatorSet
from .hf import verify
from .torch_nn import _Captures

__all__ = ["JacobianExtractor"]


def _first_tensor(out: Any) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def _to64(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to(torch.float64)
    if isinstance(x, (tuple, list)):
        return type(x)(_to64(v) for v in x)
    if isinstance(x, dict):
        return {k: _to64(v) for k, v in x.items()}
    return x


def _row(x: Any, b: int, n: int) -> Any:
    """Batch row ``b`` of tensors whose first dimension is the batch ``n``."""
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == n:
        return x[b : b + 1]
    if isinstance(x, (tuple, list)):
        return type(x)(_row(v, b, n) for v in x)
    if isinstance(x, dict):
        return {k: _row(v, b, n) for k, v in x.items()}
    return x


class JacobianExtractor(_Captures):
    """Local linearisation of any module mapping ``(batch, L, d_in)`` to ``(batch, L, d_out)``.

    Examples
    --------
    Any causal token mixer, through the Jacobian of its output with respect to its input at the given
    input (here ``tanh`` of a running sum on one channel: its Jacobian has rank one across every split):

    >>> import torch, ess
    >>> class TanhOfSum(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.tanh(x.cumsum(1))
    >>> model = torch.nn.Sequential(torch.nn.Identity(), TanhOfSum())
    >>> x = torch.tensor([[[0.5], [-0.2], [0.1], [0.3], [-0.4]]])
    >>> report = ess.analyze(model, x, jacobian="1", progress=False)
    >>> report.summary[["layer", "kind", "max_ess_tolerance"]]
      layer      kind  max_ess_tolerance
    0     1  jacobian                1.0
    """

    kind = "jacobian"

    def __init__(self, module: Any, name: str) -> None:
        super().__init__(module, name)
        self._args: Optional[Tuple[Any, ...]] = None
        self._kwargs: Optional[Dict[str, Any]] = None
        self._out: Optional[torch.Tensor] = None

    def attach(self) -> List[Any]:
        def pre(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            if (
                not args
                or not isinstance(args[0], torch.Tensor)
                or args[0].dim() != 3
                or not args[0].is_floating_point()
            ):
                raise ShapeError("the first positional argument is not a floating (batch, length, features) tensor")
            self._args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            self._kwargs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}

        def post(mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
            y = _first_tensor(out)
            if y is None or y.dim() != 3:
                raise ShapeError("the module's first output is not a (batch, length, features) tensor")
            self._out = y.detach()

        return [
            self.module.register_forward_pre_hook(self._guard(pre), with_kwargs=True),
            self.module.register_forward_hook(self._guard(post), with_kwargs=True),
        ]

    def _count(self) -> int:
        return 0 if self._args is None else int(self._args[0].shape[0])

    def clear(self) -> None:
        self._capture_error = None
        self._args = self._kwargs = None
        self._out = None

    def estimate_bytes(self, sample: int = 0) -> int:
        if self._args is None or self._out is None:
            return 0
        _, L, d_in = self._args[0].shape
        d_out = int(self._out.shape[-1])
        # the full Jacobian, and the operators
        return 8 * int(L) * int(L) * (int(d_in) * d_out + d_out)

    def operators(self, sample: int = 0) -> OperatorSet:
        self._check_sample(sample)
        assert self._args is not None and self._kwargs is not None
        if self._out is None:
            raise InvalidArgumentError(f"{self.name}: the module's output was not captured")
        m = self.module
        n = int(self._args[0].shape[0])
        work = copy.deepcopy(m).to(torch.float64)
        for sub in work.modules():
            sub._forward_pre_hooks.clear()
            sub._forward_hooks.clear()
            sub._forward_hooks_with_kwargs.clear() if hasattr(sub, "_forward_hooks_with_kwargs") else None
        work.eval()
        dev = self._args[0].device
        work = work.to(dev)
        args = _to64(_row(self._args, sample, n))
        kwargs = _to64(_row(self._kwargs, sample, n))
        u = args[0]

        def f(x: torch.Tensor) -> torch.Tensor:
            y = _first_tensor(work(x, *args[1:], **kwargs))
            assert y is not None
            return y[0]

        with torch.no_grad():
            y0 = f(u)
        err = verify(
            self.name, y0, self._out[sample], self._out.dtype, "output (float64 copy on the captured arguments)"
        )
        from torch.func import jacrev

        with torch.enable_grad():
            J = jacrev(f)(u)  # (L, d_out, 1, L, d_in)
        J = J.detach()[:, :, 0]  # (L, d_out, L, d_in)
        L = J.shape[0]
        ops = J.sum(-1).permute(1, 0, 2).contiguous()  # (d_out, L, L): T_i[t, s]
        upper = torch.triu(J.abs().sum((1, 3)), diagonal=1)
        scale = float(J.abs().max()) if J.numel() else 0.0
        if float(upper.max()) > 1e-10 * max(scale, 1e-300):
            raise InvalidArgumentError(
                f"{self.name}: refused: its Jacobian is not causal (an output depends on a later input); ESS needs a "
                "causal token mixer"
            )
        d_out = ops.shape[0]
        return OperatorSet(
            layer=self.name,
            kind=self.kind,
            operators=ops.cpu().numpy(),
            labels=[f"feature {i}" for i in range(d_out)],
            tss=[float(L)] * d_out,
            shared=None,
            note=(
                f"local linearisation: Jacobian d y_t[i] / d u_s summed over input features, at the given input, "
                f"float64; checked (rel. err {err:.1e})"
            ),
            check_error=err,
        )
