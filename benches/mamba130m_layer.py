"""One Mamba-130m-shaped layer through the structured kernel alone (issue 12's speed target: 5 s at L = 2048).

    PYTHONPATH=python python3 benches/mamba130m_layer.py [L]

1536 channels (d_model 768, expand 2), N = 16, random S4D-real ``A``, softplus deltas around 0.05, shared
``B, C``; ``ess.structured.mamba_ess(method="both")``; prints wall and process cpu time. Recorded figures:
docs/benchmarks.md (outputs kept locally go to benches/results/, which git ignores).
"""

import sys
import time

import numpy as np

from ess import structured as S

L = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
D, N = 1536, 16
rng = np.random.default_rng(0)
A = -np.tile(np.arange(1, N + 1, dtype=np.float64), (D, 1)) * rng.uniform(0.5, 1.5, (D, 1))
delta = np.log1p(np.exp(rng.standard_normal((L, D)) * 0.5 - 3.0))
B = rng.standard_normal((L, N))
C = rng.standard_normal((L, N))
t0 = time.perf_counter()
c0 = time.process_time()
r = S.mamba_ess(A, delta, B, C, method="both")
print(
    f"mamba_ess D={D} N={N} L={L}: {time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s cpu; "
    f"mean tol {r.tolerance.mean():.2f}"
)
