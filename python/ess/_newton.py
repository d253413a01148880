"""The package's one Newton solver: damped Newton with a backtracking line search.

Used by the two convex fits of attention weights, :meth:`ess.graph.TokenPriorityGraphs.finite_component`
and :func:`ess.markov.fit_attention_mle`. Steps solve ``H d = -g`` in the least-squares sense
(``numpy.linalg.lstsq``), so a singular Hessian (a flat direction of the loss) gives the
minimum-norm step and the iterates stay in the row space of ``H``. The stopping rule is the
Newton decrement: the iteration stops when ``lambda^2 = -g^T d <= 2 tol``, i.e. when the
quadratic model predicts a further decrease of at most ``tol``.

References
----------
S. Boyd, L. Vandenberghe, *Convex Optimization*, Cambridge University Press 2004, section 9.5
(Newton's method, the Newton decrement, backtracking line search).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .errors import NumericalError

Array = npt.NDArray[np.float64]
#: ``x -> (f(x), gradient, Hessian)``
Objective = Callable[[Array], Tuple[float, Array, Array]]


def minimize(
    fgh: Objective,
    x0: Array,
    *,
    tol: float,
    max_iter: int,
    name: str,
    diverge_norm: Optional[float] = None,
    armijo: float = 0.25,
) -> Tuple[Array, bool]:
    """Minimise a smooth convex function from ``x0``; returns ``(x, converged)``.

    ``armijo`` is the fraction of the predicted decrease a step must achieve (the step is
    halved until it does, down to ``1e-10``). With ``diverge_norm`` set, an iterate of larger
    norm raises :class:`NumericalError` naming ``name`` (the loss has no finite minimiser).

    Examples
    --------
    >>> import numpy as np
    >>> from ess._newton import minimize
    >>> A = np.array([[2.0, 0.0], [0.0, 0.0]])        # flat in the second coordinate
    >>> x, ok = minimize(lambda x: (0.5 * x @ A @ x - x[0], A @ x - [1.0, 0.0], A), np.zeros(2),
    ...                  tol=1e-12, max_iter=10, name="demo")
    >>> x.round(12), ok
    (array([0.5, 0. ]), True)
    """
    x = np.asarray(x0, dtype=np.float64)
    f, g, H = fgh(x)
    for _ in range(max_iter):
        step = -np.linalg.lstsq(H, g, rcond=1e-12)[0]
        dec = float(-g @ step)
        if dec <= 2 * tol:
            return x, True
        t = 1.0
        while True:
            f2, g2, H2 = fgh(x + t * step)
            if f2 <= f - armijo * t * dec or t < 1e-10:
                break
            t *= 0.5
        x = x + t * step
        f, g, H = f2, g2, H2
        if diverge_norm is not None and np.linalg.norm(x) > diverge_norm:
            raise NumericalError(f"{name}: the fit diverges (no finite minimiser)")
    return x, False
