"""On-demand tunnels (trap), without a network: the data path's hold queue (bounded, counted, asked
once, released through the board's queue), the triggering packet's selectors first in the
exchange (RFC 7296 §2.9), close_action / dpd_action = trap as engine events, the configuration.
The daemon with charon: tests/test_routing.py."""
import asyncio
import ipaddress

import pytest

from firmware import profiles
from host.child_sas import ChildSas
from host.dataplane import traps as traps_mod
from host.dataplane.datapath import DataPath
from host.dataplane.traps import TrapPolicy, TrapTable
from host.ike.child_create import packet_first
from host.ike.config import ConfigError, RetransmitPolicy, parse_connections
from host.ike.engine import IkeEngine
from host.ike.events import ChildSaInstall, IkeSaDown, TrapRequested
from host.ike.payloads import TrafficSelector
from host.offload.pool import BoardPool
from host.on_demand import OnDemand
from host.offload.client import BoardClient
from tests.simboard import SimBoard
from tests.test_child_install import install, selectors
from tests.test_engine import A_NET, ALL, B_NET, A, B, conn, kinds, pair
from tests.test_lifecycle import advance, only_child, up

N = ipaddress.ip_network
IP = ipaddress.ip_address


def packet(src, dst, size=84):
    """An IPv4 packet of ``size`` bytes, as read from the TUN device."""
    body = bytes(size - 20)
    return bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(5) + b"\x01" + bytes(2) + \
        IP(src).packed + IP(dst).packed + body


def policy():
    return TrapPolicy("gw", "net", [N("198.51.100.0/24")], [N("203.0.113.0/24")])


# ---------------------------------------------------------------- the hold queue

def test_the_first_packet_asks_once_the_rest_wait_bounded_and_counted():
    t = TrapTable()
    p = policy()
    assert t.add(p) and not t.add(policy())                      # one trap per child
    src, dst = IP("198.51.100.1"), IP("203.0.113.1")
    assert t.hold(b"x" * 100, IP("192.0.2.1"), dst, 0.0) == (False, None)    # none of ours
    asked = [t.hold(b"p%d" % i, src, dst, 0.01 * i)[1] for i in range(traps_mod.HOLD_PACKETS + 5)]
    assert asked[0] is p and asked[1:] == [None] * (len(asked) - 1)          # asked once
    assert t.stats["trap_held"] == traps_mod.HOLD_PACKETS and t.stats["trap_hold_overflow"] == 5
    assert t.held() == traps_mod.HOLD_PACKETS
    # bytes bound too
    t2 = TrapTable()
    t2.add(policy())
    big = b"b" * 9000                                           # jumbo frames: the byte bound comes first
    for _ in range(10):
        t2.hold(big, src, dst, 0.0)
    kept = traps_mod.HOLD_BYTES // 9000
    assert kept < traps_mod.HOLD_PACKETS and len(t2.policies[0].held) == kept
    assert t2.stats["trap_hold_overflow"] == 10 - kept


def test_asking_again_waits_for_the_negotiation_and_the_interval():
    t = TrapTable()
    p = policy()
    t.add(p)
    src, dst = IP("198.51.100.1"), IP("203.0.113.1")
    assert t.hold(b"a", src, dst, 0.0)[1] is p
    assert t.hold(b"b", src, dst, 2.0)[1] is None               # its negotiation still runs
    t.settled("gw", "net")                                      # it failed (or was narrowed away)
    assert t.hold(b"c", src, dst, 2.0)[1] is p                  # >= TRIGGER_INTERVAL since it asked
    t.settled("gw", "net")
    assert t.hold(b"d", src, dst, 2.5)[1] is None               # within TRIGGER_INTERVAL: not yet
    assert t.hold(b"e", src, dst, 3.0)[1] is p
    assert t.hold(b"f", src, dst, 3.0 + traps_mod.PENDING_TIMEOUT)[1] is p    # never settled: asks again
    t.settled("gw", "net", up=True)                             # its Child SA came up ...
    assert t.hold(b"g", src, dst, 3.1 + traps_mod.PENDING_TIMEOUT)[1] is p    # ... and went: ask at once
    assert t.stats["trap_triggers"] == 5


