"""Traffic selectors are negotiated within what a board holds (OffloadCapabilities.max_ts, the
link's MAX_TS = 8 each way): a responder narrows the peer's to as many (RFC 7296 §2.9: a subset is
a narrowing), an initiator offers no more and refuses an answer with more, so no Child SA is
agreed that the board would refuse to install. Both exchanges that create Child SAs: IKE_AUTH and
CREATE_CHILD_SA."""
import dataclasses

import pytest

from firmware.link import messages as m
from host.ike.events import ChildSaDelete, ChildSaFailed, ChildSaInstall, ChildSaUp, IkeSaUp, IkeWarning
from tests.test_engine import A, A_NET, ALL, B, B_NET, conn, kinds, pair

LIMITED = dataclasses.replace(ALL, max_ts=m.MAX_TS)
MANY = m.MAX_TS + 2


def hosts(prefix, n):
    """n /32s in prefix.0/24 (prefix "198.51.100")."""
    return ["%s.%d/32" % (prefix, 10 + i) for i in range(n)]


def child(lts, rts):
    return {"local_ts": lts, "remote_ts": rts, "esp_proposals": ["aes256gcm16"]}


def run(a_child, b_child, caps_a, caps_b, exchange):
    """a initiates with Child SA "net" (a_child) in IKE_AUTH, or childless and then with
    CREATE_CHILD_SA; b answers with b_child."""
    if exchange == "ike_auth":
        a_children, b_children = {"net": a_child}, {"net": b_child}
    else:
        first_a, first_b = child(["198.18.0.0/24"], ["198.19.0.0/24"]), child(["198.19.0.0/24"], ["198.18.0.0/24"])
        a_children, b_children = {"first": first_a, "net": a_child}, {"first": first_b, "net": b_child}
    a, b, net = pair(conn(A, B, "a.example", "b.example", A_NET, B_NET, children=a_children),
                     conn(B, A, "b.example", "a.example", B_NET, A_NET, children=b_children),
                     caps_a=caps_a, caps_b=caps_b)
    a.initiate("gw", 0.0, "net" if exchange == "ike_auth" else "first")
    net.pump(0.0)
    if exchange == "create_child":
        (up,) = kinds(net.events[A], IkeSaUp)
        net.events[A].clear()
        net.events[B].clear()
        a.create_child(up.ike_id, "net", 1.0)
        net.pump(1.0)
    return a, b, net


@pytest.mark.parametrize("exchange", ["ike_auth", "create_child"])
def test_a_responder_narrows_the_peers_selectors_to_what_its_board_holds(exchange):
    a, b, net = run(child(hosts("198.51.100", MANY), hosts("203.0.113", MANY)), child([B_NET], [A_NET]),
                    ALL, LIMITED, exchange)
    (ib,) = kinds(net.events[B], ChildSaInstall)
    assert (len(ib.local_ts), len(ib.remote_ts)) == (m.MAX_TS, m.MAX_TS)
    assert [str(t) for t in ib.remote_ts] == [str(t) for t in kinds(net.events[A], ChildSaInstall)[0].local_ts]
    assert kinds(net.events[A], ChildSaUp) and kinds(net.events[B], ChildSaUp)
    assert any("narrowed" in w.text for w in kinds(net.events[B], IkeWarning))


@pytest.mark.parametrize("exchange", ["ike_auth", "create_child"])
def test_an_initiator_offers_no_more_than_its_board_holds(exchange):
    a, b, net = run(child(hosts("198.51.100", MANY), [B_NET]), child([B_NET], [A_NET]), LIMITED, ALL, exchange)
    (ia,) = kinds(net.events[A], ChildSaInstall)
    (ib,) = kinds(net.events[B], ChildSaInstall)
    assert len(ia.local_ts) == len(ib.remote_ts) == m.MAX_TS


@pytest.mark.parametrize("exchange", ["ike_auth", "create_child"])
def test_an_initiator_refuses_an_answer_with_more_selectors_than_its_board_holds(exchange):
    """The responder's narrowing splits our one selector into ten: not installable here, so the
    Child SA fails and the responder's half is deleted (§1.4.1)."""
    a, b, net = run(child([A_NET], [B_NET]), child(hosts("203.0.113", MANY), [A_NET]), LIMITED, ALL, exchange)
    assert not kinds(net.events[A], ChildSaInstall) and not kinds(net.events[A], ChildSaUp)
    assert [f.name for f in kinds(net.events[A], ChildSaFailed)] == ["net"]
    (ib,) = kinds(net.events[B], ChildSaInstall)
    assert len(ib.local_ts) == MANY
    assert [d.spi_in for d in kinds(net.events[B], ChildSaDelete)] == [ib.spi_in]
