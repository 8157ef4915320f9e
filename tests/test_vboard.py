"""The virtual MicroPython board (tools/vboard): real MicroPython 1.27 (wasm) behind two ptys, driven
by the real mpremote CLI and pyserial, as a board on the bench would be."""
import hashlib
import os
import re
import subprocess
import sys
import time

import pytest
import serial

from tools.vboard import VirtualBoard, lookup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vb():
    b = VirtualBoard()
    yield b
    b.close()


def mpremote(vb, *args, timeout=60, check=True):
    p = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.repl] + list(args),
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def read_until(s, needle, timeout=5):
    buf = b""
    t0 = time.monotonic()
    while needle not in buf and time.monotonic() - t0 < timeout:
        buf += s.read(4096)
    return buf


def test_inv_vboard_prints_its_two_ptys():
    p = subprocess.Popen([sys.executable, "-m", "invoke", "vboard"], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        repl = p.stdout.readline()
        link = p.stdout.readline()
        assert re.fullmatch(r"repl: /dev/pts/\d+\n", repl), repl
        assert re.fullmatch(r"link: /dev/pts/\d+\n", link), link
        repl, link = repl.split()[1], link.split()[1]
        entry = lookup(repl)
        assert entry is not None and entry["link"] == link      # `inv flash` finds the link from the REPL
        with serial.Serial(repl, timeout=0.1) as s:
            s.write(b"\r")
            assert read_until(s, b">>> ").endswith(b">>> ")
            s.write(b"print(6 * 7)\r")
            assert b"\r\n42\r\n>>> " in read_until(s, b"42\r\n>>> ")   # a board's console says \r\n
    finally:
        p.terminate()
        p.wait(10)
    assert lookup(repl) is None                                  # unregistered on exit


def test_mpremote_exec_and_fs_round_trip(vb, tmp_path):
    assert mpremote(vb, "exec", "import sys; print(sys.implementation._mpy)").stdout.strip() == "774"  # v6.3
    data = os.urandom(20000)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    t0 = time.monotonic()
    mpremote(vb, "fs", "mkdir", ":d1", "+", "fs", "cp", str(src), ":d1/data.bin")
    took = time.monotonic() - t0
    ls = mpremote(vb, "fs", "ls", ":d1").stdout
    assert re.search(r"\b20000 data\.bin", ls), ls                 # ilistdir sizes are filled in
    h = mpremote(vb, "fs", "sha256sum", ":d1/data.bin").stdout
    assert hashlib.sha256(data).hexdigest() in h, h
    back = tmp_path / "back.bin"
    mpremote(vb, "fs", "cp", ":d1/data.bin", str(back))
    assert back.read_bytes() == data
    # the flash is a host directory that survives resets
    assert open(os.path.join(vb.flash, "d1", "data.bin"), "rb").read() == data
    # errnos are MicroPython's (WASI's ENOENT is 44): mpremote names the error
    p = mpremote(vb, "fs", "rm", ":no/such/file", check=False)
    assert p.returncode != 0 and "No such file" in p.stdout + p.stderr, (p.stdout, p.stderr)
    p = mpremote(vb, "fs", "mkdir", ":d1", check=False)
    assert p.returncode != 0 and "exists" in (p.stdout + p.stderr).lower(), (p.stdout, p.stderr)
    mpremote(vb, "fs", "rm", ":d1/data.bin", "+", "fs", "rmdir", ":d1")
    assert not os.path.exists(os.path.join(vb.flash, "d1"))
    # raw-paste is emulated: 20 KB go in well under the 1.8 s of the 256-bytes-per-10-ms fallback
    assert took < 1.5, took


def test_soft_and_hard_resets_and_the_reset_cause(vb):
    # mpremote soft-resets on connect; `resume` skips that
    assert mpremote(vb, "exec", "import machine; print(machine.reset_cause())").stdout.strip() == "5"
    mpremote(vb, "exec", "with open('keep.txt', 'w') as f:\n    f.write('kept')", "+", "reset")
    time.sleep(0.5)
    out = mpremote(vb, "resume", "exec",
                   "import machine; print(machine.reset_cause(), open('keep.txt').read())")
    assert out.stdout.split() == ["2", "kept"], out.stdout                 # HARD_RESET, files kept
    st = vb.command("status")
    assert st["cause"] == "hard" and st["boots"] >= 2, st
    mpremote(vb, "fs", "rm", ":keep.txt")


def test_watchdog_resets_a_board_that_stops_feeding_it(vb):
    before = vb.command("status")["boots"]
    mpremote(vb, "exec", "import machine\nw = machine.WDT(timeout=300)\nw.feed()")
    time.sleep(1.0)                        # nobody feeds it at the REPL
    st = vb.command("status")
    assert st["boots"] == before + 2 and st["cause"] == "wdt", st     # mpremote's soft reset, then the WDT
    out = mpremote(vb, "resume", "exec", "import machine; print(machine.reset_cause())")
    assert out.stdout.strip() == "3", out.stdout                           # WDT_RESET


def test_ctrl_c_interrupts_sleep_and_input_works(vb):
    with serial.Serial(vb.repl, timeout=0.1) as s:
        s.write(b"\r\x03\x02\r")
        read_until(s, b">>> ")
        s.write(b"import time; time.sleep(30)\r")
        time.sleep(0.3)
        t0 = time.monotonic()
        s.write(b"\x03")
        out = read_until(s, b"KeyboardInterrupt", timeout=3)
        assert b"KeyboardInterrupt" in out and time.monotonic() - t0 < 1.5, out
        read_until(s, b">>> ")
        s.write(b"x = input('? ')\r")
        read_until(s, b"? ")
        s.write(b"typed\r")
        read_until(s, b">>> ")
        s.write(b"print(x.upper())\r")
        assert b"TYPED" in read_until(s, b"TYPED\r\n")


def test_a_wedged_loop_is_hard_reset_and_main_py_runs_after_a_soft_reset(vb):
    before = vb.command("status")["boots"]
    with serial.Serial(vb.repl, timeout=0.1) as s:
        s.write(b"\r\x03\x02\r")
        read_until(s, b">>> ")
        s.write(b"while True: pass\r\r")          # no call out of wasm: Ctrl-C cannot reach it
        time.sleep(0.2)
        s.write(b"\x03")
        out = read_until(s, b"MicroPython v1.27", timeout=8)
        assert b"MicroPython v1.27" in out, out   # the bridge's guard reset the board
    st = vb.command("status")
    assert st["boots"] == before + 1 and st["cause"] == "hard", st
    mpremote(vb, "exec", "with open('main.py', 'w') as f:\n    f.write(\"import time\\nprint('MAIN RUNNING')"
                         "\\nwhile True:\\n    time.sleep(0.05)\\n\")")
    try:
        with serial.Serial(vb.repl, timeout=0.1) as s:
            s.write(b"\r\x03\x02\r")
            read_until(s, b">>> ")
            s.write(b"\x04")                          # soft reset at the friendly REPL
            out = read_until(s, b"MAIN RUNNING")
            assert b"MPY: soft reboot\r\n" in out and b"MAIN RUNNING" in out, out
            s.write(b"\x03")                          # main.py's sleep is interruptible
            out = read_until(s, b">>> ")
            assert b"KeyboardInterrupt" in out and out.endswith(b">>> "), out
    finally:
        mpremote(vb, "fs", "rm", ":main.py")


def test_hang_freezes_the_board_until_resume(vb):
    with serial.Serial(vb.repl, timeout=0.1) as s:
        s.write(b"\r\x03\x02\r")
        read_until(s, b">>> ")
        s.write(b"import time\r")
        read_until(s, b">>> ")
        vb.command("hang")
        s.write(b"time.sleep_ms(1); print('r' + 'an')\r")     # the REPL echoes the line, then sleeps
        seen = read_until(s, b"\r\nran\r\n", timeout=0.8)
        assert b"\r\nran\r\n" not in seen, seen
        vb.command("resume")
        seen += read_until(s, b"ran\r\n>>> ", timeout=3)
        assert b"\r\nran\r\n>>> " in seen, seen
