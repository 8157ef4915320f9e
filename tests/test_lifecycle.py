"""IKE lifecycle in memory, two real engines, virtual time (RFC 7296 §1.5, §2.4, §2.6, §2.8, §2.18,
§2.25): rekeying both ways and colliding, lifetimes, liveness and restart, INVALID_SPI both ways,
cookies, INITIAL_CONTACT."""
import pytest

from host.ike.config import ConfigError, RetransmitPolicy, parse_connections
from host.ike.constants import ExchangeType, Flag, Notify
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import (
    ChildSaDelete,
    ChildSaInstall,
    ChildSaOutbound,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    IkeWarning,
)
from host.ike.loopback import Network, drain
from host.ike.message import Message, parse_header, parse_plain
from host.ike.payloads import NotifyPayload
from host.ike.task import Outcome, Task
from tests.test_engine import A_NET, ALL, B_NET, A, B, conn, kinds, pair

FAST = RetransmitPolicy(timeout=0.5, base=2.0, tries=3)        # gives up 0.5+1+2+4 = 7.5 s after sending


def up(a, b, net, now=0.0):
    a.strict = b.strict = True
    a.initiate("gw", now)
    net.pump(now)
    return a.ike_sas()[0], b.ike_sas()[0]


def advance(net, now, until):
    """Fire every engine's timers in order up to ``until``, delivering what they send."""
    while True:
        due = [t for e in net.engines.values() if (t := e.get_timer()) is not None and t <= until]
        if not due:
            return until
        now = max(now, min(due))
        net.run_timers(now)
        net.pump(now)


def only_child(sa):
    assert len(sa.children) == 1, sa.children
    return next(iter(sa.children.values()))


def assert_pair(sa_a, sa_b):
    """One Child SA on each side, the two halves of the same pair."""
    ca, cb = only_child(sa_a), only_child(sa_b)
    assert ca.state == cb.state == "installed"
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    return ca, cb


def keys_agree(ev_a, ev_b):
    return (ev_a.spi_in, ev_a.spi_out, ev_a.key_in, ev_a.key_out) == \
        (ev_b.spi_out, ev_b.spi_in, ev_b.key_out, ev_b.key_in)


# ---------------------------------------------------------------- Child SA rekey

@pytest.mark.parametrize("who", ["initiator", "responder"])
@pytest.mark.parametrize("pfs", [False, True])
def test_child_rekey_make_before_break(who, pfs):
    esp = ["aes128gcm16-x25519"] if pfs else ["aes128gcm16"]
    a, b, net = pair(esp=esp)
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = only_child(sa_a), only_child(sa_b)
    n_a, n_b = len(net.events[A]), len(net.events[B])
    side = a if who == "initiator" else b
    assert side.rekey_child((old_a if side is a else old_b).handle, 5.0)
    net.pump(5.0)
    ev_a, ev_b = net.events[A][n_a:], net.events[B][n_b:]
    new_a, new_b = assert_pair(sa_a, sa_b)
    assert {new_a.spi_in, new_a.spi_out}.isdisjoint({old_a.spi_in, old_a.spi_out})
    ia, ib = kinds(ev_a, ChildSaInstall)[0], kinds(ev_b, ChildSaInstall)[0]
    assert keys_agree(ia, ib) and ia.key_in != kinds(net.events[A], ChildSaInstall)[0].key_in
    assert (ia.rekey_of, ib.rekey_of) == (old_a.handle, old_b.handle)
    # make before break: on both sides the old SA goes only after the new one is installed
    for ev, old in ((ev_a, old_a), (ev_b, old_b)):
        kinds_seq = [(type(e).__name__, getattr(e, "handle", None)) for e in ev]
        assert kinds_seq.index(("ChildSaDelete", old.handle)) > kinds_seq.index(("ChildSaUp", ev[0].handle))
        assert [(d.handle, d.replaced) for d in kinds(ev, ChildSaDelete)] == [(old.handle, True)]
    # the responder of the rekey kept sending on the old SA until the Delete, then switched
    resp_ev, resp_inst = (ev_b, ib) if side is a else (ev_a, ia)
    init_inst = ia if side is a else ib
    assert resp_inst.defer_outbound and not init_inst.defer_outbound
    assert kinds(resp_ev, ChildSaOutbound) == [ChildSaOutbound(resp_inst.handle, resp_inst.ike_id,
                                                               resp_inst.rekey_of)]
    assert resp_ev.index(kinds(resp_ev, ChildSaOutbound)[0]) > resp_ev.index(kinds(resp_ev, ChildSaDelete)[0])
    assert not kinds(ev_a, IkeSaDown) and not kinds(ev_b, IkeSaDown)


def test_child_lifetimes_with_jitter_and_no_hard_expiry_while_rekeying_works():
    child = {"rekey_time": 100, "life_time": 130, "rand_time": 20}
    a, b, net = pair(child_extra=child)
    a.jitter.seed(1)
    b.jitter.seed(2)
    sa_a, sa_b = up(a, b, net)
    # both sides schedule a rekey in [rekey_time - rand_time, rekey_time]
    for sa in (sa_a, sa_b):
        h = only_child(sa).handle
        assert 80.0 <= sa.timers[("child_rekey", h)] <= 100.0
        assert sa.timers[("child_expire", h)] == 130.0
    spis = set()
    now = 0.0
    for _ in range(6):                     # ~500 s: several generations
        now = advance(net, now, now + 90.0)
        ca, _cb = assert_pair(sa_a, sa_b)
        spis.add(ca.spi_in)
    assert len(spis) >= 5
    assert a.stats["child_hard_expiries"] == b.stats["child_hard_expiries"] == 0
    assert a.stats["child_rekeys_done"] + b.stats["child_rekeys_done"] >= 5
    assert not kinds(net.events[A], IkeSaDown) and not kinds(net.events[B], IkeSaDown)


