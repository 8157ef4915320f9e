"""`inv flash-micropython` with the real esptool against a mock ESP32 ROM bootloader (PyPI's
esp32-mock-bootloader: it speaks the ROM loader's SLIP protocol on a TCP port and keeps its flash
in memory): erase, write the image at 0x1000, verify by the chip's MD5, read it back.

The image is a real ESP32 application image built by esptool's own image code (a valid header,
one segment, checksum and SHA-256 digest), not MicroPython: no ESP32 MicroPython image can be
fetched or committed here; the tool checks nothing beyond the image header anyway."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mock_rom():
    """A mock ESP32 ROM loader on a free loopback port: its socket:// URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("esp32-mock-bootloader")
    p = subprocess.Popen([str(exe), "run", "--chip", "esp32", "--bind", "127.0.0.1", "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = p.stdout.readline()
        assert "listening on 127.0.0.1:%d" % port in line, line
        yield "socket://127.0.0.1:%d" % port
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()


def esp32_image(path, payload):
    from esptool.bin_image import ESP32FirmwareImage, ImageSegment

    img = ESP32FirmwareImage()
    img.entrypoint = 0x40080000
    seg = ImageSegment(0x3FFB0000, payload)
    seg.name = ".dram0.data"
    img.segments = [seg]
    img.save(str(path))
    return path.read_bytes()


def flash(url, image, read_back, timeout=180):
    return subprocess.run([sys.executable, "-m", "tools.flash_micropython", "--board", "esp32-devkitc", "--port", url,
                           "--image", str(image), "--baud", "115200", "--read-back", str(read_back)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_esptool_writes_verifies_and_reads_back_the_image(mock_rom, tmp_path):
    data = esp32_image(tmp_path / "app.bin", os.urandom(12 * 1024 + 7))
    assert data[0] == 0xE9
    r = flash(mock_rom, tmp_path / "app.bin", tmp_path / "back.bin")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Verification successful" in r.stdout
    assert (tmp_path / "back.bin").read_bytes() == data
    assert "read back %d bytes: identical" % len(data) in r.stdout


def test_a_second_image_replaces_the_first(mock_rom, tmp_path):
    """erase-flash really erases: an image shorter than the last one reads back as itself, and
    the verify step compares against what the chip now holds, not against what was sent."""
    first = esp32_image(tmp_path / "a.bin", os.urandom(16 * 1024))
    assert flash(mock_rom, tmp_path / "a.bin", tmp_path / "a-back.bin").returncode == 0
    second = esp32_image(tmp_path / "b.bin", bytes(4 * 1024))
    r = flash(mock_rom, tmp_path / "b.bin", tmp_path / "b-back.bin")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "b-back.bin").read_bytes() == second != first[:len(second)]
