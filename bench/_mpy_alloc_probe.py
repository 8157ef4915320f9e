# Runs INSIDE MicroPython (bench/mpy_alloc.py and tests/test_mpy_alloc.py start it with
# tools/micropython/run.mjs): bytes allocated by one ESP encrypt and one decrypt of a 1400-byte
# packet on SAs already in use, per transform, SA shape and crypto backend, and the time per
# packet. Prints one JSON line per measurement.
#
# gc.mem_alloc() before and after one call, inside one run: the wasm port collects garbage only
# between top-level calls from JS, so nothing is collected in between and the difference is what
# the call allocated. On the cryptolib backend the stand-in's own Python work is subtracted
# (bench/_mpy_cryptolib.py counts it); what the C module would allocate stays counted.
#
#   probe.py BACKEND[,BACKEND...] [PACKETS_TIMED]
import gc
import json
import sys
import time

from firmware import crypto, esp
from firmware.link import messages as m

backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["pure"]
timed = int(sys.argv[2]) if len(sys.argv) > 2 else 3
if "cryptolib" in backends:
    import _mpy_cryptolib  # noqa: F401  (registers the stand-in as `cryptolib`)
    import cryptolib
    standin = cryptolib.standin_alloc
else:
    standin = [0]

TRANSFORMS = (
    ("aes-gcm-16-128", m.ENCR_AES_GCM_16, bytes(range(20)), m.AUTH_NONE, b""),
    ("aes-gcm-16-256", m.ENCR_AES_GCM_16, bytes(range(36)), m.AUTH_NONE, b""),
    ("aes-cbc-128+hmac-sha256", m.ENCR_AES_CBC, bytes(range(16)), m.AUTH_HMAC_SHA2_256_128, bytes(range(32))),
    ("aes-cbc-256+hmac-sha256", m.ENCR_AES_CBC, bytes(range(32)), m.AUTH_HMAC_SHA2_256_128, bytes(range(32))),
    ("chacha20-poly1305", m.ENCR_CHACHA20_POLY1305, bytes(range(36)), m.AUTH_NONE, b""),
)
A_OUT = bytes((192, 0, 2, 1))
A_PEER = bytes((198, 51, 100, 7))


def shape_kw(shape, direction):
    """plain: tunnel mode, nothing else; daemon: what host/daemon.py installs (UDP encapsulation,
    both addresses, a /32 and a /24 traffic selector)."""
    if shape == "plain":
        return {}
    loc = [(bytes((10, 1, 0, 1)), bytes((10, 1, 0, 1)), 0, 0, 65535)]
    rem = [(bytes((10, 2, 0, 0)), bytes((10, 2, 0, 255)), 0, 0, 65535)]
    if direction == m.DIR_OUT:
        return dict(flags=m.SAF_UDP_ENCAP, src=(A_OUT, 4500), dst=(A_PEER, 4500), ts_local=loc, ts_remote=rem)
    # inbound, the packet measured is the one sent: the selectors mirrored so that it passes them
    return dict(flags=m.SAF_UDP_ENCAP, src=(A_PEER, 4500), dst=(A_OUT, 4500), ts_local=rem, ts_remote=loc)


def packet(n):
    """An IPv4/UDP packet of n bytes, 10.1.0.1 -> 10.2.0.1."""
    p = bytearray(n)
    p[0:20] = bytes((0x45, 0, n >> 8, n & 255, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1))
    for i in range(20, n):
        p[i] = (i * 7) & 255
    return bytes(p)