def test_simultaneous_child_rekey_lowest_nonce_loses():
    outcomes = set()
    for trial in range(40):                 # random nonces: run until both sides have lost once
        if trial >= 4 and len(outcomes) == 2:
            break
        a, b, net = pair()
        sa_a, sa_b = up(a, b, net)
        ca, cb = only_child(sa_a), only_child(sa_b)
        assert a.rekey_child(ca.handle, 1.0) and b.rekey_child(cb.handle, 1.0)   # both requests in flight
        ta, tb = sa_a.active, sa_b.active
        net.pump(1.0)
        new_a, new_b = assert_pair(sa_a, sa_b)             # one survivor, the same at both ends
        lowest = min(ta.ni, ta.nr, tb.ni, tb.nr)
        loser, winner = (a, b) if lowest in (ta.ni, ta.nr) else (b, a)
        assert loser.stats["child_rekey_collisions_lost"] == 1
        assert winner.stats["child_rekey_collisions_won"] == 1
        # the survivor is the winner's exchange: created by it as initiator
        win_child = new_a if winner is a else new_b
        assert win_child.exchange_initiator
        # each side saw exactly the two new SAs installed, and three deletes (old + redundant + ...)
        for ip in (A, B):
            assert len(kinds(net.events[ip], ChildSaInstall)) == 3
            assert len(kinds(net.events[ip], ChildSaDelete)) == 2
        outcomes.add(winner is a)
        assert not sa_a.queue and not sa_b.queue and sa_a.active is None and sa_b.active is None
    assert outcomes == {True, False}, "both outcomes should occur (random nonces)"


def test_rekey_of_a_child_the_peer_lost_gets_child_sa_not_found_and_is_created_anew():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    old = only_child(sa_a)
    b.ctx.remove_child(sa_b, only_child(sa_b), "lost")        # b forgets it without telling a
    a.rekey_child(old.handle, 1.0)
    net.pump(1.0)
    ca, cb = assert_pair(sa_a, sa_b)
    assert ca.handle != old.handle and ca.rekey_of is None
    assert b.stats["rekey_child_not_found"] == 1


def test_board_soft_expiry_rekeys_hard_expiry_recreates():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    c = only_child(sa_a)
    a.child_sa_expired(c.handle, False, 2.0)
    net.pump(2.0)
    c2, _ = assert_pair(sa_a, sa_b)
    assert c2.rekey_of == c.handle
    a.child_sa_expired(c2.handle, True, 3.0)
    now_ev = drain(a, 3.0)
    assert [d.handle for d in kinds(now_ev, ChildSaDelete)] == [c2.handle]     # stopped at once
    net.events[A] += now_ev
    net.pump(3.0)
    c3, _ = assert_pair(sa_a, sa_b)
    assert c3.handle not in (c.handle, c2.handle) and c3.rekey_of is None


# ---------------------------------------------------------------- IKE SA rekey

@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_ike_rekey_moves_child_sas(who):
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    ca, cb = only_child(sa_a), only_child(sa_b)
    side, sa = (a, sa_a) if who == "initiator" else (b, sa_b)
    old_sk_d = sa_a.keys.sk_d
    assert side.rekey_ike(sa.ike_id, 3.0)
    net.pump(3.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and nb is not sa_b
    assert (na.spi_i, na.spi_r) == (nb.spi_i, nb.spi_r) != (sa_a.spi_i, sa_a.spi_r)
    assert na.keys.sk_d == nb.keys.sk_d != old_sk_d
    assert sa_a.keys is sa_b.keys is sa_a.cipher is None         # the replaced SAs' keys are gone
    # §2.18: the rekey initiator is the original initiator of the new IKE SA
    assert (na.initiator, nb.initiator) == ((True, False) if side is a else (False, True))
    assert (na.my_mid, na.peer_mid, nb.my_mid, nb.peer_mid) == (0, 0, 0, 0)      # §2.18: counters reset
    assert only_child(na) is ca and only_child(nb) is cb and ca.ike is na
    for ip, old, new in ((A, sa_a, na), (B, sa_b, nb)):
        assert kinds(net.events[ip], IkeSaRekeyed) == [
            IkeSaRekeyed(old.ike_id, new.ike_id, "gw", new.initiator, new.chosen.describe())]
        down = kinds(net.events[ip], IkeSaDown)
        assert [(d.ike_id, d.replaced_by) for d in down] == [(old.ike_id, new.ike_id)]
        assert not kinds(net.events[ip], ChildSaDelete)
    # the new IKE SA works: liveness, a Child SA rekey and a new Child SA over it
    alive = []
    a.check_liveness(na.ike_id, 4.0, on_alive=lambda s, t: alive.append(t))
    net.pump(4.0)
    assert alive == [4.0]
    b.rekey_child(cb.handle, 5.0)
    net.pump(5.0)
    assert_pair(na, nb)
    a.create_child(na.ike_id, "net", 6.0)
    net.pump(6.0)
    assert len(na.children) == len(nb.children) == 2


def test_ike_rekey_by_lifetime_then_hard_expiry_never_reached():
    a, b, net = pair(extra={"rekey_time": 50, "over_time": 10, "rand_time": 5})
    sa_a, _ = up(a, b, net)
    assert 45.0 <= sa_a.timers[("ike_rekey",)] <= 50.0 and sa_a.timers[("ike_expire",)] == 60.0
    now = advance(net, 0.0, 200.0)
    assert a.stats["ike_rekeys_done"] + b.stats["ike_rekeys_done"] >= 3
    assert a.stats["ike_hard_expiries"] == b.stats["ike_hard_expiries"] == 0
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert_pair(na, nb)
    assert now == 200.0


def test_simultaneous_ike_rekey_one_survivor_inherits_children():
    outcomes = set()
    for trial in range(40):
        if trial >= 4 and len(outcomes) == 2:
            break
        a, b, net = pair()
        sa_a, sa_b = up(a, b, net)
        ca, cb = only_child(sa_a), only_child(sa_b)
        a.rekey_ike(sa_a.ike_id, 1.0)
        b.rekey_ike(sa_b.ike_id, 1.0)
        ta, tb = sa_a.active, sa_b.active
        net.pump(1.0)
        net.pump(1.0)
        (na,), (nb,) = a.ike_sas(), b.ike_sas()
        assert (na.spi_i, na.spi_r) == (nb.spi_i, nb.spi_r)
        assert only_child(na) is ca and only_child(nb) is cb
        lowest = min(ta.ni, ta.nr, tb.ni, tb.nr)
        a_lost = a.stats["ike_rekey_collisions_lost"] == 1
        assert a_lost == (lowest in (ta.ni, ta.nr))
        assert a_lost != (b.stats["ike_rekey_collisions_lost"] == 1)
        # the survivor was created by the winner's exchange: the winner is its initiator
        assert (na.initiator if not a_lost else nb.initiator)
        outcomes.add(a_lost)
        for ip in (A, B):
            assert len(kinds(net.events[ip], IkeSaRekeyed)) == 1
            assert [d.replaced_by for d in kinds(net.events[ip], IkeSaDown)] == [kinds(net.events[ip],
                                                                                     IkeSaRekeyed)[0].new_ike_id]
    assert outcomes == {True, False}


def test_child_rekey_during_ike_rekey_gets_temporary_failure_then_succeeds():
    a, b, net = pair()
    a.settings.retry_delay = 4.0
    b.settings.retry_delay = 4.0
    sa_a, sa_b = up(a, b, net)
    b.rekey_ike(sa_b.ike_id, 1.0)            # crosses with a's Child SA rekey: §2.25.1/§2.25.2
    a.rekey_child(only_child(sa_a).handle, 1.0)
    net.pump(1.0)
    assert a.stats["child_rekeys_failed"] == 1 and b.stats["ike_rekeys_failed"] == 1
    assert [w.text for w in kinds(net.events[A], IkeWarning)][0].endswith("(TEMPORARY_FAILURE); retrying")
    advance(net, 1.0, 10.0)                  # both retried after 2..4 s, without colliding this time
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and na.spi_i == nb.spi_i
    ca, _ = assert_pair(na, nb)
    assert ca.rekey_of is not None


# ---------------------------------------------------------------- liveness

def test_dpd_checks_only_when_nothing_is_heard_and_esp_counts():
    a, b, net = pair(extra={"dpd_delay": 10})
    sa_a, sa_b = up(a, b, net)
    sent = []
    net.loss = lambda d: sent.append(d) and False
    now = 0.0
    for t in range(1, 61):                   # inbound ESP every second on a's Child SA
        a.esp_received(only_child(sa_a).handle, float(t))
        now = advance(net, now, float(t))
    requests_from_a = [d for d in sent if d.local[0] == A and not parse_header(d.data).flags & Flag.RESPONSE]
    assert requests_from_a == [], "a checked liveness although ESP came in"
    assert a.stats["dpd_checks"] == 0 and b.stats["dpd_checks"] == 6     # b heard nothing: it checked
    now = advance(net, now, 100.0)           # silence: a check every 10 s, all answered
    assert a.stats["dpd_checks"] in (4, 5) and b.stats["liveness_answered"] == a.stats["dpd_checks"]
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]


