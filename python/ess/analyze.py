"""``ess.analyze``: the ESS of every sequence-mixing layer of a PyTorch model on given inputs."""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _heap
from .errors import DTypeError, InvalidArgumentError, NonFiniteError, OutOfRangeError, ShapeError, TooLargeError

if TYPE_CHECKING:
    from .report import Report

__all__ = ["analyze", "DEFAULT_MEMORY_BUDGET", "mixing_like"]

#: Default budget (bytes) for the operators of one layer of one sequence; override with
#: ``memory_budget=`` or the environment variable ``ESS_MEMORY_BUDGET`` (bytes, or with a
#: ``K``/``M``/``G`` suffix).
DEFAULT_MEMORY_BUDGET = 4 * 1024**3

_MIXING_NAME = re.compile(
    r"attn|attention|mamba|mixer|ssm|s4|s6|conv|rnn|gru|lstm|hyena|rwkv|retention|recurren|scan|mlstm|slstm|griffin|lru"
    r"|delta|linearattention|retnet|xlstm",
    re.I,
)
# parts of a model that never mix the sequence, whatever family prefix their class name carries
_NOT_MIXING = re.compile(
    r"(norm|normgated|mlp|feedforward|ffn|embedding|embeddings|experts|router|moe|model|forcausallm|lmhead|"
    r"pretrainedmodel|cache|dropout|activation|act|conv2d|conv3d)$",
    re.I,
)


def _family_prefix_stripped(module: Any) -> str:
    """The class name without its model-family prefix (``GptOssModel`` -> ``Model``,
    ``RecurrentGemmaRMSNorm`` -> ``RMSNorm``), for classes of ``transformers.models.<family>``."""
    name = type(module).__name__
    parts = type(module).__module__.split(".")
    if len(parts) >= 3 and parts[0] == "transformers" and parts[1] == "models":
        fam = parts[2].replace("_", "").lower()
        i, j = 0, 0
        while i < len(name) and j < len(fam):
            if name[i] == "_":
                i += 1
                continue
            if name[i].lower() != fam[j]:
                break
            i += 1
            j += 1
        if j == len(fam) and i < len(name):
            return name[i:]
    return name


def _pointwise(module: Any) -> bool:
    """A layer that acts on each position alone although its class name says "conv": a 2-D weight
    (GPT-2's ``Conv1D`` is a linear layer) or a kernel of size 1."""
    w = getattr(module, "weight", None)
    if getattr(w, "ndim", None) == 2:
        return True
    ks = getattr(module, "kernel_size", None)
    if isinstance(ks, tuple) and ks and all(int(k) == 1 for k in ks):
        return True
    return False


def mixing_like(module: Any) -> bool:
    """Heuristic: does this module look like it mixes the sequence? (used to list skipped modules).

    Its class name (without the family prefix of a transformers class) must name a mixer (attention,
    Mamba, SSM, convolution, recurrence, ...) and not a part that never mixes (a norm, an MLP, an
    embedding, the model itself, a 2-D/3-D image convolution); pointwise "convolutions" (GPT-2's
    ``Conv1D``, kernel size 1) are not mixers.

    Examples
    --------
    >>> import torch
    >>> from ess.analyze import mixing_like
    >>> mixing_like(torch.nn.MultiheadAttention(8, 2)), mixing_like(torch.nn.Conv1d(4, 4, 3))
    (True, True)
    >>> mixing_like(torch.nn.LayerNorm(8)), mixing_like(torch.nn.Conv1d(4, 4, 1))
    (False, False)
    """
    name = _family_prefix_stripped(module)
    if _NOT_MIXING.search(name):
        return False
    if not _MIXING_NAME.search(name):
        return False
    return not _pointwise(module)


def _budget(memory_budget: Optional[Union[int, float, str]]) -> int:
    name = "memory_budget"
    val: Any = memory_budget
    if val is None:
        val = os.environ.get("ESS_MEMORY_BUDGET")
        name = "ESS_MEMORY_BUDGET (environment variable)"
    if val is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(val, str):
        s = val.strip().upper().rstrip("B")
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(s[-1:], 1)
        try:
            val = float(s[:-1] if mult != 1 else s) * mult
        except ValueError:
            raise InvalidArgumentError(f"{name}: cannot parse {val!r} (bytes, or a number with K/M/G suffix)") from None
    val = float(val)
    if not np.isfinite(val) or val <= 0:
        raise InvalidArgumentError(f"{name}: must be a positive number of bytes, got {val!r}")
    return int(val)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _token_sequence(inputs: Any) -> bool:
    """Is ``inputs`` a numpy array or a non-empty list/tuple of Python or numpy integers (token ids)?"""
    if isinstance(inputs, np.ndarray):
        return True
    return (
        isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(v, (int, np.integer)) for v in inputs)
    )


def _tensor_from_numpy(inputs: Any) -> Any:
    """A numpy array or a list of token ids as a torch tensor (integers as int64; 1-D as one sequence)."""
    import torch

    arr = np.asarray(inputs)
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise DTypeError(f"inputs: numpy arrays must be integer token ids or floats, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64 if arr.dtype.kind in "iu" else None))


def _tensor_inputs(inputs: Any) -> Tuple[str, Any, Optional[Any]]:
    """Validate a tensor of inputs -> ("args", (tensor,), the tensor when it holds token ids, else None)."""
    import torch

    t = inputs
    if t.dtype in (torch.complex64, torch.complex128, torch.bool):
        raise DTypeError(f"inputs: unsupported dtype {t.dtype} (token ids must be integers, embeddings floating point)")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() < 2:
        raise ShapeError(f"inputs: expected (batch, length[, features]), got shape {tuple(inputs.shape)}")
    if t.numel() == 0 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"inputs: empty (shape {tuple(t.shape)}); need at least one sequence of length >= 1")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidArgumentError("inputs: contains NaN or infinity")
    return "args", (t,), (t if not t.is_floating_point() else None)


