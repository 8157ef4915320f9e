// Shared memory between the supervisor (supervisor.mjs) and the board thread (worker.mjs) of the
// virtual MicroPython board. It outlives each MicroPython instance, so input that arrives during
// a reset is kept, as a UART's FIFO would keep it (tools/vboard/README.md).
import fs from "node:fs";

// Int32 slots of `ctl`
export const DOORBELL = 0;   // bumped (and notified) on every input or control change
export const REPL_HEAD = 1;  // ring write positions (supervisor) and read positions (board)
export const REPL_TAIL = 2;
export const LINK_HEAD = 3;
export const LINK_TAIL = 4;
export const HUNG = 5;       // 1: every call into the board's hardware blocks (a hung MCU)
// Float64 slots of `clock` (absolute ms: performance.timeOrigin + performance.now())
export const WDT_DEADLINE = 0;  // 0: watchdog not started
export const WDT_TIMEOUT = 1;
export const LAST_POLL = 2;     // when the board last looked at its input
export const WASM_BYTES = 3;    // the MicroPython instance's wasm memory (its heap only grows, see README)

export const REPL_SIZE = 1 << 16;
export const LINK_SIZE = 1 << 18;

export function now() {
  return performance.timeOrigin + performance.now();
}

export function makeShared() {
  return {
    ctl: new SharedArrayBuffer(64),
    clock: new SharedArrayBuffer(32),
    repl: new SharedArrayBuffer(REPL_SIZE),
    link: new SharedArrayBuffer(LINK_SIZE),
  };
}

// Single-producer single-consumer byte ring in a SharedArrayBuffer; head/tail live in `ctl`.
export class Ring {
  constructor(ctl, buf, headSlot, tailSlot) {
    this.ctl = new Int32Array(ctl);
    this.buf = new Uint8Array(buf);
    this.size = this.buf.length;
    this.h = headSlot;
    this.t = tailSlot;
  }
  available() {
    const h = Atomics.load(this.ctl, this.h);
    const t = Atomics.load(this.ctl, this.t);
    return (h - t + this.size) % this.size;
  }
  // producer: returns how many bytes fit (the rest is dropped, like a UART overrun)
  push(data) {
    const h = Atomics.load(this.ctl, this.h);
    const t = Atomics.load(this.ctl, this.t);
    const free = (t - h - 1 + this.size) % this.size;
    const n = Math.min(free, data.length);
    for (let i = 0; i < n; i++) this.buf[(h + i) % this.size] = data[i];
    Atomics.store(this.ctl, this.h, (h + n) % this.size);
    return n;
  }
  // consumer
  peek(i) {
    return this.buf[(Atomics.load(this.ctl, this.t) + i) % this.size];
  }
  take(n, into, offset) {
    const t = Atomics.load(this.ctl, this.t);
    n = Math.min(n, this.available());
    for (let i = 0; i < n; i++) into[offset + i] = this.buf[(t + i) % this.size];
    Atomics.store(this.ctl, this.t, (t + n) % this.size);
    return n;
  }
  skip(n) {
    const t = Atomics.load(this.ctl, this.t);
    Atomics.store(this.ctl, this.t, (t + Math.min(n, this.available())) % this.size);
  }
  clear() {
    Atomics.store(this.ctl, this.t, Atomics.load(this.ctl, this.h));
  }
}

// Messages to the launcher on fd 1: channel (1 byte), length (2, big-endian), data. Channel 0 is
// the REPL, 1 the link, 2 a JSON event. A frame is at most 4 KB, so one write() of it is atomic on
// a pipe (PIPE_BUF): the supervisor and the board thread can both write without interleaving.
export const CH_REPL = 0;
export const CH_LINK = 1;
export const CH_EVENT = 2;
const MAX_CHUNK = 4000;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

export function emit(chan, data) {
  let off = 0;
  do {
    const chunk = data.subarray(off, Math.min(off + MAX_CHUNK, data.length));
    const frame = Buffer.allocUnsafe(3 + chunk.length);
    frame[0] = chan;
    frame.writeUInt16BE(chunk.length, 1);
    frame.set(chunk, 3);
    let w = 0;
    while (w < frame.length) {
      try {
        w += fs.writeSync(1, frame, w, frame.length - w);
      } catch (e) {
        if (e.code === "EAGAIN") Atomics.wait(sleeper, 0, 0, 1);
        else return false; // the launcher is gone
      }
    }
    off += MAX_CHUNK;
  } while (off < data.length);
  return true;
}

export function event(obj) {
  return emit(CH_EVENT, Buffer.from(JSON.stringify(obj)));
}
