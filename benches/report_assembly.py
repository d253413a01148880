"""The cost of building ``ess.analyze``'s report for Mamba-130m-shaped layers, without the kernel.

    PYTHONPATH=python python3 benches/report_assembly.py [L] [layers] [repeats]

Feeds ``analyze``'s own row keeper (``_EssPass._append``) with ``layers`` layers of 1536 channels
(``channel d`` labels, TSS 16, kind ``selective_ssm``, curves drawn at random) at length ``L``
(default 2048, 1 layer, 3 repeats), then times the steps of ``ess.analyze`` that follow the kernel:
keeping each layer's rows (``_append``), building the columns (``_assemble``, with the token column where
it takes the token ids), and building the table and the per-layer summary (``Report.from_rows``, with
token ids). A warm-up on a short length comes
first (imports, first calls). Prints the process-cpu and wall time of each step in the first run and
the best over the repeats, and the peak resident memory. Run it with ``PYTHONPATH`` on two trees to
compare them (the script uses only what both have). Figures: docs/benchmarks.md.
"""

import inspect
import resource
import sys
import time
from types import SimpleNamespace

import numpy as np

import ess

AZ = sys.modules["ess.analyze"]  # the module (``ess.analyze`` is the function)
TOKENS_IN_ASSEMBLE = "token_ids" in inspect.signature(AZ._assemble).parameters
L = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
K = int(sys.argv[2]) if len(sys.argv) > 2 else 1
R = int(sys.argv[3]) if len(sys.argv) > 3 else 3
C, N = 1536, 16
rng = np.random.default_rng(0)
tol = np.minimum(rng.integers(0, N + 1, (C, L)).astype(float), np.minimum(np.arange(L), L - np.arange(L)))
ent = tol * rng.random((C, L))
ops = SimpleNamespace(kind="selective_ssm", labels=[f"channel {d}" for d in range(C)], tss=[float(N)] * C, shared=None)
tokens = rng.integers(0, 1024, (1, L))


def once(L: int, K: int, tol: np.ndarray, ent: np.ndarray, tokens: np.ndarray) -> list:
    """One report of ``K`` layers: (cpu, wall) of the ``_append`` calls, of ``_assemble`` and of
    ``Report.from_rows``."""
    P = np.arange(L)
    meta = {"model": "m", "device": "cpu", "length": L, "n_samples": 1, "method": "both", "rtol": None, "atol": None}
    lm = [{"layer": f"backbone.layers.{i}.mixer", "kind": "selective_ssm", "route": "structured"} for i in range(K)]
    kw = dict.fromkeys(("method", "atol", "rtol", "positions", "budget", "materialize"), None)
    p = AZ._EssPass([], [], **kw, ess_device=None, precision="float64", progress=False, bar=None)
    curves = [(tol.copy(), ent.copy()) for _ in range(K)]  # what the kernel returns, one pair per layer
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(K):
        p._append(f"backbone.layers.{i}.mixer", 0, ops, *curves[i], P, L, C)
    del curves
    t1, c1 = time.perf_counter(), time.process_time()
    # (a tree whose _assemble takes the token ids fills the token column with the others)
    rows = AZ._assemble(p.cols, p.cats, tokens) if TOKENS_IN_ASSEMBLE else AZ._assemble(p.cols, p.cats)
    p.cols.clear()
    t2, c2 = time.perf_counter(), time.process_time()
    ess.Report.from_rows(rows, layer_meta=lm, skipped=[], tokens=None, token_ids=tokens, markers={}, meta=meta)
    t3, c3 = time.perf_counter(), time.process_time()
    return [c1 - c0, t1 - t0, c2 - c1, t2 - t1, c3 - c2, t3 - t2]


# warm-up on a short length: imports (pandas, pyarrow) and first calls are not what a layer costs
once(16, 2, tol[:, :16].copy(), ent[:, :16].copy(), tokens[:, :16].copy())
runs = [once(L, K, tol, ent, tokens) for _ in range(R)]
first, best = runs[0], np.min(runs, axis=0)
for name, (pc, pw, ac, aw, fc, fw) in (("first", first), ("best", best)):
    print(
        f"L={L}, {K} layer(s) x {C} channels ({K * C * L:,} rows), {name} of {R}: _append {pc:.2f} s cpu {pw:.2f} s "
        f"wall; _assemble {ac:.2f} s cpu {aw:.2f} s wall; Report.from_rows {fc:.2f} s cpu {fw:.2f} s wall; "
        f"together {pc + ac + fc:.2f} s cpu {pw + aw + fw:.2f} s wall"
    )
print(f"peak rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
