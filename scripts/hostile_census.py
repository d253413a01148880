"""Census of hostile calls against the public API: nothing a user passes may kill the process,
hang it, or go unnoticed.

    PYTHONPATH=python python3 scripts/hostile_census.py [--json OUT] [--only SUBSTRING] [--timeout S]

Every public function gets a valid base call; then each argument in turn is replaced by values
from a hostile pool for its kind (arrays: NaN, inf, ragged, masked, empty, wrong rank, complex,
object, torch tensors of every kind, huge broadcast views; integers: negative, fractional,
beyond int64, strings, booleans; floats: NaN, inf, negative, strings; options: None, unknown
names, wrong types). Each call runs in a worker process (faulthandler on, address space capped)
with a timeout delivered as a signal, and is classified:

``typed``      an ``ess.errors.EssError`` whose message names the argument (what we want);
``unnamed``    an ``EssError`` that does not name the argument;
``untyped``    any other exception (a defect);
``accepted``   the call returned; fine for values marked as acceptable, a defect for values that
               must be refused;
``crash``      the worker died (abort, segfault, killed): a defect;
``hang``       the call outlived the timeout and ignored the signal, or did not stop on it.

The script exits with status 1 when any defect is found and prints one line per defect.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple


# --------------------------------------------------------------------------------------------
# the hostile pools (built lazily inside the worker: numpy and torch are imported there)


def _array_pool(np: Any, base: Any) -> List[Tuple[str, Callable[[], Any], bool]]:
    """(label, factory, acceptable) for an array argument whose valid value is ``base``."""
    b = np.asarray(base)
    out: List[Tuple[str, Callable[[], Any], bool]] = [
        ("None", lambda: None, False),
        ("str", lambda: "abc", False),
        ("scalar 3.5", lambda: 3.5, False),
        ("empty list", lambda: [], False),
        ("ragged list", lambda: [[1.0, 2.0], [3.0]], False),
        ("object array", lambda: np.array([object()] * max(b.size, 1)).reshape(b.shape or (1,)), False),
        ("complex", lambda: b.astype(np.complex128), False),
        ("extra axis", lambda: b[None, None, ...], False),
        ("masked", lambda: np.ma.masked_array(b, mask=np.zeros(b.shape, bool)), False),
        ("bool dtype", lambda: b.astype(bool), True),
        ("float32", lambda: b.astype(np.float32), True),
        ("fortran order", lambda: np.asfortranarray(b), True),
        ("read-only", lambda: _readonly(b.copy()), True),
        ("list form", lambda: b.tolist(), True),
    ]
    if b.dtype.kind == "f":
        out += [
            ("NaN", lambda: _with(b, np.nan), False),
            ("+inf", lambda: _with(b, np.inf), False),
            ("1e308 scale", lambda: b * 1e308, True),
            ("1e-308 scale", lambda: b * 1e-308, True),
            ("negative zero", lambda: -np.zeros_like(b), True),
            (
                "huge broadcast",
                lambda: np.broadcast_to(b.reshape((1,) * 3 + b.shape), (4096, 4096, 4096) + b.shape),
                False,
            ),
        ]
    if b.dtype.kind in "iu":
        out += [
            ("-1 entry", lambda: _with(b, -1), False),
            ("2**62 entry", lambda: _with(b, 2**62), False),
            ("beyond int64 (object)", lambda: _with(b.astype(object), 2**70), False),
            ("float entries 0.5", lambda: b + 0.5, False),
            ("uint8", lambda: b.astype(np.uint8), True),
        ]
    try:
        import torch

        out += [
            (
                "torch requires_grad",
                lambda: (
                    torch.tensor(b.astype(np.float64), requires_grad=True) if b.dtype.kind == "f" else torch.tensor(b)
                ),
                True,
            ),
            ("torch bfloat16", lambda: torch.tensor(b.astype(np.float32)).to(torch.bfloat16), b.dtype.kind == "f"),
            ("torch sparse", lambda: torch.tensor(b).to_sparse() if b.ndim >= 1 else torch.tensor(b), False),
            ("torch complex", lambda: torch.tensor(b.astype(np.complex64)), False),
        ]
    except ImportError:  # pragma: no cover - the census is run with the test extra installed
        pass
    return out


def _readonly(a: Any) -> Any:
    a.setflags(write=False)
    return a


def _with(b: Any, value: Any) -> Any:
    a = b.copy()
    if a.size:
        a.flat[a.size // 2] = value
    return a


INT_POOL: List[Tuple[str, Any, bool]] = [
    ("-1", -1, False),
    ("1.5", 1.5, False),
    ("2.0 float", 2.0, False),
    ("2**70", 2**70, False),
    ("-2**70", -(2**70), False),
    ("'3'", "3", False),
    ("None", None, False),
    ("True", True, False),
    ("nan", float("nan"), False),
    ("2**62", 2**62, False),
]
FLOAT_POOL: List[Tuple[str, Any, bool]] = [
    ("nan", float("nan"), False),
    ("inf", float("inf"), False),
    ("-1.0", -1.0, False),
    ("'0.1'", "0.1", False),
    ("[0.1]", [0.1], False),
    ("1e308", 1e308, True),
    ("0.0", 0.0, True),
    ("True", True, False),
]
STR_POOL: List[Tuple[str, Any, bool]] = [
    ("None", None, False),
    ("''", "", False),
    ("'bogus'", "bogus", False),
    ("3", 3, False),
    ("b'x'", b"x", False),
]
BOOL_POOL: List[Tuple[str, Any, bool]] = [("'yes'", "yes", False), ("2", 2, False), ("None", None, False)]


def _scalar_pool(kind: str) -> List[Tuple[str, Any, bool]]:
    if kind == "seed":  # any integer in [0, 2**64) seeds; None asks for fresh entropy
        return [(lab, v, acc or lab in ("2**62", "None")) for lab, v, acc in INT_POOL]
    if kind == "optstr":  # None is the default (chosen from the other arguments)
        return [(lab, v, acc or lab == "None") for lab, v, acc in STR_POOL]
    if kind == "optfloat":
        return FLOAT_POOL
    return {"int": INT_POOL, "float": FLOAT_POOL, "str": STR_POOL, "bool": BOOL_POOL}[kind]


@dataclass
class Target:
    name: str  # dotted path of the callable
    base: Callable[[Any], Dict[str, Any]]  # np -> keyword arguments of a valid call
    kinds: Dict[
        str, str
    ]  # argument -> "array" | "int" | "float" | "str" | "bool" | "optfloat" | "optarray" | "optstr" | "seed"
    positional: Tuple[str, ...] = ()  # arguments passed positionally, in order
    batched: Tuple[str, ...] = ()  # array arguments with leading batch axes (an extra axis is valid)


def _targets() -> List[Target]:
    def T(np: Any) -> Any:
        return np.tril(np.random.default_rng(0).random((6, 6)) + 0.1)

    def P(np: Any) -> Any:
        p = np.random.default_rng(1).random((5, 5)) + 0.05
        return p / p.sum(1, keepdims=True)

    def ssm(np: Any) -> Dict[str, Any]:
        r = np.random.default_rng(2)
        return {"A": r.uniform(0.2, 0.9, (8, 3)), "B": r.normal(size=(8, 3)), "C": r.normal(size=(8, 3))}

    return [
        Target(
            "ess.effective_state_size",
            lambda np: {"T": T(np), "method": "both", "atol": None, "rtol": 1e-3, "positions": [1, 3]},
            {"T": "array", "method": "str", "atol": "optfloat", "rtol": "optfloat", "positions": "optarray"},
            ("T",),
            ("T",),
        ),
        Target(
            "ess.structured.ssm_ess",
            lambda np: {**ssm(np), "transition": "diagonal", "method": "both", "rtol": 1e-6},
            {"A": "optarray", "B": "array", "C": "array", "transition": "optstr", "method": "str", "rtol": "optfloat"},
            ("A", "B", "C"),
            ("A", "B", "C"),
        ),
        Target(
            "ess.structured.mamba_ess",
            lambda np: {
                "A": -np.ones((2, 3)),
                "delta": np.full((8, 2), 0.1),
                "B": np.ones((8, 3)),
                "C": np.ones((8, 3)),
                "method": "both",
            },
            {"A": "array", "delta": "array", "B": "array", "C": "array", "method": "str"},
            ("A", "delta", "B", "C"),
        ),
        Target(
            "ess.structured.linear_attention_ess",
            lambda np: {
                "q": np.random.default_rng(3).normal(size=(8, 3)),
                "k": np.random.default_rng(4).normal(size=(8, 3)),
                "method": "both",
            },
            {"q": "array", "k": "array", "method": "str"},
            ("q", "k"),
            ("q", "k"),
        ),
        Target(
            "ess.structured.conv_ess",
            lambda np: {"h": np.array([1.0, 0.5, 0.25]), "L": 8, "accuracy": 1e-12},
            {"h": "array", "L": "int", "accuracy": "float"},
            ("h", "L"),
            ("h",),
        ),
        Target(
            "ess.markov.hitting_times",
            lambda np: {"P": P(np), "target": [0], "method": "auto"},
            {"P": "array", "target": "array", "method": "str"},
            ("P", "target"),
        ),
        Target("ess.markov.mean_first_passage_times", lambda np: {"P": P(np)}, {"P": "array"}, ("P",)),
        Target("ess.markov.stationary_distribution", lambda np: {"P": P(np)}, {"P": "array"}, ("P",)),
        Target(
            "ess.markov.committor",
            lambda np: {"P": P(np), "A": [0], "B": [4], "backward": False},
            {"P": "array", "A": "array", "B": "array", "backward": "bool"},
            ("P", "A", "B"),
        ),
        Target(
            "ess.markov.absorption_probabilities",
            lambda np: {"P": P(np), "sets": [[0], [4]]},
            {"P": "array", "sets": "array"},
            ("P", "sets"),
        ),
        Target(
            "ess.markov.communication_classes",
            lambda np: {"P": P(np), "threshold": 0.0},
            {"P": "array", "threshold": "float"},
            ("P",),
        ),
        Target("ess.markov.kemeny_constant", lambda np: {"P": P(np)}, {"P": "array"}, ("P",)),
        Target(
            "ess.markov.metastable_decomposition",
            lambda np: {"P": P(np), "threshold": None},
            {"P": "array", "threshold": "optfloat"},
            ("P",),
        ),
        Target(
            "ess.markov.metastable_chain",
            lambda np: {"n_clusters": 2, "cluster_size": 4, "degree": 2, "eps": 1e-3, "seed": 0},
            {"n_clusters": "int", "cluster_size": "int", "degree": "int", "eps": "float", "seed": "seed"},
            ("n_clusters", "cluster_size"),
        ),
        Target(
            "ess.markov.base_chain",
            lambda np: {"W": np.eye(3), "embeddings": np.eye(3)},
            {"W": "array", "embeddings": "optarray"},
            ("W",),
        ),
        Target(
            "ess.markov.ccmc_transition",
            lambda np: {"P": P(np), "prompt": [0, 1, 2]},
            {"P": "array", "prompt": "array"},
            ("P", "prompt"),
        ),
        Target(
            "ess.markov.simulate_ccmc",
            lambda np: {"P": P(np), "prompt": [0, 1], "n_steps": 5, "n_traj": 2, "seed": 0},
            {"P": "array", "prompt": "array", "n_steps": "int", "n_traj": "int", "seed": "seed"},
            ("P", "prompt", "n_steps"),
        ),
        Target(
            "ess.markov.identifiability",
            lambda np: {"prompts": np.array([[0, 1], [1, 2]]), "vocab_size": 3},
            {"prompts": "array", "vocab_size": "int"},
            ("prompts", "vocab_size"),
        ),
        Target(
            "ess.markov.fit_attention_mle",
            lambda np: {
                "prompts": np.array([[0, 1], [1, 2], [2, 0]]),
                "next_tokens": np.array([1, 2, 0]),
                "vocab_size": 3,
                "max_iter": 5,
            },
            {"prompts": "array", "next_tokens": "array", "vocab_size": "int", "max_iter": "int"},
            ("prompts", "next_tokens", "vocab_size"),
        ),
        Target(
            "ess.graph.strongly_connected_components",
            lambda np: {"src": np.array([0, 1, 2]), "dst": np.array([1, 2, 0]), "n_nodes": 4, "algorithm": "auto"},
            {"src": "array", "dst": "array", "n_nodes": "int", "algorithm": "str"},
            ("src", "dst", "n_nodes"),
        ),
        Target(
            "ess.graph.condensation",
            lambda np: {"src": np.array([0, 1, 2]), "dst": np.array([1, 2, 0]), "n_nodes": 4},
            {"src": "array", "dst": "array", "n_nodes": "int"},
            ("src", "dst", "n_nodes"),
        ),
        Target(
            "ess.graph.TokenPriorityGraphs",
            lambda np: {"windows": np.array([[0, 1], [1, 2], [2, 0]]), "labels": np.array([1, 2, 0]), "vocab_size": 3},
            {"windows": "array", "labels": "array", "vocab_size": "int"},
            ("windows", "labels", "vocab_size"),
        ),
    ]


def _cases() -> List[Tuple[str, str, str, bool]]:
    """(target, argument, label, acceptable) for every hostile substitution; numpy needed for labels."""
    import numpy as np

    out = []
    for t in _targets():
        base = t.base(np)
        for arg, kind in t.kinds.items():
            if kind in ("array", "optarray"):
                pool = [
                    (lab, acc) for lab, _, acc in _array_pool(np, base[arg] if base[arg] is not None else np.ones(3))
                ]
                if kind == "optarray":  # None is the default; an empty list of positions is an empty curve
                    pool = [(lab, acc or lab in ("None", "empty list")) for lab, acc in pool]
                if arg in t.batched:
                    pool = [(lab, acc or lab == "extra axis") for lab, acc in pool]
            else:
                pool = [(lab, acc) for lab, _, acc in _scalar_pool(kind)]
            out += [(t.name, arg, lab, acc) for lab, acc in pool]
    return out


# --------------------------------------------------------------------------------------------
# the worker


def _resolve(name: str) -> Any:
    mod, _, attr = name.rpartition(".")
    m = __import__(mod, fromlist=[attr])
    return getattr(m, attr)


class _Timeout(BaseException):
    pass


def _worker(timeout: float) -> None:
    import faulthandler

    import numpy as np

    import ess  # noqa: F401
    from ess.errors import EssError

    faulthandler.enable()
    targets = {t.name: t for t in _targets()}
    cases = _cases()

    def alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    signal.signal(signal.SIGALRM, alarm)
    for line in sys.stdin:
        i = int(line)
        name, arg, label, _ = cases[i]
        t = targets[name]
        kw = t.base(np)
        kind = t.kinds[arg]
        if kind in ("array", "optarray"):
            pool = {lab: f for lab, f, _ in _array_pool(np, kw[arg] if kw[arg] is not None else np.ones(3))}
            try:
                kw[arg] = pool[label]()
            except Exception as e:  # the hostile value itself could not be built (e.g. torch refuses)
                print(json.dumps({"i": i, "outcome": "skip", "detail": f"value not built: {e!r}"[:200]}), flush=True)
                continue
        else:
            pool = {lab: v for lab, v, _ in _scalar_pool(kind)}
            kw[arg] = pool[label]
        args = [kw.pop(a) for a in t.positional]
        fn = _resolve(name)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fn(*args, **kw)
            outcome, detail = "accepted", ""
        except _Timeout:
            outcome, detail = "hang", f"stopped by the timeout signal after {time.perf_counter() - t0:.1f} s"
        except KeyboardInterrupt:
            outcome, detail = "hang", "KeyboardInterrupt"
        except EssError as e:
            msg = str(e)
            outcome = "typed" if re.search(rf"(?<![\w.]){re.escape(arg)}(?![\w(])", msg) else "unnamed"
            detail = f"{type(e).__name__}: {msg}"[:240]
        except BaseException as e:  # noqa: BLE001 - the census classifies everything
            outcome, detail = "untyped", f"{type(e).__name__}: {e}"[:240]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(
            json.dumps({"i": i, "outcome": outcome, "detail": detail, "s": round(time.perf_counter() - t0, 3)}),
            flush=True,
        )


def _start(timeout: float, mem_gib: float) -> subprocess.Popen:
    def limit() -> None:
        cap = int(mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    # the worker imports ess the way this process would (installed package, or PYTHONPATH=python)
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "--timeout", str(timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=limit,
        env=env,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per call before the timeout signal")
    ap.add_argument("--mem-gib", type=float, default=16.0, help="address-space cap of the worker")
    ap.add_argument("--only", default="", help="run only targets whose name contains this")
    ap.add_argument("--json", default="", help="write every case and its outcome here")
    a = ap.parse_args()
    if a.worker:
        _worker(a.timeout)
        return 0
    cases = _cases()
    todo = [i for i, c in enumerate(cases) if a.only in c[0]]
    results: Dict[int, Dict[str, Any]] = {}
    proc = _start(a.timeout, a.mem_gib)
    for i in todo:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{i}\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            err = proc.stderr.read() if proc.stderr else ""
            results[i] = {
                "i": i,
                "outcome": "crash",
                "detail": f"exit {proc.returncode}: {err.strip().splitlines()[-1:] if err else ''}",
            }
            proc = _start(a.timeout, a.mem_gib)
            continue
        results[i] = json.loads(line)
    if proc.stdin:
        proc.stdin.close()
    proc.wait(timeout=30)

    counts: Dict[str, int] = {}
    defects = []
    for i in todo:
        r = results[i]
        name, arg, label, acceptable = cases[i]
        o = r["outcome"]
        if o == "accepted" and not acceptable:
            o = "accepted-bad"
        counts[o] = counts.get(o, 0) + 1
        r.update(target=name, argument=arg, value=label, acceptable=acceptable, verdict=o)
        if o in ("untyped", "crash", "hang", "accepted-bad", "unnamed"):
            defects.append(r)
    print(f"{len(todo)} hostile calls over {len({cases[i][0] for i in todo})} public callables")
    for k in ("typed", "accepted", "unnamed", "untyped", "accepted-bad", "crash", "hang", "skip"):
        print(f"  {k:13s} {counts.get(k, 0)}")
    for r in defects:
        print(f"DEFECT {r['verdict']:12s} {r['target']}({r['argument']}={r['value']}): {r['detail']}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump([results[i] for i in todo], f, indent=1)
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
