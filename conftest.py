"""Repository-wide pytest hooks.

In CI (IKEOFFLOAD_NO_SKIP=1) nothing may be left out: a skipped test, a module skipped while it
is collected (``pytest.skip(..., allow_module_level=True)``, ``pytest.importorskip``) and an
expected failure (xfail) all count as failures. tests/test_noskip.py runs a small demo suite in
a subprocess to prove each case."""
import os

import pytest


def _no_skip() -> bool:
    return os.environ.get("IKEOFFLOAD_NO_SKIP") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped or xfailed in any phase (setup, call, teardown) fails."""
    outcome = yield
    rep = outcome.get_result()
    if not _no_skip():
        return
    if hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = "xfail in CI, where every test must pass: %s" % (rep.wasxfail or "(no reason)",)
        del rep.wasxfail
    elif rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = "skipped in CI, where nothing may be skipped: %s" % (rep.longrepr,)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module (or class) skipped while being collected is a collection error: the run fails."""
    outcome = yield
    rep = outcome.get_result()
    if _no_skip() and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = "skipped at collection in CI, where nothing may be skipped: %s" % (rep.longrepr,)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the long versions of the soak tests (e.g. tests/test_routing.py: 60 s of pings "
                          "through rekeys instead of CI's 15 s)")
