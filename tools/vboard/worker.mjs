// The board thread of the virtual MicroPython board: ONE MicroPython 1.27 (wasm) instance, its
// REPL driven byte by byte from the REPL ring, its hardware (`_vb`: link UART, watchdog, resets,
// flash persistence) for tools/vboard/rom.py. A reset of any kind is the supervisor terminating
// this thread and starting a fresh one (one MicroPython instance per thread; a fresh instance is
// a clean RAM). See tools/vboard/README.md for the wasm port's traps this works around.
import { workerData, parentPort } from "node:worker_threads";
import fs from "node:fs";
import path from "node:path";
import * as S from "./shared.mjs";

const PKG = new URL("../micropython/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs",
  import.meta.url);
const PYEXEC_FORCED_EXIT = 0x100;
const CAUSES = { power: 1, hard: 2, wdt: 3, soft: 5 };

const cfg = workerData;
const ctl = new Int32Array(cfg.shared.ctl);
const clock = new Float64Array(cfg.shared.clock);
const repl = new S.Ring(cfg.shared.ctl, cfg.shared.repl, S.REPL_HEAD, S.REPL_TAIL);
const link = new S.Ring(cfg.shared.ctl, cfg.shared.link, S.LINK_HEAD, S.LINK_TAIL);
const sleeper = new Int32Array(new SharedArrayBuffer(4));

let mp = null;
let Module = null;
let memory = null;     // the wasm memory, for bytes between Python buffers and the rings
let rom = null;        // the ROM module (rom.py) as a Python proxy
let rawMode = cfg.mode === "raw";
let rawLineLen = 0;
let swallow = false;   // drop REPL output (re-entering the raw REPL silently after a soft reset)
let dropOK = 0;        // raw-paste emulation: drop the raw REPL's "OK"

// ---- REPL output: \n -> \r\n as a board's console does, buffered, flushed before any wait ----------
const out = [];
let lastByte = 0;
function replByte(c) {
  if (swallow) return;
  if (dropOK) {
    const want = dropOK === 2 ? 0x4f : 0x4b; // 'O', 'K'
    dropOK = c === want ? dropOK - 1 : 0;
    if (c === want) return;
  }
  if (c === 10 && lastByte !== 13) out.push(13);
  out.push(c);
  lastByte = c;
  if (out.length >= 3000) flush();
}
function flush() {
  if (out.length) {
    blockWhileHung(); // a hung MCU prints nothing either
    S.emit(S.CH_REPL, Buffer.from(out));
    out.length = 0;
  }
}
function replWrite(bytes) {
  flush();
  S.emit(S.CH_REPL, Buffer.from(bytes));
}

// ---- input -------------------------------------------------------------------------------------
function touch() {
  clock[S.LAST_POLL] = S.now();
  if (memory) clock[S.WASM_BYTES] = memory.buffer.byteLength;
}

function blockWhileHung() {
  if (!Atomics.load(ctl, S.HUNG)) return;
  while (Atomics.load(ctl, S.HUNG)) Atomics.wait(ctl, S.HUNG, 1, 1000); // until resumed or reset
}

// Wait until the doorbell moves on from `bell` or `ms` pass (Infinity: forever). Callers read the
// doorbell BEFORE they look at the rings, so input that lands in between is never slept through.
function bellNow() {
  return Atomics.load(ctl, S.DOORBELL);
}
function waitBell(bell, ms) {
  flush();
  touch();
  if (ms === Infinity) Atomics.wait(ctl, S.DOORBELL, bell);
  else if (ms > 0) Atomics.wait(ctl, S.DOORBELL, bell, ms);
  touch();
}

// While Python runs: a Ctrl-C (the interrupt character) on the REPL interrupts it, as a board's
// UART interrupt does. Everything up to the character is consumed, the rest stays for the REPL.
function checkInterrupt() {
  const n = repl.available();
  if (!n) return false;
  const ic = Module._mp_hal_get_interrupt_char();
  if (ic < 0) return false;
  for (let i = 0; i < n; i++) {
    if (repl.peek(i) === ic) {
      repl.skip(i + 1);
      Module._mp_sched_keyboard_interrupt();
      return true;
    }
  }
  return false;
}

// The next REPL byte, waiting up to ms (-1 on timeout).
const DEBUG = !!process.env.VBOARD_DEBUG;
function readReplByte(ms) {
  const deadline = ms === Infinity ? Infinity : S.now() + ms;
  for (;;) {
    const bell = bellNow();
    if (repl.available()) {
      touch();
      const b = repl.peek(0);
      repl.skip(1);
      if (DEBUG) fs.writeSync(2, `[in ${b} raw=${rawMode} len=${rawLineLen}]\n`);
      return b;
    }
    const left = deadline - S.now();
    if (left <= 0) return -1;
    waitBell(bell, left);
  }
}