@pytest.mark.parametrize("action", ["clear", "restart"])
def test_dead_peer_teardown_then_restart_when_it_returns(action):
    a_conn = conn(A, B, "a.example", "b.example", A_NET, B_NET, extra={"dpd_delay": 5, "dpd_action": action})
    a, b, net = pair(a_conn=a_conn, retransmit=FAST)
    sa_a, _ = up(a, b, net)
    dead = [True]
    net.loss = lambda d: dead[0]
    now = advance(net, 0.0, 5.0 + 7.5 - 0.01)
    assert a.ike_sas() == [sa_a]                 # still retransmitting its check
    now = advance(net, now, 12.5)
    down = kinds(net.events[A], IkeSaDown)
    assert len(down) == 1 and down[0].established and "retransmit" in down[0].reason
    assert kinds(net.events[A], ChildSaDelete) and \
        net.events[A].index(kinds(net.events[A], ChildSaDelete)[0]) < net.events[A].index(down[0])
    if action == "clear":
        assert down[0].restart_ike_id is None
        assert advance(net, now, 100.0) and a.ike_sas() == []
        return
    # restart: attempt 1 at once; the peer is still away, so later attempts back off exponentially
    assert down[0].restart_ike_id is not None
    now = advance(net, now, 40.0)
    failed = [d for d in kinds(net.events[A], IkeSaDown) if not d.established]
    assert len(failed) >= 2 and all(d.restart_ike_id for d in failed)
    dead[0] = False                              # b answers again (it kept its old SA: INITIAL_CONTACT)
    now = advance(net, now, 120.0)
    ups = kinds(net.events[A], IkeSaUp)
    assert len(ups) == 2
    assert_pair(a.ike_sas()[0], b.ike_sas()[0])
    assert [d.reason for d in kinds(net.events[B], IkeSaDown)] == ["replaced (INITIAL_CONTACT)"]


def test_keyingtries_limits_restarts():
    a_conn = conn(A, B, "a.example", "b.example", A_NET, B_NET,
                  extra={"dpd_delay": 5, "dpd_action": "restart", "keyingtries": 2})
    a, b, net = pair(a_conn=a_conn, retransmit=FAST)
    up(a, b, net)
    net.loss = lambda d: True
    advance(net, 0.0, 300.0)
    failed = [d for d in kinds(net.events[A], IkeSaDown) if not d.established]
    assert len(failed) == 2 and failed[-1].restart_ike_id is None and a.ike_sas() == []
    assert any("giving up after 2 attempts" in w.text for w in kinds(net.events[A], IkeWarning))


# ---------------------------------------------------------------- INVALID_SPI

def _unprotected(datagram):
    hdr = parse_header(datagram.data)
    payloads, sk = parse_plain(hdr, datagram.data)
    return hdr, payloads, sk


def test_unknown_spi_with_ike_sa_sends_protected_invalid_spi_and_peer_recreates():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = only_child(sa_a), only_child(sa_b)
    # b's board lost the inbound SA of the Child SA: a's ESP arrives with an unknown SPI
    assert b.esp_unknown_spi(old_b.spi_in, (A, 4500), 1.0) == "protected"
    out = b.datagrams_to_send(1.0)
    assert len(out) == 1 and parse_header(out[0].data).exchange == ExchangeType.INFORMATIONAL
    a.receive_datagram(out[0].data, (B, 4500), 1.0, (A, 4500))
    net.pump(1.0)
    assert a.stats["invalid_spi_protected_honoured"] == 1
    ca, cb = assert_pair(sa_a, sa_b)
    assert ca.handle != old_a.handle and cb.handle != old_b.handle
    assert [d.handle for d in kinds(net.events[A], ChildSaDelete)] == [old_a.handle]
    assert [d.handle for d in kinds(net.events[B], ChildSaDelete)] == [old_b.handle]


