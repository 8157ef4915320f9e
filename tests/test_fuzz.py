"""Fuzz the responder with >= 100,000 mutated IKE messages: none may crash it, leak memory or
set up an SA.

Seeds are real messages from our initiator: IKE_SA_INIT requests, IKE_AUTH requests for a live
half-open SA, INFORMATIONAL/CREATE_CHILD_SA requests on an established SA, and the answers to the
responder's own requests. Mutations: bit flips, byte overwrites with boundary values, truncation,
extension, length-field rewrites, splices and random garbage. Checked throughout:

* no exception escapes (the engine runs in strict mode, so internal errors are raised);
* unauthenticated garbage creates no state beyond half-open SAs (never an IkeSaUp, never a
  ChildSaInstall), and those stay within the configured limits and expire;
* every table stays bounded (SAs, half-open, rate-limiter keys, timer heap).
"""
import gc
import random
import struct
import sys
import time

from host.ike.config import parse_connections
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import ChildSaInstall, IkeSaDown, IkeSaUp
from host.ike.loopback import drain
from host.ike.proposals import OffloadCapabilities

A, B = "192.0.2.1", "192.0.2.2"
CAPS = OffloadCapabilities.from_proposals(["aes128gcm16", "aes256gcm16", "aes128-sha256"])
N = 100_000


def _conn(local, remote, lid, rid, lts, rts, ike):
    return {"gw": {"local_addrs": [local], "remote_addrs": [remote], "psk": "fuzz-psk-0123456789abcdef",
                   "proposals": ike, "local": {"auth": "psk", "id": lid}, "remote": {"auth": "psk", "id": rid},
                   "initial_contact": False,
                   "children": {"net": {"local_ts": [lts], "remote_ts": [rts],
                                        "esp_proposals": ["aes256gcm16", "aes128-sha256"]}}}}


IKE = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048", "aes128gcm16-prfsha256-ecp256"]
BOUNDARY = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x04, 0x08, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x2E)


def mutate(rng: random.Random, msg: bytes, other: bytes) -> bytes:
    b = bytearray(msg)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        op = rng.randrange(10)
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
        if op <= 2:                                   # bit flips
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 3:                                 # boundary byte
            b[rng.randrange(len(b))] = rng.choice(BOUNDARY)
        elif op == 4:                                 # truncate
            del b[rng.randrange(len(b)):]
        elif op == 5:                                 # extend
            b += rng.randbytes(rng.randrange(1, 40))
        elif op == 6:                                 # rewrite a 16-bit length-ish field
            i = rng.randrange(max(1, len(b) - 1))
            b[i:i + 2] = struct.pack("!H", rng.choice((0, 1, 3, 4, 5, 8, 0x7FFF, 0xFFFF, len(b), len(b) - i)))
        elif op == 7:                                 # fix the IKE length after a change, or break it
            if len(b) >= 28:
                b[24:28] = struct.pack("!I", len(b) if rng.random() < 0.8 else rng.randrange(1 << 32))
        elif op == 8:                                 # splice with another message
            cut = rng.randrange(len(b) + 1)
            b = b[:cut] + other[rng.randrange(len(other) + 1):]
        else:                                         # duplicate a slice
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randrange(1, 32)]
    if rng.random() < 0.5 and len(b) >= 28:           # keep the header length right half the time
        b[24:28] = struct.pack("!I", len(b))
    return bytes(b)


