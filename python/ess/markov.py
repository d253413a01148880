"""Markov chains: hitting times, committors, stationary distributions, metastability, CCMC.

Conventions
-----------
* ``P`` is a row-stochastic transition matrix: ``P[i, j]`` is the probability of the step
  ``i -> j``. It may be a dense array ``(n, n)`` or a ``scipy.sparse`` matrix/array (CSR is
  read zero-copy; other formats are converted to CSR once). Values are used as float64
  (other real dtypes are converted; complex or object arrays raise :class:`DTypeError`).
* Validation (once, at the boundary): finite (:class:`NonFiniteError`), non-negative and
  every row summing to 1 within ``ROW_SUM_TOL = 1e-9`` absolute
  (:class:`NotStochasticError`; a sparse row with no entries is reported as such: an
  absorbing state needs an explicit ``P[i, i] = 1``). States are numbered ``0..n-1``.
* The default ``method="auto"`` (= ``"gth"``) paths treat the *off-diagonal* entries as
  the data: ``P[i, i]`` is implied as ``1 - sum_{j != i} P[i, j]`` and never subtracted.
* Hitting time of a set ``A``: ``h = 0`` on ``A`` and ``h = 1 + P h`` elsewhere, i.e. the
  expected number of steps to reach ``A`` (``T_A = min{t >= 0: X_t in A}``). ``h[i] = inf``
  exactly where ``A`` is reached with probability < 1 from ``i`` (decided on the graph, not
  by a threshold).

Algorithms (which path runs when)
---------------------------------
* ``method="auto"`` runs GTH: in ``benches/markov.py`` GTH is as fast as or faster than the
  LU path on the large well-conditioned chains (banded ring at 1e5/1e6 states, random
  sparse at 1e4) and it is the only one that stays accurate on metastable chains, so
  nothing is gained by switching automatically.
* ``method="gth"``: subtraction-free state reduction
  (Grassmann-Taksar-Heyman elimination). Eliminating a state censors it out of the chain;
  every pivot is a sum of off-diagonal probabilities plus the mass leaving the reduced set,
  and every update adds products of non-negative numbers. Results are accurate *entrywise*
  to a modest multiple of machine precision, independent of how rare the rare transitions
  are (tested to ``rtol 1e-12`` against 60-digit mpmath on chains with ``eps`` down to
  ``1e-15``, where ``numpy.linalg.solve(I - Q, 1)`` is wrong from the 2nd to 5th digit).
  Three engines, chosen per call on the reduced set of states (same arithmetic, different
  order and storage):

  - *dense*: dense input with more than 10% non-zeros (or at most 256 states). A recursive
    dense elimination whose updates are non-negative triangular solves and matrix products
    (faer GEMM, all ``RAYON_NUM_THREADS`` threads); the pivots see the columns not yet
    updated through one aggregated exit column, so they stay sums of positives.
  - *banded*: sparse input (or dense input with at most 10% non-zeros and more than 256
    states) whose pattern fits a narrow band ``-bl <= pos(j) - pos(i) <= bu`` in the
    natural order or in a reverse Cuthill-McKee order of ``P + P^T`` (rings, paths,
    birth-death and other nearest-neighbour chains, thin grids), when ``bl * bu <= 1600``
    and the band needs at most ~16x the memory of the input: the band is stored densely and
    eliminated in place, ``O(n bl bu)`` time with no fill-in bookkeeping.
  - *cyclic band* (stationary distribution only): sparse input whose positive
    off-diagonal entries all have ``|i - j| <= b`` or ``|i - j| >= n - b`` with
    ``b <= 24`` (rings and other periodic nearest-neighbour chains, plain banded chains)
    and ``n >= 4 b + 4``. The natural order with the last ``b`` states as a border; rows
    stream from the CSR input through a window of ``b + 1`` rows, ``O(n b^2)`` time, no
    reordering and no copy of the matrix. Runs before the closed-class analysis: when every
    pivot is positive there is exactly one closed class and the result is final; a zero
    pivot hands the chain to the general route below.
  - *sparse*: otherwise, a sparse elimination in an approximate-minimum-degree order
    (faer's AMD) with dynamic fill-in, switching to the dense engine once the remaining
    matrix is more than ~8% full.
* ``method="lu"``: faer's sparse LU with partial pivoting on ``D - Q`` (``D`` = the same
  subtraction-free diagonal). Use it for large, well-conditioned chains (no probabilities
  far below ``1e-8``) when it is faster; it subtracts and loses about ``log10(1/eps)``
  digits on metastable chains. Stationary distributions, all-pairs first-passage times and
  the Kemeny constant always use GTH.

References
----------
* W. K. Grassmann, M. I. Taksar, D. P. Heyman, "Regenerative analysis and steady state
  distributions for Markov chains", Operations Research (1985), pp. 1107-1116 (GTH: state
  reduction without subtraction).
* M. E. Ildiz, Y. Huang, Y. Li, A. S. Rawat, S. Oymak, "From Self-Attention to Markov Models:
  Unveiling the Dynamics of Generative Transformers", ICML 2024, PMLR 235:20955-20982 (the CCMC
  functions re-exported here from :mod:`ess.ccmc`).
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from . import _args, _core
from .errors import DTypeError, InvalidArgumentError, ShapeError

__all__ = [
    "ROW_SUM_TOL",
    "hitting_times",
    "mean_first_passage_times",
    "stationary_distribution",
    "committor",
    "absorption_probabilities",
    "communication_classes",
    "closed_classes",
    "transient_states",
    "kemeny_constant",
    "MetastableDecomposition",
    "metastable_decomposition",
    "metastable_chain",
    # CCMC (re-exported from ess.ccmc)
    "base_chain",
    "ccmc_transition",
    "simulate_ccmc",
    "CCMCSimulation",
    "fit_attention_mle",
    "identifiability",
    "IdentifiabilityReport",
]

ROW_SUM_TOL = 1e-9
"""Absolute tolerance on the row sums of a transition matrix."""

ChainLike = Any  # numpy array (n, n) or scipy.sparse matrix / array


def _is_sparse(P: Any) -> bool:
    return type(P).__module__.startswith("scipy.sparse")


def _as_float64(a: Any, arg: str) -> npt.NDArray[np.float64]:
    a = _args.array(a, arg, kinds="fiubc")
    if a.dtype.kind not in "fiub":
        raise DTypeError(f"{arg}: dtype {a.dtype} is not supported; pass a real (float64) matrix")
    return np.ascontiguousarray(a, dtype=np.float64)


def _chain(P: ChainLike) -> Any:
    """The chain argument of ``ess._core``: a float64 2-D array or ``(n, indptr, indices, data)``."""
    if _is_sparse(P):
        if P.ndim != 2 or P.shape[0] != P.shape[1]:
            raise ShapeError(f"P: must be square (n, n), got shape {P.shape}")
        if P.format != "csr":
            P = P.tocsr()
        indptr, indices = P.indptr, P.indices
        if indptr.dtype != indices.dtype or indptr.dtype not in (np.int32, np.int64):
            indptr = indptr.astype(np.int64)
            indices = indices.astype(np.int64)
        return (int(P.shape[0]), indptr, indices, _as_float64(P.data, "P.data"))
    a = _as_float64(P, "P")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ShapeError(f"P: must be a square 2-D matrix (n, n), got shape {a.shape}")
    return a


def _ids(x: Any, arg: str) -> List[int]:
    a = _args.array(x, arg, kinds="iufbSUO")
    if a.ndim == 0:
        a = a.reshape(1)
    if a.size and a.dtype.kind not in "iu":
        raise DTypeError(f"{arg}: state indices must be integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ShapeError(f"{arg}: must be a 1-D sequence of state indices, got shape {a.shape}")
    return [int(v) for v in a]


def _method(method: str) -> str:
    return _args.choice(method, "method", ("auto", "gth", "lu"))


def hitting_times(P: ChainLike, target: Any, *, method: str = "auto") -> npt.NDArray[np.float64]:
    """Expected number of steps to reach ``target`` from every state.

    Parameters
    ----------
    P : array (n, n) or scipy.sparse matrix
        Row-stochastic transition matrix (see the module conventions).
    target : int or 1-D int array
        The target set ``A`` (non-empty; duplicates allowed).
    method : {"auto", "gth", "lu"}
        Solver path, see the module docstring. ``"auto"`` is GTH.

    Returns
    -------
    float64 array (n,)
        ``h[i] = E_i[T_A]``; 0 on ``A``; ``inf`` where ``A`` is reached with probability
        less than one (e.g. ``i`` can enter a closed class that misses ``A``).

    Raises
    ------
    InvalidArgumentError (empty target), OutOfRangeError (index outside ``[0, n)``),
    NotStochasticError, NonFiniteError, ShapeError, DTypeError.

    Examples
    --------
    A fair random walk on ``0..4`` absorbed at ``4`` (lazy at ``0``): ``h[i] = 20 - i (i + 1)``.

    >>> import numpy as np
    >>> from ess.markov import hitting_times
    >>> P = np.array([[0.5, 0.5, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0, 0.5, 0, 0.5, 0],
    ...               [0, 0, 0.5, 0, 0.5], [0, 0, 0, 0, 1.0]])
    >>> hitting_times(P, 4).round(12)
    array([20., 18., 14.,  8.,  0.])
    """
    return _core.markov_hitting_times(_chain(P), _ids(target, "target"), _method(method))


def mean_first_passage_times(P: ChainLike) -> npt.NDArray[np.float64]:
    """All-pairs mean first-passage times ``M[i, j] = E_i[T_j]`` (dense ``(n, n)``).

    ``M[i, i] = 0`` (first passage at ``t >= 0``; the mean *return* time is
    ``1 / pi_i``, Kac's formula). ``inf`` where ``j`` is not reached with probability one.
    For an irreducible chain the whole matrix comes from one recursive GTH censoring
    (``O(n^3)``, subtraction-free, both halves in parallel); for a reducible chain one GTH
    solve per target runs (``O(n)`` solves, in parallel). ``n`` is limited to 20000
    (:class:`TooLargeError`).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import mean_first_passage_times
    >>> mean_first_passage_times(np.array([[0.9, 0.1], [0.2, 0.8]])).round(12)
    array([[ 0., 10.],
           [ 5.,  0.]])
    """
    return _core.markov_mfpt(_chain(P))


def stationary_distribution(P: ChainLike) -> npt.NDArray[np.float64]:
    """Stationary distribution ``pi`` (``pi P = pi``, ``sum(pi) = 1``) by GTH.

    Requires exactly one closed communicating class (otherwise the distribution is not
    unique and :class:`InvalidArgumentError` is raised); transient states get exactly 0.
    Entrywise accurate in the relative sense, also when ``pi`` spans 50+ decades.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import stationary_distribution
    >>> stationary_distribution(np.array([[0.9, 0.1], [0.2, 0.8]])).round(12)
    array([0.66666667, 0.33333333])
    """
    return _core.markov_stationary(_chain(P))


def committor(P: ChainLike, A: Any, B: Any, *, backward: bool = False, method: str = "auto") -> npt.NDArray[np.float64]:
    """Committor between disjoint sets ``A`` and ``B``.

    Forward (default): ``q+[i] = P_i(hit B before A)``, 0 on ``A``, 1 on ``B``; states that
    can reach neither set get 0. Backward (``backward=True``): ``q-[i]`` = probability
    that the stationary process, arriving at ``i``, came last from ``A`` rather than ``B``
    (1 on ``A``, 0 on ``B``), computed as the forward committor ``B -> A`` of the
    time-reversed chain ``pi_j P[j, i] / pi_i``; needs an irreducible chain. For reversible
    chains ``q- = 1 - q+``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import committor
    >>> P = np.array([[0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 0.5, 0.5]])
    >>> committor(P, A=[0], B=[3]).round(12)
    array([0.        , 0.33333333, 0.66666667, 1.        ])
    >>> committor(P, A=[0], B=[3], backward=True).round(12)
    array([1.        , 0.66666667, 0.33333333, 0.        ])
    """
    return _core.markov_committor(
        _chain(P), _ids(A, "A"), _ids(B, "B"), _args.boolean(backward, "backward"), _method(method)
    )


def absorption_probabilities(P: ChainLike, sets: Sequence[Any], *, method: str = "auto") -> npt.NDArray[np.float64]:
    """Probabilities of entering each of the disjoint ``sets`` first.

    Returns ``(n, len(sets))``: ``out[i, s] = P_i(the first set entered is sets[s])``.
    Rows of states inside a set are unit vectors. A row sums to less than one where the
    chain can avoid every set forever (a closed class disjoint from all sets).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import absorption_probabilities
    >>> P = np.array([[1.0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 0, 1.0]])
    >>> absorption_probabilities(P, [[0], [3]]).round(12)
    array([[1.        , 0.        ],
           [0.66666667, 0.33333333],
           [0.33333333, 0.66666667],
           [0.        , 1.        ]])
    """
    if isinstance(sets, np.ndarray) and sets.ndim == 1:
        sets = [sets]
    if isinstance(sets, (str, bytes)) or not isinstance(sets, (Sequence, np.ndarray)):
        raise DTypeError(f"sets: expected a sequence of state-id arrays, got {type(sets).__name__}")
    Pc = _chain(P)
    n = Pc[0] if isinstance(Pc, tuple) else Pc.shape[0]
    if len(sets) == 0:
        raise InvalidArgumentError("sets: at least one set is required")
    labels = np.full(n, -1, dtype=np.int64)
    for s, members in enumerate(sets):
        ids = _ids(members, f"sets[{s}]")
        for i in ids:
            if i < 0 or i >= n:
                from .errors import OutOfRangeError

                raise OutOfRangeError(f"sets[{s}]: state {i} is outside [0, {n})")
            if labels[i] not in (-1, s):
                raise InvalidArgumentError(f"sets[{s}]: state {i} is also in sets[{labels[i]}]; sets must be disjoint")
            labels[i] = s
    return _core.markov_absorption(Pc, labels.tolist(), len(sets), _method(method))


def communication_classes(
    P: ChainLike, *, threshold: float = 0.0
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Communicating classes (strongly connected components of the transition graph).

    The graph has an edge ``i -> j`` (``i != j``) where ``P[i, j] > threshold``. Returns
    ``(labels, closed)``: ``labels[i]`` is the class of state ``i`` (numbered in reverse
    topological order of the condensation: classes reachable from a class have smaller
    labels) and ``closed[c]`` says whether no edge leaves class ``c``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import communication_classes
    >>> P = np.array([[0.5, 0.5, 0], [0.5, 0.25, 0.25], [0, 0, 1.0]])
    >>> communication_classes(P)
    (array([1, 1, 0]), array([ True, False]))
    """
    lab, closed, _k = _core.markov_classes(_chain(P), _args.real(threshold, "threshold", lo=0.0))
    return lab, closed


def closed_classes(P: ChainLike) -> List[npt.NDArray[np.int64]]:
    """The closed (recurrent) classes, each a sorted array of states, ordered by smallest state.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import closed_classes
    >>> P = np.array([[1.0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 0, 1.0]])
    >>> closed_classes(P)
    [array([0]), array([3])]
    """
    lab, closed = communication_classes(P)
    out = [np.flatnonzero(lab == c) for c in np.flatnonzero(closed)]
    return sorted(out, key=lambda a: int(a[0]))


def transient_states(P: ChainLike) -> npt.NDArray[np.int64]:
    """States outside every closed class (sorted).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import transient_states
    >>> P = np.array([[1.0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 0, 1.0]])
    >>> transient_states(P)
    array([1, 2])
    """
    lab, closed = communication_classes(P)
    return np.flatnonzero(~closed[lab])


def kemeny_constant(P: ChainLike) -> float:
    """Kemeny constant ``K = sum_j pi_j M[i, j]`` (independent of ``i``), irreducible chains.

    With the convention ``M[i, i] = 0`` used here, ``K = sum_{k >= 2} 1 / (1 - lambda_k)``.
    Computed from :func:`mean_first_passage_times` and :func:`stationary_distribution`
    (both GTH), so ``O(n^3)`` and dense.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import kemeny_constant
    >>> round(kemeny_constant(np.array([[0.9, 0.1], [0.2, 0.8]])), 12)
    3.333333333333
    """
    return float(_core.markov_kemeny(_chain(P)))


class MetastableDecomposition(NamedTuple):
    """Result of :func:`metastable_decomposition`.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import metastable_decomposition
    >>> P = np.array([[0.5, 0.5 - 1e-8, 1e-8, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    >>> metastable_decomposition(P)   # the 1e-8 edge is rare: two basins
    MetastableDecomposition(labels=array([0, 0, 1, 1]), n_clusters=2, threshold=7.07...e-05, closed=array([ True,  True]))
    """

    labels: npt.NDArray[np.int64]
    """Cluster of each state, ``0..n_clusters-1`` (ordered by smallest member state)."""
    n_clusters: int
    threshold: float
    """Edges with ``P[i, j] <= threshold`` were treated as rare."""
    closed: npt.NDArray[np.bool_]
    """Per cluster: no non-rare edge leaves it (a metastable basin, not a transit region)."""


def metastable_decomposition(P: ChainLike, *, threshold: Optional[float] = None) -> MetastableDecomposition:
    """Clusters of a metastable chain: communicating classes once rare edges are cut.

    Method (rare-edge cut): drop every transition with ``P[i, j] <= threshold`` and take the
    strongly connected components of what remains. This is the ``eps -> 0`` limit of a
    nearly completely decomposable chain (Simon-Ando aggregation): when the transitions
    fall into "ordinary" probabilities and rare ones separated by many orders of magnitude,
    the clusters of the limit chain are exactly the metastable sets, and the decomposition
    is exact and combinatorial (no eigenvectors, so it works at ``eps = 1e-15`` where
    spectral methods such as PCCA+ cannot resolve the gap, and scales linearly to 1e6
    states). ``closed`` marks the basins (no ordinary edge out). It is not the right tool
    for chains without a scale separation; there use a spectral method.

    ``threshold=None`` picks it automatically: the geometric midpoint of the widest gap
    (in ``log10``) between the distinct off-diagonal probabilities, provided that gap spans
    at least two decades; otherwise no edge is rare (``threshold = 0``).

    Examples
    --------
    >>> from ess.markov import metastable_chain, metastable_decomposition
    >>> d = metastable_decomposition(metastable_chain(3, 4, eps=1e-9, seed=0))
    >>> d.n_clusters, d.labels
    (3, array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]))
    >>> d.closed, f"{d.threshold:.0e}"
    (array([ True,  True,  True]), '1e-05')
    """
    Pc = _chain(P)
    threshold = _args.real(threshold, "threshold", lo=0.0, allow_none=True)
    if threshold is None:
        if isinstance(Pc, tuple):
            n, indptr, indices, data = Pc
            rows = np.repeat(np.arange(n), np.diff(indptr))
            vals = data[(rows != indices) & (data > 0)]
        else:
            mask = ~np.eye(Pc.shape[0], dtype=bool) & (Pc > 0)
            vals = Pc[mask]
        threshold = 0.0
        if vals.size:
            lv = np.unique(np.log10(vals))
            if lv.size >= 2:
                gaps = np.diff(lv)
                g = int(np.argmax(gaps))
                if gaps[g] >= 2.0:
                    threshold = float(10 ** (0.5 * (lv[g] + lv[g + 1])))
    threshold = float(threshold)
    lab, closed, k = _core.markov_classes(Pc, threshold)
    # renumber by smallest member state
    first = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first, lab, np.arange(lab.size))
    order = np.argsort(first)
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return MetastableDecomposition(remap[lab], int(k), threshold, closed[order])


