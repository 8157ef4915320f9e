"""Rekeys and reauthentications that fail (RFC 7296 §1.3, §2.8, §2.8.3, §2.18, §2.25): a refused
rekey keeps the old SA and is retried after retry_delay, never at once; INVALID_KE_PAYLOAD on an
IKE SA rekey retries once with the group the peer names; a rekey whose new SA a board refuses
leaves the old one working at both ends; the loser of a simultaneous IKE SA rekey, having seen
the winner use its new IKE SA, brings its own redundant one up only to delete it; a
reauthentication whose new IKE SA never comes up keeps the old one and tries again. Two real
engines in memory on virtual time."""
import pytest

from host.ike.config import ConfigError, RetransmitPolicy, parse_connections
from host.ike.constants import ExchangeType, Flag, Notify
from host.ike.events import ChildSaDelete, ChildSaInstall, IkeSaDown, IkeSaRekeyed, IkeWarning
from host.ike.message import parse_header
from host.ike.payloads import NotifyPayload
from host.ike.task import Outcome, Task
from tests.test_engine import A_NET, B_NET, A, B, conn, kinds, pair
from tests.test_lifecycle import advance, assert_pair, only_child, up


class Refuse(Task):
    """A CREATE_CHILD_SA responder that answers every request with one error notification."""

    def __init__(self, notify, data=b""):
        super().__init__()
        self.notify, self.data = notify, data

    def on_request(self, sa, msg, reply, now):
        reply([NotifyPayload(self.notify, self.data)], now)
        return Outcome.DONE


def refuse_with(notify, data=b""):
    return lambda msg: Refuse(notify, data)


def test_refused_child_rekey_keeps_the_old_sa_and_retries_after_retry_delay():
    a, b, net = pair()
    a.settings.retry_delay = 8.0
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = assert_pair(sa_a, sa_b)
    normal = b.responders[ExchangeType.CREATE_CHILD_SA]
    b.responders[ExchangeType.CREATE_CHILD_SA] = refuse_with(Notify.NO_PROPOSAL_CHOSEN)
    assert a.rekey_child(old_a.handle, 1.0)
    net.pump(1.0)
    assert a.stats["child_rekeys_failed"] == 1 and old_a.rekey_state is None
    assert any("rekey of Child SA" in w.text and "NO_PROPOSAL_CHOSEN" in w.text
               for w in kinds(net.events[A], IkeWarning))
    assert assert_pair(sa_a, sa_b) == (old_a, old_b)            # nothing changed at either end
    retry = sa_a.timers[("child_rekey", old_a.handle)]
    assert 1.0 + 4.0 <= retry <= 1.0 + 8.0                      # §2.25: 0.5..1 x retry_delay, not at once
    b.responders[ExchangeType.CREATE_CHILD_SA] = normal
    advance(net, 1.0, retry - 0.01)
    assert only_child(sa_a) is old_a                            # not before its time
    advance(net, retry - 0.01, retry + 1.0)
    new_a, new_b = assert_pair(sa_a, sa_b)
    assert new_a.rekey_of == old_a.handle and a.stats["child_rekeys_done"] == 1


def test_child_rekey_whose_new_sa_our_board_refuses_is_deleted_at_the_peer_and_retried():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = assert_pair(sa_a, sa_b)
    net.accept[A] = False                                       # our board is full
    a.rekey_child(old_a.handle, 1.0)
    net.pump(1.0)
    assert a.stats["child_rekeys_failed"] == 1
    assert assert_pair(sa_a, sa_b) == (old_a, old_b)            # b dropped the SA it had installed
    dels_b = kinds(net.events[B], ChildSaDelete)
    assert len(dels_b) == 1 and dels_b[0].handle != old_b.handle and not dels_b[0].replaced
    assert ("child_rekey", old_a.handle) in sa_a.timers


def test_child_rekey_whose_new_sa_the_peers_board_refuses_keeps_the_old_sa_at_both_ends():
    a, b, net = pair()
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = assert_pair(sa_a, sa_b)
    net.accept[B] = None                                        # b's board answers by hand
    a.rekey_child(old_a.handle, 1.0)
    net.pump(1.0)
    (inst,) = [e for e in kinds(net.events[B], ChildSaInstall) if e.rekey_of == old_b.handle]
    b.child_sa_installed(inst.handle, False, 1.0, "full")
    net.accept[B] = True
    net.pump(1.0)
    assert assert_pair(sa_a, sa_b) == (old_a, old_b)
    assert old_b.rekey_state is None and old_a.rekey_state is None
    assert a.stats["child_rekeys_failed"] == 1
    assert any("TEMPORARY_FAILURE" in w.text for w in kinds(net.events[A], IkeWarning))


