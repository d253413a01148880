"""The ``ess analyze`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.requires("torch", "pandas", "matplotlib")
torch = pytest.importorskip("torch")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from ess.cli import main  # noqa: E402


def test_analyze_builtin_mqar(tmp_path, capsys):
    out = tmp_path / "rep"
    assert (
        main(
            [
                "analyze",
                "--builtin",
                "mqar",
                "--out",
                str(out),
                "--no-progress",
                "--samples",
                "1",
                "--figures",
                "png,svg,pdf",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "built-in hybrid model (MQAR" in text and "softmax_attention" in text and "report written" in text
    js = json.loads((out / "summary.json").read_text())
    assert [l["kind"] for l in js["layers"]] == ["conv", "selective_ssm", "linear_attention", "softmax_attention"]
    assert js["markers"]["0"] == [17]
    assert js["tokens"][:2] == ["BOS", js["tokens"][1]] and "SEP" in js["tokens"]
    assert (out / "report.html").exists() and (out / "ess.csv").exists()
    for f in ("curves", "heatmap", "utilisation"):  # one sample: no sample comparison
        assert (
            (out / f"{f}.png").exists()
            and (out / f"{f}.pdf").read_bytes().startswith(b"%PDF")
            and (out / f"{f}.svg").exists()
        )
    assert not (out / "samples.png").exists()


def _delimiter_drop(table, delims, measure="ess_tolerance", w=2):
    """Per layer: 1 - mean ESS over the w splits after each delimiter / over the w splits up to it
    (mean over operators and samples; split t separates positions < t from >= t)."""
    out = {}
    for kind, g in table.groupby("kind"):
        c = g.groupby("position")[measure].mean().sort_index().to_numpy()
        drops = [1.0 - c[d + 1 : d + 1 + w].mean() / c[d - w + 1 : d + 1].mean() for d in delims]
        out[kind] = float(np.mean(drops))
    return out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """``ess analyze`` with no model: the ``delimiters`` built-in on two shipped sequences."""
    import contextlib
    import io
    import time

    import pandas as pd

    out = tmp_path_factory.mktemp("default") / "rep"
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        code = main(["analyze", "--out", str(out), "--no-progress"])
    secs = time.perf_counter() - t0
    return code, buf.getvalue(), out, pd.read_csv(out / "ess.csv"), json.loads((out / "summary.json").read_text()), secs


def test_analyze_builtin_default(default_run):
    from ess.models import builtin_delimiters_info

    code, text, out, table, js, secs = default_run
    assert code == 0
    assert "built-in hybrid model 'delimiters'" in text and "rtol=0.01" in text and "report written" in text
    assert [l["kind"] for l in js["layers"]] == ["conv", "selective_ssm", "gated_linear_attention", "softmax_attention"]
    delims = builtin_delimiters_info()["delimiter_positions"]
    assert delims == [17, 34]
    assert js["markers"]["0"] == delims and js["markers"]["1"] == delims
    assert js["tokens"][0] == "BOS" and [i for i, t in enumerate(js["tokens"]) if t == "DELIM"] == delims
    assert (out / "report.html").exists() and (out / "samples.png").exists()  # two samples: comparison figures
    assert (table.ess_tolerance <= table.bound + 1e-9).all()


def test_analyze_builtin_default_with_atol(tmp_path, capsys):
    """An absolute threshold on the default model (no --rtol): the title names it (it used to raise
    a TypeError formatting a missing rtol)."""
    code = main(
        [
            "analyze",
            "--out",
            str(tmp_path / "rep"),
            "--no-progress",
            "--atol",
            "1e-3",
            "--samples",
            "1",
            "--positions",
            "8:48:8",
            "--method",
            "tolerance",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "atol=0.001" in text and "rtol=" not in text  # (the title may wrap)


def test_analyze_builtin_default_shows_mixers_differ(default_run):
    """At rtol = 1e-2 the default report is not pinned to the rank bound, and the mixers react
    differently to the delimiters (assertions with margins; the values are in the comment)."""
    from ess.models import builtin_delimiters_info

    code, text, out, table, js, secs = default_run
    flags = [l["saturated"] for l in js["layers"]]
    assert not all(flags), flags
    delims = builtin_delimiters_info()["delimiter_positions"]
    fill = {l["kind"]: l["fill"] for l in js["layers"]}
    # shipped weights, 2 sequences: fill conv 0.97 (saturated at TSS 2), ssm 0.75, gla 0.36, softmax 0.58
    assert fill["gated_linear_attention"] < fill["selective_ssm"] - 0.2
    assert fill["gated_linear_attention"] < fill["softmax_attention"] - 0.1
    tol = _delimiter_drop(table, delims, "ess_tolerance")
    ent = _delimiter_drop(table, delims, "ess_entropy")
    # tolerance drop: gla 0.16, softmax 0.05, ssm -0.01, conv 0; entropy: gla 0.15, softmax 0.08, ssm 0.01
    assert abs(tol["conv"]) < 1e-9  # a fixed window: nothing to forget
    assert tol["gated_linear_attention"] > 0.1 and ent["gated_linear_attention"] > 0.1
    assert tol["gated_linear_attention"] > tol["selective_ssm"] + 0.1
    assert tol["gated_linear_attention"] > tol["softmax_attention"] + 0.05
    assert ent["gated_linear_attention"] > ent["selective_ssm"] + 0.1
    # the gated layer's ESS peaks at the split before each delimiter: above its mean over all splits
    g = (
        table[table.kind == "gated_linear_attention"]
        .groupby("position")["ess_tolerance"]
        .mean()
        .sort_index()
        .to_numpy()
    )
    for d in delims:
        assert g[d] > 1.3 * g[1:].mean(), (d, g[d], g[1:].mean())


def test_analyze_model_factory_and_tokens(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(
        [
            "analyze",
            "--model",
            "tests.cli_factory:build",
            "--tokens",
            "1,2,3,4,5,6,7,8",
            "--out",
            str(out),
            "--no-progress",
            "--positions",
            "0:8:2",
        ]
    )
    assert code == 0
    js = json.loads((out / "summary.json").read_text())
    assert js["meta"]["length"] == 8 and js["meta"]["positions"] == [0, 2, 4, 6]
    # random tokens of --length when no inputs are given
    assert (
        main(["analyze", "--model", "tests.cli_factory:build", "--length", "12", "--out", str(out), "--no-progress"])
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["meta"]["length"] == 12


def test_analyze_errors(tmp_path, capsys):
    assert main(["analyze", "--model", "nofactory"]) == 2
    assert "module:factory" in capsys.readouterr().err
    assert main(["analyze", "--model", "no_such_module_xyz:f"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert main(["analyze", "--model", "tests.cli_factory:build", "--tokens", "a,b"]) == 2
    assert "integers" in capsys.readouterr().err
    assert main(["analyze", "--tokens", "1,2"]) == 2
    assert "--model or --hf" in capsys.readouterr().err
    code = main(
        [
            "analyze",
            "--model",
            "tests.cli_factory:build",
            "--tokens",
            "1,2,3",
            "--positions",
            "5,6",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "OutOfRangeError" in capsys.readouterr().err


def test_demo_still_works(capsys):
    assert main(["demo", "--length", "32"]) == 0
    assert "softmax attention" in capsys.readouterr().out


@pytest.mark.requires("transformers")
def test_analyze_hf_directory(tmp_path, capsys):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    tr.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "rep"
    assert main(["analyze", "--hf", str(tmp_path / "gpt2"), "--length", "10", "--out", str(out), "--no-progress"]) == 0
    js = json.loads((out / "summary.json").read_text())
    assert [l["layer"] for l in js["layers"]] == ["transformer.h.0.attn"] and js["meta"]["length"] == 10
    assert main(["analyze", "--hf", str(tmp_path / "gpt2"), "--text", str(tmp_path / "none.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.requires("transformers", "tokenizers")
@pytest.mark.parametrize("family", ["qwen3_next", "bloom"])
def test_analyze_hf_directory_any_family_with_tokenizer(tmp_path, capsys, family):
    """Any causal LM saved with save_pretrained, with its tokenizer: --text is tokenised, the report
    shows the decoded tokens, a hybrid's recurrent mixer is analysed through the structured route."""
    tr = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from hf_families import build

    vocab = {f"w{i}": i for i in range(63)}
    vocab["[UNK]"] = 63
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / family
    build(family, "eager").save_pretrained(path)
    tr.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="w0").save_pretrained(path)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 60 + 1}" for i in range(30)))
    out = tmp_path / "rep"
    assert (
        main(["analyze", "--hf", str(path), "--text", str(text), "--length", "12", "--out", str(out), "--no-progress"])
        == 0
    )
    js = json.loads((out / "summary.json").read_text())
    assert js["meta"]["length"] == 12 and js["tokens"][:3] == ["w1", "w2", "w3"]
    kinds = {l["kind"] for l in js["layers"]}
    assert kinds == ({"softmax_attention", "gated_delta_rule"} if family == "qwen3_next" else {"softmax_attention"})
    assert not js["skipped"]
    if family == "qwen3_next":
        assert any(l["layer"] == "model.layers.0.linear_attn" and l["route"] == "structured" for l in js["layers"])
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "--hf", str(tmp_path / "empty")]) == 2
    assert "cannot load a causal language model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "-L", "0"], "--length/-L: must be in [1, 65536]"),
        (["demo", "-L", "x"], "expected an integer"),
        (["analyze", "--samples", "0"], "--samples: must be in [1, 8]"),
        (["analyze", "--positions", "a:b"], "--positions: expected 'start:stop:step'"),
        (["analyze", "--positions", "::0"], "--positions: the step of '::0' must be a positive integer"),
        (["analyze", "--device", "bogus"], "--device: not a torch device"),
        (["analyze", "--figures", "png,gif"], "--figures: expected a comma-separated list of png, svg, pdf, eps"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_failures_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """Every failure of a subcommand is one line on stderr and exit code 2, never a traceback."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.txt").write_bytes(bytes([0xFF, 0xFE, 0xFA]) + b" bad")
    cases = [
        (["analyze", "--out", str(tmp_path / "afile")], "exists and is not a directory"),
        (["analyze", "--out", "/proc/ess-nope/x"], "cannot create the report directory"),
        (["analyze", "--model", "tests.cli_factory:boom"], "RuntimeError: factory failed"),
        (
            ["analyze", "--model", "tests.cli_factory:build", "--tokens", "1,2,999999", "--out", str(tmp_path / "r")],
            "outside the model's vocabulary",
        ),
        (["analyze", "--hf", str(tmp_path / "missing")], "no such directory"),
    ]
    for argv, message in cases:
        assert main(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)
