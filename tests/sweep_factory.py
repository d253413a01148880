"""Model factories for tests/test_sweep.py (importable in worker processes as ``sweep_factory``)."""

import os
import time


def tiny(mixers=("conv", "softmax_attention")):
    """A tiny untrained hybrid model; the sweep seeds torch before calling it."""
    from ess.models.model import HybridConfig, HybridLM

    return HybridLM(HybridConfig(d_model=16, n_heads=2, d_state=4, mixers=list(mixers)))


def tiny_or_hang(hang_dir):
    """``tiny()``, unless ``hang_dir/hang`` exists on entry: then write this process's pid to
    ``hang_dir/pid`` (atomically) and sleep until killed (at most 120 s, then raise)."""
    if os.path.exists(os.path.join(hang_dir, "hang")):
        tmp = os.path.join(hang_dir, f".pid.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, os.path.join(hang_dir, "pid"))
        time.sleep(120)
        raise RuntimeError("tiny_or_hang: was not killed within 120 s")
    return tiny()


def boom():
    raise RuntimeError("factory exploded on purpose")


def tokens_8():
    import torch

    return torch.arange(2, 10).reshape(1, 8)