def test_ike_rekey_answered_invalid_ke_is_retried_once_with_the_peers_group():
    """§1.3.2/§2.18: the peer (reconfigured to ECP-256 only) answers our X25519 KE with
    INVALID_KE_PAYLOAD naming group 19; we retry with it and the Child SA moves to the new IKE SA."""
    both = "aes256gcm16-prfsha256-x25519-ecp256"
    a, b, net = pair(ike=both)
    sa_a, sa_b = up(a, b, net)
    assert sa_a.dh_group == 31
    child = only_child(sa_a)
    sa_b.conn = parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET,
                                              ike="aes256gcm16-prfsha256-ecp256")})["gw"]
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and na.dh_group == nb.dh_group == 19
    assert a.stats["ike_rekeys_done"] == 1 and a.stats["ike_rekeys_failed"] == 0
    assert only_child(na) is child
    assert [(e.old_ike_id, e.new_ike_id) for e in kinds(net.events[A], IkeSaRekeyed)] == [(sa_a.ike_id, na.ike_id)]


def test_ike_rekey_invalid_ke_for_a_group_we_do_not_allow_fails_and_retries_later():
    """A peer that asks for a group none of our proposals has (MODP-2048) gets no second try now."""
    a, b, net = pair(ike="aes256gcm16-prfsha256-x25519")
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    b.responders[ExchangeType.CREATE_CHILD_SA] = refuse_with(Notify.INVALID_KE_PAYLOAD, (14).to_bytes(2, "big"))
    a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert a.stats["ike_rekeys_failed"] == 1
    assert any("INVALID_KE_PAYLOAD" in w.text for w in kinds(net.events[A], IkeWarning))
    assert 1.0 + 3.0 <= sa_a.timers[("ike_rekey",)] <= 1.0 + 6.0
    assert len(a.ctx.by_spi) == 1                               # the new SA's SPI was released


def test_ike_rekey_refused_while_a_child_exchange_runs_then_done():
    """§2.25.1: an IKE SA rekey crossing a Child SA exchange gets TEMPORARY_FAILURE; it is tried
    again later and succeeds."""
    a, b, net = pair()
    a.settings.retry_delay = b.settings.retry_delay = 4.0
    sa_a, sa_b = up(a, b, net)
    b.create_child(sa_b.ike_id, "net", 1.0)       # b's CREATE_CHILD_SA in flight ...
    a.rekey_ike(sa_a.ike_id, 1.0)                 # ... crosses a's IKE rekey: both refused
    net.pump(1.0)
    assert a.stats["ike_rekeys_failed"] == 1 and a.ike_sas() == [sa_a]
    advance(net, 1.0, 12.0)                       # both retried after 2..4 s
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and len(na.children) == len(nb.children) == 2


def _send(src, dst, src_ip, dst_ip, now, keep=None):
    """Deliver ``src``'s queued datagrams to ``dst``; those ``keep(d)`` selects are returned instead."""
    held = []
    for d in src.datagrams_to_send(now):
        if keep is not None and keep(d):
            held.append(d)
        else:
            dst.receive_datagram(d.data, (src_ip, d.local[1]), now, (dst_ip, d.remote[1]))
    return held


def _is_response(d):
    h = parse_header(d.data)
    return bool(h.flags & Flag.RESPONSE) and h.exchange == ExchangeType.CREATE_CHILD_SA


