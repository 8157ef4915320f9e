"""ESP throughput: raw AEAD ceiling, in-process ESP, and through the simulated board's pty link.

    python -m bench.esp [--pairs 120] [--seconds 0.25] [--rounds 7]      (inv bench --only esp)

For 64-, 512- and 1400-byte IP packets, side by side in one run:
  raw        cryptography's AESGCM encrypt + decrypt of the packet, one object reused, the
             nonce and the 8-byte AAD prebuilt once: the call-only ceiling. (One nonce for
             every packet is not a correct use of GCM; no correct program gets here.)
  raw+nonce  the same with a fresh nonce per packet, salt || 64-bit counter, built as any
             correct AEAD user must: the ceiling ESP is held to (ratios are over this one)
  esp        firmware.esp GCM-128 tunnel SAs: encrypt() then decrypt() per packet (anti-replay,
             trailer, counters, lifetimes)
  batch      the same through encrypt_batch/decrypt_batch, 16 packets a call: what the board's
             ENCRYPT and DECRYPT handlers run
  cbc        AES-CBC-128 + HMAC-SHA-256-128 SAs, encrypt() then decrypt() per packet
  chacha     ChaCha20-Poly1305 SAs (RFC 7634), encrypt() then decrypt() per packet
  link       a packet's encapsulation and decapsulation by the simulated board (python -m
             firmware.sim, a real pty, pyserial, the real BoardClient), batched ENCRYPT then
             DECRYPT requests, 4 batches in flight
Every packet is the same size on every row; every row reuses its AEAD objects.

In-process rows are timed in process CPU time, in paired rounds: each round times a chunk
of 320 packets of every row back to back (in a rotating order), and a ratio is taken
between rows of the same round, so load from the other processes of a shared machine hits
both sides of a ratio alike. Figures are medians over the rounds, ratios with their
interquartile range. The link figure is wall time (two processes and a pty), best of rounds.

Link efficiency: useful bytes (plaintext or ESP packets) / bytes on the wire (COBS, frame
header, CRC, batch and item headers, delimiters) for batched 1400-byte packets, from the
encoded frames and as measured on the pty during the run (heartbeats included).

MicroPython: what a board without cryptolib runs (the real MicroPython 1.27, wasm, pure backend):
microseconds per encrypted packet of 64 and 1400 bytes for AES-GCM-16-128/256, AES-CBC-128/256 +
HMAC-SHA-256-128 and ChaCha20-Poly1305 (bench/mpy/packet_cost.py), medians of --mpy-rounds runs;
ChaCha20-Poly1305's ratio to AES-GCM-256 is taken within each run (the machine is shared).

Writes bench/results/esp.json.
"""
import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench._util import goal, report_goals
from firmware import crypto, esp
from firmware.link import frame as fr
from firmware.link import messages as m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (64, 512, 1400)
A1, A2 = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
GOAL_INPROC = 0.50
GOAL_LINK_EFF = 0.95
GOAL_MPY_CHACHA = 1.5
GOALS = {   # `inv bench --only esp --check` fails unless all are met
    "inprocess_esp_ge_50pct_raw_1400": "ESP as the board runs it (batch), 1400 B, >= %.2f of raw AEAD + "
                                       "fresh nonce (median of paired rounds)" % GOAL_INPROC,
    "link_efficiency_ge_95pct_1400": "useful / wire bytes of batched 1400-byte packets >= %.2f" % GOAL_LINK_EFF,
    "mpy_chacha_within_aes_gcm_class_1400": "MicroPython (pure): ChaCha20-Poly1305 time per 1400-byte packet "
                                            "<= %.1f x AES-GCM-256's (median of per-run ratios)" % GOAL_MPY_CHACHA,
}


def ip_packet(size, seed=0):
    """An IPv4/UDP packet of `size` bytes with a valid header checksum."""
    body = bytes((i * 7 + seed) & 0xFF for i in range(size - 28))
    udp = ((1000).to_bytes(2, "big") + (2000).to_bytes(2, "big") + (size - 20).to_bytes(2, "big")
           + b"\0\0" + body)
    hdr = bytearray(b"\x45\x00" + size.to_bytes(2, "big") + b"\x00\x00\x00\x00\x40\x11\x00\x00" + A1 + A2)
    hdr[10:12] = esp.checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + udp


def sa_pair(encr, spi, window=64, flags=0):
    be = crypto.load("cryptography")
    if encr == m.ENCR_AES_GCM_16:
        key, integ, ikey = os.urandom(20), m.AUTH_NONE, b""
    elif encr == m.ENCR_CHACHA20_POLY1305:
        key, integ, ikey = os.urandom(36), m.AUTH_NONE, b""
    else:
        key, integ, ikey = os.urandom(16), m.AUTH_HMAC_SHA2_256_128, os.urandom(32)
    specs = [m.SaSpec(spi, d, encr, key, integ, ikey, flags=flags, replay_window=window,
                      src=(A1, 4500), dst=(A2, 4500)) for d in (m.DIR_OUT, m.DIR_IN)]
    return specs, [esp.new_sa(s, be) for s in specs]


