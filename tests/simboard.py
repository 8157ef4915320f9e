"""Start the simulated board (python -m firmware.sim) as a subprocess on a real pty."""
import os
import subprocess
import sys

from firmware.link import keyfile
from testbed import process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SimBoard:
    def __init__(self, *args):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "firmware.sim"] + list(args), cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, text=True)
        self.url = self._line("board: ")
        self.control = self._line("control: ")
        self.link_key_path = self._line("link-key: ")
        self.link_key = None if self.link_key_path == "none" else keyfile.read(self.link_key_path)

    def _line(self, prefix):
        line = self.proc.stdout.readline().strip()
        if not line.startswith(prefix):
            self.close()
            raise RuntimeError("simulator said %r" % line)
        return line[len(prefix):]

    def close(self):
        process.stop(self.proc)