// ---- flash persistence: the MEMFS copy at /flash is written through to the host directory ---------
function hostPath(p) {
  const rel = path.posix.normalize(p).replace(/^\/+/, "");
  if (rel.startsWith("..")) throw new Error("path outside the flash: " + p);
  return path.join(cfg.flashDir, rel);
}
function copyIn(src, dest) {
  for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, ent.name);
    const d = dest + "/" + ent.name;
    if (ent.isDirectory()) {
      mp.FS.mkdirTree(d);
      copyIn(s, d);
    } else if (ent.isFile()) {
      mp.FS.writeFile(d, fs.readFileSync(s));
    }
  }
}
function flashUsed(dir) {
  let n = 0;
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    n += ent.isDirectory() ? flashUsed(p) : fs.statSync(p).size;
  }
  return n;
}

// ---- the hardware Python sees (module `_vb`). Called from inside wasm: nothing may throw. ---------
function guard(fn, fallback) {
  return (...args) => {
    try {
      return fn(...args);
    } catch (e) {
      S.event({ event: "log", msg: "vboard: " + (e && e.stack ? e.stack : e) });
      return fallback;
    }
  };
}
function heap() {
  return new Uint8Array(memory.buffer);
}

const vb = {
  sleep: guard((ms) => {
    blockWhileHung();
    const deadline = S.now() + ms;
    for (;;) {
      const bell = bellNow();
      if (checkInterrupt()) break;
      const left = deadline - S.now();
      if (left <= 0) break;
      waitBell(bell, left);
      blockWhileHung();
    }
    return 0;
  }, 0),
  link_open: guard(() => 0, 0),
  link_read: guard((addr, n) => {
    blockWhileHung();
    checkInterrupt();
    touch();
    const k = Math.min(n, link.available());
    if (k) link.take(k, heap(), addr);
    return k;
  }, 0),
  link_write: guard((addr, n) => {
    if (DEBUG && !vb.wrote) {
      vb.wrote = true;
      mark("first link write");
    }
    blockWhileHung();
    flush();
    S.emit(S.CH_LINK, Buffer.from(heap().subarray(addr, addr + n)));
    return n;
  }, 0),
  link_wait: guard((ms) => {
    blockWhileHung();
    const deadline = S.now() + ms;
    for (;;) {
      const bell = bellNow();
      if (link.available() || checkInterrupt()) break;
      const left = deadline - S.now();
      if (left <= 0) break;
      waitBell(bell, left);
      blockWhileHung();
    }
    return 0;
  }, 0),
  wdt_start: guard((ms) => {
    clock[S.WDT_TIMEOUT] = ms;
    clock[S.WDT_DEADLINE] = S.now() + ms;
    return 0;
  }, 0),
  wdt_feed: guard(() => {
    blockWhileHung();
    if (clock[S.WDT_TIMEOUT]) clock[S.WDT_DEADLINE] = S.now() + clock[S.WDT_TIMEOUT];
    return 0;
  }, 0),
  reset: guard((kind) => {
    flush();
    parentPort.postMessage({ type: kind === "soft" ? "soft-reset" : "hard-reset", mode: rawMode ? "raw" : "friendly" });
    for (;;) Atomics.wait(sleeper, 0, 0, 1000); // until the supervisor terminates this thread
  }, 0),
  reset_cause: guard(() => CAUSES[cfg.cause] || 0, 0),
  persist: guard((p) => {
    const hp = hostPath(p);
    fs.mkdirSync(path.dirname(hp), { recursive: true });
    fs.writeFileSync(hp, mp.FS.readFile("/flash" + path.posix.normalize("/" + p)));
    return 0;
  }, 0),
  persist_dir: guard((p) => {
    fs.mkdirSync(hostPath(p), { recursive: true });
    return 0;
  }, 0),
  unpersist: guard((p) => {
    fs.rmSync(hostPath(p), { recursive: true, force: true });
    return 0;
  }, 0),
  rename: guard((a, b) => {
    fs.renameSync(hostPath(a), hostPath(b));
    return 0;
  }, 0),
  flash_used: guard(() => flashUsed(cfg.flashDir), 0),
  link_path: guard(() => cfg.linkPath || "", ""),
  boot_count: guard(() => cfg.boot, 0),
};

// ---- the REPL ------------------------------------------------------------------------------------
function softReset() {
  flush();
  parentPort.postMessage({ type: "soft-reset", mode: rawMode ? "raw" : "friendly" });
  for (;;) Atomics.wait(sleeper, 0, 0, 1000);
}

function feedChar(b) {
  // track the REPL's mode as pyexec does: Ctrl-A enters the raw REPL, Ctrl-B leaves it
  if (rawMode) {
    if (b === 0x02) rawMode = false;
    else if (b === 0x04 || b === 0x03 || b === 0x01) rawLineLen = 0;
    else rawLineLen++;
  } else if (b === 0x01) {
    rawMode = true;
    rawLineLen = 0;
  }
  const r = mp.replProcessChar(b);
  flush();
  if (r & PYEXEC_FORCED_EXIT) softReset();
}

