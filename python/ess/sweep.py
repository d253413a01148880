"""``ess.sweep``: :func:`ess.analyze` over many jobs (models x inputs x options), resumable.

A *job* is one :func:`ess.analyze` call: a model given by name (``"builtin"``, an importable
``"module:function"`` factory, or a local Hugging Face directory), inputs given by a small spec
(token ids, ``{"mqar": ...}``, ``{"random": ...}``, a ``.npy`` file or a ``"module:function"``),
and ``analyze`` options. The model and the inputs are built *inside* the task that runs the job,
so only the spec (a few hundred bytes of JSON) is ever pickled, never a model or its weights.

>>> import ess.sweep as sweep
>>> jobs = sweep.grid({"name": "mqar-{seed}", "model": "builtin",
...                    "inputs": {"mqar": {"n": 2, "seed": "{seed}"}}}, seed=range(4))
>>> out = sweep.run(jobs, "results", executor="processes", max_workers=2)   # doctest: +SKIP
>>> res = sweep.load("results")                                             # doctest: +SKIP
>>> res.table                           # doctest: +SKIP
>>> res.save_report("results/report")   # doctest: +SKIP

``res.table`` is every finished job's tidy table (column ``job`` first); ``save_report`` draws
the comparison figures across jobs (:mod:`ess.compare`).

Executors (the engines schedule; this module only submits one task per job and collects):

* ``None`` / ``"serial"`` (default): in this process, one job after the other;
* ``"processes"``: a :class:`concurrent.futures.ProcessPoolExecutor` (spawned workers);
* any :class:`concurrent.futures.Executor`, e.g. Dask's ``Client.get_executor()``;
* :class:`RayExecutor`: a small adapter over Ray's task API (a job on ``cuda`` asks for a GPU).

Results directory (one per sweep; a partitioned Parquet dataset)::

    results/
      ess-sweep.json                     # marks the directory as an ess sweep (format, version)
      table/job=<name>/part-0.parquet    # the job's tidy table (+ its label columns)
      summary/job=<name>/part-0.parquet  # the job's per-layer summary (+ its label columns)
      jobs/<name>.json                   # the job's record: spec, fingerprint, status, error,
                                         # timings, report meta, SHA-256 of both Parquet files
      report/                            # optional: SweepResults.save_report(results / "report")

Every file is written to a hidden temporary name beside its target, flushed to disk and renamed
over it (``os.replace``), so a partial file is never visible. A job counts as *done* only once
its record is written, and the record is written last: a job whose task died at any point is
missing, and the next run redoes it. A rerun skips done jobs whose spec is unchanged, redoes
missing and failed ones, and refuses (:class:`SweepResultsError`) a done job whose spec changed,
a corrupt file and a file it did not write, rather than mixing results.
Tasks write their own results, so with workers on several machines the directory must be on a
file system they all share.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import importlib
import itertools
import json
import os
import re
import socket
import sys
import string
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import DTypeError, InvalidArgumentError
from .report import CATEGORY_COLUMNS, TABLE_COLUMNS

__all__ = [
    "Job",
    "grid",
    "run",
    "pending",
    "load",
    "SweepOutcome",
    "SweepResults",
    "SweepResultsError",
    "RayExecutor",
    "load_config",
    "FORMAT",
    "VERSION",
]

FORMAT = "ess.sweep"
VERSION = 1
MARKER = "ess-sweep.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_TMP = re.compile(r"^\..+\.[0-9a-f]{8,}\.tmp$")
_OPTIONS = ("layers", "positions", "method", "atol", "rtol", "memory_budget", "saturation", "collapse", "markers")
_INPUT_KINDS = ("tokens", "mqar", "random", "npy", "builtin", "factory")
_TABLE_COLUMNS = ("job",) + TABLE_COLUMNS
_SUMMARY_COLUMNS = (
    "module_type",
    "n_operators",
    "channels",
    "avg_ess_tolerance",
    "avg_ess_entropy",
    "max_ess_tolerance",
    "total_ess",
    "total_tss",
    "utilisation",
    "attainable",
    "fill",
    "saturated",
    "collapsed",
    "note",
)


class SweepResultsError(InvalidArgumentError):
    """A results directory that is not an ess sweep, holds a corrupt or foreign file, or holds a
    done job whose spec differs from the one asked for (never silently mixed).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from ess.sweep import load
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "notes.txt").write_text("not a sweep")
    ...     load(d)
    Traceback (most recent call last):
        ...
    ess.sweep.SweepResultsError: results: '...' is not an ess sweep results directory (no ess-sweep.json)
    """


# ---------------------------------------------------------------------------------------- jobs
def _spec_of_callable(obj: Any, what: str) -> str:
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        raise InvalidArgumentError(
            f"{what}: a callable must be an importable module-level function (got {obj!r}); "
            f"pass it as a 'module:function' string or define it in a module"
        )
    return f"{mod}:{qual}"


def _resolve(spec: str, what: str) -> Any:
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise InvalidArgumentError(f"{what}: expected 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise InvalidArgumentError(f"{what}: cannot load {spec!r}: {e}") from None
    return obj


def _jsonable(x: Any, what: str) -> Any:
    """Canonical JSON-able copy of a spec value (tuples -> lists, numpy scalars -> Python)."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise DTypeError(f"{what}: keys must be strings, got {k!r}")
            out[k] = _jsonable(v, f"{what}.{k}")
        return out
    if isinstance(x, (list, tuple, range)):
        return [_jsonable(v, what) for v in x]
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise DTypeError(f"{what}: expected JSON-like values (str, number, bool, list, dict), got {type(x).__name__}")


def _model_spec(model: Any, w: str) -> str:
    """A job's model as its spec string: ``"builtin"``, ``"module:function"`` or an absolute directory."""
    original = model
    if callable(model) and not isinstance(model, str):
        model = _spec_of_callable(model, f"{w}.model")
    if hasattr(model, "__fspath__"):
        model = os.fspath(model)
    if not isinstance(model, str) or not model:
        raise DTypeError(
            f"{w}.model: expected 'builtin', 'module:function' or a Hugging Face directory, got {type(original).__name__}"
        )
    if model != "builtin" and ":" not in model and not os.path.isdir(model):
        raise InvalidArgumentError(
            f"{w}.model: {model!r} is neither 'builtin', a 'module:function' factory nor a directory"
        )
    return os.path.abspath(model) if os.path.isdir(model) else model


def _inputs_spec(inputs: Any, w: str) -> Any:
    """A job's inputs as a JSON-able spec (token ids, a one-key dict, a string; ``.npy`` paths absolute)."""
    if callable(inputs) and not isinstance(inputs, str):
        inputs = _spec_of_callable(inputs, f"{w}.inputs")
    if hasattr(inputs, "__fspath__"):
        inputs = os.fspath(inputs)
    inputs = _jsonable(inputs, f"{w}.inputs")
    if isinstance(inputs, dict):
        if len(inputs) != 1 and not (set(inputs) == {"factory", "kwargs"}):
            raise InvalidArgumentError(
                f"{w}.inputs: a dict must have exactly one of the keys {_INPUT_KINDS}, got {sorted(inputs)}"
            )
        if set(inputs) == {"factory", "kwargs"}:  # either key order; the task reads the first key
            if not isinstance(inputs["kwargs"], dict):
                raise DTypeError(f"{w}.inputs.kwargs: expected a dict of keyword arguments, got {inputs['kwargs']!r}")
            inputs = {"factory": inputs["factory"], "kwargs": inputs["kwargs"]}
        kind = next(iter(inputs))
        if kind not in _INPUT_KINDS:
            raise InvalidArgumentError(f"{w}.inputs: unknown kind {kind!r}; expected one of {_INPUT_KINDS}")
    elif isinstance(inputs, str) and inputs != "builtin" and ":" not in inputs and not inputs.endswith(".npy"):
        raise InvalidArgumentError(
            f"{w}.inputs: a string must be 'builtin', 'module:function' or a .npy path, got {inputs!r}"
        )
    elif isinstance(inputs, (bool, int, float)):
        raise DTypeError(f"{w}.inputs: expected token ids, a spec dict or a string, got {inputs!r}")
    if isinstance(inputs, str) and inputs.endswith(".npy"):
        inputs = os.path.abspath(inputs)
    return inputs


