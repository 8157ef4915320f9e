"""The firmware on an emulated RP2040 (`inv bench --only rp2040`): heap with 64 SAs against the
chip's 264 KB of RAM, and the per-packet cost of each transform in emulated CPU cycles.

The board is tools/rp2040's: rp2040js running MicroPython's rp2 port (v1.27.0, RPI_PICO), so the
code is the real firmware on the real instruction set with the real cryptolib (mbedTLS AES in C)
and hashlib. It runs with `--timing cycles`: the chip's clock advances by the cycles the core
executes at clk_sys (125 MHz), so time.ticks_us() on the board measures emulated cycles / 125.
rp2040js charges each Cortex-M0+ instruction its cycles (loads/stores, branches, multiplies)
but not flash wait states: code running from flash on a real RP2040 stalls on XIP cache misses,
so real figures are this or slower.

Flashed with the real mpremote (tools/flash.py, mpy-cross output), then driven through the REPL:

- heap: bench/mpy_heap.py's measurement (gc.mem_alloc after each step, one top-level exec each)
  with the board's own backend (cryptolib) and the link-only core, 16 SAs of each of the four
  transforms = 64; gc.mem_free() + gc.mem_alloc() is the heap MicroPython has on the chip;
- per packet: for each transform an outbound SA and its inbound twin (firmware/esp.py on the
  cryptolib backend), N packets of 64 and 1400 bytes of IPv4 encrypted, and decrypted, one by
  one; µs per packet at 125 MHz = emulated ticks_us / N, cycles = µs x 125; and the
  heartbeat round trip through the board core with 64 SAs installed;
- the longest step: for each transform, ENCRYPT and DECRYPT frames of 2 x 1400 bytes of
  zero-filled IPv4 (the worst case for the link's COBS) through the board core on an
  authenticated link, worked on as firmware/runloop.py does it (Board.preallocate(), data
  replies through next_data()): feed() the request, then work(now, 1) and next_data() until the
  board is idle. Each of those turns is what the board does between two looks at its link; their
  longest (the frame's decode, a packet, a slice of one, the reply built, sealed, CRC'd and
  COBS-encoded into the board's buffer, and any garbage collection that falls into one) is the
  board's `step_us`.

Writes bench/results/rp2040.json. Needs the image (tools/rp2040/README.md).
"""
import hashlib
import os
import sys
import tempfile

from bench._util import goal, report_goals, table, write

CLK_HZ = 125_000_000
RAM_BYTES = 264 * 1024
TRANSFORMS = [
    ("aes-cbc-128+hmac-sha2-256-128", "m.ENCR_AES_CBC, bytes(range(16)), m.AUTH_HMAC_SHA2_256_128, bytes(range(32))"),
    ("aes-cbc-256+hmac-sha2-256-128", "m.ENCR_AES_CBC, bytes(range(32)), m.AUTH_HMAC_SHA2_256_128, bytes(range(32))"),
    ("aes-gcm-16-128", "m.ENCR_AES_GCM_16, bytes(range(20))"),
    ("aes-gcm-16-256", "m.ENCR_AES_GCM_16, bytes(range(36))"),
    ("chacha20-poly1305", "m.ENCR_CHACHA20_POLY1305, bytes(range(36))"),
]
SIZES = (64, 1400)

# Runs on the board: N packets through an outbound SA and back through its inbound twin.
PER_PACKET = """
import gc, time
from firmware import esp, crypto
from firmware.link import messages as m
be = crypto.load('cryptolib')
def ip(n):
    return bytes((0x45, 0, n >> 8, n & 255, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1)) + bytes(n - 20)
out = esp.new_sa(m.SaSpec(0x1000, m.DIR_OUT, %(keys)s), be)
inb = esp.new_sa(m.SaSpec(0x1000, m.DIR_IN, %(keys)s), be)
res = {}
for size in %(sizes)r:
    p = ip(size)
    st, w = out.encrypt(p)[:2]
    assert st == 0 and inb.decrypt(w)[0] == 0
    wires = []
    gc.collect()
    t0 = time.ticks_us()
    for i in range(%(n)d):
        st, w = out.encrypt(p)[:2]
        wires.append(w)
    t1 = time.ticks_us()
    for w in wires:
        st = inb.decrypt(w)[0]
    t2 = time.ticks_us()
    assert st == 0
    res[size] = (time.ticks_diff(t1, t0) / %(n)d, time.ticks_diff(t2, t1) / %(n)d, len(wires[0]))
print('RES', res)
"""

