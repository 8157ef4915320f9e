"""The HIL bench plumbing (hil_tests/bench.py): which bench and reset a profile gets, the throttled
simulator, and option errors. The suite itself runs in hil_tests/ (sim) and on mpy-virtual."""
import os
import subprocess
import sys
import time

import pytest

from firmware import profiles
from hil_tests import bench as hb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_throttled_sim_runs_at_the_profiles_baud():
    b = hb.open_bench("sim", throttle="esp32-devkitc")
    try:
        assert b.throttle == 921600
        assert b.link_options["byte_time"] == pytest.approx(10 / 921600)
    finally:
        b.close()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "hil_tests", "--board", "sim",
                        "--throttle", "esp32-devkitc",
                        "-q", "-k", "hello_reports or bookkeeping or resync"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0 and "3 passed" in p.stdout, p.stdout + p.stderr
    assert time.monotonic() - t0 < 120


def test_bench_properties_come_from_the_profile():
    vb = hb.Bench("mpy-virtual", "/dev/null")
    sim = hb.Bench("sim", "/dev/null")
    assert vb.scale == 0.1 and sim.scale == 1.0
    assert vb.scaled(10000) == 1000 and vb.scaled(10, minimum=50) == 50
    assert vb.link_options == {"rto_min": 0.02}
    assert vb.fast_period == 0.1 and sim.fast_period == 0.02
    # a board that boots slower than heartbeats are missed is first seen missing them
    assert "missed-heartbeats" in vb.reset_loss_reasons
    assert sim.reset_loss_reasons == ("unsolicited-hello", "boot-id-changed")


def test_real_board_resets_follow_the_profile():
    esp = hb.make_resetter(profiles.load("esp32-devkitc"), "/dev/ttyUSB1", "/dev/ttyUSB0")
    assert isinstance(esp, hb.LineReset) and (esp.device, esp.line) == ("/dev/ttyUSB0", "rts")
    pico = hb.make_resetter(profiles.load("rp2040-pico"), "/dev/ttyUSB1", None)
    assert isinstance(pico, hb.LineReset)
    assert (pico.device, pico.line, pico.pulse) == ("/dev/ttyUSB1", "dtr", 0.05)
    spi = hb.make_resetter(profiles.load("rp2040-pico-spi"), "ftdi://ftdi:232h/1", None)
    assert isinstance(spi, hb.FtdiGpioReset) and (spi.url, spi.gpio) == ("ftdi://ftdi:232h/1", 5)
    virt = hb.make_resetter(profiles.load("mpy-virtual"), "/dev/pts/1", None)
    with pytest.raises(RuntimeError, match="control socket"):
        virt()


def test_line_reset_pulses_a_real_pty():
    """pyserial on a pty: the modem-control ioctl fails, and says so (a real adapter has lines)."""
    master, slave = os.openpty()
    try:
        with pytest.raises(Exception) as e:
            hb.LineReset(os.ttyname(slave), "rts", 10)()
        assert "Errno" in str(e.value) or "Inappropriate" in str(e.value)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("args,words", [
    (("mpy-virtual", None, None, "115200"), "--throttle paces the simulated board"),
    (("esp32-devkitc", None, None, None), "needs --port"),
    (("sim", None, None, "nope"), "no board profile 'nope'"),
])
def test_bench_option_errors(args, words):
    with pytest.raises((RuntimeError, profiles.ProfileError), match=words):
        hb.open_bench(*args)
