"""Bytes allocated per ESP packet on MicroPython, per transform and crypto backend
(`inv bench --only mpy_alloc`; `python -m bench.mpy_alloc --baseline REF` adds a git ref's
firmware, measured in the same run, interleaved).

On the real MicroPython 1.27 (wasm, tools/micropython/run.mjs): gc.mem_alloc() before and after
one encrypt and one decrypt of a 1400-byte IPv4 packet on SAs already in use, inside one run
(bench/_mpy_alloc_probe.py), for AES-GCM-128/256, AES-CBC-128/256 + HMAC-SHA-256-128 and
ChaCha20-Poly1305, with
plain tunnel-mode specs and with specs shaped as the daemon installs them (UDP encapsulation,
addresses, a traffic selector each way). Backends: pure (what the wasm build runs) and
cryptolib on a stand-in (bench/_mpy_cryptolib.py; its own Python work is subtracted, what the C
module allocates is counted). Also the time per packet on the pure backend (median of runs; the
wasm build is ~7x slower than CPython and a chip slower still: read the ratios).

Goal: <= 16 KB per packet on the pure backend and <= 4 KB on cryptolib, every transform, both
ways (tests/test_mpy_alloc.py holds it). Also the link's share: one ~2.9 KB frame (an ENCRYPT
reply of two packets) encoded and COBS-decoded by the bytes-building functions and by the
functions that write into preallocated buffers. Writes bench/results/mpy_alloc.json.
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench._util import goal, report_goals, table, write

ROOT = Path(__file__).resolve().parents[1]
RUN_MJS = ROOT / "tools" / "micropython" / "run.mjs"
PROBE = ROOT / "bench" / "_mpy_alloc_probe.py"
STANDIN = ROOT / "bench" / "_mpy_cryptolib.py"
LIMITS = {"pure": 16 * 1024, "cryptolib": 4 * 1024}     # bytes per 1400-byte packet, encrypt or decrypt
GOALS = {"alloc_per_packet_" + b: "one encrypt and one decrypt of a 1400-byte packet on an SA in use allocate "
         "<= %d KB on the %s backend, every transform" % (n // 1024, b) for b, n in LIMITS.items()}


def probe(firmware=ROOT / "firmware", backends=("pure", "cryptolib"), timed=10, timeout=900):
    """[{backend, transform, shape, encrypt_bytes, decrypt_bytes, [encrypt_ms, decrypt_ms]}]."""
    cmd = ["node", str(RUN_MJS), "--timeout", str(timeout), "--copy", str(firmware),
           "--copy", "%s:/_mpy_cryptolib.py" % STANDIN, "--copy", "%s:/probe.py" % PROBE,
           "/probe.py", ",".join(backends), str(timed)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    if p.returncode:
        raise RuntimeError("the probe failed under MicroPython:\n" + p.stdout + p.stderr)
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def export(ref, into):
    """The firmware/ tree of git ref `ref`, unpacked under `into`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "firmware"], capture_output=True,
                          check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
    return Path(into) / "firmware"


def merge(runs):
    """One row per (backend, transform, shape): bytes from the first run (they do not vary),
    times as medians over the runs."""
    rows = {}
    for run in runs:
        for r in run:
            key = (r["backend"], r["transform"], r["shape"])
            row = rows.setdefault(key, dict(r, encrypt_ms=[], decrypt_ms=[]))
            if r["backend"] == "link":
                continue
            for k in ("encrypt_ms", "decrypt_ms"):
                if k in r:
                    row[k].append(r[k])
    for row in rows.values():
        for k in ("encrypt_ms", "decrypt_ms"):
            row[k] = statistics.median(row[k]) if row[k] else None
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="git ref whose firmware is measured too, side by side")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tree, interleaved (times: median)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"current": ROOT / "firmware"}
        if a.baseline:
            trees["baseline"] = export(a.baseline, tmp)
        runs = {name: [] for name in trees}
        for _ in range(a.runs):
            for name, fw in trees.items():
                runs[name].append(probe(fw))
    res = {name: merge(r) for name, r in runs.items()}
    link = [r for r in res["current"].values() if r["backend"] == "link"]
    cur = {k: r for k, r in res["current"].items() if r["backend"] != "link"}
    base = res.get("baseline", {})
    rows = []
    for key, r in sorted(cur.items()):
        b = base.get(key)
        ms = lambda row, k: "%.1f" % row[k] if row and row.get(k) is not None else "-"  # noqa: E731
        rows.append((r["backend"], r["transform"], r["shape"],
                     b["encrypt_bytes"] if b else "-", r["encrypt_bytes"],
                     b["decrypt_bytes"] if b else "-", r["decrypt_bytes"],
                     "%s / %s" % (ms(b, "encrypt_ms"), ms(r, "encrypt_ms")),
                     "%s / %s" % (ms(b, "decrypt_ms"), ms(r, "decrypt_ms"))))
    table("Bytes allocated per 1400-byte packet on MicroPython 1.27 (wasm), gc.mem_alloc()"
          + (" — baseline %s vs current" % a.baseline if a.baseline else ""),
          ["backend", "transform", "SA shape", "enc before", "enc", "dec before", "dec",
           "enc ms before / now", "dec ms before / now"], rows)
    table("The link: one frame encoded (frame.encode / frame.encode_into) and decoded (cobs.decode / "
          "cobs.decode_into), bytes allocated",
          ["frame", "encode", "encode_into", "decode", "decode_into"],
          [(r["transform"], r["encode_bytes"], r["encode_into_bytes"], r["decode_bytes"], r["decode_into_bytes"])
           for r in link])
    table("The board's path: that frame sealed with its auth tag (auth.Sealer.seal / seal_into) and decoded "
          "(FrameDecoder.feed / frames, views), bytes allocated",
          ["frame", "seal", "seal_into", "feed", "frames"],
          [(r["transform"], r.get("seal_bytes"), r.get("seal_into_bytes"), r.get("feed_bytes"), r.get("frames_bytes"))
           for r in link])
    met = all(r["encrypt_bytes"] <= LIMITS[r["backend"]] and r["decrypt_bytes"] <= LIMITS[r["backend"]]
              for r in cur.values())
    print("goal (pure <= 16 KB, cryptolib <= 4 KB, every transform, both ways): %s"
          % ("met" if met else "NOT met"))
    goals = {}
    for b, n in LIMITS.items():
        rs = [r for r in cur.values() if r["backend"] == b]
        worst = max((max(r["encrypt_bytes"], r["decrypt_bytes"]) for r in rs), default=None)
        goals["alloc_per_packet_" + b] = goal(bool(rs) and worst <= n, worst, "<= %d" % n)
    report_goals(goals)
    out = {"goals": goals, "goal_met": met, "runs": a.runs,
           "current": [dict(r) for r in cur.values()], "link": link,
           "stand_in": "bench/_mpy_cryptolib.py (cryptolib backend)", "timed_backend": "pure"}
    if a.baseline:
        out["baseline"] = {"ref": a.baseline, "results": [dict(r) for r in base.values()]}
    print("wrote", write("mpy_alloc", out))


if __name__ == "__main__":
    main()
