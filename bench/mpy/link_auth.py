# Runs on the wasm MicroPython (bench/mpy_link_auth.py copies it in), and on CPython for the host's
# side: what link security (firmware/link/auth.py) costs the board core per frame. The board core
# answers heartbeats (a 9-byte request, a 40-byte reply) and ENCRYPT requests of one 1400-byte
# packet through an SA that returns its input (so only the link is timed), on an open link and on
# an authenticated one; and the parts alone: sealing, checking, SA_ADD's keystream, a HELLO's key
# derivation. One JSON line per measurement.
import json
import sys
import time

from firmware import board as bd
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.sad import SaRecord

if hasattr(time, "ticks_us"):
    def now_us():
        return time.ticks_us()

    def since(t0):
        return time.ticks_diff(time.ticks_us(), t0)
else:
    def now_us():
        return time.perf_counter() * 1e6  # mpy-ok: CPython branch

    def since(t0):
        return time.perf_counter() * 1e6 - t0  # mpy-ok: CPython branch

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
KEY = bytes(range(32))
IMPL = sys.implementation.name


class Echo(SaRecord):
    def encrypt(self, packet):
        return m.P_OK, packet


def rand(n):
    return bytes(n)


def out(what, us, **kw):
    d = {"impl": IMPL, "what": what, "us": round(us, 2)}
    d.update(kw)
    print(json.dumps(d))


def host_frames(auth, type, body, flags, n, seq0=1):
    """n request frames as the host sends them (sealed on an authenticated link)."""
    if auth is None:
        return [fr.encode(type, (seq0 + i) & 0xFFFF, flags, body) for i in range(n)]
    return [auth.seal(type, (seq0 + i) & 0xFFFF, flags, body) for i in range(n)]


def session(key):
    """A board and a host with a session on it (key None: an open link)."""
    prof = {"max_frame": 4096, "max_batch": 8}
    if key:
        prof["link_key"] = key
    b = bd.Board(prof, 0, random_bytes=rand, sa_factory=Echo)
    b.tick(0)
    if not key:
        return b, None
    h = la.HostAuth(key, rand)
    nonce = h.new_nonce()
    dec = fr.FrameDecoder(65535, auth=True)
    for f in dec.feed(b.feed(h.seal(m.HELLO, 1, 0, m.encode_hello_request(b"benchses") + nonce), 0)):
        assert h.open(f, nonce) is not None
    return b, h


def decode_all(wires, auth):
    d = fr.FrameDecoder(65535, auth=auth)
    t0 = now_us()
    for w in wires:
        d.feed(w)
    return since(t0) / len(wires)


def best(fn, reps=3):
    return min(fn() for _ in range(reps))


def board_rounds(key, type, body, flags, n):
    """µs per request on the board core: feed (check, handle) and the reply out (seal)."""
    b, h = session(key)
    if type == m.ENCRYPT:
        b.feed(host_frames(h, m.SA_ADD, m.SaSpec(0x1000, m.DIR_OUT, m.ENCR_AES_GCM_16, bytes(20)).encode(),
                           fr.FLAG_ENC if h else 0, 1, 60000)[0], 0)

    def run():
        frames = host_frames(h, type, body, flags, n, 2)
        t0 = now_us()
        for w in frames:
            b.feed(w, 0)
        return since(t0) / n
    return best(run)


def data(n):
    """n bytes without zeros (COBS's cheap case; zero-filled packets cost its loop a turn per byte)."""
    return bytes((i % 251) + 1 for i in range(n))


pkt = data(1400)
hb = (m.HEARTBEAT, b"", fr.FLAG_NOCACHE)
enc = (m.ENCRYPT, m.encode_encrypt_request([(0x1000, pkt)]), fr.FLAG_NOCACHE)
for name, (t, body, flags) in (("heartbeat", hb), ("encrypt_1400", enc)):
    plain = board_rounds(None, t, body, flags, N)
    sealed = board_rounds(KEY, t, body, flags, N)
    out("board_" + name, sealed, open_link_us=round(plain, 2), added_us=round(sealed - plain, 2))

# the parts alone
def time_seal(sealer, body):
    t0 = now_us()
    for _ in range(N):
        sealer.seal(m.HEARTBEAT, 1, 0, body)
    return since(t0) / N


def time_check(opener, decoded):
    t0 = now_us()
    for f in decoded:
        opener.open(f)
    return since(t0) / len(decoded)


def time_encode(body):
    t0 = now_us()
    for _ in range(N):
        fr.encode(m.HEARTBEAT, 1, 0, body)
    return since(t0) / N


h2b, b2h = la.boot_keys(KEY)
for size in (0, 64, 1400):
    body = data(size)
    out("seal", best(lambda b=body: time_seal(la.Sealer(h2b), b)), body=size)
    s2 = la.Sealer(h2b)
    frames = [s2.seal(m.HEARTBEAT, i, 0, body)[0] for i in range(N)]
    dec = fr.FrameDecoder(65535, auth=True)
    decoded = [dec.feed(w)[0] for w in frames]
    out("check", time_check(la.Opener(h2b), decoded), body=size)
    out("decode_sealed", best(lambda w=frames: decode_all(w, True)), body=size)
    plainwires = [fr.encode(m.HEARTBEAT, 1, 0, body)] * N
    out("decode_open_link", best(lambda w=plainwires: decode_all(w, False)), body=size)
    out("encode_open_link", best(lambda b=body: time_encode(b)), body=size)

spec = m.SaSpec(0x1000, m.DIR_OUT, m.ENCR_AES_CBC, bytes(32), m.AUTH_HMAC_SHA2_256_128, bytes(32),
                src=(bytes(4), 4500), dst=(bytes(4), 4500), ts_local=[(bytes(4), b"\xff" * 4, 0, 0, 65535)],
                ts_remote=[(bytes(4), b"\xff" * 4, 0, 0, 65535)]).encode()
mac = la.Mac(bytes(32))
t0 = now_us()
for i in range(N // 10):
    la.keystream_xor(mac, i, spec)
out("sa_add_keystream", since(t0) / (N // 10), body=len(spec))
t0 = now_us()
for _ in range(N // 10):
    la.Session(KEY, bytes(16), bytes(16), False)
out("session_keys", since(t0) / (N // 10))
out("overhead_bytes", 0, decoded=fr.AUTH_LEN, wire_at_most=la.WIRE_OVERHEAD)
