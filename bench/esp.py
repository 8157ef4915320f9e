"""ESP throughput: raw AEAD ceiling, in-process ESP, and through the simulated board's pty link.

    python -m bench.esp [--seconds 0.25] [--rounds 7]      (inv bench --only esp)

For 64-, 512- and 1400-byte IP packets, side by side in one run:
  raw     cryptography's AESGCM encrypt + decrypt of the packet (one object reused, nonce and
          AAD prebuilt): the ceiling any ESP code in CPython can reach
  esp     firmware.esp GCM-128 tunnel SAs: encapsulate + decapsulate (anti-replay, trailer,
          counters, lifetimes), called in-process
  cbc     the same with AES-CBC-128 + HMAC-SHA-256-128
  link    a packet's encapsulation and decapsulation by the simulated board (python -m
          firmware.sim, a real pty, pyserial, the real BoardClient), batched ENCRYPT then
          DECRYPT requests, 4 batches in flight
Figures are packets (encap + decap pairs) per second; raw, esp and cbc are measured in
alternation, `rounds` times, best of each, in process CPU time, so load from other processes
hits them alike; the link figure is wall time (two processes and a pty). Ratios are what to
compare across machines.

Link efficiency: useful bytes (plaintext or ESP packets) / bytes on the wire (COBS, frame
header, CRC, batch and item headers, delimiters) for batched 1400-byte packets, from the
encoded frames and as measured on the pty during the run (heartbeats included).

Writes bench/results/esp.json.
"""
import argparse
import asyncio
import json
import os
import platform
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware import crypto, esp
from firmware.link import frame as fr
from firmware.link import messages as m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (64, 512, 1400)
A1, A2 = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
GOAL_INPROC = 0.50
GOAL_LINK_EFF = 0.95


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
    else:
        key, integ, ikey = os.urandom(16), m.AUTH_HMAC_SHA2_256_128, os.urandom(32)
    specs = [m.SaSpec(spi, d, encr, key, integ, ikey, flags=flags, replay_window=window,
                      src=(A1, 4500), dst=(A2, 4500)) for d in (m.DIR_OUT, m.DIR_IN)]
    return specs, [esp.new_sa(s, be) for s in specs]


def rate(fn, seconds):
    """Items per second of this process's CPU time over about `seconds` (fn runs a chunk and
    returns its count). CPU time rather than wall time: other processes on a shared machine
    then cost less noise (they still share caches and cores)."""
    n, t0 = 0, time.process_time()
    while True:
        n += fn()
        dt = time.process_time() - t0
        if dt >= seconds:
            return n / dt


def inprocess(size, seconds, rounds):
    pkt = ip_packet(size)
    aead = AESGCM(os.urandom(16))
    nonce, aad = os.urandom(12), os.urandom(8)
    chunk = 2000

    def raw():
        enc, dec = aead.encrypt, aead.decrypt
        for _ in range(chunk):
            dec(nonce, enc(nonce, pkt, aad), aad)
        return chunk

    def esp_loop(pair):
        def run():
            enc, dec = pair[0].encrypt, pair[1].decrypt
            for _ in range(chunk):
                st, w = enc(pkt)
                st2, p = dec(w)
            if st2 != m.P_OK or p != pkt:
                raise SystemExit("ESP round trip failed: status %d" % st2)
            return chunk
        return run

    best = {"raw": 0.0, "esp": 0.0, "cbc": 0.0}
    for r in range(rounds):
        gcm = esp_loop(sa_pair(m.ENCR_AES_GCM_16, 0x1000 + r)[1])
        cbc = esp_loop(sa_pair(m.ENCR_AES_CBC, 0x2000 + r)[1])
        for name, fn in (("raw", raw), ("esp", gcm), ("raw", raw), ("cbc", cbc)):
            best[name] = max(best[name], rate(fn, seconds))
    return best


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
        c = BoardClient("bench", sim.url, period=0.5, misses=10)
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
    ap.add_argument("--seconds", type=float, default=0.25, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (best of each)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "esp.json"))
    args = ap.parse_args(argv)

    rows = {}
    for size in SIZES:
        rows[size] = inprocess(size, args.seconds, args.rounds)
    link = asyncio.run(through_board(args.seconds, args.rounds))
    sim_profile = {"max_frame": 16384, "max_batch": 64}
    eff = frame_efficiency(1400, batch_for(1400, sim_profile["max_frame"], sim_profile["max_batch"]))

    print("ESP throughput, packets/s (encapsulate + decapsulate), GCM-128 tunnel unless noted")
    print("%6s %11s %11s %7s %11s %7s %11s %7s %6s" % ("bytes", "raw AEAD", "ESP", "ESP/raw", "CBC+HMAC",
                                                     "CBC/raw", "via board", "/raw", "batch"))
    results = []
    for size in SIZES:
        r, lk = rows[size], link[size]
        row = {"bytes": size, "raw_aead_pps": round(r["raw"]), "esp_pps": round(r["esp"]),
               "esp_ratio": round(r["esp"] / r["raw"], 3), "cbc_hmac_pps": round(r["cbc"]),
               "cbc_ratio": round(r["cbc"] / r["raw"], 3), "board_link_pps": round(lk["pps"]),
               "board_link_ratio": round(lk["pps"] / r["raw"], 4),
               "board_link_vs_esp": round(lk["pps"] / r["esp"], 4), "batch": lk["batch"],
               "link_efficiency_measured": round(lk["measured_efficiency"], 4)}
        results.append(row)
        print("%6d %11d %11d %7.2f %11d %7.2f %11d %7.3f %6d" % (
            size, row["raw_aead_pps"], row["esp_pps"], row["esp_ratio"], row["cbc_hmac_pps"],
            row["cbc_ratio"], row["board_link_pps"], row["board_link_ratio"], row["batch"]))
    r1400 = [x for x in results if x["bytes"] == 1400][0]
    print("link efficiency, 1400-byte packets, batch %d: %.4f from the frames, %.4f measured on the pty"
          % (r1400["batch"], eff, r1400["link_efficiency_measured"]))
    goals = {"inprocess_esp_ge_50pct_raw_1400": r1400["esp_ratio"] >= GOAL_INPROC,
             "link_efficiency_ge_95pct_1400": eff >= GOAL_LINK_EFF}
    for k, v in goals.items():
        print("goal %-36s %s" % (k, "met" if v else "NOT MET"))
    doc = {"benchmark": "esp", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "loadavg": list(os.getloadavg()), "seconds": args.seconds, "rounds": args.rounds,
           "results": results, "link_efficiency_1400": round(eff, 4), "goals": goals}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print("wrote %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
