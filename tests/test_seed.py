"""The seed scenario and the flood tests, in virtual time with two real engines.

Seed scenario (RFC 7296 §1.5, §2.4): gateway A (branch, initiator, dpd_action = restart) and
gateway B (hub, responder) carry ESP both ways, a packet every 100 ms each, over a network with
10 ms one-way delay. B loses all SA state (its daemon and board restart). A keeps sending; B's
board reports the unknown SPI. With ``unprotected_invalid_spi`` on, B answers with an unprotected
INVALID_SPI, A starts a liveness check at once, gives up after its retransmissions and
re-establishes. With it off, A notices only when its ``dpd_delay`` (30 s) passes without inbound
traffic, then runs the same check. Measured: first unknown-SPI packet at B -> a new Child SA at A.

Flood tests: 10,000 spoofed unprotected INVALID_SPI messages, 10,000 spoofed unknown-SPI ESP
reports, 10,000 spoofed IKE_SA_INIT requests — every one an action on an unprotected message, each
bounded by its token buckets (§2.4, §2.6).
"""
from __future__ import annotations

import heapq
import itertools
import os
import random

import pytest

from host.ike.config import RetransmitPolicy, parse_connections
from host.ike.constants import ExchangeType, Flag, Notify
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import ChildSaDelete, ChildSaInstall, ChildSaOutbound, ChildSaUp, IkeSaDown, IkeSaUp
from host.ike.message import Message, parse_header
from host.ike.payloads import NotifyPayload
from tests.test_engine import A, A_NET, ALL, B, B_NET, conn, established

pytestmark = pytest.mark.seed

DELAY = 0.010           # one-way network delay
TICK = 0.100            # ESP packet interval per direction
FAST = RetransmitPolicy(timeout=0.5, base=2.0, tries=3)        # check lost after 0.5+1+2+4 = 7.5 s
STRONGSWAN = RetransmitPolicy(timeout=4.0, base=1.8, tries=5)  # charon's defaults: 165 s


def schedule_total(p: RetransmitPolicy) -> float:
    return sum(p.delay(n) for n in range(p.tries + 1))


class Board:
    """What the daemon + board do with ESP, reduced to SPIs: installed SAs, outbound selection
    (ChildSaOutbound / defer_outbound), inbound counters as liveness proof, unknown SPIs reported."""

    def __init__(self):
        self.inbound = {}           # spi_in -> handle
        self.out = None             # (handle, spi_out) we send on
        self.handles = {}           # handle -> ChildSaInstall

    def handle(self, ev):
        if isinstance(ev, ChildSaInstall):
            self.inbound[ev.spi_in] = ev.handle
            self.handles[ev.handle] = ev
            if not ev.defer_outbound:
                self.out = (ev.handle, ev.spi_out)
        elif isinstance(ev, ChildSaOutbound):
            self.out = (ev.handle, self.handles[ev.handle].spi_out)
        elif isinstance(ev, ChildSaDelete):
            self.inbound.pop(ev.spi_in, None)
            self.handles.pop(ev.handle, None)
            if self.out is not None and self.out[0] == ev.handle:
                self.out = None
                if self.handles:                        # fall back to the newest one left
                    h = max(self.handles)
                    self.out = (h, self.handles[h].spi_out)


