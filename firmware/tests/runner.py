"""A tiny test runner for the firmware's own tests that runs on CPython and on MicroPython (>= 1.22).

    python -m firmware.tests.runner [-p PACKAGE] [-q] [TEST ...]
    node tools/micropython/run.mjs --copy firmware -m firmware.tests.runner [-p PACKAGE] [-q] [TEST ...]

It imports every PACKAGE/test_*.py (default package firmware.tests; found with os.listdir, .py or .mpy)
and calls every top-level callable named test_* in it, in name order. TEST selects instead: a module
(`test_link`, `firmware.tests.test_link`, `firmware/tests/test_link.py`) or one test (`test_link::test_crc`).

Conventions for test modules (the same modules are collected by pytest on CPython):
- plain `def test_x():` functions with plain asserts; no fixtures, no parameters, no classes, no pytest
  import. MicroPython has no assertion rewriting: write `assert a == b, (a, b)` to see the values.
- expected exceptions: firmware.tests.util.raises (call or `with` form).
- a test must not rely on running after another one, nor on definition order.

Output: `PASS name (N ms)`, `FAIL name` followed by the exception's traceback, `ERROR module` when a
module cannot be imported, then the last line
    RESULT: P passed, F failed, E errors, T tests in S s on micropython 1.27.0
Exit status 0 only if nothing failed, no module failed to import and at least one test ran.
"""
import sys
import os
import time

IMPL = sys.implementation.name
VERSION = ".".join(str(v) for v in sys.implementation.version[:3])
DEFAULT_PACKAGE = "firmware.tests"


if hasattr(time, "ticks_ms"):  # MicroPython: wrap-safe millisecond ticks

    def _now_ms():
        return time.ticks_ms()

    def _since_ms(t0):
        return time.ticks_diff(time.ticks_ms(), t0)

else:

    def _now_ms():
        return time.perf_counter() * 1000  # mpy-ok: CPython branch

    def _since_ms(t0):
        return time.perf_counter() * 1000 - t0  # mpy-ok: CPython branch


def format_exception(exc):
    """The exception with its traceback as text, as well as this runtime can tell it."""
    if hasattr(sys, "print_exception"):  # MicroPython
        import io

        buf = io.StringIO()
        sys.print_exception(exc, buf)
        return buf.getvalue()
    import traceback  # mpy-ok: CPython branch

    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop the runner's own frame
    return "".join(traceback.format_exception(type(exc), exc, tb))


def package_dir(package):
    """Directory of an importable package, on both runtimes (MicroPython's __path__ is a str)."""
    __import__(package)
    mod = sys.modules[package]
    p = getattr(mod, "__path__", None)
    if isinstance(p, str):
        return p
    if p:
        return list(p)[0]
    return mod.__file__.rsplit("/", 1)[0]


def discover(package=DEFAULT_PACKAGE):
    """Sorted dotted names of the package's test_*.py / test_*.mpy modules."""
    names = set()
    for fn in os.listdir(package_dir(package)):
        if fn.startswith("test_") and (fn.endswith(".py") or fn.endswith(".mpy")):
            names.add(fn.rsplit(".", 1)[0])
    return [package + "." + n for n in sorted(names)]


def parse_selection(arg, package=DEFAULT_PACKAGE):
    """'test_x', 'pkg.test_x', 'pkg/test_x.py', each optionally '::test_name' -> (module, test or None)."""
    test = None
    if "::" in arg:
        arg, test = arg.split("::", 1)
    if arg.endswith(".py"):
        arg = arg[:-3].replace("/", ".")
    if "." not in arg:
        arg = package + "." + arg
    return arg, test


def collect(module):
    """(name, function) for the module's top-level test_* callables, sorted by name (MicroPython's dicts
    do not keep definition order)."""
    tests = []
    for name in sorted(dir(module)):
        if name.startswith("test_"):
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, type):
                tests.append((name, obj))
    return tests


class Result:
    def __init__(self):
        self.passed = 0
        self.failed = []  # names of failed tests
        self.errors = []  # names of modules that could not be imported

    @property
    def total(self):
        return self.passed + len(self.failed)

    @property
    def ok(self):
        return not self.failed and not self.errors and self.total > 0


def run_test(name, func, result, out, quiet=False):
    t0 = _now_ms()
    try:
        ret = func()
        if ret is not None and hasattr(ret, "send"):
            ret.close()
            raise AssertionError("test returned a generator or coroutine, so its body never ran; "
                                 "drive it yourself (e.g. asyncio) inside a plain function")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036 - a test calling sys.exit() is a failed test too
        result.failed.append(name)
        out("FAIL %s (%d ms)" % (name, _since_ms(t0)))
        out(format_exception(e).rstrip("\n"))
        return
    result.passed += 1
    if not quiet:
        out("PASS %s (%d ms)" % (name, _since_ms(t0)))


def import_module(name):
    __import__(name)
    return sys.modules[name]


def run(selection=None, package=DEFAULT_PACKAGE, out=print, quiet=False):
    """Run the selected tests (default: all discovered in package); return a Result."""
    result = Result()
    if selection:
        plan = [parse_selection(a, package) for a in selection]
    else:
        plan = [(m, None) for m in discover(package)]
    for modname, only in plan:
        try:
            module = import_module(modname)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B036 - SyntaxError, ImportError, even sys.exit() at import
            result.errors.append(modname)
            out("ERROR %s (import failed)" % modname)
            out(format_exception(e).rstrip("\n"))
            continue
        tests = collect(module)
        if only is not None:
            tests = [t for t in tests if t[0] == only]
            if not tests:
                result.errors.append(modname + "::" + only)
                out("ERROR %s::%s (no such test)" % (modname, only))
                continue
        for name, func in tests:
            run_test(modname + "::" + name, func, result, out, quiet)
    return result


def summary(result, seconds):
    return "RESULT: %d passed, %d failed, %d errors, %d tests in %.3f s on %s %s" % (
        result.passed, len(result.failed), len(result.errors), result.total, seconds, IMPL, VERSION)


USAGE = "usage: runner [-p PACKAGE] [-q] [TEST ...]   (TEST: test_mod, pkg.test_mod or test_mod::test_name)"


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    package = DEFAULT_PACKAGE
    quiet = False
    selection = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-p", "--package"):
            if i + 1 == len(argv):
                print(USAGE)
                sys.exit(2)
            package = argv[i + 1]
            i += 1
        elif a in ("-q", "--quiet"):
            quiet = True
        elif a in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        elif a.startswith("-"):
            print(USAGE)
            sys.exit(2)
        else:
            selection.append(a)
        i += 1
    t0 = _now_ms()
    result = run(selection, package, quiet=quiet)
    if result.failed or result.errors:
        print("FAILED: " + " ".join(result.errors + result.failed))
    if result.total == 0:
        print("no tests ran")
    print(summary(result, _since_ms(t0) / 1000))
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
