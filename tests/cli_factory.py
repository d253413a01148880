"""A model factory for tests/test_analyze_cli.py (``--model tests.cli_factory:build``)."""


def build():
    import torch

    from ess.models.model import HybridConfig, HybridLM

    torch.manual_seed(0)
    return HybridLM(HybridConfig(d_model=16, n_heads=2, d_state=4, mixers=["conv", "softmax_attention"]))


def boom():
    raise RuntimeError("factory failed")
