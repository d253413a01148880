"""The ``ess`` command line.

``ess analyze`` (the main job) analyses a model and writes a report directory; with no
arguments it analyses the built-in hybrid model on shipped MQAR inputs.
``ess sweep CONFIG`` runs the jobs of a TOML file (:mod:`ess.sweep`), resumably.
``ess demo`` prints ESS summaries of the built-in example operators.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    from . import effective_state_size
    from .examples import examples

    L = args.length
    print(f"ESS of built-in example operators, L = {L} (tolerance: numerical rank; entropy: effective rank)")
    header = f"{'operator':32s} {'TSS':>5s} {'mean tol-ESS':>13s} {'max tol-ESS':>12s} {'mean ent-ESS':>13s} {'utilisation':>12s}"
    print(header)
    print("-" * len(header))
    for name, (T, tss) in examples(L).items():
        c = effective_state_size(T, method="both")
        util = float(np.mean(c.tolerance)) / tss
        print(
            f"{name:32s} {tss:5d} {np.mean(c.tolerance):13.2f} {np.max(c.tolerance):12.0f} "
            f"{np.mean(c.entropy):13.2f} {util:12.3f}"
        )
    print("Positions near the end are bounded by L - t (boundary effect); the means include them.")
    return 0


def _load_factory(spec: str):
    import importlib

    if ":" not in spec:
        raise SystemExit(f"ess analyze: --model expects module:factory (e.g. mypkg.models:build), got {spec!r}")
    mod, fn = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"ess analyze: cannot load {spec!r}: {e}") from None
    out = obj() if callable(obj) and not hasattr(obj, "named_modules") else obj
    return out


def _parse_tokens(text: str) -> list:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(
            f"ess analyze: --tokens expects integers separated by commas or spaces, got {text!r}"
        ) from None


def _parse_positions(text: Optional[str], L: int):
    if text is None:
        return None
    if ":" in text:
        return np.arange(L)[_positions_slice(text)]
    return np.array(_parse_tokens(text), dtype=np.int64)


def _positions_slice(text: str) -> slice:
    parts = text.split(":")
    try:
        if len(parts) > 3:
            raise ValueError
        sl = slice(*[int(p) if p.strip() else None for p in parts])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'start:stop:step' with integers (parts may be empty) or a list of integers, got {text!r}"
        ) from None
    if sl.step is not None and sl.step <= 0:
        raise argparse.ArgumentTypeError(f"the step of {text!r} must be a positive integer (split points increase)")
    return sl


def _positions_arg(text: str) -> str:
    """argparse type of --positions: checked at parse time, resolved once L is known."""
    if ":" in text:
        _positions_slice(text)
    else:
        try:
            [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers separated by commas or spaces, got {text!r}") from None
    return text


def _int_in(lo: int, hi: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {'inf' if hi is None else hi}], got {v}")
        return v

    return parse


def _device_arg(text: str) -> str:
    try:
        import torch

        torch.device(text)
    except ImportError:
        return text
    except (RuntimeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({str(e).splitlines()[0][:120]})") from None
    return text


def _check_out(path: str) -> None:
    """Fail before the analysis, not after it: the report directory must be creatable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"ess analyze: --out {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"ess analyze: cannot create the report directory --out {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise SystemExit(f"ess analyze: the report directory --out {path!r} is not writable")


def _vocab_size(model) -> Optional[int]:
    for attr in ("cfg", "config"):
        c = getattr(model, attr, None)
        v = getattr(c, "vocab_size", None)
        if isinstance(v, int):
            return v
    return None


@dataclass
class _Source:
    """The model an ``ess analyze`` run studies, its inputs (None: random tokens are drawn) and the labels the
    report shows: the page's title, marker token ids, per-token text and the tolerance threshold ``rtol``."""

    model: Any
    inputs: Any = None
    title: str = ""
    markers: Optional[list] = None
    tokens_text: Optional[list] = None
    hf_tokenizer: Any = None
    rtol: Optional[float] = None


def _analyze(args: argparse.Namespace) -> int:
    """``ess analyze``: load the model and its inputs, check them, run :func:`ess.analyze`, save the report."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("ess analyze needs PyTorch and pandas: pip install 'ess[analyze]'", file=sys.stderr)
        return 2
    _check_out(args.out)
    text_content = _read_text(args.text) if args.text else None
    src = _load_source(args, text_content)
    if src is None:
        return 2
    _resolve_inputs(args, src)
    _check_vocab(src)
    if args.device:
        src.model = src.model.to(args.device)
    return _run_analysis(args, src)


def _read_text(path: str) -> str:
    """The contents of the ``--text`` file."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(f"ess analyze: cannot read --text {path!r}: {e.strerror}") from None


def _load_source(args: argparse.Namespace, text_content: Optional[str]) -> Optional[_Source]:
    """The model named by ``--hf``, ``--model`` or ``--builtin``; None when a needed package is missing
    (the message is printed)."""
    if args.model and args.hf:
        raise SystemExit("ess analyze: give --model or --hf, not both")
    if args.hf and not os.path.isdir(args.hf):
        raise SystemExit(
            f"ess analyze: --hf {args.hf!r}: no such directory (a local directory written by save_pretrained)"
        )
    if args.hf:
        return _load_hf(args, text_content)
    if args.model:
        return _load_model(args)
    if args.builtin == "mqar":
        return _load_builtin_mqar(args)
    return _load_builtin_delimiters(args)


def _load_hf(args: argparse.Namespace, text_content: Optional[str]) -> Optional[_Source]:
    """A causal language model (and its tokenizer, if any) from the local directory ``--hf``."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        print("ess analyze --hf needs transformers: pip install transformers", file=sys.stderr)
        return None
    try:  # any causal LM saved with save_pretrained (config.json + weights), never a download; the
        # reference modules, not hub kernels (transformers >= 5.25 swaps some layers for them by default)
        model = AutoModelForCausalLM.from_pretrained(args.hf, local_files_only=True, use_kernels=False)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"ess analyze: cannot load a causal language model from {args.hf!r}: {e}") from None
    tok = None
    try:
        tok = AutoTokenizer.from_pretrained(args.hf, local_files_only=True)
    except Exception:  # a model directory without tokenizer files
        tok = None
    src = _Source(model=model, hf_tokenizer=tok, rtol=args.rtol)
    eos = getattr(model.config, "eos_token_id", None)
    src.markers = [eos] if isinstance(eos, int) else (list(eos) if eos else None)
    if args.text:
        if tok is None:
            raise SystemExit(f"ess analyze: --text needs a tokenizer in {args.hf}; pass --tokens instead")
        ids = tok(text_content, return_tensors="pt")["input_ids"][:, : args.length]
        src.inputs = ids
    src.title = f"Hugging Face model {args.hf}"
    return src


def _load_model(args: argparse.Namespace) -> _Source:
    """The model (or ``(model, inputs)`` tuple) returned by the ``--model module:factory``."""
    obj = _load_factory(args.model)
    model, inputs = obj if isinstance(obj, tuple) else (obj, None)
    src = _Source(model=model, inputs=inputs, title=f"model {args.model}", rtol=args.rtol)
    if args.text:
        raise SystemExit("ess analyze: --text needs a tokenizer (use --hf); with --model pass --tokens")
    return src


def _load_builtin_mqar(args: argparse.Namespace) -> _Source:
    """The built-in MQAR model on its shipped inputs."""
    from .models import SEP, builtin_info, builtin_inputs, load_builtin, token_names

    model = load_builtin(args.device or "cpu")
    info = builtin_info()
    inputs = builtin_inputs(args.samples)
    tokens_text = token_names(inputs[0])
    title = f"built-in hybrid model (MQAR accuracy {info['accuracy']:.3f}), shipped MQAR inputs"
    return _Source(model=model, inputs=inputs, title=title, markers=[SEP], tokens_text=tokens_text, rtol=args.rtol)


def _load_builtin_delimiters(args: argparse.Namespace) -> _Source:
    """The built-in 'delimiters' model on its shipped inputs (tolerance rtol 1e-2 unless a threshold is given)."""
    from .models import (
        DELIM,
        builtin_delimiters_inputs,
        builtin_delimiters_info,
        delimiters_token_names,
        load_builtin_delimiters,
    )

    model = load_builtin_delimiters(args.device or "cpu")
    info = builtin_delimiters_info()
    inputs = builtin_delimiters_inputs(args.samples)
    tokens_text = delimiters_token_names(inputs[0], info["task"]["n_keys"])
    rtol = args.rtol
    if rtol is None and args.atol is None:
        # at the default threshold (float32 machine epsilon) tolerance-ESS counts every nonzero
        # singular value and sits on the rank bound; 1% of the largest shows memory use
        rtol = 1e-2
    thresholds = [f"{k}={v:g}" for k, v in (("atol", args.atol), ("rtol", rtol)) if v is not None]
    title = (
        f"built-in hybrid model 'delimiters' (multi-segment recall accuracy {info['accuracy']:.3f}), "
        f"shipped inputs, delimiters at {info['delimiter_positions']}, tolerance {', '.join(thresholds)}"
    )
    return _Source(model=model, inputs=inputs, title=title, markers=[DELIM], tokens_text=tokens_text, rtol=rtol)


def _resolve_inputs(args: argparse.Namespace, src: _Source) -> None:
    """Settle the token ids: ``--tokens`` if given, else the model's own, else seeded random tokens; label
    them with the Hugging Face tokenizer when there is one."""
    import torch

    if not (args.model or args.hf) and (args.tokens or args.text):
        raise SystemExit(
            "ess analyze: --tokens/--text need --model or --hf (the built-in model runs on its shipped inputs)"
        )
    if args.tokens:
        src.inputs = torch.tensor([_parse_tokens(args.tokens)], dtype=torch.long)
    if src.inputs is None:
        V = _vocab_size(src.model)
        if V is None:
            raise SystemExit("ess analyze: no inputs; pass --tokens (or --text with --hf)")
        g = torch.Generator().manual_seed(0)
        src.inputs = torch.randint(0, V, (1, args.length), generator=g)
        src.title += f", random tokens (L = {args.length})"
    if src.hf_tokenizer is not None and src.tokens_text is None:
        try:  # the decoded tokens of the first sequence, shown in the report
            ids = [int(i) for i in src.inputs[0]]
            src.tokens_text = [str(t) for t in src.hf_tokenizer.convert_ids_to_tokens(ids)]
        except Exception:  # noqa: BLE001 - ids outside the tokenizer's vocabulary: no token labels
            src.tokens_text = None


def _check_vocab(src: _Source) -> None:
    """Every token id must lie in the model's vocabulary (when the model states its size)."""
    import torch

    V = _vocab_size(src.model)
    inputs = src.inputs
    if V is not None and isinstance(inputs, torch.Tensor) and inputs.numel():
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= V:
            raise SystemExit(
                f"ess analyze: token id {hi if hi >= V else lo} is outside the model's vocabulary [0, {V})"
            )


def _run_analysis(args: argparse.Namespace, src: _Source) -> int:
    """Run :func:`ess.analyze`, write the report directory ``--out`` and print the summary table."""
    from . import analyze
    from .errors import EssError

    inputs = src.inputs
    L = int(inputs.shape[-1]) if hasattr(inputs, "shape") else args.length
    try:
        report = analyze(
            src.model,
            inputs,
            layers=args.layers,
            positions=_parse_positions(args.positions, L),
            method=args.method,
            rtol=src.rtol,
            atol=args.atol,
            progress=not args.no_progress,
            tokens=src.tokens_text,
            markers=src.markers,
            memory_budget=args.memory_budget,
        )
    except EssError as e:
        print(f"ess analyze: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    report.meta["title"] = src.title  # what the page's heading says the run was
    out = report.save(args.out, figure_formats=args.figures)
    _print_summary(report, src.title)
    print(f"report written to {out}/ (report.html, ess.csv, summary.json, ...)")
    return 0


def _figure_formats_arg(text: str) -> tuple:
    fmts = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("png", "svg", "pdf", "eps")]
    if not fmts or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of png, svg, pdf, eps; got {text!r}")
    return fmts


def _print_summary(report, title: str) -> None:
    s = report.summary
    cols = [
        ("layer", "layer"),
        ("kind", "kind"),
        ("n_operators", "ops"),
        ("tss", "TSS"),
        ("avg_ess_tolerance", "avg tol-ESS"),
        ("avg_ess_entropy", "avg ent-ESS"),
        ("total_ess", "total ESS"),
        ("utilisation", "util"),
        ("fill", "fill"),
    ]

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    def flag(r):
        return "saturated" if r["saturated"] else ("collapsed" if r["collapsed"] else "")

    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for _, h in cols:
            t.add_column(h, justify="left" if h in ("layer", "kind") else "right")
        t.add_column("flag")
        for _, r in s.iterrows():
            t.add_row(*[fmt(r[c]) for c, _ in cols], flag(r))
        con = Console()
        if not con.is_terminal:
            con = Console(width=160)
        con.print(t)
        for name, typ in report.skipped:
            con.print(f"[yellow]skipped[/yellow] {name}: {typ}")
        for c in report.caveats:
            con.print(f"[dim]note: {c}[/dim]")
    except ImportError:
        print(title)
        print("  ".join(h for _, h in cols) + "  flag")
        for _, r in s.iterrows():
            print("  ".join(fmt(r[c]) for c, _ in cols) + "  " + flag(r))
        for name, typ in report.skipped:
            print(f"skipped {name}: {typ}")
        for c in report.caveats:
            print(f"note: {c}")


class _SweepSettings(NamedTuple):
    """Where and how ``ess sweep`` runs: each field from the command line, else the config file, else a default."""

    results: str
    kind: str
    workers: Optional[int]
    threads: Optional[int]
    scheduler: Optional[str]
    retry: bool


def _sweep(args: argparse.Namespace) -> int:
    """``ess sweep``: run the jobs of the config file not yet done, print the closing table, write the report."""
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print("ess sweep needs PyTorch, pandas and pyarrow: pip install 'ess[analyze]' pyarrow", file=sys.stderr)
        return 2
    from . import sweep
    from .errors import EssError

    try:
        cfg = sweep.load_config(args.config)
    except EssError as e:
        print(f"ess sweep: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    settings = _sweep_settings(args, cfg)
    if settings.kind not in ("serial", "processes", "dask", "ray"):
        print(f"ess sweep: executor: expected serial, processes, dask or ray, got {settings.kind!r}", file=sys.stderr)
        return 2
    out = _run_sweep(args, cfg, settings)
    if out is None:
        return 2
    _print_sweep(out, settings.kind)
    if not args.no_report and not _sweep_report(out):
        return 2
    return 0 if out.complete else 1


def _sweep_settings(args: argparse.Namespace, cfg: dict) -> _SweepSettings:
    """The command line's settings over the config file's (results default: CONFIG-results beside the file)."""
    from pathlib import Path

    results = (
        args.results
        or cfg["results"]
        or str(Path(args.config).absolute().with_name(Path(args.config).stem + "-results"))
    )
    kind = args.executor or cfg["executor"] or "serial"
    workers = args.workers or cfg["workers"]
    threads = args.threads or cfg["threads"]
    scheduler = args.scheduler or cfg["scheduler"]
    retry = cfg["retry_failed"] if args.retry_failed is None else args.retry_failed
    return _SweepSettings(results, kind, workers, threads, scheduler, retry)


def _run_sweep(args: argparse.Namespace, cfg: dict, s: _SweepSettings) -> Any:
    """Start the executor, run the pending jobs and shut the executor down; None (message printed) on failure."""
    from . import sweep
    from .errors import EssError

    cleanup: List[Callable[[], Any]] = []
    executor: object = None if s.kind == "serial" else s.kind
    try:
        if s.kind in ("dask", "ray") and not sweep.pending(cfg["jobs"], s.results, retry_failed=s.retry):
            executor = None  # every job is done: no cluster to start
        elif s.kind == "dask":
            executor = _dask_executor(s, cleanup)
            if executor is None:
                return None
        elif s.kind == "ray":
            init = {"address": s.scheduler} if s.scheduler else ({"num_cpus": s.workers} if s.workers else {})
            executor = sweep.RayExecutor(init=init)
            cleanup.append(executor.shutdown)
        return sweep.run(
            cfg["jobs"],
            s.results,
            executor=executor,
            max_workers=s.workers,
            retry_failed=s.retry,
            threads=s.threads,
            progress=not args.no_progress,
        )
    except EssError as e:
        print(f"ess sweep: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    finally:
        for fn in cleanup:
            fn()


def _dask_executor(s: _SweepSettings, cleanup: List[Callable[[], Any]]) -> Any:
    """An executor of a Dask client: on ``--scheduler``, else on a local cluster of ``--workers`` processes.
    Appends the closing calls to ``cleanup``; None (message printed) when dask.distributed is missing."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        print("ess sweep --executor dask needs dask.distributed: pip install 'dask[distributed]'", file=sys.stderr)
        return None
    if s.scheduler:
        client = Client(s.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=s.workers or None, threads_per_worker=1, processes=True, dashboard_address=None
        )
        cleanup.append(cluster.close)
        client = Client(cluster)
    cleanup.insert(0, client.close)
    return client.get_executor()


def _sweep_report(out) -> bool:
    """Write the combined report of a finished sweep to RESULTS/report; False (message printed) on failure."""
    from . import sweep
    from .errors import EssError

    try:
        res = sweep.load(out.results)
        if len(res.table):
            rep = res.save_report(out.results / "report")
            print(f"combined report written to {rep}/ (report.html, table.parquet, ...)")
    except EssError as e:
        print(f"ess sweep: report: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    return True


def _print_sweep(out, kind: str) -> None:
    t = out.table()
    counts = f"{len(out.finished)} finished, {len(out.skipped)} skipped (done before), {len(out.failed)} failed, {len(out.lost)} lost"
    title = f"ess sweep ({kind})"
    try:
        from rich.console import Console
        from rich.table import Table

        tab = Table(title=title)
        for h in ("job", "status", "seconds", "error"):
            tab.add_column(h, justify="right" if h == "seconds" else "left")
        style = {"finished": "green", "skipped (done)": "dim", "failed": "red", "lost (rerun)": "yellow"}
        for _, r in t.iterrows():
            sec = "" if r["seconds"] is None or r["seconds"] != r["seconds"] else f"{r['seconds']:.2f}"
            err = "" if r["error"] is None or r["error"] != r["error"] else str(r["error"])
            tab.add_row(str(r["job"]), f"[{style[r['status']]}]{r['status']}[/]", sec, err[:200])
        con = Console()
        if not con.is_terminal:
            con = Console(width=160)
        con.print(tab)
    except ImportError:  # pragma: no cover - rich is part of the analyze extra
        print(title)
        print(t.to_string(index=False))
    print(f"{counts} in {out.wall_seconds:.1f} s; results in {out.results}")
    if out.lost:
        print("lost jobs died with their worker; run the same command again to redo them (finished jobs are kept)")
    if out.failed:
        print(f"failed jobs: errors and tracebacks in {out.results}/jobs/<job>.json; the next run retries them")


def _reproduce(args: argparse.Namespace) -> int:
    from . import reproduce

    names = list(reproduce.EXPERIMENTS) if args.name == "all" else [args.name]
    for name in names:
        out = args.out if len(names) == 1 else os.path.join(args.out, name)
        res = reproduce.run(name, quick=args.quick, out=out, seed=args.seed)
        print(res.table_markdown())
        print(f"wrote {', '.join(res.files)} to {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``ess`` command: parse ``argv`` (default ``sys.argv[1:]``), run the subcommand (``demo``,
    ``analyze``, ``sweep``, ``reproduce``; ``demo`` when none is given) and return its exit status
    (0 on success; 2 with one line on stderr for bad input, argparse's usage message for bad arguments;
    ``ess sweep`` returns 1 when a job failed or was lost).

    Examples
    --------
    >>> from ess.cli import main
    >>> main(["demo", "--length", "16"])
    ESS of built-in example operators, L = 16 (tolerance: numerical rank; entropy: effective rank)
    operator                           TSS  mean tol-ESS  max tol-ESS  mean ent-ESS  utilisation
    --------------------------------------------------------------------------------------------
    softmax attention (d=64)            16          4.00            8          3.20        0.250
    selective SSM channel (N=16)        16          4.00            8          3.17        0.250
    causal convolution (k=4)             3          2.44            3          1.77        0.812
    Positions near the end are bounded by L - t (boundary effect); the means include them.
    0
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        args = parser.parse_args(["demo", *(argv or [])])
    return _run(args)


def _build_parser() -> argparse.ArgumentParser:
    """The ``ess`` argument parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(prog="ess", description="Effective state size of sequence models.")
    sub = parser.add_subparsers(dest="command")
    _add_demo_parser(sub)
    _add_analyze_parser(sub)
    _add_sweep_parser(sub)
    _add_reproduce_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    """``ess demo [--length L]``."""
    p_demo = sub.add_parser("demo", help="ESS of built-in example operators (softmax attention, SSM, convolution)")
    p_demo.add_argument("--length", "-L", type=_int_in(1, 1 << 16), default=256, help="sequence length (default 256)")
    p_demo.set_defaults(func=_demo)


def _add_analyze_parser(sub: Any) -> None:
    """``ess analyze``: the options choosing the model and its inputs, then those of the analysis and report."""
    p_an = sub.add_parser(
        "analyze",
        help="ESS of every sequence-mixing layer of a model; writes a report directory",
        description="With no arguments: the built-in hybrid model 'delimiters' (short conv, selective SSM, gated linear "
        "attention, softmax attention) trained on three-segment recall with delimiters, on its shipped inputs "
        "(--builtin mqar: the MQAR model).",
    )
    _add_analyze_inputs(p_an)
    _add_analyze_options(p_an)
    p_an.set_defaults(func=_analyze)


def _add_analyze_inputs(p_an: argparse.ArgumentParser) -> None:
    """The ``ess analyze`` options that choose the model and its token inputs."""
    p_an.add_argument("--model", help="module:factory returning a torch.nn.Module (or a (model, inputs) tuple)")
    p_an.add_argument("--hf", metavar="PATH", help="local Hugging Face model directory (no downloads)")
    p_an.add_argument("--text", metavar="FILE", help="text file to tokenise (with --hf)")
    p_an.add_argument("--tokens", help="token ids, comma or space separated")
    p_an.add_argument(
        "--length", "-L", type=_int_in(1), default=128, help="truncate --text / length of random tokens (default 128)"
    )
    p_an.add_argument(
        "--builtin",
        choices=["delimiters", "mqar"],
        default="delimiters",
        help="without --model/--hf: which built-in model runs on its shipped inputs (default delimiters: "
        "three-segment recall, L = 51; mqar: the MQAR model, L = 34)",
    )
    p_an.add_argument(
        "--samples", type=_int_in(1, 8), default=2, help="built-in model: number of shipped sequences (1-8, default 2)"
    )


def _add_analyze_options(p_an: argparse.ArgumentParser) -> None:
    """The ``ess analyze`` options of the analysis (layers, split points, thresholds, device) and of the report."""
    p_an.add_argument("--layers", nargs="+", help="module names or fnmatch patterns to analyse (default all supported)")
    p_an.add_argument("--positions", type=_positions_arg, help="split points: 'start:stop:step' or a list of integers")
    p_an.add_argument("--method", choices=["both", "tolerance", "entropy"], default="both")
    p_an.add_argument(
        "--rtol",
        type=float,
        help="relative threshold of tolerance-ESS (default: 1e-2 for the delimiters built-in, "
        "else max(t, L - t) * eps * sigma_max as in numpy.linalg.matrix_rank)",
    )
    p_an.add_argument("--atol", type=float, help="absolute threshold of tolerance-ESS")
    p_an.add_argument("--device", type=_device_arg, help="move the model to this torch device (e.g. cuda)")
    p_an.add_argument("--memory-budget", help="bytes per layer and sequence (e.g. 2G; default 4G)")
    p_an.add_argument("--out", "-o", default="ess-report", help="report directory (default ./ess-report)")
    p_an.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_an.add_argument(
        "--figures",
        type=_figure_formats_arg,
        default=("png",),
        metavar="FORMATS",
        help="formats of the figure files besides report.html, comma separated: png, svg, pdf, eps (default png)",
    )


def _add_sweep_parser(sub: Any) -> None:
    """``ess sweep CONFIG``: results directory, executor and its workers, retries, report and progress bar."""
    p_sw = sub.add_parser(
        "sweep",
        help="run the analyze jobs of a TOML file into a results directory (resumable; serial, processes, Dask or Ray)",
        description="Runs every job of CONFIG not yet done (see ess.sweep.load_config for the file format), shows a "
        "progress bar over jobs and a closing table, and writes a combined report to RESULTS/report. A rerun skips done "
        "jobs and redoes missing or failed ones. Exit status: 0 all jobs done, 1 some failed or lost, 2 bad config or results.",
    )
    p_sw.add_argument("config", help="TOML file of [[jobs]] and [[grid]] tables")
    p_sw.add_argument(
        "--results", "-o", help="results directory (default: the file's 'results', else CONFIG-results beside it)"
    )
    p_sw.add_argument(
        "--executor",
        "-e",
        choices=["serial", "processes", "dask", "ray"],
        help="where jobs run (default: the file's, else serial)",
    )
    p_sw.add_argument(
        "--workers", "-j", type=_int_in(1), help="local worker processes (processes, local Dask cluster, local Ray)"
    )
    p_sw.add_argument("--scheduler", help="address of a running Dask scheduler or Ray cluster (instead of a local one)")
    p_sw.add_argument(
        "--threads", type=_int_in(1), help="torch/rayon threads per job (e.g. 1 with one worker per core)"
    )
    p_sw.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        default=None,
        help="keep failed jobs' records instead of retrying them",
    )
    p_sw.add_argument("--no-report", action="store_true", help="do not write RESULTS/report")
    p_sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_sw.set_defaults(func=_sweep)


def _add_reproduce_parser(sub: Any) -> None:
    """``ess reproduce NAME [--quick] [--out DIR] [--seed N]``."""
    p_re = sub.add_parser(
        "reproduce",
        help="rerun a published finding (figure, JSON of numbers, table beside the published value)",
        description="Experiments: metastable, winner, graph-svm, mqar, delimiters, regularizer (or all). --quick runs a "
        "seconds-long preset; the default is the full preset (minutes on a CPU).",
    )
    p_re.add_argument("name", choices=["metastable", "winner", "graph-svm", "mqar", "delimiters", "regularizer", "all"])
    p_re.add_argument("--quick", action="store_true", help="the small preset (seconds; what CI runs)")
    p_re.add_argument("--out", "-o", default="ess-reproduce", help="output directory (default ./ess-reproduce)")
    p_re.add_argument("--seed", type=_int_in(0), default=0, help="base seed (default 0)")
    p_re.set_defaults(func=_reproduce)


def _run(args: argparse.Namespace) -> int:
    """Run a subcommand; every failure is one line on stderr and exit code 2 (130 on Ctrl-C).
    ``ESS_DEBUG=1`` re-raises with the full traceback."""
    cmd = f"ess {args.command or 'demo'}"
    debug = os.environ.get("ESS_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args))
    except SystemExit as e:
        if isinstance(e.code, str):  # a message raised by the subcommand
            print(e.code, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"{cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one handler: a message, not a traceback
        if debug:
            raise
        kind = type(e).__name__
        where = ""
        filename = getattr(e, "filename", None) if isinstance(e, (OSError, UnicodeError)) else None
        if filename:
            where = f" ({filename})"
        print(f"{cmd}: {kind}{where}: {e} (ESS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
