"""Operator extraction from torch / transformers layers against the pipeline a user would write.

Times are the best of two runs (one for the slow Jacobian baseline) and include the model's
forward pass on the ess side. For each layer family, the same data goes through (a) the ess extractor (hooks during the
forward, then ``operators(0)``) and (b) the obvious baseline, in the same process; both results are
compared and the wall-clock times and their ratio printed.

* GPT-2-small-shaped attention (12 heads, d_model 768, L = 512, one block): ess under sdpa vs
  eager with ``output_attentions=True`` (the weights copied to float64 numpy).
* LSTM (32 -> 64 units, L = 64): forward-mode Jacobian vs ``torch.autograd.functional.jacobian``
  summed over the input channels.
* Mamba mixer (d_inner 256, N = 16, L = 256): ess (the scan carried over all impulses) vs the
  selective-SSM formula in numpy, one channel at a time.

Run: ``python benches/extract.py`` (RAYON/OMP thread settings are respected; torch threads = 2
unless ESS_BENCH_THREADS is set).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Tuple

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("ESS_BENCH_THREADS", "2")))

from ess.operators import find_extractor  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int = 1) -> Tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def extract(model: torch.nn.Module, name: str, run: Callable[[], Any]) -> np.ndarray:
    mod = dict(model.named_modules())[name]
    ext = find_extractor(mod, name)
    assert ext is not None, name
    handles = ext.attach()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return ext.operators(0).operators


def row(label: str, shape: Any, t_ess: float, t_base: float, err: float) -> None:
    print(f"{label:<34} {str(shape):<16} {t_ess:9.3f} {t_base:11.3f} {t_base / t_ess:8.1f}x   {err:.1e}")


def bench_gpt2() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    L = 512
    kw = dict(vocab_size=1000, n_positions=L, n_embd=768, n_layer=1, n_head=12, bos_token_id=0, eos_token_id=0)
    sdpa = GPT2LMHeadModel(GPT2Config(**kw, attn_implementation="sdpa")).eval()
    eager = GPT2LMHeadModel(GPT2Config(**kw, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 1000, (1, L))
    t_ess, ops = timed(lambda: extract(sdpa, "transformer.h.0.attn", lambda: sdpa(input_ids=ids)), 2)

    def naive() -> np.ndarray:
        with torch.no_grad():
            att = eager(input_ids=ids, output_attentions=True).attentions[0]
        return att[0].double().numpy()

    t_base, ref = timed(naive, 2)
    row("GPT-2 attention (sdpa vs eager)", ops.shape, t_ess, t_base, float(np.abs(ops - ref).max()))


def bench_lstm() -> None:
    torch.manual_seed(1)
    L, I, H = 64, 32, 64
    m = torch.nn.LSTM(I, H, batch_first=True).double()
    x = torch.randn(1, L, I, dtype=torch.float64)
    t_ess, ops = timed(lambda: extract(m, "", lambda: m(x)), 2)

    def naive() -> np.ndarray:
        J = torch.autograd.functional.jacobian(lambda u: m(u.unsqueeze(0))[0][0], x[0])  # (L, H, L, I)
        return J.sum(-1).permute(1, 0, 2).numpy()

    t_base, ref = timed(naive, 1)
    row("LSTM Jacobian (fwd-AD vs jacobian)", ops.shape, t_ess, t_base, float(np.abs(ops - ref).max()))


def bench_mamba() -> None:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(2)
    L = 256
    cfg = MambaConfig(
        vocab_size=100,
        hidden_size=128,
        state_size=16,
        num_hidden_layers=1,
        expand=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = MambaForCausalLM(cfg).double().eval()
    mixer = model.backbone.layers[0].mixer
    ids = torch.randint(0, 100, (1, L))
    cap = {}
    h = mixer.x_proj.register_forward_hook(lambda m, a, o: cap.update(xo=o.detach()))
    t_ess, ops = timed(lambda: extract(model, "backbone.layers.0.mixer", lambda: model(input_ids=ids)), 2)
    h.remove()

    def naive() -> np.ndarray:
        R, N = mixer.time_step_rank, mixer.ssm_state_size
        xo = cap["xo"][0].numpy()
        W, b = mixer.dt_proj.weight.detach().numpy(), mixer.dt_proj.bias.detach().numpy()
        dt = np.logaddexp(0.0, xo[:, :R] @ W.T + b)  # softplus
        Bm, Cm = xo[:, R : R + N], xo[:, R + N :]
        A = -np.exp(mixer.A_log.detach().numpy())
        D = mixer.D.detach().numpy()
        tri = np.tril(np.ones((L, L), dtype=bool))
        out = np.zeros((dt.shape[1], L, L))
        for d in range(dt.shape[1]):
            c = np.cumsum(dt[:, d])
            diff = np.where(tri, c[:, None] - c[None, :], 0.0)
            T = np.zeros((L, L))
            for n in range(N):
                T += np.outer(Cm[:, n], Bm[:, n]) * np.exp(A[d, n] * diff)
            out[d] = np.where(tri, T * dt[None, :, d], 0.0) + np.diag(np.full(L, D[d]))
        return out

    t_base, ref = timed(naive, 2)
    row("Mamba mixer (scan vs numpy formula)", ops.shape, t_ess, t_base, float(np.abs(ops - ref).max()))


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'layer':<34} {'operators':<16} {'ess [s]':>9} {'baseline [s]':>11} {'ratio':>8}   max|diff|")
    bench_gpt2()
    bench_lstm()
    bench_mamba()