def _prepare_inputs(inputs: Any) -> Tuple[str, Any, Optional[Any]]:
    """Normalise ``inputs`` -> (call style, payload, token tensor or None), with validation."""
    import torch

    if inputs is None:
        raise InvalidArgumentError(
            "inputs: required (a tensor of token ids (batch, length), a dict of keyword arguments, or a tuple of positional arguments)"
        )
    if _token_sequence(inputs):
        inputs = _tensor_from_numpy(inputs)
    if isinstance(inputs, torch.Tensor):
        return _tensor_inputs(inputs)
    if isinstance(inputs, dict):
        if not inputs:
            raise ShapeError("inputs: empty dict")
        toks = inputs.get("input_ids")
        if toks is not None and isinstance(toks, torch.Tensor) and (toks.numel() == 0):
            raise ShapeError(f"inputs: input_ids is empty (shape {tuple(toks.shape)})")
        return "kwargs", inputs, toks
    if isinstance(inputs, tuple):
        if not inputs:
            raise ShapeError("inputs: empty tuple")
        first = inputs[0]
        return "args", inputs, (first if isinstance(first, torch.Tensor) and not first.is_floating_point() else None)
    raise DTypeError(f"inputs: expected a torch.Tensor, numpy array, dict or tuple, got {type(inputs).__name__}")


def _select(found: List[Tuple[str, Any]], layers: Optional[Union[str, Sequence[str]]]) -> List[Tuple[str, Any]]:
    if layers is None:
        return found
    pats = [layers] if isinstance(layers, str) else list(layers)
    if not pats:
        raise InvalidArgumentError("layers: empty selection")
    chosen = [(n, e) for n, e in found if any(n == p or fnmatch.fnmatchcase(n, p) for p in pats)]
    unmatched = [p for p in pats if not any(n == p or fnmatch.fnmatchcase(n, p) for n, _ in found)]
    if unmatched:
        raise InvalidArgumentError(
            f"layers: {unmatched} match no supported layer; supported layers are {[n for n, _ in found]}"
        )
    return chosen


def _positions(positions: Any, L: int) -> Optional[np.ndarray]:
    if positions is None:
        return None
    p = np.asarray(positions)
    if p.dtype.kind not in "iu":
        raise DTypeError(f"positions: must be integers, got dtype {p.dtype}")
    if p.ndim != 1 or p.size == 0:
        raise ShapeError(f"positions: must be a non-empty one-dimensional array, got shape {p.shape}")
    if p.min() < 0 or p.max() >= L:
        raise OutOfRangeError(
            f"positions: must lie in [0, {L}) for inputs of length {L}; got min {p.min()}, max {p.max()}"
        )
    if np.any(np.diff(p) <= 0):
        raise OutOfRangeError("positions: must be strictly increasing")
    return p.astype(np.int64)


def discover(model: Any) -> Tuple[List[Tuple[str, Any]], List[Tuple[str, str]]]:
    """Extractors of the supported layers of ``model``, and ``(name, type)`` of the mixer-like modules
    that are not supported.

    Modules are visited from the outside in. A module with an extractor is analysed and its
    submodules are not searched. A mixer-like module (:func:`mixing_like`) without one is either a
    container (a decoder layer around a mixer: it holds a mixer-like or supported module with
    submodules of its own, searched further) or a mixer: then it is listed as skipped under its own
    name and class, and its parts (the short ``conv1d`` inside a Mamba mixer) are not analysed on
    their own as if they were the layer.

    Examples
    --------
    >>> import torch
    >>> from ess.analyze import discover
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> extractors, skipped = discover(model)
    >>> [name for name, _ in extractors], skipped
    (['blocks.0.mixer', 'blocks.1.mixer'], [])
    >>> class ToyRecurrence(torch.nn.Module):          # a mixer-like name, no extractor
    ...     def forward(self, x):
    ...         return x.cumsum(1)
    >>> discover(torch.nn.Sequential(torch.nn.Linear(4, 4), ToyRecurrence()))[1]
    [('1', '...ToyRecurrence')]
    """
    from .operators import find_extractor

    mods = list(model.named_modules())
    exts: Dict[str, Any] = {}
    for name, mod in mods:
        ex = find_extractor(mod, name)
        if ex is not None:
            exts[name] = ex

    def inside(name: str, prefix: str) -> bool:
        return prefix == "" or name == prefix or name.startswith(prefix + ".")

    def is_container(name: str) -> bool:
        if name == "" and any(n != "" for n in exts):
            return True  # the model itself, around supported layers, is never one mixer
        for n, m in mods:
            if n == name or not inside(n, name) or n == "":
                continue
            if n in exts and exts[n].kind != "conv":
                return True  # a supported mixer (attention, recurrence) inside
            if next(iter(m.children()), None) is None:
                continue  # a leaf (a short conv, a gate): a part of a mixer, not a mixer of its own
            if n in exts or mixing_like(m):
                return True
        return False

    found: List[Tuple[str, Any]] = []
    skipped: List[Tuple[str, str]] = []
    closed: List[str] = []  # subtrees not searched further
    for name, mod in mods:
        if any(inside(name, c) and name != c for c in closed):
            continue
        if name in exts:
            found.append((name, exts[name]))
            closed.append(name)
        elif mixing_like(mod) and not is_container(name):
            skipped.append((name or "<model>", f"{type(mod).__module__}.{type(mod).__qualname__}"))
            closed.append(name)
    return found, skipped