class Harness:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.now = 0.0
        # cookies off: this harness is about half-open state and parsing (cookies: tests/test_seed.py)
        self.settings = EngineSettings(max_half_open=400, max_half_open_per_ip=200, half_open_timeout=5.0,
                                       cookie_threshold=0, cookie_threshold_ip=0)
        self.b = IkeEngine(parse_connections(_conn(B, A, "b.example", "a.example", "203.0.113.0/24",
                                                   "198.51.100.0/24", IKE)), CAPS, settings=self.settings)
        self.b.strict = True
        self.legit_ups = 0
        self.garbage_ups = 0
        self.garbage_installs = 0
        self.downs = []
        self.mutated = 0
        self.random = 0
        self.seeds = []
        self.refresh()

    def _initiator(self, ike, fragment_size=1280):
        a = IkeEngine(parse_connections(_conn(A, B, "a.example", "b.example", "198.51.100.0/24",
                                              "203.0.113.0/24", [ike])), CAPS,
                      settings=EngineSettings(fragment_size=fragment_size))
        a.strict = True
        return a

    def _deliver(self, eng, data, src, dst):
        eng.receive_datagram(data, src, self.now, dst)

    def _legit(self, events):
        self.legit_ups += sum(isinstance(e, IkeSaUp) for e in events)

    def refresh(self):
        """Build fresh seeds: a half-open SA at b, an established SA, and b's own initiation."""
        seeds = []
        b = self.b
        # IKE_SA_INIT requests (one per suite) and an IKE_AUTH request for a half-open SA
        for i, ike in enumerate(IKE):
            a = self._initiator(ike, 150 if i == 0 else 1280)     # the first one's IKE_AUTH in fragments
            a.initiate("gw", self.now)
            init = a.datagrams_to_send()[0]
            seeds.append(init.data)
            self._deliver(b, init.data, (A, 500), (B, 500))
            resp = b.datagrams_to_send()
            if resp:
                seeds.append(resp[0].data)
                self._deliver(a, resp[0].data, (B, 500), (A, 500))
                auth = a.datagrams_to_send()
                if auth:                             # left unanswered: b keeps a half-open SA
                    seeds += [d.data for d in auth] * (4 if len(auth) == 1 else 2)
        # an established SA and requests on it
        a = self._initiator(IKE[0])
        a.initiate("gw", self.now)
        a_events = []
        for _ in range(4):
            for d in a.datagrams_to_send():
                self._deliver(b, d.data, (A, d.local[1]), (B, d.remote[1]))
            a_events += drain(a, self.now)
            self._legit(drain(b, self.now))
            for d in b.datagrams_to_send():
                self._deliver(a, d.data, (B, d.local[1]), (A, d.remote[1]))
        a_events += drain(a, self.now)
        ups = [e for e in a_events if isinstance(e, IkeSaUp)]
        assert ups, "the harness could not establish its IKE SA"
        if ups:
            ike_id = ups[0].ike_id
            # one request of each kind (window 1: answer each before the next goes out)
            for cmd in (lambda: a.check_liveness(ike_id, self.now),
                        lambda: a.create_child(ike_id, "net", self.now),
                        lambda: a.delete_child(next(iter(a.ike_sa(ike_id).children)), self.now)):
                cmd()
                for d in a.datagrams_to_send():
                    seeds.append(d.data)
                    self._deliver(b, d.data, (A, d.local[1]), (B, d.remote[1]))
                drain(b, self.now)
                for d in b.datagrams_to_send():
                    self._deliver(a, d.data, (B, d.local[1]), (A, d.remote[1]))
                drain(a, self.now)
            a.check_liveness(ike_id, self.now)          # the next Message ID, not yet seen by b
            seeds += [d.data for d in a.datagrams_to_send()] * 4
        # b as initiator: mutated answers to its own requests
        b_ike = b.initiate("gw", self.now)
        req = b.datagrams_to_send()
        a = self._initiator(IKE[0])
        for d in req:
            self._deliver(a, d.data, (B, 500), (A, 500))
            for r in a.datagrams_to_send():
                seeds.append(r.data)
        del b_ike
        self.seeds = [s for s in seeds if s]

    def step(self):
        rng = self.rng
        if rng.random() < 0.02:
            data = rng.randbytes(rng.randrange(0, 200))
            self.random += 1
        else:
            s = rng.choice(self.seeds)
            data = mutate(rng, s, rng.choice(self.seeds))
            if data == s:
                return
            self.mutated += 1
        src = (rng.choice((A, A, A, "192.0.2.9", "198.51.100.77")), rng.choice((500, 4500, 1234)))
        self.b.receive_datagram(data, src, self.now, (B, rng.choice((500, 4500))))
        self.b.datagrams_to_send()
        for e in drain(self.b, self.now, accept=None):
            if isinstance(e, IkeSaUp):
                self.garbage_ups += 1
            elif isinstance(e, ChildSaInstall):
                self.garbage_installs += 1
            elif isinstance(e, IkeSaDown):
                self.downs.append(e)


