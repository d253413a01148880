"""Type stubs of the compiled extension ``ess._core`` (checked by ``mypy.stubtest``)."""

from typing import Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

# --- dense ESS (ess.effective_state_size) ---------------------------------------------
def dense_ess_curves(
    t: npt.NDArray[np.floating],
    method: str,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[Sequence[int]] = None,
) -> Tuple[Optional[npt.NDArray[np.float64]], Optional[npt.NDArray[np.float64]]]: ...

# --- structured ESS (ess.structured) ----------------------------------------------------
def ssm_ess_curves(
    a: Optional[npt.NDArray[np.floating]],
    kind: str,
    b: npt.NDArray[np.floating],
    c: npt.NDArray[np.floating],
    method: str,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[Sequence[int]] = None,
) -> Tuple[Optional[npt.NDArray[np.float64]], Optional[npt.NDArray[np.float64]]]: ...
