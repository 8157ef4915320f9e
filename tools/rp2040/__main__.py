"""The emulated RP2040 board's launcher: owns the two ptys, runs rp2040js, serves control.

    python -m tools.rp2040 [--image FW.bin] [--flash FILE] [--control PATH] [--timing cycles]

prints, one per line:
    repl: /dev/pts/N        UART0, MicroPython's REPL (mpremote, `inv flash --port`)
    link: /dev/pts/M        UART1, the firmware's link (the host's serial transport)
    control: PATH           a unix socket: one command per line, one JSON line back
    flash: FILE             the 2 MB flash chip (survives resets and restarts)

The chip's clock is the wall clock: the emulated core runs as fast as rp2040js can (several
times slower than an RP2040 at 125 MHz), as a slower chip would. `--timing cycles` makes it
count the executed cycles instead (benchmarks).

Control commands, as the simulator's and the virtual board's: `reset [quiet]` (the RUN pin),
`hang` / `resume` (stop / restart the core; its watchdog keeps counting), `status`.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import time

from tools import rp2040
from tools.vboard.launcher import Launcher, registry_path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.rp2040", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", help="MicroPython rp2 image (default: $%s or build/rp2040/%s)"
                    % (rp2040.IMAGE_ENV, rp2040.IMAGE_NAME))
    ap.add_argument("--flash", help="the flash chip's file (default: a new one in a temporary directory)")
    ap.add_argument("--control", help="control socket path (default: in a temporary directory)")
    ap.add_argument("--timing", choices=("realtime", "cycles"), default="realtime",
                    help="the chip's clock: the wall clock (default), or the executed cycles at clk_sys "
                    "(benchmarks: time.ticks_us() then measures emulated cycles)")
    args = ap.parse_args(argv)
    try:
        image = rp2040.image_path(args.image)
        rom = rp2040.bootrom_bytes()
    except rp2040.EmulatorError as e:
        print("rp2040: %s" % e, file=sys.stderr)
        return 2
    if not rp2040.node_modules_ok():
        print("rp2040: rp2040js is not installed: npm ci --prefix tools/rp2040", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="ikeoffload-rp2040-")
    rom_path = os.path.join(tmp, "bootrom-b1.bin")
    with open(rom_path, "wb") as f:
        f.write(rom)
    flash = os.path.abspath(args.flash or os.path.join(tmp, "flash.img"))
    control_path = args.control or os.path.join(tmp, "control")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *a: None)
    node_cmd = ["node", str(rp2040.HERE / "emulator.mjs"), "--image", str(image), "--bootrom", rom_path,
                "--flash-file", flash, "--timing", args.timing]
    la = Launcher(flash, node_cmd=node_cmd)
    reg = registry_path(la.repl_path)

    def ready():
        with open(reg, "w") as f:
            json.dump({"repl": la.repl_path, "link": la.link_path, "control": control_path, "flash": flash,
                       "pid": os.getpid(), "started": time.time(), "board": "rp2040-emu"}, f)
        print("repl: %s" % la.repl_path, flush=True)
        print("link: %s" % la.link_path, flush=True)
        print("control: %s" % control_path, flush=True)
        print("flash: %s" % flash, flush=True)

    try:
        return la.serve(control_path, ready)
    finally:
        signal.set_wakeup_fd(-1)
        la.close()
        for p in (control_path, reg, rom_path):
            try:
                os.unlink(p)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