class Sim:
    """Discrete-event simulation: engines, boards, ESP traffic and the network, virtual time."""

    def __init__(self):
        self.now = 0.0
        self.q = []
        self.seq = itertools.count()
        self.engines, self.boards, self.events = {}, {}, {}
        self.first_unknown = None
        self.unknown_reports = 0
        self.new_child_at = None
        self.delivered = 0

    def add(self, ip, engine):
        self.engines[ip] = engine
        self.boards[ip] = Board()
        self.events[ip] = []

    def at(self, t, fn, *args):
        heapq.heappush(self.q, (t, next(self.seq), fn, args))

    def flush(self, ip):
        eng, board = self.engines[ip], self.boards[ip]
        while (ev := eng.next_event()) is not None:
            self.events[ip].append((self.now, ev))
            board.handle(ev)
            if isinstance(ev, ChildSaInstall):
                eng.child_sa_installed(ev.handle, True, self.now)
            if isinstance(ev, ChildSaUp) and ip == A and self.first_unknown is not None and \
                    self.new_child_at is None:
                self.new_child_at = self.now
        for d in eng.datagrams_to_send(self.now):
            self.at(self.now + DELAY, self.deliver_ike, d.data, (ip, d.local[1]), d.remote)
        t = eng.get_timer()
        if t is not None:
            self.at(max(t, self.now), self.timer, ip, eng)

    def deliver_ike(self, data, src, dst):
        eng = self.engines.get(dst[0])
        if eng is not None:
            self.delivered += 1
            eng.receive_datagram(data, src, self.now, dst)
            self.flush(dst[0])

    def timer(self, ip, eng):
        if self.engines.get(ip) is not eng:
            return                                  # a timer of an engine that was replaced
        t = eng.get_timer()
        if t is not None and t <= self.now:
            eng.handle_timer(self.now)
            self.flush(ip)

    def esp_tick(self, ip, peer):
        out = self.boards[ip].out
        if out is not None:
            self.at(self.now + DELAY, self.deliver_esp, out[1], ip, peer)
        self.at(self.now + TICK, self.esp_tick, ip, peer)

    def deliver_esp(self, spi, src_ip, dst_ip):
        eng, board = self.engines[dst_ip], self.boards[dst_ip]
        handle = board.inbound.get(spi)
        if handle is not None:
            eng.esp_received(handle, self.now)
            return
        self.unknown_reports += 1
        if self.first_unknown is None:
            self.first_unknown = self.now
        eng.esp_unknown_spi(spi, (src_ip, 4500), self.now, (dst_ip, 4500))
        self.flush(dst_ip)

    def run(self, until, stop=None):
        while self.q and self.q[0][0] <= until:
            t, _s, fn, args = heapq.heappop(self.q)
            self.now = max(self.now, t)
            fn(*args)
            if stop is not None and stop():
                return True
        return False


def gateway(ip, retransmit, unprotected, hint_retransmit=None, invalid_ike_spi=False):
    if ip == A:
        c = conn(A, B, "a.example", "b.example", A_NET, B_NET,
                 extra={"dpd_delay": 30, "dpd_action": "restart", "start_action": "start"})
    else:
        c = conn(B, A, "b.example", "a.example", B_NET, A_NET, extra={"dpd_delay": 30})
    s = EngineSettings(unprotected_invalid_spi=unprotected, hint_retransmit=hint_retransmit,
                       invalid_ike_spi=invalid_ike_spi)
    e = IkeEngine(parse_connections({"gw": c}), ALL, settings=s, retransmit=retransmit)
    e.strict = True
    return e


def seed_run(retransmit, unprotected, hint_retransmit=None, restart_at=60.0, limit=600.0,
             invalid_ike_spi=False):
    """INVALID_IKE_SPI is off unless asked for: the seed's comparison is with the ordinary
    liveness timeout, which B's INVALID_IKE_SPI answer to A's check would shorten."""
    sim = Sim()
    sim.add(A, gateway(A, retransmit, unprotected, hint_retransmit, invalid_ike_spi))
    sim.add(B, gateway(B, retransmit, unprotected, hint_retransmit, invalid_ike_spi))
    sim.engines[A].start(0.0)
    sim.flush(A)
    sim.at(1.0, sim.esp_tick, A, B)
    sim.at(1.05, sim.esp_tick, B, A)
    sim.run(restart_at)
    assert sim.boards[A].out and sim.boards[B].out, "tunnel not up before the restart"
    assert sim.unknown_reports == 0

    def restart_b():
        # B's daemon and board restart: every SA forgotten, same configuration
        sim.engines[B] = gateway(B, retransmit, unprotected, hint_retransmit, invalid_ike_spi)
        sim.boards[B] = Board()
    sim.at(restart_at, restart_b)
    recovered = sim.run(limit, stop=lambda: sim.new_child_at is not None)
    assert recovered, "A never re-established"
    a, b = sim.engines[A], sim.engines[B]
    return sim, a, b