# Runs on the board: a heartbeat through the board core with the 64 SAs of the heap step.
HEARTBEAT = """
import time
from firmware.link import frame as fr
t0 = time.ticks_us()
for i in range(%(n)d):
    out = b.feed(fr.encode(m.HEARTBEAT, 50000 + i, 0, b''), 2)
t1 = time.ticks_us()
print('RES', time.ticks_diff(t1, t0) / %(n)d, len(b.sad), len(out))
"""

# Runs on the board: frames through the board core as the main loop drives it (firmware/tests/
# linkhost.py's LinkHost is prepended: the host's half of the authenticated link).
STEPS = """
import gc, time
from firmware.link import frame as fr
# the test host's half runs on the board's heap too: it decodes and seals into buffers of its own,
# made first (the heap fragments as the firmware is imported), so that its garbage does not fill
# the heap the board's steps are timed on
views = hasattr(fr.FrameDecoder, 'frames')
if views:
    hd = fr.FrameDecoder(4096, auth=True, views=True)
    hraw, hwire = bytearray(4096), bytearray(fr.max_wire_len(4096) + 2)
from firmware import esp
from firmware.link import messages as m
KEY = bytes(range(32))
def ip(n):
    return bytes((0x45, 0, n >> 8, n & 255, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1)) + bytes(n - 20)
b = esp.make_board({'board_id': 'x', 'max_frame': 4096, 'max_batch': 8, 'host_silence_ms': 0, 'link_key': KEY},
                   0, backend='cryptolib')
if views:
    b.preallocate()             # as firmware/runloop.py does, before any SA is added
h = LinkHost(b, 0, KEY)
assert h.call(m.HELLO, m.encode_hello_request(b'session1'))[0] == m.OK
for d in (m.DIR_OUT, m.DIR_IN):
    assert m.SadReply.decode(h.call(m.SA_ADD, m.SaSpec(0x1000, d, %(keys)s).encode())).status == m.OK
b.work_budget = 0               # as firmware/runloop.py sets the board up
if views:
    def collect(data):
        out = []
        for f in hd.frames(data):
            if h.auth.open(f) is not None and not f.flags & fr.FLAG_EVENT:
                f.body, f.raw = bytes(f.body), None
                out.append(f)
        return out
    h.collect = collect
    def frame(type, body, flags=0):
        h.seq += 1
        n = h.auth.current.sealer.seal_into(hwire, 0, hraw, type, h.seq, flags, body)
        return memoryview(hwire)[:n]
    h.frame = frame
b.hold_data = True
def run(type, body):
    wire = host(h.frame, type, body, fr.FLAG_NOCACHE)
    h.sent.clear()              # (the test host's recording: not what a board holds)
    body = None
    t0 = time.ticks_us()
    out = b.feed(wire, 0)
    feed = time.ticks_diff(time.ticks_us(), t0)
    replies = h.collect(out)
    worst = n = gcs = scans = 0
    while b.busy() or b.data_out:
        t = time.ticks_us()
        free = gc.mem_free()
        scans -= time.ticks_diff(time.ticks_us(), t)
        t = time.ticks_us()
        out = b.work(0, 1) if b.busy() else b''
        data = b.next_data()    # the loop turn puts a finished reply on the line (the port copies it)
        d = time.ticks_diff(time.ticks_us(), t)
        t = time.ticks_us()
        if gc.mem_free() > free:    # (gc.mem_free() scans the heap: not counted)
            gcs += 1            # the allocator collected the heap in this step
        scans -= time.ticks_diff(time.ticks_us(), t)
        worst = max(worst, d)
        n += 1
        replies += h.collect(out)
        if data:
            replies += h.collect(data)
    assert len(replies) == 1 and replies[0].type == type
    return time.ticks_diff(time.ticks_us(), t0) + scans, feed, worst, n, replies[0].body, gcs
def host(f, *a):
    # the test host's own work, between the board's steps: on the chip's fragmented heap it may
    # need a collection the board would not (the board's own MemoryErrors are answered INTERNAL)
    try:
        return f(*a)
    except MemoryError:
        gc.collect()
        return f(*a)
enc_req = m.encode_encrypt_request([(0x1000, ip(1400)), (0x1000, ip(1400))])
gc.collect()
res = {'encrypt': [], 'decrypt': []}
for k in range(%(rounds)d):
    tot, feed, worst, n, body, gcs = run(m.ENCRYPT, enc_req)
    st, items = host(m.decode_encrypt_reply, body)
    assert st == 0 and [i[0] for i in items] == [0, 0], (st, [i[0] for i in items], b.counters)
    res['encrypt'].append((tot, feed, worst, n, gcs))
    body = None
    req = host(m.encode_decrypt_request, [(None, items[0][1]), (None, items[1][1])])
    items = None
    tot, feed, worst, n, body, gcs = run(m.DECRYPT, req)
    req = None
    st, items = host(m.decode_decrypt_reply, body)
    assert st == 0 and [(i[0], len(i[2])) for i in items] == [(0, 1400)] * 2, (st, [i[0] for i in items])
    res['decrypt'].append((tot, feed, worst, n, gcs))
print('RES', res)
b = h = hd = hraw = hwire = body = items = req = enc_req = None   # (the next transform's run needs the heap)
gc.collect()
"""