def test_simultaneous_ike_rekey_loser_that_saw_the_winner_use_its_sa_closes_its_own():
    """Both rekey the IKE SA at once. b's answer to a's request is held back; b's own exchange
    completes, b wins (it holds the lowest nonce... or not: tried until it does) and at once uses
    its new IKE SA. a, seeing an authentic request there, takes the Child SA over to it
    (peer_resolved); when b's held answer arrives, a brings its own new IKE SA up only to delete
    it as redundant (§2.8.2). Both end with the same single IKE SA and Child SA."""
    for _trial in range(40):
        a, b, net = pair()
        sa_a, sa_b = up(a, b, net)
        child_a = only_child(sa_a)
        a.rekey_ike(sa_a.ike_id, 1.0)
        b.rekey_ike(sa_b.ike_id, 1.0)
        req_a = a.datagrams_to_send(1.0)
        for d in req_a:                                         # a's request reaches b; b answers, held
            b.receive_datagram(d.data, (A, d.local[1]), 1.0, (B, d.remote[1]))
        held = _send(b, a, B, A, 1.0, keep=_is_response)       # b's request reaches a
        assert len(held) == 1
        _send(a, b, A, B, 1.0)                                  # a's answer completes b's exchange
        if b.stats["ike_rekey_collisions_won"] == 1:
            break
    else:
        raise AssertionError("b never won in 40 trials (random nonces)")
    nb = sa_b.successor
    b.check_liveness(nb.ike_id, 1.1)                            # b uses its new IKE SA at once
    for d in b.datagrams_to_send(1.1):
        if parse_header(d.data).spi_i == nb.spi_i:
            a.receive_datagram(d.data, (B, d.local[1]), 1.1, (A, d.remote[1]))
    assert a.stats["ike_rekey_collisions_peer_won"] == 1
    assert sa_a.successor is not None and only_child(sa_a.successor) is child_a
    for d in held:                                              # b's answer to a's rekey, late
        a.receive_datagram(d.data, (B, d.local[1]), 1.2, (A, d.remote[1]))
    assert a.stats["ike_rekey_collisions_lost"] == 1
    net.pump(1.2)
    advance(net, 1.2, 40.0)
    (fa,), (fb,) = a.ike_sas(), b.ike_sas()
    assert (fa.spi_i, fa.spi_r) == (fb.spi_i, fb.spi_r) == (nb.spi_i, nb.spi_r)
    assert_pair(fa, fb)
    assert not [d for d in kinds(net.events[A], IkeSaDown) if d.reason != "rekeyed" and "redundant" not in d.reason]


def test_reauthentication_whose_new_ike_sa_never_comes_up_keeps_the_old_and_retries():
    """§2.8.3: the new IKE SA's IKE_SA_INIT goes unanswered (lost) until its retransmissions
    give up; the old IKE SA and its Child SA stay, and reauthentication is tried again after
    retry_delay, then succeeds."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 extra={"reauth_time": 10, "rekey_time": 0}),
                     retransmit=RetransmitPolicy(timeout=0.5, base=2.0, tries=2))
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    child = only_child(sa_a)
    net.loss = lambda d: parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT
    advance(net, 0.0, 14.0)                                     # 10 + 0.5 + 1 + 2: given up at 13.5
    assert a.stats["reauths_started"] == 1 and a.stats["reauths_failed"] == 1
    assert a.ike_sas() == [sa_a] and only_child(sa_a) is child and sa_a.reauth_by is None
    retry = sa_a.timers[("ike_reauth",)]
    assert 13.5 + 3.0 <= retry <= 13.5 + 6.0
    assert not kinds(net.events[A], ChildSaDelete)
    net.loss = None
    advance(net, 14.0, retry + 1.0)
    assert a.stats["reauths_done"] == 1
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a
    assert_pair(na, nb)


def test_reauthentication_needs_a_peer_address():
    """A responder-only connection (remote %any) could not set up the new IKE SA: refused when
    the configuration is read, not found out at reauth_time."""
    b_conn = conn(B, "%any", "b.example", "a.example", B_NET, A_NET, extra={"reauth_time": 5, "rekey_time": 0})
    with pytest.raises(ConfigError, match="reauthentication needs a specific remote address"):
        parse_connections({"gw": b_conn})


# ---- IKE SA rekeys the responder refuses or the initiator cannot accept (§1.3.2, §2.18) ----

def _tamper_rekey_request(monkeypatch, change):
    """a's next IKE SA rekey requests go out as ``change(payloads)`` makes them."""
    from host.ike import rekey
    build = rekey.RekeyIkeTask.build

    def tampered(self, sa, now):
        out = build(self, sa, now)
        return change(out) if out is not None and not self.ke_retried else out
    monkeypatch.setattr(rekey.RekeyIkeTask, "build", tampered)


def _refused_ike_rekey(a, b, net, sa_a, sa_b, notify_name):
    """What a refused IKE SA rekey leaves: the old IKE SA at both ends, a's warning naming the
    refusal, a retry after 0.5..1 x retry_delay (§2.25: not at once)."""
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert a.stats["ike_rekeys_failed"] == 1 and a.stats["ike_rekeys_done"] == 0
    assert any(notify_name in w.text for w in kinds(net.events[A], IkeWarning)), net.events[A]
    assert 1.0 + 3.0 <= sa_a.timers[("ike_rekey",)] <= 1.0 + 6.0
    assert len(a.ctx.by_spi) == len(b.ctx.by_spi) == 1          # no half-made IKE SA kept at either end


