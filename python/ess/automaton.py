"""What one trained attention layer retrieves: the automaton view of its token-priority graphs.

The model: one attention layer whose query is the last token. With token embeddings ``E``
(``K x d``; one-hot when ``E`` is None, ``d = K``) the score of position ``t`` is
``s_t = E[x_t]^T W E[x_L]``, attention is ``softmax(s)`` over all positions of the window
(the last one included), and the probability of next token ``j`` is the attention mass on
the positions holding ``j``. Trained with cross-entropy by normalised gradient descent,
``W`` grows along the graph-SVM direction ``W_svm`` (:meth:`ess.graph.TokenPriorityGraphs.graph_svm`)
plus a finite part ``W_fin`` that mixes the tokens of one SCC.

This module needs PyTorch (CPU is enough); ``import ess`` does not import it.

References
----------
Y. Li, Y. Huang, M. E. Ildiz, A. S. Rawat, S. Oymak, "Mechanics of Next Token Prediction with
Self-Attention", AISTATS 2024, PMLR 238:685-693 (token-priority graphs, the graph-SVM
direction and the automaton view of a trained attention layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, ShapeError
from .graph import TokenPriorityGraphs

try:  # torch is optional for the rest of ess; required here
    import torch
except ImportError as exc:  # pragma: no cover
    raise ImportError("ess.automaton needs PyTorch: pip install torch") from exc

__all__ = [
    "AutomatonDataset",
    "OneLayerAttention",
    "random_dataset",
    "train",
    "automaton_report",
    "AutomatonReport",
]


@dataclass
class AutomatonDataset:
    """Next-token data for the one-layer model: ``windows`` (n, L) int64 token ids, ``labels``
    (n,), ``vocab_size`` K and embeddings ``E`` (K x d, float64; None for one-hot).

    Examples
    --------
    >>> import numpy as np
    >>> from ess.automaton import AutomatonDataset
    >>> ds = AutomatonDataset(np.array([[2, 1, 0], [3, 2, 0], [1, 3, 0]]), np.array([2, 3, 1]), vocab_size=4)
    >>> ds.graphs().graph(0).components          # the labels chase each other: one cycle
    [array([0]), array([1, 2, 3])]
    >>> ds.embeddings().shape                    # one-hot when E is None
    (4, 4)
    """

    windows: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    vocab_size: int
    E: Optional[npt.NDArray[np.float64]] = None

    def __post_init__(self) -> None:
        self.windows = np.asarray(self.windows)
        self.labels = np.asarray(self.labels)
        if self.windows.ndim != 2 or self.windows.shape[1] == 0:
            raise ShapeError(f"windows: must be a non-empty 2-D (n, L) array, got shape {self.windows.shape}")
        if self.windows.dtype.kind not in "iu" or self.labels.dtype.kind not in "iu":
            raise InvalidArgumentError("windows, labels: token ids must be integers")
        if self.labels.shape != (self.windows.shape[0],):
            raise ShapeError(f"labels: must have shape ({self.windows.shape[0]},), got {self.labels.shape}")
        self.windows = self.windows.astype(np.int64)
        self.labels = self.labels.astype(np.int64)
        if self.E is not None:
            self.E = np.asarray(self.E, dtype=np.float64)
            if self.E.ndim != 2 or self.E.shape[0] != self.vocab_size:
                raise ShapeError(f"E: must be (vocab_size = {self.vocab_size}, d), got shape {self.E.shape}")

    def graphs(self) -> TokenPriorityGraphs:
        return TokenPriorityGraphs(self.windows, self.labels, self.vocab_size)

    def embeddings(self) -> npt.NDArray[np.float64]:
        return np.eye(self.vocab_size) if self.E is None else self.E


def random_dataset(
    vocab_size: int = 6,
    n_windows: int = 6,
    length: int = 4,
    dim: Optional[int] = 8,
    seed: int = 0,
    require_cycle: bool = True,
    max_tries: int = 10_000,
) -> AutomatonDataset:
    """Random dataset as in the published small experiment: windows of ``length`` distinct
    tokens, label drawn uniformly from the window, unit-norm Gaussian embeddings of dimension
    ``dim`` (None: one-hot). With ``require_cycle``, redraws until some graph has an SCC of
    more than one token. Deterministic in ``seed``.

    Examples
    --------
    >>> from ess.automaton import random_dataset
    >>> ds = random_dataset(vocab_size=6, n_windows=6, length=4, dim=8, seed=0)
    >>> ds.windows.shape, ds.labels.shape, ds.E.shape
    ((6, 4), (6,), (6, 8))
    >>> any(g.is_cyclic for g in ds.graphs())      # require_cycle=True guarantees a tie
    True
    """
    if length > vocab_size:
        raise InvalidArgumentError(f"length: windows of {length} distinct tokens need vocab_size >= length")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        X = np.stack([rng.choice(vocab_size, size=length, replace=False) for _ in range(n_windows)])
        y = X[np.arange(n_windows), rng.integers(0, length, n_windows)]
        E = None
        if dim is not None:
            E = rng.standard_normal((vocab_size, dim))
            E /= np.linalg.norm(E, axis=1, keepdims=True)
        ds = AutomatonDataset(X, y, vocab_size, E)
        if not require_cycle or any(g.is_cyclic for g in ds.graphs()):
            return ds
    raise InvalidArgumentError(f"no dataset with a cyclic graph found in {max_tries} draws")


class OneLayerAttention(torch.nn.Module):
    """One attention layer with the last token as query; outputs the next-token law.

    ``forward(windows)`` takes (n, L) int64 token ids and returns (n, K) probabilities:
    the attention mass on the positions holding each token. ``W`` (d x d) starts at zero
    (or ``W0``). Computation in float64.

    Examples
    --------
    >>> import torch
    >>> from ess.automaton import OneLayerAttention
    >>> layer = OneLayerAttention(vocab_size=4)                  # W = 0: uniform attention
    >>> layer(torch.tensor([[2, 1, 2, 0]])).detach()        # token 2 holds half the positions
    tensor([[0.2500, 0.2500, 0.5000, 0.0000]], dtype=torch.float64)
    """

    E: torch.Tensor

    def __init__(self, vocab_size: int, E: Optional[npt.ArrayLike] = None, W0: Optional[npt.ArrayLike] = None) -> None:
        super().__init__()
        e = np.eye(vocab_size) if E is None else np.asarray(E, dtype=np.float64)
        self.vocab_size = vocab_size
        self.register_buffer("E", torch.as_tensor(e, dtype=torch.float64))
        d = e.shape[1]
        w0 = (
            torch.zeros(d, d, dtype=torch.float64)
            if W0 is None
            else torch.as_tensor(np.asarray(W0), dtype=torch.float64).clone()
        )
        self.W = torch.nn.Parameter(w0)

    def attention(self, windows: torch.Tensor) -> torch.Tensor:
        x = self.E[windows]  # (n, L, d)
        q = x[:, -1, :] @ self.W.T  # (n, d): W E_k
        s = torch.einsum("nld,nd->nl", x, q)
        return torch.softmax(s, dim=-1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        a = self.attention(windows)
        out = torch.zeros(windows.shape[0], self.vocab_size, dtype=a.dtype, device=a.device)
        return out.scatter_add_(1, windows, a)


def _loss(model: OneLayerAttention, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = model(X)
    return -torch.log(p[torch.arange(X.shape[0]), y].clamp_min(1e-300)).mean()


def train(
    dataset: AutomatonDataset,
    steps: int = 4000,
    lr: float = 0.01,
    seed: int = 0,
    normalized: bool = True,
    init_scale: float = 0.0,
    num_threads: Optional[int] = 1,
) -> OneLayerAttention:
    """Train :class:`OneLayerAttention` on ``dataset`` with cross-entropy.

    Normalised gradient descent ``W <- W - lr * g / ||g||_F`` (``normalized=False``: plain
    gradient descent), full batch, from ``W = 0`` (or a seeded Gaussian of std
    ``init_scale``). Deterministic in ``seed``. ``num_threads``: torch intra-op threads
    during training (default 1: the problem is tiny and extra threads only add
    synchronisation; None keeps torch's setting); restored afterwards.

    Examples
    --------
    >>> from ess.automaton import random_dataset, train
    >>> ds = random_dataset(seed=0)
    >>> layer = train(ds, steps=200, lr=0.05)
    >>> W = layer.W.detach()
    >>> tuple(W.shape), round(float(W.norm()), 1)        # each step moves W by lr: ||W|| <= 200 * 0.05
    ((8, 8), 9.3)
    """
    if num_threads is None:
        return _train(dataset, steps, lr, seed, normalized, init_scale)
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _train(dataset, steps, lr, seed, normalized, init_scale)
    finally:
        torch.set_num_threads(old)


def _train(
    dataset: AutomatonDataset, steps: int, lr: float, seed: int, normalized: bool, init_scale: float
) -> OneLayerAttention:
    gen = torch.Generator().manual_seed(seed)
    E = dataset.embeddings()
    d = E.shape[1]
    W0 = None
    if init_scale > 0:
        W0 = (torch.randn(d, d, generator=gen, dtype=torch.float64) * init_scale).numpy()
    model = OneLayerAttention(dataset.vocab_size, E, W0)
    X = torch.as_tensor(dataset.windows)
    y = torch.as_tensor(dataset.labels)
    for _ in range(steps):
        model.zero_grad()
        loss = _loss(model, X, y)
        loss.backward()
        with torch.no_grad():
            g = model.W.grad
            assert g is not None
            if normalized:
                nrm = torch.linalg.norm(g)
                if nrm == 0:
                    break
                g = g / nrm
            model.W.sub_(lr * g)
    return model


@dataclass
class AutomatonReport:
    """Agreement of a trained layer with the automaton prediction.

    * ``cosine``: Frobenius cosine between the trained ``W`` and ``W_svm``;
    * ``retrieval_mass``: mean attention mass on the predicted retrieval set over the held-out
      windows whose retrieval the graph determines (``n_determined`` of ``n_heldout``);
    * ``composition_tv``: mean total-variation distance between the layer's next-token law
      and the soft-composition prediction (softmax of ``W_fin`` inside the retrieved set)
      on those windows; ``composition_tv_train`` the same on the training windows;
    * ``train_loss``: cross-entropy of the layer on the training data;
    * ``W``, ``W_svm``, ``W_fin``: the matrices compared.

    Examples
    --------
    >>> from ess.automaton import automaton_report, random_dataset, train
    >>> ds = random_dataset(seed=0)
    >>> rep = automaton_report(train(ds, steps=300, lr=0.05), ds, n_heldout=50)
    >>> rep.n_heldout, rep.n_determined <= rep.n_heldout
    (50, True)
    >>> round(rep.cosine, 2), round(rep.retrieval_mass, 2)
    (0.92, 0.97)
    """

    cosine: float
    retrieval_mass: float
    composition_tv: float
    composition_tv_train: float
    n_heldout: int
    n_determined: int
    train_loss: float
    W: npt.NDArray[np.float64]
    W_svm: npt.NDArray[np.float64]
    W_fin: npt.NDArray[np.float64]


def _law(W: np.ndarray, E: np.ndarray, window: np.ndarray, K: int, restrict: Optional[np.ndarray] = None) -> np.ndarray:
    pos = np.ones(window.shape[0], bool) if restrict is None else np.isin(window, restrict)
    s = E[window[pos]] @ W @ E[window[-1]]
    p = np.exp(s - s.max())
    p /= p.sum()
    out = np.zeros(K)
    np.add.at(out, window[pos], p)
    return out


def automaton_report(
    model_or_W: Union[OneLayerAttention, npt.ArrayLike],
    dataset: AutomatonDataset,
    heldout: Optional[npt.ArrayLike] = None,
    n_heldout: int = 200,
    seed: int = 0,
) -> AutomatonReport:
    """Compare a trained layer (a :class:`OneLayerAttention` or its ``W``) with the automaton
    prediction of ``dataset`` (graph-SVM direction, hard retrieval, soft composition).

    ``heldout``: (m, L') windows to evaluate; by default ``n_heldout`` random windows of the
    dataset's length with distinct tokens, drawn with ``seed``, whose last token has a graph.

    Examples
    --------
    >>> from ess.automaton import automaton_report, random_dataset, train
    >>> ds = random_dataset(seed=0)
    >>> rep = automaton_report(train(ds, steps=300, lr=0.05), ds, n_heldout=50)
    >>> round(rep.cosine, 2), round(rep.retrieval_mass, 2), round(rep.composition_tv, 2)
    (0.92, 0.97, 0.04)
    >>> rep.W.shape == rep.W_svm.shape == rep.W_fin.shape
    True
    """
    if isinstance(model_or_W, OneLayerAttention):
        W = model_or_W.W.detach().cpu().numpy().astype(np.float64)
    else:
        W = np.asarray(model_or_W, dtype=np.float64)
    E = dataset.embeddings()
    K = dataset.vocab_size
    if W.shape != (E.shape[1], E.shape[1]):
        raise ShapeError(f"model_or_W: W must be ({E.shape[1]}, {E.shape[1]}), got {W.shape}")
    tpg = dataset.graphs()
    W_svm = tpg.graph_svm(dataset.E) if dataset.E is not None else tpg.graph_svm()
    W_fin = tpg.finite_component(dataset.windows, dataset.labels, dataset.E)
    den = np.linalg.norm(W) * np.linalg.norm(W_svm)
    cosine = float(np.sum(W * W_svm) / den) if den > 0 else float("nan")

    length = dataset.windows.shape[1]
    if heldout is None:
        rng = np.random.default_rng(seed)
        lasts = set(int(k) for k in tpg.last_tokens)
        rows: list[np.ndarray] = []
        tries = 0
        while len(rows) < n_heldout and tries < 100 * n_heldout:
            tries += 1
            w = np.asarray(rng.choice(K, size=length, replace=False))
            if int(w[-1]) in lasts:
                rows.append(w)
        H = np.array(rows, dtype=np.int64).reshape(-1, length)
    else:
        H = np.asarray(heldout, dtype=np.int64)
        if H.ndim != 2:
            raise ShapeError(f"heldout: must be a 2-D (m, L) array, got shape {H.shape}")

    def evaluate(windows: np.ndarray) -> tuple[list[float], list[float]]:
        masses: list[float] = []
        tvs: list[float] = []
        if windows.shape[0] == 0:
            return masses, tvs
        sets, det = tpg.retrieval_sets(windows)
        for w, r, ok in zip(windows, sets, det):
            if not ok:
                continue
            law = _law(W, E, w, K)
            masses.append(float(law[r].sum()))
            pred = _law(W_fin, E, w, K, restrict=r)
            tvs.append(0.5 * float(np.abs(law - pred).sum()))
        return masses, tvs

    masses, tvs = evaluate(H)
    _, tvs_train = evaluate(dataset.windows)
    X = dataset.windows
    train_loss = float(np.mean([-np.log(max(_law(W, E, w, K)[y], 1e-300)) for w, y in zip(X, dataset.labels)]))
    return AutomatonReport(
        cosine=cosine,
        retrieval_mass=float(np.mean(masses)) if masses else float("nan"),
        composition_tv=float(np.mean(tvs)) if tvs else float("nan"),
        composition_tv_train=float(np.mean(tvs_train)) if tvs_train else float("nan"),
        n_heldout=int(H.shape[0]),
        n_determined=len(masses),
        train_loss=train_loss,
        W=W,
        W_svm=W_svm,
        W_fin=W_fin,
    )