def longest_steps(repl, keys, rounds):
    """{"encrypt"|"decrypt": [(frame µs, feed() µs, longest step µs, steps, steps in which the
    allocator collected the heap)] per round}."""
    from pathlib import Path
    host = (Path(__file__).resolve().parents[1] / "firmware" / "tests" / "linkhost.py").read_text()
    return on_board(repl, host + STEPS % {"keys": keys, "rounds": rounds})


def on_board(repl, code):
    from mpremote.transport_serial import SerialTransport

    t = SerialTransport(repl, 115200)
    try:
        t.enter_raw_repl()
        out = t.exec(code).decode()
    finally:
        try:
            t.exit_raw_repl()
        finally:
            t.close()
    for line in out.splitlines():
        if line.startswith("RES "):
            return eval(line[4:], {})            # the board printed a dict/tuple of numbers
    raise RuntimeError("the board printed no result:\n" + out)


def heartbeat_cost(repl, n):
    """µs per heartbeat through the board core with 64 SAs (16 of each transform) installed."""
    from mpremote.transport_serial import SerialTransport

    from bench.mpy_heap import KINDS

    t = SerialTransport(repl, 115200)
    try:
        t.enter_raw_repl()
        t.exec("import json\nfrom firmware.link import frame as fr, messages as m\nfrom firmware import esp\n"
               "cfg = json.load(open('board.json'))\nb = esp.make_board(cfg, 0, 1)\nb.tick(0)")
        seq = 1
        for _, spec in KINDS:
            t.exec("for i in range(16):\n b.feed(fr.encode(m.SA_ADD, %d + i, 0, %s.encode()), 1)" % (seq, spec))
            seq += 16
        out = t.exec(HEARTBEAT % {"n": n}).decode()
    finally:
        try:
            t.exit_raw_repl()
        finally:
            t.close()
    for line in out.splitlines():
        if line.startswith("RES "):
            us, sas, reply = line[4:].split()
            return float(us), int(sas), int(reply)
    raise RuntimeError("no heartbeat result:\n" + out)


GOALS = {"heap_64_sas": "the firmware with 64 SAs fits the emulated RP2040's MicroPython heap with room to spare "
         "(<= 75% of it)", "every_transform_timed": "per-packet cycles for every transform at every size",
         "longest_step": "no call between two looks at the link (a request's feed(), a work() unit, a frame's "
         "reply) longer than STEP_GOAL_US for any transform, frames of 2 x 1400 B of zeros"}
STEP_GOAL_US = 20_000


