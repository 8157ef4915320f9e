#!/usr/bin/env node
// The emulated RP2040 board: rp2040js running a MicroPython rp2 image, UART0 (REPL) and UART1
// (the firmware's link) relayed to the launcher (tools/rp2040/__main__.py owns the ptys), the
// flash chip modelled so the filesystem persists (flash.mjs), resets by the RUN pin and by the
// watchdog, and the core's time kept to the wall clock.
//
//   node emulator.mjs --image FW.bin --bootrom ROM.bin --flash-file FLASH.img [--unique-id HEX]
//                     [--timing realtime|cycles]
//
// stdin/stdout frames as tools/vboard/shared.mjs: channel 0 REPL (UART0), 1 link (UART1), 2 JSON.
// Commands: {"cmd": "reset", "quiet": bool}   the RUN pin: a power-on reset, flash kept
//           {"cmd": "hang"} / {"cmd": "resume"} stop / restart the core (timers and the
//                                               watchdog keep running, as when firmware wedges)
//           {"cmd": "status"}
// Events:   "boot" {boot, cause: "power"|"hard"|"wdt"}, "status", "log".
//
// Time: rp2040js's own loop lets emulated time race ahead while the core sleeps (WFI), which
// would make a 3 s host-silence timer expire in milliseconds of wall time; and a clock that falls
// behind while the core is busy and then catches up compresses the host's heartbeats into a gap.
// So the chip's clock is the wall clock (--timing realtime, the default), or counts cycles for
// benchmarks (--timing cycles): see run().
import crypto from "node:crypto";
import fs from "node:fs";
import { BasePeripheral, RP2040 } from "rp2040js";
import { attachFlash, FLASH_SIZE } from "./flash.mjs";
import * as S from "../vboard/shared.mjs";

function parseArgs(argv) {
  const a = { image: null, bootrom: null, flashFile: null, uniqueId: "e660c0d1c7000000", timing: "realtime" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--image") a.image = argv[++i];
    else if (argv[i] === "--bootrom") a.bootrom = argv[++i];
    else if (argv[i] === "--flash-file") a.flashFile = argv[++i];
    else if (argv[i] === "--unique-id") a.uniqueId = argv[++i];
    else if (argv[i] === "--timing") a.timing = argv[++i];
    else throw new Error("unknown argument " + argv[i]);
  }
  if (!a.image || !a.bootrom || !a.flashFile) throw new Error("--image, --bootrom and --flash-file are required");
  if (a.timing !== "realtime" && a.timing !== "cycles") throw new Error("--timing realtime|cycles");
  return a;
}

const args = parseArgs(process.argv.slice(2));
const realtime = args.timing === "realtime";
const image = fs.readFileSync(args.image);
const romBytes = fs.readFileSync(args.bootrom);
if (romBytes.length !== 16384) throw new Error("bootrom must be 16384 bytes, not " + romBytes.length);
const bootrom = new Uint32Array(romBytes.buffer.slice(romBytes.byteOffset, romBytes.byteOffset + 16384));
const uniqueId = Buffer.from(args.uniqueId, "hex");

// The flash chip's contents outlive every reset and, through the file, the emulator itself.
const flash = new Uint8Array(FLASH_SIZE).fill(0xff);
if (fs.existsSync(args.flashFile)) {
  const saved = fs.readFileSync(args.flashFile);
  flash.set(saved.subarray(0, FLASH_SIZE));
}
flash.set(image, 0); // the firmware image is programmed as a UF2 copy would program it
let flashDirty = true;

const SLICE_MS = 8; // run this long before looking at input and output again
const BATCH = 2000; // instructions between looks at the wall clock

let mcu = null;
let chip = null;
let boots = 0;
let cause = "power";
let quietBoot = false;
let bootWall = 0; // performance.now() when this boot's emulated time was 0
let hung = false;
let pendingReset = null; // {cause, reason, scratch}: set inside an instruction, done after the batch
let cycles = 0; // emulated core cycles since this boot
let busyWall = 0; // wall ms spent executing instructions since this boot
const inbox = [[], []]; // bytes for UART0 and UART1, fed as their RX FIFOs take them
const outbox = [[], []];
const dropped = { repl: 0, link: 0 };
let timer = null;
let sleeping = false;

function log(msg) {
  S.event({ event: "log", msg });
}

