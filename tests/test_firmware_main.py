"""firmware/main.py's ways out, on CPython with stand-ins for the board's hardware modules
(`machine`, the link port): the real ones exist on boards only (the virtual board's HIL suite
runs main.py for real, tests/test_vboard.py, hil_tests/ --board mpy-virtual).

Whichever way the loop ends, the SAD is flushed and the keys zeroed before the REPL or a reset;
a reset the firmware makes after a failure is reported as RESET_CRASH at the next boot, not as
the watchdog an RP2040's machine.reset() looks like; a MemoryError outside a request does not
reset the board; the profile's cpu_hz is set."""
import json
import sys
import types

import pytest

from firmware.link import messages as m


class Reset(Exception):
    """machine.reset() does not return."""


@pytest.fixture
def board_env(tmp_path, monkeypatch):
    """A board's filesystem (board.json in the cwd) and hardware modules; yields
    (main module, machine stand-in, the run() the test sets)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "board.json").write_text(json.dumps(
        {"board_id": "t", "mcu": "rp2040", "max_sas": 8, "max_frame": 4096, "max_batch": 8,
         "host_silence_ms": 0, "cpu_hz": 240_000_000, "crypto": "pure", "link": {"kind": "vboard"},
         "link_auth": True}))
    (tmp_path / "link.key").write_text("5a" * 32 + "\n")       # as `inv flash` writes it
    machine = types.ModuleType("machine")
    machine.PWRON_RESET, machine.WDT_RESET = 1, 3     # the rp2 port's two causes
    machine.cause = 3                                 # what an RP2040 says after machine.reset()
    machine.reset_cause = lambda: machine.cause
    machine.hz = 160_000_000
    machine.freq = lambda *a: setattr(machine, "hz", a[0]) if a else machine.hz

    def reset():
        raise Reset()
    machine.reset = reset
    vboard = types.ModuleType("vboard")
    vboard.link_open = vboard.link_wait = lambda *a: None
    vboard.link_read = lambda buf: 0
    vboard.link_write = lambda data: None
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "vboard", vboard)
    for name in ("firmware.main", "firmware.ports.vlink"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import importlib
    main = importlib.import_module("firmware.main")      # a fresh one, bound to these modules
    from firmware import runloop
    boards = []

    def run_with(behaviour):
        def run(board, port, feed, clock):
            if not boards:
                spec = m.SaSpec(0x1000, m.DIR_OUT, m.ENCR_AES_CBC, bytes(range(1, 17)),
                                m.AUTH_HMAC_SHA2_256_128, bytes(range(1, 33)))
                assert board.sad.add(spec) == m.OK
                boards.append((board, spec))
            return behaviour()
        monkeypatch.setattr(runloop, "run", run)
    monkeypatch.setattr(main.time, "sleep", lambda s: None)
    monkeypatch.setattr(main.runloop, "Clock", lambda: (lambda: 0))
    # MicroPython's gc.mem_free and sys.print_exception
    monkeypatch.setattr(main, "gc", types.SimpleNamespace(collect=lambda: None, mem_free=lambda: 0))
    monkeypatch.setattr(main, "sys", types.SimpleNamespace(print_exception=lambda e: None))
    yield main, machine, run_with, boards
    sys.modules.pop("firmware.main", None)


def _flushed(boards):
    board, spec = boards[0]
    return len(board.sad) == 0 and spec.encr_key == bytes(16) and spec.integ_key == bytes(32)


def test_ctrl_c_flushes_the_sad_before_the_repl(board_env):
    main, machine, run_with, boards = board_env

    def interrupt():
        raise KeyboardInterrupt
    run_with(interrupt)
    main.main()
    assert _flushed(boards)
    assert machine.hz == 240_000_000                  # cpu_hz from board.json


def test_a_crash_resets_with_a_marker_and_the_next_boot_says_crash(board_env, tmp_path):
    main, machine, run_with, boards = board_env

    def crash():
        raise RuntimeError("a bug")
    run_with(crash)
    with pytest.raises(Reset):
        main.main()
    assert _flushed(boards) and (tmp_path / main.CRASH_MARKER).exists()
    assert main.reset_cause() == m.RESET_CRASH        # not WDT, though machine.reset_cause() says so
    assert not (tmp_path / main.CRASH_MARKER).exists()
    assert main.reset_cause() == m.RESET_WDT          # the watchdog itself, with no marker
    machine.cause = 1
    assert main.reset_cause() == m.RESET_POWER_ON


def test_a_commanded_reset_flushes_and_says_command(board_env, tmp_path):
    main, machine, run_with, boards = board_env
    run_with(lambda: "reset")
    with pytest.raises(Reset):
        main.main()
    assert _flushed(boards) and main.reset_cause() == m.RESET_COMMAND


def test_memory_error_outside_a_request_is_counted_and_the_loop_goes_on(board_env):
    main, machine, run_with, boards = board_env
    calls = []

    def full_then_interrupt():
        calls.append(1)
        if len(calls) < 3:
            raise MemoryError
        board, _ = boards[0]
        assert len(board.sad) == 1                     # the SAD survived both
        raise KeyboardInterrupt
    run_with(full_then_interrupt)
    main.main()
    board, _ = boards[0]
    assert len(calls) == 3 and board.counters["memory_errors"] == 2 and _flushed(boards)


def test_without_its_link_key_a_board_serves_no_link(board_env, tmp_path, capsys):
    """The profile wants an authenticated link: no link.key (or a broken one), no link at all —
    never an open one — and the REPL keeps the board."""
    main, machine, run_with, boards = board_env
    run_with(lambda: "reset")
    for content in (None, "not a key\n"):
        if content is None:
            (tmp_path / "link.key").unlink()
        else:
            (tmp_path / "link.key").write_text(content)
        assert main.main() is None and boards == []
        assert "no usable link key in link.key" in capsys.readouterr().out


def test_the_board_runs_with_the_key_it_was_flashed_with(board_env):
    main, machine, run_with, boards = board_env
    run_with(lambda: None)
    main.main()
    board = boards[0][0]
    assert board.auth is not None and board.auth.key == bytes.fromhex("5a" * 32)
