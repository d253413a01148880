"""Ctrl-C stops long kernels promptly: a subprocess runs a call that takes many seconds, gets
SIGINT, and must raise KeyboardInterrupt within half a second, with the process healthy after.

Kernels check for a pending interrupt at a fine grain (per split, per elimination panel of
~5e7 flops, per recurrence step, per 1024 simulation steps), so the latency is one grain: well
under 0.5 s for these sizes; a single split of a dense operator at L = 2048 (a 1024 x 1024
eigensolve) is the coarsest grain, about a second on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SETUP = {
    "dense": """
        import numpy as np, ess
        rng = np.random.default_rng(0)
        # many operators of moderate size: the kernel checks between splits, and one split of
        # a 600 x 600 operator is a few tens of milliseconds (at L = 2048 one split is ~1 s)
        T = np.tril(rng.random((16, 600, 600)))
        call = lambda: ess.effective_state_size(T, method="both")
    """,
    "structured": """
        import numpy as np, ess
        rng = np.random.default_rng(0)
        L, N, C = 8000, 16, 32  # dense transitions: about 5 s uninterrupted
        A = rng.normal(size=(C, L, N, N)) * 0.2
        B = rng.normal(size=(C, L, N)); Cm = rng.normal(size=(C, L, N))
        call = lambda: ess.structured.ssm_ess(A, B, Cm, method="both")
    """,
    "markov": """
        import numpy as np, ess
        rng = np.random.default_rng(0)
        n = 4000  # about 4 s uninterrupted
        P = rng.random((n, n)); P /= P.sum(1, keepdims=True)
        call = lambda: ess.markov.mean_first_passage_times(P)
    """,
}

RUNNER = """
import sys, time
{setup}
print("ready", flush=True)
t0 = time.perf_counter()
try:
    call()
    print("finished", flush=True)
except KeyboardInterrupt:
    print(f"interrupted", flush=True)
    sys.stdout.flush()
# the process is healthy after the interrupt: the kernels run again
import numpy as np
print("after", float(ess.effective_state_size(np.tril(np.ones((6, 6))))[3]), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SETUP))
def test_sigint_interrupts_a_long_kernel(kind: str) -> None:
    code = RUNNER.format(setup=textwrap.dedent(SETUP[kind]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAYON_NUM_THREADS": "2"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + proc.stderr.read() if proc.stderr else ""
        time.sleep(1.0)  # well inside the kernel (each call takes far longer without an interrupt)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        first = proc.stdout.readline().strip()
        latency = time.perf_counter() - sent
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first == "interrupted", (first, rest, err)
    assert latency < 0.5, f"{kind}: KeyboardInterrupt took {latency:.2f} s"
    assert "after 1.0" in rest, (rest, err)
    assert proc.returncode == 0, err