def _fmt(p):
    return (f"{p.timeout:g} s x {p.base:g}^n, {p.tries} retransmissions "
            f"(gives up after {schedule_total(p):g} s)")


def test_seed_scenario_recovery_with_and_without_unprotected_invalid_spi():
    rows = []
    for name, retransmit, hint in (("fast schedule", FAST, None),
                                   ("charon default schedule", STRONGSWAN, None),
                                   ("charon default, fast hint checks", STRONGSWAN, FAST)):
        on_sim, on_a, on_b = seed_run(retransmit, True, hint)
        off_sim, off_a, off_b = seed_run(retransmit, False, hint)
        t_on = on_sim.new_child_at - on_sim.first_unknown
        t_off = off_sim.new_child_at - off_sim.first_unknown
        check = schedule_total(hint or retransmit)
        # on: the check starts with the first INVALID_SPI (one RTT after the first unknown packet)
        # and A gives up after the check's schedule; then one IKE_SA_INIT + IKE_AUTH (2 RTT)
        assert check <= t_on <= check + 0.2, (name, t_on)
        assert on_a.stats["liveness_checks_from_hints"] == 1
        assert on_b.stats["invalid_spi_sent_unprotected"] >= 1
        # B answered ESP with at most its rate; it never made an IKE SA because of ESP
        unprot = on_b.stats["invalid_spi_sent_unprotected"]
        assert unprot <= 3 + 1 * t_on + 1, unprot              # burst 3, 1/s from one source
        # off: A only notices when dpd_delay passes without inbound ESP, then the ordinary schedule
        dpd = 30.0
        assert dpd - 0.3 + schedule_total(retransmit) <= t_off <= dpd + schedule_total(retransmit) + 0.3, \
            (name, t_off)
        assert off_b.stats["invalid_spi_sent_unprotected"] == 0
        assert off_a.stats["liveness_checks_from_hints"] == 0
        assert off_a.stats["dpd_checks"] >= 1
        for sim in (on_sim, off_sim):
            downs = [e for _t, e in sim.events[A] if isinstance(e, IkeSaDown)]
            assert len(downs) == 1 and downs[0].restart_ike_id is not None
            assert "retransmit" in downs[0].reason
        assert t_on < t_off
        rows.append((name, _fmt(retransmit), _fmt(hint) if hint else "same", t_on, t_off, unprot))
    print("\nseed scenario: first unknown-SPI packet at B -> new Child SA at A (dpd_delay 30 s, "
          f"{DELAY * 1000:g} ms one-way, ESP every {TICK * 1000:g} ms)")
    for name, sched, hint, t_on, t_off, unprot in rows:
        print(f"  {name}: schedule {sched}; hint checks: {hint}\n"
              f"    unprotected INVALID_SPI on: {t_on:7.3f} s ({unprot} sent)   off: {t_off:7.3f} s")


def test_invalid_ike_spi_answers_the_liveness_check_of_a_peer_and_it_gives_up_sooner():
    """§2.21.4 on the seed scenario without unprotected INVALID_SPI: B lost its state and A's
    ``dpd_delay`` check reaches B, which answers N(INVALID_IKE_SPI) unprotected. A keeps its SAs
    (nothing unprotected changes state) but moves the check's remaining retransmissions to the
    hint schedule: with charon's default schedule, 30 + 7.5 s instead of 30 + 165 s."""
    on_sim, on_a, on_b = seed_run(STRONGSWAN, False, FAST, invalid_ike_spi=True)
    off_sim, off_a, off_b = seed_run(STRONGSWAN, False, FAST, invalid_ike_spi=False)
    t_on = on_sim.new_child_at - on_sim.first_unknown
    t_off = off_sim.new_child_at - off_sim.first_unknown
    dpd = 30.0
    # the check goes out when dpd_delay passes; B's answer comes one RTT later and A gives up
    # after the whole hint schedule from there; then IKE_SA_INIT + IKE_AUTH (2 RTT)
    assert dpd + schedule_total(FAST) - 0.3 <= t_on <= dpd + schedule_total(FAST) + 0.3, t_on
    assert dpd + schedule_total(STRONGSWAN) - 0.3 <= t_off <= dpd + schedule_total(STRONGSWAN) + 0.3, t_off
    assert on_b.stats["invalid_ike_spi_sent"] >= 1 and off_b.stats["invalid_ike_spi_sent"] == 0
    assert on_a.stats["invalid_ike_spi_received"] >= 1
    assert on_a.stats["liveness_checks_from_ike_spi_hints"] == 1
    assert on_a.stats["invalid_ike_spi_received"] == 1 + on_a.stats["invalid_ike_spi_check_running"]
    downs = [e for _t, e in on_sim.events[A] if isinstance(e, IkeSaDown)]
    assert len(downs) == 1 and downs[0].restart_ike_id is not None
    assert "INVALID_IKE_SPI" in downs[0].reason
    print(f"\nINVALID_IKE_SPI (dpd_delay 30 s, schedule {_fmt(STRONGSWAN)}, hint {_fmt(FAST)}): "
          f"first unknown-SPI packet at B -> new Child SA at A: on {t_on:.3f} s, off {t_off:.3f} s")


