"""Type stubs of the compiled extension ``ess._core`` (checked by ``mypy.stubtest``)."""

from typing import Optional, Sequence, Tuple, Union

from typing_extensions import final

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
def _dense_matmul_probe_seconds(n: int) -> float: ...

# --- randomised low-rank Hankel factorisation (fast path of ess.conv_ess) --------------
def hankel_lowrank(
    g: npt.NDArray[np.float64], accuracy: float, max_rank: int, seed: int, stream: int
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float]: ...

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
def mamba_ess_curves(
    a: npt.NDArray[np.float64],
    delta: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    single: bool,
    method: str,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    positions: Optional[Sequence[int]] = None,
) -> Tuple[Optional[npt.NDArray[np.float64]], Optional[npt.NDArray[np.float64]]]: ...
def selective_apply_f64(
    a: npt.NDArray[np.float64],
    delta: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    d: Optional[npt.NDArray[np.float64]],
    u: npt.NDArray[np.float64],
    scalar: bool,
) -> npt.NDArray[np.float64]: ...

# --- markov (ess.markov) ------------------------------------------------------------------
# A chain is a float64 (n, n) array or the CSR tuple (n, indptr, indices, data) with int32 or
# int64 index arrays (same dtype) and float64 data.
_Chain = Union[
    npt.NDArray[np.float64], Tuple[int, npt.NDArray[np.integer], npt.NDArray[np.integer], npt.NDArray[np.float64]]
]

def markov_hitting_times(p: _Chain, target: Sequence[int], method: str = "auto") -> npt.NDArray[np.float64]: ...
def markov_absorption(
    p: _Chain, labels: Sequence[int], nsets: int, method: str = "auto"
) -> npt.NDArray[np.float64]: ...
def markov_committor(
    p: _Chain, a: Sequence[int], b: Sequence[int], backward: bool = False, method: str = "auto"
) -> npt.NDArray[np.float64]: ...
def markov_stationary(p: _Chain) -> npt.NDArray[np.float64]: ...
def markov_mfpt(p: _Chain) -> npt.NDArray[np.float64]: ...
def markov_kemeny(p: _Chain) -> float: ...
def markov_classes(p: _Chain, threshold: float = 0.0) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int]: ...
def markov_ccmc_simulate(
    p: npt.NDArray[np.float64],
    prompt: Sequence[int],
    n_traj: int,
    n_steps: int,
    seed: int,
    position_weights: Optional[Sequence[float]] = None,
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...

# --- graphs: SCC, condensation, token-priority graphs (ess.graph) ----------------------

def graph_scc(
    src: npt.NDArray[np.integer], dst: npt.NDArray[np.integer], n_nodes: int, algorithm: str = "auto"
) -> Tuple[int, npt.NDArray[np.int32]]: ...
def graph_condensation(
    src: npt.NDArray[np.integer], dst: npt.NDArray[np.integer], n_nodes: int, algorithm: str = "auto"
) -> GraphCondensation: ...
def graph_token_priority(
    tokens: npt.NDArray[np.integer],
    offsets: npt.NDArray[np.integer],
    labels: npt.NDArray[np.integer],
    vocab_size: int,
    allow_unrealisable: bool,
) -> TokenPriorityGraphs: ...

@final
class GraphCondensation:
    @property
    def n_components(self) -> int: ...
    @property
    def labels(self) -> npt.NDArray[np.int32]: ...
    @property
    def sizes(self) -> npt.NDArray[np.int64]: ...
    @property
    def dag_indptr(self) -> npt.NDArray[np.int64]: ...
    @property
    def dag_indices(self) -> npt.NDArray[np.int64]: ...
    def reaches(self, a: Sequence[int], b: Sequence[int]) -> npt.NDArray[np.bool_]: ...

@final
class TokenPriorityGraphs:
    @property
    def vocab_size(self) -> int: ...
    @property
    def last_tokens(self) -> npt.NDArray[np.int64]: ...
    @property
    def unrealisable(self) -> npt.NDArray[np.int64]: ...
    def graph(
        self, k: int
    ) -> Optional[
        Tuple[
            int,
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
        ]
    ]: ...
    def summary(self) -> npt.NDArray[np.int64]: ...
    def scc_size_counts(self) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def retrieve(
        self, tokens: npt.NDArray[np.integer], offsets: npt.NDArray[np.integer]
    ) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...
    def svm_one_hot(self) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
    def svm_embedded(self, e: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]: ...
    def reaches(self, k: int, a: Sequence[int], b: Sequence[int]) -> npt.NDArray[np.bool_]: ...