def test_responder_survives_100k_mutated_messages():
    h = Harness(seed=4)
    b = h.b
    t0 = time.monotonic()
    peak_sas = peak_heap = 0
    warm = None
    i = 0
    while h.mutated < N:                 # N mutated messages (plus ~2% random datagrams on top)
        i += 1
        if i == 10_000:
            gc.collect()
            warm = sys.getallocatedblocks()
        h.step()
        h.now += 0.0005
        if i % 500 == 0:
            t = b.get_timer()
            if t is not None and t <= h.now:
                b.handle_timer(h.now)
            peak_sas = max(peak_sas, len(b.ike_sas()))
            peak_heap = max(peak_heap, len(b.ctx.timer_heap))
            assert b.half_open_count() <= h.settings.max_half_open
        if i % 4000 == 3999:
            h.downs += [e for e in drain(b, h.now) if isinstance(e, IkeSaDown)]
            h.refresh()
    elapsed = time.monotonic() - t0
    gc.collect()
    end = sys.getallocatedblocks()
    assert b.stats["internal_errors"] == 0
    # memory: 90,000 more messages leave behind no more than the legitimate SAs' worth of objects
    assert end - warm < 50_000, (warm, end)
    assert h.garbage_ups == 0, "a mutated message established an IKE SA"
    assert h.garbage_installs == 0, "a mutated message created a Child SA"
    established = [sa for sa in b.ike_sas() if sa.state == "established"]
    assert len(established) == h.legit_ups, "garbage tore down an established IKE SA"
    # garbage never ends an SA: half-open ones time out, b's own attempts may time out
    assert not [d for d in h.downs if d.established]
    assert {d.reason for d in h.downs} <= {"half-open timeout", "retransmit timeout (peer not responding)"}
    # bounded tables
    assert peak_sas <= h.settings.max_half_open + h.legit_ups + 10
    assert peak_heap < 5 * h.settings.max_half_open + 100
    assert len(b.ctx.limits.replies.keys) <= b.ctx.limits.replies.max_keys
    # half-open state expires: only the legitimately established SAs (and b's own attempts) remain
    h.now += 60
    b.handle_timer(h.now)
    drain(b, h.now)
    assert b.half_open_count() == 0
    assert all(sa.state == "established" or sa.initiator for sa in b.ike_sas())
    print(f"\nfuzz: {h.mutated} mutated + {h.random} random messages in {elapsed:.1f}s, "
          f"allocated blocks {warm} -> {end}; stats {dict(b.stats)}")
    assert b.stats["malformed"] > N // 10 and b.stats["bad_icv"] > 1000 and b.stats["half_open_created"] > 100
    # RFC 7383 fragments were among the seeds (b's half-open SAs accepted fragmentation)
    assert b.stats["fragments_malformed"] > 1000


# ---------------------------------------------------------------- authenticated garbage

def _seal(sa, exchange, mid, first, chain):
    """An Encrypted-payload message from ``sa`` (the initiator side) whose inner payload chain is the
    raw bytes ``chain`` (starting with payload type ``first``), valid ICV and all."""
    from host.ike.constants import Flag
    from host.ike.message import _GEN, _HDR, _SK
    cipher = sa.cipher
    plain = cipher.pad(chain)
    sk_len = 4 + cipher.iv_len + len(plain) + cipher.icv_len
    aad = _HDR.pack(sa.spi_i, sa.spi_r, _SK, 0x20, exchange, Flag.INITIATOR, mid, 28 + sk_len) + \
        _GEN.pack(first, 0, sk_len)
    return aad + cipher.seal(aad, plain)