def test_seed_scenario_recovery_twice_in_a_row():
    """The restarted gateway can lose its state again; the second recovery is as quick."""
    sim, a, b = seed_run(FAST, True, restart_at=60.0)
    t1 = sim.new_child_at - sim.first_unknown
    sim.first_unknown = sim.new_child_at = None
    restart = sim.now + 20.0

    def again():
        sim.engines[B] = gateway(B, FAST, True)
        sim.boards[B] = Board()
    sim.at(restart, again)
    assert sim.run(restart + 120.0, stop=lambda: sim.new_child_at is not None)
    t2 = sim.new_child_at - sim.first_unknown
    assert abs(t1 - t2) < 0.2 and t2 <= schedule_total(FAST) + 0.2


# ---------------------------------------------------------------- floods

def test_flood_of_spoofed_unprotected_invalid_spi_tears_nothing_down():
    s = EngineSettings(hint_rate=1.0, hint_burst=2.0, hint_global_rate=10.0, hint_global_burst=20.0)
    a, b, net = established(settings_a=s)
    sa_a = a.ike_sas()[0]
    child = next(iter(sa_a.children.values()))
    rng = random.Random(7)
    duration, n = 10.0, 10_000
    sent = []
    net.loss = lambda d: sent.append(d) and False
    for i in range(n):
        now = duration * i / n
        kind = i % 4
        if kind == 0:       # the worst case: the real peer's address and one of our real SPIs
            src, spi = (B, 4500), child.spi_out
        elif kind == 1:     # our SPI from a random address
            src = (f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", 4500)
            spi = child.spi_out
        elif kind == 2:     # the peer's address, a random SPI
            src, spi = (B, 4500), rng.randrange(256, 1 << 32)
        else:               # garbage both ways
            src, spi = (f"10.9.{rng.randrange(256)}.{rng.randrange(256)}", rng.randrange(65536)), \
                rng.randrange(256, 1 << 32)
        msg = Message(os.urandom(8), bytes(8), ExchangeType.INFORMATIONAL, Flag.INITIATOR, 0,
                      [NotifyPayload(Notify.INVALID_SPI, spi.to_bytes(4, "big"))]).encode()
        a.receive_datagram(msg, src, now, (A, 4500))
        net.pump(now)                   # b is alive: it answers every check
        net.run_timers(now)
    checks = a.stats["liveness_checks_from_hints"]
    bound = 2.0 + 1.0 * duration        # one source can start burst + rate x time checks at most
    print(f"\nflood: {n} spoofed unprotected INVALID_SPI in {duration:g} s -> {checks} liveness checks "
          f"(bound {bound:g}), {a.stats['invalid_spi_hints_unmatched']} unmatched, "
          f"{a.stats['invalid_spi_hints_check_running']} while a check ran, "
          f"{a.stats['invalid_spi_hints_rate_limited']} rate-limited")
    assert 1 <= checks <= bound
    assert a.stats["invalid_spi_hints_unmatched"] == 3 * n // 4  # wrong SPI or source: not considered
    assert b.stats["liveness_answered"] == checks
    assert a.ike_sas() == [sa_a] and sa_a.children == {child.handle: child} and child.state == "installed"
    assert not [e for e in net.events[A] if isinstance(e, (IkeSaDown, ChildSaDelete))]
    from_a = [d for d in sent if d.local[0] == A]
    assert {d.remote[0] for d in from_a} == {B}                   # nothing goes to a spoofed source
    assert len(from_a) == checks                                  # the checks, nothing else, no retries


def test_flood_of_spoofed_esp_with_unknown_spis_is_answered_at_the_configured_rate():
    s = EngineSettings(unprotected_invalid_spi=True, invalid_spi_rate=1.0, invalid_spi_burst=3.0,
                       invalid_spi_global_rate=20.0, invalid_spi_global_burst=40.0)
    a, b, net = established(settings_b=s)
    rng = random.Random(11)
    duration, n = 10.0, 10_000
    per_src = {}
    out = []
    for i in range(n):
        now = duration * i / n
        if i % 10 == 0:     # some claim to come from the real peer (protected answers inside its IKE SA)
            src = (A, 4500)
        else:
            src = (f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}", 4500)
        r = b.esp_unknown_spi(rng.randrange(256, 1 << 32), src, now, (B, 4500))
        if r is not None:
            per_src[src[0]] = per_src.get(src[0], 0) + 1
        out += b.datagrams_to_send(now)
    unprot = b.stats["invalid_spi_sent_unprotected"]
    prot = b.stats["invalid_spi_sent_protected"]
    bound = 40.0 + 20.0 * duration
    print(f"\nflood: {n} spoofed unknown-SPI ESP reports in {duration:g} s -> {unprot} unprotected + {prot} "
          f"protected INVALID_SPI (global bound {bound:g}, per source {3 + 1 * duration:g})")
    assert unprot + prot <= bound and unprot > 0 and prot > 0
    assert max(per_src.values()) <= 3 + 1 * duration
    assert b.half_open_count() == 0 and len(b.ike_sas()) == 1        # ESP never creates an IKE SA
    # protected ones batch SPIs; every datagram is either an unprotected notify or b's one SA's request
    unprotected = [d for d in out if parse_header(d.data).spi_r == bytes(8)]
    assert len(unprotected) == unprot
    assert all(parse_header(d.data).exchange == ExchangeType.INFORMATIONAL for d in out)


def test_floods_around_invalid_ike_spi_are_bounded_and_tear_nothing_down():
    """§2.21.4 both ways: 10,000 protected-looking requests for IKE SAs b does not have (random SPIs,
    spoofed sources) get at most the configured rate of INVALID_IKE_SPI answers; 10,000 spoofed
    INVALID_IKE_SPI answers to a's liveness check hasten it once, and b, alive, answers it."""
    from host.ike import liveness
    a, b, net = established(settings_a=EngineSettings(hint_retransmit=FAST))
    sa_a, sa_b = a.ike_sas()[0], b.ike_sas()[0]
    rng = random.Random(12)
    duration, n = 10.0, 10_000
    per_src = {}
    for i in range(n):
        now = duration * i / n
        src = (f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}", 4500)
        req = bytearray(Message(os.urandom(8), os.urandom(8), ExchangeType.INFORMATIONAL, Flag.INITIATOR,
                                rng.randrange(1, 100), []).encode(sa_b.cipher))
        b.receive_datagram(bytes(req), src, now, (B, 4500))
        for d in b.datagrams_to_send(now):
            per_src[d.remote[0]] = per_src.get(d.remote[0], 0) + 1
            assert parse_header(d.data).flags & Flag.RESPONSE and len(d.data) <= len(req)
    sent = b.stats["invalid_ike_spi_sent"]
    bound = 40.0 + 20.0 * duration
    assert 0 < sent == sum(per_src.values()) <= bound and max(per_src.values()) <= 3 + duration
    assert b.ike_sas() == [sa_b] and b.half_open_count() == 0
    # the other way: a's check is in flight; a forger answers it 10,000 times
    t = duration
    assert liveness.request_check(sa_a, t)
    req = a.datagrams_to_send(t)[0]
    forged = Message(sa_a.spi_i, sa_a.spi_r, ExchangeType.INFORMATIONAL, Flag.RESPONSE,
                     parse_header(req.data).mid, [NotifyPayload(Notify.INVALID_IKE_SPI, b"")]).encode()
    for i in range(n):
        a.receive_datagram(forged, (B, 4500), t + i / n, (A, 4500))
    assert a.datagrams_to_send(t + 1) == []
    assert a.stats["liveness_checks_from_ike_spi_hints"] == 1
    assert a.stats["invalid_ike_spi_check_running"] == n - 1
    b.receive_datagram(req.data, (A, 4500), t + 1, (B, 4500))            # b is alive and answers
    for d in b.datagrams_to_send(t + 1):
        a.receive_datagram(d.data, (B, 4500), t + 1, (A, 4500))
    assert sa_a.outstanding is None and a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    print(f"\nfloods: {n} requests for unknown IKE SAs in {duration:g} s -> {sent} INVALID_IKE_SPI "
          f"(bound {bound:g}); {n} forged INVALID_IKE_SPI answers -> 1 hastened check, nothing torn down")


def test_flood_of_spoofed_ike_sa_init_turns_cookies_on_and_a_real_initiator_gets_through():
    b = IkeEngine(parse_connections({"gw": conn(B, "%any", "b.example", "%any", B_NET, A_NET)}), ALL)
    b.strict = True
    a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL)
    a.strict = True
    # a template IKE_SA_INIT from another of our engines; the flood varies SPI and source address
    t = IkeEngine(parse_connections({"gw": conn("10.0.0.1", B, "x.example", "b.example", "10.1.0.0/16",
                                                B_NET)}), ALL)
    t.initiate("gw", 0.0)
    template = t.datagrams_to_send(0.0)[0].data
    rng = random.Random(3)
    n, duration = 10_000, 1.0
    replies = 0
    legit = []

    def from_b(now):
        nonlocal replies
        for r in b.datagrams_to_send(now):
            if r.remote[0] == A:
                a.receive_datagram(r.data, (B, r.local[1]), now, (A, r.remote[1]))
            else:
                replies += 1            # to a spoofed source
        while (ev := b.next_event()) is not None:
            if isinstance(ev, ChildSaInstall):
                b.child_sa_installed(ev.handle, True, now)
                from_b(now)

    for i in range(n):
        now = duration * i / n
        spi = rng.randrange(1, 1 << 64).to_bytes(8, "big")
        src = (f"10.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(256)}", 500)
        b.receive_datagram(spi + template[8:], src, now, (B, 500))
        from_b(now)
        if i == n // 2:                           # a real initiator in the middle of the flood
            a.initiate("gw", now)
        while (ev := a.next_event()) is not None:
            legit.append(ev)
            if isinstance(ev, ChildSaInstall):
                a.child_sa_installed(ev.handle, True, now)
        for d in a.datagrams_to_send(now):
            b.receive_datagram(d.data, (A, d.local[1]), now, (B, d.remote[1]))
            from_b(now)
    st = b.stats
    print(f"\nflood: {n} spoofed IKE_SA_INIT in {duration:g} s -> {st['half_open_created']} half-open SAs "
          f"(DH done), {st['cookies_sent']} COOKIEs, {st['cookies_accepted']} cookie accepted; "
          f"real initiator: {[type(e).__name__ for e in legit]}")
    assert [type(e) for e in legit if isinstance(e, (IkeSaUp, ChildSaUp))] == [IkeSaUp, ChildSaUp]
    assert a.stats["cookies_returned"] == 1 and st["cookies_accepted"] == 1
    assert st["half_open_created"] <= 30 + 1                        # threshold, then cookies only
    assert st["cookies_sent"] >= n - 31 - st["cookie_replies_rate_limited"]
    assert replies <= st["half_open_created"] + st["cookies_sent"] + st["error_replies"]
    assert b.half_open_count() <= 30