def test_release_gives_what_the_child_sa_carries_oldest_first_and_expiry_drops_the_rest():
    t = TrapTable()
    t.add(policy())
    a, b, c = IP("198.51.100.1"), IP("198.51.100.2"), IP("203.0.113.1")
    t.hold(b"1", a, c, 0.0)
    t.hold(b"2", b, c, 0.1)
    t.hold(b"3", a, c, 0.2)
    narrowed = lambda src, dst: src == a and dst == c         # noqa: E731 - the peer narrowed to a -> c
    assert t.release(narrowed, 0.3) == [b"1", b"3"] and t.held() == 1
    assert t.expire(0.1 + traps_mod.HOLD_SECONDS) == 1 and t.held() == 0
    assert t.stats["trap_released"] == 2 and t.stats["trap_hold_expired"] == 1


def test_held_packets_go_through_the_board_queue_once_the_child_sa_is_installed(tmp_path):
    """The real data path and BoardClient against the simulated board: held packets are admitted
    (bounded, counted), the trap asks once, and once the Child SA is installed they are encrypted
    by the board and sent as ESP like any packet from the TUN device."""
    board = SimBoard("--profile", "sim")

    async def go():
        pool = BoardPool()
        client = BoardClient("b0", board.url, profile=profiles.load("sim"), period=0.1, misses=5,
                             on_event=pool.on_event, link_key=board.link_key)
        pool.add("b0", client)
        await client.start()
        await client.wait_ready(5)
        sent, asked = [], []
        dp = DataPath({"b0": client}, lambda esp, addr: sent.append((esp, addr)), lambda pkt: None,
                      on_trap=lambda p, src, dst: asked.append((p.child, str(src), str(dst))))
        dp.traps = TrapTable(dp.stats)
        dp.traps.add(TrapPolicy("gw", "net", [N("198.51.100.0/24")], [N("203.0.113.0/24")]))
        sas = ChildSas(pool, dp, lambda *a: None)
        try:
            n = traps_mod.HOLD_PACKETS + 3
            dp.tun_packets([packet("198.51.100.1", "203.0.113.1") for _ in range(n)])
            dp.tun_packets([packet("198.51.100.1", "192.0.2.99")])          # no trap covers it
            assert asked == [("net", "198.51.100.1", "203.0.113.1")] and sent == []
            assert dp.stats["trap_held"] == traps_mod.HOLD_PACKETS and dp.stats["trap_hold_overflow"] == 3
            assert dp.stats["out_no_sa"] == 1 and dp.drops()["trap_hold_overflow"] == 3
            await asyncio.wait_for(sas.install(install(1, selectors(1, "198.51.100.1"),
                                                       selectors(1, "203.0.113.1"))), 5)
            for _ in range(200):
                if len(sent) == traps_mod.HOLD_PACKETS:
                    break
                await asyncio.sleep(0.01)
            assert len(sent) == traps_mod.HOLD_PACKETS and dp.stats["trap_released"] == traps_mod.HOLD_PACKETS
            assert {addr for _esp, addr in sent} == {("192.0.2.2", 4500)}
            assert all(esp[:4] == (0xD0000001).to_bytes(4, "big") for esp, _ in sent)   # the SA's outbound SPI
        finally:
            await client.close()
    try:
        asyncio.run(go())
    finally:
        board.close()


