# Runs under MicroPython (tools/micropython/run.mjs): the firmware's heap use, as on a board.
#   node tools/micropython/run.mjs --copy BUILD/firmware --copy board.json:/board.json /heap.py N
# BUILD/firmware is the firmware as `inv flash` stages it (.mpy from mpy-cross). Prints one line
# `HEAP {json}` with gc.mem_alloc() after a gc.collect() at each stage: the interpreter alone, the
# firmware imported, the board core built from board.json, then N SAs installed through the link
# (SA_ADD frames fed to the board core, as the host sends them), half AES-GCM-128/256, half
# AES-CBC + HMAC-SHA-256-128, inbound and outbound, with a replay window of 64.
import gc
import json
import sys

gc.collect()
stages = {"interpreter": gc.mem_alloc()}

from firmware.link import frame as fr  # noqa: E402
from firmware.link import messages as m  # noqa: E402

try:
    from firmware import esp
except ImportError:
    esp = None
from firmware.board import Board  # noqa: E402

gc.collect()
stages["imported"] = gc.mem_alloc()

with open("/board.json") as f:
    cfg = json.load(f)
if esp is not None:
    board = esp.make_board(cfg, 0, m.RESET_POWER_ON)
else:
    board = Board(cfg, 0)
board.tick(0)
gc.collect()
stages["board"] = gc.mem_alloc()

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
ok = 0
for i in range(n):
    kind = i % 4
    if kind == 0:
        spec = m.SaSpec(0x1000 + i, i % 2, m.ENCR_AES_GCM_16, bytes(range(20)), reqid=i)
    elif kind == 1:
        spec = m.SaSpec(0x1000 + i, i % 2, m.ENCR_AES_GCM_16, bytes(range(36)), reqid=i)
    elif kind == 2:
        spec = m.SaSpec(0x1000 + i, i % 2, m.ENCR_AES_CBC, bytes(range(16)), m.AUTH_HMAC_SHA2_256_128,
                        bytes(range(32)), reqid=i)
    else:
        spec = m.SaSpec(0x1000 + i, i % 2, m.ENCR_AES_CBC, bytes(range(32)), m.AUTH_HMAC_SHA2_256_128,
                        bytes(range(32)), reqid=i)
    out = board.feed(fr.encode(m.SA_ADD, i + 1, 0, spec.encode()), 1 + i)
    for f in fr.FrameDecoder(65535).feed(out):
        if f.type == m.SA_ADD and f.body[0] == m.OK:
            ok += 1
del out, spec
gc.collect()
stages["sas"] = gc.mem_alloc()
print("HEAP " + json.dumps({"stages": stages, "installed": ok, "requested": n, "sad": len(board.sad),
                            "engine": "esp" if esp is not None else "board",
                            "backend": cfg.get("crypto", "auto")}))
