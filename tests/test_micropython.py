"""Proof that the firmware is MicroPython-compatible.

- every firmware file compiles with the real mpy-cross (the way a board build does it);
- the firmware's own tests (firmware/tests/test_*.py) pass under the real MicroPython 1.27 (npm
  @micropython/micropython-webassembly-pyscript, run by node via tools/micropython/run.mjs), both from
  source and with the firmware compiled to .mpy, and every firmware module imports there;
- the harness can fail: a failing test, a broken module, an empty run and a hung program are reported.

Nothing here is skipped: without node_modules the fixture runs `npm ci --prefix tools/micropython`.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tools import fwcheck

ROOT = fwcheck.ROOT
FIRMWARE = fwcheck.FIRMWARE
TOOLS = ROOT / "tools" / "micropython"
RUN_MJS = TOOLS / "run.mjs"
PKG_JSON = TOOLS / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "package.json"
MICROPYTHON_VERSION = "1.27.0"
# the link protocol's golden vectors live in the document (firmware/tests/test_link_vectors.py)
LINK_DOC = "%s:/docs/link-protocol.md" % (ROOT / "docs" / "link-protocol.md")
FIRMWARE_RUN_TIMEOUT = 300  # s; pure-Python crypto tests are ~7x slower on MicroPython than on CPython
ENTRY_SCRIPTS = {"boot.py", "main.py", "__main__.py"}  # run by the board, never imported
RESULT_RE = re.compile(r"^RESULT: (\d+) passed, (\d+) failed, (\d+) errors, (\d+) tests in ([\d.]+) s on "
                       r"(\w+) ([\d.]+)$", re.M)


class Run:
    def __init__(self, proc, seconds):
        self.rc, self.out, self.err, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds

    def result(self):
        found = RESULT_RE.findall(self.out)
        assert len(found) == 1, "expected one RESULT line:\n" + self.out + self.err
        passed, failed, errors, total, _secs, impl, version = found[0]
        return dict(passed=int(passed), failed=int(failed), errors=int(errors), total=int(total),
                    impl=impl, version=version)

    def __repr__(self):
        return "rc=%s (%.2f s)\n--- stdout\n%s--- stderr\n%s" % (self.rc, self.seconds, self.out, self.err)


def _run(cmd, timeout, env=None):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return Run(proc, time.monotonic() - t0)


@pytest.fixture(scope="session")
def micropython():
    """Returns run(*run_mjs_args, copy=[...], timeout=S) -> Run, using real node + wasm MicroPython."""
    node = shutil.which("node")
    if not node:
        pytest.fail("node (>= 18) is required for the MicroPython proof; it is never skipped")
    if not PKG_JSON.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("tools/micropython/node_modules is missing and npm is not installed")
        p = subprocess.run([npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund"],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            pytest.fail("npm ci --prefix tools/micropython failed:\n" + p.stdout + p.stderr)
    version = json.loads(PKG_JSON.read_text())["version"]
    assert version == MICROPYTHON_VERSION, "installed %s, pinned %s: run npm ci" % (version, MICROPYTHON_VERSION)

    def run(*args, copy=(), timeout=60):
        cmd = [node, str(RUN_MJS), "--timeout", str(timeout)]
        for c in copy:
            cmd += ["--copy", str(c)]
        return _run(cmd + [str(a) for a in args], timeout + 30)

    return run


def expected_tests():
    """module::test names defined at top level in firmware/tests/test_*.py, found statically."""
    names = []
    for path in sorted(fwcheck.TESTS_DIR.glob("test_*.py")):
        mod = fwcheck.module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        names += sorted({"%s::%s" % (mod, n.name) for n in tree.body
                         if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")})
    return names


def assert_all_passed(run, impl):
    """The run passed, really on `impl`, and ran every statically known firmware test."""
    expected = expected_tests()
    assert expected, "no firmware tests found: a run that executes zero tests proves nothing"
    assert run.rc == 0, run
    r = run.result()
    assert (r["failed"], r["errors"]) == (0, 0), run
    assert r["impl"] == impl, run
    if impl == "micropython":
        assert r["version"] == MICROPYTHON_VERSION, run
    assert r["passed"] == r["total"] >= len(expected), run
    passed = set(re.findall(r"^PASS (\S+) ", run.out, re.M))
    missing = [n for n in expected if n not in passed]
    assert not missing, "tests that did not run and pass: %s\n%r" % (missing, run)


# --- mpy-cross ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compiled_firmware(tmp_path_factory):
    """The firmware as a board gets it: every non-test, non-cpython-only file compiled to .mpy (native
    code per architecture)."""
    out = tmp_path_factory.mktemp("mpy")
    files = fwcheck.firmware_files(include_tests=False) + fwcheck.native_files()
    return out, files, fwcheck.compile_tree(files, out)


def test_mpy_cross_is_the_expected_compiler():
    assert "mpy v6.3" in fwcheck.mpy_cross_version(), fwcheck.mpy_cross_version()


def test_mpy_cross_compiles_every_firmware_file(compiled_firmware):
    out, files, failures = compiled_firmware
    assert FIRMWARE / "__init__.py" in files
    assert not [f for f in files if fwcheck.TESTS_DIR in f.parents]
    assert not failures, "mpy-cross rejected:\n" + "\n".join("%s: %s" % f for f in failures)
    native = [f for f in files if fwcheck.native_archs(f)]
    assert FIRMWARE / "crypto" / "native.viper" in native
    for src in files:
        rel = src.relative_to(ROOT).with_suffix(".mpy")
        if src in native:   # per architecture, never where a board without it would import it
            assert not (out / rel).exists()
            mpys = [out / a / rel for a in fwcheck.native_archs(src)]
        else:
            mpys = [out / rel]
        for mpy in mpys:
            assert mpy.read_bytes()[:2] == b"M\x06", "%s is not an mpy v6 file" % mpy  # 'M', version 6


def test_mpy_cross_rejection_is_reported(tmp_path):
    bad = tmp_path / "firmware" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    failures = fwcheck.compile_tree([bad], tmp_path / "out", root=tmp_path)
    assert [f[0] for f in failures] == ["firmware/bad.py"]
    assert "SyntaxError" in failures[0][1], failures


# --- the firmware tests under MicroPython -----------------------------------------------------------
@pytest.mark.micropython
def test_firmware_tests_pass_under_micropython(micropython):
    run = micropython("-m", "firmware.tests.runner", copy=[FIRMWARE, LINK_DOC], timeout=FIRMWARE_RUN_TIMEOUT)
    assert_all_passed(run, "micropython")


IMPORT_ALL = """
import sys
board_only = %r
for name in %r:
    try:
        m = __import__(name)
        m = sys.modules[name]
        print("IMPORTED", name, getattr(m, "__file__", "?"))
    except ImportError as e:
        missing = str(e).split("'")[1] if "'" in str(e) else ""
        if missing in board_only:
            print("BOARD-ONLY", name, "needs", missing)
        else:
            sys.print_exception(e)
            print("IMPORT-FAILED", name)
    except Exception as e:
        sys.print_exception(e)
        print("IMPORT-FAILED", name)