def metastable_chain(
    n_clusters: int,
    cluster_size: int,
    *,
    degree: int = 3,
    eps: float = 1e-6,
    eps_back: Optional[float] = None,
    seed: Optional[int] = None,
    sparse: bool = False,
) -> Any:
    """A metastable chain-of-thought chain: ``n_clusters`` clusters of ``cluster_size`` states.

    Inside a cluster each state steps to its ring successor and to ``degree - 1`` other
    random members (so every cluster is strongly connected), with random weights. Rare
    edges: the last state of cluster ``c`` steps to the first state of cluster ``c + 1`` with
    probability ``eps`` ("a hard reasoning step"), and the first state of cluster ``c + 1``
    steps back to the last state of cluster ``c`` with probability ``eps_back`` (default
    ``eps``; ``0`` makes the last cluster absorbing). State ``i`` of cluster ``c`` is
    ``c * cluster_size + i``. The hitting time of the last cluster from state 0 grows like
    ``1 / eps``. Returns a dense float64 array, or ``scipy.sparse.csr_array`` when
    ``sparse=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.markov import hitting_times, metastable_chain
    >>> P = metastable_chain(3, 4, eps=1e-6, seed=0)
    >>> P.shape, float(P[3, 4]), bool(np.allclose(P.sum(axis=1), 1))
    ((12, 12), 1e-06, True)
    >>> f"{hitting_times(P, list(range(8, 12)))[0]:.2e}"   # grows like 1 / eps
    '1.22e+07'
    >>> metastable_chain(3, 4, seed=0, sparse=True).nnz
    40
    """
    K = _args.integer(n_clusters, "n_clusters", lo=1)
    M = _args.integer(cluster_size, "cluster_size", lo=2)
    degree = _args.integer(degree, "degree", lo=1, hi=M - 1)
    eps = _args.real(eps, "eps")
    eb = eps if eps_back is None else _args.real(eps_back, "eps_back")
    if not 0 < eps < 1:
        raise InvalidArgumentError(f"eps: must be in (0, 1), got {eps}")
    if not 0 <= eb < 1:
        raise InvalidArgumentError(f"eps_back: must be in [0, 1), got {eb}")
    seed = None if seed is None else _args.integer(seed, "seed", lo=0, hi=2**64 - 1)
    sparse = _args.boolean(sparse, "sparse")
    # built state by state in Python: dense needs (K M)^2 floats, sparse about K M degree entries
    size_arg = "n_clusters" if K >= M else "cluster_size"
    _args.gate(
        size_arg,
        float(K * M) * (degree + 2) * 24 + (0 if sparse else float(K * M) ** 2 * 8),
        f"a chain of {K} x {M} states",
    )
    if K * M > 10**7:
        from .errors import TooLargeError

        raise TooLargeError(f"{size_arg}: {K} x {M} = {K * M} states is beyond this generator (at most 1e7 states)")
    rng = np.random.default_rng(seed)
    n = K * M
    rows: List[int] = []
    cols: List[int] = []
    vals: List[float] = []
    for c in range(K):
        for i in range(M):
            s = c * M + i
            others = [j for j in range(M) if j != i and j != (i + 1) % M]
            nb = (
                [(i + 1) % M] + list(rng.choice(others, size=degree - 1, replace=False))
                if degree > 1
                else [(i + 1) % M]
            )
            w = rng.uniform(0.5, 1.5, size=len(nb))
            rare = 0.0
            if i == M - 1 and c + 1 < K:
                rare += eps
            if i == 0 and c > 0:
                rare += eb
            w = w / w.sum() * (1.0 - rare)
            for j, v in zip(nb, w):
                rows.append(s)
                cols.append(c * M + int(j))
                vals.append(float(v))
            if i == M - 1 and c + 1 < K:
                rows.append(s)
                cols.append((c + 1) * M)
                vals.append(eps)
            if i == 0 and c > 0 and eb > 0:
                rows.append(s)
                cols.append(c * M - 1)
                vals.append(eb)
    if sparse:
        import scipy.sparse as sp

        return sp.csr_array((np.array(vals), (np.array(rows), np.array(cols))), shape=(n, n))
    P = np.zeros((n, n))
    np.add.at(P, (np.array(rows), np.array(cols)), np.array(vals))
    return P


from .ccmc import (  # noqa: E402  (re-export: the public API is ess.markov)
    CCMCSimulation,
    IdentifiabilityReport,
    base_chain,
    ccmc_transition,
    fit_attention_mle,
    identifiability,
    simulate_ccmc,
)
