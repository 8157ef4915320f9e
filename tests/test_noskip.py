"""IKEOFFLOAD_NO_SKIP=1 (CI) turns every way of leaving a test out into a failure.

Each case runs a two-file demo suite — the repository's own conftest.py next to one test module —
in a fresh pytest subprocess, once without the switch (the suite passes, the test is left out)
and once with it (the suite fails and says why)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

CASES = {
    "module_skip": ('import pytest\n'
                    'pytest.skip("needs root", allow_module_level=True)\n'
                    'def test_never_runs():\n    assert False\n',
                    "1 skipped", "skipped at collection in CI"),
    "importorskip": ('import pytest\n'
                     'pytest.importorskip("no_such_module_here")\n'
                     'def test_never_runs():\n    assert False\n',
                     "1 skipped", "skipped at collection in CI"),
    "test_skip": ('import pytest\n'
                  'def test_left_out():\n    pytest.skip("no charon")\n',
                  "1 skipped", "skipped in CI"),
    "fixture_skip": ('import pytest\n'
                     '@pytest.fixture\ndef peer():\n    pytest.skip("no peer")\n'
                     'def test_left_out(peer):\n    pass\n',
                     "1 skipped", "skipped in CI"),
    "xfail": ('import pytest\n'
              '@pytest.mark.xfail(reason="known bug")\n'
              'def test_known_bug():\n    assert False\n',
              "1 xfailed", "xfail in CI"),
    "xfail_call": ('import pytest\n'
                   'def test_known_bug():\n    pytest.xfail("flaky")\n',
                   "1 xfailed", "xfail in CI"),
}


def run_demo(tmp_path, body, no_skip):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "IKEOFFLOAD_NO_SKIP"}
    if no_skip:
        env["IKEOFFLOAD_NO_SKIP"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rA",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_switch_fails_what_would_be_left_out(tmp_path, case):
    body, left_out, why = CASES[case]
    quiet = run_demo(tmp_path, body, no_skip=False)
    # 5: pytest's "no tests ran" (the module was skipped whole): not a failure either
    assert quiet.returncode in (0, 5) and left_out in quiet.stdout, quiet.stdout + quiet.stderr
    strict = run_demo(tmp_path, body, no_skip=True)
    assert strict.returncode in (1, 2), strict.stdout       # tests failed / collection errors
    assert why in strict.stdout, strict.stdout
    assert left_out not in strict.stdout, strict.stdout


def test_a_passing_suite_still_passes_under_the_switch(tmp_path):
    r = run_demo(tmp_path, "def test_fine():\n    assert True\n", no_skip=True)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout
