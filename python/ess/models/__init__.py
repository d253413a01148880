"""The built-in model: a small hybrid language model trained on MQAR, shipped with its weights.

>>> from ess.models import load_builtin, builtin_inputs
>>> model = load_builtin()                # HybridLM in eval mode, float32, CPU
>>> tokens = builtin_inputs(4)            # shipped MQAR sequences (int64, (4, 64))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .mqar import BOS, SEP, MQARConfig, generate
from ..errors import OutOfRangeError

__all__ = ["load_builtin", "builtin_inputs", "token_names", "INPUTS", "builtin_info", "WEIGHTS", "INFO", "BOS", "SEP", "MQARConfig", "generate"]

_HERE = Path(__file__).resolve().parent
WEIGHTS = _HERE / "hybrid_mqar.safetensors"
INFO = _HERE / "hybrid_mqar.json"
INPUTS = _HERE / "mqar_inputs.npy"


def builtin_info() -> Dict[str, Any]:
    """The recorded training facts of the shipped weights (config, MQAR setup, accuracy)."""
    with open(INFO, encoding="utf-8") as f:
        return json.load(f)


def load_builtin(device: Any = "cpu") -> Any:
    """The trained built-in :class:`~ess.models.model.HybridLM` in eval mode."""
    from safetensors.torch import load_file

    from .model import HybridConfig, HybridLM

    info = builtin_info()
    model = HybridLM(HybridConfig(**info["model_config"]))
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.to(device).eval()


def builtin_inputs(n: int = 2) -> Any:
    """The first ``n`` (at most 8) shipped MQAR sequences: the first of the held-out evaluation set
    (seed ``eval_seed``, disjoint from the training seeds), int64 tensor ``(n, L)``."""
    import numpy as np
    import torch

    arr = np.load(INPUTS)
    if not 1 <= n <= arr.shape[0]:
        raise OutOfRangeError(f"n: between 1 and {arr.shape[0]} shipped sequences, got {n}")
    return torch.from_numpy(np.ascontiguousarray(arr[:n], dtype=np.int64))


def token_names(ids: Any, cfg: Optional[MQARConfig] = None) -> list:
    """Readable names of MQAR token ids: ``BOS``, ``SEP``, ``k<i>`` (keys), ``v<j>`` (values)."""
    cfg = MQARConfig() if cfg is None else cfg
    out = []
    for t in [int(x) for x in ids]:
        if t == BOS:
            out.append("BOS")
        elif t == SEP:
            out.append("SEP")
        elif t < 2 + cfg.n_keys:
            out.append(f"k{t - 2}")
        else:
            out.append(f"v{t - 2 - cfg.n_keys}")
    return out
