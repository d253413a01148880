"""The built-in models: small hybrid language models shipped with their weights.

* ``mqar``: conv + selective SSM + linear attention + softmax attention (d_model 64), trained on
  multi-query associative recall at L = 34 (:func:`load_builtin`, :func:`builtin_inputs`;
  ``scripts/train_mqar.py``).
* ``delimiters``: conv + selective SSM + gated linear attention + softmax attention (d_model 32),
  trained on three-segment associative recall with a delimiter token between segments, L = 51
  (:func:`load_builtin_delimiters`, :func:`builtin_delimiters_inputs`; ``scripts/train_delimiters.py``).
  ``ess analyze`` without a model runs this one.

>>> from ess.models import load_builtin, builtin_inputs
>>> model = load_builtin()                # HybridLM in eval mode, float32, CPU
>>> tokens = builtin_inputs(4)            # shipped MQAR sequences (int64, (4, 34))
>>> from ess.models import load_builtin_delimiters, builtin_delimiters_inputs, DELIM
>>> model = load_builtin_delimiters()
>>> tokens = builtin_delimiters_inputs(2) # int64 (2, 51); DELIM (id 1) at positions 17 and 34
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .mqar import BOS, SEP, MQARConfig, generate
from .. import _args

__all__ = [
    "load_builtin",
    "builtin_inputs",
    "token_names",
    "INPUTS",
    "builtin_info",
    "WEIGHTS",
    "INFO",
    "BOS",
    "SEP",
    "MQARConfig",
    "generate",
    "load_builtin_delimiters",
    "builtin_delimiters_inputs",
    "builtin_delimiters_info",
    "delimiters_token_names",
    "DELIM",
    "DELIM_WEIGHTS",
    "DELIM_INFO",
    "DELIM_INPUTS",
    "BUILTINS",
]

_HERE = Path(__file__).resolve().parent
WEIGHTS = _HERE / "hybrid_mqar.safetensors"
INFO = _HERE / "hybrid_mqar.json"
INPUTS = _HERE / "mqar_inputs.npy"
DELIM_WEIGHTS = _HERE / "hybrid_delimiters.safetensors"
DELIM_INFO = _HERE / "hybrid_delimiters.json"
DELIM_INPUTS = _HERE / "delimiters_inputs.npy"
DELIM = 1  # the delimiter token of the ``delimiters`` model (ends a segment)
BUILTINS = ("delimiters", "mqar")


def builtin_info() -> Dict[str, Any]:
    """The recorded training facts of the shipped weights (config, MQAR setup, accuracy).

    Examples
    --------
    >>> from ess.models import builtin_info
    >>> info = builtin_info()
    >>> sorted(info["model_config"])
    ['conv_kernel', 'd_model', 'd_state', 'max_len', 'mixers', 'n_heads', 'vocab_size']
    >>> info["model_config"]["mixers"]
    ['conv', 'ssm', 'linear_attention', 'softmax_attention']
    """
    with open(INFO, encoding="utf-8") as f:
        return json.load(f)


def load_builtin(device: Any = "cpu") -> Any:
    """The trained built-in :class:`~ess.models.model.HybridLM` in eval mode.

    Examples
    --------
    >>> import torch
    >>> from ess.models import builtin_inputs, load_builtin
    >>> model = load_builtin()
    >>> type(model).__name__, model.training
    ('HybridLM', False)
    >>> with torch.no_grad():
    ...     logits = model(builtin_inputs(1))
    >>> tuple(logits.shape)
    (1, 34, 64)
    """
    from safetensors.torch import load_file

    from .model import HybridConfig, HybridLM

    info = builtin_info()
    model = HybridLM(HybridConfig(**info["model_config"]))
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.to(device).eval()


def builtin_inputs(n: int = 2) -> Any:
    """The first ``n`` (at most 8) shipped MQAR sequences: the first of the held-out evaluation set
    (seed ``eval_seed``, disjoint from the training seeds), int64 tensor ``(n, L)``.

    Examples
    --------
    >>> from ess.models import builtin_inputs, token_names
    >>> x = builtin_inputs(2)
    >>> x.dtype, tuple(x.shape)
    (torch.int64, (2, 34))
    >>> token_names(x[0, :5])
    ['BOS', 'k8', 'v5', 'k16', 'v7']
    """
    import numpy as np
    import torch

    arr = np.load(INPUTS)
    n = _args.integer(n, "n", lo=1, hi=arr.shape[0])
    return torch.from_numpy(np.ascontiguousarray(arr[:n], dtype=np.int64))


def token_names(ids: Any, cfg: Optional[MQARConfig] = None) -> list:
    """Readable names of MQAR token ids: ``BOS``, ``SEP``, ``k<i>`` (keys), ``v<j>`` (values).

    Examples
    --------
    >>> from ess.models import token_names
    >>> token_names([0, 1, 2, 3, 40])
    ['BOS', 'SEP', 'k0', 'k1', 'v8']
    """
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


def builtin_delimiters_info() -> Dict[str, Any]:
    """The recorded training facts of the ``delimiters`` model: model config, task (segments, pairs,
    queries, key and value pools), delimiter positions of the shipped inputs, held-out accuracy, the
    training command.

    Examples
    --------
    >>> from ess.models import builtin_delimiters_info
    >>> info = builtin_delimiters_info()
    >>> info["model_config"]["mixers"]
    ['conv', 'ssm', 'gated_linear_attention', 'softmax_attention']
    >>> info["delimiter_positions"]
    [17, 34]
    """
    with open(DELIM_INFO, encoding="utf-8") as f:
        return json.load(f)


def load_builtin_delimiters(device: Any = "cpu") -> Any:
    """The trained ``delimiters`` :class:`~ess.models.model.HybridLM` (short conv, selective SSM, gated
    linear attention, softmax attention) in eval mode.

    Examples
    --------
    >>> import ess
    >>> from ess.models import DELIM, builtin_delimiters_inputs, load_builtin_delimiters
    >>> rep = ess.analyze(load_builtin_delimiters(), builtin_delimiters_inputs(1), markers=[DELIM], rtol=1e-2,
    ...                   progress=False)
    >>> rep.markers, rep.summary["kind"].tolist()      # the delimiter's positions in sample 0
    ({0: [17, 34]}, ['conv', 'selective_ssm', 'gated_linear_attention', 'softmax_attention'])
    """
    from safetensors.torch import load_file

    from .model import HybridConfig, HybridLM

    info = builtin_delimiters_info()
    model = HybridLM(HybridConfig(**info["model_config"]))
    model.load_state_dict(load_file(str(DELIM_WEIGHTS)))
    return model.to(device).eval()


def builtin_delimiters_inputs(n: int = 2) -> Any:
    """The first ``n`` (at most 8) shipped sequences of the ``delimiters`` model: the first of its
    held-out evaluation set (seed ``eval_seed``), int64 tensor ``(n, L)``; the delimiter (id ``DELIM``)
    sits at ``builtin_delimiters_info()["delimiter_positions"]`` in every sequence.

    Examples
    --------
    >>> from ess.models import DELIM, builtin_delimiters_inputs
    >>> x = builtin_delimiters_inputs(2)
    >>> tuple(x.shape), (x[0] == DELIM).nonzero().ravel().tolist()
    ((2, 51), [17, 34])
    """
    import numpy as np
    import torch

    arr = np.load(DELIM_INPUTS)
    n = _args.integer(n, "n", lo=1, hi=arr.shape[0])
    return torch.from_numpy(np.ascontiguousarray(arr[:n], dtype=np.int64))


def delimiters_token_names(ids: Any, n_keys: int = 8) -> list:
    """Readable names of the ``delimiters`` model's token ids: ``BOS``, ``DELIM``, ``k<i>``, ``v<j>``.

    Examples
    --------
    >>> from ess.models import delimiters_token_names
    >>> delimiters_token_names([0, 1, 2, 9, 10, 11])
    ['BOS', 'DELIM', 'k0', 'k7', 'v0', 'v1']
    """
    out = []
    for t in [int(x) for x in ids]:
        if t == BOS:
            out.append("BOS")
        elif t == DELIM:
            out.append("DELIM")
        elif t < 2 + n_keys:
            out.append(f"k{t - 2}")
        else:
            out.append(f"v{t - 2 - n_keys}")
    return out
