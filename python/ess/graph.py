"""Directed graphs, strongly connected components and token-priority graphs.

Strongly connected components (SCC)
-----------------------------------
:func:`strongly_connected_components` takes a graph as two id arrays (``src[i] -> dst[i]``)
and returns ``(n_components, labels)`` like
``scipy.sparse.csgraph.connected_components(..., connection="strong")`` (the same partition).

**Numbering convention.** Components are numbered ``0 .. n_components - 1`` in the order the
depth-first search completes them, a reverse topological order of the condensation: *sinks
first*. For every edge ``u -> v`` between different components, ``labels[u] > labels[v]``;
``n_components - 1, ..., 0`` is a topological order (sources first), and a component can only
reach components with smaller numbers. Where the condensation admits several topological
orders, the exact numbers depend on the algorithm (the partition never does).

**Algorithms** (``algorithm=``): ``"pearce"`` is Pearce's space-efficient variant of Tarjan's
depth-first search, iterative (no recursion, so a path of 10^7 nodes is fine) and linear
time, on the compressed adjacency (CSR), after one round of trimming (nodes without
successors or without predecessors are components of their own and skip the search). ``"fwbw"`` first peels off the component of a
high-degree pivot with a forward and a backward breadth-first search run in parallel
(Fleischer-Hendrickson-Pinar forward-backward; direction-optimising searches), after
trimming nodes without successors or predecessors, then runs Pearce's search on the rest
in an order that keeps the sinks-first numbering. It builds the transposed adjacency as
well (4 more bytes per edge, 8 more while building) and is the fast choice when the graph
has a giant component (the searches keep their visited sets in a cache-resident bitmap).
``"auto"`` (default) picks ``"fwbw"`` for graphs of at least 65,536 nodes with at least
twice as many edges as nodes (when the transpose fits in memory), else ``"pearce"``. Both adjacencies are built by a parallel, cache-friendly bucketed sort. The
GIL is released.

Token-priority graphs
---------------------
From next-token data (windows ``X_i``, labels ``y_i``): one directed graph per last token ``k``
with the edges ``y_i -> x`` for every token ``x != y_i`` of every window ending in ``k``.
Component ``A`` outranks ``B`` when ``B`` is reachable from ``A``; tokens of one SCC tie.
See :class:`TokenPriorityGraphs`.

References
----------
* D. J. Pearce, "A space-efficient algorithm for finding strongly connected components",
  Information Processing Letters 116 (2016) 47-52 (the ``"pearce"`` algorithm).
* L. K. Fleischer, B. Hendrickson, A. Pinar, "On identifying strongly connected components in
  parallel", Irregular 2000 (a workshop of IPDPS 2000), Lecture Notes in Computer Science 1800,
  Springer 2000 (forward-backward, the ``"fwbw"`` algorithm).
* Y. Li, Y. Huang, M. E. Ildiz, A. S. Rawat, S. Oymak, "Mechanics of Next Token Prediction with
  Self-Attention", AISTATS 2024, PMLR 238:685-693 (token-priority graphs and the graph-SVM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _args, _core, _newton
from .errors import DTypeError, InvalidArgumentError, NumericalError, ShapeError, TooLargeError

_ALGORITHMS = ("auto", "pearce", "fwbw")

__all__ = [
    "strongly_connected_components",
    "condensation",
    "Condensation",
    "TokenPriorityGraphs",
    "TokenGraph",
    "Retrieval",
    "token_priority_graphs",
]

_IdArray = npt.NDArray[np.integer]


def _id_array(x: Any, arg: str) -> np.ndarray:
    """1-D int32/int64 array (other integer dtypes are widened to int64)."""
    a = _args.array(x, arg, kinds="iufbcSUO")
    if a.dtype.kind not in "iu":
        if a.size == 0 and a.dtype.kind == "f":
            a = a.astype(np.int64)
        else:
            raise DTypeError(f"{arg}: ids must be integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ShapeError(f"{arg}: must be one-dimensional, got shape {a.shape}")
    if a.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        if a.dtype == np.dtype(np.uint64) and a.size and int(a.max()) > np.iinfo(np.int64).max:
            i = int(np.argmax(a > np.iinfo(np.int64).max))
            raise _out_of_range(f"{arg}: entry {i} = {int(a[i])} is too large for a node id")
        a = a.astype(np.int64)
    return a


def _out_of_range(msg: str) -> Exception:
    from .errors import OutOfRangeError

    return OutOfRangeError(msg)


def _n_nodes(n: Any, arg: str = "n_nodes") -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise DTypeError(f"{arg}: must be an integer, got {type(n).__name__}")
    if n < 0:
        raise InvalidArgumentError(f"{arg}: must be non-negative, got {n}")
    if n > np.iinfo(np.int64).max:
        raise _out_of_range(f"{arg}: {int(n)} does not fit in 64 bits")
    return int(n)


def _edges(src: Any, dst: Any, n_nodes: Any) -> Tuple[np.ndarray, np.ndarray, int]:
    s = _id_array(src, "src")
    d = _id_array(dst, "dst")
    if s.shape != d.shape:
        raise ShapeError(f"dst: src and dst must have the same length, got {s.shape[0]} and {d.shape[0]}")
    return s, d, _n_nodes(n_nodes)


def strongly_connected_components(
    src: npt.ArrayLike, dst: npt.ArrayLike, n_nodes: int, *, algorithm: str = "auto"
) -> Tuple[int, npt.NDArray[np.int32]]:
    """Strongly connected components of the directed graph ``src[i] -> dst[i]``.

    Parameters
    ----------
    src, dst : 1-D int32 or int64 arrays of equal length
        Edge endpoints, node ids in ``[0, n_nodes)``. Duplicate edges and self-loops are
        allowed. Contiguous int32/int64 arrays are read zero-copy; other integer dtypes
        are widened to int64; float ids raise :class:`DTypeError`.
    n_nodes : int
        Number of nodes (isolated nodes are their own components).
    algorithm : {"auto", "pearce", "fwbw"}
        See the module docs; all give the same partition and a sinks-first numbering.

    Returns
    -------
    n_components : int
    labels : int32 array of shape ``(n_nodes,)``
        Component of each node, numbered **sinks first** (for an edge ``u -> v`` across
        components, ``labels[u] > labels[v]``).

    Raises
    ------
    OutOfRangeError : an id is negative or ``>= n_nodes`` (the message names the array and position).
    ShapeError : ``src`` and ``dst`` differ in length or are not 1-D.
    InvalidArgumentError : unknown ``algorithm``.

    Examples
    --------
    A 3-cycle ``0 -> 1 -> 2 -> 0`` feeding the path ``2 -> 3 -> 4``: the sink ``4`` is component 0.

    >>> import numpy as np
    >>> from ess.graph import strongly_connected_components
    >>> strongly_connected_components(np.array([0, 1, 2, 2, 3]), np.array([1, 2, 0, 3, 4]), 5)
    (3, array([2, 2, 2, 1, 0], dtype=int32))
    """
    s, d, n = _edges(src, dst, n_nodes)
    return _core.graph_scc(s, d, n, _args.choice(algorithm, "algorithm", _ALGORITHMS))


class Condensation:
    """SCCs of a graph and its condensation DAG (built by :func:`condensation`).

    Attributes
    ----------
    n_components : int
    labels : int32 array (n_nodes,), numbered sinks first (see the module docs).
    sizes : int64 array (n_components,), number of nodes per component.
    edges : (int64 array, int64 array)
        Deduplicated edges ``a -> b`` between different components; always ``a > b``.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.graph import condensation
    >>> c = condensation(np.array([0, 1, 2, 2, 3]), np.array([1, 2, 0, 3, 4]), 5)
    >>> c
    Condensation(n_nodes=5, n_components=3, n_dag_edges=2)
    >>> c.labels, c.sizes
    (array([2, 2, 2, 1, 0], dtype=int32), array([1, 1, 3]))
    >>> c.edges
    (array([1, 2]), array([0, 1]))
    >>> c.topological_order(), c.reaches(2, 0), c.reaches(0, 2)
    (array([2, 1, 0]), True, False)
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.n_components: int = inner.n_components
        self.labels: np.ndarray = inner.labels
        self.sizes: np.ndarray = inner.sizes
        indptr = inner.dag_indptr
        self.dag_indptr: np.ndarray = indptr
        self.dag_indices: np.ndarray = inner.dag_indices
        self.edges: Tuple[np.ndarray, np.ndarray] = (
            np.repeat(np.arange(self.n_components, dtype=np.int64), np.diff(indptr)),
            self.dag_indices,
        )

    def topological_order(self) -> npt.NDArray[np.int64]:
        """Components sources first: ``n_components - 1, ..., 0``."""
        return np.arange(self.n_components - 1, -1, -1, dtype=np.int64)

    def reaches(self, a: npt.ArrayLike, b: npt.ArrayLike) -> Union[bool, npt.NDArray[np.bool_]]:
        """Whether component ``a`` reaches component ``b`` (elementwise; ``a == b`` is True)."""
        aa = np.asarray(a)
        bb = np.asarray(b)
        scalar = aa.ndim == 0 and bb.ndim == 0
        aa, bb = np.broadcast_arrays(np.atleast_1d(aa), np.atleast_1d(bb))
        for x, name in ((aa, "a"), (bb, "b")):
            if x.dtype.kind not in "iu":
                raise DTypeError(f"{name}: component ids must be integers, got dtype {x.dtype}")
        r = self._inner.reaches([int(v) for v in aa.ravel()], [int(v) for v in bb.ravel()])
        r = r.reshape(aa.shape)
        return bool(r[0]) if scalar else r

    def __repr__(self) -> str:
        return f"Condensation(n_nodes={self.labels.shape[0]}, n_components={self.n_components}, n_dag_edges={self.dag_indices.shape[0]})"