def measure(be_name, name, encr, key, integ, ikey, shape, pkt):
    be = crypto.load(be_name)
    o = esp.new_sa(m.SaSpec(0x1000, m.DIR_OUT, encr, key, integ, ikey, **shape_kw(shape, m.DIR_OUT)), be)
    i = esp.new_sa(m.SaSpec(0x1000, m.DIR_IN, encr, key, integ, ikey, **shape_kw(shape, m.DIR_IN)), be)
    st, w = o.encrypt(pkt)                      # both SAs in use: whatever is built at first use is built
    assert st == m.P_OK, st
    assert i.decrypt(w) == (m.P_OK, pkt)
    s0 = standin[0]
    a = gc.mem_alloc()
    st, wire = o.encrypt(pkt)
    enc = gc.mem_alloc() - a - (standin[0] - s0)
    assert st == m.P_OK, st
    s0 = standin[0]
    a = gc.mem_alloc()
    st, inner = i.decrypt(wire)
    dec = gc.mem_alloc() - a - (standin[0] - s0)
    assert st == m.P_OK and inner == pkt, st
    res = {"backend": be_name, "transform": name, "shape": shape, "packet": len(pkt), "esp": len(wire),
           "encrypt_bytes": enc, "decrypt_bytes": dec}
    if timed and be_name == "pure":            # the stand-in's speed says nothing about a board
        wires = []
        t0 = time.ticks_ms()
        for _ in range(timed):
            wires.append(o.encrypt(pkt)[1])
        t1 = time.ticks_ms()
        for w in wires:
            i.decrypt(w)
        t2 = time.ticks_ms()
        res["encrypt_ms"] = time.ticks_diff(t1, t0) / timed
        res["decrypt_ms"] = time.ticks_diff(t2, t1) / timed
    print(json.dumps(res))


def measure_link(pkt):
    """A 2-packet ENCRYPT reply's frame (~2.9 KB): encoded and decoded as the link does it
    (bytes built: frame.encode, cobs.decode) and into preallocated buffers (encode_into,
    decode_into)."""
    from firmware.link import cobs
    from firmware.link import frame as fr
    body = m.encode_encrypt_reply([(0, pkt + bytes(40)), (0, pkt + bytes(40))])
    n = fr.MIN_FRAME + len(body)
    dst, scratch, back = bytearray(fr.max_wire_len(n) + 2), bytearray(n), bytearray(n)
    res = {"backend": "link", "transform": "frame of %d bytes" % n, "shape": "-", "packet": n}
    a = gc.mem_alloc()
    wire = fr.encode(m.ENCRYPT, 1, fr.FLAG_REPLY, body)
    res["encode_bytes"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    raw = cobs.decode(wire[1:-1])
    res["decode_bytes"] = gc.mem_alloc() - a
    if hasattr(fr, "encode_into"):           # (a firmware from before they existed has not)
        a = gc.mem_alloc()
        end = fr.encode_into(dst, 0, m.ENCRYPT, 1, fr.FLAG_REPLY, body, scratch)
        res["encode_into_bytes"] = gc.mem_alloc() - a
        assert dst[:end] == wire
        a = gc.mem_alloc()
        k = cobs.decode_into(dst, back, 0, 1, end - 1)
        res["decode_into_bytes"] = gc.mem_alloc() - a
        assert back[:k] == raw
    if hasattr(fr.FrameDecoder, "frames"):   # the board's path: sealed (auth tag) and decoded as views
        from firmware.link import auth as la
        key = bytes(range(32))
        n += fr.AUTH_LEN
        raw, dst = bytearray(fr.max_wire_len(n) + 2), bytearray(fr.max_wire_len(n) + 2)
        dec = fr.FrameDecoder(4096, auth=True, views=True)
        sealer = la.Sealer(key)
        a = gc.mem_alloc()
        wire = sealer.seal(m.ENCRYPT, 1, fr.FLAG_REPLY, body)[0]
        res["seal_bytes"] = gc.mem_alloc() - a
        a = gc.mem_alloc()
        end = sealer.seal_into(dst, 0, raw, m.ENCRYPT, 2, fr.FLAG_REPLY, body)
        res["seal_into_bytes"] = gc.mem_alloc() - a
        a = gc.mem_alloc()
        got = fr.FrameDecoder(4096, auth=True).feed(wire)
        res["feed_bytes"] = gc.mem_alloc() - a
        a = gc.mem_alloc()
        for f in dec.frames(memoryview(dst)[:end]):
            got.append(f.seq)
        res["frames_bytes"] = gc.mem_alloc() - a
        assert len(got) == 2 and got[1] == 2 and end == len(wire)
    print(json.dumps(res))


pkt = packet(1400)
for be_name in backends:
    for name, encr, key, integ, ikey in TRANSFORMS:
        for shape in ("plain", "daemon"):
            measure(be_name, name, encr, key, integ, ikey, shape, pkt)
measure_link(pkt)
