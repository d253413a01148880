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
