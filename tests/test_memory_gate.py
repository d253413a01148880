"""Oversized requests are a TooLargeError naming the argument, estimated before anything is
allocated; never an allocation abort (which kills the process) or an out-of-memory kill.

Each case runs in a subprocess: a regression here would take the test process down."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CASES = {
    # a broadcast (non-contiguous) batch whose C-ordered copy is petabytes
    "dense_broadcast_copy": (
        "T",
        "ess.effective_state_size(np.broadcast_to(np.tril(np.ones((2048, 2048))), (50000, 2048, 2048)))",
    ),
    # a zero-size batch with a huge L: no per-position storage
    "dense_empty_batch_huge_L": (
        None,
        "r = ess.effective_state_size(np.zeros((0, 2**28, 2**28))); assert r.shape == (0, 2**28)",
    ),
    # CCMC: n_traj * n_steps outputs of 24 bytes each (the larger of the two is named)
    "ccmc_many_trajectories": (
        "n_traj",
        "ess.ccmc.simulate_ccmc(np.full((4, 4), 0.25), [0, 1], n_steps=2**11, n_traj=2**20)",
    ),
    # token-priority graphs over a vocabulary of 4e9 tokens (per-token tables)
    "tpg_huge_vocabulary": (
        "vocab_size",
        "ess.graph.TokenPriorityGraphs(np.array([[0, 1]]), np.array([1]), vocab_size=2**32 - 2)",
    ),
    # one column per target set: an n x n_sets result of 80 GB
    "absorption_many_sets": (
        "sets",
        "import scipy.sparse as sp; n = 100000; "
        "ess.markov.absorption_probabilities(sp.identity(n, format='csr'), [[i] for i in range(n)])",
    ),
    # the structured kernel keeps a window of N x N factors per channel (at least two): one
    # factor of N = 40000 is 12.8 GB
    "ssm_per_split_factors": (
        "B",
        "ess.structured.ssm_ess(None, np.ones((100, 40000)), np.ones((100, 40000)))",
    ),
    # Python-side tables that numpy would have refused with a bare MemoryError
    "identifiability_huge_vocabulary": ("vocab_size", "ess.ccmc.identifiability([[0, 1]], 10**6)"),
    "mle_huge_vocabulary": ("vocab_size", "ess.ccmc.fit_attention_mle([[0, 1]], [1], 10**6)"),
    "conv_huge_length": ("L", "ess.structured.conv_ess(np.ones(3), 10**11)"),
    "example_huge_length": ("L", "ess.examples.softmax_attention(10**6)"),
    # ids given as a broadcast view: the copy is refused before it is made
    "scc_broadcast_ids": (
        "src",
        "ess.graph.strongly_connected_components(np.broadcast_to(np.int64(0), (2**42,)), "
        "np.broadcast_to(np.int64(0), (2**42,)), 1)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_oversized_request_is_too_large_error(case: str) -> None:
    arg, call = CASES[case]
    code = textwrap.dedent(
        f"""
        import numpy as np, ess
        try:
            {call}
            print("ok")
        except ess.TooLargeError as e:
            print("TooLargeError:", e)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{case}: the process died (code {res.returncode}): {res.stderr[-2000:]}"
    out = res.stdout.strip()
    if arg is None:
        assert out == "ok", (out, res.stderr[-2000:])
    else:
        assert out.startswith("TooLargeError:"), (out, res.stderr[-2000:])
        assert out.split(":", 1)[1].strip().startswith(arg), out