// Raw-paste mode (\x05 A \x01), emulated: the wasm port's own stdin reader cannot do it. The
// data comes in flow-controlled windows, then runs as raw REPL input would.
const WINDOW = 4096;
function rawPaste() {
  const b1 = readReplByte(1000);
  const b2 = b1 === 0x41 ? readReplByte(1000) : -1;
  if (b1 !== 0x41 || b2 !== 0x01) {
    feedChar(0x05);
    if (b1 >= 0) feedChar(b1);
    if (b2 >= 0) feedChar(b2);
    return;
  }
  replWrite([0x52, 0x01, WINDOW & 0xff, WINDOW >> 8]); // "R\x01" and the window size
  const code = [];
  let inWindow = 0;
  for (;;) {
    const b = readReplByte(Infinity);
    if (b === 0x04) break;
    code.push(b);
    if (++inWindow === WINDOW) {
      inWindow = 0;
      replWrite([0x01]); // room for another window
    }
  }
  replWrite([0x04]); // end of data acknowledged
  for (const c of code) mp.replProcessChar(c);
  rawLineLen = 0;
  dropOK = 2;
  const r = mp.replProcessChar(0x04);
  dropOK = 0;
  flush();
  if (r & PYEXEC_FORCED_EXIT) softReset();
}

const T0 = performance.now();
function mark(what) {
  if (DEBUG) fs.writeSync(2, `[vboard boot ${cfg.boot}: ${what} at ${(performance.now() - T0).toFixed(1)} ms]\n`);
}

async function main() {
  mark("thread started");
  const origInstantiate = WebAssembly.instantiate;
  WebAssembly.instantiate = async function (source, imports) {
    // the supervisor's precompiled module instead of compiling the bytes again
    const r = cfg.wasm ? { module: cfg.wasm, instance: await origInstantiate.call(this, cfg.wasm, imports) }
      : await origInstantiate.call(this, source, imports);
    const inst = r.instance || r;
    if (inst.exports && inst.exports.memory) memory = inst.exports.memory;
    return r;
  };
  const { loadMicroPython } = await import(PKG);
  mp = await loadMicroPython({
    heapsize: cfg.heapsize,
    linebuffer: false,
    stdout: (u8) => replByte(u8[0]),
    stderr: (u8) => replByte(u8[0]),
    stdin: () => {
      const b = readReplByte(Infinity);
      return b < 0 ? null : b;
    },
  });
  WebAssembly.instantiate = origInstantiate;
  mark("MicroPython loaded");
  Module = mp._module;
  if (!memory) throw new Error("could not reach the wasm memory");
  mp.FS.mkdirTree("/flash");
  copyIn(cfg.flashDir, "/flash");
  mp.FS.mkdirTree("/vbrom");
  if (cfg.rom) mp.FS.writeFile("/vbrom/_vbrom.mpy", fs.readFileSync(cfg.rom));
  else mp.FS.writeFile("/vbrom/_vbrom.py", fs.readFileSync(new URL("./rom.py", import.meta.url)));
  mp.registerJsModule("_vb", vb);
  mp.runPython("__import__('sys').path.insert(0, '/vbrom')\n__import__('_vbrom').mount_flash('/flash')");
  rom = mp.pyimport("_vbrom");
  mark("flash copied, ROM run");
  if (cfg.cause === "soft") replWrite(Buffer.from("MPY: soft reboot\r\n"));
  parentPort.postMessage({ type: "up" });
  // boot.py always; main.py only in the friendly REPL (as ports/rp2/main.c does)
  if (rom.run_script("boot.py") === 1) softReset();
  flush();
  mark("boot.py done");
  if (!rawMode && rom.run_script("main.py") === 1) softReset();
  flush();
  if (rawMode) {
    swallow = true;
    mp.replInit();
    swallow = false;
    rawMode = false;
    feedChar(0x01); // prints "raw REPL; CTRL-B to exit\r\n>"
  } else {
    mp.replInit();
  }
  flush();
  parentPort.postMessage({ type: "repl" });
  for (;;) {
    let b = -1;
    while (b < 0) {
      const nt = repl.available() ? 0 : rom.next_timer_ms();
      b = readReplByte(nt < 0 ? Infinity : nt);
      if (b < 0) {
        rom.run_timers();
        flush();
      }
    }
    blockWhileHung();
    if (rawMode && rawLineLen === 0 && b === 0x05) rawPaste();
    else feedChar(b);
  }
}

main().catch((e) => {
  flush();
  parentPort.postMessage({ type: "crash", error: (e && e.stack) || String(e) });
});
