"""Bad arguments to the programs and tools: one line naming what is wrong, exit code 2, no
traceback — as a user running them from a shell sees it."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    (["-m", "firmware.sim", "--profile", "nosuch"], "no board profile 'nosuch'"),
    (["-m", "firmware.sim", "--profile", "/etc/"], "--profile"),
    (["-m", "firmware.sim", "--socket", "127.0.0.1:http"], "--socket"),
    (["-m", "firmware.sim", "--baud", "-5"], "--baud must be positive"),
    (["-m", "firmware.sim", "--control", "/nonexistent/dir/ctl"], "--control"),
    (["-m", "firmware.sim", "--reset-every", "0"], "--reset-every must be positive"),
    (["-m", "tools.flash", "--board", "nosuch", "--port", "/dev/null"], "no board profile 'nosuch'"),
    (["-m", "tools.flash", "--board", "sim", "--port", "/dev/ttyUSB77"], "no such device"),
    (["-m", "tools.flash_micropython", "--board", "esp32-devkitc", "--port", "/dev/null", "--image", "/nonexist"],
     "no image file"),
    (["-m", "tools.vboard", "--heapsize", "12"], "--heapsize"),
    (["-m", "host", "--log-level", "loud"], "--log-level"),
    (["-m", "host.control", "terminate"], "terminate needs a connection name or --ike-id"),
    (["-m", "host.control", "frobnicate"], "invalid choice"),
    (["-m", "host.control", "terminate", "--ike-id", "x"], "--ike-id"),
    ([os.path.join(ROOT, "tools", "install.py"), "--wheel", "/nonexist.whl"], "--wheel"),
]


@pytest.mark.parametrize("args,says", CASES, ids=[" ".join(a[1:3]) for a, _ in CASES])
def test_bad_arguments_one_line_exit_2(args, says):
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr and ": error: " in r.stderr, r.stderr


def test_a_link_key_others_can_read_or_that_is_no_key(tmp_path):
    """The simulator's --link-key: refused, with the file and what to do, not used."""
    key = tmp_path / "b0.key"
    key.write_text("ab" * 32 + "\n")
    os.chmod(key, 0o644)
    test_bad_arguments_one_line_exit_2(["-m", "firmware.sim", "--link-key", str(key)], "chmod 600")
    os.chmod(key, 0o600)
    key.write_text("not a key\n")
    test_bad_arguments_one_line_exit_2(["-m", "firmware.sim", "--link-key", str(key)], "64 hex digits")
