#!/usr/bin/env node
// asyncio vs a tight loop for the board's main loop, on the real MicroPython 1.27 (wasm).
//
//   node tools/micropython/loopbench.mjs FIRMWARE_DIR [N]
//
// Both variants move the same N requests (heartbeats, and SA_ADD/SA_DEL pairs) through the real
// board core (firmware/board.py) from an in-memory port, and write the replies back:
//   tight    firmware/runloop.py run(): read, feed/tick, write, sleep only when idle
//   asyncio  one serving task and one timer task, as an asyncio firmware would be written: the
//            serving task awaits the port's next chunk (a stream read), the timer task sleeps to
//            board.next_deadline(). The wasm asyncio has no asyncio.run: the coroutine is started
//            with runPythonAsync and awaited from JS, whose event loop drives the tasks.
// Prints one JSON line per variant: {"variant", "requests", "ms", "us_per_request", "replies"}.
import fs from "node:fs";
import path from "node:path";

const PKG = new URL("./node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs", import.meta.url);

function copyIn(FS, src, dest) {
  const st = fs.statSync(src);
  if (st.isDirectory()) {
    FS.mkdirTree(dest);
    for (const e of fs.readdirSync(src)) {
      if (e === "__pycache__" || e.startsWith(".")) continue;
      copyIn(FS, path.join(src, e), dest + "/" + e);
    }
  } else FS.writeFile(dest, fs.readFileSync(src));
}

const COMMON = `
import time, gc
from firmware.board import Board
from firmware.link import frame as fr, messages as m
from firmware import runloop

def requests(n):
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(fr.encode(m.HEARTBEAT, i & 0xFFFF, fr.FLAG_NOCACHE, b""))
        elif i % 3 == 1:
            out.append(fr.encode(m.SA_ADD, i & 0xFFFF, 0, m.SaSpec(0x1000 + i, 0, m.ENCR_AES_GCM_16, b"k" * 20).encode()))
        else:
            out.append(fr.encode(m.SA_DEL, i & 0xFFFF, 0, m.encode_sa_ref(0x1000 + i - 1, 0)))
    return out

class MemPort:
    def __init__(self, chunks):
        self.chunks = chunks
        self.i = 0
        self.out = 0
    def read_into(self, buf):
        if self.i >= len(self.chunks):
            return 0
        c = self.chunks[self.i]
        self.i += 1
        buf[:len(c)] = c
        return len(c)
    def write(self, data):
        self.out += len(data)
    def wait(self, ms):
        pass
    def flush(self):
        pass

def replies(board):
    return board.counters["requests"]
`;

const TIGHT = `
def bench_tight(n):
    chunks = requests(n)
    board = Board({"board_id": "b", "host_silence_ms": 0, "max_sas": 4096}, 0)
    port = MemPort(chunks)
    clock = runloop.Clock()
    t0 = time.ticks_us()
    runloop.run(board, port, lambda: None, clock, steps=n + 1)
    return "%d %d" % (time.ticks_diff(time.ticks_us(), t0), replies(board))
`;

const ASYNC = `
import asyncio

class AsyncPort(MemPort):
    async def read(self, buf):
        # a stream read: yields to the loop, as awaiting a UART's StreamReader does
        await asyncio.sleep_ms(0)
        return self.read_into(buf)

async def bench_async(n):
    chunks = requests(n)
    board = Board({"board_id": "b", "host_silence_ms": 0, "max_sas": 4096}, 0)
    port = AsyncPort(chunks)
    clock = runloop.Clock()
    buf = bytearray(1024)
    mv = memoryview(buf)
    done = asyncio.Event()

    async def serve():
        while port.i < len(port.chunks):
            k = await port.read(buf)
            out = board.feed(mv[:k], clock()) if k else board.tick(clock())
            if out:
                port.write(out)
        done.set()

    async def timers():
        while not done.is_set():
            out = board.tick(clock())
            if out:
                port.write(out)
            d = board.next_deadline()
            await asyncio.sleep_ms(50 if d is None else max(0, min(50, d - clock())))

    t0 = time.ticks_us()
    asyncio.create_task(timers())
    await serve()
    return "%d %d" % (time.ticks_diff(time.ticks_us(), t0), replies(board))
`;

async function main() {
  const [fwdir, nArg] = process.argv.slice(2);
  const n = Number(nArg || 600);
  const { loadMicroPython } = await import(PKG);
  const mp = await loadMicroPython({ stdout: (s) => process.stdout.write(s + "\n"), linebuffer: true });
  copyIn(mp.FS, fwdir, "/firmware");
  mp.runPython(COMMON + TIGHT + ASYNC);
  const results = [];
  for (let round = 0; round < 3; round++) {
    const t = mp.globals.get("bench_tight")(n).split(" ").map(Number);
    results.push({ variant: "tight", round, us: t[0], replies: t[1] });
    const a = (await mp.globals.get("bench_async")(n)).split(" ").map(Number);
    results.push({ variant: "asyncio", round, us: a[0], replies: a[1] });
  }
  for (const v of ["tight", "asyncio"]) {
    const rs = results.filter((r) => r.variant === v);
    const best = Math.min(...rs.map((r) => r.us));
    console.log(JSON.stringify({ variant: v, requests: n, ms: best / 1000, us_per_request: best / n,
      replies: rs[0].replies, rounds: rs.map((r) => r.us / 1000) }));
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(70);
});