function boot(newCause, wdReason = 0, scratch = null) {
  // A new chip: every peripheral back to its reset state. Only the flash (and, across a
  // watchdog reset, the watchdog's REASON and scratch registers) survive, as on the RP2040.
  if (mcu) flash.set(mcu.flash.subarray(0, FLASH_SIZE));
  mcu = new RP2040();
  mcu.logger = { debug() {}, info() {}, warn() {}, error: (src, msg) => log(src + ": " + msg) };
  mcu.loadBootrom(bootrom); // (rp2040js's reset erases its flash array: fill it after)
  mcu.flash.set(flash, 0);
  fastRam(mcu);
  chip = attachFlash(mcu, uniqueId);
  mcu.peripherals[0x40060] = new Rosc(mcu);
  fixSio(mcu.sio);
  chip.onChange = () => {
    flashDirty = true;
  };
  const wd = mcu.peripherals[0x40058];
  wd.reason = wdReason;
  if (scratch) wd.scratchData.set(scratch);
  wd.onWatchdogTrigger = () => {
    // the chip resets: stop the countdown, whose periodic alarm would otherwise be re-armed at
    // the same instant and fire forever inside one clock tick
    wd.alarm.enable = false;
    if (!pendingReset) pendingReset = { cause: "wdt", reason: wd.reason, scratch: Uint32Array.from(wd.scratchData) };
  };
  for (const [i, uart] of mcu.uart.entries()) fixUart(uart, outbox[i]);
  // rp2040js starts at the boot2 stage in flash, as its MicroPython demo does
  mcu.core.PC = 0x10000000;
  boots += 1;
  cause = newCause;
  hung = false;
  pendingReset = null;
  cycles = 0;
  busyWall = 0;
  bootWall = performance.now();
  inbox[0].length = 0; // bytes in a UART FIFO die with the chip
  inbox[1].length = 0;
  S.event({ event: "boot", boot: boots, cause, quiet: quietBoot });
  quietBoot = false;
}

// rp2040js looks for a peripheral before it looks at SRAM on every 32-bit write: most writes
// are to SRAM, so look there first (about 8% of the emulator's time).
function fastRam(mcu) {
  const write = mcu.writeUint32.bind(mcu);
  const view = mcu.sramView;
  const end = 0x20000000 + mcu.sram.length - 3;
  mcu.writeUint32 = (address, value) => {
    const a = address >>> 0;
    if (a >= 0x20000000 && a < end) view.setUint32(a - 0x20000000, value, true);
    else write(a, value);
  };
}

// ROSC: RANDOMBIT (its jitter is the chip's entropy: os.urandom, MicroPython's random seed)
class Rosc extends BasePeripheral {
  constructor(rp2040) {
    super(rp2040, "ROSC");
    this.regs = new Map();
  }
  readUint32(offset) {
    if (offset === 0x1c) return crypto.randomInt(2);
    return this.regs.get(offset) ?? 0xffffffff; // as rp2040js reads it (STATUS: stable, enabled)
  }
  writeUint32(offset, value) {
    this.regs.set(offset, value >>> 0);
  }
}

// SIO's inter-core FIFO: rp2040js has none, and only core 0 runs. The mailbox always holds a 0,
// the answer core 1's boot ROM gives after a reset (multicore_reset_core1, at every soft reset,
// waits for it), and is never full.
function fixSio(sio) {
  const read = sio.readUint32.bind(sio);
  const write = sio.writeUint32.bind(sio);
  sio.readUint32 = (offset) => (offset === 0x50 ? 0x3 : offset === 0x58 ? 0 : read(offset));
  sio.writeUint32 = (offset, value) => {
    if (offset !== 0x50 && offset !== 0x54) write(offset, value);
  };
}

const UART_TXINTR = 1 << 5;

function fixUart(uart, out) {
  // The PL011 raises its TX interrupt when the TX FIFO drains past its trigger level — here at
  // once after each write, since rp2040js sends instantly — and it stays clear after ICR.
  // rp2040js re-raises it on every check, so a handler that enables every source (MicroPython's
  // REPL on UART0 does) is re-entered forever.
  uart.checkInterrupts = function () {
    this.rp2040.setInterrupt(this.irq, !!(this.interruptStatus & this.interruptMask));
  };
  uart.onByte = (b) => {
    out.push(b);
    uart.interruptStatus |= UART_TXINTR;
    uart.checkInterrupts();
  };
}

function feed() {
  // returns true if a byte went into a FIFO
  let fed = false;
  for (let i = 0; i < 2; i++) {
    const uart = mcu.uart[i];
    const q = inbox[i];
    if (!q.length) continue;
    if (!uart.enabled) {
      // A UART the firmware has not enabled yet receives nothing. The REPL's bytes wait for it
      // (a terminal opened while the board boots, as a host cannot open a Pico's USB port
      // before it enumerates); the link's are lost, as on the wire.
      if (i === 0 && q.length < 65536) continue;
      dropped[i ? "link" : "repl"] += q.length;
      q.length = 0;
      continue;
    }
    let n = 0;
    while (n < q.length && !uart.rxFIFO.full) uart.feedByte(q[n++]);
    if (n) {
      q.splice(0, n);
      fed = true;
    }
  }
  return fed;
}

function flushOut() {
  for (let i = 0; i < 2; i++) {
    if (outbox[i].length) {
      S.emit(i ? S.CH_LINK : S.CH_REPL, Buffer.from(outbox[i]));
      outbox[i].length = 0;
    }
  }
}

