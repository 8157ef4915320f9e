"""Tests of the test harness itself (util.raises and runner.py); they run under pytest, and under
runner.py on CPython and MicroPython."""
from firmware.tests import runner
from firmware.tests.util import raises


def _boom(exc, msg=""):
    raise exc(msg)


def test_raises_returns_the_exception():
    e = raises(ValueError, _boom, ValueError, "bad value")
    assert isinstance(e, ValueError)
    assert str(e) == "bad value", str(e)


def test_raises_passes_arguments_through():
    e = raises(ValueError, int, "not a number")
    assert isinstance(e, ValueError)
    assert raises(KeyError, {}.__getitem__, "k") is not None


def test_raises_accepts_a_subclass_and_a_tuple():
    assert isinstance(raises(LookupError, _boom, KeyError), KeyError)
    assert isinstance(raises((TypeError, IndexError), _boom, IndexError), IndexError)


def test_raises_fails_when_nothing_is_raised():
    # the helper's own failure is an AssertionError, so it can be checked with itself
    e = raises(AssertionError, raises, ValueError, len, b"ok")
    assert "did not raise ValueError" in str(e), str(e)


def test_raises_lets_an_unexpected_exception_through():
    # a KeyError is not what was expected: it must propagate, not be swallowed or turned into a pass
    e = raises(KeyError, raises, ValueError, _boom, KeyError, "other")
    assert isinstance(e, KeyError)


def test_raises_checks_the_message():
    assert raises(ValueError, _boom, ValueError, "frame too short", contains="too short")

    def wrong_message():
        # (nested here: passed straight to an outer raises(), contains= would be the outer one's)
        raises(ValueError, _boom, ValueError, "frame too short", contains="CRC")

    e = raises(AssertionError, wrong_message)
    assert "CRC" in str(e) and "frame too short" in str(e), str(e)


def test_raises_as_context_manager():
    with raises(ZeroDivisionError) as r:
        1 // 0  # noqa: B018 - the expression is the point: it raises
    assert isinstance(r.value, ZeroDivisionError)
    failed = False
    try:
        with raises(ZeroDivisionError):
            pass
    except AssertionError:
        failed = True
    assert failed


class _FakeModule:
    """Stands in for a test module: the runner only uses dir() and getattr() on it."""


def _fake_module():
    m = _FakeModule()

    def ok():
        pass

    def bad():
        assert 1 + 1 == 3, "arithmetic"

    def gen():
        yield 1

    m.test_ok = ok
    m.test_bad = bad
    m.test_generator = gen
    m.test_not_callable = 42
    m.helper = ok
    return m


def test_collect_finds_only_test_callables_sorted():
    names = [n for n, _ in runner.collect(_fake_module())]
    assert names == ["test_bad", "test_generator", "test_ok"], names


def test_run_test_counts_pass_fail_and_reports_traceback():
    result = runner.Result()
    lines = []
    for name, func in runner.collect(_fake_module()):
        runner.run_test(name, func, result, lines.append)
    assert result.passed == 1, result.passed
    # test_generator fails too: calling it runs nothing, which must not count as a pass
    assert result.failed == ["test_bad", "test_generator"], result.failed
    text = "\n".join(lines)
    assert "FAIL test_bad" in text and "arithmetic" in text and "AssertionError" in text, text
    assert "PASS test_ok" in text, text
    assert not result.ok


def test_result_with_no_tests_is_not_ok():
    assert not runner.Result().ok


def test_discover_finds_this_module():
    mods = runner.discover("firmware.tests")
    assert "firmware.tests.test_runner_selftest" in mods, mods
    assert "firmware.tests.runner" not in mods and "firmware.tests.util" not in mods, mods


def test_parse_selection_forms():
    p = runner.parse_selection
    assert p("test_link") == ("firmware.tests.test_link", None)
    assert p("firmware.tests.test_link") == ("firmware.tests.test_link", None)
    assert p("firmware/tests/test_link.py::test_crc") == ("firmware.tests.test_link", "test_crc")
    assert p("test_x::test_y", "other.pkg") == ("other.pkg.test_x", "test_y")


def test_summary_line_format():
    r = runner.Result()
    r.passed = 3
    r.failed = ["m::t"]
    line = runner.summary(r, 0.25)
    assert line.startswith("RESULT: 3 passed, 1 failed, 0 errors, 4 tests in 0.250 s on "), line
    assert line.endswith(runner.IMPL + " " + runner.VERSION), line
