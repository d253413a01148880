"""Train the second built-in model (``ess.models.load_builtin_delimiters``) on multi-segment recall.

    nice python scripts/train_delimiters.py [--steps 1000] [--threads 1] [--out python/ess/models]

The task is the one of ``ess reproduce delimiters`` (:func:`ess.reproduce.delimiters.generate`) with
three segments: ``BOS``, then per segment 4 key-value pairs and 4 queries with their values, segments
separated by the delimiter token ``DELIM`` (id 1); keys come from one pool of 8 and get fresh values in
every segment, so an earlier segment's bindings are stale after a delimiter. L = 51, vocabulary 26.
The model stacks a short convolution, a selective SSM, gated linear attention and softmax attention
(d_model 32, 35k parameters, 140 kB of weights). The shipped weights: the defaults, 1000 steps of batch 64
in 297 s on one loaded CPU core, held-out accuracy 0.9905 (500 sequences).

Writes ``hybrid_delimiters.safetensors`` (weights), ``hybrid_delimiters.json`` (model and task config,
training settings, held-out accuracy) and ``delimiters_inputs.npy`` (8 held-out sequences) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ess.models.layers import GatedLinearAttention
from ess.models.model import HybridConfig, HybridLM
from ess.reproduce.delimiters import generate

TASK = dict(n_segments=3, n_pairs=4, n_queries=4, n_keys=8, n_values=16)
EVAL_SEED = 54321


def _gla_recurrent(self: GatedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The same function as ``GatedLinearAttention.forward`` in its recurrent form
    (``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``): about 4x cheaper to train on a CPU
    than the quadratic form, which materialises a ``(B, H, L, L, d_h)`` decay tensor."""
    q, k, v, loga = self.project(x)
    B, H, L, dh = q.shape
    S = q.new_zeros(B, H, dh, v.shape[-1])
    outs = []
    for a_t, k_t, v_t, q_t in zip(loga.exp().unbind(2), k.unbind(2), v.unbind(2), q.unbind(2)):
        S = a_t.unsqueeze(-1) * S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append((q_t.unsqueeze(-2) @ S).squeeze(-2))
    o = torch.stack(outs, 2)  # (B, H, L, dh)
    return self.out(o.transpose(1, 2).reshape(B, L, H * dh))


@torch.no_grad()
def accuracy(model: HybridLM, tokens, targets, mask) -> float:
    model.eval()
    pred = model(tokens).argmax(-1)
    model.train()
    return float((pred[mask] == targets[mask]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.995, help="stop early at this held-out accuracy")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "python" / "ess" / "models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab = 2 + TASK["n_keys"] + TASK["n_values"]
    mcfg = HybridConfig(
        vocab_size=vocab,
        d_model=args.d_model,
        n_heads=2,
        d_state=8,
        conv_kernel=3,
        max_len=64,
        mixers=["conv", "ssm", "gated_linear_attention", "softmax_attention"],
    )
    model = HybridLM(mcfg)
    for mod in model.modules():  # train through the recurrent form (same weights, same function)
        if isinstance(mod, GatedLinearAttention):
            mod.forward = types.MethodType(_gla_recurrent, mod)  # type: ignore[method-assign]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    x_ev, y_ev, m_ev, delims = generate(500, seed=EVAL_SEED, **TASK)
    t0 = time.time()
    acc, step = 0.0, 0
    for step in range(1, args.steps + 1):
        x, y, m, _ = generate(args.batch, seed=args.seed * 1_000_003 + step, **TASK)
        loss = F.cross_entropy(model(x)[m], y[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            acc = accuracy(model, x_ev, y_ev, m_ev)
            print(
                f"step {step:5d}  loss {loss.item():.4f}  held-out acc {acc:.4f}  {time.time() - t0:.0f}s", flush=True
            )
            if acc >= args.target:
                break
    for mod in model.modules():
        if isinstance(mod, GatedLinearAttention):
            del mod.forward  # back to the class's quadratic form, as load_builtin gives it
    acc = accuracy(model, x_ev, y_ev, m_ev)
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(args.out / "hybrid_delimiters.safetensors"),
    )
    np.save(args.out / "delimiters_inputs.npy", x_ev[:8].numpy().astype(np.int16))
    info = {
        "model_config": asdict(mcfg),
        "task": TASK,
        "sequence_length": int(x_ev.shape[1]),
        "delimiter_token": 1,
        "delimiter_positions": delims,
        "eval_seed": EVAL_SEED,
        "eval_sequences": int(x_ev.shape[0]),
        "accuracy": acc,
        "accuracy_definition": "fraction of query positions whose argmax prediction is the value bound to the key in the same segment, 500 held-out sequences",
        "steps": step,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": round(time.time() - t0, 1),
        "torch_version": torch.__version__,
        "seed": args.seed,
        "threads": args.threads,
        "command": f"nice python scripts/train_delimiters.py --steps {args.steps} --batch {args.batch} --lr {args.lr} "
        f"--d-model {args.d_model} --seed {args.seed} --threads {args.threads}",
    }
    (args.out / "hybrid_delimiters.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
