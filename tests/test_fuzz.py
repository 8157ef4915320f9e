"""Fuzz the responder with >= 100,000 mutated IKE messages (issue 4 acceptance).

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
        self.settings = EngineSettings(max_half_open=400, max_half_open_per_ip=200, half_open_timeout=5.0)
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

    def _initiator(self, ike):
        a = IkeEngine(parse_connections(_conn(A, B, "a.example", "b.example", "198.51.100.0/24",
                                              "203.0.113.0/24", [ike])), CAPS)
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
        for ike in IKE:
            a = self._initiator(ike)
            a.initiate("gw", self.now)
            init = a.datagrams_to_send()[0]
            seeds.append(init.data)
            self._deliver(b, init.data, (A, 500), (B, 500))
            resp = b.datagrams_to_send()
            if resp:
                seeds.append(resp[0].data)
                self._deliver(a, resp[0].data, (B, 500), (A, 500))
                auth = a.datagrams_to_send()
                if auth:
                    seeds += [auth[0].data] * 4      # left unanswered: b keeps a half-open SA
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
            peak_heap = max(peak_heap, len(b._heap))
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
    assert len(b._replies.keys) <= b._replies.max_keys
    # half-open state expires: only the legitimately established SAs (and b's own attempts) remain
    h.now += 60
    b.handle_timer(h.now)
    drain(b, h.now)
    assert b.half_open_count() == 0
    assert all(sa.state == "established" or sa.initiator for sa in b.ike_sas())
    print(f"\nfuzz: {h.mutated} mutated + {h.random} random messages in {elapsed:.1f}s, allocated blocks {warm} -> {end}; stats {dict(b.stats)}")
    assert b.stats["malformed"] > N // 10 and b.stats["bad_icv"] > 1000 and b.stats["half_open_created"] > 100
