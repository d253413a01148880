"""Benchmark of ess.sweep: one sweep of 20 jobs on three executors.

Jobs: 16 jobs of the built-in MQAR hybrid model (``"builtin"`` in a sweep: ``ess.models.load_builtin``,
not the delimiters model of ``ess analyze``; each on one fresh MQAR sequence of 24 pairs and 40
queries, L = 130, seeds 0-15) and 4 small GPT-2 configurations (random weights, built from configs
and written as local Hugging Face directories; 192 random tokens each). Every job runs with one
torch/rayon thread; a job takes about 0.4-1.5 s.

Executors: serial (this process), 2 local worker processes (``executor="processes"``), and Dask
(a ``LocalCluster`` of 2 worker processes, ``Client.get_executor()``). Each gets a fresh results
directory. Reported per executor:

* wall: the ``ess.sweep.run`` call (for processes it includes starting the pool; the Dask
  cluster's start is shown separately);
* work: the sum of the jobs' own times inside their tasks (build the model, analyse, write);
  cpu: the CPU time of the same (work well above cpu means the workers waited for a core: the
  machine was busy, as a shared 2-core machine is);
* overhead/job = (wall x workers - work) / jobs: worker time per job spent outside any job
  (process start and imports in fresh workers, scheduling, transfers, idle tail);
* speed-up against serial.

* write/job: the part of a job's time spent writing its two Parquet files (measured in the task).

Baseline: the same 20 analyses in a plain loop in this process (no sweep: no task, no files);
the serial sweep's CPU time in its tasks minus the loop's estimates the sweep's own cost per job
(on a busy machine CPU time drifts too: the write time above is the direct measure).
The tables of the three sweeps are checked to be identical.

    python benches/sweep.py [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

# heavy imports live inside the functions: spawned workers re-import this script (as
# __mp_main__), and a real driver (the ess command) does not make them import torch up front
from ess import sweep

GPT2_CONFIGS = [  # (n_layer, n_embd, n_head)
    (2, 64, 4),
    (4, 64, 4),
    (2, 128, 8),
    (4, 128, 8),
]


def make_jobs(tmp: Path):
    import torch
    import transformers as tr

    tr.utils.logging.disable_progress_bar()

    jobs = sweep.grid(
        {
            "name": "builtin-{seed}",
            "model": "builtin",
            "inputs": {"mqar": {"n": 1, "seed": "{seed}", "n_pairs": 24, "n_queries": 40}},
            "labels": {"arch": "hybrid"},
        },
        seed=range(16),
    )
    for i, (nl, ne, nh) in enumerate(GPT2_CONFIGS):
        d = tmp / f"gpt2-{nl}x{ne}"
        torch.manual_seed(i)
        cfg = tr.GPT2Config(
            vocab_size=256, n_positions=256, n_embd=ne, n_layer=nl, n_head=nh, bos_token_id=0, eos_token_id=0
        )
        tr.GPT2LMHeadModel(cfg).save_pretrained(d)
        jobs.append(
            sweep.Job(f"gpt2-{nl}x{ne}", str(d), inputs={"random": {"length": 192, "seed": i}}, labels={"arch": "gpt2"})
        )
    return jobs


def plain_loop(jobs):
    """The same analyses without the sweep (model built, analysed, table kept in memory):
    (wall seconds, CPU seconds)."""
    import torch

    import ess

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    for j in jobs:
        model, own = sweep._build_model(j)
        x = sweep._build_inputs(j, model, own)
        opts = {"markers": [1]} if j.model == "builtin" else {}
        ess.analyze(model, x, progress=False, **opts)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    W = args.workers
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    import pandas as pd
    import torch

    import ess

    tmp = Path(tempfile.mkdtemp(prefix="ess-sweep-bench-"))
    try:
        jobs = make_jobs(tmp)
        n = len(jobs)
        print(
            f"ess {ess.__version__}, torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"{n} jobs: 16 x built-in MQAR hybrid model (1 MQAR sequence, L = 130), "
            f"4 x GPT-2 {', '.join(f'{a}x{b}/{c}h' for a, b, c in GPT2_CONFIGS)} (L = 192); 1 thread per job"
        )
        plain_loop(jobs[:1] + jobs[-1:])  # warm imports and caches in this process
        base, base_cpu = plain_loop(jobs)
        print(
            f"plain loop (no sweep, this process): {base:.2f} s wall, {base_cpu:.2f} s CPU, {1000 * base / n:.0f} ms/job"
        )
        rows = []

        def record(name, workers, out, extra=""):
            assert out.complete and len(out.finished) == n, out.table()
            work = sum(out.seconds.values())
            rows.append(
                {
                    "executor": name,
                    "workers": workers,
                    "wall_s": out.wall_seconds,
                    "work_s": work,
                    "cpu_s": sum(out.cpu_seconds.values()),
                    "write_ms_per_job": 1000 * sum(out.write_seconds.values()) / n,
                    "overhead_ms_per_job": 1000 * (out.wall_seconds * workers - work) / n,
                    "note": extra,
                }
            )

        out = sweep.run(jobs, tmp / "serial", threads=1, progress=False)
        record(
            "serial",
            1,
            out,
            f"in-task CPU minus plain loop: {1000 * (sum(out.cpu_seconds.values()) - base_cpu) / n:.0f} ms/job",
        )
        out = sweep.run(jobs, tmp / "processes", executor="processes", max_workers=W, threads=1, progress=False)
        record("processes", W, out, "includes spawning the pool")
        from dask.distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=W, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        t_start = time.perf_counter() - t0
        try:
            out = sweep.run(jobs, tmp / "dask", executor=client.get_executor(), threads=1, progress=False)
            record("dask", W, out, f"cluster start {t_start:.2f} s not included")
            out2 = sweep.run(jobs, tmp / "dask-warm", executor=client.get_executor(), threads=1, progress=False)
            record("dask (warm workers)", W, out2, "second sweep on the same cluster")
        finally:
            client.close()
            cluster.close()
        ref = sweep.load(tmp / "serial").table
        for d in ("processes", "dask", "dask-warm"):
            pd.testing.assert_frame_equal(ref, sweep.load(tmp / d).table, check_exact=True)
        res = pd.DataFrame(rows)
        res["speedup"] = res["wall_s"].iloc[0] / res["wall_s"]
        res = res[
            [
                "executor",
                "workers",
                "wall_s",
                "work_s",
                "cpu_s",
                "write_ms_per_job",
                "overhead_ms_per_job",
                "speedup",
                "note",
            ]
        ]
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(res.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("tables of serial, processes and dask sweeps: identical (bit for bit)")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
