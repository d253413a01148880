"""The hostile-call census (scripts/hostile_census.py) finds no defect: every one of its
~1150 hostile calls over the public callables is a typed error naming the argument or a valid
result; none crashes, hangs, raises an untyped exception or silently accepts a bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.requires("torch")
def test_hostile_census_finds_no_defect(tmp_path) -> None:
    out = tmp_path / "census.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "hostile_census.py"), "--json", str(out), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) > 1000
    verdicts = {r["verdict"] for r in rows}
    assert verdicts <= {"typed", "accepted"}, verdicts