def test_responder_survives_authenticated_garbage():
    """A peer that holds the keys but sends nonsense inside the Encrypted payload (mutated payload
    chains in IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL requests) must get answers or be dropped,
    never crash the engine: the exchange handlers see every odd combination of payloads here."""
    from host.ike.constants import ExchangeType
    from host.ike.message import open_sk, parse_header, parse_plain
    from host.ike.payloads import encode_chain
    rng = random.Random(7)
    h = Harness(seed=7)
    b = h.b
    conns = _conn(A, B, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24", [IKE[0]])

    def establish():
        a = IkeEngine(parse_connections(conns), CAPS)
        a.strict = True
        a.initiate("gw", h.now)
        auth_plain = None
        for _ in range(4):
            for d in a.datagrams_to_send():
                if auth_plain is None and parse_header(d.data).exchange == ExchangeType.IKE_AUTH:
                    sa_b = b.ctx.by_spi.get(parse_header(d.data).spi_r)
                    _, sk = parse_plain(parse_header(d.data), d.data)
                    auth_plain = encode_chain(open_sk(d.data, sk, sa_b.cipher))
                b.receive_datagram(d.data, (A, d.local[1]), h.now, (B, d.remote[1]))
            drain(a, h.now)
            drain(b, h.now)
            for d in b.datagrams_to_send():
                a.receive_datagram(d.data, (B, d.local[1]), h.now, (A, d.remote[1]))
        drain(a, h.now)
        sa_a = next(iter(a.ike_sas()))
        return a, sa_a, auth_plain

    a, sa_a, auth_plain = establish()
    # plaintext seeds for requests on an established SA
    seeds = [(ExchangeType.CREATE_CHILD_SA, auth_plain), (ExchangeType.INFORMATIONAL, auth_plain)]
    for cmd in (lambda: a.create_child(sa_a.ike_id, "net", h.now), lambda: a.check_liveness(sa_a.ike_id, h.now)):
        cmd()
        d = a.datagrams_to_send()[0]
        hdr = parse_header(d.data)
        _, sk = parse_plain(hdr, d.data)
        inner = open_sk(d.data, sk, b.ctx.by_spi[sa_a.spi_r].cipher)
        seeds.append((hdr.exchange, encode_chain(inner)))
        b.receive_datagram(d.data, (A, 4500), h.now, (B, 4500))
        drain(b, h.now)
        for r in b.datagrams_to_send():
            a.receive_datagram(r.data, (B, 4500), h.now, (A, 4500))
        drain(a, h.now)
    from host.ike.payloads import DeletePayload, NotifyPayload
    seeds.append((ExchangeType.INFORMATIONAL, encode_chain([DeletePayload(3, [b"\0\0\1\0"]), NotifyPayload(11)])))
    count = answers = 0
    kinds = {}
    t0 = time.monotonic()
    while count < 20_000:
        b_sa = b.ctx.by_spi.get(sa_a.spi_r)
        if b_sa is None or b_sa.state != "established":
            a, sa_a, _ = establish()          # garbage may legitimately delete it (a Delete payload)
            continue
        if rng.random() < 0.05:               # IKE_AUTH on a fresh half-open SA
            a2 = IkeEngine(parse_connections(conns), CAPS)
            a2.initiate("gw", h.now)
            init = a2.datagrams_to_send()[0]
            b.receive_datagram(init.data, (A, 500), h.now, (B, 500))
            for r in b.datagrams_to_send():
                a2.receive_datagram(r.data, (B, 500), h.now, (A, 500))
            sent = a2.datagrams_to_send()
            sa2 = next(iter(a2.ike_sas()), None)
            if sa2 is None or sa2.cipher is None or not sent:   # b at its half-open limit: no answer
                h.now += 0.01
                b.handle_timer(h.now)
                continue
            # this SA's own IKE_AUTH plaintext, so that mutations after AUTH still authenticate
            hdr = parse_header(sent[0].data)
            _, sk = parse_plain(hdr, sent[0].data)
            own = encode_chain(open_sk(sent[0].data, sk, b.ctx.by_spi[hdr.spi_r].cipher))
            first, chain = own[0], mutate(rng, own[1], own[1])
            b.receive_datagram(_seal(sa2, ExchangeType.IKE_AUTH, 1, first, chain), (A, 4500), h.now, (B, 4500))
        else:
            exch, (first, chain) = rng.choice(seeds)
            chain = mutate(rng, chain, rng.choice(seeds)[1][1])
            if rng.random() < 0.1:
                first = rng.choice((0, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 99))
            b.receive_datagram(_seal(sa_a, exch, b_sa.peer_mid, first, chain), (A, 4500), h.now, (B, 4500))
        count += 1
        answers += len(b.datagrams_to_send())
        for e in drain(b, h.now):             # accept whatever installs the garbage negotiated
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
        answers += len(b.datagrams_to_send())
        h.now += 0.001
        if count % 1000 == 0:
            b.handle_timer(h.now)
    elapsed = time.monotonic() - t0
    assert b.stats["internal_errors"] == 0
    assert b.half_open_count() <= h.settings.max_half_open
    print(f"\nauthenticated garbage: {count} messages in {elapsed:.1f}s, {answers} answers, events {kinds}")
    assert answers > count // 2                        # authentic requests get answers (errors included)
    assert kinds.get("ChildSaInstall", 0) > 10 and kinds.get("IkeSaUp", 0) > 10
