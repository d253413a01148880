"""The ``ess analyze`` command."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.requires('torch', 'pandas', 'matplotlib')
torch = pytest.importorskip("torch")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from ess.cli import main  # noqa: E402


def test_analyze_builtin_default(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", "--out", str(out), "--no-progress", "--samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "built-in hybrid model" in text and "softmax_attention" in text and "report written" in text
    js = json.loads((out / "summary.json").read_text())
    assert [l["kind"] for l in js["layers"]] == ["conv", "selective_ssm", "linear_attention", "softmax_attention"]
    assert js["markers"]["0"] == [17]
    assert js["tokens"][:2] == ["BOS", js["tokens"][1]] and "SEP" in js["tokens"]
    assert (out / "report.html").exists() and (out / "ess.csv").exists()


def test_analyze_model_factory_and_tokens(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["analyze", "--model", "tests.cli_factory:build", "--tokens", "1,2,3,4,5,6,7,8", "--out", str(out),
                 "--no-progress", "--positions", "0:8:2"])
    assert code == 0
    js = json.loads((out / "summary.json").read_text())
    assert js["meta"]["length"] == 8 and js["meta"]["positions"] == [0, 2, 4, 6]
    # random tokens of --length when no inputs are given
    assert main(["analyze", "--model", "tests.cli_factory:build", "--length", "12", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["meta"]["length"] == 12


def test_analyze_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="module:factory"):
        main(["analyze", "--model", "nofactory"])
    with pytest.raises(SystemExit, match="cannot load"):
        main(["analyze", "--model", "no_such_module_xyz:f"])
    with pytest.raises(SystemExit, match="integers"):
        main(["analyze", "--model", "tests.cli_factory:build", "--tokens", "a,b"])
    with pytest.raises(SystemExit, match="--model or --hf"):
        main(["analyze", "--tokens", "1,2"])
    code = main(["analyze", "--model", "tests.cli_factory:build", "--tokens", "1,2,3", "--positions", "5,6", "--out", str(tmp_path)])
    assert code == 1 and "OutOfRangeError" in capsys.readouterr().err


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
    with pytest.raises(SystemExit, match="cannot read"):
        main(["analyze", "--hf", str(tmp_path / "gpt2"), "--text", str(tmp_path / "none.txt")])


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
    assert main(["analyze", "--hf", str(path), "--text", str(text), "--length", "12", "--out", str(out), "--no-progress"]) == 0
    js = json.loads((out / "summary.json").read_text())
    assert js["meta"]["length"] == 12 and js["tokens"][:3] == ["w1", "w2", "w3"]
    kinds = {l["kind"] for l in js["layers"]}
    assert kinds == ({"softmax_attention", "gated_delta_rule"} if family == "qwen3_next" else {"softmax_attention"})
    assert not js["skipped"]
    if family == "qwen3_next":
        assert any(l["layer"] == "model.layers.0.linear_attn" and l["route"] == "structured" for l in js["layers"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="cannot load a causal language model"):
        main(["analyze", "--hf", str(tmp_path / "empty")])
