"""ess.sweep: resumable sweeps (serial, process pool, Dask, Ray), killed workers, corrupt and
foreign files in the results directory, the ``ess sweep`` command, comparison figures."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires("torch", "pandas", "pyarrow", "matplotlib")
torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import ess  # noqa: E402
from ess import sweep  # noqa: E402
from ess.sweep import Job, SweepResultsError  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    torch.manual_seed(0)
    cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    tr.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def jobs():
    """Built-in model on fresh MQAR inputs (a grid over seeds), a factory with random inputs and
    labels, and a job that raises."""
    js = sweep.grid(
        {
            "name": "mqar-{seed}",
            "model": "builtin",
            "inputs": {"mqar": {"n": 1, "seed": "{seed}"}},
            "options": {"positions": "0:34:3"},
        },
        seed=[0, 1],
    )
    js.append(
        Job(
            "tiny",
            "sweep_factory:tiny",
            inputs={"random": {"length": 12, "batch": 2}},
            seed=3,
            labels={"arch": "hybrid"},
        )
    )
    js.append(Job("boom", "sweep_factory:boom", inputs=[1, 2, 3]))
    return js


@pytest.fixture(scope="module")
def serial(jobs, tmp_path_factory):
    root = tmp_path_factory.mktemp("serial") / "res"
    out = sweep.run(jobs, root, threads=1, progress=False)
    return root, out


def _check_outcome(out):
    assert out.finished == ["mqar-0", "mqar-1", "tiny"] and out.failed == ["boom"] and not out.lost and not out.skipped
    assert "RuntimeError: factory exploded on purpose" in out.errors["boom"]
    assert not out.complete


def test_serial_results(serial, jobs):
    root, out = serial
    _check_outcome(out)
    res = sweep.load(root)
    t = res.table
    assert t.columns[0] == "job" and set(t.columns[1:3]) == {"seed", "arch"}  # labels next
    assert set(t["job"]) == {"mqar-0", "mqar-1", "tiny"}
    # each job's rows are exactly its own ess.analyze table
    ref = ess.analyze(
        sweep_factory_tiny(3), torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3)), progress=False
    )
    mine = t[t["job"] == "tiny"].drop(columns=["job", "seed", "arch"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, ref.table.reset_index(drop=True), check_dtype=False, check_categorical=False)
    assert sorted(t.loc[t["job"] == "mqar-0", "position"].unique().tolist()) == list(range(0, 34, 3))
    # the two MQAR jobs really ran on different inputs
    tok = t[(t["layer"] == "blocks.0.mixer") & (t["index"] == 0)].groupby("job")["token"].apply(list)
    assert tok["mqar-0"] != tok["mqar-1"]
    assert set(res.summary["job"]) == {"mqar-0", "mqar-1", "tiny"} and "avg_ess_tolerance" in res.summary
    f = res.failed
    assert list(f["job"]) == ["boom"] and "exploded" in f["error"].iloc[0]
    assert "Traceback" in res.records["boom"]["traceback"]
    # the dataset is a plain hive-partitioned Parquet dataset too
    direct = pd.read_parquet(root / "table")
    assert len(direct) == len(t) and set(direct["job"].astype(str)) == set(t["job"])
    # rerun: done jobs are skipped, the failed one retried (and fails again), or kept when asked
    again = sweep.run(jobs, root, progress=False)
    assert again.skipped == ["mqar-0", "mqar-1", "tiny"] and again.failed == ["boom"] and not again.finished
    kept = sweep.run(jobs, root, progress=False, retry_failed=False)
    assert kept.failed == ["boom"] and "exploded" in kept.errors["boom"]


def sweep_factory_tiny(seed):
    import sweep_factory

    torch.manual_seed(seed)
    return sweep_factory.tiny()


def _same_tables(a, b):
    """Identical, not merely close: every float of both tables equal bit for bit (one thread per task)."""
    ra, rb = sweep.load(a), sweep.load(b)
    pd.testing.assert_frame_equal(ra.table, rb.table, check_exact=True)
    pd.testing.assert_frame_equal(ra.summary, rb.summary, check_exact=True)
    assert list(ra.jobs["status"]) == list(rb.jobs["status"])


@pytest.fixture(scope="module")
def pool():
    """Two spawned worker processes, shared by the process-pool tests (the kill test, last, breaks it)."""
    ex, owned = sweep._make_executor("processes", 2)  # exactly what executor="processes" makes
    assert owned and isinstance(ex, cf.ProcessPoolExecutor) and ex._mp_context.get_start_method() == "spawn"
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_process_pool_identical(serial, jobs, tmp_path, pool):
    out = sweep.run(jobs, tmp_path / "res", executor=pool, threads=1, progress=False)
    _check_outcome(out)
    _same_tables(serial[0], tmp_path / "res")


@pytest.mark.requires("transformers")
def test_hf_directory(hf_dir, tmp_path):
    """A local Hugging Face directory as model (GPT-2 written by save_pretrained), its table equal
    to analyze on the same model."""
    job = Job("gpt2", hf_dir, inputs=[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], labels={"arch": "gpt2"})
    assert job.model == str(hf_dir.absolute())
    out = sweep.run([job], tmp_path / "res", progress=False)
    assert out.finished == ["gpt2"], out.errors
    t = sweep.load(tmp_path / "res").table
    assert set(t["layer"]) == {"transformer.h.0.attn", "transformer.h.1.attn"} and (t["arch"] == "gpt2").all()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, use_kernels=False)  # as the sweep loads it
    ref = ess.analyze(model, torch.arange(1, 11)[None], progress=False).table
    pd.testing.assert_frame_equal(t.drop(columns=["job", "arch"]), ref, check_dtype=False, check_categorical=False)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')"
    )
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.mark.requires("distributed")
def test_dask_identical(serial, jobs, tmp_path, dask_client):
    assert all(isinstance(p, int) for p in dask_client.run(os.getpid).values())  # worker processes, not threads
    out = sweep.run(jobs, tmp_path / "res", executor=dask_client.get_executor(), threads=1, progress=False)
    _check_outcome(out)
    _same_tables(serial[0], tmp_path / "res")
    # a rerun on the same client really runs the failed job again (no result cached by Dask)
    before = json.loads((tmp_path / "res" / "jobs" / "boom.json").read_text())["finished"]
    again = sweep.run(jobs, tmp_path / "res", executor=dask_client.get_executor(), progress=False)
    assert again.failed == ["boom"] and len(again.skipped) == 3
    assert json.loads((tmp_path / "res" / "jobs" / "boom.json").read_text())["finished"] > before


@pytest.mark.requires("ray")
def test_ray_identical(serial, jobs, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    ex = sweep.RayExecutor(init={"num_cpus": 2})  # sys.path (tests/ for sweep_factory) travels as PYTHONPATH
    try:
        out = sweep.run(jobs, tmp_path / "res", executor=ex, threads=1, progress=False)
    finally:
        ex.shutdown()
    _check_outcome(out)
    _same_tables(serial[0], tmp_path / "res")


def _kill_when_ready(hang: Path, root: Path, min_done: int, log: list) -> threading.Thread:
    """Wait until the hanging job has written its pid and ``min_done`` jobs are recorded, then
    remove the hang flag (its retry will finish) and SIGKILL the worker in the middle of the job."""

    def go():
        deadline = time.time() + 90
        while time.time() < deadline:
            done = len(list((root / "jobs").glob("*.json"))) if (root / "jobs").is_dir() else 0
            if (hang / "pid").exists() and done >= min_done:
                pid = int((hang / "pid").read_text())
                (hang / "hang").unlink()
                kept = {f.name: f.read_bytes() for f in (root / "jobs").glob("*.json")}
                os.kill(pid, signal.SIGKILL)
                log.append((pid, done, kept))
                return
            time.sleep(0.05)
        log.append(None)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th


def _kill_jobs(hang: Path):
    js = [
        Job(
            "victim",
            "sweep_factory:tiny_or_hang",
            model_kwargs={"hang_dir": str(hang)},
            inputs={"random": {"length": 10}},
        )
    ]
    js += [Job(f"t{i}", "sweep_factory:tiny", inputs={"random": {"length": 10, "seed": i}}) for i in range(6)]
    return js


def _assert_done_intact(root: Path, names):
    res = sweep.load(root)  # validates every checksum
    assert set(res.table["job"]) == set(names)
    for n in names:
        assert res.records[n]["status"] == "done"


def _sweep_with_kill(tmp_path, executor):
    """Run the kill-test jobs on ``executor`` while a thread SIGKILLs the worker running 'victim'
    once two records are written; returns (outcome, results dir, jobs, kill log)."""
    hang, root = tmp_path / "hang", tmp_path / "res"
    hang.mkdir()
    (hang / "hang").touch()
    js = _kill_jobs(hang)
    log: list = []
    th = _kill_when_ready(hang, root, 2, log)
    out = sweep.run(js, root, executor=executor, threads=1, progress=False)
    th.join(5)
    assert log and log[0] is not None, "the hanging job never started"
    return out, root, js, log


def test_killed_worker_process_pool(tmp_path, pool):
    """SIGKILL the pool worker running 'victim' once two jobs are recorded: every finished job is
    kept intact, the dead task (and whatever the broken pool had not run) is 'lost', and a rerun
    completes the sweep without redoing finished jobs."""
    out, root, js, log = _sweep_with_kill(tmp_path, pool)
    pid, done_at_kill, _ = log[0]
    print(
        f"\nprocess pool: SIGKILL to worker pid {pid} running 'victim' when {done_at_kill} records were written\n{out.table().to_string()}"
    )
    assert "victim" in out.lost and "BrokenProcessPool" in out.errors["victim"]
    assert len(out.finished) >= done_at_kill >= 2 and not out.failed
    assert sorted(out.finished + out.lost) == sorted(j.name for j in js)
    assert not (root / "jobs" / "victim.json").exists()
    _assert_done_intact(root, out.finished)
    again = sweep.run(js, root, progress=False)
    assert sorted(again.skipped) == sorted(out.finished) and sorted(again.finished) == sorted(out.lost)
    assert again.complete
    print(f"rerun (serial):\n{again.table().to_string()}")
    _assert_done_intact(root, [j.name for j in js])


@pytest.mark.requires("distributed")
def test_killed_worker_dask(tmp_path):
    """SIGKILL the Dask worker process running 'victim' after it finished other jobs: the nanny
    restarts it, the scheduler reruns the task, the sweep completes in one run, and no finished
    job is lost or run again (the sweep holds no finished task's result in a worker's memory,
    which Dask would recompute when that worker dies)."""
    hang, root = tmp_path / "hang", tmp_path / "res"
    hang.mkdir()
    (hang / "hang").touch()
    js = _kill_jobs(hang)
    js = js[1:] + js[:1]  # the victim last: its worker has finished jobs when it is killed
    distributed = pytest.importorskip("distributed")
    # one worker process: every job finished before the kill was finished by the killed worker
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cl:
        with distributed.Client(cl) as client:
            log: list = []
            th = _kill_when_ready(hang, root, 2, log)
            out = sweep.run(js, root, executor=client.get_executor(), threads=1, progress=False)
            th.join(5)
    assert log and log[0] is not None, "the hanging job never started"
    pid, done_at_kill, kept = log[0]
    print(
        f"\ndask: SIGKILL to worker pid {pid} running 'victim' when {done_at_kill} records were written\n{out.table().to_string()}"
    )
    assert out.complete and sorted(out.finished) == sorted(j.name for j in js), out.table()
    rec = json.loads((root / "jobs" / "victim.json").read_text())
    assert rec["pid"] != pid  # finished by another (or the restarted) worker process
    by_victim = [n for n, b in kept.items() if json.loads(b)["pid"] == pid]
    assert len(by_victim) >= 2, kept.keys()  # the killed worker had finished jobs ...
    assert {n: (root / "jobs" / n).read_bytes() for n in kept} == kept  # ... and none was redone
    _assert_done_intact(root, [j.name for j in js])


def test_finished_futures_released(tmp_path):
    """_dispatch drops each future as soon as it is collected (an engine may keep a task's result
    alive, on a worker, for as long as its future lives)."""
    import gc
    import weakref

    refs: list = []

    class Done(cf.Executor):
        def submit(self, fn, spec, *args):
            f: cf.Future = cf.Future()
            f.set_result({"name": spec["name"], "status": "done", "seconds": 0.0, "error": None})
            refs.append(weakref.ref(f))
            return f

    alive: list = []

    def collect(name, status, err):
        gc.collect()
        alive.append(sum(r() is not None for r in refs))

    js = [Job(f"j{i}", "builtin") for i in range(4)]
    sweep._dispatch(Done(), js, tmp_path, None, collect)
    assert alive == [3, 2, 1, 0]


def test_task_run_again_keeps_a_done_job(small):
    """An engine that runs a finished job's task again (a retry, a recomputed lost result) finds
    its record and returns at once: nothing is analysed or rewritten."""
    js, root = small
    rec = root / "jobs" / "j0.json"
    before, mtime = rec.read_bytes(), rec.stat().st_mtime_ns
    st = sweep._execute(js[0].to_dict(), str(root), None, "x")
    assert st["status"] == "done" and st["seconds"] == json.loads(before)["seconds"]
    assert rec.read_bytes() == before and rec.stat().st_mtime_ns == mtime
    other = Job("j0", "sweep_factory:tiny", inputs={"random": {"length": 9, "seed": 0}})  # same name, new spec
    assert sweep._execute(other.to_dict(), str(root), None, "y")["status"] == "done"
    assert json.loads(rec.read_text())["fingerprint"] == other.fingerprint


def test_killed_serial_sweep_cli(tmp_path, capsys):
    """``ess sweep`` running serially is SIGKILLed in the middle of a job (the driver is the
    worker): the jobs it finished are kept, and the same command completes the sweep."""
    import subprocess

    from ess.cli import main

    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "hang").touch()
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[jobs]]\nname = "t0"\nmodel = "sweep_factory:tiny"\ninputs = { random = { length = 8 } }\n'
        '[[jobs]]\nname = "t1"\nmodel = "sweep_factory:tiny"\ninputs = { random = { length = 9 } }\n'
        f'[[jobs]]\nname = "victim"\nmodel = "sweep_factory:tiny_or_hang"\nmodel_kwargs = {{ hang_dir = "{hang}" }}\n'
        "inputs = { random = { length = 8 } }\n"
        '[[jobs]]\nname = "after"\nmodel = "sweep_factory:tiny"\ninputs = [1, 2, 3, 4]\n'
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(ess.__file__).parent.parent), str(Path(__file__).parent)])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ess.cli", "sweep", str(cfg), "--no-progress", "--no-report", "-o", str(tmp_path / "r")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not (hang / "pid").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (hang / "pid").exists(), "the sweep never reached the hanging job"
        assert int((hang / "pid").read_text()) == proc.pid
        (hang / "hang").unlink()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    # jobs run in file order: t0 and t1 were finished when the process died in "victim"
    res = sweep.load(tmp_path / "r")
    assert sorted(res.table["job"].unique()) == ["t0", "t1"] and sorted(res.records) == ["t0", "t1"]
    assert main(["sweep", str(cfg), "--no-progress", "--no-report", "-o", str(tmp_path / "r")]) == 0
    assert "2 finished, 2 skipped (done before), 0 failed, 0 lost" in capsys.readouterr().out
    assert sorted(sweep.load(tmp_path / "r").table["job"].unique()) == ["after", "t0", "t1", "victim"]


# ------------------------------------------------------------------------ the results directory
@pytest.fixture()
def small(tmp_path):
    js = [Job(f"j{i}", "sweep_factory:tiny", inputs={"random": {"length": 8, "seed": i}}) for i in range(2)]
    root = tmp_path / "res"
    assert sweep.run(js, root, progress=False).complete
    return js, root


def test_foreign_files_refused(small, tmp_path):
    js, root = small
    for rel in (
        "notes.txt",
        "table/job=j0/part-1.parquet",
        "table/stray.parquet",
        "jobs/readme.md",
        "summary/job=j0/.DS_Store",
    ):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not ours")
        with pytest.raises(SweepResultsError, match="did not write") as e:
            sweep.load(root)
        assert rel.split("/")[-1] in str(e.value)
        with pytest.raises(SweepResultsError, match="did not write"):
            sweep.run(js, root, progress=False)
        p.unlink()
    sweep.load(root)
    # a directory that is not a sweep is never written into
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n")
    with pytest.raises(SweepResultsError, match="not an ess sweep"):
        sweep.run(js, other, progress=False)
    assert sorted(os.listdir(other)) == ["data.csv"]
    with pytest.raises(SweepResultsError, match="not an ess sweep"):
        sweep.load(other)
    # a sweep directory of another format version
    (root / "ess-sweep.json").write_text(json.dumps({"format": "ess.sweep", "version": 99}))
    with pytest.raises(SweepResultsError, match="version 99"):
        sweep.load(root)


def test_corrupt_files_refused(small):
    js, root = small
    part = root / "table" / "job=j1" / "part-0.parquet"
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(SweepResultsError, match="corrupt or was altered") as e:
        sweep.load(root)
    assert "j1" in str(e.value)
    with pytest.raises(SweepResultsError, match="corrupt"):
        sweep.run(js, root, progress=False)
    part.write_bytes(good)
    rec = root / "jobs" / "j0.json"
    good_rec = rec.read_text()
    rec.write_text(good_rec[:40])
    with pytest.raises(SweepResultsError, match="j0.json.*corrupt"):
        sweep.load(root)
    rec.write_text(good_rec)
    (root / "summary" / "job=j0" / "part-0.parquet").unlink()
    with pytest.raises(SweepResultsError, match="missing"):
        sweep.load(root)


def test_interrupted_writes_and_changed_specs(small):
    js, root = small
    # leftovers of a task killed while writing: a hidden temporary file and a job's Parquet files
    # without its record (the record is written last); neither is ever loaded, the rerun redoes the job
    (root / "table" / "job=j0" / ".part-0.parquet.0123abcd4567.tmp").write_bytes(b"partial")
    (root / "jobs" / "j1.json").unlink()
    res = sweep.load(root)
    assert set(res.table["job"]) == {"j0"} and res.incomplete == ["j1"] and list(res.jobs["job"]) == ["j0"]
    out = sweep.run(js, root, progress=False)
    assert out.skipped == ["j0"] and out.finished == ["j1"]
    res = sweep.load(root)
    assert set(res.table["job"]) == {"j0", "j1"} and res.incomplete == []
    # the same name with another spec is refused, not mixed
    changed = [js[0], Job("j1", "sweep_factory:tiny", inputs={"random": {"length": 9, "seed": 1}})]
    with pytest.raises(SweepResultsError, match=r"different spec"):
        sweep.run(changed, root, progress=False)


def test_atomic_writes_show_no_partial_file(tmp_path, monkeypatch):
    """A reader polling a results file while it is rewritten sees the old or the new contents,
    never a part; a write that fails half way leaves the old file whole and no temporary behind."""
    target = tmp_path / "jobs" / "a.json"
    a, b = b"a" * (1 << 21), b"b" * (1 << 21)
    sweep._atomic_write(target, a)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            data = target.read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(20):
            sweep._atomic_write(target, b if i % 2 == 0 else a)
    finally:
        stop.set()
        th.join()
    assert seen <= {b"aa" + str(len(a)).encode(), b"bb" + str(len(b)).encode()} and seen
    real_write = os.write
    calls: list = []

    def write_then_fail(fd, data):  # the disk fills after the first chunk
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:1000]))
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", write_then_fail)
        with pytest.raises(OSError, match="No space"):
            sweep._atomic_write(target, b)
    assert len(calls) == 2 and target.read_bytes() == a and os.listdir(target.parent) == ["a.json"]


def test_builtin_is_the_mqar_model(tmp_path):
    """``"builtin"`` is the MQAR model (:func:`ess.models.load_builtin`, its shipped inputs, SEP as
    marker), not the delimiters model that ``ess analyze`` runs by default; the delimiters model
    runs through its factory (``inputs`` as ``{"factory", "kwargs"}`` in either key order)."""
    from ess.models import (
        DELIM,
        SEP,
        builtin_delimiters_inputs,
        builtin_inputs,
        load_builtin,
        load_builtin_delimiters,
    )

    js = [
        Job("mqar", "builtin", inputs={"builtin": 1}),
        Job(
            "delimiters",
            "ess.models:load_builtin_delimiters",
            inputs={"kwargs": {"n": 1}, "factory": "ess.models:builtin_delimiters_inputs"},
            options={"markers": [DELIM]},
        ),
    ]
    out = sweep.run(js, tmp_path / "res", progress=False)
    assert out.finished == ["mqar", "delimiters"], out.errors
    t = sweep.load(tmp_path / "res").table
    for name, model, x, marker in (
        ("mqar", load_builtin(), builtin_inputs(1), SEP),
        ("delimiters", load_builtin_delimiters(), builtin_delimiters_inputs(1), DELIM),
    ):
        ref = ess.analyze(model, x, markers=[marker], progress=False).table
        mine = t[t["job"] == name].drop(columns=["job"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, ref.reset_index(drop=True), check_dtype=False, check_categorical=False)
    assert t.loc[t["job"] == "mqar", "position"].max() == builtin_inputs(1).shape[1] - 1
    assert t.loc[t["job"] == "delimiters", "position"].max() == builtin_delimiters_inputs(1).shape[1] - 1


def test_job_validation(tmp_path):
    with pytest.raises(ess.InvalidArgumentError, match="name"):
        Job("../x", "builtin")
    with pytest.raises(ess.InvalidArgumentError, match="importable"):
        Job("a", lambda: None)
    with pytest.raises(ess.InvalidArgumentError, match="unknown option"):
        Job("a", "builtin", options={"progress": True})
    with pytest.raises(ess.InvalidArgumentError, match="neither"):
        Job("a", "no-such-dir")
    with pytest.raises(ess.InvalidArgumentError, match="shadow"):
        Job("a", "builtin", labels={"layer": 1})
    with pytest.raises(ess.InvalidArgumentError, match="shadow"):
        Job("a", "builtin", labels={"fill": 1})  # a summary column
    with pytest.raises(ess.InvalidArgumentError, match="duplicate"):
        sweep.run([Job("a", "builtin"), Job("a", "builtin")], tmp_path / "dup", progress=False)
    with pytest.raises(ess.InvalidArgumentError, match="executor"):
        sweep.run([Job("a", "builtin")], tmp_path / "ex", executor="threads", progress=False)
    assert not (tmp_path / "dup").exists() and not (tmp_path / "ex").exists()  # nothing created
    import sweep_factory

    j = Job("a", sweep_factory.tiny)  # a module-level function is stored by name, never pickled
    assert j.model == "sweep_factory:tiny" and len(j.fingerprint) == 64
    assert Job.from_dict(j.to_dict()) == j
    g = sweep.grid({"name": "x", "model": "builtin"}, seed=[0, 1])
    assert [x.name for x in g] == ["x-seed_0", "x-seed_1"] and g[1].labels == {"seed": 1}


def test_gpu_jobs_ask_for_a_gpu(tmp_path):
    """An executor with ``submit_with`` (RayExecutor's interface) gets each job's resources."""
    asked = {}

    class Recorder(cf.Executor):
        def submit_with(self, resources, fn, spec, *args):
            asked[spec["name"]] = dict(resources)
            f: cf.Future = cf.Future()
            f.set_exception(RuntimeError("not run"))
            return f

    js = [Job("gpu", "builtin", device="cuda"), Job("cpu", "builtin"), Job("half", "builtin", gpus=0.5)]
    out = sweep.run(js, tmp_path / "res", executor=Recorder(), progress=False)
    assert asked == {"gpu": {"num_gpus": 1}, "cpu": {}, "half": {"num_gpus": 0.5}}
    assert sorted(out.lost) == ["cpu", "gpu", "half"] and not out.complete


# ---------------------------------------------------------------------------- report and CLI
def test_comparison_report(serial, tmp_path):
    from matplotlib.figure import Figure

    res = sweep.load(serial[0])
    fig = res.plot("layers")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # one bar series per finished job
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mqar-0", "mqar-1", "tiny"]
    fig = res.plot("curves", measure="entropy")
    panels = [a for a in fig.axes if a.get_visible()]
    assert len(panels) == 4  # the built-in's 4 layers (tiny's 2 layers have the same names)
    by_title = {a.get_title(): a for a in panels}
    assert len(by_title["blocks.0.mixer (conv)"].lines) == 3 + 1  # mqar-0, mqar-1, tiny overlaid + the bound
    assert len(by_title["blocks.3.mixer (softmax_attention)"].lines) == 2 + 1
    with pytest.raises(ess.InvalidArgumentError, match="kind"):
        res.plot("pie")
    d = res.save_report(tmp_path / "rep")
    assert {"report.html", "layers.png", "curves.png", "table.parquet", "summary.parquet", "jobs.csv"} <= set(
        os.listdir(d)
    )
    html = (d / "report.html").read_text()
    assert "fig-layers" in html and "fig-curves" in html and "factory exploded" in html
    assert len(pd.read_parquet(d / "table.parquet")) == len(res.table)


def test_cli_sweep(tmp_path, capsys):
    from ess.cli import main

    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        """
results = "out"
threads = 1

[defaults]
options = { method = "tolerance" }

[[grid]]
name = "mqar-{seed}"
model = "builtin"
inputs = { mqar = { n = 1, seed = "{seed}" } }
vary = { seed = [0, 1] }

[[jobs]]
name = "broken"
model = "sweep_factory:tiny"
inputs = [1, 2, 3]
options = { positions = [7] }
"""
    )
    assert main(["sweep", str(cfg), "--no-progress"]) == 1  # one job failed
    text = capsys.readouterr().out
    assert "2 finished, 0 skipped (done before), 1 failed" in text and "OutOfRangeError" in text
    assert "combined report written" in text and (tmp_path / "out" / "report" / "report.html").exists()
    res = sweep.load(tmp_path / "out")
    assert set(res.table["job"]) == {"mqar-0", "mqar-1"} and res.table["ess_entropy"].isna().all()
    assert main(["sweep", str(cfg), "--no-progress", "--no-retry-failed", "--no-report"]) == 1
    assert "0 finished, 2 skipped (done before), 1 failed" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[[jobs]]\nname = 'a'\nmodel = 'builtin'\nbogus = 1\n")
    assert main(["sweep", str(bad)]) == 2
    assert "bogus" in capsys.readouterr().err
    bad.write_text("jobs = [")
    assert main(["sweep", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


@pytest.mark.requires("tqdm")
def test_cli_sweep_progress_bar(tmp_path, capsys):
    """``ess sweep`` shows a progress bar over jobs (tqdm, on stderr) unless --no-progress."""
    from ess.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[grid]]\nname = "t{seed}"\nmodel = "sweep_factory:tiny"\ninputs = { random = { length = 6 } }\n'
        "vary = { seed = [0, 1, 2] }\n"
    )
    assert main(["sweep", str(cfg), "--no-report", "-o", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "ess.sweep" in cap.err and "3/3" in cap.err and "done=3" in cap.err
    assert "3 finished, 0 skipped (done before), 0 failed, 0 lost" in cap.out
    assert main(["sweep", str(cfg), "--no-report", "--no-progress", "-o", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "ess.sweep" not in cap.err and "0 finished, 3 skipped (done before)" in cap.out


@pytest.mark.requires("distributed")
def test_cli_sweep_on_dask(tmp_path, capsys, dask_client):
    """``ess sweep --executor dask --scheduler ADDRESS`` joins a running cluster."""
    from ess.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[grid]]\nname = "t{seed}"\nmodel = "sweep_factory:tiny"\ninputs = { random = { length = 8 } }\n'
        "vary = { seed = [0, 1, 2] }\n"
    )
    code = main(
        [
            "sweep",
            str(cfg),
            "--executor",
            "dask",
            "--scheduler",
            dask_client.scheduler.address,
            "--threads",
            "1",
            "--no-progress",
            "--no-report",
            "-o",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    assert "ess sweep (dask)" in capsys.readouterr().out
    assert sorted(sweep.load(tmp_path / "r").table["job"].unique()) == ["t0", "t1", "t2"]


@pytest.mark.requires("distributed")
def test_pending_and_no_cluster_when_all_done(tmp_path, capsys, monkeypatch):
    """``sweep.pending`` lists what a run would do, writing nothing; ``ess sweep -e dask|ray`` on a
    finished results directory starts no cluster."""
    from ess.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[grid]]\nname = "t{seed}"\nmodel = "sweep_factory:tiny"\ninputs = { random = { length = 6 } }\n'
        "vary = { seed = [0, 1] }\n"
    )
    jobs = sweep.load_config(cfg)["jobs"]
    res = tmp_path / "r"
    assert sweep.pending(jobs, res) == ["t0", "t1"] and not res.exists()
    res.mkdir()
    assert sweep.pending(jobs, res) == ["t0", "t1"] and not any(res.iterdir())
    assert main(["sweep", str(cfg), "--no-report", "--no-progress", "-o", str(res)]) == 0
    capsys.readouterr()
    assert sweep.pending(jobs, res) == []
    (res / "jobs" / "t1.json").unlink()  # a lost job is pending again
    assert sweep.pending(jobs, res) == ["t1"]
    assert main(["sweep", str(cfg), "--no-report", "--no-progress", "-o", str(res)]) == 0
    capsys.readouterr()

    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started with nothing to do")

    monkeypatch.setattr(sweep, "RayExecutor", no_cluster)
    for kind in ("ray", "dask"):
        if kind == "dask":
            import dask.distributed as dd

            monkeypatch.setattr(dd, "LocalCluster", no_cluster)
        assert main(["sweep", str(cfg), "--no-report", "--no-progress", "-e", kind, "-o", str(res)]) == 0
        assert "0 finished, 2 skipped (done before)" in capsys.readouterr().out
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    with pytest.raises(sweep.SweepResultsError):
        sweep.pending(jobs, foreign)


def test_lost_task_whose_record_was_written_counts_as_finished(tmp_path):
    """A broken pool can fail a future whose job had already written its record; the outcome
    follows the disk (finished, skipped by the rerun), never 'lost' for a job that is done."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class RunsThenBreaks:
        def submit(self, fn, *args):
            fn(*args)  # the job really runs and writes its record
            f: Future = Future()
            f.set_exception(BrokenProcessPool("a worker died"))
            return f

    js = [Job(f"t{i}", "sweep_factory:tiny", inputs={"random": {"length": 6, "seed": i}}) for i in range(2)]
    out = sweep.run(js, tmp_path / "r", executor=RunsThenBreaks(), progress=False)
    assert out.finished == ["t0", "t1"] and not out.lost and out.complete and not out.errors
    again = sweep.run(js, tmp_path / "r", progress=False)
    assert again.skipped == ["t0", "t1"] and not again.finished
