"""The board's CPU time per packet, per transform, on the real MicroPython 1.27 (wasm) here
(`inv bench --only mpy_cost`): the measurements behind the boards' [crypto.cost_us] estimates
(docs/board-capacity.md).

For the pure backend the whole packet is timed. For the cryptolib backend AES costs nothing in the
run (a stand-in whose AES returns its input): what is timed is the Python part, which a board
runs at its interpreter's speed, while its AES runs in C (RP2040) or hardware (ESP32). Writes
bench/results/mpy_cost.json; the fit is [µs per packet, µs per 1000 bytes] from 64 and 1400 bytes.
"""
import json
import subprocess
import sys
from pathlib import Path

from bench._util import goal, report_goals, table, write

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"every_transform_timed": "every transform timed at 64 and 1400 bytes on both backends (the "
         "figures behind the boards' [crypto.cost_us]: docs/board-capacity.md)"}


def measure(reps=10, backends=("pure", "cryptolib")):
    script = ROOT / "bench" / "mpy" / "packet_cost.py"
    p = subprocess.run(["node", str(ROOT / "tools" / "micropython" / "run.mjs"), "--copy", str(ROOT / "firmware"),
                        "--copy", "%s:/packet_cost.py" % script, "--timeout", "900", "/packet_cost.py", str(reps),
                        ",".join(backends)],
                       capture_output=True, text=True, timeout=1000)
    if p.returncode:
        raise RuntimeError("packet_cost.py failed:\n" + p.stdout + p.stderr)
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def fit(rows):
    """(backend, encr, bits) -> [µs per packet, µs per 1000 bytes] through the 64- and 1400-byte points."""
    by = {}
    for r in rows:
        by.setdefault((r["backend"], r["encr"], r["bits"]), {})[r["bytes"]] = r["us"]
    out = {}
    for k, pts in by.items():
        per_kb = (pts[1400] - pts[64]) / (1400 - 64) * 1000
        out[k] = [max(0.0, pts[64] - per_kb * 64 / 1000), per_kb]
    return out


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rows = measure(reps)
    f = fit(rows)
    names = {12: "AES-CBC+HMAC-SHA-256", 20: "AES-GCM-16", 28: "ChaCha20-Poly1305"}

    def us(b, e, bits, n):
        return next(r["us"] for r in rows if (r["backend"], r["encr"], r["bits"], r["bytes"]) == (b, e, bits, n))
    table("ESP encrypt on MicroPython 1.27 (wasm) here, µs per packet (cryptolib: its AES free, the Python part)",
          ["backend", "transform", "64 B", "1400 B", "fit: µs/packet", "µs/1000 B"],
          [(b, "%s-%d" % (names[e], bits),
            "%.0f" % us(b, e, bits, 64), "%.0f" % us(b, e, bits, 1400),
            "%.0f" % v[0], "%.0f" % v[1]) for (b, e, bits), v in sorted(f.items())])
    want = 2 * 5 * 2          # backends x transforms (GCM-128/256, CBC-128/256, ChaCha20-Poly1305) x sizes
    goals = {"every_transform_timed": goal(len(rows) == want and all(r["us"] > 0 for r in rows), len(rows), want)}
    report_goals(goals)
    print("wrote", write("mpy_cost", {"rows": rows, "fit": {"%s/%d/%d" % k: v for k, v in f.items()},
                                      "goals": goals}))


if __name__ == "__main__":
    main()
