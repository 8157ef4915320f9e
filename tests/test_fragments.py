"""IKE fragmentation (RFC 7383) between two real engines in memory: negotiation, fragment sizes,
reassembly in any order, forged and duplicate fragments, loss and retransmission, and a property
test of the fragment codec."""
import random

from hypothesis import given, settings, strategies as st

from host.ike import fragments, liveness
from host.ike.config import parse_connections
from host.ike.constants import ExchangeType, Flag, Notify, PayloadType
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import ChildSaInstall
from host.ike.states import IkeSaState
from host.ike.loopback import Network, drain
from host.ike.message import Message, parse_header
from host.ike.payloads import NotifyPayload, encode_chain
from tests.test_engine import A, A_NET, ALL, B, B_NET, conn, established, kinds

SIZE = 200                  # fragment_size (IP datagram) small enough to cut even a PSK IKE_AUTH


def engines(frag_a=True, frag_b=True, size=SIZE):
    a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL,
                  settings=EngineSettings(fragmentation=frag_a, fragment_size=size))
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL,
                  settings=EngineSettings(fragmentation=frag_b, fragment_size=size))
    a.strict = b.strict = True
    return a, b


def fragmenting(frag_a=True, frag_b=True):
    """An IKE SA between two engines that offer fragmentation (or not) at SIZE."""
    return established(EngineSettings(fragmentation=frag_a, fragment_size=SIZE),
                       EngineSettings(fragmentation=frag_b, fragment_size=SIZE))


def is_fragment(data):
    return parse_header(data).next_payload == PayloadType.SKF


def deliver(datagrams, dst, src_ip, now=0.0):
    """Hand datagrams over one by one; the receiver's board accepts every Child SA install."""
    for d in datagrams:
        dst.receive_datagram(d.data, (src_ip, d.local[1]), now, d.remote)
        drain(dst, now, True)


def keys_agree(a_events, b_events):
    (ia,), (ib,) = kinds(a_events, ChildSaInstall), kinds(b_events, ChildSaInstall)
    return (ia.spi_in, ia.spi_out, ia.key_in, ia.key_out) == (ib.spi_out, ib.spi_in, ib.key_out, ib.key_in)


def test_ike_auth_is_fragmented_both_ways_within_the_size_and_the_sas_agree():
    a, b = engines()
    net = Network()
    net.add(A, a)
    net.add(B, b)
    sent = []
    net.loss = lambda d: sent.append(d.data) and False
    a.initiate("gw", 0.0)
    net.pump(0.0)
    (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
    assert sa_a.fragmentation and sa_b.fragmentation
    assert a.stats["fragmented_messages_sent"] == b.stats["fragmented_messages_sent"] == 1
    assert a.stats["fragments_sent"] >= 2 and b.stats["fragments_sent"] >= 2
    assert a.stats["fragmented_messages_received"] == b.stats["fragmented_messages_received"] == 1
    frags = [d for d in sent if is_fragment(d)]
    assert len(frags) == a.stats["fragments_sent"] + b.stats["fragments_sent"]
    assert max(len(d) for d in frags) <= fragments.limit(sa_a) == SIZE - 20 - 8 - 4   # port 4500
    assert keys_agree(net.events[A], net.events[B])
    # a small exchange afterwards goes whole: a liveness check and its answer
    before = len(sent)
    assert liveness.request_check(sa_a, 1.0)
    net.pump(1.0)
    assert len(sent) == before + 2 and not any(is_fragment(d) for d in sent[before:])
    assert sa_a.outstanding is None


def test_without_the_peer_offering_it_messages_go_whole():
    for fa, fb in ((True, False), (False, True)):
        a, b, _net = fragmenting(fa, fb)
        (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
        assert not sa_a.fragmentation and not sa_b.fragmentation
        assert a.stats["fragments_sent"] == b.stats["fragments_sent"] == 0


def _to_ike_auth(a, b):
    """Run IKE_SA_INIT by hand; returns a's IKE_AUTH request datagrams."""
    a.initiate("gw", 0.0)
    deliver(a.datagrams_to_send(0.0), b, A)
    deliver(b.datagrams_to_send(0.0), a, B)
    return a.datagrams_to_send(0.0)


def test_fragments_in_any_order_with_forgeries_and_duplicates_reassemble_once():
    a, b = engines(size=150)
    req = _to_ike_auth(a, b)
    assert len(req) >= 3 and all(is_fragment(d.data) for d in req)
    forged = bytearray(req[1].data)
    forged[-1] ^= 1
    b.receive_datagram(bytes(forged), (A, 4500), 0.0, (B, 4500))
    assert b.stats["bad_icv"] == 1
    rev = list(reversed(req))
    deliver(rev[:1] + rev, b, A)                 # the last one twice, then all, backwards
    assert b.stats["fragments_duplicate"] == 1 and b.stats["fragmented_messages_received"] == 1
    resp = b.datagrams_to_send(0.0)
    assert len(resp) >= 2 and all(is_fragment(d.data) for d in resp)
    random.Random(3).shuffle(resp)
    deliver(resp, a, B)
    (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
    assert sa_a.state == sa_b.state == IkeSaState.ESTABLISHED and sa_a.outstanding is None
    assert sa_a.reassembly is None and sa_b.reassembly is None


def test_a_lost_fragment_is_made_good_by_retransmission_and_a_lost_answer_is_resent():
    a, b = engines(size=150)
    req = _to_ike_auth(a, b)
    deliver(req[:-1], b, A)                      # the last fragment is lost
    assert b.datagrams_to_send(0.0) == [] and b.stats["fragments_received"] == len(req) - 1
    t = a.get_timer()
    a.handle_timer(t)
    again = a.datagrams_to_send(t)
    assert [d.data for d in again] == [d.data for d in req]      # every fragment, unchanged (§2.1)
    deliver(again, b, A, t)
    assert b.stats["fragments_duplicate"] == len(req) - 1
    resp = b.datagrams_to_send(t)
    assert len(resp) >= 2
    deliver(resp[1:], a, B, t)                   # our answer's first fragment is lost
    t2 = a.get_timer()
    a.handle_timer(t2)
    deliver(a.datagrams_to_send(t2), b, A, t2)   # the resend's first fragment brings the answer again
    assert b.stats["retransmits_answered"] == 1
    again = b.datagrams_to_send(t2)
    assert [d.data for d in again] == [d.data for d in resp]
    deliver(again[:1], a, B, t2)
    assert a.ike_sas() and a.ike_sas()[0].outstanding is None
    assert a.stats["fragmented_messages_received"] == 1


def test_a_resend_cut_finer_starts_over_and_a_coarser_one_is_dropped():
    sa_a, sa_b = _established()
    b = sa_b.ctx
    msg = Message(sa_a.spi_i, sa_a.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa_b.peer_mid,
                  [NotifyPayload(40000, bytes(900))])
    coarse = msg.encode_fragments(sa_a.cipher, 500)
    fine = msg.encode_fragments(sa_a.cipher, 300)
    assert len(fine) > len(coarse) >= 2
    assert fragments.receive(sa_b, parse_header(coarse[0]), coarse[0], 0.0) is None
    assert fragments.receive(sa_b, parse_header(fine[0]), fine[0], 0.0) is None        # starts over
    assert fragments.receive(sa_b, parse_header(coarse[1]), coarse[1], 0.0) is None    # dropped
    assert b.stats["fragments_dropped"] == 1
    opened = None
    for d in fine[1:]:
        opened = fragments.receive(sa_b, parse_header(d), d, 0.0)
    assert opened is not None and encode_chain(opened()) == encode_chain(msg.payloads)


_PAIR = []


def _established():
    if not _PAIR:
        a, b, _net = fragmenting()
        _PAIR.append((a.ike_sas()[0], b.ike_sas()[0]))
    return _PAIR[0]


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 700), min_size=1, max_size=8), limit=st.integers(120, 1500),
       seed=st.integers(0, 2**32 - 1))
