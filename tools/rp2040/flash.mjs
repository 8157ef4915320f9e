// The Pico's QSPI flash chip (a W25Q16JV-class 2 MB NOR flash) behind the RP2040's SSI, for
// rp2040js: its SSI peripheral is a stub that ignores the commands the boot ROM's flash routines
// send (rp2040js maps XIP reads straight onto its flash array, but nothing writes it), so
// MicroPython's filesystem would never persist. This models what those routines use:
//
// - IO_QSPI's SS override (GPIO_QSPI_SS_CTRL.OUTOVER): the ROM drives chip select by hand
//   (flash_cs_force) around every command; a command ends when CS goes high again;
// - the SSI data register: each byte written is one SPI byte out, and the chip's answer byte is
//   queued in the RX FIFO (SR.RFNE / RXFLR say how many);
// - the chip: write enable (06), page program (02, ANDs into the page, wraps at 256 bytes),
//   sector/block/chip erase (20, 52, D8, C7/60, run when CS rises), status (05: never busy,
//   since every operation completes at once; 35: QE set), reads (03, 0B), JEDEC id (9F) and
//   unique id (4B: machine.unique_id()). Anything else is answered with zeros.
//
// Transfers with CS left to the SSI (the boot2 stage setting up XIP) answer zeros and change
// nothing: XIP reads need no model.
import { BasePeripheral } from "rp2040js";

export const FLASH_SIZE = 2 * 1024 * 1024;
const PAGE = 256;

const SSI_SSIENR = 0x08;
const SSI_TXFLR = 0x20;
const SSI_RXFLR = 0x24;
const SSI_SR = 0x28;
const SSI_ICR = 0x48;
const SSI_IDR = 0x58;
const SSI_VERSION_ID = 0x5c;
const SSI_DR0 = 0x60;
const SR_TFNF = 1 << 1;
const SR_TFE = 1 << 2;
const SR_RFNE = 1 << 3;

const QSPI_SS_CTRL = 0x0c; // IO_QSPI GPIO_QSPI_SS_CTRL
const OUTOVER_SHIFT = 8;
const OUTOVER_LOW = 2;
const OUTOVER_HIGH = 3;

export class FlashChip {
  constructor(flash, uniqueId) {
    this.flash = flash; // the emulator's flash array (XIP reads see what is written here)
    this.uniqueId = uniqueId;
    this.selected = false;
    this.wel = false;
    this.cmd = -1;
    this.n = 0; // bytes of this command so far, the command byte included
    this.addr = 0;
    this.writes = 0; // program and erase operations, for the dirty flag
    this.onChange = null;
  }
  select(on) {
    if (on === this.selected) return;
    if (!on) this.finish();
    this.selected = on;
    this.cmd = -1;
    this.n = 0;
    this.addr = 0;
  }
  finish() {
    // erases run when CS rises after the command and its 3 address bytes
    const erase = { 0x20: 4096, 0x52: 32768, 0xd8: 65536 }[this.cmd];
    if (erase && this.n >= 4 && this.wel) {
      const base = (this.addr & ~(erase - 1)) % FLASH_SIZE;
      this.flash.fill(0xff, base, base + erase);
      this.changed();
    } else if ((this.cmd === 0xc7 || this.cmd === 0x60) && this.wel) {
      this.flash.fill(0xff, 0, FLASH_SIZE);
      this.changed();
    } else if (this.cmd === 0x02 && this.n > 4 && this.wel) {
      this.changed();
    }
    if ([0x02, 0x20, 0x52, 0xd8, 0xc7, 0x60, 0x01, 0x31].includes(this.cmd)) this.wel = false;
  }
  changed() {
    this.writes += 1;
    if (this.onChange) this.onChange();
  }
  transfer(out) {
    const i = this.n++;
    if (i === 0) {
      this.cmd = out;
      if (out === 0x06) this.wel = true;
      else if (out === 0x04) this.wel = false;
      return 0;
    }
    switch (this.cmd) {
      case 0x05:
        return this.wel ? 0x02 : 0x00; // BUSY never set
      case 0x35:
        return 0x02; // QE: quad mode enabled
      case 0x9f:
        return [0xef, 0x40, 0x15][i - 1] ?? 0; // Winbond, W25Q16JV
      case 0x4b:
        return i >= 5 && i < 13 ? this.uniqueId[i - 5] : 0; // 4 dummy bytes, then 64 bits
      case 0x03:
      case 0x0b:
      case 0x02:
      case 0x20:
      case 0x52:
      case 0xd8: {
        if (i <= 3) {
          this.addr = (this.addr << 8) | out;
          return 0;
        }
        if (this.cmd === 0x02) {
          if (this.wel) {
            const page = this.addr & ~(PAGE - 1);
            const at = (page + ((this.addr + i - 4) & (PAGE - 1))) % FLASH_SIZE;
            this.flash[at] &= out; // NOR flash: programming only clears bits
          }
          return 0;
        }
        if (this.cmd === 0x03) return this.flash[(this.addr + i - 4) % FLASH_SIZE];
        if (this.cmd === 0x0b) return i === 4 ? 0 : this.flash[(this.addr + i - 5) % FLASH_SIZE];
        return 0;
      }
      default:
        return 0;
    }
  }
}

export class FlashSSI extends BasePeripheral {
  constructor(rp2040, chip) {
    super(rp2040, "SSI");
    this.chip = chip;
    this.regs = new Map();
    this.rx = [];
  }
  readUint32(offset) {
    switch (offset) {
      case SSI_SR:
        return SR_TFNF | SR_TFE | (this.rx.length ? SR_RFNE : 0);
      case SSI_RXFLR:
        return this.rx.length;
      case SSI_TXFLR:
        return 0;
      case SSI_DR0:
        return this.rx.length ? this.rx.shift() : 0;
      case SSI_IDR:
        return 0x51535049;
      case SSI_VERSION_ID:
        return 0x3430312a;
      case SSI_ICR:
        return 0;
      default:
        return this.regs.get(offset) ?? 0;
    }
  }
  writeUint32(offset, value) {
    if (offset === SSI_DR0) {
      const answer = this.chip.selected ? this.chip.transfer(value & 0xff) : 0;
      if (this.rx.length < 16) this.rx.push(answer);
      return;
    }
    if (offset === SSI_SSIENR && !(value & 1)) this.rx.length = 0; // disabling flushes the FIFOs
    this.regs.set(offset, value >>> 0);
  }
}

export class QspiIO extends BasePeripheral {
  constructor(rp2040, chip) {
    super(rp2040, "IO_QSPI");
    this.chip = chip;
    this.regs = new Map();
  }
  readUint32(offset) {
    return this.regs.get(offset) ?? 0;
  }
  writeUint32(offset, value) {
    this.regs.set(offset, value >>> 0);
    if (offset === QSPI_SS_CTRL) {
      const over = (value >>> OUTOVER_SHIFT) & 3;
      if (over === OUTOVER_LOW) this.chip.select(true);
      else if (over === OUTOVER_HIGH || over === 0) this.chip.select(false);
    }
  }
}

// Put the chip model in place of rp2040js's SSI stub and its unimplemented IO_QSPI block.
export function attachFlash(mcu, uniqueId) {
  const chip = new FlashChip(mcu.flash, uniqueId);
  mcu.peripherals[0x18000] = new FlashSSI(mcu, chip);
  mcu.peripherals[0x40018] = new QspiIO(mcu, chip);
  return chip;
}
