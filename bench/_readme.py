"""The README's figures that come from `inv bench`, written from bench/results/*.json.

    python -m bench._readme [--check]

Each row of the README's "Figures" table whose command is `inv bench --only NAME` gets its figure
cell from NAME's results file (committed with the README, so the two are checked against each
other by tests/test_bench_figures.py). Run it after a benchmark whose figure the README quotes.
"""
import argparse
import json
import os
import sys

from bench._util import RESULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _load(name):
    with open(os.path.join(RESULTS, name + ".json")) as f:
        return json.load(f)


def _detection(r):
    d = r["detection_ms"]
    return "%.1f / %.0f / %.0f ms median (bound %.0f)" % (d["unsolicited-hello"]["median"],
                                                          d["boot-id-changed"]["median"],
                                                          d["missed-heartbeats"]["median"], r["bound_ms"])


def _ike(r):
    return "%.1f× charon (%.0f vs %.0f/s)" % (r["ratio"], r["ours_rate"], r["charon_rate"])


def _hybrid(r):
    return "%.2f× (%.0f vs %.0f/s)" % (r["hybrid_ratio"], r["hybrid_rate"], r["ours_rate"])


def _mpy_chacha(r):
    u = r["micropython_pure_us"]
    c, g = u["ChaCha20-Poly1305"], u["AES-GCM-16-256"]
    return "%.1f / %.1f ms vs %.1f / %.1f ms" % (c["1400"] / 1000, c["64"] / 1000, g["1400"] / 1000, g["64"] / 1000)


def _r1400(r):
    return next(x for x in r["results"] if x["bytes"] == 1400)


def _esp(r):
    x = _r1400(r)
    return "%.2f (%.2f)" % (x["ratio_over_raw_nonce"]["batch"][1], x["ratio_over_raw"]["batch"][1])


def _efficiency(r):
    return "%.1f%%" % (100 * r["link_efficiency_1400"])


def _link_auth(r):
    mpy = {x["what"]: x for x in r["rows"] if x["impl"] == "micropython"}
    return "+%.0f / +%.0f µs; %d bytes (%d on the wire)" % (
        mpy["board_heartbeat"]["added_us"], mpy["board_encrypt_1400"]["added_us"],
        mpy["overhead_bytes"]["decoded"], mpy["overhead_bytes"]["wire_at_most"])


def _fuzz(r):
    rss = r["rss_mb"]
    return "%s inputs (%s random), no exception; RSS %+.1f MB over the random inputs" % (
        format(r["inputs"], ","), format(r["random_inputs"], ","), rss["after_random"] - rss["after_first_seed"])


def _worst(c):
    return "/".join("%.2f" % r["back_p100_s"] if r["back_p100_s"] is not None else "not all" for r in c["resets"])


def _scale_one(r):
    c = r["one_peer"]
    return "%.2f s; %s s" % (c["up_s"], _worst(c))


def _scale_hub(r):
    c = r["hub"]
    return "%.2f s; %s s (p50 %s s); %s of %s" % (
        c["up_s"], _worst(c), "/".join("%.2f" % x["back_p50_s"] for x in c["resets"]),
        "/".join(str(x["other_lost"]) for x in c["resets"]), "/".join(str(x["other_sent"]) for x in c["resets"]))


def _scale_flush(r):
    return "; ".join("%s: %s ms" % (n, "/".join("%.0f" % x["flush_ms"] for x in r[n]["resets"]))
                     for n in ("one_peer", "hub"))


def _scale_cost(r):
    h = r["hub"]
    return "%.1f KB (%.1f KB with its configuration); %.2f ms" % (h["rss_per_tunnel_kb"], r["rss_per_connection_kb"],
                                                                 h["cpu_ms_per_tunnel"])


def _load_figure(r):
    cases = {c["case"]: c["phases"] for c in r["cases"]}
    parts = []
    for name in ("esp32-devkitc", "rp2040-pico-spi"):
        ph = cases[name]
        parts.append("%s %.0f%% / %.0f%% (ping p99 %.0f ms)" % (
            name, 100 * ph["tcp_down"]["of_capacity"], 100 * ph["tcp_up"]["of_capacity"],
            max(ph["tcp_down"]["rtt_p99_ms"], ph["tcp_up"]["rtt_p99_ms"])))
    losses = sum(p["board_losses"] for c in r["cases"] for p in c["phases"].values())
    return "; ".join(parts) + "; %d board losses" % losses


def _rp2040(r):
    u = r["per_packet_us"]
    return "%.1f / %.1f ms; %s of %s bytes" % (
        u["aes-cbc-128+hmac-sha2-256-128"]["1400"]["encrypt_us"] / 1000,
        u["aes-gcm-16-128"]["1400"]["encrypt_us"] / 1000,
        format(r["heap"]["esp"]["total"], ","), format(r["heap_bytes"], ","))


# (bench name, the start of the row's first cell, figure from the results)
ROWS = [
    ("link", "board loss detection", _detection),
    ("ike", "IKE SA + Child SA setup rate", _ike),
    ("ike", "the same with x25519 + ML-KEM-768", _hybrid),
    ("esp", "ESP per 1400-byte / 64-byte packet on MicroPython", _mpy_chacha),
    ("esp", "in-process ESP encap+decap", _esp),
    ("esp", "link efficiency", _efficiency),
    ("mpy_link_auth", "link security on the board core", _link_auth),
    ("fuzz_link", "link fuzzing", _fuzz),
    ("scale", "60 connections to one charon", _scale_one),
    ("scale", "500 peers at distinct addresses", _scale_hub),
    ("scale", "flush of a board's IKE SAs", _scale_flush),
    ("scale", "daemon RSS per IKE SA", _scale_cost),
    ("load", "TCP through the tunnel at the board's real link rate", _load_figure),
    ("rp2040", "per 1400-byte packet on the emulated RP2040", _rp2040),
]


def render(text):
    """``text`` (the README) with the figure cell of each bench row rewritten. Raises ValueError
    if a row is missing."""
    lines = text.split("\n")
    for name, what, figure in ROWS:
        command = "`inv bench --only %s`" % name
        idx = [i for i, line in enumerate(lines) if line.startswith("| " + what) and line.rstrip().endswith(
            "| %s |" % command)]
        if len(idx) != 1:
            raise ValueError("README: %d rows for %r with %s" % (len(idx), what, command))
        cells = lines[idx[0]].split(" | ")
        cells[-2] = figure(_load(name))
        lines[idx[0]] = " | ".join(cells)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench._readme", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README differs, write nothing")
    args = ap.parse_args(argv)
    with open(README) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md: figures differ from bench/results (python -m bench._readme)", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(README, "w") as f:
            f.write(new)
        print("wrote", README)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
