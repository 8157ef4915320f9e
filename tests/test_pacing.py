"""Initiation pacing (host/ike/pacing.py): the IKE SAs we initiate wait for a slot so that a peer
never sees more of ours half-open than it answers (charon drops IKE_SA_INITs beyond
block_threshold = 5 per initiator address). Our initiator against our responder in memory, the
responder set to drop like charon does."""
from host.ike.config import EngineSettings, RetransmitPolicy, parse_connections
from host.ike.constants import ExchangeType
from host.ike.engine import IkeEngine
from host.ike.events import IkeSaUp
from host.ike.loopback import Network
from host.ike.message import parse_header
from host.ike.pacing import ACTIVE, WAITING, InitiationPacer
from host.ike.states import IkeSaState
from tests.test_engine import ALL, conn

A = "192.0.2.1"
PEERS = ["192.0.2.%d" % i for i in range(2, 6)]
CHARON_LIKE = EngineSettings(max_half_open_per_ip=5)        # charon's block_threshold


def hub(n_per_peer, peers, settings, extra=None):
    """Our initiator with ``n_per_peer`` connections to each of ``peers``, and one responder engine
    per peer (each with the same connections seen from its side)."""
    ours, theirs = {}, {p: {} for p in peers}
    for p in peers:
        for i in range(n_per_peer):
            name = "c%s_%d" % (p.rsplit(".", 1)[1], i)
            lts, rts = "198.51.100.%d/32" % (i + 1), "203.0.113.%d/32" % (i + 1)
            ours[name] = conn(A, p, "hub.example", "b%s.example" % p, lts, rts,
                              extra=dict({"start_action": "start"}, **(extra or {})))
            theirs[p][name] = conn(p, A, "b%s.example" % p, "hub.example", rts, lts)
    a = IkeEngine(parse_connections(ours), ALL, settings, RetransmitPolicy(timeout=1.0, base=1.8, tries=3),
                  strict=True)
    net = Network()
    net.add(A, a)
    for p in peers:
        net.add(p, IkeEngine(parse_connections(theirs[p]), ALL, CHARON_LIKE, strict=True))
    return a, net


def inits_sent(a, net, now):
    """Pump, counting the IKE_SA_INIT requests our engine sends per peer before anything answers."""
    sent = []
    for d in a.datagrams_to_send(now):
        if parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT:
            sent.append(d.remote[0])
        net.engines[d.remote[0]].receive_datagram(d.data, (A, d.local[1]), now, d.remote)
    return sent


def test_sixty_connections_to_one_peer_come_up_without_a_retransmission():
    a, net = hub(60, PEERS[:1], EngineSettings())
    ids = a.start(0.0)
    assert len(ids) == 60
    assert len(inits_sent(a, net, 0.0)) == 4           # one below the peer's threshold of 5
    net.pump(0.0, rounds=1000)
    up = [e for e in net.events[A] if isinstance(e, IkeSaUp)]
    assert len(up) == 60 and a.stats["retransmits"] == 0
    assert net.engines[PEERS[0]].stats["half_open_limit"] == 0
    assert a.ctx.pacer.n_active == 0 and a.stats["initiations_queued"] == 56


def test_unpaced_initiator_floods_the_peer_and_waits_out_retransmissions():
    """What pacing prevents (the same set-up with the limit off): the peer answers a few and drops
    the rest, which wait for their retransmission timer."""
    a, net = hub(60, PEERS[:1], EngineSettings(max_initiating_per_peer=0, max_initiating=0))
    a.start(0.0)
    net.pump(0.0, rounds=1000)
    up = [e for e in net.events[A] if isinstance(e, IkeSaUp)]
    dropped = net.engines[PEERS[0]].stats["half_open_limit"]
    assert len(up) < 10 and dropped >= 30     # (others got a COOKIE: CHARON_LIKE's threshold per IP is 3)