CHUNK = 320   # packets a timed chunk
BATCH = 16    # packets an encrypt_batch/decrypt_batch call (CHUNK is a multiple)


def quartiles(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 4], statistics.median(xs), xs[(3 * n) // 4]


def inprocess(size, pairs):
    """{row: {"pps": median packets/s, "ratio": (q1, median, q3) over raw+nonce, "ratio_raw":
    the same over raw}} for one packet size."""
    pkt = ip_packet(size)
    aead = AESGCM(os.urandom(16))
    salt, aad = os.urandom(4), os.urandom(8)
    fixed = salt + bytes(8)

    def raw():
        enc, dec = aead.encrypt, aead.decrypt
        for _ in range(CHUNK):
            dec(fixed, enc(fixed, pkt, aad), aad)

    counter = [0]

    def raw_nonce():
        enc, dec = aead.encrypt, aead.decrypt
        c = counter[0]
        for _ in range(CHUNK):
            c += 1
            nonce = salt + c.to_bytes(8, "big")
            dec(nonce, enc(nonce, pkt, aad), aad)
        counter[0] = c

    def calls(pair):
        enc, dec = pair[0].encrypt, pair[1].decrypt

        def run():
            for _ in range(CHUNK):
                _, w = enc(pkt)
                st2, p = dec(w)
            if st2 != m.P_OK or p != pkt:
                raise SystemExit("ESP round trip failed: status %d" % st2)
        return run

    def batches(pair):
        enc, dec = pair[0].encrypt_batch, pair[1].decrypt_batch
        pkts = [pkt] * BATCH

        def run():
            for _ in range(CHUNK // BATCH):
                res = dec([w for _, w in enc(pkts)])
            if res[-1] != (m.P_OK, pkt):
                raise SystemExit("ESP batch round trip failed: status %d" % res[-1][0])
        return run

    rows = {"raw": raw, "raw_nonce": raw_nonce, "esp": calls(sa_pair(m.ENCR_AES_GCM_16, 0x1000)[1]),
            "batch": batches(sa_pair(m.ENCR_AES_GCM_16, 0x1001)[1]),
            "cbc": calls(sa_pair(m.ENCR_AES_CBC, 0x2000)[1]),
            "chacha": calls(sa_pair(m.ENCR_CHACHA20_POLY1305, 0x2100)[1])}
    names = list(rows)
    for fn in rows.values():
        fn()                                        # warm up (and check every round trip once)
    times = {k: [] for k in names}
    clock = time.process_time
    for r in range(pairs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = clock()
            rows[name]()
            times[name].append(clock() - t0)
    out = {}
    for name in names:
        t = times[name]
        out[name] = {"pps": CHUNK / statistics.median(t),
                     "ratio": quartiles([a / b for a, b in zip(times["raw_nonce"], t)]),
                     "ratio_raw": quartiles([a / b for a, b in zip(times["raw"], t)])}
    return out


MPY_NAMES = {(m.ENCR_AES_GCM_16, 128): "AES-GCM-16-128", (m.ENCR_AES_GCM_16, 256): "AES-GCM-16-256",
             (m.ENCR_AES_CBC, 128): "AES-CBC-128+HMAC-SHA-256", (m.ENCR_AES_CBC, 256): "AES-CBC-256+HMAC-SHA-256",
             (m.ENCR_CHACHA20_POLY1305, 256): "ChaCha20-Poly1305"}


def micropython(rounds, reps):
    """{name: {64: µs, 1400: µs}} (medians over rounds) and the per-round ratios of ChaCha20-Poly1305
    to AES-GCM-256 at 1400 bytes, on the wasm MicroPython with the pure backend."""
    from bench.mpy_cost import measure
    per, ratios = {}, []
    for _ in range(rounds):
        rows = measure(reps, ("pure",))
        got = {(MPY_NAMES[(r["encr"], r["bits"])], r["bytes"]): r["us"] for r in rows}
        for (name, n), us in got.items():
            per.setdefault(name, {}).setdefault(n, []).append(us)
        if got[("AES-GCM-16-256", 1400)]:
            ratios.append(got[("ChaCha20-Poly1305", 1400)] / got[("AES-GCM-16-256", 1400)])
    return {name: {n: statistics.median(v) for n, v in by.items()} for name, by in per.items()}, ratios


def batch_for(size, max_frame, max_batch):
    room = max_frame - fr.MIN_FRAME - 3
    return max(1, min(max_batch, room // (size + 64 + 7)))


def frame_efficiency(size, batch):
    """Useful bytes / wire bytes of the four frames of one batch (encoded as the link does)."""
    pkts = [ip_packet(size, k) for k in range(batch)]
    (so, si), (o, i) = sa_pair(m.ENCR_AES_GCM_16, 0x3000, flags=m.SAF_UDP_ENCAP)
    esps = [o.encrypt(p)[1] for p in pkts]
    frames = [
        (sum(map(len, pkts)), m.encode_encrypt_request([(so.spi, p) for p in pkts])),
        (sum(map(len, esps)), m.encode_encrypt_reply([(m.P_OK, e) for e in esps])),
        (sum(map(len, esps)), m.encode_decrypt_request([((A2, 4500), e) for e in esps])),
        (sum(map(len, pkts)), m.encode_decrypt_reply([(m.P_OK, si.spi, p) for p in pkts])),
    ]
    useful = sum(u for u, _ in frames)
    wire = sum(len(fr.encode(m.ENCRYPT, 1, fr.FLAG_NOCACHE, body)) for _, body in frames)
    return useful / wire


async def through_board(seconds, rounds, depth=4):
    sys.path.insert(0, ROOT)
    from host.offload.client import BoardClient
    from tests.simboard import SimBoard

    sim = SimBoard()
    out = {}
    try:
        c = BoardClient("bench", sim.url, period=0.5, misses=10, link_key=sim.link_key)
        await c.start()
        await c.wait_ready(5)
        hello = c.session.hello
        (so, si), _ = sa_pair(m.ENCR_AES_GCM_16, 0x4000, flags=m.SAF_UDP_ENCAP, window=1024)
        await c.sa_add(so)
        await c.sa_add(si)
        for size in SIZES:
            batch = batch_for(size, hello.max_frame, hello.max_batch)
            pkts = [ip_packet(size, k) for k in range(batch)]
            useful = [0]

            async def one(pkts=pkts, useful=useful, batch=batch):
                enc = await c.encrypt([(so.spi, p) for p in pkts], timeout=5)
                esps = [e for st, e in enc]
                dec = await c.decrypt([((A1, 4500), e) for e in esps], timeout=5)
                if any(st != m.P_OK for st, _, _ in dec):
                    raise SystemExit("link round trip failed: %r" % sorted({st for st, _, _ in dec}))
                useful[0] += 2 * sum(map(len, pkts)) + 2 * sum(map(len, esps))
                return batch

            best = 0.0
            for _ in range(max(1, rounds // 2)):
                tr = c.transport
                b0 = tr.bytes_in + tr.bytes_out
                useful[0] = 0
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds * 2:
                    n += sum(await asyncio.gather(*[one() for _ in range(depth)]))
                best = max(best, n / (time.perf_counter() - t0))
                measured_eff = useful[0] / (tr.bytes_in + tr.bytes_out - b0)
            out[size] = {"pps": best, "batch": batch, "measured_efficiency": measured_eff}
        await c.close()
    finally:
        sim.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.esp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=120, help="paired rounds of the in-process rows")
    ap.add_argument("--seconds", type=float, default=0.25, help="link: a round runs 2 x seconds")
    ap.add_argument("--rounds", type=int, default=7, help="link rounds (best of rounds // 2)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "esp.json"))
    ap.add_argument("--mpy-rounds", type=int, default=5, help="MicroPython runs (0: none)")
    ap.add_argument("--mpy-reps", type=int, default=10, help="1400-byte packets a MicroPython run times")
    args = ap.parse_args(argv)

    rows = {}
    for size in SIZES:
        rows[size] = inprocess(size, args.pairs)
    link = asyncio.run(through_board(args.seconds, args.rounds))
    sim_profile = {"max_frame": 16384, "max_batch": 64}
    eff = frame_efficiency(1400, batch_for(1400, sim_profile["max_frame"], sim_profile["max_batch"]))

    def q(r):
        return [round(x, 3) for x in r]

    results = []
    for size in SIZES:
        r, lk = rows[size], link[size]
        results.append({
            "bytes": size,
            "pps": {k: round(v["pps"]) for k, v in r.items()} | {"board_link": round(lk["pps"])},
            # ratios: [q1, median, q3] of the paired rounds
            "ratio_over_raw_nonce": {k: q(r[k]["ratio"]) for k in ("esp", "batch", "cbc", "chacha", "raw")},
            "ratio_over_raw": {k: q(r[k]["ratio_raw"]) for k in ("esp", "batch", "cbc", "raw_nonce")},
            "board_link_ratio": round(lk["pps"] / r["raw_nonce"]["pps"], 4),
            "board_link_vs_batch": round(lk["pps"] / r["batch"]["pps"], 4),
            "link_batch": lk["batch"],
            "link_efficiency_measured": round(lk["measured_efficiency"], 4)})

    print("ESP throughput, packets/s (encapsulate + decapsulate), GCM-128 tunnel unless noted;")
    print("in process: medians of %d paired rounds of %d packets, process CPU time" % (args.pairs, CHUNK))
    print("%6s %10s %10s %10s %10s %10s %10s %10s %6s" % ("bytes", "raw", "raw+nonce", "ESP", "ESP batch",
                                                         "CBC+HMAC", "ChaCha", "via board", "batch"))
    for x in results:
        p = x["pps"]
        print("%6d %10d %10d %10d %10d %10d %10d %10d %6d" % (x["bytes"], p["raw"], p["raw_nonce"], p["esp"],
                                                             p["batch"], p["cbc"], p["chacha"], p["board_link"],
                                                             x["link_batch"]))
    print()
    print("ratios, median [interquartile range] of the paired rounds")
    print("%6s | %-19s %-19s %-19s | %-19s %-19s" % ("", "over raw+nonce:", "", "", "over raw:", ""))
    print("%6s | %-19s %-19s %-19s | %-19s %-19s" % ("bytes", "ESP", "ESP batch", "CBC+HMAC", "ESP",
                                                     "ESP batch"))

    def f(r):
        return "%.3f [%.3f-%.3f]" % (r[1], r[0], r[2])
    for x in results:
        a, b = x["ratio_over_raw_nonce"], x["ratio_over_raw"]
        print("%6d | %-19s %-19s %-19s | %-19s %-19s" % (x["bytes"], f(a["esp"]), f(a["batch"]), f(a["cbc"]),
                                                         f(b["esp"]), f(b["batch"])))
    r1400 = [x for x in results if x["bytes"] == 1400][0]
    print()
    print("link efficiency, 1400-byte packets, batch %d: %.4f from the frames, %.4f measured on the pty"
          % (r1400["link_batch"], eff, r1400["link_efficiency_measured"]))
    mpy, mpy_ratios = micropython(args.mpy_rounds, args.mpy_reps) if args.mpy_rounds else ({}, [])
    if mpy:
        print()
        print("MicroPython 1.27 (wasm), pure backend: µs per encrypted packet, median of %d runs" % args.mpy_rounds)
        print("%-26s %8s %8s" % ("transform", "64 B", "1400 B"))
        for name in MPY_NAMES.values():
            print("%-26s %8.0f %8.0f" % (name, mpy[name][64], mpy[name][1400]))
        print("ChaCha20-Poly1305 / AES-GCM-256 at 1400 B, per run: %s" % " ".join("%.2f" % x for x in mpy_ratios))
    mpy_ratio = statistics.median(mpy_ratios) if mpy_ratios else None
    ratio = r1400["ratio_over_raw_nonce"]["batch"]
    goals = {"inprocess_esp_ge_50pct_raw_1400": goal(ratio[1] >= GOAL_INPROC, f(ratio), ">= %.2f" % GOAL_INPROC),
             "link_efficiency_ge_95pct_1400": goal(eff >= GOAL_LINK_EFF, round(eff, 4), ">= %.2f" % GOAL_LINK_EFF),
             "mpy_chacha_within_aes_gcm_class_1400": goal(mpy_ratio is not None and mpy_ratio <= GOAL_MPY_CHACHA,
                                                          None if mpy_ratio is None else round(mpy_ratio, 2),
                                                          "<= %.1f" % GOAL_MPY_CHACHA)}
    report_goals(goals)
    print("     (per-packet calls / raw+nonce %s; over the call-only raw: batch %s, calls %s)"
          % (f(r1400["ratio_over_raw_nonce"]["esp"]), f(r1400["ratio_over_raw"]["batch"]),
             f(r1400["ratio_over_raw"]["esp"])))
    doc = {"benchmark": "esp", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "loadavg": list(os.getloadavg()), "pairs": args.pairs, "chunk": CHUNK, "esp_batch": BATCH,
           "seconds": args.seconds, "rounds": args.rounds,
           "goal_inprocess": "median ratio of ESP batch over raw+nonce at 1400 bytes >= %.2f" % GOAL_INPROC,
           "results": results, "link_efficiency_1400": round(eff, 4), "goals": goals,
           "micropython_pure_us": {name: {str(n): us for n, us in v.items()} for name, v in mpy.items()},
           "micropython_chacha_over_gcm256_1400": [round(x, 3) for x in mpy_ratios]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f_:
        json.dump(doc, f_, indent=2)
        f_.write("\n")
    print("wrote %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