def test_no_board_ready_asks_nothing_and_the_next_packet_asks_again():
    t = TrapTable()
    p = policy()
    t.add(p)
    a, _b, _net = pair()
    calls = []
    od = OnDemand(a, lambda fn, *args, **kw: calls.append(fn.__name__), t, None, BoardPool(), clock=lambda: 0.0)
    _held, ask = t.hold(b"x", IP("198.51.100.1"), IP("203.0.113.1"), 0.0)
    od.triggered(ask, IP("198.51.100.1"), IP("203.0.113.1"))
    assert calls == [] and od.stats["trap_no_board"] == 1
    assert t.hold(b"y", IP("198.51.100.1"), IP("203.0.113.1"), 0.01)[1] is p        # asks at once


# ---------------------------------------------------------------- the engine

def test_the_triggering_packet_comes_first_in_the_selectors():
    ts = [TrafficSelector.from_network("198.51.100.0/24", 6, (80, 80)), TrafficSelector.from_network("10.0.0.0/8")]
    out = packet_first(ts, "10.1.2.3")
    assert out[0] == TrafficSelector.from_range("10.1.2.3", "10.1.2.3") and out[1:] == ts
    tcp = packet_first(ts, "198.51.100.7")[0]                    # the covering selector's protocol and ports
    assert (tcp.ip_proto, tcp.start_port, tcp.end_port) == (6, 80, 80)
    assert packet_first(ts, "192.0.2.1") == ts                   # not ours to ask for: unchanged
    host = [TrafficSelector.from_network("10.1.2.3/32")]
    assert packet_first(host, "10.1.2.3") == host                # no duplicate


@pytest.mark.parametrize("how", ["initiate", "create_child"])
def test_an_exchange_asked_for_by_a_packet_carries_its_selectors_first(how):
    """§2.9: the responder sees the packet's addresses first in TSi/TSr and, narrowing (here to
    what it allows: a /29 around the packet), keeps the packet's flow."""
    b_conn = conn(B, A, "b.example", "a.example", "203.0.113.8/29", "198.51.100.0/24")
    a, b, net = pair(b_conn=b_conn)
    trigger = ("198.51.100.7", "203.0.113.9")
    if how == "initiate":
        a.initiate("gw", 0.0, ["net"], trigger=trigger)
        net.pump(0.0)
    else:
        a.initiate("gw", 0.0, False)                             # childless, then the packet comes
        net.pump(0.0)
        a.create_child(a.ike_sas()[0].ike_id, "net", 1.0, trigger=trigger)
        net.pump(1.0)
    (inst_b,) = kinds(net.events[B], ChildSaInstall)
    assert inst_b.remote_ts[0] == TrafficSelector.from_range(*[trigger[0]] * 2)
    assert inst_b.local_ts[0] == TrafficSelector.from_range(*[trigger[1]] * 2)
    (inst_a,) = kinds(net.events[A], ChildSaInstall)
    assert TrafficSelector.from_range(*[trigger[1]] * 2) in inst_a.remote_ts


def test_close_action_trap_asks_the_driver_to_trap_what_the_peer_closed():
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET, child_extra={"close_action": "trap"}))
    sa_a, sa_b = up(a, b, net)
    b.delete_child(only_child(sa_b).handle, 1.0)
    net.pump(1.0)
    assert kinds(net.events[A], TrapRequested) == [TrapRequested("gw", ["net"], "closed")]
    assert sa_a.children == {}                                   # nothing initiated: on demand
    b.create_child(sa_b.ike_id, "net", 2.0)                      # the peer brings it back itself
    net.pump(2.0)
    b.delete_ike(sa_b.ike_id, 3.0)
    net.pump(3.0)
    assert kinds(net.events[A], TrapRequested)[-1] == TrapRequested("gw", ["net"], "closed")
    down = kinds(net.events[A], IkeSaDown)[-1]
    assert down.restart_ike_id is None and a.ike_sas() == []