def test_total_limit_and_peers_take_turns():
    a, net = hub(6, PEERS, EngineSettings(max_initiating_per_peer=2, max_initiating=5))
    ids = a.start(0.0)
    sa = {a.ike_sa(i).conn.name: a.ike_sa(i) for i in ids}
    first = inits_sent(a, net, 0.0)
    assert first == [PEERS[0]] * 2 + [PEERS[1]] * 2 + [PEERS[2]]        # in order, up to the total
    started = [n for n, s in sa.items() if s.pacing == ACTIVE]
    for gone in ("c2_0", "c3_0", "c2_1"):       # each slot freed goes to the next peer in turn
        a.drop_ike(sa[gone].ike_id, 0.0, "test")
        started += [n for n, s in sa.items() if s.pacing == ACTIVE and n not in started]
    assert started == ["c2_0", "c2_1", "c3_0", "c3_1", "c4_0", "c4_1", "c5_0", "c2_2"]
    net.pump(0.0, rounds=1000)
    assert len([e for e in net.events[A] if isinstance(e, IkeSaUp)]) == 24 - 3
    assert a.stats["retransmits"] == 0


def test_a_failed_or_dropped_initiation_frees_its_slot_and_the_next_one_starts():
    a, net = hub(6, PEERS[:1], EngineSettings(max_initiating_per_peer=2), {"keyingtries": 1})
    ids = a.start(0.0)
    sas = [a.ike_sa(i) for i in ids]
    assert [s.pacing for s in sas] == [ACTIVE] * 2 + [WAITING] * 4
    a.drop_ike(ids[3], 0.0, "dropped while waiting")       # a waiting one goes: nothing changes
    a.drop_ike(ids[0], 0.0, "dropped while half-open")     # a half-open one goes: the next starts
    assert sas[2].pacing == ACTIVE and sas[3].state == IkeSaState.DEAD and sas[4].pacing == WAITING
    assert len(inits_sent(a, net, 0.0)) == 3               # ids[0]'s went before it was dropped
    net.engines[PEERS[0]].datagrams_to_send(0.0)           # their answers are lost
    t = 0.0
    while a.ctx.pacer.n_active or a.ctx.pacer.queued():
        t = a.get_timer()
        a.handle_timer(t)
        a.datagrams_to_send(t)
    # each timed out in turn after its retransmissions and let the next one go
    assert all(s.state == IkeSaState.DEAD or s.pacing is None for s in sas)
    assert a.stats["retransmits"] == 4 * 3 and 8 < t < 30


def test_the_same_pacing_after_a_board_loss_flush():
    a, net = hub(20, PEERS[:1], EngineSettings())
    a.start(0.0)
    net.pump(0.0, rounds=1000)
    for sa in list(a.ike_sas()):
        names = a.drop_ike(sa.ike_id, 1.0, "board lost")
        a.initiate(sa.conn.name, 1.0, names, retry=True)
    peer = net.engines[PEERS[0]]
    net.events[A].clear()
    assert a.ctx.pacer.n_active == 4
    net.pump(1.0, rounds=1000)
    assert len([e for e in net.events[A] if isinstance(e, IkeSaUp)]) == 20
    assert a.stats["retransmits"] == 0 and peer.stats["half_open_limit"] == 0
    assert len(peer.ike_sas()) == 20            # the Deletes took the old ones


def test_a_task_added_to_a_waiting_ike_sa_does_not_start_it():
    a, net = hub(6, PEERS[:1], EngineSettings(max_initiating_per_peer=1))
    ids = a.start(0.0)
    a.check_liveness(ids[1], 0.0)
    assert a.ike_sa(ids[1]).outstanding is None and len(inits_sent(a, net, 0.0)) == 1


def test_pacer_books():
    class Sa:
        def __init__(self, ip):
            self.remote, self.pacing, self.state = (ip, 500), None, IkeSaState.CONNECTING
    p = InitiationPacer(2, 3)
    a0, a1, a2, b0, b1 = sas = [Sa("a"), Sa("a"), Sa("a"), Sa("b"), Sa("b")]
    assert [p.admit(s) for s in sas] == [True, True, False, True, False]
    assert p.n_active == 3 and p.queued() == 2 and a2.pacing == b1.pacing == WAITING
    assert p.release(b0) == [b1]                # b had room, it waited for the total
    b1.state = IkeSaState.DEAD
    assert p.release(b1) == [] and p.n_active == 2 and p.active == {"a": 2}
    assert p.admit(Sa("c")) is True and p.n_active == 3
    assert p.release(a0) == [a2] and p.active == {"a": 2, "c": 1} and p.queued() == 0
