"""Shared test configuration.

Optional packages: a test module or test that needs one says so with
``pytest.mark.requires("torch", ...)`` (and imports it with :func:`pytest.importorskip`).
Outside CI a missing package skips the test with a reason naming the package and the extra
that installs it. Under ``CI=true`` (what ``.ci/run`` sets) nothing the README promises may be
skipped: every skip becomes a failure, except those listed in ``ALLOWED_SKIPS_IN_CI`` (hardware
the CI machine does not have).
"""

import importlib.util
import os
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Skip reasons that stay skips under CI: the CI machine has no GPU.
ALLOWED_SKIPS_IN_CI = ("no CUDA device",)

STRICT = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(packages: Any) -> list:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="requires"):
        missing = _missing(mark.args)
        if missing:
            pytest.skip(f"optional package(s) not installed: {', '.join(missing)} (pip install '.[test]')")


def _reason(rep: Any) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)


def _strict(rep: Any) -> None:
    if STRICT and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _reason(rep)
        if not any(a in reason for a in ALLOWED_SKIPS_IN_CI):
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI=true, where every test the README promises must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Any:
    outcome = yield
    _strict(outcome.get_result())
