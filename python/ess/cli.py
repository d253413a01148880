"""The ``ess`` command line.

``ess demo`` prints ESS summaries of the built-in example operators.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ess", description="Effective state size of sequence models.")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="ESS of built-in example operators (softmax attention, SSM, convolution)")
    p_demo.add_argument("--length", "-L", type=int, default=256, help="sequence length (default 256)")
    p_demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        args = parser.parse_args(["demo", *(argv or [])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
