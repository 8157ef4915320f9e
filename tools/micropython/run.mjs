#!/usr/bin/env node
// Run Python code under the real MicroPython 1.27 (npm @micropython/micropython-webassembly-pyscript).
//
//   node tools/micropython/run.mjs [options] (SCRIPT.py | -m MODULE | -c CODE) [ARGS...]
//
// Options (before the target; everything after the target goes to sys.argv[1:]):
//   --copy SRC[:DEST]   copy a host file or directory tree into MicroPython's filesystem, preserving
//                       paths below it (default DEST: /<basename of SRC>, e.g. --copy firmware -> /firmware).
//                       Repeatable; later copies overwrite earlier files. Skips __pycache__, *.pyc, dot-files.
//   --path DIR          prepend DIR to sys.path (repeatable, order kept). MicroPython's default path is
//                       ['', '.frozen', '/lib'] and the working directory is '/', so /firmware imports as
//                       `firmware` without --path.
//   --cwd DIR           working directory inside MicroPython (default /).
//   --timeout SECONDS   wall-clock limit for the whole run (default 120; 0 = none). On expiry the MicroPython
//                       thread is terminated, a message goes to stderr and the exit status is 124.
//   --heapsize N[k|m]   MicroPython GC heap (default 2m; the pyscript build grows it on demand).
//   --timing            report load/copy/run times on stderr.
//
// Targets: SCRIPT.py is a path inside MicroPython's filesystem (copy it in first) run as __main__;
// -m MODULE finds MODULE's source on sys.path and runs it as __main__ after importing its parent package
// (like `python -m`); -c CODE runs CODE as __main__.
//
// Exit status: the program's (sys.exit(n) -> n, an uncaught exception -> 1 with its traceback on stderr),
// 124 on timeout, 2 on a usage error, 70 if the harness itself failed (a JS exception, a broken install).
//
// Design (README.md next to this file): this thread only supervises. MicroPython runs in a
// worker thread (worker.mjs) because runPython() is synchronous and blocks its event loop: a timer in
// the same thread could never fire while Python loops. worker.terminate() stops even a tight wasm loop.
// One worker = one MicroPython instance (a second loadMicroPython in the same JS realm breaks the first).
import { Worker } from "node:worker_threads";
import fs from "node:fs";
import path from "node:path";

const USAGE = "usage: run.mjs [--copy SRC[:DEST]]... [--path DIR]... [--cwd DIR] [--timeout S] " +
  "[--heapsize N[k|m]] [--timing] (SCRIPT.py | -m MODULE | -c CODE) [ARGS...]";

function die(msg, code) {
  process.stderr.write(`run.mjs: ${msg}\n`);
  process.exit(code);
}

function parseSize(s) {
  const m = /^(\d+)([kKmM]?)$/.exec(s);
  if (!m) die(`bad --heapsize ${JSON.stringify(s)}`, 2);
  return parseInt(m[1], 10) * ({ "": 1, k: 1024, m: 1048576 })[m[2].toLowerCase()];
}

export function parseArgs(argv) {
  const cfg = { copies: [], path: [], cwd: "/", timeout: 120, heapsize: 2 * 1048576, timing: false };
  let i = 0;
  const need = (opt) => {
    if (i + 1 >= argv.length) die(`${opt} needs a value\n${USAGE}`, 2);
    return argv[++i];
  };
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--copy") {
      const v = need(a);
      const k = v.indexOf(":");
      const src = k >= 0 ? v.slice(0, k) : v;
      const dest = k >= 0 ? v.slice(k + 1) : "/" + path.basename(path.resolve(src));
      if (!dest.startsWith("/")) die(`--copy destination must be absolute: ${v}`, 2);
      cfg.copies.push({ src: path.resolve(src), dest });
    } else if (a === "--path") cfg.path.push(need(a));
    else if (a === "--cwd") cfg.cwd = need(a);
    else if (a === "--timeout") {
      const v = need(a);
      cfg.timeout = Number(v);
      if (!Number.isFinite(cfg.timeout) || cfg.timeout < 0) die(`bad --timeout ${JSON.stringify(v)}`, 2);
    } else if (a === "--heapsize") cfg.heapsize = parseSize(need(a));
    else if (a === "--timing") cfg.timing = true;
    else if (a === "-m" || a === "-c") {
      cfg.kind = a === "-m" ? "module" : "code";
      cfg.target = need(a);
      cfg.args = argv.slice(i + 1);
      break;
    } else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    } else if (a.startsWith("-")) die(`unknown option ${a}\n${USAGE}`, 2);
    else {
      cfg.kind = "script";
      cfg.target = a;
      cfg.args = argv.slice(i + 1);
      break;
    }
  }
  if (!cfg.kind) die(`no target given\n${USAGE}`, 2);
  for (const c of cfg.copies) {
    if (!fs.existsSync(c.src)) die(`--copy source does not exist: ${c.src}`, 2);
  }
  return cfg;
}

// Output buffer shared with the worker: Int32 count of pending bytes, then the bytes.
function makeOutBuffer() {
  return new SharedArrayBuffer(4 + (1 << 16));
}

// Write what the (now terminated) worker had buffered but not flushed, e.g. a prompt without a newline.
function drainOutBuffer(fd, shared) {
  const n = new Int32Array(shared, 0, 1)[0];
  if (n > 0) {
    try {
      fs.writeSync(fd, new Uint8Array(shared, 4, n));
    } catch (e) {
      // nothing sensible left to do with output we cannot write
    }
  }
}

function main() {
  const cfg = parseArgs(process.argv.slice(2));
  cfg.outBuffers = [makeOutBuffer(), makeOutBuffer()];
  const t0 = performance.now();
  // stdout/stderr: false would pipe the worker's process.stdout through this thread asynchronously;
  // the worker writes to fds 1 and 2 itself (synchronously), so output is streamed and never lost when
  // the worker is terminated.
  const worker = new Worker(new URL("./worker.mjs", import.meta.url), { workerData: cfg });
  let result = null;
  let timedOut = false;
  let timer = null;
  if (cfg.timeout > 0) {
    timer = setTimeout(async () => {
      timedOut = true;
      await worker.terminate();
      drainOutBuffer(1, cfg.outBuffers[0]);
      drainOutBuffer(2, cfg.outBuffers[1]);
      fs.writeSync(2, `\nrun.mjs: timed out after ${cfg.timeout} s of wall-clock time; MicroPython was ` +
        "terminated (a loop that never returns? a busy time.sleep? blocked on stdin?)\n");
      process.exit(124);
    }, cfg.timeout * 1000);
  }
  worker.on("message", (m) => { result = m; });
  worker.on("error", (e) => {
    result = { harnessError: (e && e.stack) || String(e) };
  });
  worker.on("exit", () => {
    if (timedOut) return; // the timer callback reports and exits
    if (timer) clearTimeout(timer);
    if (!result) die("MicroPython worker exited without a result", 70);
    if (result.harnessError) die(`harness error: ${result.harnessError}`, 70);
    if (cfg.timing) {
      const t = result.timing;
      process.stderr.write(`run.mjs: timing: load ${t.load.toFixed(1)} ms, copy ${t.copy.toFixed(1)} ms ` +
        `(${t.files} files, ${t.bytes} bytes), run ${t.run.toFixed(1)} ms, total ` +
        `${(performance.now() - t0).toFixed(1)} ms (since node start ${performance.now().toFixed(1)} ms)\n`);
    }
    process.exit(result.rc);
  });
}

main();
