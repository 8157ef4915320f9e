"""What link security costs per frame on the real MicroPython 1.27 (wasm) here, and on CPython
(`inv bench --only mpy_link_auth`): the board core answering heartbeats and ENCRYPT requests on an
open and on an authenticated link, side by side in one run, and the parts alone (sealing,
checking, SA_ADD's keystream, a session's key derivation). bench/mpy/link_auth.py runs in both.
Writes bench/results/mpy_link_auth.json; docs/link-protocol.md ("Link security") quotes it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from bench._util import goal, report_goals, table, write

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "mpy" / "link_auth.py"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
# A heartbeat period is 100-500 ms and one packet's crypto on a board 1-300 ms: a few hundred µs
# per frame (on this interpreter, ~7x slower than CPython) keeps the heartbeat's slack untouched.
ADDED_US_MAX = 250
GOALS = {"added_per_request_mpy": "link security adds at most %d µs per request + reply to the board core "
                                  "on MicroPython (wasm)" % ADDED_US_MAX}


def run(cmd, timeout=1200):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if p.returncode:
        raise RuntimeError("%s failed:\n%s%s" % (cmd[-2], p.stdout, p.stderr))
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def measure(n=N):
    mpy = run(["node", str(ROOT / "tools" / "micropython" / "run.mjs"), "--copy", str(ROOT / "firmware"),
               "--copy", "%s:/link_auth.py" % SCRIPT, "--timeout", "1100", "/link_auth.py", str(n)])
    cpy = run([sys.executable, str(SCRIPT), str(n)])
    return mpy + cpy


def main():
    rows = measure()

    def get(impl, what, **kw):
        for r in rows:
            if r["impl"] == impl and r["what"] == what and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None
    table("The board core per request + reply, open vs authenticated link (µs)",
          ["runtime", "request", "open link", "authenticated", "added"],
          [(impl, what[6:], "%.0f" % r["open_link_us"], "%.0f" % r["us"], "%.0f" % r["added_us"])
           for impl in ("micropython", "cpython") for what in ("board_heartbeat", "board_encrypt_1400")
           for r in [get(impl, what)]])
    table("The parts alone (µs per frame)", ["runtime", "body bytes", "seal", "check tag", "decode sealed",
                                             "decode open", "encode open"],
          [(impl, size, "%.0f" % get(impl, "seal", body=size)["us"], "%.0f" % get(impl, "check", body=size)["us"],
            "%.0f" % get(impl, "decode_sealed", body=size)["us"],
            "%.0f" % get(impl, "decode_open_link", body=size)["us"],
            "%.0f" % get(impl, "encode_open_link", body=size)["us"])
           for impl in ("micropython", "cpython") for size in (0, 64, 1400)])
    ks_m, ks_c = get("micropython", "sa_add_keystream"), get("cpython", "sa_add_keystream")
    sk_m, sk_c = get("micropython", "session_keys"), get("cpython", "session_keys")
    ov = get("cpython", "overhead_bytes")
    print("SA_ADD body (%d B) keystream: %.0f µs MicroPython, %.0f µs CPython; a session's keys (HKDF): "
          "%.0f / %.0f µs; bytes per frame: %d decoded, at most %d on the wire"
          % (ks_m["body"], ks_m["us"], ks_c["us"], sk_m["us"], sk_c["us"], ov["decoded"], ov["wire_at_most"]))
    added = max(get("micropython", w)["added_us"] for w in ("board_heartbeat", "board_encrypt_1400"))
    goals = {"added_per_request_mpy": goal(added <= ADDED_US_MAX, "%.0f µs" % added, "<= %d µs" % ADDED_US_MAX)}
    report_goals(goals)
    print("wrote", write("mpy_link_auth", {"n": N, "rows": rows, "goals": goals}))


if __name__ == "__main__":
    main()