def _labels_spec(labels: Any, w: str) -> Dict[str, Any]:
    """A job's labels: scalar values under names that shadow no table or summary column."""
    out = _jsonable(dict(labels or {}), f"{w}.labels")
    for k, v in out.items():
        if isinstance(v, (dict, list)):
            raise DTypeError(f"{w}.labels.{k}: labels must be scalars (str, number, bool), got {type(v).__name__}")
        if k in _TABLE_COLUMNS or k in _SUMMARY_COLUMNS or not k or k.startswith("_"):
            raise InvalidArgumentError(f"{w}.labels: {k!r} would shadow a table or summary column; rename it")
    return out


@dataclass(frozen=True)
class Job:
    """One :func:`ess.analyze` call of a sweep (a picklable, JSON-able spec; nothing is built here).

    Parameters
    ----------
    name : unique name in the sweep: letters, digits and ``._+-``, starting with a letter or a
        digit (it names the job's partition ``job=<name>`` and its record ``jobs/<name>.json``).
    model : ``"builtin"`` (the shipped hybrid MQAR model), an importable ``"module:function"``
        factory (or such a module-level function itself) returning a ``torch.nn.Module`` or a
        ``(module, inputs)`` tuple, or the path of a local Hugging Face model directory (loaded
        with ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_kernels=False)``).
    model_kwargs : keyword arguments of the factory (or of ``from_pretrained``).
    inputs : ``None`` (the factory's own inputs; for ``"builtin"`` two shipped MQAR sequences),
        token ids (a list, or a list of lists for a batch), a ``"module:function"`` returning
        inputs, a ``.npy`` path, or a one-key dict: ``{"tokens": ids}``, ``{"builtin": n}`` (the
        first ``n`` shipped MQAR sequences), ``{"mqar": {"n": 2, "seed": 0, ...}}`` (fresh MQAR
        sequences, keys of :class:`ess.models.MQARConfig` allowed), ``{"random": {"length": 32,
        "batch": 1, "seed": 0}}`` (uniform token ids below the model's vocabulary size),
        ``{"npy": path}``, ``{"factory": "module:function", "kwargs": {...}}``.
    options : keyword arguments of :func:`ess.analyze`: ``layers, positions, method, atol, rtol,
        memory_budget, saturation, collapse, markers`` (``positions`` also as ``"start:stop:step"``).
    device : torch device the model is moved to (``"cuda"`` makes :class:`RayExecutor` ask for a GPU).
    seed : ``torch.manual_seed`` before the model is built (random initialisations repeat).
    gpus : GPUs a :class:`RayExecutor` task asks for (default 1 on ``cuda``, else 0).
    labels : scalar values copied as columns into the job's table and summary (``arch``,
        ``checkpoint``, ...) for comparisons; must not shadow a table column.

    Examples
    --------
    >>> from ess.sweep import Job
    >>> job = Job("short", "builtin", inputs=[0, 5, 20, 6, 21, 1, 5, 20], options={"layers": "blocks.3.mixer"})
    >>> job.inputs, job.options, job.device
    ([0, 5, 20, 6, 21, 1, 5, 20], {'layers': 'blocks.3.mixer'}, 'cpu')
    >>> Job("no spaces allowed", "builtin")
    Traceback (most recent call last):
        ...
    ess.errors.InvalidArgumentError: jobs['no spaces allowed'].name: must be 1-200 characters of letters, digits and '._+-', starting with a letter or a digit; got 'no spaces allowed'
    """

    name: str
    model: Any
    inputs: Any = None
    options: Dict[str, Any] = field(default_factory=dict)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    gpus: Optional[float] = None
    labels: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = f"jobs[{self.name!r}]" if isinstance(self.name, str) else "jobs"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidArgumentError(
                f"{w}.name: must be 1-200 characters of letters, digits and '._+-', starting with a letter or a digit; got {self.name!r}"
            )
        object.__setattr__(self, "model", _model_spec(self.model, w))
        object.__setattr__(self, "inputs", _inputs_spec(self.inputs, w))
        opts = _jsonable(dict(self.options or {}), f"{w}.options")
        bad = sorted(set(opts) - set(_OPTIONS))
        if bad:
            raise InvalidArgumentError(
                f"{w}.options: unknown option(s) {bad}; allowed: {list(_OPTIONS)} (progress is set by the sweep)"
            )
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "model_kwargs", _jsonable(dict(self.model_kwargs or {}), f"{w}.model_kwargs"))
        if not isinstance(self.device, str) or not self.device:
            raise DTypeError(f"{w}.device: expected a torch device string, got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DTypeError(f"{w}.seed: expected an integer, got {self.seed!r}")
        if self.gpus is not None and (
            isinstance(self.gpus, bool) or not isinstance(self.gpus, (int, float)) or self.gpus < 0
        ):
            raise InvalidArgumentError(f"{w}.gpus: expected a non-negative number, got {self.gpus!r}")
        object.__setattr__(self, "labels", _labels_spec(self.labels, w))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON spec (what the task receives and the record stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Job":
        known = {"name", "model", "inputs", "options", "model_kwargs", "device", "seed", "gpus", "labels"}
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidArgumentError(f"jobs[{d.get('name')!r}]: unknown field(s) {bad}; allowed: {sorted(known)}")
        if "name" not in d or "model" not in d:
            raise InvalidArgumentError(f"jobs: every job needs 'name' and 'model', got {sorted(d)}")
        return cls(**dict(d))

    @classmethod
    def _trusted(cls, d: Mapping[str, Any]) -> "Job":
        """A job from a spec the driver already validated (in the task: no second check of paths,
        which may not exist on the driver's terms there; a missing one fails the job, recorded)."""
        obj = object.__new__(cls)
        for k, v in d.items():
            object.__setattr__(obj, k, v)
        return obj

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON spec: a done job is skipped only under the same fingerprint."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _substitute(x: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(x, str):
        m = re.fullmatch(r"\{(\w+)\}", x)
        if m and m.group(1) in values:
            return values[m.group(1)]  # keeps the type (int seeds stay ints)
        fields = {f for _, f, _, _ in string.Formatter().parse(x) if f}
        return x.format(**values) if fields and fields <= set(values) else x
    if isinstance(x, Mapping):
        return {k: _substitute(v, values) for k, v in x.items()}
    if isinstance(x, list):
        return [_substitute(v, values) for v in x]
    return x


def grid(template: Mapping[str, Any], **axes: Iterable[Any]) -> List[Job]:
    """Jobs for every combination of the ``axes`` values (their Cartesian product, in order).

    In every string of ``template`` (a :class:`Job` as a dict), ``"{axis}"`` is replaced by the
    axis value (an exact ``"{axis}"`` keeps the value's type); each axis value is also added to the
    job's ``labels``. When ``name`` mentions no axis, ``-<axis>_<value>`` is appended for each.

    Examples
    --------
    >>> [j.name for j in grid({"name": "m-{seed}", "model": "builtin", "inputs": {"mqar": {"seed": "{seed}"}}}, seed=[0, 1])]
    ['m-0', 'm-1']
    """
    if not isinstance(template, Mapping):
        raise DTypeError(f"template: expected a dict of Job fields, got {type(template).__name__}")
    if "name" not in template:
        raise InvalidArgumentError("template: needs a 'name' (with '{axis}' placeholders)")
    names = list(axes)
    vals = []
    for a in names:
        v = list(axes[a])
        if not v:
            raise InvalidArgumentError(f"axes: {a!r} has no values")
        vals.append(v)
    t = dict(template)
    if callable(t.get("model")) and not isinstance(t.get("model"), str):
        t["model"] = _spec_of_callable(t["model"], "template.model")
    mentioned = {f for _, f, _, _ in string.Formatter().parse(str(t["name"])) if f}
    jobs: List[Job] = []
    for combo in itertools.product(*vals):
        values = dict(zip(names, combo))
        d = _substitute(copy.deepcopy(t), values)
        if names and not (set(names) & mentioned):
            d["name"] = str(d["name"]) + "".join(
                re.sub(r"[^A-Za-z0-9._+-]", "_", f"-{a}_{v}") for a, v in values.items()
            )
        d["labels"] = {**dict(d.get("labels") or {}), **values}
        jobs.append(Job.from_dict(d))
    return jobs


def _as_jobs(jobs: Any) -> List[Job]:
    if isinstance(jobs, (Job, Mapping)):
        jobs = [jobs]
    try:
        items = list(jobs)
    except TypeError:
        raise DTypeError(f"jobs: expected a list of Job (or dicts of Job fields), got {type(jobs).__name__}") from None
    if not items:
        raise InvalidArgumentError("jobs: empty")
    out = [j if isinstance(j, Job) else Job.from_dict(j) if isinstance(j, Mapping) else None for j in items]
    for j, raw in zip(out, items):
        if j is None:
            raise DTypeError(f"jobs: expected Job or dict items, got {type(raw).__name__}")
    seen: Dict[str, int] = {}
    for j in out:
        seen[j.name] = seen.get(j.name, 0) + 1  # type: ignore[union-attr]
    dup = sorted(n for n, c in seen.items() if c > 1)
    if dup:
        raise InvalidArgumentError(f"jobs: duplicate names {dup} (each job needs its own name)")
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- inside the task
def _build_model(job: Job) -> Any:
    import torch

    torch.manual_seed(job.seed)
    inputs = None
    if job.model == "builtin":
        from .models import load_builtin

        if job.model_kwargs:
            raise InvalidArgumentError(f"jobs[{job.name!r}].model_kwargs: the built-in model takes none")
        model = load_builtin("cpu")
    elif os.path.isdir(job.model):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as e:  # pragma: no cover
            raise ImportError("a Hugging Face directory as model needs transformers (pip install 'ess[hf]')") from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per job in a worker's log helps nobody
        # the reference modules unless the job asks otherwise: transformers >= 5.25 swaps some layers for hub
        # kernels by default, which need the network and which no extractor reads
        kw = {"use_kernels": False, **job.model_kwargs}
        model = AutoModelForCausalLM.from_pretrained(job.model, local_files_only=True, **kw)
    else:
        out = _resolve(job.model, f"jobs[{job.name!r}].model")(**job.model_kwargs)
        model, inputs = out if isinstance(out, tuple) else (out, None)
    if not isinstance(model, torch.nn.Module):
        raise DTypeError(
            f"jobs[{job.name!r}].model: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model.to(job.device), inputs


def _vocab(model: Any) -> Optional[int]:
    for attr in ("cfg", "config"):
        v = getattr(getattr(model, attr, None), "vocab_size", None)
        if isinstance(v, int):
            return v
    return None


def _inputs_dict(spec: Any) -> Dict[str, Any]:
    """A validated inputs spec in its one-key dict form (``{"tokens": ...}``, ``{"npy": path}``, ...)."""
    if isinstance(spec, str):
        if spec == "builtin":
            return {"builtin": 2}
        return {"npy": spec} if spec.endswith(".npy") else {"factory": spec}
    if isinstance(spec, list):
        return {"tokens": spec}
    return spec


def _random_inputs(job: Job, model: Any, arg: Any, w: str) -> Any:
    """``{"random": {length, batch, seed, vocab_size}}``: uniform token ids, seeded."""
    import torch

    a = dict(arg or {})
    V = int(a.pop("vocab_size", 0)) or _vocab(model)
    if not V:
        raise InvalidArgumentError(f"{w}.random: the model has no config.vocab_size; give random.vocab_size")
    L, B, seed = int(a.pop("length", 32)), int(a.pop("batch", 1)), int(a.pop("seed", job.seed))
    if a:
        raise InvalidArgumentError(f"{w}.random: unknown key(s) {sorted(a)}; allowed: length, batch, seed, vocab_size")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, L), generator=g)


def _build_inputs(job: Job, model: Any, own: Any) -> Any:
    import numpy as np
    import torch

    spec, w = job.inputs, f"jobs[{job.name!r}].inputs"
    if spec is None:
        if own is not None:
            return own
        if job.model != "builtin":
            raise InvalidArgumentError(f"{w}: required (the model factory returned no inputs)")
        spec = {"builtin": 2}
    spec = _inputs_dict(spec)
    kind, arg = next(iter(spec.items()))
    if kind == "tokens":
        arr = np.asarray(arg)
        if arr.dtype.kind not in "iu":
            raise DTypeError(f"{w}.tokens: expected integer token ids (a list or a list of equal-length lists)")
        return torch.from_numpy(np.atleast_2d(arr).astype(np.int64))
    if kind == "builtin":
        from .models import builtin_inputs

        return builtin_inputs(int(arg))
    if kind == "mqar":
        from .models.mqar import MQARConfig, generate

        a = dict(arg or {})
        n, seed = int(a.pop("n", 1)), int(a.pop("seed", job.seed))
        try:
            cfg = MQARConfig(**a)
        except TypeError as e:
            raise InvalidArgumentError(f"{w}.mqar: {e}") from None
        return generate(n, cfg, seed=seed)[0]
    if kind == "random":
        return _random_inputs(job, model, arg, w)
    if kind == "npy":
        arr = np.load(arg)
        return (
            torch.from_numpy(np.ascontiguousarray(arr))
            if arr.dtype.kind != "i"
            else torch.from_numpy(arr.astype(np.int64))
        )
    if kind == "factory":
        return _resolve(arg, f"{w}.factory")(**dict(spec.get("kwargs") or {}))
    raise InvalidArgumentError(f"{w}: unknown kind {kind!r}")  # pragma: no cover - validated in Job


def _analyze_job(job: Job) -> Any:
    import numpy as np

    from .analyze import analyze

    model, own = _build_model(job)
    inputs = _build_inputs(job, model, own)
    opts = dict(job.options)
    if isinstance(opts.get("positions"), str):
        L = int(inputs.shape[-1]) if hasattr(inputs, "shape") else None
        if L is None:
            raise InvalidArgumentError(f"jobs[{job.name!r}].options.positions: 'start:stop:step' needs tensor inputs")
        parts = [int(p) if p.strip() else None for p in opts["positions"].split(":")]
        opts["positions"] = np.arange(L)[slice(*parts)]
    if "markers" not in opts:
        if job.model == "builtin":
            from .models import SEP

            opts["markers"] = [SEP]
    return analyze(model, inputs, progress=False, **opts)


def _execute(spec: Dict[str, Any], results: str, threads: Optional[int], token: str = "") -> Dict[str, Any]:
    """The task: build, analyse, write. Returns a small status dict; a job's exception is recorded
    (status ``failed``), only infrastructure failures (a dead worker, a full disk) propagate.
    ``token`` is unique per submission, so that engines which cache results by their arguments
    (Dask's pure tasks) always run the job again."""
    started = time.time()
    t0, c0 = time.perf_counter(), time.process_time()
    job = Job._trusted(spec)
    prior = _done_record(Path(results), job)
    if prior is not None:  # the engine ran this task again (a retry, a recomputed lost result): keep the job
        return {
            "name": job.name,
            "status": "done",
            **{k: float(prior.get(k, 0.0)) for k in ("seconds", "cpu_seconds", "write_seconds")},
            "error": None,
        }
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
    old_threads = None
    set_env = False
    try:
        if threads:
            if "RAYON_NUM_THREADS" not in os.environ:  # only effective in a fresh worker process
                os.environ["RAYON_NUM_THREADS"] = str(threads)
                set_env = True
            import torch

            old_threads = torch.get_num_threads()
            torch.set_num_threads(int(threads))
        try:
            report = _analyze_job(job)
        except Exception as e:  # the job's own failure: recorded, never raised
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            _write_failed(Path(results), job, e, traceback.format_exc(), {**info, "seconds": sec, "cpu_seconds": cpu})
            return {
                "name": job.name,
                "status": "failed",
                "seconds": sec,
                "cpu_seconds": cpu,
                "error": f"{type(e).__name__}: {e}",
            }
        sec = time.perf_counter() - t0
        wsec = _write_done(
            Path(results), job, report, {**info, "seconds": sec, "cpu_seconds": time.process_time() - c0}
        )
        return {
            "name": job.name,
            "status": "done",
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "write_seconds": wsec,
            "error": None,
        }
    finally:
        if set_env:
            os.environ.pop("RAYON_NUM_THREADS", None)
        if old_threads is not None:
            import torch

            torch.set_num_threads(old_threads)


def _done_record(root: Path, job: Job) -> Optional[Dict[str, Any]]:
    """The job's record if it is already done under the same spec with its files in place, else None."""
    try:
        rec = json.loads((root / "jobs" / f"{job.name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not (
        isinstance(rec, dict)
        and rec.get("status") == "done"
        and rec.get("fingerprint") == job.fingerprint
        and all(p.is_file() for p in _data_paths(root, job.name).values())
    ):
        return None
    return rec


# ------------------------------------------------------------------------------------ writing
def _atomic_write(path: Path, data: bytes) -> str:
    """Write ``data`` to a hidden temporary file beside ``path`` (``.<name>.<hex>.tmp``), fsync it,
    then rename it over ``path``: readers see the old file or the whole new one, never a part.
    Returns the SHA-256 of ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            mv = memoryview(data)
            while mv:
                mv = mv[os.write(fd, mv) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, obj: Any) -> str:
    return _atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8"))


def _write_parquet(path: Path, df: Any) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return _atomic_write(path, buf.getvalue().to_pybytes())


def _with_labels(df: Any, labels: Mapping[str, Any]) -> Any:
    """``df`` with the (scalar) labels as leading constant columns; the same dtypes as a column
    built from a list of the value, without forming that list (a large table has tens of millions
    of rows)."""
    import pandas as pd

    df = df.copy()
    for i, (k, v) in enumerate(labels.items()):
        df.insert(i, k, pd.Series(v, index=df.index, dtype=object if v is None else None))
    return df


def _data_paths(root: Path, name: str) -> Dict[str, Path]:
    return {part: root / part / f"job={name}" / "part-0.parquet" for part in ("table", "summary")}


def _write_done(root: Path, job: Job, report: Any, info: Dict[str, Any]) -> float:
    """Write the job's two Parquet files, then its record (the commit point). Returns the seconds
    spent writing."""
    from .report import _jsonable as report_json

    t0 = time.perf_counter()
    paths = _data_paths(root, job.name)
    sha = {
        "table": _write_parquet(paths["table"], _with_labels(report.table, job.labels)),
        "summary": _write_parquet(paths["summary"], _with_labels(report.summary, job.labels)),
    }
    record = {
        "format": FORMAT,
        "version": VERSION,
        "name": job.name,
        "status": "done",
        "fingerprint": job.fingerprint,
        "spec": job.to_dict(),
        "sha256": sha,
        "rows": {"table": int(len(report.table)), "summary": int(len(report.summary))},
        "meta": report_json(report.meta),
        "skipped": [list(s) for s in report.skipped],
        "caveats": list(report.caveats),
        "markers": {str(k): v for k, v in report.markers.items()},
        "error": None,
        "traceback": None,
        "ess_version": _ess_version(),
        **info,
        "write_seconds": time.perf_counter() - t0,  # the Parquet files; the record itself follows
        "finished": time.time(),
    }
    _write_json(root / "jobs" / f"{job.name}.json", record)  # the commit point
    return time.perf_counter() - t0


def _write_failed(root: Path, job: Job, exc: BaseException, tb: str, info: Dict[str, Any]) -> None:
    for p in _data_paths(root, job.name).values():  # leftovers of an earlier interrupted try
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    record = {
        "format": FORMAT,
        "version": VERSION,
        "name": job.name,
        "status": "failed",
        "fingerprint": job.fingerprint,
        "spec": job.to_dict(),
        "error": f"{type(exc).__name__}: {exc}",
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "traceback": tb,
        "ess_version": _ess_version(),
        **info,
        "finished": time.time(),
    }
    _write_json(root / "jobs" / f"{job.name}.json", record)


def _ess_version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------------------ the directory
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _init_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise SweepResultsError(f"results: {str(root)!r} exists and is not a directory")
    marker = root / MARKER
    if root.is_dir() and not marker.exists():
        visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        if visible:
            raise SweepResultsError(
                f"results: {str(root)!r} is not empty and not an ess sweep results directory (no {MARKER}); "
                f"it holds {visible[:5]}{' ...' if len(visible) > 5 else ''}. Use a new or empty directory."
            )
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        _write_json(
            marker, {"format": FORMAT, "version": VERSION, "created": time.time(), "ess_version": _ess_version()}
        )


def _ignorable(name: str) -> bool:
    """Hidden temporary files of interrupted writes and NFS placeholders."""
    return bool(_TMP.match(name)) or name.startswith(".nfs")


def _check_marker(root: Path) -> None:
    """``root`` is a sweep results directory of this format version (its marker file says so)."""
    if not root.is_dir():
        raise SweepResultsError(f"results: {str(root)!r} is not a directory")
    marker = root / MARKER
    if not marker.is_file():
        raise SweepResultsError(f"results: {str(root)!r} is not an ess sweep results directory (no {MARKER})")
    try:
        m = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise SweepResultsError(f"results: {str(marker)!r} is corrupt ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SweepResultsError(
            f"results: {str(marker)!r} does not describe an ess sweep (format {m.get('format') if isinstance(m, dict) else m!r})"
        )
    if m.get("version") != VERSION:
        raise SweepResultsError(
            f"results: {str(root)!r} has sweep format version {m.get('version')!r}; this ess reads version {VERSION}"
        )


def _scan_partitions(root: Path, entry: Path, foreign: List[str]) -> None:
    """Collect into ``foreign`` whatever under ``table/`` or ``summary/`` is not ``job=<name>/part-0.parquet``."""
    for pdir in sorted(entry.iterdir()):
        pm = re.fullmatch(r"job=(.+)", pdir.name)
        if _ignorable(pdir.name):
            continue
        if not (pdir.is_dir() and pm and _NAME.match(pm.group(1))):
            foreign.append(str(pdir.relative_to(root)))
            continue
        for f in sorted(pdir.iterdir()):
            if not ((f.name == "part-0.parquet" and f.is_file()) or _ignorable(f.name)):
                foreign.append(str(f.relative_to(root)))


def _valid_record(rec: Any, name: str) -> bool:
    return (
        isinstance(rec, dict)
        and rec.get("format") == FORMAT
        and rec.get("name") == name
        and rec.get("status") in ("done", "failed")
        and isinstance(rec.get("fingerprint"), str)
        and isinstance(rec.get("spec"), dict)
        and (rec.get("status") != "done" or (isinstance(rec.get("sha256"), dict) and isinstance(rec.get("rows"), dict)))
    )


def _read_records(root: Path, entry: Path, foreign: List[str]) -> Dict[str, Dict[str, Any]]:
    """The job records under ``jobs/`` (``<name>.json``), each validated; anything else goes to ``foreign``."""
    records: Dict[str, Dict[str, Any]] = {}
    for f in sorted(entry.iterdir()):
        if _ignorable(f.name):
            continue
        jm = re.fullmatch(r"(.+)\.json", f.name)
        if not (jm and _NAME.match(jm.group(1)) and f.is_file()):
            foreign.append(str(f.relative_to(root)))
            continue
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise SweepResultsError(
                f"results: job record {str(f)!r} is corrupt ({e}); delete it to redo that job"
            ) from None
        if not _valid_record(rec, jm.group(1)):
            raise SweepResultsError(
                f"results: {str(f)!r} is not a valid ess sweep job record; delete it to redo that job"
            )
        records[jm.group(1)] = rec
    return records


def _check_done_files(root: Path, records: Dict[str, Dict[str, Any]]) -> None:
    """Every job recorded as done has its Parquet files, with the recorded SHA-256."""
    for name, rec in records.items():
        if rec["status"] != "done":
            continue
        for part, path in _data_paths(root, name).items():
            if not path.is_file():
                raise SweepResultsError(
                    f"results: job {name!r} is recorded as done but {str(path)!r} is missing; delete {str(root / 'jobs' / (name + '.json'))!r} to redo it"
                )
            if _sha256_file(path) != rec["sha256"].get(part):
                raise SweepResultsError(
                    f"results: {str(path)!r} is corrupt or was altered (SHA-256 differs from job {name!r}'s record); "
                    f"delete {str(root / 'jobs' / (name + '.json'))!r} to redo that job"
                )


def _scan(root: Path) -> Dict[str, Dict[str, Any]]:
    """Validate the directory and return ``name -> record``. Raises :class:`SweepResultsError` on
    anything it did not write, a corrupt record, or a done job whose Parquet files are missing or
    altered. Hidden temporary files (``.<name>.<hex>.tmp``) of interrupted writes are ignored."""
    _check_marker(root)
    foreign: List[str] = []
    records: Dict[str, Dict[str, Any]] = {}
    for entry in sorted(root.iterdir()):
        n = entry.name
        if n == MARKER or _ignorable(n) or (n == "report" and entry.is_dir()):
            continue
        if n in ("table", "summary") and entry.is_dir():
            _scan_partitions(root, entry, foreign)
        elif n == "jobs" and entry.is_dir():
            records.update(_read_records(root, entry, foreign))
        else:
            foreign.append(n + ("/" if entry.is_dir() else ""))
    if foreign:
        raise SweepResultsError(
            f"results: {str(root)!r} holds file(s) an ess sweep did not write: {foreign[:10]}{' ...' if len(foreign) > 10 else ''}. "
            f"Move them out; results are never mixed with foreign data."
        )
    _check_done_files(root, records)
    return records


# -------------------------------------------------------------------------------- executors
class RayExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` over Ray's task API (``ray.remote(fn).options(...)``).

    Parameters
    ----------
    num_cpus : CPUs each task asks for (default 1).
    num_gpus : GPUs each task asks for; ``None`` (default): as the sweep asks per job (1 for a job
        on ``cuda``, else 0).
    max_retries : how often Ray reruns a task whose worker died (default 3).
    init : keyword arguments of ``ray.init`` when Ray is not initialised yet (e.g. ``address=``,
        ``num_cpus=``); an executor that started Ray shuts it down in :meth:`shutdown`. A local Ray
        started without ``runtime_env`` gets ``PYTHONPATH`` = this process's own (non-installed)
        ``sys.path`` entries, so that ``"module:function"`` factories import in its workers as here.
    options : further ``.options(...)`` of every task (``resources=``, ``runtime_env=``, ...).

    Examples
    --------
    Starting Ray takes several seconds and its own worker processes, so only the first line runs
    here; the others show the use.

    >>> import concurrent.futures
    >>> from ess.sweep import RayExecutor
    >>> issubclass(RayExecutor, concurrent.futures.Executor)
    True
    >>> import ess.sweep as sweep
    >>> jobs = [sweep.Job(f"seq-{i}", "builtin", inputs={"random": {"length": 16, "seed": i}}) for i in range(4)]
    >>> ex = RayExecutor(num_cpus=1, init={"num_cpus": 4})       # doctest: +SKIP
    >>> sweep.run(jobs, "results", executor=ex)                    # doctest: +SKIP
    >>> ex.shutdown()                                              # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        num_cpus: float = 1,
        num_gpus: Optional[float] = None,
        max_retries: int = 3,
        init: Optional[Dict[str, Any]] = None,
        **options: Any,
    ) -> None:
        try:
            import ray
        except ImportError as e:
            raise ImportError("RayExecutor needs ray: pip install 'ray[default]'") from e
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **(init or {})}
            if "runtime_env" not in kw and "address" not in kw:
                # a local Ray: let its workers import what this process imports from its own
                # source directories (a factory in the current directory, a checkout on sys.path)
                own = [
                    os.path.abspath(p or os.getcwd())
                    for p in sys.path
                    if not p.startswith((sys.base_prefix, sys.prefix)) and "-packages" not in p
                ]
                own += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
                if own:
                    kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(own))}}
            ray.init(**kw)
            self._owns = True
        self._opts = {"num_cpus": num_cpus, "max_retries": max_retries, **options}
        self._gpus = num_gpus
        self._remote: Dict[Any, Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "cf.Future[Any]":
        return self.submit_with({}, fn, *args, **kwargs)

    def submit_with(
        self, resources: Mapping[str, Any], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> "cf.Future[Any]":
        """:meth:`submit` with per-task resource requests (``num_gpus=``, ``num_cpus=``, ...)."""
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self._ray.remote(fn)
        opts = dict(self._opts)
        if self._gpus is not None:
            opts["num_gpus"] = self._gpus
        opts.update(resources)
        return r.options(**opts).remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _make_executor(executor: Any, max_workers: Optional[int]) -> Any:
    if executor is None or executor == "serial":
        return None, False
    if executor == "processes":
        import multiprocessing

        return cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn")), True
    if executor == "ray":
        return RayExecutor(), True
    if isinstance(executor, cf.Executor) or (hasattr(executor, "submit") and not isinstance(executor, str)):
        return executor, False
    raise InvalidArgumentError(
        f"executor: expected None, 'serial', 'processes', 'ray' or a concurrent.futures.Executor, got {executor!r}"
    )


# ------------------------------------------------------------------------------------- running
@dataclass
class SweepOutcome:
    """What one :func:`run` did. ``finished``: ran and written; ``skipped``: already done with the
    same spec; ``failed``: the job raised (its record holds the error; retried on the next run);
    ``lost``: its task died before writing anything (a killed worker, a broken pool): missing,
    redone by the next run. ``errors`` maps failed and lost jobs to their error; ``seconds`` and
    ``cpu_seconds`` map finished jobs to their wall and CPU time in the task (build, analyse, write;
    a fresh worker's first job includes importing torch), ``write_seconds`` to the part of it spent
    writing the results.

    Examples
    --------
    A job whose model factory cannot be imported fails without stopping the sweep; its error is kept:

    >>> import tempfile
    >>> from ess.sweep import Job, run
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = run([Job("broken", "no_such_module:make_model", inputs=[1, 2, 3])], d, progress=False)
    >>> out.finished, out.failed
    ([], ['broken'])
    >>> out.errors["broken"]
    "InvalidArgumentError: jobs['broken'].model: cannot load 'no_such_module:make_model': No module named 'no_such_module'"
    """

    results: Path
    finished: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    lost: List[str] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    cpu_seconds: Dict[str, float] = field(default_factory=dict)
    write_seconds: Dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every job is done (finished now or skipped as done)."""
        return not self.failed and not self.lost

    def table(self) -> Any:
        """One row per job: ``job, status, seconds, error`` (a pandas DataFrame)."""
        import pandas as pd

        rows = [{"job": n, "status": "finished", "seconds": self.seconds.get(n), "error": None} for n in self.finished]
        rows += [{"job": n, "status": "skipped (done)", "seconds": None, "error": None} for n in self.skipped]
        rows += [{"job": n, "status": "failed", "seconds": None, "error": self.errors.get(n)} for n in self.failed]
        rows += [{"job": n, "status": "lost (rerun)", "seconds": None, "error": self.errors.get(n)} for n in self.lost]
        return pd.DataFrame(rows, columns=["job", "status", "seconds", "error"])


def _resources(job: Job) -> Dict[str, Any]:
    gpus = job.gpus if job.gpus is not None else (1 if job.device.startswith("cuda") else 0)
    return {"num_gpus": gpus} if gpus else {}


def run(
    jobs: Union[Sequence[Union[Job, Mapping[str, Any]]], Job],
    results: Union[str, "os.PathLike[str]"],
    *,
    executor: Any = None,
    max_workers: Optional[int] = None,
    retry_failed: bool = True,
    threads: Optional[int] = None,
    progress: bool = True,
) -> SweepOutcome:
    """Run every job not yet done into the results directory ``results``; one task per job.

    Parameters
    ----------
    jobs : :class:`Job` objects (or dicts of their fields, or :func:`grid`'s output).
    results : the results directory (created; an existing one must be an ess sweep directory).
    executor : ``None``/``"serial"`` (this process), ``"processes"`` (a spawned process pool of
        ``max_workers``), ``"ray"`` (a :class:`RayExecutor` with defaults) or any
        :class:`concurrent.futures.Executor` (e.g. ``dask.distributed.Client.get_executor()``, a
        :class:`RayExecutor`); an executor passed in is left running.
    max_workers : processes of ``executor="processes"`` (default: the CPU count).
    retry_failed : rerun jobs recorded as failed (default); ``False`` keeps their records (a failed
        job whose spec has changed since is always rerun).
    threads : torch / rayon threads per task (``torch.set_num_threads`` for the task,
        ``RAYON_NUM_THREADS`` when not set yet); default: leave as is. Use 1 with one worker per core.
    progress : a tqdm progress bar over jobs.

    Returns
    -------
    :class:`SweepOutcome`: finished / skipped / failed / lost job names. A job that raises does
    not stop the others; a task that dies (killed worker) loses only itself: every job written
    before stays, and the next run with the same directory redoes the rest.

    Raises
    ------
    SweepResultsError : ``results`` is not (and cannot become) a sweep directory, holds a foreign
        or corrupt file, or a done job there has the same name but another spec.

    Examples
    --------
    >>> import tempfile
    >>> import ess.sweep as sweep
    >>> jobs = sweep.grid({"name": "seq-{seed}", "model": "builtin", "inputs": {"random": {"length": 6, "seed": "{seed}"}},
    ...                    "options": {"layers": "blocks.3.mixer"}}, seed=[0, 1])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first = sweep.run(jobs, d, progress=False)
    ...     again = sweep.run(jobs, d, progress=False)      # done jobs with the same spec are skipped
    >>> first.finished, again.skipped, again.finished
    (['seq-0', 'seq-1'], ['seq-0', 'seq-1'], [])
    """
    t_start = time.perf_counter()
    todo_jobs = _as_jobs(jobs)
    _check_run_options(executor, max_workers, threads)
    root = Path(results).absolute()
    _init_dir(root)
    out = SweepOutcome(results=root)
    todo = _plan(todo_jobs, _scan(root), retry_failed, out)
    ex, owned = _make_executor(executor, max_workers)
    bar = _progress_bar(len(todo_jobs), len(out.skipped) + len(out.failed)) if progress and todo else None
    try:
        _dispatch(ex, todo, root, threads, lambda name, status, err: _collect(out, bar, name, status, err))
    finally:
        if bar is not None:
            bar.close()
        if owned and ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    _reconcile_lost(out, root, todo)
    order = {j.name: i for i, j in enumerate(todo_jobs)}
    for lst in (out.finished, out.failed, out.lost):
        lst.sort(key=order.__getitem__)
    out.wall_seconds = time.perf_counter() - t_start
    return out


def pending(
    jobs: Union[Sequence[Union[Job, Mapping[str, Any]]], Job],
    results: Union[str, "os.PathLike[str]"],
    *,
    retry_failed: bool = True,
) -> List[str]:
    """Names of the jobs that :func:`run` would execute now (missing, lost, or failed when
    ``retry_failed``), in the order given; nothing is written. A results directory that does not
    exist yet means every job. Lets a caller skip starting a cluster when nothing is left to do.

    Raises
    ------
    SweepResultsError : as :func:`run` (foreign or corrupt files, a done job with another spec).

    Examples
    --------
    >>> import tempfile, os
    >>> import ess.sweep as sweep
    >>> jobs = [sweep.Job(name="a", model="builtin", inputs={"random": {"length": 6}})]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     sweep.pending(jobs, os.path.join(d, "new"))
    ['a']
    """
    todo_jobs = _as_jobs(jobs)
    root = Path(results).absolute()
    if root.is_dir() and not (root / MARKER).exists() and not any(not p.name.startswith(".") for p in root.iterdir()):
        return [j.name for j in todo_jobs]  # an empty directory: run() would start it
    if not root.exists():
        return [j.name for j in todo_jobs]
    _check_marker(root)
    return [j.name for j in _plan(todo_jobs, _scan(root), retry_failed, SweepOutcome(results=root))]


def _reconcile_lost(out: SweepOutcome, root: Path, todo: List[Job]) -> None:
    """A task reported lost whose job is nevertheless recorded as done (a worker of a broken pool
    wrote its record before the pool could deliver the result) counts as finished: the outcome
    says what is on disk, and the next run skips that job."""
    by_name = {j.name: j for j in todo}
    for name in list(out.lost):
        rec = _done_record(root, by_name[name]) if name in by_name else None
        if rec is not None:
            out.lost.remove(name)
            out.errors.pop(name, None)
            out.finished.append(name)
            if isinstance(rec.get("seconds"), (int, float)):
                out.seconds[name] = float(rec["seconds"])


def _check_run_options(executor: Any, max_workers: Optional[int], threads: Optional[int]) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidArgumentError(f"threads: expected a positive integer or None, got {threads!r}")
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise InvalidArgumentError(f"max_workers: expected a positive integer or None, got {max_workers!r}")
    if not (
        executor is None
        or isinstance(executor, str)
        and executor in ("serial", "processes", "ray")
        or hasattr(executor, "submit")
    ):
        raise InvalidArgumentError(
            f"executor: expected None, 'serial', 'processes', 'ray' or a concurrent.futures.Executor, got {executor!r}"
        )


def _plan(jobs: List[Job], records: Dict[str, Dict[str, Any]], retry_failed: bool, out: SweepOutcome) -> List[Job]:
    """The jobs to run; done ones go to ``out.skipped``, kept failures to ``out.failed``. A done job
    whose spec changed raises :class:`SweepResultsError`."""
    todo: List[Job] = []
    changed = []
    for j in jobs:
        rec = records.get(j.name)
        if rec is not None and rec["fingerprint"] != j.fingerprint and rec["status"] == "done":
            changed.append(j.name)
        elif rec is not None and rec["status"] == "done":
            out.skipped.append(j.name)
        elif rec is not None and rec["status"] == "failed" and not retry_failed and rec["fingerprint"] == j.fingerprint:
            out.failed.append(j.name)
            out.errors[j.name] = str(rec.get("error"))
        else:
            todo.append(j)
    if changed:
        raise SweepResultsError(
            f"results: job(s) {changed[:10]} are done in {str(out.results)!r} with a different spec (model, inputs, options, "
            f"labels, ...). Rename those jobs, use another results directory, or delete their records under jobs/ to redo them."
        )
    return todo


def _progress_bar(total: int, initial: int) -> Any:
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="ess.sweep", unit="job")
    except ImportError:  # pragma: no cover
        return None


def _collect(
    out: SweepOutcome, bar: Any, name: str, status: Optional[Dict[str, Any]], err: Optional[BaseException]
) -> None:
    """Record one task's outcome: lost (``err``: the task died), done or failed (its ``status``)."""
    if err is not None or status is None:
        out.lost.append(name)
        out.errors[name] = f"{type(err).__name__}: {err}"
    elif status["status"] == "done":
        out.finished.append(name)
        out.seconds[name] = float(status["seconds"])
        out.cpu_seconds[name] = float(status.get("cpu_seconds", float("nan")))
        out.write_seconds[name] = float(status.get("write_seconds", float("nan")))
    else:
        out.failed.append(name)
        out.errors[name] = str(status["error"])
    if bar is not None:
        bar.update(1)
        bar.set_postfix(done=len(out.finished), failed=len(out.failed), lost=len(out.lost), refresh=False)


def _dispatch(ex: Any, todo: List[Job], root: Path, threads: Optional[int], collect: Callable[..., None]) -> None:
    """Run ``todo`` here (``ex`` None) or as one task per job on ``ex``, calling ``collect`` as each ends."""
    if ex is None:
        for j in todo:
            collect(j.name, _execute(j.to_dict(), str(root), threads), None)
        return
    futs: Dict[Any, str] = {}
    for j in todo:
        token = os.urandom(8).hex()
        sub = getattr(ex, "submit_with", None)
        if sub is not None:
            f = sub(_resources(j), _execute, j.to_dict(), str(root), threads, token)
        else:
            f = ex.submit(_execute, j.to_dict(), str(root), threads, token)
        futs[f] = j.name
    for f in cf.as_completed(futs):
        # drop every reference to a future once it is done: an engine may keep a task's result for
        # as long as its future lives (Dask holds it in the worker's memory, and recomputes it, i.e.
        # reruns a finished job, when that worker dies)
        name = futs.pop(f)
        try:
            st, err = f.result(), None
        except Exception as e:  # the task died (worker killed, pool broken, ...)
            st, err = None, e
        del f
        collect(name, st, err)


# ------------------------------------------------------------------------------------- loading
@dataclass
class SweepResults:
    """Every recorded job of a results directory (see :func:`load`).

    Attributes
    ----------
    table : the tidy tables of all done jobs, one DataFrame: ``job``, the label columns, then the
        columns of :attr:`ess.Report.table` (``token`` is -1 where a job had no token ids).
    summary : the per-layer summaries of all done jobs: ``job``, labels, :attr:`ess.Report.summary`.
    jobs : one row per recorded job: ``job, status, model, device, seconds, host, error`` + labels.
    records : job name -> its full record (spec, meta, skipped modules, caveats, traceback).
    incomplete : jobs with Parquet files but no done record: a task died between writing them
        and its record (or a failed job's files were left); never loaded, redone by the next run.
        A direct reader of ``table/`` (``pandas.read_parquet``) would see their files.

    Examples
    --------
    >>> import tempfile
    >>> from ess.sweep import Job, load, run
    >>> job = Job("short", "builtin", inputs=[0, 5, 20, 6, 21, 1, 5, 20], options={"layers": "blocks.3.mixer"})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = run([job], d, progress=False)
    ...     res = load(d)
    >>> res.summary[["job", "layer", "kind", "tss"]]
         job           layer               kind  tss
    0  short  blocks.3.mixer  softmax_attention  8.0
    >>> res.jobs[["job", "status", "model"]]
         job status    model
    0  short   done  builtin
    >>> len(res.table), res.incomplete, len(res.failed)
    (32, [], 0)
    """

    root: Path
    table: Any
    summary: Any
    jobs: Any
    records: Dict[str, Dict[str, Any]]
    incomplete: List[str] = field(default_factory=list)

    @property
    def failed(self) -> Any:
        """The rows of :attr:`jobs` with status ``failed`` (with their errors)."""
        return self.jobs[self.jobs["status"] == "failed"]

    def plot(self, kind: str = "layers", **kwargs: Any) -> Any:
        """Comparison figures across jobs (:mod:`ess.compare`): ``"layers"`` (average ESS per
        layer, jobs side by side) or ``"curves"`` (ESS curves of every job overlaid, one panel per
        layer)."""
        from . import compare

        fns = {"layers": compare.layers, "curves": compare.curves}
        if kind not in fns:
            raise InvalidArgumentError(f"kind: expected one of {sorted(fns)}, got {kind!r}")
        return fns[kind](self, **kwargs)

    def save_report(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
        """Write the combined report: ``report.html`` (jobs, per-layer summaries, comparison
        figures), ``layers.png``, ``curves.png``, ``table.parquet``, ``summary.parquet``,
        ``jobs.csv``. Returns the directory."""
        from . import compare

        return compare.save_report(self, directory)


def load(results: Union[str, "os.PathLike[str]"]) -> SweepResults:
    """Load a results directory (validated first: a foreign or corrupt file raises
    :class:`SweepResultsError`, it is never skipped). Jobs appear in name order.

    Examples
    --------
    >>> import tempfile
    >>> from ess.sweep import Job, load, run
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = run(Job("short", "builtin", inputs=[0, 5, 20, 6, 21, 1, 5, 20], options={"layers": "blocks.3.mixer"}),
    ...             d, progress=False)
    ...     res = load(d)
    >>> res.table.groupby("job")["position"].max().to_dict()
    {'short': 7}
    >>> list(res.records["short"]["spec"]["options"])
    ['layers']
    """
    import pandas as pd
    import pyarrow.parquet as pq
    from pandas.api.types import union_categoricals

    root = Path(results).absolute()
    records = _scan(root)
    tables, summaries, rows = [], [], []
    for name in sorted(records):
        rec = records[name]
        spec = rec["spec"]
        labels = dict(spec.get("labels") or {})
        rows.append(
            {
                "job": name,
                "status": rec["status"],
                "model": spec.get("model"),
                "device": spec.get("device"),
                "seconds": rec.get("seconds"),
                "host": rec.get("host"),
                "error": rec.get("error"),
                **labels,
            }
        )
        if rec["status"] != "done":
            continue
        parts = {}
        for part, path in _data_paths(root, name).items():
            try:
                df = pq.read_table(path).to_pandas()
            except Exception as e:
                raise SweepResultsError(f"results: cannot read {str(path)!r} ({type(e).__name__}: {e})") from None
            if len(df) != int(rec["rows"].get(part, -1)):
                raise SweepResultsError(
                    f"results: {str(path)!r} has {len(df)} rows, job {name!r}'s record says {rec['rows'].get(part)}"
                )
            df.insert(0, "job", name)
            parts[part] = df
        tables.append(parts["table"])
        summaries.append(parts["summary"])
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(_TABLE_COLUMNS))
    for col in CATEGORY_COLUMNS:  # one ``category`` column over all jobs (as in ess.Report.table), sorted names
        if tables and all(col in t.columns for t in tables):
            table[col] = union_categoricals([t[col].astype("category") for t in tables], sort_categories=True)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=["job"])
    if "token" in table.columns:
        table["token"] = table["token"].fillna(-1).astype("int64")
    label_cols = list(dict.fromkeys(k for n in sorted(records) for k in (records[n]["spec"].get("labels") or {})))

    def ordered(df: Any) -> Any:
        lead = ["job"] + [c for c in label_cols if c in df.columns]
        return df[lead + [c for c in df.columns if c not in lead]]

    table, summary = ordered(table), ordered(summary)
    jobs = (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(columns=["job", "status", "model", "device", "seconds", "host", "error"])
    )
    done = {n for n, r in records.items() if r["status"] == "done"}
    incomplete = sorted(
        {
            d.name[4:]
            for part in ("table", "summary")
            if (root / part).is_dir()
            for d in (root / part).iterdir()
            if d.name.startswith("job=") and (d / "part-0.parquet").exists()
        }
        - done
    )
    return SweepResults(root, table, summary, jobs, records, incomplete)


# -------------------------------------------------------------------------------------- config
def load_config(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Read a sweep's TOML file: ``{"jobs": [Job, ...], "results": path or None, "executor": ...,
    "workers": ..., "threads": ..., "retry_failed": ...}``.

    The file holds ``[[jobs]]`` tables (the fields of :class:`Job`) and ``[[grid]]`` tables (a
    :class:`Job` template plus ``vary = {axis = [values]}``, see :func:`grid`), an optional
    ``[defaults]`` table merged under every job and grid (``options`` merged key by key), and
    optional top-level ``results``, ``executor`` (``"serial"``, ``"processes"``, ``"dask"``,
    ``"ray"``), ``workers``, ``threads``, ``retry_failed``. Relative paths (``results``, model
    directories, ``.npy`` inputs) are relative to the TOML file.

    Examples
    --------
    >>> import os, tempfile
    >>> from ess.sweep import load_config
    >>> toml = '''
    ... results = "results"
    ... [defaults]
    ... model = "builtin"
    ... options = {method = "tolerance"}
    ... [[grid]]
    ... name = "mqar-{seed}"
    ... inputs = {mqar = {n = 1, seed = "{seed}"}}
    ... vary = {seed = [0, 1]}
    ... '''
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "sweep.toml")
    ...     _ = open(path, "w").write(toml)
    ...     cfg = load_config(path)
    ...     print(os.path.relpath(cfg["results"], d))
    results
    >>> [(j.name, j.inputs, j.options) for j in cfg["jobs"]]
    [('mqar-0', {'mqar': {'n': 1, 'seed': 0}}, {'method': 'tolerance'}), ('mqar-1', {'mqar': {'n': 1, 'seed': 1}}, {'method': 'tolerance'})]
    """
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib

    p = Path(path)
    try:
        with open(p, "rb") as f:
            cfg = tomllib.load(f)
    except OSError as e:
        raise InvalidArgumentError(f"config: cannot read {str(p)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"config: {str(p)!r} is not valid TOML: {e}") from None
    known = {"jobs", "grid", "defaults", "results", "executor", "workers", "threads", "retry_failed", "scheduler"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise InvalidArgumentError(f"config: unknown top-level key(s) {bad} in {str(p)!r}; allowed: {sorted(known)}")
    base = p.parent.absolute()
    defaults = dict(cfg.get("defaults") or {})

    def merged(d: Mapping[str, Any]) -> Dict[str, Any]:
        out = {**defaults, **d}
        if "options" in defaults or "options" in d:
            out["options"] = {**dict(defaults.get("options") or {}), **dict(d.get("options") or {})}
        if "labels" in defaults or "labels" in d:
            out["labels"] = {**dict(defaults.get("labels") or {}), **dict(d.get("labels") or {})}
        m = out.get("model")
        if isinstance(m, str) and m != "builtin" and ":" not in m:
            out["model"] = str(base / m)
        i = out.get("inputs")
        if isinstance(i, str) and i.endswith(".npy"):
            out["inputs"] = str(base / i)
        if isinstance(i, dict) and isinstance(i.get("npy"), str):
            out["inputs"] = {"npy": str(base / i["npy"])}
        return out

    jobs: List[Job] = [Job.from_dict(merged(d)) for d in cfg.get("jobs", [])]
    for g in cfg.get("grid", []):
        g = dict(g)
        vary = g.pop("vary", None)
        if not isinstance(vary, dict) or not vary:
            raise InvalidArgumentError(
                f"config: every [[grid]] needs vary = {{axis = [values, ...]}} (grid {g.get('name')!r})"
            )
        jobs += grid(merged(g), **vary)
    if not jobs:
        raise InvalidArgumentError(f"config: {str(p)!r} defines no [[jobs]] or [[grid]]")
    res = cfg.get("results")
    return {
        "jobs": _as_jobs(jobs),
        "results": str(base / res) if isinstance(res, str) else None,
        "executor": cfg.get("executor"),
        "workers": cfg.get("workers"),
        "threads": cfg.get("threads"),
        "retry_failed": cfg.get("retry_failed", True),
        "scheduler": cfg.get("scheduler"),
    }
