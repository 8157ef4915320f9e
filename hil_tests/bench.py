"""The bench under test: the simulated board (default), the virtual MicroPython board, or a real
board on a port.

Everything board-specific — starting the simulator or the virtual board, flashing, resetting,
hanging, how slow the board is — lives here, so the tests in this folder run unchanged on any bench:

    inv hil                                             # simulated board on a pty (default)
    inv hil --throttle esp32-devkitc                    # ... paced like that profile's UART (921600 baud)
    inv hil --board mpy-virtual                         # real MicroPython (wasm), flashed with mpremote
    inv hil --board rp2040-emu                          # MicroPython's rp2 port on an emulated RP2040
    inv hil --board esp32-devkitc --port /dev/ttyUSB1 --reset /dev/ttyUSB0
    inv hil --board rp2040-pico-spi --port ftdi://ftdi:232h/1

A bench has: `url` (the link), `profile`, `link_key` (the board's link key, bytes, or None for an
open link: the sim makes one, the virtual and emulated boards are flashed with one, a real board's
is --link-key FILE, as `inv flash` wrote it), `period`/`misses` (heartbeat),
`link_options` (LinkClient tuning), `scale` (heavy loops run `scaled(n)` times: slow boards do
fewer, the tests stay the same), `fast_period` (the shortest heartbeat period the board keeps up
with), `reset_loss_reasons` (how a reset may show: a board that boots slower than the
heartbeat bound is first seen missing heartbeats), `reset(quiet)`, and, where it can,
`hang()`/`resume()` (`can_hang`, `can_quiet_reset`).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from firmware import profiles
from firmware.link import keyfile
from firmware.sim import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Bench:
    can_hang = False          # can the fixture freeze the board without resetting it?
    can_quiet_reset = False   # can it reset the board so that its boot HELLO is lost?

    link_key = None

    def __init__(self, profile_name, url):
        self.profile_name = profile_name
        self.profile = profiles.load(profile_name)
        self.url = url
        bench = self.profile.get("bench", {})
        self.link_options = {}
        if "rto_min_ms" in bench:
            self.link_options["rto_min"] = bench["rto_min_ms"] / 1000

    timing = None             # a profile whose heartbeat and bench timing to use (throttled sim)

    @property
    def scale(self):
        return (self.timing or self.profile).get("bench", {}).get("scale", 1.0)

    @property
    def period(self):
        return (self.timing or self.profile)["heartbeat"]["period_ms"] / 1000

    @property
    def misses(self):
        return (self.timing or self.profile)["heartbeat"]["misses"]

    @property
    def fast_period(self):
        """The shortest heartbeat period this board answers reliably (fault tests use it)."""
        # A paced UART: frames take time. Otherwise 20 ms: with 3 misses a 60 ms scheduling stall
        # of a loaded 2-core machine is not taken for a lost board (10 ms proved too tight).
        floor = 0.05 if self.link_options.get("byte_time") else 0.02
        bench = (self.timing or self.profile).get("bench", {})
        return max(floor, bench.get("fast_period_ms", 0) / 1000, self.period / 10)

    @property
    def boot_s(self):
        return self.profile["reset"].get("boot_ms", 0) / 1000

    @property
    def reset_loss_reasons(self):
        reasons = ("unsolicited-hello", "boot-id-changed")
        if self.boot_s >= self.period * self.misses:
            reasons += ("missed-heartbeats",)      # it boots slower than missed heartbeats are seen
        return reasons

    def scaled(self, n, minimum=1):
        return max(minimum, int(n * self.scale))

    def make_transport(self, on_data, on_error):
        """A transport to this board's link, as its profile's link kind says (a serial port, pty
        or socket://; SPI through an ftdi:// adapter)."""
        from host.offload.transport import for_profile

        return for_profile(self.profile, self.url, on_data=on_data, on_error=on_error)

    def reset(self, quiet=False):
        raise NotImplementedError

    def close(self):
        pass


def _control(path, cmd, timeout=10):
    reply = control(path, cmd, timeout)
    if not reply.get("ok"):
        raise RuntimeError("%s refused %r: %s" % (path, cmd, reply))
    return reply


class SimBench(Bench):
    """python -m firmware.sim in a subprocess, controlled through its control socket. With
    `throttle` (a baud rate) both directions are paced like that UART; `timing` (a profile) then
    gives the heartbeat the tests use, as that board's host would."""
    can_hang = True
    can_quiet_reset = True

    def __init__(self, profile_name="sim", extra_args=(), throttle=None, timing=None):
        cmd = [sys.executable, "-m", "firmware.sim", "--profile", profile_name] + list(extra_args)
        if throttle:
            cmd += ["--baud", str(throttle)]
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        url = self._line("board: ")
        self.control = self._line("control: ")
        key_path = self._line("link-key: ")
        super().__init__(profile_name, url)
        self.link_key = None if key_path == "none" else keyfile.read(key_path)
        self.throttle = throttle
        self.timing = timing
        # a pty answers in well under a millisecond; a throttled one costs the UART's byte time
        self.link_options.setdefault("rto_min", 0.002)
        if throttle:
            self.link_options["byte_time"] = 10.0 / throttle

    def _line(self, prefix):
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.proc.kill()
            raise RuntimeError("simulator printed %r, expected %r..." % (line, prefix))
        return line[len(prefix):].strip()

    def command(self, cmd):
        return _control(self.control, cmd)

    def reset(self, quiet=False):
        return self.command("reset quiet" if quiet else "reset")

    def hang(self):
        self.command("hang")

    def resume(self):
        self.command("resume")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class VirtualBench(Bench):
    """The virtual MicroPython board (tools/vboard): real MicroPython 1.27 behind two ptys.

    Without a port, a fresh one is started and flashed with the real mpremote (tools/flash.py),
    as a board on the bench would be; with --port (its REPL or link pty) a running one is used.
    Reset, hang and resume go through its control socket (the bridge restarts MicroPython; a
    hang freezes every call into its hardware, so its watchdog bites as on a board)."""
    can_hang = True
    can_quiet_reset = True

    def __init__(self, profile_name="mpy-virtual", port=None, flash=True, link_key=None):
        """link_key: the key file of a running board (--port); default: the link.key in its flash
        directory, which is where `inv flash` put it. A board started here is flashed with a new key."""
        from tools.vboard import lookup

        self.vb = None
        self._keydir = None
        if port:
            entry = lookup(port) or self._by_link(port)
            if entry is None:
                raise RuntimeError("%s is not a running virtual board's REPL or link pty" % port)
            self.repl, link, self.control = entry["repl"], entry["link"], entry["control"]
            key_path = link_key or os.path.join(entry.get("flash", ""), "link.key")
        else:
            self.vb = self.start_board()
            self.repl, link, self.control = self.vb.repl, self.vb.link, self.vb.control_path
            self._keydir = tempfile.mkdtemp(prefix="ikeoffload-hil-key-")
            key_path = os.path.join(self._keydir, "link.key")
        super().__init__(profile_name, link)
        if flash and self.vb is not None:
            from tools.flash import flash as do_flash

            try:
                self.flashed = do_flash(profile_name, self.repl, link_port=link, link_key=key_path)
            except Exception:
                self.close()
                raise
        if profiles.link_auth(self.profile):
            self.link_key = keyfile.read(key_path)

    @staticmethod
    def start_board():
        from tools.vboard import VirtualBoard

        return VirtualBoard()

    @staticmethod
    def _by_link(port):
        from tools.vboard.launcher import lookup, registry_dir

        for name in os.listdir(registry_dir()):
            try:
                with open(os.path.join(registry_dir(), name)) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if entry.get("link") == port:
                return lookup(entry["repl"])
        return None

    def command(self, cmd):
        return _control(self.control, cmd)

    def reset(self, quiet=False):
        return self.command("reset quiet" if quiet else "reset")

    def hang(self):
        self.command("hang")

    def resume(self):
        self.command("resume")

    def close(self):
        if self.vb is not None:
            self.vb.close()
            self.vb = None
        if self._keydir is not None:
            import shutil

            shutil.rmtree(self._keydir, ignore_errors=True)
            self._keydir = None


class EmulatedBench(VirtualBench):
    """The emulated RP2040 (tools/rp2040): MicroPython's rp2 image on rp2040js, REPL and link on
    two ptys. Started and flashed with the real mpremote like the virtual board; reset is its RUN
    pin, hang stops its core (the watchdog keeps counting and bites, as on a wedged chip)."""

    @staticmethod
    def start_board():
        from tools.rp2040 import EmulatedBoard

        return EmulatedBoard()


class LineReset:
    """Pulse a serial adapter's RTS or DTR (ESP32 auto-reset to EN, or a transistor to RUN)."""

    def __init__(self, device, line, pulse_ms):
        self.device, self.line, self.pulse = device, line, pulse_ms / 1000

    def __call__(self):
        import serial

        with serial.serial_for_url(self.device, do_not_open=True) as s:
            s.dtr = False
            s.rts = False
            s.open()
            setattr(s, self.line, True)     # asserted: the line goes low, EN/RUN held in reset
            time.sleep(self.pulse)
            setattr(s, self.line, False)


class FtdiGpioReset:
    """Pull RUN/EN low with an FTDI adapter's GPIO (pyftdi), e.g. FT232H AD5."""

    def __init__(self, url, gpio, pulse_ms):
        self.url, self.gpio, self.pulse = url, gpio, pulse_ms / 1000

    def __call__(self):
        from pyftdi.gpio import GpioAsyncController

        g = GpioAsyncController()
        mask = 1 << self.gpio
        g.configure(self.url, direction=mask, initial=mask)
        try:
            g.write(0)
            time.sleep(self.pulse)
            g.write(mask)
        finally:
            g.close()


def make_resetter(profile, port, reset_spec):
    """The reset a real bench uses: from the profile's [reset], on --reset DEV (default: --port)."""
    r = profile["reset"]
    method, pulse = r["method"], r.get("pulse_ms", 100)
    if method in ("rts-en", "rts"):
        return LineReset(reset_spec or port, "rts", pulse)
    if method == "dtr":
        return LineReset(reset_spec or port, "dtr", pulse)
    if method == "ftdi-gpio":
        host = profile.get("spi", {}).get("host", {})
        return FtdiGpioReset(reset_spec or host.get("ftdi_url") or port, host["reset_gpio"], pulse)

    def unsupported():
        raise RuntimeError("reset.method %r: this board is reset through its own bench's control "
                           "socket (start it with --board %s and no --port)" % (method, profile["_name"]))
    return unsupported


class SerialBench(Bench):
    """A real board: its link on --port (a serial device, or an ftdi:// URL for SPI boards),
    reset as its profile's [reset] says, on the --reset device (default: --port)."""

    def __init__(self, profile_name, port, reset_spec=None, link_key=None):
        super().__init__(profile_name, port)
        self.resetter = make_resetter(self.profile, port, reset_spec)
        if profiles.link_auth(self.profile):
            if not link_key:
                raise RuntimeError("profile %s has an authenticated link: pass --link-key FILE (the key "
                                   "`inv flash --link-key` wrote)" % profile_name)
            self.link_key = keyfile.read(link_key)

    def reset(self, quiet=False):
        if quiet:
            raise RuntimeError("a real board cannot lose its boot HELLO on demand")
        self.resetter()
        return {"ok": True}


def throttle_of(spec):
    """--throttle: a baud rate, or a profile whose link.baud (and heartbeat timing) to use.
    Returns (baud, timing profile or None)."""
    if spec is None:
        return None, None
    if str(spec).isdigit():
        return int(spec), None
    prof = profiles.load(spec)
    baud = prof["link"].get("baud")
    if not baud:
        raise RuntimeError("profile %s has no link.baud to throttle to" % spec)
    return baud, prof


def open_bench(board, port=None, reset=None, throttle=None, link_key=None):
    if board.startswith("sim:"):
        # the simulator standing in for a board: its transforms, link rate and CPU (firmware/sim.py)
        if throttle or port:
            raise RuntimeError("--board sim:PROFILE takes its link rate from the profile (no --throttle, --port)")
        return SimBench(board[4:])
    if board == "sim":
        if port:
            return SerialBench("sim", port, reset, link_key)
        baud, timing = throttle_of(throttle)
        return SimBench("sim", throttle=baud, timing=timing)
    if throttle:
        raise RuntimeError("--throttle paces the simulated board (--board sim) only")
    prof = profiles.load(board)
    if prof["link"]["kind"] == "vboard":
        return VirtualBench(board, port, link_key=link_key)
    if prof["reset"]["method"] == "emulator":
        return EmulatedBench(board, port, link_key=link_key)
    if not port:
        raise RuntimeError("--board %s needs --port (or use --board sim / mpy-virtual)" % board)
    return SerialBench(board, port, reset, link_key)