// ---- the run loop --------------------------------------------------------------------------------
// Two clocks (--timing):
//   realtime  the chip's clock is the wall clock. Between looks at it (every BATCH instructions)
//             it stands still; a sleeping core (WFI) wakes at its next timer, in wall time. The
//             core executes as many instructions as the emulator manages: a slower RP2040 on
//             real time, so the host's timeouts and the firmware's (heartbeats, host silence,
//             the watchdog) mean what they mean on a board.
//   cycles    the chip's clock advances by the cycles the core executes at clk_sys, and jumps
//             to the next timer while it sleeps (rp2040js's own loop): time.ticks_us() on the
//             board measures emulated cycles (benchmarks). Never ahead of the wall clock while
//             asleep, so a host on the REPL sees its timers run at their pace.
function run() {
  timer = null;
  const sliceEnd = performance.now() + SLICE_MS;
  let sleepMs = 0;
  feed();
  for (;;) {
    const { core, clock } = mcu;
    const wall = (performance.now() - bootWall) * 1e6;
    const cycleNs = 1e9 / mcu.clkSys;
    if (realtime && wall > clock.nanos) clock.tick(wall - clock.nanos);
    const t0 = performance.now();
    let executed = false;
    for (let i = 0; i < BATCH && !pendingReset; i++) {
      if (hung || core.waiting) {
        if (!hung && (inbox[0].length || inbox[1].length) && feed() && !core.waiting) continue;
        const room = wall - clock.nanos;
        const next = clock.nextAlarm ? clock.nanosToNextAlarm : Infinity;
        if (room <= 0) {
          sleepMs = Math.max(0.05, Math.min(10, next / 1e6));
          break;
        }
        clock.tick(Math.min(next, room));
        continue;
      }
      const c = core.executeInstruction();
      cycles += c;
      if (!realtime) clock.tick(c * cycleNs);
      executed = true;
    }
    if (executed) busyWall += performance.now() - t0;
    if (pendingReset) {
      const r = pendingReset;
      flushOut();
      boot(r.cause, r.reason, r.scratch);
      continue;
    }
    if (sleepMs || performance.now() >= sliceEnd) break;
    feed();
  }
  flushOut();
  sleeping = !!sleepMs;
  timer = sleepMs ? setTimeout(run, sleepMs) : setImmediate(run);
}

function wake() {
  // input arrived: a sleeping core looks at it now, not at its next timer
  if (sleeping && timer) {
    clearTimeout(timer);
    sleeping = false;
    timer = setImmediate(run);
  }
}

// ---- flash file ----------------------------------------------------------------------------------
function saveFlash() {
  if (!flashDirty || !mcu) return;
  flashDirty = false;
  const tmp = args.flashFile + ".tmp";
  fs.writeFileSync(tmp, mcu.flash.subarray(0, FLASH_SIZE));
  fs.renameSync(tmp, args.flashFile);
}
setInterval(saveFlash, 500).unref();

// ---- commands from the launcher ------------------------------------------------------------------
function command(c) {
  if (c.cmd === "reset") {
    quietBoot = !!c.quiet;
    boot(c.cause === "power" ? "power" : "hard");
  } else if (c.cmd === "hang") hung = true;
  else if (c.cmd === "resume") hung = false;
  else if (c.cmd === "status") {
    const emuMs = mcu.clock.nanos / 1e6;
    const wd = mcu.peripherals[0x40058];
    S.event({
      event: "status", boots, cause, hung, cycles,
      uptime_ms: Math.round(performance.now() - bootWall), emulated_ms: Math.round(emuMs),
      // how fast the emulated core runs while it has work: MHz of emulated clock per wall second
      busy_mhz: busyWall ? Math.round(cycles / busyWall / 1000) : 0,
      wdt_enabled: !!wd.enable, flash_writes: chip.writes, dropped,
      clk_sys_hz: mcu.clkSys,
    });
  } else log("unknown command " + JSON.stringify(c));
}

let inbuf = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  inbuf = inbuf.length ? Buffer.concat([inbuf, chunk]) : chunk;
  let any = false;
  while (inbuf.length >= 3) {
    const n = inbuf.readUInt16BE(1);
    if (inbuf.length < 3 + n) break;
    const ch = inbuf[0];
    const data = inbuf.subarray(3, 3 + n);
    inbuf = inbuf.subarray(3 + n);
    if (ch === S.CH_REPL || ch === S.CH_LINK) {
      if (hung && ch === S.CH_LINK) {
        dropped.link += data.length; // a stopped core does not drain its UART
        continue;
      }
      const q = inbox[ch === S.CH_REPL ? 0 : 1];
      for (const b of data) q.push(b);
      any = true;
    } else if (ch === S.CH_EVENT) {
      try {
        command(JSON.parse(data.toString()));
      } catch (e) {
        log("bad command: " + ((e && e.stack) || e));
      }
    }
  }
  if (any) wake();
});
process.stdin.on("end", () => {
  saveFlash();
  process.exit(0);
});
process.on("SIGTERM", () => {
  saveFlash();
  process.exit(0);
});

boot("power");
run();
