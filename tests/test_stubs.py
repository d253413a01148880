"""The extension module's stubs match the compiled module (mypy.stubtest), and the
public Python package type-checks against them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.requires("mypy")
pytest.importorskip("mypy")


def test_stubtest_core_extension():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ess._core", "--allowlist", "stubtest_allowlist.txt"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(__file__),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
