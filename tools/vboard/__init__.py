"""The virtual MicroPython board: real MicroPython 1.27 (wasm) in node, its REPL on one pty and the
firmware's link on a second (`python -m tools.vboard`, `inv vboard`). README.md says how it works.

`VirtualBoard()` starts one in a subprocess (tests, benches, `inv hil --board mpy-virtual`)."""
import os
import subprocess
import sys

from tools.vboard.launcher import control, lookup  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class VirtualBoard:
    """A virtual board in a subprocess: .repl, .link, .control, .flash; close() stops it."""

    def __init__(self, flash=None, heapsize=None, env=None):
        cmd = [sys.executable, "-m", "tools.vboard"]
        if flash:
            cmd += ["--flash", str(flash)]
        if heapsize:
            cmd += ["--heapsize", str(heapsize)]
        env = dict(env or os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            self.repl = self._line("repl: ")
            self.link = self._line("link: ")
            self.control_path = self._line("control: ")
            self.flash = self._line("flash: ")
        except Exception:
            self.close()
            raise

    def _line(self, prefix):
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            raise RuntimeError("tools.vboard printed %r, expected %r..." % (line, prefix))
        return line[len(prefix):].strip()

    def command(self, cmd, timeout=10):
        reply = control(self.control_path, cmd, timeout)
        if not reply.get("ok"):
            raise RuntimeError("virtual board refused %r: %s" % (cmd, reply))
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
