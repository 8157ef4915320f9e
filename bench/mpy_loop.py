"""asyncio vs a tight main loop on the real MicroPython 1.27 (wasm) (`inv bench --only mpy_loop`).

Both move the same requests (heartbeats, SA_ADD, SA_DEL) through the real board core, compiled
with mpy-cross as `inv flash` stages it (tools/micropython/loopbench.mjs says how). The firmware
uses the faster one (firmware/runloop.py). Writes bench/results/mpy_loop.json.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._util import goal, report_goals, table, write
from firmware import profiles
from tools import flash

ROOT = Path(__file__).resolve().parents[1]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 600
GOALS = {"tight_loop_faster_than_asyncio": "the firmware's main loop (tight) costs less per request than "
                                           "asyncio on MicroPython"}


def measure(n=N):
    with tempfile.TemporaryDirectory() as tmp:
        flash.stage(profiles.load("mpy-virtual"), Path(tmp), compile_mpy=True)
        p = subprocess.run(["node", str(ROOT / "tools" / "micropython" / "loopbench.mjs"),
                            str(Path(tmp) / "firmware"), str(n)], capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError("loopbench failed:\n" + p.stdout + p.stderr)
    return {r["variant"]: r for r in map(json.loads, p.stdout.splitlines())}


def main():
    res = measure()
    rows = [(v, r["requests"], "%.0f" % r["ms"], "%.0f" % r["us_per_request"]) for v, r in res.items()]
    table("Board main loop on MicroPython 1.27 (wasm), best of 3",
          ["variant", "requests", "ms", "µs/request"], rows)
    ratio = res["asyncio"]["us_per_request"] / res["tight"]["us_per_request"]
    print("tight loop is %.1fx faster" % ratio)
    goals = {"tight_loop_faster_than_asyncio": goal(ratio > 1.0, "asyncio / tight = %.1f" % ratio, "> 1")}
    report_goals(goals)
    print("wrote", write("mpy_loop", {"results": res, "asyncio_over_tight": ratio, "goals": goals}))


if __name__ == "__main__":
    main()
