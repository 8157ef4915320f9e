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
  heartbeat round trip through the board core with 64 SAs installed.

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
         "(<= 75% of it)", "every_transform_timed": "per-packet cycles for every transform at every size"}


def main():
    from bench import mpy_heap
    from tools.flash import flash
    from tools.rp2040 import EmulatedBoard, image_path

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with EmulatedBoard(timing="cycles") as eb, tempfile.TemporaryDirectory() as keys:
        flash("rp2040-emu", eb.repl, wait=False, link_key=os.path.join(keys, "link.key"))
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
    print("heartbeat through the board core with %d SAs: %.0f µs (%.0f cycles)" % (hb_sas, hb_us, hb_us * 125))
    print("emulator: %d cycles executed, %s MHz while busy" % (status["cycles"], status["busy_mhz"]))
    goals = {"heap_64_sas": goal(esp["total"] <= 0.75 * heap_total, esp["total"], "<= %d" % (0.75 * heap_total)),
             "every_transform_timed": goal(len(packets) == len(TRANSFORMS) and all(
                 v[s][0] > 0 for v in packets.values() for s in SIZES), len(packets), len(TRANSFORMS))}
    report_goals(goals)
    print("wrote", write("rp2040", {
        "goals": goals,
        "clock_hz": CLK_HZ, "ram_bytes": RAM_BYTES, "heap_bytes": heap_total, "heap": heap,
        "per_packet_us": {k: {str(s): {"encrypt_us": v[s][0], "decrypt_us": v[s][1], "esp_bytes": v[s][2],
                                       "encrypt_cycles": v[s][0] * CLK_HZ / 1e6,
                                       "decrypt_cycles": v[s][1] * CLK_HZ / 1e6} for s in SIZES}
                          for k, v in packets.items()},
        "heartbeat_us_64_sas": hb_us, "packets_per_figure": n,
        "image": str(image_path()), "image_sha256": hashlib.sha256(image_path().read_bytes()).hexdigest(),
    }))


if __name__ == "__main__":
    main()
