"""Subsets of split points (``ess.split_points``, ``positions=``) and the time estimate of ``analyze``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ess
from ess.errors import DTypeError, InvalidArgumentError, OutOfRangeError


@given(st.integers(1, 5000), st.integers(1, 600))
def test_strided_points(L, stride):
    p = ess.split_points(L, stride=stride)
    assert p.dtype == np.int64 and p[0] == 0 and p.max() < L
    np.testing.assert_array_equal(p, np.arange(0, L, stride))


@given(st.integers(1, 5000), st.integers(1, 300), st.sampled_from(["linear", "log"]))
def test_counted_points_are_valid_positions(L, num, spacing):
    p = ess.split_points(L, num=num, spacing=spacing)
    assert len(p) <= num
    if len(p):
        assert p.min() >= (0 if spacing == "linear" else 1) and p.max() <= L - 1
        assert np.all(np.diff(p) > 0)
    if spacing == "linear":
        assert p[0] == 0 and (num < 2 or p[-1] == L - 1)
    elif L >= 2:
        assert p[0] == 1 and (num < 2 or p[-1] == L - 1)
        # log spacing: more points in the first tenth than evenly spaced ones would put there
        if num >= 20 and L >= 1000:
            assert np.sum(p < L // 10) > len(p) // 10
    # valid for the kernel
    T = np.tril(np.ones((min(L, 40), min(L, 40))))
    q = p[p < T.shape[0]]
    if len(q):
        assert ess.effective_state_size(T, positions=q).shape == (len(q),)


def test_split_point_errors():
    with pytest.raises(InvalidArgumentError, match="stride, num"):
        ess.split_points(10)
    with pytest.raises(InvalidArgumentError, match="stride, num"):
        ess.split_points(10, stride=2, num=3)
    with pytest.raises(OutOfRangeError, match="stride"):
        ess.split_points(10, stride=0)
    with pytest.raises(OutOfRangeError, match="L"):
        ess.split_points(0, num=3)
    with pytest.raises(DTypeError, match="num"):
        ess.split_points(10, num=2.5)
    with pytest.raises(InvalidArgumentError, match="spacing"):
        ess.split_points(10, stride=2, spacing="log")
    with pytest.raises(InvalidArgumentError, match="spacing"):
        ess.split_points(10, num=2, spacing="cubic")


def test_subset_curves_are_the_full_curves_at_those_points():
    rng = np.random.default_rng(0)
    T = rng.standard_normal((3, 60, 60))
    full = ess.effective_state_size(T, method="both")
    for p in (ess.split_points(60, stride=7), ess.split_points(60, num=9, spacing="log")):
        for dev in (None, "cpu"):
            sub = ess.effective_state_size(T, method="both", positions=p, device=dev)
            np.testing.assert_array_equal(sub.tolerance, full.tolerance[:, p])
            np.testing.assert_allclose(sub.entropy, full.entropy[:, p], rtol=1e-12 if dev is None else 1e-6)


@pytest.mark.requires("torch", "transformers")
def test_analyze_subset_and_time_estimate(monkeypatch, capsys):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import sys

    an = sys.modules["ess.analyze"]

    cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    tok = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))
    full = ess.analyze(model, tok, progress=False)
    p = ess.split_points(40, stride=5)
    sub = ess.analyze(model, tok, progress=False, positions=p)
    key = ["layer", "index", "position"]
    ft = full.table[full.table.position.isin(p)].sort_values(key)
    st_ = sub.table.sort_values(key)
    np.testing.assert_array_equal(st_.position.to_numpy(), ft.position.to_numpy())
    np.testing.assert_array_equal(st_.ess_tolerance.to_numpy(), ft.ess_tolerance.to_numpy())
    np.testing.assert_allclose(st_.ess_entropy.to_numpy(), ft.ess_entropy.to_numpy(), rtol=1e-9)
    assert sub.meta["positions"] == p.tolist()
    # the estimate: calibrated, stored, printed (to stderr) when over the limit and progress is on
    assert full.meta["seconds_estimate"] is not None and full.meta["seconds_estimate"] > 0
    monkeypatch.setattr(an, "ESTIMATE_PRINT_SECONDS", 0.0)
    ess.analyze(model, tok, progress=False)
    assert "will take about" not in capsys.readouterr().err
    ess.analyze(model, tok, progress=True)
    err = capsys.readouterr().err
    assert "will take about" in err and "2 layer(s) x 4 operators x 1 sequence(s) x 40 splits" in err