from firmware.tests import runner
runner.main([])
"""


@pytest.mark.micropython
def test_compiled_firmware_imports_and_passes_under_micropython(micropython, compiled_firmware, tmp_path):
    """The board's view: firmware as .mpy from mpy-cross (tests as source). Every module must import
    (or need only a board-only module such as machine) and the firmware tests must pass."""
    out, files, failures = compiled_firmware
    assert not failures
    tree = tmp_path / "firmware"
    shutil.copytree(out / "firmware", tree)
    shutil.copytree(fwcheck.TESTS_DIR, tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # boot.py/main.py/__main__.py are the board's entry scripts: importing them would run the board;
    # native code is installed on boards of its architecture only (the wasm build has none)
    modules = [fwcheck.module_name(f) for f in files if f.name not in ENTRY_SCRIPTS
               and not fwcheck.native_archs(f)]
    code = IMPORT_ALL % (sorted(fwcheck.BOARD_ONLY_MODULES), modules)
    run = micropython("-c", code, copy=[tree, LINK_DOC], timeout=FIRMWARE_RUN_TIMEOUT)
    imported = dict(re.findall(r"^IMPORTED (\S+) (\S+)$", run.out, re.M))
    board_only = re.findall(r"^BOARD-ONLY (\S+)", run.out, re.M)
    assert "IMPORT-FAILED" not in run.out, run
    assert sorted(list(imported) + board_only) == sorted(modules), run
    not_mpy = {m: f for m, f in imported.items() if not f.endswith(".mpy")}
    assert not not_mpy, "imported from source instead of .mpy: %s" % not_mpy
    assert_all_passed(run, "micropython")


def test_firmware_tests_pass_with_the_runner_on_cpython():
    run = _run([sys.executable, "-m", "firmware.tests.runner"], 120)
    assert_all_passed(run, "cpython")


# --- the harness can fail ---------------------------------------------------------------------------
GUARD_TESTS = '''
from firmware.tests.util import raises


def test_passes():
    assert raises(ValueError, int, "x")


def test_fails():
    assert 1 + 1 == 3, "deliberate failure"


def test_raises_wrong_exception():
    raises(KeyError, int, "x")  # ValueError escapes


def test_expected_exception_not_raised():
    raises(ValueError, int, "1")
'''


@pytest.fixture
def guard_package(tmp_path):
    pkg = tmp_path / "guardpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "test_guard.py").write_text(GUARD_TESTS)
    (pkg / "test_broken.py").write_text("import no_such_module_anywhere\n\ndef test_never_runs():\n    pass\n")
    (tmp_path / "emptypkg").mkdir()
    (tmp_path / "emptypkg" / "__init__.py").write_text("")
    (tmp_path / "emptypkg" / "test_nothing.py").write_text("X = 1\n")
    return tmp_path


def _check_guard_runs(run_runner):
    run = run_runner("-p", "guardpkg")
    assert run.rc == 1, run
    assert run.result() == dict(run.result(), passed=1, failed=3, errors=1, total=4), run
    out = run.out
    assert "PASS guardpkg.test_guard::test_passes" in out, run
    assert "FAIL guardpkg.test_guard::test_fails" in out and "deliberate failure" in out, run
    assert "FAIL guardpkg.test_guard::test_raises_wrong_exception" in out and "ValueError" in out, run
    assert "did not raise ValueError" in out, run
    assert "ERROR guardpkg.test_broken" in out and "no_such_module_anywhere" in out, run
    assert re.search(r'File "\S*test_guard.py", line \d+, in test_fails', out), "no traceback:\n%r" % run

    one = run_runner("-p", "guardpkg", "test_guard::test_passes")
    assert one.rc == 0 and one.result()["passed"] == one.result()["total"] == 1, one
    missing = run_runner("-p", "guardpkg", "test_guard::test_no_such_test")
    assert missing.rc == 1 and missing.result()["errors"] == 1, missing
    empty = run_runner("-p", "emptypkg")
    assert empty.rc == 1 and empty.result()["total"] == 0 and "no tests ran" in empty.out, empty


@pytest.mark.micropython
def test_harness_reports_failures_under_micropython(micropython, guard_package):
    copies = [FIRMWARE, guard_package / "guardpkg", guard_package / "emptypkg"]
    _check_guard_runs(lambda *args: micropython("-m", "firmware.tests.runner", *args, copy=copies))


def test_harness_reports_failures_on_cpython(guard_package):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard_package), str(ROOT)]))
    _check_guard_runs(lambda *args: _run([sys.executable, "-m", "firmware.tests.runner", *args], 120, env))


# --- run.mjs itself ---------------------------------------------------------------------------------
@pytest.mark.micropython
def test_run_mjs_times_out_instead_of_hanging(micropython):
    run = micropython("-c", "print('started', end='')\nwhile True:\n    pass", timeout=1)
    assert run.rc == 124, run
    assert "timed out after 1 s" in run.err, run
    assert run.out.startswith("started"), run  # the unflushed partial line is not lost
    assert run.seconds < 15, run


@pytest.mark.micropython
@pytest.mark.parametrize("code,rc,stream,text", [
    ("import sys; print('out'); sys.exit(3)", 3, "out", "out"),
    ("raise SystemExit", 0, "err", ""),
    ("raise SystemExit('bye')", 1, "err", "bye"),
    ("def f():\n    1 // 0\nf()", 1, "err", 'File "<string>", line 2, in f'),
    ("input()", 1, "err", "OSError: input() has no stdin under run.mjs"),  # would spin forever
    ("import sys; print(sys.implementation.name, sys.implementation.version[:3])", 0, "out",
     "micropython (1, 27, 0)"),
])
def test_run_mjs_exit_status_and_output(micropython, code, rc, stream, text):
    run = micropython("-c", code)
    assert run.rc == rc, run
    assert text in getattr(run, stream), run
    assert "_run_mjs" not in run.err, run  # the bootstrap's own frames are not shown


@pytest.mark.micropython
def test_run_mjs_copies_trees_and_runs_modules_as_main(micropython, tmp_path):
    app = tmp_path / "app"
    (app / "pkg" / "sub").mkdir(parents=True)
    (app / "pkg" / "__init__.py").write_text("print('pkg imported')\n")
    (app / "pkg" / "sub" / "__init__.py").write_text("X = 5\n")
    (app / "pkg" / "sub" / "mod.py").write_text(
        "import sys, os\nimport pkg.sub\nprint(__name__, sys.argv, pkg.sub.X, os.getcwd())\n")
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    run = micropython("--cwd", "/lib", "-m", "pkg.sub.mod", "a", "b c", copy=["%s:/lib/pkg" % (app / "pkg")])
    assert run.rc == 0, run
    assert run.out.splitlines() == ["pkg imported", "__main__ ['/lib/pkg/sub/mod.py', 'a', 'b c'] 5 /lib"], run
    listing = micropython("-c", "import os; print(sorted(os.listdir('/pkg')))", copy=[app / "pkg"])
    assert listing.out.strip() == "['__init__.py', 'sub']", listing  # caches are not copied
    script = micropython("/s.py", "z", copy=["%s:/s.py" % (app / "pkg" / "sub" / "__init__.py")])
    assert script.rc == 0, script
    missing = micropython("-m", "no.such.mod")
    assert missing.rc == 1 and "no module named 'no.such.mod'" in missing.err, missing


@pytest.mark.micropython
def test_rule_premises_hold_on_real_runtimes(micropython, tmp_path):
    """Every static rule in tools/fwcheck.py is backed by a snippet that runs on CPython and fails on
    MicroPython 1.27: the checker claims no incompatibility that is not real."""
    script = tmp_path / "proofs.py"
    script.write_text("PROOFS = %r\n" % (fwcheck.PROOFS,) + """
import sys
for i, (rule, src) in enumerate(PROOFS):
    try:
        exec(src, {"__name__": "proof"})
        print("RAN", i)
    except Exception as e:
        print("RAISED", i, type(e).__name__)
""")
    cpy = _run([sys.executable, str(script)], 60)
    mpy = micropython("/proofs.py", copy=["%s:/proofs.py" % script])
    n = len(fwcheck.PROOFS)
    assert re.findall(r"^RAN (\d+)$", cpy.out, re.M) == [str(i) for i in range(n)], cpy
    raised = re.findall(r"^RAISED (\d+) ", mpy.out, re.M)
    assert raised == [str(i) for i in range(n)], "these run fine on MicroPython: %s\n%r" % (
        [fwcheck.PROOFS[i] for i in range(n) if str(i) not in raised], mpy)
