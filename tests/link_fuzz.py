"""A fuzzer for the link: the frame decoder, the board core and the host's link client.

One `LinkFuzzer` holds a real board core (the ESP engine, `cryptography` backend, an authenticated
link) and a real host BoardSession + LinkClient with a session on it, wired in-process. Each input
goes to one target:

  decoder  random chunks, mutated frames and garbage into frame decoders (open and authenticated)
  board    to the board core: mutated wires of real requests (which fail the tag check), garbage,
           and requests *sealed under the host's session* with random or mutated bodies, types and
           flags — what a host with the key could send, so the message handlers get them
  host     to the host's link client: mutated board output, garbage, and frames sealed under the
           board's session with random types, flags, bodies and seqs (sometimes those of requests
           in flight), so the session's reply and event handlers get them

Checked throughout: no exception escapes (an input that raises is re-raised with its target), and
everything that input can grow stays bounded (decoder buffers, reply cache, data queue, SAD,
unknown-SPI table, pending sessions, the host's requests in flight and events). tests/test_link_fuzz.py
runs it at CI scale, `inv bench --only fuzz_link` at bench scale (a million inputs and more).
"""
import random

from firmware import esp
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests import linkvectors as lv
from host.offload.link import LinkClient
from host.offload.session import READY, BoardSession

KEY = bytes(range(7, 39))
TYPES = sorted(m.NAMES) + [0x00, 0x7F, 0xFF]
BOUNDARY = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF)


class FuzzFailure(AssertionError):
    pass


