"""The bench under test: the simulated board (default) or a real board on a port.

Everything board-specific — starting the simulator, resetting, hanging — lives here, so the
tests in this folder run unchanged against the simulator and against hardware:

    inv hil                                   # simulated board on a pty (default)
    inv hil --board esp32-devkitc --port /dev/ttyUSB0
"""
import json
import os
import socket
import subprocess
import sys
import time

from firmware import profiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Bench:
    can_hang = False          # can the fixture freeze the board without resetting it?
    can_quiet_reset = False   # can it reset the board so that its boot HELLO is lost?
    link_options = {}         # LinkClient tuning for this bench

    def __init__(self, profile_name, url):
        self.profile_name = profile_name
        self.profile = profiles.load(profile_name)
        self.url = url

    @property
    def period(self):
        return self.profile["heartbeat"]["period_ms"] / 1000

    @property
    def misses(self):
        return self.profile["heartbeat"]["misses"]

    @property
    def baudrate(self):
        return self.profile["link"].get("baud") or None

    @property
    def rtscts(self):
        return bool(self.profile["link"].get("rtscts"))

    def reset(self, quiet=False):
        raise NotImplementedError

    def close(self):
        pass


class SimBench(Bench):
    """python -m firmware.sim in a subprocess, controlled through its control socket."""
    can_hang = True
    can_quiet_reset = True
    link_options = {"rto_min": 0.002}   # a pty answers in well under a millisecond

    def __init__(self, profile_name="sim", extra_args=()):
        cmd = [sys.executable, "-m", "firmware.sim", "--profile", profile_name] + list(extra_args)
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        url = self._line("board: ")
        self.control = self._line("control: ")
        super().__init__(profile_name, url)

    def _line(self, prefix):
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.proc.kill()
            raise RuntimeError("simulator printed %r, expected %r..." % (line, prefix))
        return line[len(prefix):].strip()

    def command(self, cmd):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.control)
            s.sendall(cmd.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError("simulator refused %r: %s" % (cmd, reply))
        return reply

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


class SerialBench(Bench):
    """A real board on a serial port; resets with the adapter's lines as its profile says."""

    def reset(self, quiet=False):
        import serial
        method = self.profile.get("reset", {}).get("method", "rts-en")
        if quiet:
            raise RuntimeError("a real board cannot lose its boot HELLO on demand")
        with serial.serial_for_url(self.url, do_not_open=True) as s:
            s.dtr = False
            s.rts = False
            s.open()
            line = "rts" if method in ("rts-en", "rts") else "dtr"
            setattr(s, line, True)
            time.sleep(0.1)
            setattr(s, line, False)
        return {"ok": True}


def open_bench(board, port):
    if port:
        return SerialBench(board if board != "sim" else "sim", port)
    if board == "sim":
        return SimBench("sim")
    raise RuntimeError("--board %s needs --port (or use --board sim)" % board)
