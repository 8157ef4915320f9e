#!/usr/bin/env node
// Supervisor of the virtual MicroPython board (started by tools/vboard/__main__.py, which owns the
// two ptys): runs the board thread (worker.mjs), restarts it for every reset, enforces the
// watchdog, and moves bytes between the launcher (stdin/stdout, framed as in shared.mjs) and the
// board's input rings.
//
//   node supervisor.mjs --flash DIR [--link-path PTY] [--heapsize BYTES] [--rom ROM.mpy]
//
// stdin frames: channel 0 REPL bytes, 1 link bytes, 2 a JSON command:
//   {"cmd": "reset", "cause": "power"|"hard"|"wdt", "quiet": bool}   hard reset, as the RUN/EN pin
//   {"cmd": "hang"} / {"cmd": "resume"}                                freeze the MCU / let it go on
//   {"cmd": "status"}
// stdout frames: channel 0 REPL output, 1 link output, 2 JSON events ("boot", "status", "log").
import { Worker } from "node:worker_threads";
import fs from "node:fs";
import * as S from "./shared.mjs";

const INTERRUPT_GRACE_MS = 3000; // a Ctrl-C nobody reads for this long: hard reset (a wedged wasm loop)

function parseArgs(argv) {
  const a = { flash: null, linkPath: "", heapsize: 4 * 1048576, rom: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--flash") a.flash = argv[++i];
    else if (argv[i] === "--link-path") a.linkPath = argv[++i];
    else if (argv[i] === "--heapsize") a.heapsize = Number(argv[++i]);
    else if (argv[i] === "--rom") a.rom = argv[++i];
    else throw new Error("unknown argument " + argv[i]);
  }
  if (!a.flash) throw new Error("--flash DIR is required");
  return a;
}

const args = parseArgs(process.argv.slice(2));
// The wasm is compiled once and handed to every board thread (a compiled WebAssembly.Module can be
// shared between threads): a reset then only instantiates it.
const WASM_PATH = new URL("../micropython/node_modules/@micropython/micropython-webassembly-pyscript/micropython.wasm",
  import.meta.url);
const wasm = await WebAssembly.compile(fs.readFileSync(WASM_PATH));
const shared = S.makeShared();
const ctl = new Int32Array(shared.ctl);
const clock = new Float64Array(shared.clock);
const repl = new S.Ring(shared.ctl, shared.repl, S.REPL_HEAD, S.REPL_TAIL);
const link = new S.Ring(shared.ctl, shared.link, S.LINK_HEAD, S.LINK_TAIL);

let worker = null;
let boots = 0;
let cause = "power";
let mode = "friendly";
let bootedAt = 0;
let restarting = false;
let pendingInterruptAt = 0; // when a Ctrl-C arrived that the board has not looked at yet
const dropped = { repl: 0, link: 0 };

function bell() {
  Atomics.add(ctl, S.DOORBELL, 1);
  Atomics.notify(ctl, S.DOORBELL);
}

function start(newCause, newMode, quiet) {
  boots += 1;
  cause = newCause;
  mode = newMode;
  bootedAt = S.now();
  clock[S.WDT_DEADLINE] = 0; // a reset stops the watchdog until the firmware starts it again
  clock[S.WDT_TIMEOUT] = 0;
  Atomics.store(ctl, S.HUNG, 0);
  pendingInterruptAt = 0;
  S.event({ event: "boot", boot: boots, cause, mode, quiet: !!quiet });
  const w = new Worker(new URL("./worker.mjs", import.meta.url), {
    workerData: { shared, flashDir: args.flash, linkPath: args.linkPath, heapsize: args.heapsize,
      cause, mode, boot: boots, rom: args.rom, wasm },
    stdout: false,
    stderr: false,
  });
  w.on("message", (msg) => {
    if (w !== worker) return;
    if (msg.type === "soft-reset") restart("soft", msg.mode);
    else if (msg.type === "hard-reset") restart("hard", "friendly");
    else if (msg.type === "crash") {
      S.event({ event: "log", msg: "board thread crashed: " + msg.error });
      restart("hard", "friendly");
    } else S.event({ event: msg.type, boot: boots, ms: Math.round(S.now() - bootedAt) });
  });
  w.on("error", (e) => {
    if (w !== worker) return;
    S.event({ event: "log", msg: "board thread error: " + ((e && e.stack) || e) });
    restart("hard", "friendly");
  });
  worker = w;
}

async function restart(newCause, newMode, quiet) {
  if (restarting) return;
  restarting = true;
  const w = worker;
  worker = null;
  Atomics.store(ctl, S.HUNG, 0);
  if (w) await w.terminate();
  if (newCause !== "soft") link.clear(); // bytes in the UART FIFO die with the chip
  restarting = false;
  start(newCause, newMode, quiet);
}

function command(c) {
  if (c.cmd === "reset") restart(c.cause || "hard", "friendly", c.quiet);
  else if (c.cmd === "hang") Atomics.store(ctl, S.HUNG, 1);
  else if (c.cmd === "resume") {
    Atomics.store(ctl, S.HUNG, 0);
    Atomics.notify(ctl, S.HUNG);
  } else if (c.cmd === "status") {
    S.event({ event: "status", boots, cause, mode, hung: !!Atomics.load(ctl, S.HUNG),
      wdt_ms: clock[S.WDT_TIMEOUT], uptime_ms: Math.round(S.now() - bootedAt), dropped,
      wasm_memory_mb: Math.round(clock[S.WASM_BYTES] / 1048576) });
  } else S.event({ event: "log", msg: "unknown command " + JSON.stringify(c) });
}

// ---- input from the launcher --------------------------------------------------------------------
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
    if (ch === S.CH_REPL) {
      const k = repl.push(data);
      dropped.repl += data.length - k;
      if (data.includes(3) && !pendingInterruptAt) pendingInterruptAt = S.now();
      any = true;
    } else if (ch === S.CH_LINK) {
      if (Atomics.load(ctl, S.HUNG)) {
        dropped.link += data.length; // a hung MCU does not read its UART
      } else {
        const k = link.push(data);
        dropped.link += data.length - k;
        any = true;
      }
    } else if (ch === S.CH_EVENT) {
      try {
        command(JSON.parse(data.toString()));
      } catch (e) {
        S.event({ event: "log", msg: "bad command: " + e });
      }
    }
  }
  if (any) bell();
});
process.stdin.on("end", () => process.exit(0));

// ---- the watchdog and the wedged-loop guard -------------------------------------------------------
setInterval(() => {
  if (!worker || restarting) return;
  const t = S.now();
  const deadline = clock[S.WDT_DEADLINE];
  if (deadline && t > deadline) {
    S.event({ event: "log", msg: "watchdog: not fed for " + clock[S.WDT_TIMEOUT] + " ms, resetting" });
    restart("wdt", "friendly");
    return;
  }
  if (pendingInterruptAt) {
    if (clock[S.LAST_POLL] >= pendingInterruptAt) pendingInterruptAt = 0;
    else if (t - pendingInterruptAt > INTERRUPT_GRACE_MS && !Atomics.load(ctl, S.HUNG)) {
      S.event({ event: "log", msg: "Ctrl-C not taken for " + INTERRUPT_GRACE_MS + " ms: hard reset" });
      restart("hard", "friendly");
    }
  }
}, 20);

start("power", "friendly");