def test_unprotected_invalid_spi_only_when_enabled_rate_limited_and_well_formed():
    s_off = EngineSettings()
    s_on = EngineSettings(unprotected_invalid_spi=True, invalid_spi_rate=1.0, invalid_spi_burst=2.0,
                          invalid_spi_global_rate=3.0, invalid_spi_global_burst=3.0)
    for s in (s_off, s_on):
        b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL,
                      settings=s)
        sent = [b.esp_unknown_spi(0x1000 + i, ("198.51.100.7", 4500), 0.0, (B, 4500)) for i in range(5)]
        sent += [b.esp_unknown_spi(0x2000, ("198.51.100.8", 4501), 0.0, (B, 4500))]
        out = b.datagrams_to_send(0.0)
        assert b.ike_sas() == [] and b.half_open_count() == 0
        if s is s_off:
            assert sent == [None] * 6 and out == []
            continue
        # per source: the burst of 2; in total: 3
        assert sent == ["unprotected", "unprotected", None, None, None, "unprotected"]
        assert [d.remote for d in out] == [("198.51.100.7", 4500)] * 2 + [("198.51.100.8", 4501)]
        assert all(d.local == (B, 4500) for d in out)
        hdr, payloads, sk = _unprotected(out[0])
        assert sk is None and hdr.exchange == ExchangeType.INFORMATIONAL and hdr.mid == 0
        assert hdr.flags & Flag.INITIATOR and not hdr.flags & Flag.RESPONSE and hdr.spi_r == bytes(8)
        assert [(p.notify_type, p.data) for p in payloads] == [(Notify.INVALID_SPI, b"\0\0\x10\0")]
        assert b.esp_unknown_spi(0x3000, ("198.51.100.7", 4500), 1.0, (B, 4500)) == "unprotected"   # refilled


def _hint(spi, src_spi=b"\x11" * 8):
    return Message(src_spi, bytes(8), ExchangeType.INFORMATIONAL, Flag.INITIATOR, 0,
                   [NotifyPayload(Notify.INVALID_SPI, spi.to_bytes(4, "big"))]).encode()


def test_unprotected_invalid_spi_starts_one_check_changes_nothing_and_is_never_answered():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    c = only_child(sa_a)
    a.receive_datagram(_hint(c.spi_out), ("203.0.113.99", 4500), 1.0, (A, 4500))     # wrong source
    a.receive_datagram(_hint(c.spi_out ^ 1), (B, 4500), 1.0, (A, 4500))              # not our SPI
    assert a.datagrams_to_send(1.0) == []
    for _ in range(5):                                                                 # burst: one check
        a.receive_datagram(_hint(c.spi_out), (B, 4500), 1.0, (A, 4500))
    out = a.datagrams_to_send(1.0)
    assert len(out) == 1 and out[0].remote == sa_a.remote                    # a protected liveness check
    hdr = parse_header(out[0].data)
    assert hdr.spi_i == sa_a.spi_i and hdr.exchange == ExchangeType.INFORMATIONAL
    assert not hdr.flags & Flag.RESPONSE
    assert a.stats["liveness_checks_from_hints"] == 1 and a.stats["invalid_spi_hints_check_running"] == 4
    assert a.stats["invalid_spi_hints_unmatched"] == 2
    b.receive_datagram(out[0].data, (A, 4500), 1.0, (B, 4500))
    net.pump(1.0)
    assert_pair(sa_a, sa_b)                                                   # b is alive: nothing changed
    assert not kinds(net.events[A], ChildSaDelete) and a.ike_sas() == [sa_a]


def test_unprotected_invalid_spi_sends_the_request_in_flight_again_now_on_the_hint_schedule():
    """A request already in flight is the check (§2.4): an unprotected INVALID_SPI sends it again at
    once (it may have gone where the peer no longer is) and moves what is left to the hint
    schedule — once per request, at the hint rate; a live peer answers and nothing changes, a dead
    one is given up the hint schedule after the hint instead of after the request's own."""
    from host.ike import liveness

    def setup():
        a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL,
                      settings=EngineSettings(hint_retransmit=FAST))
        b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL)
        net = Network()
        net.add(A, a)
        net.add(B, b)
        sa_a, sa_b = up(a, b, net)
        assert liveness.request_check(sa_a, 1.0)
        (req,) = a.datagrams_to_send(1.0)                   # lost: the default schedule resends at 5 s
        return a, b, net, sa_a, sa_b, req

    a, b, net, sa_a, sa_b, req = setup()
    c = only_child(sa_a)
    o = sa_a.outstanding
    for _ in range(5):
        a.receive_datagram(_hint(c.spi_out), (B, 4500), 2.0, (A, 4500))
    out = a.datagrams_to_send(2.0)
    assert [d.data for d in out] == [req.data]                          # sent again, once, unchanged
    assert o.policy == FAST and o.next_at == pytest.approx(2.5) and o.hinted
    assert a.stats["liveness_checks_hastened_by_hints"] == 1 and a.stats["invalid_spi_hints_check_running"] == 4
    assert a.stats["liveness_checks_from_hints"] == 0
    for d in out:
        b.receive_datagram(d.data, (A, 4500), 2.0, (B, 4500))
    net.pump(2.0)                                                        # b is alive and answers
    assert sa_a.outstanding is None and a.ike_sas() == [sa_a] and only_child(sa_a) is c
    assert not kinds(net.events[A], IkeSaDown)

    a, b, net, sa_a, sa_b, req = setup()                                 # b lost its state: silent
    net.engines.pop(B)
    spi = only_child(sa_a).spi_out
    a.receive_datagram(_hint(spi), (B, 4500), 2.0, (A, 4500))
    advance(net, 2.0, 2.0 + sum(FAST.delay(k) for k in range(FAST.tries + 1)) - 0.01)
    assert a.ike_sas() == [sa_a]
    advance(net, 2.0, 10.0)
    (down,) = kinds(net.events[A], IkeSaDown)
    assert "after an unprotected INVALID_SPI" in down.reason
    assert [w.text.split(":")[0] for w in kinds(net.events[A], IkeWarning)] == \
        ["unprotected INVALID_SPI from %s for SPI %08x" % (B, spi)]