def mutate(rng, data, other=b""):
    """A few random edits: bit flips, boundary bytes, cuts, growth, splices, duplicated slices,
    inserted delimiters."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
        op = rng.randrange(9)
        i = rng.randrange(len(b))
        if op <= 2:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 3:
            b[i] = rng.choice(BOUNDARY)
        elif op == 4:
            del b[i:]
        elif op == 5:
            b += rng.randbytes(rng.randrange(1, 40))
        elif op == 6:
            b = b[:i] + bytearray(other[rng.randrange(len(other) + 1):])
        elif op == 7:
            b[i:i] = b[i:i + rng.randrange(1, 32)]
        else:
            b[i:i] = b"\x00"
    return bytes(b)


def random_body(rng, seeds):
    r = rng.random()
    if r < 0.3:
        return rng.randbytes(rng.choice((0, 1, 2, 4, 8, 16, 64, 300, 1500)))
    return mutate(rng, rng.choice(seeds), rng.choice(seeds))


class LinkFuzzer:
    def __init__(self, seed=1, max_frame=4096):
        self.rng = random.Random(seed)
        self.seed = seed
        self.max_frame = max_frame
        self.now = 0.0
        self.counts = {"decoder": 0, "board": 0, "host": 0, "board_sealed": 0, "host_sealed": 0}
        self.losses = 0
        self.lost_reasons = {}
        vec = list(lv.built().values())          # (type, flags, seq, body, wire) of every message
        self.bodies = [v[3] for v in vec if v[3]]
        self.wires = [v[4] for v in vec]
        self.decoders = [fr.FrameDecoder(max_frame), fr.FrameDecoder(max_frame, auth=True)]
        self._pair()

    # ---- the pair under test ---------------------------------------------------------------
    def _ms(self):
        return int(self.now * 1000)

    def _pair(self):
        prof = {"board_id": "fuzz", "max_sas": 16, "max_frame": self.max_frame, "max_batch": 8,
                "reply_cache": 8, "host_silence_ms": 3000, "link_key": KEY}
        self.sealed_requests = []    # wires of real requests: the host's recent output
        rb = random.Random(self.rng.random())
        self.board = esp.make_board(prof, self._ms(), backend="cryptography",
                                    random_bytes=lambda n: rb.randbytes(n))
        self.session = BoardSession("fuzz", self.now, period=0.05, misses=3,
                                    link=LinkClient(link_key=KEY, rto_min=0.002))
        self.to_host = bytearray(self.board.tick(self._ms()))
        self._settle(until=lambda: self.session.state == READY)
        for i in range(4):           # SAs for the data path to find
            d = m.DIR_OUT if i % 2 else m.DIR_IN
            spec = m.SaSpec(0x1000 + i // 2, d, m.ENCR_AES_GCM_16, bytes(20), flags=m.SAF_UDP_ENCAP,
                            src=lv.LOCAL, dst=lv.PEER)
            self.session.sa_add(spec, self.now)
        self._settle()

    def _settle(self, until=None, steps=200):
        """Let the pair talk (heartbeats, replies) for a while."""
        for _ in range(steps):
            if until is not None and until():
                return
            self.step(0.002)
        if until is not None and not until():
            raise FuzzFailure("the pair did not get to the state wanted (seed %d)" % self.seed)

    def step(self, dt=0.0):
        self.now += dt
        s = self.session
        out = s.data_to_send()
        if out:
            self.sealed_requests = (self.sealed_requests + [out])[-16:]
            self.to_host += self.board.feed(out, self._ms())
        self.to_host += self.board.tick(self._ms())
        self.to_host += self.board.work(self._ms(), None)
        if self.to_host:
            data, self.to_host = bytes(self.to_host), bytearray()
            s.receive(data, self.now)
        t = s.get_timer()
        if t is not None and t <= self.now:
            s.handle_timer(self.now)
        while True:
            ev = s.next_event()
            if ev is None:
                break
            if type(ev).__name__ == "BoardLost":
                self.losses += 1
                self.lost_reasons[ev.reason] = self.lost_reasons.get(ev.reason, 0) + 1

    # ---- inputs ------------------------------------------------------------------------------
    def one(self):
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            self._decoder()
        elif r < 0.6:
            self._board()
        else:
            self._host()
        if rng.random() < 0.05:
            self.step(rng.choice((0.0, 0.001, 0.01, 0.06)))

    def _decoder(self):
        rng = self.rng
        data = rng.choice((lambda: rng.randbytes(rng.randrange(0, 600)),
                           lambda: mutate(rng, rng.choice(self.wires), rng.choice(self.wires)),
                           lambda: b"".join(rng.choice(self.wires) for _ in range(rng.randrange(1, 4)))[
                               rng.randrange(10):]))()
        for d in self.decoders:
            self._guard("decoder", d.feed, data)
        self.counts["decoder"] += 1

    def _sealed_request(self):
        """A request sealed under the host's session, with a random type, flags and body."""
        rng = self.rng
        s = self.session.link.auth.current
        if s is None:
            return None
        t = rng.choice(TYPES)
        flags = rng.choice((0, fr.FLAG_NOCACHE, fr.FLAG_ENC, fr.FLAG_REPLY, fr.FLAG_EVENT, rng.randrange(256)))
        body = random_body(rng, self.bodies)
        if t == m.HELLO:
            body += rng.randbytes(la.NONCE_LEN)
            if rng.random() < 0.5:          # under the boot key, as HELLO requests go
                return self.session.link.auth.boot_out.seal(t, rng.randrange(0x10000), flags & 0x3F, body)[0]
        return s.sealer.seal(t, rng.randrange(0x10000), flags & 0x7F, body, s.enc)[0]

    def _board(self):
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            data = self._sealed_request()
            self.counts["board_sealed"] += data is not None
        elif r < 0.8 and self.sealed_requests:
            data = mutate(rng, rng.choice(self.sealed_requests), rng.choice(self.wires))
        elif r < 0.9:
            data = rng.choice(self.sealed_requests or self.wires)        # replayed
        else:
            data = rng.randbytes(rng.randrange(1, 300))
        if data:
            self.to_host += self._guard("board", self.board.feed, data, self._ms())
            if rng.random() < 0.3:
                self.to_host += self._guard("board", self.board.work, self._ms(), None)
        self.counts["board"] += 1

    def _sealed_board_frame(self):
        """Board output sealed under the board's session: replies (sometimes to a request in
        flight, by its seq and type), events, anything."""
        rng = self.rng
        s = self.board.auth.current
        if s is None:
            return None
        pending = list(self.session.link._pending.values())
        if pending and rng.random() < 0.5:
            p = rng.choice(pending)
            t, seq, flags = p.type, p.seq, fr.FLAG_REPLY
        else:
            t, seq = rng.choice(TYPES), rng.randrange(0x10000)
            flags = rng.choice((fr.FLAG_REPLY, fr.FLAG_EVENT, 0, rng.randrange(0x40)))
        body = random_body(rng, self.bodies)
        if t == m.HELLO and flags & fr.FLAG_EVENT and rng.random() < 0.5:
            return self.board.auth.boot_out.seal(t, seq, flags, la.ZERO_ECHO + body)[0]
        return s.sealer.seal(t, seq, flags, body)[0]

    def _host(self):
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            data = self._sealed_board_frame()
            self.counts["host_sealed"] += data is not None
        elif r < 0.9:
            data = mutate(rng, rng.choice(self.wires), rng.choice(self.wires))
        else:
            data = rng.randbytes(rng.randrange(1, 300))
        if data:
            self._guard("host", self.session.receive, data, self.now)
        self.counts["host"] += 1

    def _guard(self, target, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            raise FuzzFailure("%s raised %r (seed %d, input %d)" % (target, e, self.seed, self.total())) from e

    # ---- bounds -------------------------------------------------------------------------------
    def total(self):
        c = self.counts
        return c["decoder"] + c["board"] + c["host"]

    def check_bounds(self):
        b = self.board
        for d in self.decoders + [b.decoder, self.session.link.decoder]:
            assert len(d._buf) <= d._max_block, "decoder buffer %d" % len(d._buf)
        assert len(b.cache.replies) <= b.cache.size and len(b.cache.order) <= b.cache.size
        assert len(b.data_queue) <= b.max_data_queue + 4, len(b.data_queue)
        assert len(b.data_out) <= b.max_data_queue + 8, len(b.data_out)
        assert len(b.sad) <= b.sad.max_sas and len(b._unknown) <= b._unknown_max
        assert len(b.out) < 2 * b.max_frame, len(b.out)
        link = self.session.link
        assert link.in_flight() <= 64, link.in_flight()
        assert len(link._events) == 0 and len(link.auth._order) <= la.HostAuth.RECENT
        assert len(self.session._ops) <= 64, len(self.session._ops)

    def run(self, n, check_every=1000):
        for i in range(n):
            self.one()
            if (i + 1) % check_every == 0:
                self.step(0.06)              # the session runs: heartbeats go both ways
                self.check_bounds()
                if self.session.state != READY:
                    self._settle(until=lambda: self.session.state == READY, steps=2000)
        self.check_bounds()
        return self.counts