def test_fragment_codec_round_trips_in_any_order(sizes, limit, seed):
    sa_a, sa_b = _established()
    payloads = [NotifyPayload(Notify.IKEV2_FRAGMENTATION_SUPPORTED if n == 0 else 40000 + i, bytes([i]) * n)
                for i, n in enumerate(sizes)]
    msg = Message(sa_a.spi_i, sa_a.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa_b.peer_mid, payloads)
    frags = msg.encode_fragments(sa_a.cipher, limit)
    assert all(len(f) <= limit for f in frags)
    if len(frags) > fragments.MAX_FRAGMENTS:
        # never kept: a message that needs more fragments than a receiver holds is refused whole
        assert fragments.receive(sa_b, parse_header(frags[0]), frags[0], 0.0) is None
        assert sa_b.reassembly is None
        return
    order = list(range(len(frags)))
    random.Random(seed).shuffle(order)
    results = [fragments.receive(sa_b, parse_header(frags[i]), frags[i], 0.0) for i in order]
    assert all(r is None for r in results[:-1]) and results[-1] is not None
    assert encode_chain(results[-1]()) == encode_chain(payloads)
    assert sa_b.reassembly is None


def test_reassembly_memory_is_bounded_and_given_back():
    """§2.6.2 leaves limits to the receiver: a message over MAX_MESSAGE is given up, and every
    byte held is returned when a message completes, is given up, or its SA goes."""
    a, b, net = fragmenting()
    (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
    big = Message(sa_a.spi_i, sa_a.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa_b.peer_mid,
                  [NotifyPayload(40000, bytes(40 * 1024))]).encode_fragments(sa_a.cipher, 1500)
    assert len(big) <= fragments.MAX_FRAGMENTS
    kept_before = b.stats["fragments_received"]
    for d in big:
        assert fragments.receive(sa_b, parse_header(d), d, 1.0) is None
    assert b.stats["fragments_over_limit"] == 1 and sa_b.reassembly.given_up
    kept = b.stats["fragments_received"] - kept_before
    assert kept * 1400 < fragments.MAX_MESSAGE and b.stats["fragments_dropped"] == len(big) - kept - 1
    assert b.ctx.fragment_bytes == 0                              # nothing of it is held
    part = Message(sa_a.spi_i, sa_a.spi_r, ExchangeType.CREATE_CHILD_SA, Flag.INITIATOR, sa_b.peer_mid,
                   [NotifyPayload(40000, bytes(3000))]).encode_fragments(sa_a.cipher, 1000)   # another one
    fragments.receive(sa_b, parse_header(part[0]), part[0], 1.0)
    assert b.ctx.fragment_bytes > 0
    b.delete_ike(sa_b.ike_id, 2.0)
    net.pump(2.0)
    assert b.ike_sas() == [] and b.ctx.fragment_bytes == 0       # the SA went, its fragments with it
