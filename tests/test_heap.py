"""``ess._heap.retained``: freed memory stays in the C heap while ``ess.analyze`` runs (glibc only)."""

import os
import platform
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import ess
from ess import _heap

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
glibc_only = pytest.mark.skipif(not GLIBC, reason="the heap settings exist on glibc only")

# Run in a fresh process: page-fault counts and RSS of a clean heap, environment under control.
_PROBE = textwrap.dedent(
    """
    import json, resource, numpy as np
    from ess import _heap

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def rss():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) * 1024

    def churn(n=4):
        out = []
        for _ in range(n):
            f0 = faults()
            a = np.ones(2**25)  # 256 MiB, written in full
            del a
            out.append(faults() - f0)
        return out

    res = {"before": churn()}
    with _heap.retained() as on:
        res["on"] = on
        res["inside"] = churn()
        res["rss_inside"] = rss()
        res["active"] = _heap.active()
    res["after"] = churn()
    res["rss_after"] = rss()
    res["active_after"] = _heap.active()
    print(json.dumps(res))
    """
)


def _probe(**env):
    import json

    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("ESS_KEEP_HEAP", "GLIBC_TUNABLES")
    }
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=e, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_memory_is_reused_warm_inside_and_returned_after():
    r = _probe()
    assert r["on"] is True and r["active"] is True and r["active_after"] is False
    # glibc's defaults: every 256 MiB array is a fresh mapping, faulted in again each time
    assert min(r["before"]) > 100
    # kept: the first array grows the heap, the next ones reuse its pages without a fault
    assert r["inside"][0] > 100
    assert max(r["inside"][1:]) < 0.05 * r["inside"][0]
    # defaults again after the context: fresh mappings, and the kept memory went back to the system
    assert min(r["after"]) > 100
    assert r["rss_after"] < r["rss_inside"] - 200 * 2**20


@glibc_only
@pytest.mark.parametrize(
    "env",
    [{"ESS_KEEP_HEAP": "0"}, {"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}],
)
def test_switched_off_or_left_to_the_user(env):
    r = _probe(**env)
    assert r["on"] is False and r["active"] is False
    assert min(r["inside"]) > 100  # glibc's own behaviour: nothing kept


def test_nested_and_concurrent_uses_restore_once_and_on_errors():
    with _heap.retained() as on:
        with _heap.retained():
            assert _heap.active() is on
        assert _heap.active() is on  # the inner exit leaves the outer one's settings
    assert not _heap.active()

    with pytest.raises(RuntimeError, match="boom"):
        with _heap.retained():
            raise RuntimeError("boom")
    assert not _heap.active()

    barrier = threading.Barrier(4)
    seen = []

    def work():
        with _heap.retained():
            barrier.wait(timeout=30)
            seen.append(_heap.active())
            barrier.wait(timeout=30)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == [GLIBC] * 4
    assert not _heap.active()


def test_analyze_keeps_the_heap_for_the_forward_and_the_kernels_only():
    from ess.models.model import HybridConfig, HybridLM

    torch.manual_seed(0)
    model = HybridLM(HybridConfig(d_model=8, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))
    during = []
    h = model.blocks[0].mixer.register_forward_hook(lambda *a: during.append(_heap.active()))
    try:
        rep = ess.analyze(model, torch.arange(2, 18).reshape(1, 16), progress=False)
    finally:
        h.remove()
    assert during == [GLIBC]
    assert not _heap.active()
    assert np.isfinite(rep.table["ess_tolerance"]).all()

    # an analysis whose forward pass fails leaves the defaults too
    def fail(*a):
        raise RuntimeError("forward failed")

    h = model.blocks[1].mixer.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            ess.analyze(model, torch.arange(2, 18).reshape(1, 16), progress=False)
    finally:
        h.remove()
    assert not _heap.active()


_GATE_PROBE = textwrap.dedent(
    """
    import json, numpy as np
    from ess import _args, _heap
    from ess.errors import TooLargeError

    with _heap.retained():
        a = np.ones(2**27)  # 1 GiB, written, then freed into the heap (kept: not in MemAvailable)
        del a
        held = _args._available_bytes()
        try:
            _args.gate("x", held + 2**29, "half a GiB more than MemAvailable shows")  # fits once given back
            passed = True
        except TooLargeError:
            passed = False
        after = _args._available_bytes()
    try:
        _args.gate("y", 2**62, "an impossible buffer")
        refused = ""
    except TooLargeError as e:
        refused = str(e)
    print(json.dumps({"passed": passed, "freed": after - held, "refused": refused}))
    """
)


@glibc_only
def test_memory_gate_gives_the_kept_heap_back_before_refusing():
    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("ESS_KEEP_HEAP", "GLIBC_TUNABLES")
    }
    out = subprocess.run(
        [sys.executable, "-c", _GATE_PROBE], env=e, capture_output=True, text=True, timeout=120, check=True
    )
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["freed"] > 2**29  # the kept GiB went back to the system when the gate looked again
    assert r["passed"]
    assert r["refused"].startswith("y: an impossible buffer needs")