def main():
    from bench import mpy_heap
    from tools.flash import flash
    from tools.rp2040 import EmulatedBoard, image_path

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with EmulatedBoard(timing="cycles") as eb, tempfile.TemporaryDirectory() as keys:
        flash("rp2040-emu", eb.repl, wait=False, link_key=os.path.join(keys, "link.key"))
        # first, on the heap main.py leaves: after the other steps a 3 KB frame may find no room
        steps = {name: longest_steps(eb.repl, keys, 3) for name, keys in TRANSFORMS}
        chacha_slice = on_board(eb.repl, "from firmware.crypto import chachapoly\nprint('RES', chachapoly.SLICE)")
        # the profile admits 32 SAs; this measures what 64 cost, so the flashed board.json says 64
        on_board(eb.repl, "import json\nc = json.load(open('board.json'))\nc['max_sas'] = 64\n"
                 "json.dump(c, open('board.json', 'w'))\nprint('RES', c['max_sas'])")
        heap = mpy_heap.measure(eb.repl, 16, ("esp", "link-only"))
        total_heap = on_board(eb.repl, "import gc\ngc.collect()\nprint('RES', (gc.mem_free(), gc.mem_alloc()))")
        packets = {}
        for name, keys in TRANSFORMS:
            # GCM's GHASH and all of ChaCha20-Poly1305 are Python (cryptolib has AES ECB and CBC only)
            k = n if "cbc" in name else max(2, n // 4)
            packets[name] = on_board(eb.repl, PER_PACKET % {"keys": keys, "sizes": SIZES, "n": k})
        hb_us, hb_sas, _ = heartbeat_cost(eb.repl, n)
        status = eb.command("status")
    free, alloc = total_heap
    heap_total = free + alloc
    esp = heap["esp"]
    rows = []
    for name, r in packets.items():
        for size in SIZES:
            enc, dec, wire = r[size]
            rows.append((name, size, wire, "%.0f" % enc, "%.0f" % (enc * CLK_HZ / 1e6), "%.0f" % dec,
                         "%.0f" % (dec * CLK_HZ / 1e6), "%.0f" % (1e6 / enc), "%.2f" % (size * 8 / enc)))
    table("Per packet on the emulated RP2040 (MicroPython 1.27 rp2, cryptolib; emulated µs at 125 MHz)",
          ["transform", "bytes", "ESP bytes", "encrypt µs", "cycles", "decrypt µs", "cycles", "enc pkt/s",
           "enc Mbit/s"], rows)
    table("Heap on the emulated RP2040, gc.mem_alloc() bytes (16 SAs of each transform = 64)",
          ["engine", "backend", "SAs", "code (imports)", "board core", "SAs installed", "SAs after 1 packet",
           "per SA", "total"],
          [(engine, r["backend"], r["installed"], r["imported"], r["board"], r["installed_sas"], r["sas"],
            "%.0f" % (r["sas"] / max(1, r["installed"])), r["total"]) for engine, r in heap.items()])
    print("MicroPython heap on the chip: %d bytes (gc.mem_free %d + gc.mem_alloc %d) of %d bytes of RAM; "
          "the firmware with 64 SAs uses %d (%.0f%% of the heap, %.0f%% of the RAM)"
          % (heap_total, free, alloc, RAM_BYTES, esp["total"], 100 * esp["total"] / heap_total,
             100 * esp["total"] / RAM_BYTES))
    step_rows, step_us = [], {}
    for name, r in steps.items():
        worst = max(max(f[1], f[2]) for d in r.values() for f in d)
        step_us[name] = {"longest_step_us": worst}
        for d, frames in r.items():
            step_us[name][d] = {"frame_us": max(f[0] for f in frames), "feed_us": max(f[1] for f in frames),
                                "longest_work_us": max(f[2] for f in frames), "work_calls": frames[0][3]}
            s = step_us[name][d]
            step_rows.append((name, d, "%.0f" % s["frame_us"], "%.0f" % (s["frame_us"] / 2), "%.0f" % s["feed_us"],
                              "%.0f" % s["longest_work_us"], s["work_calls"]))
    table("Longest step on the emulated RP2040: frames of 2 x 1400 B of zeros, authenticated link, "
          "feed() then work(now, 1) and next_data() until idle, 3 rounds (emulated µs)",
          ["transform", "frame", "frame µs", "per packet µs", "feed() µs", "longest work() µs", "work() calls"],
          step_rows)
    print("heartbeat through the board core with %d SAs: %.0f µs (%.0f cycles)" % (hb_sas, hb_us, hb_us * 125))
    print("emulator: %d cycles executed, %s MHz while busy" % (status["cycles"], status["busy_mhz"]))
    goals = {"heap_64_sas": goal(esp["total"] <= 0.75 * heap_total, esp["total"], "<= %d" % (0.75 * heap_total)),
             "every_transform_timed": goal(len(packets) == len(TRANSFORMS) and all(
                 v[s][0] > 0 for v in packets.values() for s in SIZES), len(packets), len(TRANSFORMS)),
             "longest_step": goal(max(v["longest_step_us"] for v in step_us.values()) <= STEP_GOAL_US,
                                  max(v["longest_step_us"] for v in step_us.values()), "<= %d" % STEP_GOAL_US)}
    report_goals(goals)
    print("wrote", write("rp2040", {
        "goals": goals,
        "clock_hz": CLK_HZ, "ram_bytes": RAM_BYTES, "heap_bytes": heap_total, "heap": heap,
        "per_packet_us": {k: {str(s): {"encrypt_us": v[s][0], "decrypt_us": v[s][1], "esp_bytes": v[s][2],
                                       "encrypt_cycles": v[s][0] * CLK_HZ / 1e6,
                                       "decrypt_cycles": v[s][1] * CLK_HZ / 1e6} for s in SIZES}
                          for k, v in packets.items()},
        "steps": step_us, "chacha_slice_units": chacha_slice,
        "heartbeat_us_64_sas": hb_us, "packets_per_figure": n,
        "image": str(image_path()), "image_sha256": hashlib.sha256(image_path().read_bytes()).hexdigest(),
    }))


if __name__ == "__main__":
    main()
