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

# The public modules: every function and class they define, or list in ``__all__`` from a private module
# (``ess.effective_state_size`` from ``ess._dense``) or from their own submodules (a package's
# re-exports), carries an Examples section, and all those Examples run below as doctests.
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
    "ess.models.layers",
    "ess.models.model",
    "ess.models.mqar",
    "ess.operators",
    "ess.operators.base",
    "ess.operators.hf",
    "ess.operators.hf_attention",
    "ess.operators.hf_recurrent",
    "ess.operators.jacobian",
    "ess.operators.reference",
    "ess.operators.torch_nn",
    "ess.plots",
    "ess.report",
    "ess.reproduce",
    "ess.reproduce.delimiters",
    "ess.reproduce.graph_svm",
    "ess.reproduce.metastable",
    "ess.reproduce.mqar",
    "ess.reproduce.regularizer",
    "ess.reproduce.winner",
    "ess.structured",
    "ess.sweep",
]

# Public modules not yet held to the rule (module -> why); every other module of the package must be in
# PUBLIC_MODULES (test_every_public_name_has_examples checks).
EXAMPLES_PENDING: dict[str, str] = {}

# modules whose docstring Examples run as doctests: the public ones that have examples (``ess`` itself and
# the three experiment modules define no public function or class) and the private homes of
# re-exported names (plus ``ess._newton``, internal, with an example of its own)
DOCTEST_MODULES = [
    m
    for m in PUBLIC_MODULES
    if m not in ("ess", "ess.reproduce.graph_svm", "ess.reproduce.metastable", "ess.reproduce.winner")
] + ["ess._dense", "ess._newton", "ess.reproduce._common"]

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
    # tiny random-weight models built from configs of the installed transformers (no download)
    "ess.operators.hf": ("torch", "transformers"),
    "ess.operators.hf_attention": ("torch", "transformers"),
    "ess.operators.hf_recurrent": ("torch", "transformers"),
    "ess.operators.jacobian": ("torch", "pandas"),
    "ess.operators.reference": ("torch",),
    "ess.operators.torch_nn": ("torch",),
    "ess.models.layers": ("torch",),
    "ess.models.model": ("torch",),
    "ess.reproduce.delimiters": ("torch", "pandas"),
    "ess.reproduce.mqar": ("torch", "pandas"),
    "ess.reproduce.regularizer": ("torch",),
    "ess.plots": ("torch", "pandas", "matplotlib"),
    "ess.report": ("torch", "pandas", "matplotlib"),
    "ess.reproduce": ("matplotlib",),
    "ess.reproduce._common": ("matplotlib",),
    "ess.sweep": ("torch", "pandas", "pyarrow"),
}


def public_objects(modname: str) -> list:
    """``(qualified name, object)`` of the public functions and classes of ``modname``: those it defines
    (non-underscore names), and those its ``__all__`` lists from a private module or from one of its own
    submodules."""
    module = importlib.import_module(modname)
    listed = getattr(module, "__all__", None)
    names = listed if listed is not None else [n for n in vars(module) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(module, n)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        home = getattr(obj, "__module__", "") or ""
        reexport = home.startswith(modname + ".") or any(p.startswith("_") for p in home.split(".")[1:])
        if home == modname or (listed is not None and reexport):
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
    # every module of the package is listed (a new module must be added to PUBLIC_MODULES)

    on_disk = set()
    for pkg in ("ess", "ess.models", "ess.operators", "ess.reproduce"):
        path = importlib.import_module(pkg).__path__
        on_disk |= {f"{pkg}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")}
    unlisted = sorted(on_disk - set(PUBLIC_MODULES) - set(EXAMPLES_PENDING))
    assert not unlisted, f"add these public modules to PUBLIC_MODULES: {unlisted}"


def test_api_reference_covers_every_public_name():
    """The site's API reference renders every public function and class: its module, or the name itself,
    appears in a ``::: target`` directive under docs/api/."""
    targets = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        targets |= set(re.findall(r"^::: *([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    uncovered = []
    for m in PUBLIC_MODULES:
        for q, obj in public_objects(m):
            name = q.rsplit(".", 1)[-1]
            home = obj.__module__
            if not ({m, home, q, f"{m}.{name}"} & targets):
                uncovered.append(q)
    assert not uncovered, f"add these to a docs/api page (a '::: module' or '::: name' line): {sorted(uncovered)}"