@pytest.mark.parametrize("action", ["none", "start"])
def test_close_action_when_the_peer_deletes_a_child_sa_then_the_ike_sa(action):
    """swanctl's close_action: a Child SA the peer closed (§1.4.1, not a rekey) is negotiated again
    in the same IKE SA; an IKE SA the peer deleted is initiated anew with those Child SAs."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 child_extra={"close_action": action}))
    sa_a, sa_b = up(a, b, net)
    old = only_child(sa_a)
    b.delete_child(only_child(sa_b).handle, 1.0)
    net.pump(1.0)
    assert kinds(net.events[A], ChildSaDelete)[0].handle == old.handle
    if action == "start":
        ca, _cb = assert_pair(sa_a, sa_b)
        assert ca.handle != old.handle and a.stats["child_sas_reopened"] == 1
    else:
        assert sa_a.children == {} and sa_b.children == {} and a.stats["child_sas_reopened"] == 0
    if action == "start":                                   # a rekey by the peer is not a close
        assert b.rekey_child(only_child(sa_b).handle, 2.0)
        net.pump(2.0)
        assert_pair(sa_a, sa_b)
        assert a.stats["child_sas_reopened"] == 1
    b.delete_ike(sa_b.ike_id, 3.0)
    net.pump(3.0)
    down = kinds(net.events[A], IkeSaDown)[-1]
    assert down.reason == "deleted by peer"
    advance(net, 3.0, 4.0)
    if action == "start":
        assert down.restart_ike_id is not None
        (new_a,), (new_b,) = a.ike_sas(), b.ike_sas()
        assert new_a is not sa_a and new_a.ike_id == down.restart_ike_id
        assert_pair(new_a, new_b)
    else:
        assert down.restart_ike_id is None and a.ike_sas() == [] and b.ike_sas() == []


def test_close_action_does_not_duplicate_what_a_reauthenticating_peer_already_moved():
    """A peer that reauthenticates (RFC 7296 §2.8.3) sets up a new IKE SA with the same Child SA
    first, then deletes the old one: close_action = start must not bring up a third."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 child_extra={"close_action": "start"}))
    sa_a, sa_b = up(a, b, net)
    b.initiate("gw", 1.0)                                   # the peer's make-before-break
    net.pump(1.0)
    assert len(a.ike_sas()) == 2
    b.delete_ike(sa_b.ike_id, 2.0)
    net.pump(2.0)
    advance(net, 2.0, 3.0)
    down = kinds(net.events[A], IkeSaDown)[-1]
    assert down.reason == "deleted by peer" and down.restart_ike_id is None
    (new_a,) = a.ike_sas()
    assert new_a is not sa_a and len(b.ike_sas()) == 1 and a.stats["restarts"] == 0


def test_close_action_waits_for_a_peer_that_reauthenticates_break_before_make():
    """charon 5.9 reauthenticates break-before-make: Delete, then IKE_SA_INIT. close_action waits
    CLOSE_DELAY and, finding the Child SA back, initiates nothing."""
    from host.ike import liveness
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 child_extra={"close_action": "start"}))
    sa_a, sa_b = up(a, b, net)
    b.delete_ike(sa_b.ike_id, 1.0)
    net.pump(1.0)
    assert kinds(net.events[A], IkeSaDown)[-1].restart_ike_id is not None     # scheduled, not sent
    assert a.datagrams_to_send(1.0) == []
    b.initiate("gw", 1.1)
    net.pump(1.1)
    advance(net, 1.1, 1.0 + liveness.CLOSE_DELAY + 0.1)
    assert a.stats["reopen_not_needed"] == 1
    assert len(a.ike_sas()) == 1 and len(b.ike_sas()) == 1 and not a.ike_sas()[0].initiator


