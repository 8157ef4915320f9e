// Worker thread of run.mjs: loads ONE MicroPython instance, copies host trees into its filesystem, runs
// bootstrap.py (which runs the target as __main__) and posts {rc, timing} to the supervising thread.
// Output is written synchronously to fds 1 and 2, so nothing is lost if the supervisor terminates us.
import { workerData, parentPort } from "node:worker_threads";
import fs from "node:fs";
import path from "node:path";

const PKG = "@micropython/micropython-webassembly-pyscript";
const sleeper = new Int32Array(new SharedArrayBuffer(4));

// Buffered, synchronous writer for a file descriptor, fed one byte at a time by the wasm port. The buffer
// lives in a SharedArrayBuffer owned by run.mjs (see makeOutBuffer there), so when run.mjs terminates this
// thread on a timeout it can still write out a partial line that was not flushed yet.
class Out {
  constructor(fd, shared) {
    this.fd = fd;
    this.len = new Int32Array(shared, 0, 1); // [0] = bytes pending
    this.buf = new Uint8Array(shared, 4);
    this.broken = false;
  }
  byte(c) {
    const n = this.len[0];
    this.buf[n] = c;
    Atomics.store(this.len, 0, n + 1);
    if (c === 10 || n + 1 === this.buf.length) this.flush();
  }
  flush() {
    const n = this.len[0];
    let off = 0;
    while (off < n && !this.broken) {
      try {
        off += fs.writeSync(this.fd, this.buf, off, n - off);
      } catch (e) {
        if (e.code === "EAGAIN") Atomics.wait(sleeper, 0, 0, 1); // non-blocking pipe is full: wait 1 ms
        else this.broken = true; // EPIPE etc.: the reader went away; drop output, keep running
      }
    }
    Atomics.store(this.len, 0, 0);
  }
}

// Copy a host file or directory tree to dest in the Emscripten FS that MicroPython's VFS sees.
function copyIn(FS, src, dest, stats) {
  const st = fs.statSync(src);
  if (st.isDirectory()) {
    FS.mkdirTree(dest);
    for (const ent of fs.readdirSync(src).sort()) {
      if (ent.startsWith(".") || ent === "__pycache__" || ent.endsWith(".pyc")) continue;
      copyIn(FS, path.join(src, ent), dest.replace(/\/+$/, "") + "/" + ent, stats);
    }
  } else if (st.isFile()) {
    FS.mkdirTree(path.posix.dirname(dest));
    const data = fs.readFileSync(src);
    FS.writeFile(dest, data);
    stats.files += 1;
    stats.bytes += data.length;
  }
}

async function main(cfg) {
  const out = new Out(1, cfg.outBuffers[0]);
  const err = new Out(2, cfg.outBuffers[1]);
  // These callbacks are called from inside wasm: a JS exception thrown here would not become a Python
  // exception but would tear through the interpreter. They must never throw.
  const safe = (o) => (u8) => {
    try {
      o.byte(u8[0]);
    } catch (e) {
      o.broken = true;
    }
  };
  let loadMicroPython;
  try {
    ({ loadMicroPython } = await import(PKG));
  } catch (e) {
    throw new Error(`cannot load ${PKG} (${e.message}); run: npm ci --prefix tools/micropython`);
  }
  const t0 = performance.now();
  const mp = await loadMicroPython({
    heapsize: cfg.heapsize, stdout: safe(out), stderr: safe(err), linebuffer: false,
  });
  const t1 = performance.now();
  const stats = { files: 0, bytes: 0 };
  for (const c of cfg.copies) copyIn(mp.FS, c.src, c.dest, stats);
  const t2 = performance.now();
  const bootstrap = fs.readFileSync(new URL("./bootstrap.py", import.meta.url), "utf8");
  mp.globals.set("_run_mjs_cfg", JSON.stringify(cfg));
  let rc;
  try {
    mp.runPython(bootstrap);
    rc = mp.globals.get("_run_mjs_rc");
  } catch (e) {
    // bootstrap.py catches BaseException, so only a broken harness lands here.
    if (e && e.name === "PythonError") throw new Error(`bootstrap failed: ${e.type}: ${e.message}`);
    throw e;
  } finally {
    out.flush();
    err.flush();
  }
  if (typeof rc !== "number") throw new Error(`bootstrap left no exit status (got ${rc})`);
  const t3 = performance.now();
  parentPort.postMessage({
    rc,
    timing: { load: t1 - t0, copy: t2 - t1, run: t3 - t2, files: stats.files, bytes: stats.bytes },
  });
}

try {
  await main(workerData);
} catch (e) {
  parentPort.postMessage({ harnessError: (e && e.stack) || String(e) });
}
