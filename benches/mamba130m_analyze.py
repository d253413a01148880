"""Where the time of ``ess.analyze`` goes on a Mamba-130m-shaped model (issue 12's end-to-end target).

    PYTHONPATH=python python3 benches/mamba130m_analyze.py [L] [analysed layers] [model layers]

A random-weight transformers ``MambaForCausalLM`` (d_model 768, expand 2: 1536 channels, d_state 16;
``model layers`` of them, default 24) at length ``L`` (default 2048); ``ess.analyze`` on the first
``analysed layers`` mixers (default 1). Prints wall and process cpu time of the call and of its parts: the
forward pass (``ess.analyze``'s ``_forward``), the extraction with its run-time check (``MambaMixerExtractor.factors``),
the structured kernel (``ess.analyze``'s ``_structured_curves``), the report (``ess.analyze``'s
``_assemble`` and ``Report.from_rows``: the table and the summary) and the rest (discovery, hooks, the
rows of each layer). The parts are timed by wrapping those functions. On Linux it also prints the page faults
of each part (``/proc/vmstat``, so counted for the whole system: run it on an otherwise idle machine): on a
virtual machine whose host reclaims freed memory the first touch of fresh pages is a large part of the forward
pass and of the report (docs/benchmarks.md, twelfth session). Figures: docs/benchmarks.md.

Measure what users install: the release build (``pip install ".[bench]"``, fat LTO), run without
``PYTHONPATH``; the ``fastrelease`` build of ``maturin develop`` (no LTO) runs the kernel about 10 % slower
(thirteenth session). The last line names the extension module that ran.
"""

import os
import sys
import time

import torch
from transformers import MambaConfig, MambaForCausalLM

import ess
from ess.operators import hf

AZ = sys.modules["ess.analyze"]  # the module (``ess.analyze`` is the function)
L = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
K = int(sys.argv[2]) if len(sys.argv) > 2 else 1
NL = int(sys.argv[3]) if len(sys.argv) > 3 else 24
cfg = MambaConfig(
    vocab_size=1024,
    hidden_size=768,
    state_size=16,
    num_hidden_layers=NL,
    expand=2,
    conv_kernel=4,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
torch.manual_seed(0)
model = MambaForCausalLM(cfg).eval()
tok = torch.randint(0, cfg.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))
acc = {"forward": [0.0, 0.0], "factors": [0.0, 0.0], "kernel": [0.0, 0.0], "report": [0.0, 0.0]}
faults = {k: [0, 0] for k in acc}  # (huge-page faults, 4 KiB page faults) per part


def vmstat():
    """The system's (huge-page, all) page fault counts so far, or None where /proc/vmstat is missing."""
    try:
        with open("/proc/vmstat") as f:
            d = dict(line.split() for line in f)
        return int(d.get("thp_fault_alloc", 0)), int(d.get("pgfault", 0))
    except (OSError, ValueError):
        return None


def timed(fn, key):
    def wrapper(*a, **k):
        t0, c0, v0 = time.perf_counter(), time.process_time(), vmstat()
        try:
            return fn(*a, **k)
        finally:
            acc[key][0] += time.perf_counter() - t0
            acc[key][1] += time.process_time() - c0
            v1 = vmstat()
            if v0 is not None and v1 is not None:
                faults[key][0] += v1[0] - v0[0]
                faults[key][1] += v1[1] - v0[1]

    return wrapper


AZ._forward = timed(AZ._forward, "forward")
AZ._structured_curves = timed(AZ._structured_curves, "kernel")
hf.MambaMixerExtractor.factors = timed(hf.MambaMixerExtractor.factors, "factors")
AZ._assemble = timed(AZ._assemble, "report")
ess.Report.from_rows = classmethod(timed(ess.Report.from_rows.__func__, "report"))
t0, c0 = time.perf_counter(), time.process_time()
rep = ess.analyze(model, tok, progress=False, layers=[f"backbone.layers.{i}.mixer" for i in range(K)])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
(fw, fc), (fa_w, fa_c), (k_w, k_c), (r_w, r_c) = (acc[k] for k in ("forward", "factors", "kernel", "report"))
print(
    f"L={L}, {K} of {NL} layers: analyze {wall:.1f} s wall, {cpu:.1f} s cpu; forward {fw:.1f} s wall, {fc:.1f} s cpu; "
    f"extraction + check {fa_w:.1f} s wall, {fa_c:.1f} s cpu; kernel {k_w:.1f} s wall, {k_c:.1f} s cpu; "
    f"report {r_w:.1f} s wall, {r_c:.1f} s cpu; rest {wall - fw - fa_w - k_w - r_w:.1f} s wall, "
    f"{cpu - fc - fa_c - k_c - r_c:.1f} s cpu; load average {os.getloadavg()[0]:.1f}"
)
if vmstat() is not None:
    print(
        "page faults (whole system): "
        + "; ".join(
            f"{k} {h} of 2 MiB ({h * 2 / 1024:.2f} GiB) and {p / 1e3:.0f} k in all" for k, (h, p) in faults.items()
        )
    )
print(f"extension module: {ess._core.__file__}")