def test_reauthentication_make_before_break():
    """§2.8.3: at reauth_time a new IKE SA with the same Child SA comes up (no INITIAL_CONTACT: the
    old one still exists), then the old one is deleted; the peer ends with the new pair only."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 extra={"reauth_time": 10, "rekey_time": 0}))
    sa_a, sa_b = up(a, b, net)
    old_child = only_child(sa_a)
    advance(net, 0.0, 9.9)
    assert a.ike_sas() == [sa_a]
    advance(net, 9.9, 10.5)
    (new_a,), (new_b,) = a.ike_sas(), b.ike_sas()
    assert new_a is not sa_a and new_b is not sa_b and new_a.initiator
    assert not new_b.initial_contact                        # the old SA was still there
    ca, _cb = assert_pair(new_a, new_b)
    downs = kinds(net.events[A], IkeSaDown)
    assert [(d.ike_id, d.reason, d.restart_ike_id) for d in downs] == [(sa_a.ike_id, "reauthenticated", None)]
    # make before break: the new Child SA was up before the old one went
    ups = [i for i, e in enumerate(net.events[A]) if type(e).__name__ == "ChildSaUp" and e.handle == ca.handle]
    dels = [i for i, e in enumerate(net.events[A]) if isinstance(e, ChildSaDelete) and e.handle == old_child.handle]
    assert ups and dels and ups[0] < dels[0]
    assert net.events[A][dels[0]].replaced                  # the board may keep its inbound half a while
    assert a.stats["reauths_started"] == a.stats["reauths_done"] == 1
    advance(net, 10.5, 20.6)                                # and again, from the new one
    assert a.stats["reauths_done"] == 2 and len(a.ike_sas()) == 1 == len(b.ike_sas())


def test_reauthentication_that_fails_keeps_the_old_ike_sa_and_tries_again():
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 extra={"reauth_time": 10, "rekey_time": 0}))
    sa_a, sa_b = up(a, b, net)
    net.accept[B] = False                                   # b's board refuses every new Child SA
    advance(net, 0.0, 10.5)
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert_pair(sa_a, sa_b)
    assert a.stats["reauths_failed"] == 1 and not kinds(net.events[A], ChildSaDelete)
    assert ("ike_reauth",) in sa_a.timers
    net.accept[B] = True
    advance(net, 10.5, 25.0)                                # retried after retry_delay (5-10 s)
    assert a.stats["reauths_done"] == 1 and a.ike_sas() != [sa_a]


def _lost_state_b(**settings):
    """B after a restart: same configuration, no SA."""
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL,
                  settings=EngineSettings(**settings))
    b.strict = True
    return b


def test_a_request_for_an_ike_sa_we_lost_is_answered_with_invalid_ike_spi_at_a_bounded_rate():
    """§2.21.4: same SPIs, exchange and Message ID, unprotected, N(INVALID_IKE_SPI); never an
    answer to a response or to an unprotected message; no state kept."""
    from host.ike import liveness
    a, b, net = pair()
    sa_a, _sa_b = up(a, b, net)
    assert liveness.request_check(sa_a, 1.0)
    req = a.datagrams_to_send(1.0)[0].data
    rh = parse_header(req)
    b2 = _lost_state_b()
    b2.receive_datagram(req, (A, 4500), 1.0, (B, 4500))
    out = b2.datagrams_to_send(1.0)
    assert len(out) == 1 and out[0].remote == (A, 4500) and out[0].local == (B, 4500)
    hdr, payloads, sk = _unprotected(out[0])
    assert sk is None and (hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.mid) == (rh.spi_i, rh.spi_r, rh.exchange, rh.mid)
    assert hdr.flags & Flag.RESPONSE and bool(hdr.flags & Flag.INITIATOR) != bool(rh.flags & Flag.INITIATOR)
    assert [(p.notify_type, p.data) for p in payloads] == [(Notify.INVALID_IKE_SPI, b"")]
    assert len(out[0].data) < len(req)                                   # nothing to amplify
    for _ in range(1000):                                                # a flood from one source
        b2.receive_datagram(req, (A, 4500), 1.0, (B, 4500))
    assert len(b2.datagrams_to_send(1.0)) == 2                          # burst 3 in all
    b2.receive_datagram(req, ("198.51.100.9", 4500), 1.0, (B, 4500))    # another source has its own
    assert len(b2.datagrams_to_send(1.0)) == 1
    b2.receive_datagram(req, (A, 4500), 3.0, (B, 4500))                 # 1/s refills
    assert len(b2.datagrams_to_send(3.0)) == 1
    b3 = _lost_state_b()
    b3.receive_datagram(out[0].data, (A, 4500), 5.0, (B, 4500))         # a response: never answered
    plain = Message(rh.spi_i, rh.spi_r, ExchangeType.CREATE_CHILD_SA, rh.flags, 1, []).encode()
    b3.receive_datagram(plain, (A, 4500), 5.0, (B, 4500))               # unprotected: not answered
    assert b3.datagrams_to_send(5.0) == []
    off = _lost_state_b(invalid_ike_spi=False)
    off.receive_datagram(req, (A, 4500), 5.0, (B, 4500))
    assert off.datagrams_to_send(5.0) == [] and off.stats["unknown_spi"] == 1
    for e in (b2, b3, off):
        assert e.ike_sas() == [] and e.half_open_count() == 0


def test_invalid_ike_spi_hastens_our_check_once_and_changes_nothing_while_the_peer_lives():
    """§2.21.4: "MUST NOT respond and MUST NOT change the state of any existing SAs" — it only
    moves the request in flight (the liveness check) to the hint schedule, once, and a live peer
    answers it."""
    from host.ike import liveness
    a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL,
                  settings=EngineSettings(hint_retransmit=FAST))
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL)
    net = Network()
    net.add(A, a)
    net.add(B, b)
    sa_a, sa_b = up(a, b, net)
    ca, cb = assert_pair(sa_a, sa_b)
    assert liveness.request_check(sa_a, 1.0)
    req = a.datagrams_to_send(1.0)[0].data
    o = sa_a.outstanding
    assert o.next_at == 5.0                                              # the default schedule: 4 s
    b2 = _lost_state_b()                                                 # a forger builds the answer
    b2.receive_datagram(req, (A, 4500), 1.0, (B, 4500))
    answer = b2.datagrams_to_send(1.0)[0].data
    a.receive_datagram(answer, ("203.0.113.99", 500), 1.1, (A, 4500))    # not from the peer
    assert (o.next_at, o.hinted) == (5.0, False) and a.stats["invalid_ike_spi_unmatched"] == 1
    for _ in range(100):
        a.receive_datagram(answer, (B, 4500), 1.1, (A, 4500))
    assert a.datagrams_to_send(1.1) == []                                # never answered
    assert o.hinted and o.next_at == pytest.approx(1.6) and o.policy == FAST
    assert a.stats["liveness_checks_from_ike_spi_hints"] == 1 and a.stats["invalid_ike_spi_check_running"] == 99
    assert sa_a.outstanding is o and a.ike_sas() == [sa_a] and only_child(sa_a) is ca
    advance(net, 1.1, 1.6)                                               # the retransmission reaches b
    assert sa_a.outstanding is None and a.stats["retransmits"] == 1
    assert a.ike_sas() == [sa_a] and assert_pair(sa_a, sa_b) == (ca, cb)
    assert not kinds(net.events[A], IkeSaDown) and not kinds(net.events[A], ChildSaDelete)
    # an INVALID_IKE_SPI that answers no request of ours is just an unexpected response
    a.receive_datagram(answer, (B, 4500), 2.0, (A, 4500))
    assert a.stats["unexpected_response"] == 1 and a.datagrams_to_send(2.0) == []


# ---------------------------------------------------------------- cookies

def _init_request(a):
    a.initiate("gw", 0.0)
    return a.datagrams_to_send(0.0)[-1].data


def test_cookie_demanded_past_threshold_and_checked():
    s = EngineSettings(cookie_threshold=2, cookie_threshold_ip=0, cookie_secret_lifetime=10.0)
    a, b, net = pair(settings_b=s)
    a.strict = b.strict = True
    reqs = [_init_request(a) for _ in range(4)]
    for r in reqs[:2]:
        b.receive_datagram(r, (A, 500), 0.0, (B, 500))
    assert b.half_open_count() == 2
    b.datagrams_to_send(0.0)
    b.receive_datagram(reqs[2], (A, 500), 0.0, (B, 500))
    (ans,) = b.datagrams_to_send(0.0)
    hdr, payloads, _ = _unprotected(ans)
    assert hdr.flags & Flag.RESPONSE and hdr.spi_r == bytes(8) and payloads[0].notify_type == Notify.COOKIE
    assert b.half_open_count() == 2 and b.stats["cookies_sent"] == 1       # no state, no DH
    # a returns it (first payload) and is admitted; a forged or foreign cookie is not
    a.receive_datagram(ans.data, (B, 500), 0.0, (A, 500))
    again = [d for d in a.datagrams_to_send(0.0) if parse_header(d.data).spi_i == hdr.spi_i][0].data
    assert _unprotected(type("D", (), {"data": again}))[1][0].notify_type == Notify.COOKIE
    wrong_src = again
    b.receive_datagram(wrong_src, ("203.0.113.5", 500), 0.0, (B, 500))     # cookie bound to IPi
    assert b.stats["cookies_invalid"] == 1 and b.half_open_count() == 2
    b.datagrams_to_send(0.0)
    b.receive_datagram(again, (A, 500), 0.0, (B, 500))
    assert b.stats["cookies_accepted"] == 1 and b.half_open_count() == 3
    # a cookie made under the previous secret is still good, two secrets ago it is not
    jar = b.ctx.cookies
    ni, spi = b"N" * 32, b"S" * 8
    c0 = jar.make(ni, A, spi, 1.0)
    assert jar.check(c0, ni, A, spi, 12.0) and not jar.check(c0, ni, A, spi, 23.0)
    assert not jar.check(c0, ni, A, b"T" * 8, 1.0) and not jar.check(c0[:-1] + b"x", ni, A, spi, 1.0)


def test_cookie_threshold_per_source():
    s = EngineSettings(cookie_threshold=0, cookie_threshold_ip=2)
    a, b, net = pair(settings_b=s)
    for _ in range(3):
        b.receive_datagram(_init_request(a), (A, 500), 0.0, (B, 500))
    assert b.half_open_count() == 2 and b.stats["cookies_sent"] == 1


# ---------------------------------------------------------------- INITIAL_CONTACT

def test_initial_contact_deletes_only_sas_between_the_same_identities():
    b_conns = parse_connections({
        "gw": conn(B, A, "b.example", "a.example", B_NET, A_NET),
        "other": conn(B, "192.0.2.3", "b.example", "c.example", B_NET, "192.0.2.0/24"),
    })
    b = IkeEngine(b_conns, ALL)
    a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL)
    c = IkeEngine(parse_connections({"gw": conn("192.0.2.3", B, "c.example", "b.example", "192.0.2.0/24",
                                                B_NET)}), ALL)
    net = Network()
    for ip, e in ((A, a), (B, b), ("192.0.2.3", c)):
        net.add(ip, e)
    a.initiate("gw", 0.0)
    c.initiate("gw", 0.0)
    net.pump(0.0)
    b.initiate("gw", 0.5)                      # b's own IKE SA towards a (b sends no INITIAL_CONTACT)
    net.pump(0.5)
    assert len(b.ike_sas()) == 3
    a2 = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL)
    net.add(A, a2)                             # a restarts with no memory
    a2.initiate("gw", 1.0)
    net.pump(1.0)
    gone = [d for d in kinds(net.events[B], IkeSaDown)]
    assert len(gone) == 2 and all(d.reason == "replaced (INITIAL_CONTACT)" for d in gone)
    left = b.ike_sas()
    assert len(left) == 2 and {str(sa.remote_id) for sa in left} == {"a.example", "c.example"}
    assert all(d.restart_ike_id is None for d in gone)


# ---------------------------------------------------------------- configuration

def test_lifetime_configuration():
    base = conn(A, B, "a.example", "b.example", A_NET, B_NET)
    c = parse_connections({"gw": base})["gw"]
    assert (c.rekey_time, c.over_time, c.rand_time) == (14400.0, 1440.0, 1440.0)
    ch = c.children["net"]
    assert (ch.rekey_time, ch.life_time, ch.rand_time) == (3600.0, 3960.0, 360.0)
    off = parse_connections({"gw": dict(base, rekey_time=0, children={"net": dict(base["children"]["net"],
                                                                                    rekey_time=0)})})["gw"]
    assert off.rekey_time == 0 and off.children["net"].rekey_time == 0 and off.children["net"].life_time == 0
    for bad, key in (({"rand_time": 4000}, "connections.gw.children.net.rand_time"),
                     ({"life_time": 100, "rekey_time": 100}, "connections.gw.children.net.life_time"),
                     ({"rekey_time": -1}, "connections.gw.children.net.rekey_time")):
        with pytest.raises(ConfigError) as e:
            parse_connections({"gw": dict(base, children={"net": dict(base["children"]["net"], **bad)})})
        assert e.value.key == key
    with pytest.raises(ConfigError) as e:
        parse_connections({"gw": dict(base, keyingtries=-1)})
    assert e.value.key == "connections.gw.keyingtries"


def test_unprotected_informational_without_invalid_spi_or_as_response_is_ignored():
    a, b, net = pair()
    up(a, b, net)
    plain = Message(b"\x22" * 8, bytes(8), ExchangeType.INFORMATIONAL, Flag.INITIATOR | Flag.RESPONSE, 0,
                    [NotifyPayload(Notify.INVALID_SPI, b"\0\0\1\0")]).encode()
    a.receive_datagram(plain, (B, 4500), 1.0, (A, 4500))
    other = Message(b"\x22" * 8, bytes(8), ExchangeType.INFORMATIONAL, Flag.INITIATOR, 0,
                    [NotifyPayload(Notify.INITIAL_CONTACT)]).encode()
    a.receive_datagram(other, (B, 4500), 1.0, (A, 4500))
    assert a.datagrams_to_send(1.0) == [] and a.stats["unprotected_informational_ignored"] == 1
    assert a.stats["unknown_spi"] == 1 and len(a.ike_sas()) == 1


def test_initial_contact_keeps_an_sa_that_came_up_while_the_new_one_was_set_up():
    """Both ends start at once: each sends INITIAL_CONTACT; deleting the other's fresh IKE SA on one
    side only would leave the far side with a dead one. Only SAs up before this one began go."""
    a, b, net = pair()
    up(a, b, net)                                          # the stale one (a is about to forget it)
    a2 = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL)
    net.add(A, a2)
    a2.initiate("gw", 1.0)
    (init,) = a2.datagrams_to_send(1.0)
    b.receive_datagram(init.data, (A, 500), 1.0, (B, 500))
    for d in b.datagrams_to_send(1.0):
        a2.receive_datagram(d.data, (B, 500), 1.0, (A, 500))
    held = a2.datagrams_to_send(1.0)                       # a2's IKE_AUTH (INITIAL_CONTACT), delayed
    b.initiate("gw", 1.5)                                  # meanwhile b brings up its own towards a2
    net.pump(1.5)
    for d in held:
        b.receive_datagram(d.data, (A, 4500), 2.0, (B, 4500))
    net.pump(2.0)
    downs = kinds(net.events[B], IkeSaDown)
    assert [d.ike_id for d in downs] == [1] and downs[0].reason == "replaced (INITIAL_CONTACT)"
    assert len(b.ike_sas()) == len(a2.ike_sas()) == 2     # consistent at both ends
    assert {(s.spi_i, s.spi_r) for s in b.ike_sas()} == {(s.spi_i, s.spi_r) for s in a2.ike_sas()}


def test_engine_settings_from_the_daemon_config():
    from host.ike.config import parse_settings
    s, r = parse_settings({"unprotected_invalid_spi": True, "cookie_threshold": 10, "invalid_spi_rate": 2,
                           "retransmit": {"timeout": 1.0, "tries": 3},
                           "hint_retransmit": {"timeout": 0.5, "base": 2.0, "tries": 3}})
    assert s.unprotected_invalid_spi and s.cookie_threshold == 10 and s.invalid_spi_rate == 2.0
    assert (r.timeout, r.base, r.tries) == (1.0, 1.8, 3) and s.hint_retransmit.timeout == 0.5
    assert parse_settings(None)[0] == EngineSettings()
    for bad, key in (({"cookie_treshold": 3}, "ike.cookie_treshold"),
                     ({"unprotected_invalid_spi": "yes"}, "ike.unprotected_invalid_spi"),
                     ({"hint_rate": -1}, "ike.hint_rate"),
                     ({"hint_retransmit": {"base": 0.5}}, "ike.hint_retransmit.base")):
        with pytest.raises(ConfigError) as e:
            parse_settings(bad)
        assert e.value.key == key


class RefuseRekeys(Task):
    def on_request(self, sa, msg, reply, now):
        reply([NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], now)
        return Outcome.DONE


def test_ike_hard_expiry_deletes_and_restarts_when_the_peer_refuses_every_rekey():
    a_conn = conn(A, B, "a.example", "b.example", A_NET, B_NET,
                  extra={"rekey_time": 50, "over_time": 10, "rand_time": 0, "dpd_action": "restart"})
    b_conn = conn(B, A, "b.example", "a.example", B_NET, A_NET, extra={"rekey_time": 0})
    a, b, net = pair(a_conn=a_conn, b_conn=b_conn)
    a.settings.retry_delay = 4.0
    b.responders[ExchangeType.CREATE_CHILD_SA] = lambda msg: RefuseRekeys()    # here: a's IKE rekeys
    sa_a, _ = up(a, b, net)
    advance(net, 0.0, 59.9)
    assert a.ike_sas() == [sa_a] and a.stats["ike_rekeys_failed"] >= 2      # retried, never at once
    advance(net, 59.9, 61.0)
    down = [d for d in kinds(net.events[A], IkeSaDown) if d.ike_id == sa_a.ike_id]
    assert down and down[0].reason == "IKE SA lifetime expired" and down[0].restart_ike_id
    assert [d.reason for d in kinds(net.events[B], IkeSaDown)] == ["deleted by peer"]
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na.ike_id == down[0].restart_ike_id
    assert_pair(na, nb)


def test_create_child_refused_during_ike_rekey_is_retried_on_the_new_ike_sa():
    a, b, net = pair()
    a.settings.retry_delay = 8.0                  # a retries after 4..8 s, b after 1..2 s
    b.settings.retry_delay = 2.0
    sa_a, sa_b = up(a, b, net)
    b.rekey_ike(sa_b.ike_id, 1.0)
    a.create_child(sa_a.ike_id, "net", 1.0)        # crosses b's IKE rekey: both TEMPORARY_FAILURE (§2.25)
    net.pump(1.0)
    assert b.stats["ike_rekeys_failed"] == 1 and [k for k in sa_a.timers if k[0] == "task"]
    advance(net, 1.0, 3.5)                         # b's IKE rekey went through; a's retry moved with it
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and len(na.children) == 1 and [k for k in na.timers if k[0] == "task"]
    advance(net, 3.5, 10.0)
    assert len(na.children) == len(nb.children) == 2
    assert not [e for e in net.events[A] if type(e).__name__ == "ChildSaFailed"]


@pytest.mark.parametrize("seed", range(6))
def test_rekeying_from_both_sides_under_loss_and_reordering_converges(seed):
    """Both gateways rekey Child SAs every 2..5 s and the IKE SA every 7..13 s for 400 s (virtual)
    while 5 % of IKE messages are lost and the rest delayed by 10..60 ms (so exchanges cross,
    collide, time out and retry), ESP flowing both ways. Afterwards, once idle: exactly one IKE
    SA and one Child SA, the same at both ends, and ESP still decrypts."""
    import random

    from tests.test_seed import Sim
    rng = random.Random(seed)
    lt = {"rekey_time": 5, "life_time": 30, "rand_time": 3}
    ike = {"rekey_time": 13, "over_time": 30, "rand_time": 6, "dpd_delay": 10}

    def gw(ip):
        if ip == A:
            c = conn(A, B, "a.example", "b.example", A_NET, B_NET, child_extra=lt,
                     extra=dict(ike, dpd_action="restart", start_action="start"))
        else:
            c = conn(B, A, "b.example", "a.example", B_NET, A_NET, child_extra=lt, extra=ike)
        e = IkeEngine(parse_connections({"gw": c}), ALL, settings=EngineSettings(retry_delay=3.0),
                      retransmit=RetransmitPolicy(timeout=0.5, base=2.0, tries=4))
        e.strict = True
        e.jitter.seed(rng.random())
        return e

    sim = Sim()
    sim.add(A, gw(A))
    sim.add(B, gw(B))
    lossy = [True]
    deliver, at = sim.deliver_ike, sim.at

    def lossy_deliver(data, src, dst):
        if not (lossy[0] and rng.random() < 0.05):
            deliver(data, src, dst)

    def jittered_at(t, fn, *args):
        at(t + (rng.random() * 0.05 if fn is lossy_deliver and lossy[0] else 0.0), fn, *args)
    sim.deliver_ike, sim.at = lossy_deliver, jittered_at
    sim.engines[A].start(0.0)
    sim.flush(A)
    sim.at(1.0, sim.esp_tick, A, B)
    sim.at(1.05, sim.esp_tick, B, A)
    sim.run(400.0)
    lossy[0] = False
    sim.run(460.0)
    a, b = sim.engines[A], sim.engines[B]

    def idle(e):
        return all(s.active is None and not s.queue and s.rekey_collision is None and s.successor is None and
                   all(c.state == "installed" and c.rekey_state is None for c in s.children.values())
                   for s in e.ike_sas())
    t = 460.0
    while not (idle(a) and idle(b)) and t < 520.0:
        t += 0.01
        sim.run(t)
    (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert_pair(sa_a, sa_b)
    st = a.stats + b.stats
    assert st["child_rekeys_done"] > 100 and st["ike_rekeys_done"] > 30
    assert not [e for _t, e in sim.events[A] if isinstance(e, IkeSaDown) and e.replaced_by is None]
    before = sim.unknown_reports
    sim.run(t + 5.0)
    assert sim.unknown_reports == before                      # every ESP packet found its SA
