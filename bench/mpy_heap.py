"""Firmware heap use with SAs installed, on MicroPython (`inv bench --only mpy_heap`).

On the virtual MicroPython board, flashed as a board is (mpy-cross output, board.json), through
its REPL with mpremote's own raw-REPL transport: gc.mem_alloc() after importing the firmware,
after building the board core, and after installing 64 SAs through SA_ADD frames (16 each of
AES-GCM-128, AES-GCM-256, AES-CBC-128 + HMAC-SHA-256-128, AES-CBC-256 + HMAC), in and out.
Measured for the ESP engine (firmware/esp.py with the profile's crypto backend, `pure` on the
wasm build) and for the link-only core (firmware/board.py SA bookkeeping, no crypto state).

Each step is its own top-level exec: the wasm port collects garbage only between top-level
calls (gc.collect() inside running code does nothing there), so a step's garbage is gone when
the next one reads gc.mem_alloc(). Writes bench/results/mpy_heap.json.
"""
import sys

from bench._util import table, write

KINDS = [
    ("aes-gcm-16-128", "m.SaSpec(0x1000 + i, i % 2, m.ENCR_AES_GCM_16, bytes(range(20)), reqid=i)"),
    ("aes-gcm-16-256", "m.SaSpec(0x2000 + i, i % 2, m.ENCR_AES_GCM_16, bytes(range(36)), reqid=i)"),
    ("aes-cbc-128+hmac", "m.SaSpec(0x3000 + i, i % 2, m.ENCR_AES_CBC, bytes(range(16)), "
                         "m.AUTH_HMAC_SHA2_256_128, bytes(range(32)), reqid=i)"),
    ("aes-cbc-256+hmac", "m.SaSpec(0x4000 + i, i % 2, m.ENCR_AES_CBC, bytes(range(32)), "
                         "m.AUTH_HMAC_SHA2_256_128, bytes(range(32)), reqid=i)"),
]


def measure(repl, per_kind=16):
    """{engine: {"imported", "board", "sas", "per_kind": {...}, "installed"}} in bytes."""
    from mpremote.transport_serial import SerialTransport

    t = SerialTransport(repl, 115200)
    try:
        t.enter_raw_repl()

        def ex(code):
            return t.exec(code).decode().strip()

        def alloc():
            return int(ex("print(gc.mem_alloc())"))

        out = {}
        for engine, make in (("esp", "esp.make_board(cfg, 0, 1)"), ("link-only", "Board(cfg, 0)")):
            t.exit_raw_repl()
            t.enter_raw_repl()                       # a soft reset: a fresh heap
            ex("import gc, json")
            base = alloc()
            ex("from firmware.link import frame as fr, messages as m\nfrom firmware import esp\n"
               "from firmware.board import Board")
            imported = alloc()
            ex("cfg = json.load(open('board.json'))\nb = %s\nb.tick(0)" % make)
            board = alloc()
            seq, per_kind_bytes = 1, {}
            for name, spec in KINDS:
                a = alloc()
                ex("for i in range(%d):\n b.feed(fr.encode(m.SA_ADD, %d + i, 0, %s.encode()), 1)"
                   % (per_kind, seq, spec))
                seq += per_kind
                per_kind_bytes[name] = (alloc() - a) / per_kind
            sas = alloc()
            out[engine] = {"interpreter": base, "imported": imported - base, "board": board - imported,
                           "sas": sas - board, "total": sas - base, "per_kind": per_kind_bytes,
                           "installed": int(ex("print(len(b.sad))")),
                           "backend": ex("print(cfg.get('crypto', 'auto'))")}
        return out
    finally:
        try:
            t.exit_raw_repl()
        finally:
            t.close()


def main():
    from tools.flash import flash
    from tools.vboard import VirtualBoard

    per_kind = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    with VirtualBoard() as vb:
        flash("mpy-virtual", vb.repl, wait=False)
        res = measure(vb.repl, per_kind)
    rows = []
    for engine, r in res.items():
        rows.append((engine, r["backend"], r["installed"], r["imported"], r["board"], r["sas"],
                     "%.0f" % (r["sas"] / max(1, r["installed"])), r["total"]))
    table("Firmware heap on MicroPython 1.27 (virtual board), gc.mem_alloc() bytes",
          ["engine", "backend", "SAs", "code (imports)", "board core", "SAs", "per SA", "total"], rows)
    for engine, r in res.items():
        print("%s per SA: %s" % (engine, ", ".join("%s %.0f" % kv for kv in r["per_kind"].items())))
    print("wrote", write("mpy_heap", {"results": res, "goal_bytes_for_64_sas": 65536}))


if __name__ == "__main__":
    main()