def condensation(src: npt.ArrayLike, dst: npt.ArrayLike, n_nodes: int, *, algorithm: str = "auto") -> Condensation:
    """SCCs plus the condensation DAG (deduplicated edges between components), its
    topological order and reachability queries. Same inputs, ``algorithm`` choices and
    numbering as :func:`strongly_connected_components`.

    Examples
    --------
    A 3-cycle feeding the path ``2 -> 3 -> 4``: three components; the cycle (component 2)
    reaches the sink ``4`` (component 0), not the other way round.

    >>> import numpy as np
    >>> from ess.graph import condensation
    >>> c = condensation(np.array([0, 1, 2, 2, 3]), np.array([1, 2, 0, 3, 4]), 5)
    >>> c.n_components, c.labels
    (3, array([2, 2, 2, 1, 0], dtype=int32))
    >>> c.reaches([2, 0], [0, 2])
    array([ True, False])
    """
    s, d, n = _edges(src, dst, n_nodes)
    return Condensation(_core.graph_condensation(s, d, n, _args.choice(algorithm, "algorithm", _ALGORITHMS)))


# --------------------------------------------------------------------------------------
# token-priority graphs


def _windows_flat(
    windows: Any, pad: Optional[int], offsets: Optional[npt.ArrayLike], arg: str = "windows"
) -> Tuple[np.ndarray, np.ndarray]:
    """Windows as (flat tokens, int64 offsets)."""
    if offsets is not None:
        flat = _id_array(windows, arg)
        off = np.asarray(offsets)
        if off.dtype.kind not in "iu":
            raise DTypeError(f"offsets: must be integers, got dtype {off.dtype}")
        if off.ndim != 1:
            raise ShapeError(f"offsets: must be one-dimensional, got shape {off.shape}")
        return flat, off.astype(np.int64, copy=False)
    if isinstance(windows, (list, tuple)) and windows and not isinstance(windows[0], (int, np.integer)):
        rows = [np.asarray(w) for w in windows]
        if all(r.ndim == 1 for r in rows) and len({r.shape[0] for r in rows}) > 1:
            for i, r in enumerate(rows):
                if r.size and r.dtype.kind not in "iu":
                    raise DTypeError(f"{arg}: window {i} has dtype {r.dtype}; token ids must be integers")
            lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
            flat = np.concatenate([r.astype(np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
            if pad is not None:
                return _windows_flat(_pad_rows(rows, pad), pad, None, arg)
            return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    w = _args.array(windows, arg, kinds="fiub")
    if w.dtype.kind not in "iu":
        raise DTypeError(f"{arg}: token ids must be integers, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ShapeError(
            f"{arg}: must be a 2-D (n_windows, length) array (or flat tokens with offsets=...), got shape {w.shape}"
        )
    n, length = w.shape
    if length == 0:
        raise InvalidArgumentError(f"{arg}: windows have length 0 (empty windows)")
    if w.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        w = w.astype(np.int64)
    if pad is None:
        return np.ascontiguousarray(w).reshape(-1), np.arange(0, (n + 1) * length, length, dtype=np.int64)
    mask = w != pad
    lengths = mask.sum(axis=1)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InvalidArgumentError(
            f"{arg}: window {int(empty[0])} is empty (only padding); {empty.size} empty window(s) in all"
        )
    flat = w[mask]
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return flat, off


def _pad_rows(rows: List[np.ndarray], pad: int) -> np.ndarray:
    length = max(r.shape[0] for r in rows)
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


class Retrieval(NamedTuple):
    """Hard retrieval of one window: the distinct tokens nothing in the window outranks
    (sorted), and whether the graph determines the outcome (they all tie in one SCC).

    Examples
    --------
    After last token 0, label 3 beat 2 and label 2 beat 1: 3 outranks 2 outranks 1.

    >>> import numpy as np
    >>> from ess.graph import TokenPriorityGraphs
    >>> tpg = TokenPriorityGraphs(np.array([[2, 1, 0], [3, 2, 0]]), np.array([2, 3]), vocab_size=4)
    >>> r = tpg.retrieval_set([1, 2, 3, 0])
    >>> r.tokens, r.determined
    (array([3]), True)
    >>> tpg.retrieval_set([1, 2, 0])
    Retrieval(tokens=array([2]), determined=True)
    """

    tokens: npt.NDArray[np.int64]
    determined: bool


@dataclass(frozen=True)
class TokenGraph:
    """Token-priority graph of one last token.

    ``nodes`` are the tokens occurring in its samples (sorted); ``edges`` the deduplicated
    edges ``label -> token`` as token ids; ``labels[i]`` the SCC of ``nodes[i]``, numbered sinks
    first (larger number = higher priority); ``components`` the tokens of each SCC by number;
    ``priority_order`` the SCC numbers in a topological order, highest priority first.
    Tokens not in ``nodes`` are isolated (rank below nothing and above nothing).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.graph import TokenPriorityGraphs
    >>> g = TokenPriorityGraphs(np.array([[2, 1, 0], [3, 2, 0]]), np.array([2, 3]), vocab_size=4).graph(0)
    >>> g.nodes, g.n_samples
    (array([0, 1, 2, 3]), 2)
    >>> g.edges
    (array([2, 2, 3, 3]), array([0, 1, 0, 2]))
    >>> g.components, g.is_cyclic
    ([array([0]), array([1]), array([2]), array([3])], False)
    >>> g.component_of(3), g.component_of(1)
    (3, 1)
    """

    last_token: int
    n_samples: int
    nodes: npt.NDArray[np.int64]
    edges: Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    labels: npt.NDArray[np.int64]
    components: List[npt.NDArray[np.int64]]
    dag_edges: Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def priority_order(self) -> npt.NDArray[np.int64]:
        return np.arange(self.n_components - 1, -1, -1, dtype=np.int64)

    @property
    def is_cyclic(self) -> bool:
        return any(c.shape[0] > 1 for c in self.components)

    def component_of(self, token: int) -> Optional[int]:
        """SCC number of ``token``, or None when it does not occur in this graph."""
        i = int(np.searchsorted(self.nodes, token))
        if i < self.nodes.shape[0] and self.nodes[i] == token:
            return int(self.labels[i])
        return None


def _tie_loss(th: np.ndarray, Fs: List[np.ndarray], masks: List[np.ndarray]) -> Tuple[float, np.ndarray, np.ndarray]:
    """Cross-entropy of the label positions (``masks``) under ``softmax(F @ th)`` over each
    sample's retrieved positions (rows of ``F``), summed over samples; with gradient and Hessian."""
    r = th.shape[0]
    L = 0.0
    g = np.zeros(r)
    H = np.zeros((r, r))
    for F, m in zip(Fs, masks):
        s = F @ th
        p = np.exp(s - s.max())
        Z = p.sum()
        q = p * m
        Zy = q.sum()
        L += np.log(Z) - np.log(Zy)
        p /= Z
        q /= Zy
        mp = F.T @ p
        mq = F.T @ q
        g += mp - mq
        H += (F.T * p) @ F - np.outer(mp, mp) - ((F.T * q) @ F - np.outer(mq, mq))
    return L, g, H


class TokenPriorityGraphs:
    """Token-priority graphs of a next-token dataset, one per last token.

    Parameters
    ----------
    windows : 2-D int array (n_windows, length), a list of 1-D int sequences, or flat tokens
        Token ids in ``[0, vocab_size)``. With ``pad`` given, entries equal to ``pad`` are
        removed wherever they are (left or right padding); with ``offsets`` given,
        ``windows`` is a flat 1-D array and window ``i`` is ``windows[offsets[i]:offsets[i+1]]``.
        The last (non-pad) token of a window selects its graph.
    labels : 1-D int array (n_windows,)
        Next token of each window.
    vocab_size : int
    pad : int, optional
    offsets : 1-D int array (n_windows + 1,), optional
    unrealisable : {"raise", "exclude"}
        A sample whose label does not occur in its window cannot be produced by attention
        over the window. ``"raise"`` (default) raises :class:`InvalidArgumentError` naming
        the samples; ``"exclude"`` builds the graphs without them and lists them in
        :attr:`unrealisable`.

    Notes
    -----
    Graphs are built in parallel over last tokens in the Rust core (GIL released).

    Examples
    --------
    Windows ending in token 0 whose labels chase each other (2 -> 1, 3 -> 2, 1 -> 3) make one
    cyclic component; the retrieval set of a new window is its tokens in the top component.

    >>> import numpy as np
    >>> from ess.graph import TokenPriorityGraphs
    >>> tpg = TokenPriorityGraphs(np.array([[2, 1, 0], [3, 2, 0], [1, 3, 0]]), np.array([2, 3, 1]), vocab_size=4)
    >>> tpg.graph(0).components
    [array([0]), array([1, 2, 3])]
    >>> tpg.retrieval_set([1, 2, 0])
    Retrieval(tokens=array([1, 2]), determined=True)
    """

    def __init__(
        self,
        windows: Any,
        labels: npt.ArrayLike,
        vocab_size: int,
        *,
        pad: Optional[int] = None,
        offsets: Optional[npt.ArrayLike] = None,
        unrealisable: str = "raise",
    ) -> None:
        if unrealisable not in ("raise", "exclude"):
            raise InvalidArgumentError(f'unrealisable: must be "raise" or "exclude", got {unrealisable!r}')
        k = _n_nodes(vocab_size, "vocab_size")
        flat, off = _windows_flat(windows, pad, offsets)
        lab = _id_array(labels, "labels")
        self._pad = pad
        self._inner = _core.graph_token_priority(flat, off, lab, k, unrealisable == "exclude")
        self.vocab_size: int = k
        self.n_windows: int = off.shape[0] - 1
        self.last_tokens: npt.NDArray[np.int64] = self._inner.last_tokens
        self.unrealisable: npt.NDArray[np.int64] = self._inner.unrealisable
        self._cache: Dict[int, Optional[TokenGraph]] = {}

    def graph(self, k: int) -> Optional[TokenGraph]:
        """The graph of last token ``k`` (None when no window ends in ``k``)."""
        k = _args.integer(k, "k")
        if k not in self._cache:
            parts = self._inner.graph(k)
            if parts is None:
                self._cache[k] = None
            else:
                n_samples, nodes, indptr, indices, labels, sizes, dindptr, dindices = parts
                src = nodes[np.repeat(np.arange(nodes.shape[0]), np.diff(indptr))]
                order = np.argsort(labels, kind="stable")
                bounds = np.concatenate([[0], np.cumsum(sizes)])
                comps = [nodes[order[bounds[c] : bounds[c + 1]]] for c in range(sizes.shape[0])]
                dsrc = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), np.diff(dindptr))
                self._cache[k] = TokenGraph(
                    last_token=k,
                    n_samples=int(n_samples),
                    nodes=nodes,
                    edges=(src, nodes[indices]),
                    labels=labels,
                    components=comps,
                    dag_edges=(dsrc, dindices),
                )
        return self._cache[k]

    def __iter__(self):
        for k in self.last_tokens:
            g = self.graph(int(k))
            assert g is not None
            yield g

    def __len__(self) -> int:
        return int(self.last_tokens.shape[0])

    def summary(self) -> Dict[str, Any]:
        """Counts per graph and overall.

        Returns a dict with per-graph int64 arrays ``last_token``, ``n_samples``, ``n_nodes``,
        ``n_edges``, ``n_components``, ``n_nontrivial_sccs`` (SCCs with more than one token),
        ``largest_scc``, ``cyclic`` (bool), and totals ``n_graphs``, ``n_cyclic``,
        ``n_acyclic``, ``scc_size_counts`` (dict size -> number of SCCs of that size, over
        the tokens occurring in each graph), ``n_unrealisable``.
        """
        s = self._inner.summary()
        names = ["last_token", "n_samples", "n_nodes", "n_edges", "n_components", "n_nontrivial_sccs", "largest_scc"]
        out: Dict[str, Any] = {n: s[:, i].copy() for i, n in enumerate(names)}
        out["cyclic"] = out["largest_scc"] > 1
        out["n_graphs"] = int(s.shape[0])
        out["n_cyclic"] = int(out["cyclic"].sum())
        out["n_acyclic"] = int(s.shape[0] - out["n_cyclic"])
        sz, cnt = self._inner.scc_size_counts()
        out["scc_size_counts"] = {int(a): int(b) for a, b in zip(sz, cnt)}
        out["n_unrealisable"] = int(self.unrealisable.shape[0])
        return out

    def retrieval_set(self, window: npt.ArrayLike) -> Retrieval:
        """Hard retrieval for one window (1-D token ids, its last token selects the graph):
        the distinct tokens of the window that no other token of it strictly outranks,
        and whether they all lie in one SCC (else the graph does not determine the outcome)."""
        w = _id_array(window, "window")
        if w.shape[0] == 0:
            raise InvalidArgumentError("window: is empty")
        if self._pad is not None:
            w = w[w != self._pad]
            if w.shape[0] == 0:
                raise InvalidArgumentError("window: is empty (only padding)")
        flat, off, det = self._inner.retrieve(w, np.array([0, w.shape[0]], dtype=np.int64))
        return Retrieval(flat, bool(det[0]))

    def retrieval_sets(
        self, windows: Any, *, offsets: Optional[npt.ArrayLike] = None
    ) -> Tuple[List[npt.NDArray[np.int64]], npt.NDArray[np.bool_]]:
        """:meth:`retrieval_set` for many windows (same formats as the constructor, with this
        object's ``pad``), in parallel: a list of token arrays and a bool array ``determined``."""
        flat, off = _windows_flat(windows, self._pad, offsets)
        r, roff, det = self._inner.retrieve(flat, off)
        return np.split(r, roff[1:-1]), det

    # ---------------------------------------------------------------- graph-SVM
    def graph_svm(self, E: Optional[npt.ArrayLike] = None, *, sparse: bool = False) -> Any:
        """Max-margin direction ``W_svm`` of one attention layer trained on this data.

        ``min ||W||_F`` s.t. ``(E_y - E_x)^T W E_k = 0`` when ``x`` is in the SCC of ``y`` in graph
        ``k``, and ``>= 1`` when ``x`` is below it, over every edge ``y -> x`` of every graph.

        With ``E=None`` (one-hot tokens) the problem decouples per column ``k``: ``W`` is
        ``vocab_size x vocab_size`` (score ``W[x, k]``), computed exactly per component DAG
        (see the Rust docs of ``ess_core::graph::svm``); ``sparse=True`` returns a
        ``scipy.sparse.csc_array`` (needed for large vocabularies). With embeddings ``E``
        (``vocab_size x d``) it is one QP in ``d^2`` variables solved by Clarabel, and ``W`` is
        ``d x d`` (score ``E_x^T W E_k``). Raises :class:`InvalidArgumentError` when no ``W``
        satisfies the constraints.
        """
        if E is None:
            rows, cols, vals = self._inner.svm_one_hot()
            k = self.vocab_size
            if sparse:
                import scipy.sparse

                return scipy.sparse.csc_array((vals, (rows, cols)), shape=(k, k))
            if k * k > 100_000_000:
                raise TooLargeError(f"vocab_size: a dense {k} x {k} W is too large; pass sparse=True")
            W = np.zeros((k, k))
            W[rows, cols] = vals
            return W
        e = np.asarray(E)
        if e.dtype.kind != "f":
            if e.dtype.kind in "iu":
                e = e.astype(np.float64)
            else:
                raise DTypeError(f"E: must be a float array, got dtype {e.dtype}")
        return self._inner.svm_embedded(np.ascontiguousarray(e, dtype=np.float64))

    def _fit_embeddings(self, E: Optional[npt.ArrayLike]) -> np.ndarray:
        """The token embeddings of a fit, ``(vocab_size, d)`` float64 (one-hot when ``E`` is None)."""
        if E is None:
            if self.vocab_size > 1024:
                raise TooLargeError(
                    "vocab_size: finite_component with one-hot tokens is limited to 1024 tokens; pass E"
                )
            return np.eye(self.vocab_size)
        e = np.asarray(E, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] != self.vocab_size:
            raise ShapeError(f"E: must be (vocab_size = {self.vocab_size}, d), got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise InvalidArgumentError("E: contains non-finite values")
        return e

    def _tie_features(
        self, flat: np.ndarray, off: np.ndarray, lab: np.ndarray, e: np.ndarray
    ) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
        """Per realisable sample with a tie: the features ``E_x (x) E_k`` of its positions holding
        tokens of the label's SCC, the mask of the label among them; and the tie directions
        ``(E_y - E_x) (x) E_k`` spanning the fit's subspace."""
        d = e.shape[1]
        bad = set(int(i) for i in self.unrealisable)
        feats: List[np.ndarray] = []
        masks: List[np.ndarray] = []
        basis: List[np.ndarray] = []
        for i in range(off.shape[0] - 1):
            if i in bad:
                continue
            w = flat[off[i] : off[i + 1]]
            k = int(w[-1])
            y = int(lab[i])
            tg = self.graph(k)
            cy = None if tg is None else tg.component_of(y)
            if tg is None or cy is None:
                continue
            toks = w[np.array([tg.component_of(int(x)) == cy for x in w])]
            if np.unique(toks).shape[0] < 2:
                continue
            feats.append(np.einsum("ta,b->tab", e[toks], e[k]).reshape(toks.shape[0], d * d))
            masks.append(toks == y)
            basis.extend(np.outer(e[y] - e[x], e[k]).ravel() for x in np.unique(toks) if x != y)
        return feats, masks, basis

    def finite_component(
        self,
        windows: Any,
        labels: npt.ArrayLike,
        E: Optional[npt.ArrayLike] = None,
        *,
        offsets: Optional[npt.ArrayLike] = None,
        max_iter: int = 100,
        tol: float = 1e-12,
    ) -> npt.NDArray[np.float64]:
        """Finite component ``W_fin`` of the trained layer: the convex fit restricted to ties.

        Minimises the cross-entropy of the samples when each window's attention is limited
        to its tokens in the label's SCC (the retrieved set of a training window),
        ``-sum_i log( sum_{t: x_t = y_i} e^{s_t} / sum_{t in R_i} e^{s_t} )``, over ``W`` in the
        span of ``(E_y - E_x) E_k^T`` for tied pairs ``x, y`` (same SCC of graph ``k``); the
        minimum-norm minimiser (Newton's method with a pseudo-inverse, from ``W = 0``).
        Pass the same ``windows``/``labels`` the graphs were built from (unrealisable
        samples are skipped). One-hot (``E=None``) requires ``vocab_size <= 1024``.
        Raises :class:`NumericalError` when the fit diverges (no finite minimiser).
        """
        flat, off = _windows_flat(windows, self._pad, offsets)
        lab = _id_array(labels, "labels")
        n = off.shape[0] - 1
        if lab.shape[0] != n:
            raise ShapeError(f"labels: must have one label per window ({n}), got {lab.shape[0]}")
        e = self._fit_embeddings(E)
        d = e.shape[1]
        feats, masks, basis = self._tie_features(flat, off, lab, e)
        if not basis:
            return np.zeros((d, d))
        B = np.array(basis)
        U, S, Vt = np.linalg.svd(B, full_matrices=False)
        r = int(np.sum(S > S[0] * max(B.shape) * np.finfo(float).eps))
        Q = Vt[:r].T  # orthonormal basis of the tie subspace (d^2 x r)
        Fs = [F @ Q for F in feats]
        theta, converged = _newton.minimize(
            lambda th: _tie_loss(th, Fs, masks),
            np.zeros(r),
            tol=tol,
            max_iter=max_iter,
            name="finite_component: the restricted fit",
            diverge_norm=1e6,
        )
        if not converged:
            raise NumericalError(f"finite_component: Newton did not converge in {max_iter} iterations")
        return (Q @ theta).reshape(d, d)

    def soft_composition(
        self, window: npt.ArrayLike, W_fin: npt.ArrayLike, E: Optional[npt.ArrayLike] = None
    ) -> Dict[int, float]:
        """Predicted next-token law of a window: softmax of ``E_x^T W_fin E_k`` over the
        positions holding retrieved tokens, summed per token (``E=None``: one-hot)."""
        w = _id_array(window, "window")
        r = self.retrieval_set(w)
        if self._pad is not None:
            w = w[w != self._pad]
        k = int(w[-1])
        Wf = np.asarray(W_fin, dtype=np.float64)
        e = np.eye(self.vocab_size) if E is None else np.asarray(E, dtype=np.float64)
        pos = np.isin(w, r.tokens)
        s = e[w[pos]] @ Wf @ e[k]
        p = np.exp(s - s.max())
        p /= p.sum()
        out: Dict[int, float] = {}
        for tok, pr in zip(w[pos], p):
            out[int(tok)] = out.get(int(tok), 0.0) + float(pr)
        return out

    def __repr__(self) -> str:
        return f"TokenPriorityGraphs(vocab_size={self.vocab_size}, n_windows={self.n_windows}, n_graphs={len(self)}, n_unrealisable={self.unrealisable.shape[0]})"


def token_priority_graphs(windows: Any, labels: npt.ArrayLike, vocab_size: int, **kwargs: Any) -> TokenPriorityGraphs:
    """Shorthand for :class:`TokenPriorityGraphs`.

    Examples
    --------
    >>> import numpy as np
    >>> from ess.graph import token_priority_graphs
    >>> tpg = token_priority_graphs(np.array([[2, 1, 0], [3, 2, 0], [1, 3, 0]]), np.array([2, 3, 1]), vocab_size=4)
    >>> tpg
    TokenPriorityGraphs(vocab_size=4, n_windows=3, n_graphs=1, n_unrealisable=0)
    >>> tpg.graph(0).is_cyclic
    True
    """
    return TokenPriorityGraphs(windows, labels, vocab_size, **kwargs)
