"""The documentation is tested: every tutorial's code runs (in a fresh interpreter, page by page,
the blocks of a page in order), the site builds with warnings as errors, and the Examples
sections of the public modules pass as doctests."""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
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

# The public modules: every function and class they define (or re-export from a private module, like
# ``ess.effective_state_size`` from ``ess._dense``) carries an Examples section, and every Examples
# section of these modules (and of the private modules behind the re-exports) runs as a doctest.
PUBLIC_MODULES = [
    "ess",
    "ess.analyze",
    "ess.automaton",
    "ess.ccmc",
    "ess.cli",
    "ess.compare",
    "ess.differentiable",
    "ess.distill",
    "ess.errors",
    "ess.examples",
    "ess.graph",
    "ess.interactive",
    "ess.markov",
    "ess.models",
    "ess.operators",
    "ess.plots",
    "ess.report",
    "ess.reproduce",
    "ess.structured",
    "ess.sweep",
]

# modules whose docstring Examples run as doctests: the public ones, the private homes of re-exported
# names, and the one internal module with an example of its own
DOCTEST_MODULES = PUBLIC_MODULES[1:] + [
    "ess._dense",
    "ess._newton",
    "ess.models.mqar",
    "ess.operators.base",
    "ess.reproduce._common",
]

# optional packages a module's examples need (a module not listed needs only numpy and the extension)
DOCTEST_NEEDS = {
    "ess._dense": ("torch",),
    "ess.analyze": ("torch", "pandas"),
    "ess.automaton": ("torch",),
    "ess.compare": ("torch", "pandas", "matplotlib", "pyarrow"),
    "ess.differentiable": ("torch",),
    "ess.distill": ("torch", "pandas"),
    "ess.interactive": ("torch", "pandas", "plotly"),
    "ess.models": ("torch", "pandas", "safetensors"),
    "ess.models.mqar": ("torch",),
    "ess.operators": ("torch",),
    "ess.operators.base": ("torch", "pandas"),
    "ess.plots": ("torch", "pandas", "matplotlib"),
    "ess.report": ("torch", "pandas", "matplotlib"),
    "ess.reproduce": ("matplotlib",),
    "ess.reproduce._common": ("matplotlib",),
    "ess.sweep": ("torch", "pandas", "pyarrow"),
}


def public_objects(modname: str) -> list:
    """``(qualified name, object)`` of the public functions and classes of ``modname``: its ``__all__`` (or,
    without one, its non-underscore names), keeping those defined in the module itself, in one of its
    submodules (a package's re-exports) or in a private module."""
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(module, n)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        home = getattr(obj, "__module__", "") or ""
        if home == modname or home.startswith(modname + ".") or any(p.startswith("_") for p in home.split(".")[1:]):
            out.append((f"{home}.{obj.__qualname__}", obj))
    return out


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
        pytest.param(m, marks=pytest.mark.requires(*DOCTEST_NEEDS[m])) if m in DOCTEST_NEEDS else m
        for m in DOCTEST_MODULES
    ],
)
def test_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a relative path writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"
    assert result.attempted > 0, f"{name} has no Examples section"


@pytest.mark.requires("torch", "pandas", "matplotlib")
def test_every_public_name_has_examples():
    """Every public function and class has an Examples section, and it runs here (its home module is
    one of DOCTEST_MODULES)."""
    found = {q: obj for m in PUBLIC_MODULES for q, obj in public_objects(m)}
    assert len(found) >= 90, f"only {len(found)} public functions and classes found: is PUBLIC_MODULES complete?"
    missing = sorted(q for q, obj in found.items() if not re.search(r"^\s*Examples\n\s*-{8}", obj.__doc__ or "", re.M))
    assert not missing, f"public functions/classes without an Examples section: {missing}"
    unrun = sorted(q for q, obj in found.items() if obj.__module__ not in DOCTEST_MODULES)
    assert not unrun, f"add their modules to DOCTEST_MODULES: {unrun}"
    # every public module is listed (a new module must be added to PUBLIC_MODULES)
    import ess

    on_disk = {f"ess.{m.name}" for m in pkgutil.iter_modules(ess.__path__) if not m.name.startswith("_")}
    unlisted = sorted(on_disk - set(PUBLIC_MODULES))
    assert not unlisted, f"add these public modules to PUBLIC_MODULES: {unlisted}"