def test_ike_rekey_with_a_key_share_that_is_no_point_is_refused_with_invalid_syntax(monkeypatch):
    from host.ike.payloads import KePayload
    a, b, net = pair()
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    _tamper_rekey_request(monkeypatch, lambda ps: [KePayload(p.group, p.data[:31]) if isinstance(p, KePayload)
                                                   else p for p in ps])
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    _refused_ike_rekey(a, b, net, sa_a, sa_b, "INVALID_SYNTAX")
    monkeypatch.undo()
    advance(net, 1.0, 8.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and a.stats["ike_rekeys_done"] == 1
    assert_pair(na, nb)


def test_ike_rekey_offering_no_key_exchange_is_refused(monkeypatch):
    """§2.18: an IKE SA rekey must carry a Diffie-Hellman exchange; a proposal without one is
    NO_PROPOSAL_CHOSEN."""
    from host.ike.constants import TransformType
    from host.ike.payloads import Proposal, SaPayload

    def no_dh(ps):
        out = []
        for p in ps:
            if isinstance(p, SaPayload):
                p = SaPayload([Proposal(x.num, x.protocol, x.spi, [t for t in x.transforms
                                                                  if t.ttype != TransformType.DH])
                               for x in p.proposals])
            out.append(p)
        return out
    a, b, net = pair()
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    _tamper_rekey_request(monkeypatch, no_dh)
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    _refused_ike_rekey(a, b, net, sa_a, sa_b, "NO_PROPOSAL_CHOSEN")


def test_ike_rekey_response_with_a_key_share_of_another_group_is_not_accepted():
    """The peer answers with a KE payload of a group we did not send: the answer cannot make
    the new IKE SA's keys; the old one stays (its Child SA too) and the rekey is tried again
    later."""
    from host.ike.payloads import KePayload
    a, b, net = pair()
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    normal = b.responders[ExchangeType.CREATE_CHILD_SA]

    def answering_with_group_19(msg):
        task = normal(msg)
        on_request = task.on_request

        def tampered(sa, m, reply, now):
            return on_request(sa, m, lambda ps, t: reply([KePayload(19, p.data) if isinstance(p, KePayload) else p
                                                          for p in ps], t), now)
        task.on_request = tampered
        return task
    b.responders[ExchangeType.CREATE_CHILD_SA] = answering_with_group_19
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    assert a.stats["ike_rekeys_failed"] == 1 and a.stats["ike_rekeys_done"] == 0
    assert sa_a in a.ike_sas() and only_child(sa_a) is not None
    assert any("unacceptable IKE SA rekey response" in w.text for w in kinds(net.events[A], IkeWarning))
    assert 1.0 + 3.0 <= sa_a.timers[("ike_rekey",)] <= 1.0 + 6.0


def test_an_ike_sa_whose_reauthentication_keeps_failing_ends_at_its_hard_lifetime():
    """§2.8: reauth_time + over_time is the IKE SA's hard end when it is reauthenticated, not
    rekeyed; a reauthentication that never gets through cannot keep it alive past that."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 extra={"reauth_time": 10, "rekey_time": 0, "over_time": 8, "rand_time": 0}),
                     retransmit=RetransmitPolicy(timeout=0.5, base=2.0, tries=2))
    a.settings.retry_delay = 4.0
    sa_a, sa_b = up(a, b, net)
    net.loss = lambda d: parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT
    advance(net, 0.0, 17.9)
    assert sa_a in a.ike_sas() and a.stats["reauths_failed"] >= 1 and a.stats["ike_hard_expiries"] == 0
    advance(net, 17.9, 18.5)
    assert a.stats["ike_hard_expiries"] == 1 and sa_a not in a.ike_sas() and sa_b not in b.ike_sas()
    (down,) = [e for e in kinds(net.events[A], IkeSaDown) if e.ike_id == sa_a.ike_id]
    assert "lifetime expired" in down.reason


# ---- responses the initiator cannot accept after the responder made the new SA (§1.3, §2.18, §2.21.3) ----

def _tamper_answers(b, task_type, change):
    """b answers the CREATE_CHILD_SA requests whose task is a ``task_type`` with
    ``change(payloads)`` instead of what it made (error answers go out unchanged). b's own state
    is what it made: only the peer sees the changed answer."""
    from host.ike.constants import PayloadType
    normal = b.responders[ExchangeType.CREATE_CHILD_SA]

    def responder(msg):
        task = normal(msg)
        if not isinstance(task, task_type):
            return task
        on_request = task.on_request

        def tampered(sa, m, reply, now):
            def changed(ps, t):
                err = any(p.ptype == PayloadType.NOTIFY and p.notify_type < 16384 for p in ps)
                reply(ps if err else change(list(ps)), t)
            return on_request(sa, m, changed, now)
        task.on_request = tampered
        return task
    b.responders[ExchangeType.CREATE_CHILD_SA] = responder


def _without(cls):
    return lambda ps: [p for p in ps if not isinstance(p, cls)]


def _alive_both_ways(a, b, net, sa_a, sa_b, now):
    """Each end's liveness check (an empty INFORMATIONAL, §1.4) on its IKE SA is answered."""
    alive = []
    a.check_liveness(sa_a.ike_id, now, on_alive=lambda sa, t: alive.append("a"))
    net.pump(now)
    b.check_liveness(sa_b.ike_id, now, on_alive=lambda sa, t: alive.append("b"))
    net.pump(now)
    assert alive == ["a", "b"]


def _ike_answer_nonce_dropped():
    from host.ike.payloads import NoncePayload
    return _without(NoncePayload)


def _ike_answer_ke_of_another_group():
    from host.ike.payloads import KePayload
    return lambda ps: [KePayload(19, p.data) if isinstance(p, KePayload) else p for p in ps]


def _ike_answer_zero_spi():
    from host.ike.payloads import Proposal, SaPayload
    return lambda ps: [SaPayload([Proposal(x.num, x.protocol, bytes(8), x.transforms) for x in p.proposals])
                       if isinstance(p, SaPayload) else p for p in ps]


@pytest.mark.parametrize("change", [_ike_answer_nonce_dropped, _ike_answer_ke_of_another_group,
                                    _ike_answer_zero_spi], ids=["no-nonce", "ke-group", "zero-spi"])
def test_ike_rekey_answer_the_initiator_cannot_use_leaves_the_old_ike_sa_at_both_ends(change):
    """b makes its new IKE SA and answers; a cannot make the new SA's keys from the answer
    (§1.3.2, §2.18). a keeps its old IKE SA and Child SA and retries later; b, which had moved the
    Child SA to its new IKE SA, learns from a's next request on the old one that a never took it
    (§2.21.3: the peers' states differ) and drops the new one. Past b's reap time (where b would
    otherwise have deleted the old IKE SA as replaced) both still have the old one, carrying the
    Child SA, and both pass liveness checks."""
    from host.ike import rekey
    a, b, net = pair()
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    child_a, child_b = assert_pair(sa_a, sa_b)
    _tamper_answers(b, rekey.RekeyIkeTask, change())
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    assert a.stats["ike_rekeys_failed"] == 1 and a.stats["ike_rekeys_done"] == 0
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert assert_pair(sa_a, sa_b) == (child_a, child_b)
    assert len(a.ctx.by_spi) == len(b.ctx.by_spi) == 1          # no half-made IKE SA kept at either end
    assert b.stats["ike_rekeys_unused_by_peer"] == 1
    _alive_both_ways(a, b, net, sa_a, sa_b, 1.5)
    advance(net, 1.5, 45.0)                                     # retried (and spoilt) every 3..6 s
    assert a.stats["ike_rekeys_failed"] >= 5
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert assert_pair(sa_a, sa_b) == (child_a, child_b)
    assert not kinds(net.events[A], ChildSaDelete) and not kinds(net.events[B], ChildSaDelete)
    assert not [e for e in kinds(net.events[A], IkeSaDown) if e.ike_id == sa_a.ike_id]
    assert not [e for e in kinds(net.events[B], IkeSaDown) if e.ike_id == sa_b.ike_id]
    _alive_both_ways(a, b, net, sa_a, sa_b, 45.0)
    b.responders[ExchangeType.CREATE_CHILD_SA] = rekey.responder_for
    advance(net, 45.0, 52.0)                                    # the next retry goes through
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and nb is not sa_b and a.stats["ike_rekeys_done"] == 1
    assert assert_pair(na, nb) == (child_a, child_b)


def test_ike_rekey_answer_with_a_proposal_we_did_not_offer_is_deleted_under_the_new_keys(monkeypatch):
    """b chose (and keyed its new IKE SA with) a proposal a did not offer — here because a's
    request went out with another one than a recorded. a can still make the new SA's keys: it
    brings the SA up only to delete it there (§1.4.1), nothing announced. b takes the Child SA
    back to its old IKE SA, which both keep; liveness checks pass both ways."""
    from host.ike.payloads import SaPayload
    from host.ike.proposals import parse_proposal
    aes128 = parse_proposal("aes128gcm16-prfsha256-x25519")
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET),
                     b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET,
                                 ike=["aes256gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-x25519"]))
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    child_a, child_b = assert_pair(sa_a, sa_b)
    _tamper_rekey_request(monkeypatch, lambda ps: [SaPayload([aes128.to_proposal(1, p.proposals[0].spi)])
                                                   if isinstance(p, SaPayload) else p for p in ps])
    assert a.rekey_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    assert a.stats["ike_rekeys_failed"] == 1 and a.stats["ike_rekeys_refused_deleted"] == 1
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    assert assert_pair(sa_a, sa_b) == (child_a, child_b)
    assert len(a.ctx.by_spi) == len(b.ctx.by_spi) == 1
    assert not kinds(net.events[A], IkeSaRekeyed) and not kinds(net.events[A], IkeSaDown)
    there, back = kinds(net.events[B], IkeSaRekeyed)             # b moved the Child SA, then back
    assert (there.old_ike_id, back.new_ike_id) == (sa_b.ike_id, sa_b.ike_id)
    assert back.old_ike_id == there.new_ike_id
    (down,) = kinds(net.events[B], IkeSaDown)
    assert down.ike_id == there.new_ike_id and down.replaced_by == sa_b.ike_id
    assert not kinds(net.events[B], ChildSaDelete)
    monkeypatch.undo()
    advance(net, 1.0, 40.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and a.stats["ike_rekeys_done"] == 1
    assert assert_pair(na, nb) == (child_a, child_b)
    _alive_both_ways(a, b, net, na, nb, 40.0)


def _child_answer_not_offered(ps):
    """The answer's ESP proposal with AES-GCM-16 of 128 bits, which a did not offer."""
    from host.ike.constants import TransformType
    from host.ike.payloads import Proposal, SaPayload, Transform
    out = []
    for p in ps:
        if isinstance(p, SaPayload):
            x = p.proposals[0]
            p = SaPayload([Proposal(x.num, x.protocol, x.spi,
                                    [Transform(t.ttype, t.tid, 128) if t.ttype == TransformType.ENCR else t
                                     for t in x.transforms])])
        out.append(p)
    return out


@pytest.mark.parametrize("change", [lambda: _child_answer_not_offered,
                                    lambda: _without(__import__("host.ike.payloads").ike.payloads.NoncePayload)],
                         ids=["proposal-not-offered", "no-nonce"])
def test_child_rekey_answer_the_initiator_cannot_use_is_deleted_at_the_responder(change):
    """b installs the new Child SA and answers; a cannot use the answer (§1.3.3, §3.3.6). a tells b
    to delete the SA b made (§1.4.1: the SPI b sends with), keeps the old one and retries later;
    b drops the new SA, keeps the old one, and accepts the retry (no TEMPORARY_FAILURE for an SA
    it thinks already replaced)."""
    from host.ike import rekey
    a, b, net = pair()
    a.settings.retry_delay = 6.0
    sa_a, sa_b = up(a, b, net)
    old_a, old_b = assert_pair(sa_a, sa_b)
    _tamper_answers(b, rekey.RekeyChildTask, change())
    assert a.rekey_child(old_a.handle, 1.0)
    net.pump(1.0)
    assert a.stats["child_rekeys_failed"] == 1
    assert assert_pair(sa_a, sa_b) == (old_a, old_b)
    assert old_a.rekey_state is None and old_b.rekey_state is None
    (gone,) = kinds(net.events[B], ChildSaDelete)
    assert gone.handle != old_b.handle and not gone.replaced
    _alive_both_ways(a, b, net, sa_a, sa_b, 1.5)
    b.responders[ExchangeType.CREATE_CHILD_SA] = rekey.responder_for
    advance(net, 1.5, 8.0)
    new_a, new_b = assert_pair(sa_a, sa_b)
    assert new_a.rekey_of == old_a.handle and a.stats["child_rekeys_done"] == 1
    assert not any("TEMPORARY_FAILURE" in w.text for w in kinds(net.events[A], IkeWarning))
    _alive_both_ways(a, b, net, sa_a, sa_b, 8.0)
