"""The documentation is tested: every tutorial's code runs (in a fresh interpreter, page by page,
the blocks of a page in order), the site builds with warnings as errors, and the Examples
sections of the public modules pass as doctests."""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# page -> optional packages its code needs
PAGES = {
    "tutorials/hf-model.md": ("torch", "transformers", "pandas"),
    "tutorials/structured-ssm.md": (),
    "tutorials/token-graphs.md": (),
    "tutorials/markov-hitting-times.md": (),
    "architecture.md": ("torch", "pandas"),
}

# modules whose docstring Examples run as doctests
DOCTEST_MODULES = [
    "ess._dense",
    "ess._newton",
    "ess.graph",
    "ess.markov",
    "ess.ccmc",
    "ess.examples",
    "ess.errors",
    "ess.models",
    "ess.sweep",
]


def code_of(page: str) -> str:
    return "\n\n".join(FENCE.findall((DOCS / page).read_text()))


def test_every_page_with_code_is_run():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if FENCE.search(p.read_text())}
    assert pages <= set(PAGES), f"add these pages to PAGES: {sorted(pages - set(PAGES))}"


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.requires(*PAGES[p])) for p in sorted(PAGES)])
def test_tutorial_runs(page, tmp_path):
    code = code_of(page)
    assert code.strip(), f"{page} has no python code block"
    # ess is imported as this process imports it (the installed package, or PYTHONPATH=python with a built
    # extension): prepending the source tree would shadow an installed package whose tree has no extension.
    # PYTHONPATH entries are made absolute, since the code runs in a scratch directory.
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{page} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.requires("mkdocs", "mkdocstrings")
def test_site_builds_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(m, marks=pytest.mark.requires("torch", "pandas")) if m in ("ess.models", "ess.sweep") else m
        for m in DOCTEST_MODULES
    ],
)
def test_doctests(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"
    if name in ("ess.graph", "ess.markov", "ess._newton"):
        assert result.attempted > 0, f"{name} has no Examples section"