def test_dpd_action_trap_traps_the_children_of_a_dead_peer_and_initiates_nothing():
    a_conn = conn(A, B, "a.example", "b.example", A_NET, B_NET, extra={"dpd_delay": 5, "dpd_action": "trap"})
    a, b, net = pair(a_conn=a_conn, retransmit=RetransmitPolicy(timeout=0.5, base=2.0, tries=3))
    up(a, b, net)
    net.loss = lambda d: True
    advance(net, 0.0, 30.0)
    down = kinds(net.events[A], IkeSaDown)
    assert len(down) == 1 and down[0].restart_ike_id is None and a.ike_sas() == []
    assert kinds(net.events[A], TrapRequested) == [TrapRequested("gw", ["net"], "timeout")]


def test_trap_settings_in_the_configuration():
    def parse(**kw):
        c = {"remote_addrs": ["192.0.2.2"], "psk": "a long enough secret",
             "local": {"auth": "psk", "id": "a"}, "remote": {"auth": "psk", "id": "b"},
             "children": {"net": {"local_ts": ["198.51.100.0/24"], "remote_ts": ["203.0.113.0/24"]},
                          "other": {"start_action": "start"}}}
        for k, v in kw.items():
            if k.startswith("child_"):
                c["children"]["net"][k[6:]] = v
            else:
                c[k] = v
        return parse_connections({"gw": c})["gw"]
    assert parse(start_action="trap").trapped_children() == ["net"]          # "other" says start
    assert parse(child_start_action="trap").trapped_children() == ["net"]
    assert parse(dpd_action="trap").dpd_action == "trap" and parse().trapped_children() == []
    assert parse(child_close_action="trap").children["net"].close_action == "trap"
    for kw, key in (({"start_action": "trap", "remote_addrs": ["%any"]}, "connections.gw.remote_addrs"),
                    ({"child_close_action": "trap", "remote_addrs": ["%any"]},
                     "connections.gw.children.net.close_action"),
                    ({"dpd_action": "trap", "remote_addrs": ["%any"]}, "connections.gw.dpd_action"),
                    ({"start_action": "sometimes"}, "connections.gw.start_action")):
        with pytest.raises(ConfigError) as e:
            parse(**kw)
        assert e.value.key == key, e.value


def test_a_reload_drops_the_traps_of_removed_and_changed_connections_and_traps_what_the_new_file_names():
    """swanctl --load-all semantics for traps: a removed connection's trap goes (what it held is
    dropped and counted), a changed one is trapped as its new file says, an added one is trapped."""
    def trapped(n, net):
        return conn(A, B, "a.example", "b.example", "198.51.100.0/24", net, extra={"start_action": "trap"})
    engine = IkeEngine(parse_connections({"gw1": trapped(1, "203.0.113.0/25"), "gw2": trapped(2, "203.0.113.128/25")}),
                       ALL, strict=True)
    t = TrapTable()
    od = OnDemand(engine, lambda *a, **kw: None, t, None, BoardPool(), clock=lambda: 0.0)
    od.start()
    assert sorted((p.conn, str(p.remote_nets[0])) for p in t.policies) == [
        ("gw1", "203.0.113.0/25"), ("gw2", "203.0.113.128/25")]
    assert t.hold(b"x", IP("198.51.100.1"), IP("203.0.113.200"), 0.0)[0]            # gw2 holds one
    new = parse_connections({"gw1": trapped(1, "203.0.113.0/26"), "gw3": trapped(3, "192.0.2.0/24")})
    res = engine.load_connections(new, 1.0)
    assert (res.changed, res.added, res.removed) == (["gw1"], ["gw3"], ["gw2"])
    od.reloaded(res.removed, res.changed, res.added)
    assert sorted((p.conn, str(p.remote_nets[0])) for p in t.policies) == [
        ("gw1", "203.0.113.0/26"), ("gw3", "192.0.2.0/24")]
    assert t.stats["trap_hold_expired"] == 1 and t.held() == 0
    assert t.hold(b"y", IP("198.51.100.1"), IP("203.0.113.200"), 1.0) == (False, None)  # gw2's net: none of ours