#: operators per call of the structured kernel (bounds the float64 copies of the factors)
STRUCTURED_CHUNK = 512


def _code(table: Dict[str, int], key: str) -> int:
    """The category code of ``key`` (added on first sight)."""
    if key not in table:
        table[key] = len(table)
    return table[key]


def _structured_curves(
    fac: Any, method: str, atol: Optional[float], rtol: Optional[float], pos_arr: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    """Tolerance and entropy curves ``(n_ops, n_positions)`` of a :class:`~ess.operators.base.Factors`
    by the structured kernel, in chunks of operators."""
    from .structured import ssm_ess

    native = getattr(fac, "ess_curves", None)
    if native is not None:  # native parameters (SelectiveFactors): the kernel forms the factors in place
        res = native(method, atol, rtol, pos_arr)
        if method == "both":
            return res.tolerance, res.entropy
        nan = np.full_like(res, np.nan)
        return (res, nan) if method == "tolerance" else (nan, res)
    n = fac.shape[0]
    tols, ents = [], []
    for c0 in range(0, n, STRUCTURED_CHUNK):
        c1 = min(n, c0 + STRUCTURED_CHUNK)
        A = None if fac.A is None else fac.A[c0:c1]
        res = ssm_ess(
            A,
            fac.B[c0:c1],
            fac.C[c0:c1],
            transition=fac.transition,
            method=method,
            atol=atol,
            rtol=rtol,
            positions=pos_arr,
        )
        if method == "both":
            tols.append(res.tolerance)  # type: ignore[union-attr]
            ents.append(res.entropy)  # type: ignore[union-attr]
        elif method == "tolerance":
            tols.append(res)
            ents.append(np.full_like(res, np.nan))
        else:
            ents.append(res)
            tols.append(np.full_like(res, np.nan))
    return np.concatenate(tols), np.concatenate(ents)


def _add_jacobian(
    model: Any, found: List[Tuple[str, Any]], skipped: List[Tuple[str, str]], jacobian: Union[str, Sequence[str]]
) -> Tuple[List[Tuple[str, Any]], List[Tuple[str, str]]]:
    """Put the modules named by ``jacobian`` on the Jacobian route (replacing any extractor of theirs or of
    modules inside them; a skipped entry of the same name is dropped)."""
    from .operators.jacobian import JacobianExtractor

    pats = [jacobian] if isinstance(jacobian, str) else list(jacobian)
    if not pats:
        raise InvalidArgumentError("jacobian: empty selection")
    mods = dict(model.named_modules())
    chosen = [n for n in mods if n and any(n == p or fnmatch.fnmatchcase(n, p) for p in pats)]
    unmatched = [p for p in pats if not any(n == p or fnmatch.fnmatchcase(n, p) for n in chosen)]
    if unmatched:
        raise InvalidArgumentError(f"jacobian: {unmatched} match no module of the model")

    def under(n: str, c: str) -> bool:
        return n == c or n.startswith(c + ".") or c.startswith(n + ".")

    found = [(n, e) for n, e in found if not any(under(n, c) for c in chosen)]
    skipped = [(n, t) for n, t in skipped if not any(under(n, c) for c in chosen)]
    found += [(c, JacobianExtractor(mods[c], c)) for c in chosen]
    order = {n: i for i, n in enumerate(mods)}
    found.sort(key=lambda x: order.get(x[0], 0))
    return found, skipped


def _ess_device(arg: Any, model_device: Any) -> Any:
    """The device of the torch route for the dense ESS, or ``None`` for the Rust kernel: ``arg`` when
    given, else the model's device when it is a CUDA device (others, e.g. MPS without float64, go to the
    host)."""
    if isinstance(arg, str) and arg == "host":
        return None
    if arg is not None:
        from ._torch_dense import resolve_device

        return resolve_device(arg)
    return model_device if model_device.type == "cuda" else None


#: print the time estimate before the ESS part when it exceeds this many seconds
ESTIMATE_PRINT_SECONDS = 10.0


def _dense_ess(
    T: Any,
    method: str,
    atol: Optional[float],
    rtol: Optional[float],
    pos_arr: Optional[np.ndarray],
    ess_device: Any,
    precision: str,
) -> Tuple[np.ndarray, np.ndarray]:
    """Tolerance and entropy curves ``(n_ops, n_positions)`` of dense operators (NaN for a curve not asked for)."""
    from ._dense import effective_state_size

    res = effective_state_size(
        T, method=method, atol=atol, rtol=rtol, positions=pos_arr, device=ess_device, precision=precision
    )
    if method == "both":
        return res.tolerance, res.entropy  # type: ignore[union-attr]
    if method == "tolerance":
        return res, np.full_like(res, np.nan)  # type: ignore[return-value]
    return np.full_like(res, np.nan), res  # type: ignore[return-value]


def _calibration_batch(nops: int, on_torch: bool) -> int:
    """Operators timed on their own for the estimate: those the kernel runs side by side (half the cores
    on the host, where each operator runs its two half-sweeps in parallel; one on the torch route)."""
    if on_torch:
        return 1
    threads = int(os.environ.get("RAYON_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    return max(1, min(nops - 1, threads // 2))


def _check_options(model: Any, method: str, collapse: float, saturation: float) -> None:
    """The checks of ``model``, ``method`` and the flag thresholds that need nothing else."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise DTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if method not in ("both", "tolerance", "entropy"):
        raise InvalidArgumentError(f"method: expected 'both', 'tolerance' or 'entropy', got {method!r}")
    if not (0.0 <= collapse < saturation <= 1.0):
        raise InvalidArgumentError(
            f"collapse and saturation: need 0 <= collapse < saturation <= 1, got {collapse}, {saturation}"
        )


def _input_length(style: str, payload: Any, tok: Optional[Any]) -> Optional[int]:
    """The sequence length of the inputs when it can be read before the forward pass, else ``None``."""
    import torch

    if style == "args" and isinstance(payload[0], torch.Tensor) and payload[0].dim() >= 2:
        return int(payload[0].shape[1])
    if tok is not None and isinstance(tok, torch.Tensor) and tok.dim() >= 1:
        return int(tok.shape[-1])
    return None


def _supported_layers(
    model: Any, jacobian: Optional[Union[str, Sequence[str]]], layers: Optional[Union[str, Sequence[str]]]
) -> Tuple[List[Tuple[str, Any]], List[Tuple[str, str]]]:
    """The layers to analyse with their extractors (discovered, plus the Jacobian route, then the
    selection ``layers``), and the mixer-like modules that are not supported."""
    found, skipped = discover(model)
    if jacobian is not None:
        found, skipped = _add_jacobian(model, found, skipped, jacobian)
    if not found:
        from .operators.hf_attention import unsupported_reason

        seen = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for _, m in model.named_modules()})
        mods = dict(model.named_modules())
        why = []  # each mixer-like module without an extractor, by its class, and why when that is known
        for n, t in skipped:
            reason = unsupported_reason(mods.get(n))
            why.append(f"{n} ({t.rsplit('.', 1)[-1]}{': ' + reason if reason else ''})")
        raise InvalidArgumentError(
            f"model: no supported sequence-mixing layer found in {type(model).__name__}. "
            + (f"Mixer-like modules without an extractor: {'; '.join(why)}. " if why else "")
            + f"Module types found: {seen}. Register an extractor with ess.operators.register(ModuleType, factory)."
        )
    return _select(found, layers), skipped


def _model_device(model: Any) -> Any:
    """The device of the model: that of its first parameter, else of its first buffer, else the CPU."""
    import torch

    return next((p.device for p in model.parameters()), None) or next(
        (b.device for b in model.buffers()), torch.device("cpu")
    )


def _forward(model: Any, found: List[Tuple[str, Any]], style: str, payload: Any) -> float:
    """Run one forward pass with the extractors' hooks attached (eval mode, no gradients; hooks removed
    and training flags restored afterwards); return its time in seconds. A layer called more than once
    is an error."""
    import torch

    modes = {m: m.training for m in model.modules()}
    handles: List[Any] = []
    calls: Dict[str, int] = {name: 0 for name, _ in found}
    t0 = time.perf_counter()
    try:
        for name, ex in found:
            handles.extend(ex.attach())

            def count(mod: Any, args: Any, name: str = name) -> None:
                calls[name] += 1

            handles.append(ex.module.register_forward_pre_hook(count))
        model.eval()
        with torch.no_grad():
            if style == "kwargs":
                model(**payload)
            else:
                model(*payload)
    except BaseException:
        for _, ex in found:
            ex.clear()
        raise
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    t_forward = time.perf_counter() - t0
    shared = {name: c for name, c in calls.items() if c > 1}
    if shared:
        for _, ex in found:
            ex.clear()
        desc = ", ".join(f"{name!r} ({c} calls)" for name, c in shared.items())
        raise InvalidArgumentError(
            f"model: {desc} ran more than once in one forward pass (a module shared between places in the network); "
            "its captures would describe only its last call, so no operators are reported for it. Leave it out with "
            "layers=[...] (the other layers are analysed as usual), or give each use its own module."
        )
    return t_forward


def _progress_bar(progress: bool, total: int) -> Any:
    """A tqdm bar over ``total`` layers when ``progress`` (and tqdm is installed), else ``None``."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="ess.analyze", unit="layer", leave=False)
    except ImportError:  # pragma: no cover - tqdm is part of the analyze extra
        return None


def _check_budget(name: str, need: int, budget: int, use_struct: bool) -> None:
    """Raise :class:`TooLargeError` when one sequence of layer ``name`` needs more than ``budget`` bytes."""
    if need > budget:
        raise TooLargeError(
            f"layer {name!r}: its {'factors' if use_struct else 'operators'} need about {_fmt_bytes(need)} "
            f"for one sequence, over the memory budget of {_fmt_bytes(budget)}. Use a shorter input "
            f"({'memory grows as L per channel' if use_struct else 'memory grows as L^2 per head/channel'}), "
            f"select fewer layers with layers=..., pass positions=... to cut the compute, or raise "
            f"memory_budget= (or $ESS_MEMORY_BUDGET)."
        )


def _nonfinite_operator_error(name: str, T: Any, labels: Sequence[str], s: int) -> NonFiniteError:
    """The error naming the first operator of ``T`` (layer ``name``, sample ``s``) with a NaN or inf."""
    import torch

    fin = (
        torch.isfinite(T).reshape(T.shape[0], -1).all(dim=1).cpu().numpy()
        if isinstance(T, torch.Tensor)
        else np.isfinite(T).reshape(T.shape[0], -1).all(axis=1)
    )
    h = int(np.flatnonzero(~fin)[0])
    return NonFiniteError(
        f"layer {name!r}: operator {h} ({labels[h]}) contains NaN or inf on sample {s} "
        "(a non-finite weight or activation in this layer or before it?)"
    )


class _Rows(NamedTuple):
    """The rows of one layer and sequence, kept as what they are made of until the table is built:
    ``nops x npos`` rows, operator-major; names as codes into :attr:`_EssPass.cats`."""

    sample: int
    layer: int
    kind: int
    operators: np.ndarray  # (nops,) codes of the operator labels
    positions: np.ndarray  # (npos,) split points, int64
    length: int
    tol: np.ndarray  # (nops, npos) float64
    ent: np.ndarray  # (nops, npos) float64
    tss: np.ndarray  # (nops,) float64
    shared: np.ndarray  # (nops,) int64


#: threads that fill the report's columns (the first touch of gigabytes of fresh memory is most of
#: the report's time on a large model, and it goes faster on several cores): the cores this process
#: may run on, at most four
ASSEMBLY_THREADS = max(
    1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)


def _token_row(token_ids: Optional[np.ndarray], c: _Rows) -> np.ndarray:
    """The token id at each split point of chunk ``c`` (``-1`` where its sequence or position has none)."""
    P = c.positions
    out = np.full(len(P), -1, dtype=np.int64)
    if token_ids is not None and c.sample < token_ids.shape[0]:
        ids = token_ids[c.sample]
        ok = P < len(ids)
        out[ok] = ids[P[ok]]
    return out


def _assemble(
    chunks: List[_Rows], cats: Dict[str, Dict[str, int]], token_ids: Optional[np.ndarray] = None
) -> Dict[str, Any]:
    """The columns of the report (``TABLE_COLUMNS``; ``token`` only when ``token_ids`` is given) from the
    chunks of rows: each column allocated once at its full length and filled chunk by chunk (no
    per-chunk columns, no concatenation), several columns at a time on :data:`ASSEMBLY_THREADS`
    threads; the names as :class:`pandas.Categorical` columns, categories sorted
    (:func:`ess.report._sorted_categories`), codes written in their final integer type. Empties
    ``chunks`` (each curve is freed once copied, before the last columns are allocated)."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from .report import TABLE_COLUMNS, _sorted_categories

    sizes = [len(c.operators) * len(c.positions) for c in chunks]
    ends = np.cumsum([0] + sizes).tolist()
    n = ends[-1]

    def fill(dtype: Any, value: Any, zero: Any = None) -> np.ndarray:
        # Fresh memory is most of the report's cost on a large model (its first touch, gigabytes of
        # rows). So a column whose chunks are mostly zero (``sample`` of a one-sequence analysis)
        # starts from ``np.zeros`` (lazily zeroed pages, never written where a chunk is zero), and a
        # ``value`` that is a list of per-chunk arrays (the curves) is consumed: each array is
        # dropped once copied, so the column's next pages can reuse its memory.
        out = np.zeros(n, dtype=dtype) if zero is not None else np.empty(n, dtype=dtype)
        for i, (c, a, b) in enumerate(zip(chunks, ends[:-1], ends[1:])):
            if zero is not None and zero(c):
                continue
            dst = out[a:b].reshape(len(c.operators), len(c.positions))
            if isinstance(value, list):
                dst[...] = value[i]
                value[i] = None
            else:
                dst[...] = value(c)
        return out

    def filled(pool: Any, jobs: Dict[str, Tuple[Any, ...]]) -> Dict[str, np.ndarray]:
        futures = {k: pool.submit(fill, *job) for k, job in jobs.items()}
        return {k: f.result() for k, f in futures.items()}

    ranks = {k: _sorted_categories(list(cats[k])) for k in ("layer", "kind", "operator")}
    jobs: Dict[str, Tuple[Any, ...]] = {}
    for k, (rank, _) in ranks.items():
        attr = "operators" if k == "operator" else k
        jobs[k] = (rank.dtype, lambda c, attr=attr, rank=rank: rank[np.asarray(getattr(c, attr))].reshape(-1, 1))
    jobs["sample"] = (np.int64, lambda c: c.sample, lambda c: c.sample == 0)
    jobs["index"] = (np.int64, lambda c: np.arange(len(c.operators))[:, None])
    jobs["position"] = (np.int64, lambda c: c.positions[None, :])
    # the curves leave the chunks (their only other holder) and are freed one by one as they are copied
    jobs["ess_tolerance"] = (np.float64, [c.tol for c in chunks])
    jobs["ess_entropy"] = (np.float64, [c.ent for c in chunks])
    none = np.zeros((0, 0))
    chunks[:] = [c._replace(tol=none, ent=none) for c in chunks]
    with ThreadPoolExecutor(max_workers=ASSEMBLY_THREADS) as pool:
        rows: Dict[str, Any] = filled(pool, jobs)
        jobs = {  # (allocated once every curve has been copied and freed)
            "tss": (np.float64, lambda c: c.tss[:, None]),
            "bound": (np.int64, lambda c: np.minimum(c.positions, c.length - c.positions)[None, :]),
            "shared": (np.int64, lambda c: c.shared[:, None]),
        }
        if token_ids is not None and n:
            jobs["token"] = (np.int64, lambda c: _token_row(token_ids, c)[None, :])
        rows.update(filled(pool, jobs))
    chunks.clear()
    for k, (_, names) in ranks.items():
        rows[k] = pd.Categorical.from_codes(rows[k], categories=names)
    return {k: rows[k] for k in TABLE_COLUMNS if k in rows}


def _tokens_and_markers(
    tok: Optional[Any], markers: Optional[Iterable[int]]
) -> Tuple[Optional[np.ndarray], Dict[int, List[int]]]:
    """The token ids on the host ``(batch, length)`` (or ``None``) and, per sequence, the positions of
    the marker tokens."""
    tok_np = None
    if tok is not None:
        tok_np = tok.detach().to("cpu").numpy()
        if tok_np.ndim == 1:
            tok_np = tok_np[None]
    marker_pos: Dict[int, List[int]] = {}
    if markers is not None and tok_np is not None:
        mk = set(int(m) for m in markers)
        for s in range(tok_np.shape[0]):
            marker_pos[s] = [int(i) for i, t in enumerate(tok_np[s]) if int(t) in mk]
    return tok_np, marker_pos


class _EssPass:
    """The ESS part of :func:`analyze`: one layer at a time and one sequence at a time, the layer's
    operators (or factors) are formed, their curves computed and appended as column chunks.

    Holds the options of the pass, the columns, the category tables, the per-layer metadata, and what
    the first analysed layer fixes (the sequence length, the positions) or calibrates (the time
    estimate)."""

    def __init__(
        self,
        found: List[Tuple[str, Any]],
        skipped: List[Tuple[str, str]],
        *,
        method: str,
        atol: Optional[float],
        rtol: Optional[float],
        positions: Any,
        budget: int,
        materialize: bool,
        ess_device: Any,
        precision: str,
        progress: bool,
        bar: Any,
    ) -> None:
        self.found = found
        self.skipped = skipped  # appended to: layers not called in the forward pass
        self.method, self.atol, self.rtol = method, atol, rtol
        self.positions = positions
        self.budget = budget
        self.materialize = materialize
        self.ess_device = ess_device
        self.precision = precision
        self.progress = progress
        self.bar = bar
        # the rows so far, one chunk per layer and sequence; the token column is added by the report
        self.cols: List[_Rows] = []
        self.cats: Dict[str, Dict[str, int]] = {"layer": {}, "kind": {}, "operator": {}}
        self.layer_meta: List[Dict[str, Any]] = []
        self.L_seen: Optional[int] = None
        self.pos_arr: Optional[np.ndarray] = None
        self.estimate: Optional[float] = None

    def run(self) -> None:
        """Analyse every layer; the captures of every extractor are cleared in the end, also on error."""
        bar = self.bar
        try:
            for name, ex in self.found:
                if bar is not None:
                    bar.set_postfix_str(name, refresh=False)
                if self._layer(name, ex) and bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            for _, ex in self.found:
                ex.clear()

    def _layer(self, name: str, ex: Any) -> bool:
        """Analyse layer ``name``; ``False`` (and listed as skipped) when it was not called in the forward."""
        n = ex.n_samples()
        if n == 0:
            self.skipped.append(
                (name, f"{type(ex.module).__module__}.{type(ex.module).__qualname__} (not called in forward)")
            )
            return False
        note, route = "", ""
        for s in range(n):
            note, route = self._sample(name, ex, s, n)
        self.layer_meta.append(
            {"layer": name, "kind": ex.kind, "module_type": type(ex.module).__name__, "note": note, "route": route}
        )
        ex.clear()
        return True

    def _sample(self, name: str, ex: Any, s: int, n: int) -> Tuple[str, str]:
        """Curves and rows of sequence ``s`` (of ``n``) of layer ``name``; returns the note of its
        operators and the route taken."""
        use_struct = bool(getattr(ex, "structured", False)) and not self.materialize
        need = int(ex.estimate_factor_bytes(s) if use_struct else ex.estimate_bytes(s))
        _check_budget(name, need, self.budget, use_struct)
        if use_struct:
            ops = ex.factors(s)
            if ops.factors is None:
                raise ShapeError(f"extractor for {name!r} returned no factors")
            nops, L, _ = ops.factors.shape
        else:
            ops, T = self._operators(name, ex, s)
            nops, L = int(T.shape[0]), int(T.shape[1])
        P = self._split_points(name, L)
        if use_struct:
            tol, ent = self._structured(name, ops)
        else:
            tol, ent = self._dense(name, T, ops.labels, s, n, P, L)
            del T
        self._append(name, s, ops, tol, ent, P, L, nops)
        route = "structured" if use_struct else ("jacobian" if ex.kind == "jacobian" else "dense")
        return ops.note, route

    def _operators(self, name: str, ex: Any, s: int) -> Tuple[Any, Any]:
        """The dense operators of sequence ``s``: the extractor's result and the ``(n, L, L)`` array."""
        import torch

        from .operators.base import keep_on_device

        if self.ess_device is not None:
            with keep_on_device():  # attention operators stay on the model's device
                ops = ex.operators(s)
        else:
            ops = ex.operators(s)
        T = ops.operators if isinstance(ops.operators, torch.Tensor) else np.asarray(ops.operators)
        if T.ndim != 3 or T.shape[1] != T.shape[2]:
            raise ShapeError(f"extractor for {name!r} returned operators of shape {tuple(T.shape)}, expected (n, L, L)")
        return ops, T

    def _split_points(self, name: str, L: int) -> np.ndarray:
        """The split points of a layer of length ``L`` (the first layer fixes the length and positions)."""
        if self.L_seen is None:
            self.L_seen = L
            self.pos_arr = _positions(self.positions, L)
        elif L != self.L_seen:
            raise ShapeError(f"layer {name!r} has sequence length {L}, other layers {self.L_seen}")
        return np.arange(L) if self.pos_arr is None else self.pos_arr

    def _structured(self, name: str, ops: Any) -> Tuple[np.ndarray, np.ndarray]:
        assert ops.factors is not None
        try:
            return _structured_curves(ops.factors, self.method, self.atol, self.rtol, self.pos_arr)
        except NonFiniteError as e:
            raise NonFiniteError(
                f"layer {name!r}: its factors contain NaN or inf (a non-finite weight or "
                f"activation in this layer?): {e}"
            ) from None

    def _dense(
        self, name: str, T: Any, labels: Sequence[str], s: int, n: int, P: np.ndarray, L: int
    ) -> Tuple[np.ndarray, np.ndarray]:
        nops = int(T.shape[0])
        try:  # the kernel checks finiteness; only its error path looks for the operator
            if self.estimate is None and nops > 1:
                return self._calibrated(T, n, P, L)
            return _dense_ess(T, self.method, self.atol, self.rtol, self.pos_arr, self.ess_device, self.precision)
        except NonFiniteError:
            raise _nonfinite_operator_error(name, T, labels, s) from None

    def _calibrated(self, T: Any, n: int, P: np.ndarray, L: int) -> Tuple[np.ndarray, np.ndarray]:
        """Dense curves of ``T``, the first operators timed on their own to estimate the time of the
        whole ESS part (their curves are kept); the estimate is printed when long."""
        nops = int(T.shape[0])
        nc = _calibration_batch(nops, self.ess_device is not None)
        tc = time.perf_counter()
        tol0, ent0 = _dense_ess(
            T[:nc], self.method, self.atol, self.rtol, self.pos_arr, self.ess_device, self.precision
        )
        dt = time.perf_counter() - tc
        tol1, ent1 = _dense_ess(
            T[nc:], self.method, self.atol, self.rtol, self.pos_arr, self.ess_device, self.precision
        )
        tol, ent = np.concatenate([tol0, tol1]), np.concatenate([ent0, ent1])
        n_dense = sum(1 for _, e in self.found if not (getattr(e, "structured", False) and not self.materialize))
        self.estimate = estimate = dt / nc * nops * n * max(n_dense, 1)
        if self.progress and estimate > ESTIMATE_PRINT_SECONDS:
            msg = (
                f"ess.analyze: the dense ESS of {max(n_dense, 1)} layer(s) x {nops} operators x "
                f"{n} sequence(s) x {len(P)} splits (L = {L}) will take about {estimate:.0f} s "
                f"(calibrated on {nc} operator(s) in {dt:.2f} s"
                f"{'' if self.pos_arr is not None else '; positions=ess.split_points(...) computes a subset'})"
            )
            if self.bar is not None:
                self.bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr)
        return tol, ent

    def _append(
        self, name: str, s: int, ops: Any, tol: np.ndarray, ent: np.ndarray, P: np.ndarray, L: int, nops: int
    ) -> None:
        """Keep the rows of one layer and sequence: the curves and the per-operator values, names as codes
        (the table's columns, millions of rows for a large layer at long L, are built once at the end by
        :func:`_assemble`; a Python object per cell would need ~100 bytes per row)."""
        cats = self.cats
        npos = len(P)
        self.cols.append(
            _Rows(
                sample=s,
                layer=_code(cats["layer"], name),
                kind=_code(cats["kind"], ops.kind),
                operators=np.array([_code(cats["operator"], lb) for lb in ops.labels], dtype=np.int64),
                positions=np.asarray(P, dtype=np.int64),
                length=int(L),
                tol=np.asarray(tol, dtype=float).reshape(nops, npos),
                ent=np.asarray(ent, dtype=float).reshape(nops, npos),
                tss=np.asarray(ops.tss, dtype=float).reshape(nops),
                shared=np.asarray(ops.shared or [1] * nops, dtype=np.int64).reshape(nops),
            )
        )


def analyze(
    model: Any,
    inputs: Any,
    *,
    layers: Optional[Union[str, Sequence[str]]] = None,
    positions: Optional[Any] = None,
    method: str = "both",
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    progress: bool = True,
    tokens: Optional[Sequence[str]] = None,
    markers: Optional[Iterable[int]] = None,
    memory_budget: Optional[Union[int, float, str]] = None,
    saturation: float = 0.9,
    collapse: float = 0.1,
    materialize: bool = False,
    jacobian: Optional[Union[str, Sequence[str]]] = None,
    device: Any = None,
    precision: str = "float64",
) -> "Report":
    """Effective state size of every supported sequence-mixing layer of ``model`` on ``inputs``.

    One forward pass runs with extractor hooks on each supported layer (the model in eval mode,
    under ``torch.no_grad``, on its own device; its training flags are restored and every hook is
    removed afterwards, also when the forward raises). On Linux with glibc, freed memory stays in the
    C heap from the forward pass to the end of the ESS computation and is given back afterwards
    (``ESS_KEEP_HEAP=0`` turns this off; see ``ess._heap``). Then, one layer at a time and one sequence at
    a time, the layer's causal operators (per head or channel; channels sharing an operator are
    computed once) are materialised and their ESS curves computed by the dense kernel
    (:func:`ess.effective_state_size`), then freed.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : torch.Tensor ``(batch, length)`` of token ids (numpy arrays and 1-D sequences are
        accepted), a tensor ``(batch, length, features)``, a dict of keyword arguments (e.g. a
        Hugging Face ``input_ids``/``attention_mask``) or a tuple of positional arguments. Moved to
        the model's device.
    layers : qualified module names or ``fnmatch`` patterns (``"blocks.*.mixer"``); default all.
    positions : split points to compute (strictly increasing, in ``[0, L)``); default all. For long
        contexts, a strided or log-spaced subset from :func:`ess.split_points` cuts the time in
        proportion (every split costs about the same); see there for the error a strided subset
        introduces into the per-layer averages (measured on real operators).
    method : ``"both"`` (default), ``"tolerance"`` or ``"entropy"``.
    atol, rtol : threshold of the tolerance-ESS (as in :func:`ess.effective_state_size`).
    progress : show a tqdm progress bar over layers, and, before a long computation (estimated over
        10 s), a line on stderr with the estimated time of the ESS part. The estimate is calibrated on
        the first operators of the first dense layer (timed on their own; their curves are kept) and
        assumes the other layers cost the same; it is also stored as ``meta["seconds_estimate"]``.
    tokens : optional decoded tokens of the (first) sequence, shown in the report.
    markers : token ids that mark segment boundaries (delimiter, EOS); their positions are drawn
        in the plots.
    memory_budget : bytes allowed for the operators of one layer of one sequence (default 4 GiB, or
        ``$ESS_MEMORY_BUDGET``); exceeding it raises :class:`~ess.errors.TooLargeError` before
        anything is allocated.
    saturation, collapse : thresholds of the per-layer flags, as fractions of the attainable ESS
        (mean over positions of ``min(TSS, t, L - t)``).
    materialize : layers with a structured extractor (state-space, SSD, gated linear attention,
        convolutions) hand over factors and run through the structured kernel
        (:func:`ess.structured.ssm_ess`, ``O(L N^3)`` per operator, no ``L x L`` matrix). ``True`` forms the
        dense operators instead and runs the dense kernel (same results, much slower).
    device : where the dense ESS runs. ``None`` (default): on the model's device when that is a CUDA GPU
        (the torch route of :func:`ess.effective_state_size`: the attention operators are formed and
        consumed there, never copied to the host), else the Rust kernel on the host. A device
        (``"cuda"``, ``"cpu"``, ...) selects the torch route on it (``"cpu"`` runs that route on CPU
        torch, e.g. to check it against the kernel); ``"host"`` selects the Rust kernel whatever the
        model's device (operators are then copied to the host). The structured route is unaffected.
    precision : ``"float64"`` (default) or ``"float32"``: arithmetic of the torch route (see
        :func:`ess.effective_state_size`); the Rust kernel accepts only ``"float64"``.
    jacobian : qualified names or ``fnmatch`` patterns of further modules (any token-mixing layer,
        e.g. a custom research mixer) to analyse through their input-output Jacobian at the given input
        in float64 (a local linearisation; :class:`ess.operators.jacobian.JacobianExtractor`). Their
        input and output must be ``(batch, length, features)`` tensors (the first positional argument
        and the first output).

    Returns
    -------
    :class:`ess.Report`

    Examples
    --------
    A small untrained two-layer hybrid model (a short convolution, then softmax attention) on one
    sequence of 8 tokens; the convolution's ESS never exceeds its state size (TSS) ``k - 1 = 3``:

    >>> import torch, ess
    >>> from ess.models.model import HybridConfig, HybridLM
    >>> _ = torch.manual_seed(0)
    >>> model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    >>> report = ess.analyze(model, torch.arange(2, 10).reshape(1, 8), progress=False)
    >>> report
    <ess.Report: 2 layers, 1 sample(s), L = 8, 0 skipped, model ess.models.model.HybridLM>
    >>> report.summary[["layer", "kind", "n_operators", "tss", "max_ess_tolerance"]]
                layer               kind  n_operators  tss  max_ess_tolerance
    0  blocks.0.mixer               conv            8  3.0                3.0
    1  blocks.1.mixer  softmax_attention            2  8.0                4.0
    >>> report.table.groupby("layer")["ess_tolerance"].max().tolist()
    [3.0, 4.0]
    >>> report.table.columns.tolist()
    ['sample', 'layer', 'kind', 'operator', 'index', 'position', 'token', 'ess_tolerance', 'ess_entropy', 'tss', 'bound', 'shared']
    """
    from .report import Report

    device_arg = device  # the parameter; ``device`` below is the model's
    _check_options(model, method, collapse, saturation)
    budget = _budget(memory_budget)
    style, payload, tok = _prepare_inputs(inputs)
    L_in = _input_length(style, payload, tok)
    if L_in is not None:
        _positions(positions, L_in)
    found, skipped = _supported_layers(model, jacobian, layers)
    if precision not in ("float64", "float32"):
        raise InvalidArgumentError(f"precision: expected 'float64' or 'float32', got {precision!r}")
    device = _model_device(model)  # inputs follow the model
    payload = _to_device(payload, device)
    ess_device = _ess_device(device_arg, device)
    # freed memory stays in the C heap until the curves are computed (ess._heap: glibc otherwise maps
    # and unmaps the forward pass's large temporaries layer after layer, each a fresh first touch)
    with _heap.retained():
        t_forward = _forward(model, found, style, payload)

        bar = _progress_bar(progress, len(found))
        ess = _EssPass(
            found,
            skipped,
            method=method,
            atol=atol,
            rtol=rtol,
            positions=positions,
            budget=budget,
            materialize=materialize,
            ess_device=ess_device,
            precision=precision,
            progress=progress,
            bar=bar,
        )
        t1 = time.perf_counter()
        ess.run()
        t_ess = time.perf_counter() - t1
    if not ess.layer_meta:
        raise InvalidArgumentError(
            f"model: no layer was analysed: the supported layers {[n for n, _ in found]} were not called in the "
            f"forward pass; not analysed: {skipped}"
        )
    tok_np, marker_pos = _tokens_and_markers(tok, markers)
    rows = _assemble(ess.cols, ess.cats, tok_np)
    meta = {
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "device": str(device),
        "length": ess.L_seen,
        "n_samples": int(rows["sample"].max() + 1) if len(rows["sample"]) else 0,
        "method": method,
        "atol": atol,
        "rtol": rtol,
        "positions": None if ess.pos_arr is None else ess.pos_arr.tolist(),
        "saturation": saturation,
        "collapse": collapse,
        "memory_budget": budget,
        "seconds_forward": round(t_forward, 4),
        "seconds_ess": round(t_ess, 4),
        "seconds_estimate": None if ess.estimate is None else round(ess.estimate, 4),
        "ess_device": "host (Rust kernel)" if ess_device is None else str(ess_device),
        "precision": precision,
    }
    return Report.from_rows(
        rows,
        layer_meta=ess.layer_meta,
        skipped=skipped,
        tokens=tokens,
        token_ids=tok_np,
        markers=marker_pos,
        meta=meta,
    )
