"""Write a MicroPython firmware image to an ESP32 board with esptool (`inv flash-micropython`).

    python -m tools.flash_micropython --board esp32-devkitc --port /dev/ttyUSB0 --image ESP32_GENERIC.bin \
        [--read-back FILE]

Erases the flash, writes the image at 0x1000 (the ESP32's bootloader offset), as
micropython.org's instructions do, and verifies it against the chip's MD5 of the written range
(esptool verify-flash); with --read-back it also reads the range back into FILE and compares it
byte for byte. The port may be any pyserial URL esptool takes, e.g. socket://127.0.0.1:PORT
(PyPI's esp32-mock-bootloader, a ROM loader that keeps its flash in memory: the tests).
RP2040 boards take a .uf2 through their BOOTSEL mass-storage mode instead; that needs no tool.
esptool is on PyPI (`pip install esptool`, in the test extra).
"""
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

from firmware import cli, profiles

# mcu -> (esptool --chip, image offset)
CHIPS = {"esp32": ("esp32", 0x1000)}
ESP_IMAGE_MAGIC = 0xE9


class FlashError(RuntimeError):
    pass


def commands(board, port, image, baud=460800, read_back=None):
    """The esptool command lines for this board and image (checked first): erase, write,
    verify, and with `read_back` a read of the written range into that file."""
    try:
        profile = profiles.load(board)
    except profiles.ProfileError as e:
        raise FlashError(str(e)) from None
    mcu = profile["board"]["mcu"]
    if mcu not in CHIPS:
        raise FlashError("%s is an %s board: flash-micropython writes ESP32 images with esptool (an RP2040 "
                         "takes a .uf2 file copied to its BOOTSEL drive)" % (profile["board"]["name"], mcu))
    path = Path(image)
    if not path.is_file():
        raise FlashError("no image file %s (download an ESP32 .bin from micropython.org/download)" % image)
    head = path.read_bytes()[:1]
    if not head or head[0] != ESP_IMAGE_MAGIC:
        raise FlashError("%s is not an ESP32 firmware image (first byte %s, want 0x%02X)"
                         % (image, "0x%02X" % head[0] if head else "missing", ESP_IMAGE_MAGIC))
    chip, offset = CHIPS[mcu]
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud)]
    cmds = [base + ["erase-flash"], base + ["write-flash", "-z", "0x%x" % offset, str(path)],
            base + ["verify-flash", "0x%x" % offset, str(path)]]
    if read_back:
        # the ROM loader's own read (no stub): slower, but one less program between us and the flash
        cmds.append(base + ["--no-stub", "read-flash", "0x%x" % offset, str(path.stat().st_size), str(read_back)])
    return cmds


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m tools.flash_micropython",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--baud", type=int, default=460800)
    ap.add_argument("--read-back", help="after writing, read the image's range back into this file and compare")
    ap.add_argument("--dry-run", action="store_true", help="print the esptool commands, run nothing")
    args = ap.parse_args(argv)
    try:
        cmds = commands(args.board, args.port, args.image, args.baud, args.read_back)
    except FlashError as e:
        ap.error(str(e))
    try:
        if args.dry_run:
            for c in cmds:
                print(" ".join(shlex.quote(a) for a in c))
            return 0
        if importlib.util.find_spec("esptool") is None:
            raise FlashError("esptool is not installed: pip install esptool")
        for i, c in enumerate(cmds, 1):
            print("[%d/%d] %s" % (i, len(cmds), " ".join(c[3:])), flush=True)
            if subprocess.run(c).returncode != 0:
                raise FlashError("esptool failed: %s" % " ".join(c[3:]))
        if args.read_back:
            want, got = Path(args.image).read_bytes(), Path(args.read_back).read_bytes()
            if got != want:
                diff = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
                raise FlashError("read back %d bytes that differ from the image at offset 0x%x"
                                 % (len(got), diff))
            print("read back %d bytes: identical to %s" % (len(got), args.image))
    except FlashError as e:
        print("flash-micropython: %s" % e, file=sys.stderr)
        return 1
    print("MicroPython written; now: inv flash --board %s --port %s" % (args.board, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
