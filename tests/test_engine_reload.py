"""IkeEngine.load_connections: a configuration reload with swanctl --load-all semantics, between
two engines on the in-memory network. Unchanged connections keep their IKE SAs, removed ones are
deleted at the peer too, changed ones come back with their new configuration, added ones start."""
from host.ike.config import parse_connections, same_connection
from host.ike.engine import IkeEngine
from host.ike.events import IkeSaDown, IkeSaUp
from host.ike.loopback import Network
from host.ike.states import IkeSaState
from testbed.pki import TestCa
from tests.test_engine import A_NET, ALL, B_NET, A, B, conn, kinds


def ours(n, **extra):
    """Connection gw<n> of A: its own /32 pair inside the nets B accepts."""
    return conn(A, B, "a.example", "b.example", "198.51.100.%d/32" % n, "203.0.113.%d/32" % n,
                extra=dict({"start_action": "start"}, **extra))


def setup(names=(1, 2, 3)):
    a = IkeEngine(parse_connections({"gw%d" % n: ours(n) for n in names}), ALL, strict=True)
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL, strict=True)
    net = Network()
    net.add(A, a)
    net.add(B, b)
    a.start(0.0)
    net.pump(0.0)
    return a, b, net


def by_conn(engine):
    return {sa.conn.name: sa for sa in engine.ike_sas() if sa.state == IkeSaState.ESTABLISHED}


def peer_spis(engine):
    return {sa.spi_i for sa in engine.ike_sas() if sa.state == IkeSaState.ESTABLISHED}


def test_reload_keeps_unchanged_deletes_removed_reestablishes_changed_and_starts_added():
    a, b, net = setup()
    before = by_conn(a)
    assert sorted(before) == ["gw1", "gw2", "gw3"] and len(peer_spis(b)) == 3
    old_gw1 = a.connections["gw1"]
    new = parse_connections({"gw1": ours(1), "gw3": ours(3, dpd_delay=30), "gw4": ours(4)})
    res = a.load_connections(new, 1.0)
    assert (res.unchanged, res.changed, res.added, res.removed) == (["gw1"], ["gw3"], ["gw4"], ["gw2"])
    assert sorted(res.deleted) == sorted([before["gw2"].ike_id, before["gw3"].ike_id])
    net.pump(1.0)
    after = by_conn(a)
    assert sorted(after) == ["gw1", "gw3", "gw4"]
    assert after["gw1"] is before["gw1"] and a.connections["gw1"] is old_gw1     # untouched
    assert after["gw3"].ike_id != before["gw3"].ike_id and after["gw3"].conn.dpd_delay == 30
    # the peer was told: it holds exactly the three live IKE SAs, not the deleted ones
    assert peer_spis(b) == {sa.spi_i for sa in after.values()}
    downs = {e.ike_id for e in kinds(net.events[B], IkeSaDown)}
    assert len(downs) == 2
    ups = kinds(net.events[A], IkeSaUp)
    assert {e.conn for e in ups[-2:]} == {"gw3", "gw4"}


def test_reload_without_start_only_deletes_and_a_removed_connection_never_comes_back():
    a, b, net = setup((1, 2))
    res = a.load_connections(parse_connections({"gw1": ours(1, dpd_delay=5)}), 1.0, start=False)
    assert res.changed == ["gw1"] and res.removed == ["gw2"] and res.initiated == []
    net.pump(1.0)
    assert a.ike_sas() == [] and peer_spis(b) == set()
    a.start(2.0)                # what the driver does once it starts connections
    net.pump(2.0)
    assert sorted(by_conn(a)) == ["gw1"]


def test_a_changed_connection_without_start_action_comes_back_with_the_child_sas_it_carried():
    extra = {"start_action": "none"}
    a = IkeEngine(parse_connections({"gw1": conn(A, B, "a.example", "b.example", A_NET, B_NET, extra=extra)}),
                  ALL, strict=True)
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL, strict=True)
    net = Network()
    net.add(A, a)
    net.add(B, b)
    a.initiate("gw1", 0.0)
    net.pump(0.0)
    first = by_conn(a)["gw1"]
    res = a.load_connections(parse_connections({"gw1": conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                                            extra=dict(extra, rekey_time=7200))}), 1.0)
    net.pump(1.0)
    again = by_conn(a)["gw1"]
    assert res.changed == ["gw1"] and len(res.initiated) == 1
    assert again is not first and [c.cfg.name for c in again.children.values()] == ["net"]


def test_same_connection_compares_what_the_files_hold(tmp_path):
    ca = TestCa()
    ee = ca.issue("a.example")
    ee.write(tmp_path, "a")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())

    def pubkey(**kw):
        c = conn(A, B, "a.example", "b.example", A_NET, B_NET, auth="pubkey", psk=None)
        c["local"].update(cert="a.crt", key="a.key")
        c["remote"] = {"auth": "pubkey", "id": "b.example", "cacerts": ["ca.crt"]}
        c.update(kw)
        return parse_connections({"gw": c}, tmp_path)["gw"]

    first = pubkey()
    assert same_connection(first, pubkey())                 # loaded twice: new objects, same contents
    other = ca.issue("a.example")
    other.write(tmp_path, "a")                              # a new key and certificate in the same files
    assert not same_connection(first, pubkey())
    psk = parse_connections({"gw": ours(1)})["gw"]
    assert same_connection(psk, parse_connections({"gw": ours(1)})["gw"])
    assert not same_connection(psk, parse_connections({"gw": conn(A, B, "a.example", "b.example",
                                                                   "198.51.100.1/32", "203.0.113.1/32",
                                                                   psk="another-psk-0123456789",
                                                                   extra={"start_action": "start"})})["gw"])
