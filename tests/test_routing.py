"""Routing on a real router, end to end: ikeoffloadd with a simulated board in one network namespace,
strongSwan charon (kernel-libipsec) or a second ikeoffloadd in the other, real pings
(testbed/routing.py). Root; CI runs it.

* Full tunnels: 0.0.0.0/0 and ::/0 both ways (one Child SA for both families), over IPv4 and over
  IPv6 (so IPv6 inside IPv4 and IPv4 inside IPv6 as well), our Child SA rekeyed every 5 s and
  our IKE SA every 8 s, both sides checking liveness every 2 s, 50 pings a second each family:
  none may be lost, and charon's IKE SA is ours throughout. CI pings 15 s; ``pytest --full``
  60 s. Once more with the sim standing in for an esp32-devkitc (its UART at 921600 baud).
* On demand (start_action = trap): no SA at start; the router's own first ping (no source
  address given: the route's, inside the local selectors) asks for the tunnel, waits for it and
  is answered; after a board reset the next packet brings the tunnel back.
* strongSwan beside us: a charon in the daemon's own namespace, with its rule and table 220 and a
  tunnel of its own, keeps them across our start, stop and crash.
* Transport mode between the two gateways' own addresses (ikeoffloadd on both ends: charon's
  kernel-libipsec runs tunnel mode only): what crosses the wire is ESP-in-UDP, never the pings.
"""
import os
import signal
import time

import pytest

from testbed import charon as charon_mod
from testbed.demo import PSK
from testbed.netns import run
from testbed.ping import Pinger
from testbed.routing import INNER_A, INNER_B, OUTER, RoutingBed, Tap

pytestmark = [pytest.mark.strongswan,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500)")]

ALL = ["0.0.0.0/0", "::/0"]
LAN_A, LAN_B = ["198.51.100.0/24", "2001:db8:a::/48"], ["203.0.113.0/24", "2001:db8:b::/48"]
TABLE, PRIO, PROTO = 210, 210, 149        # the daemon's defaults (host/config.py)
PING_PAYLOAD = 8 + 15                      # testbed/ping.py: a timestamp and b"ikeoffload-demo"


@pytest.fixture(scope="module")
def soak(request):
    """Seconds of pings through the rekeys: 15 in CI, 60 with ``--full`` (or ROUTING_SOAK=N)."""
    if os.environ.get("ROUTING_SOAK"):
        return float(os.environ["ROUTING_SOAK"])
    return 60.0 if request.config.getoption("--full") else 15.0


def wait_for(what, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    return what()


# ---------------------------------------------------------------- full tunnels

def pytest_generate_tests(metafunc):
    """The boards the full tunnel runs on: the sim; with --full also the sim standing in for an
    esp32-devkitc (its UART and CPU: on a loaded 2-core machine its emulated CPU falls behind 100
    pings a second, which is the busy-board tests' subject, not routing's)."""
    if "profile" in metafunc.fixturenames:
        metafunc.parametrize("profile", ["sim"] + (["esp32-devkitc"] if metafunc.config.getoption("--full") else []))


@pytest.mark.parametrize("outer", [4, 6], ids=["over-ipv4", "over-ipv6"])
def test_full_tunnel_both_families_through_rekeys_loses_nothing(outer, profile, soak):
    """0.0.0.0/0 and ::/0 on both sides; pings inside IPv4 and IPv6, over IPv4 or IPv6 (so v6 in
    v4 and v4 in v6 as well); our Child SA rekeyed every 5 s and our IKE SA every 8 s."""
    b = RoutingBed(outer=outer, ours=(ALL, ALL), theirs=(ALL, ALL), child_rekey=5, ike_rekey=8,
                   dpd=10, peer_dpd=2, profile=profile)
    try:
        b.start()
        first = b.wait_tunnels()[0]
        b.wait_routes({4: ["default"], 6: ["default"]})         # 0.0.0.0/0 and ::/0
        pingers = [Pinger(b.net.ns_a, INNER_A[f], INNER_B[f], interval=0.02) for f in (4, 6)]
        for p in pingers:
            p.start()
        time.sleep(soak)
        for p in pingers:
            p.stop()
        # with the traffic gone, charon checks our liveness (its dpd_delay 2 s, ours 10 s): its
        # request and our answer cross the full tunnel's routing, which must not capture IKE
        wait_for(lambda: b.ctl("stats").get("engine_liveness_answered"), 8, step=0.2)
        stats = b.ctl("stats")
        for f, p in zip((4, 6), pingers):
            lost = p.lost_before_stop()
            assert len(p.sent) >= 45 * soak and lost == 0, "IPv%d inside IPv%d: %s\n%s" % (
                f, outer, p.summary(), b.log_tail(60))
        # it was rekeyed as asked (our IKE requests every few seconds, answered), and charon's
        # liveness check was answered (which proves charon alive to us too)
        assert stats.get("engine_child_rekeys_done", 0) >= soak // 5 - 1, stats
        assert stats.get("engine_ike_rekeys_done", 0) >= soak // 8 - 1 and soak >= 8, stats
        assert stats.get("engine_liveness_answered", 0) >= 1, stats
        assert not stats.get("engine_liveness_failures") and not stats.get("engine_retransmits"), stats
        now = b.ctl("list-sas")
        assert len(now) == 1 and now[0]["ike_id"] != first["ike_id"], now
        sas = b.charon.list_sas()
        assert len(sas) == 1 and sas[0]["state"] == b"ESTABLISHED", sas
        # the daemon's own IKE and ESP never entered its tunnel: no packet to the peer's outer address
        # reached the TUN device (the data path would count it as out_no_sa or send it to the board)
        assert stats["host_drops"].get("out_no_sa", 0) <= 2, stats["host_drops"]   # IPv6 router solicitations
        print("\nfull tunnel over IPv%d, %s: %d + %d pings in %.0f s, none lost; %d child and %d IKE rekeys, "
              "%d liveness checks answered" % (outer, profile, len(pingers[0].sent), len(pingers[1].sent), soak,
                                               stats["engine_child_rekeys_done"], stats["engine_ike_rekeys_done"],
                                               stats["engine_liveness_answered"]))
    finally:
        b.stop()


def test_listen_on_both_families_and_the_rule_and_routes_of_each():
    """daemon.listen with an IPv4 and an IPv6 address: IKE over IPv6 while the IPv4 sockets stay
    bound; the daemon's rule in both families, its routes tagged in its own table; pings from a
    protected host and from the router itself."""
    b = RoutingBed(outer=6, listen=[OUTER[4][0], OUTER[6][0]], ours=(LAN_A, LAN_B), theirs=(LAN_B, LAN_A))
    try:
        b.start()
        b.wait_tunnels()
        socks = run("ip", "netns", "exec", b.net.ns_a, "ss", "-uln").stdout
        for a in ("192.0.2.1:500", "192.0.2.1:4500", "[2001:db8::1]:500", "[2001:db8::1]:4500"):
            assert a in socks, socks
        for fam in ("-4", "-6"):
            assert b.ip(fam, "rule", "show", "priority", str(PRIO)).split() == \
                ["%d:" % PRIO, "not", "from", "all", "fwmark", "0x494b4f", "lookup", str(TABLE), "proto", str(PROTO)]
        v4 = b.ip("route", "show", "table", str(TABLE))
        v6 = b.ip("-6", "route", "show", "table", str(TABLE))
        assert "203.0.113.0/24 dev ikeo0 proto %d src 198.51.100.1" % PROTO in v4, v4
        assert "2001:db8:b::/48 dev ikeo0 proto %d src 2001:db8:a::1" % PROTO in v6, v6
        # a host behind the router (its address given), and the router's own traffic (none given:
        # the route's source, asserted above to be inside the local selectors)
        for f in (4, 6):
            for src in (INNER_A[f], None):
                p = Pinger(b.net.ns_a, src, INNER_B[f], interval=0.02, count=20)
                p.start()
                wait_for(lambda p=p: len(p.replies) == 20, 5)
                p.stop()
                assert p.ok, "IPv%d from %s: %s" % (f, src or "the router", p.summary())
    finally:
        b.stop()


# ---------------------------------------------------------------- on demand, and strongSwan beside us

@pytest.fixture(scope="module")
def trap_bed():
    b = RoutingBed(ours=(LAN_A, LAN_B), theirs=(LAN_B, LAN_A), start_action="trap")
    try:
        b.start()
        yield b
    finally:
        b.stop()


def test_trap_no_sa_at_start_and_the_routers_own_first_ping_brings_the_tunnel(trap_bed):
    b = trap_bed
    time.sleep(0.5)
    assert b.ctl("list-sas") == [] and b.charon.list_sas() == [] and b.sim(0, "sad")["sas"] == []
    # the trap's routes are there from the start, each with a source inside the local selectors
    assert "203.0.113.0/24 dev ikeo0 proto %d src 198.51.100.1" % PROTO in b.ip("route", "show", "table", str(TABLE))
    assert "2001:db8:b::/48 dev ikeo0 proto %d src 2001:db8:a::1" % PROTO in \
        b.ip("-6", "route", "show", "table", str(TABLE))
    for f in (4, 6):
        p = Pinger(b.net.ns_a, None, INNER_B[f], interval=1.0, count=1)      # the router's own: no source
        p.start()
        wait_for(lambda p=p: p.replies, 5)
        p.stop()
        assert p.ok, "IPv%d: %s\n%s" % (f, p.summary(), b.log_tail(30))
    stats = b.ctl("stats")
    assert stats["datapath_trap_triggers"] == 1, stats           # one negotiation, for the first packet
    assert stats["datapath_trap_held"] >= 1 and stats["datapath_trap_released"] == stats["datapath_trap_held"]
    assert "trap_hold_overflow" not in stats["host_drops"] and "trap_hold_expired" not in stats["host_drops"]
    (sa,) = b.ctl("list-sas")
    assert sa["children"][0]["remote_ts"] == LAN_B


def test_trap_after_a_board_reset_the_next_packet_brings_the_tunnel_back(trap_bed):
    b = trap_bed
    p = Pinger(b.net.ns_a, None, INNER_B[4], interval=0.02)
    p.start()
    try:
        assert wait_for(lambda: p.replies, 5), b.log_tail(30)
        before = b.ctl("stats")
        t0 = time.monotonic()
        b.sim(0, "reset")
        assert wait_for(lambda: p.first_reply_sent_after(t0), 5), b.log_tail(40)
        sent, replied = p.first_reply_sent_after(t0)
    finally:
        p.stop()
    after = b.ctl("stats")
    inc = after["incidents"][-1]
    assert inc["ike_sas_flushed"] == 1 and inc["reinitiated"] == []     # the flush restarted nothing ...
    # ... a packet did, once: a packet that came while the board was not ready yet asked nothing
    # (no board to put a Child SA on), the next one asked for one IKE SA
    def delta(k):
        return after.get(k, 0) - before.get(k, 0)
    assert delta("trap_asked_ike") == 1 and delta("trap_asked_child") == 0, (before, after)
    assert delta("datapath_trap_triggers") == 1 + delta("trap_no_board"), (before, after)
    assert replied - t0 < 0.5, "the tunnel came back %.0f ms after the reset" % ((replied - t0) * 1000)
    print("\ntrap: board reset -> first reply through the new tunnel %.0f ms (that ping sent %.0f ms after the "
          "reset)" % ((replied - t0) * 1000, (sent - t0) * 1000))


def snapshot(b):
    """A charon's policy routing in the daemon's namespace: its rules at 220 and table 220."""
    return (b.ip("rule", "show", "priority", "220"), b.ip("-6", "rule", "show", "priority", "220"),
            b.ip("route", "show", "table", "220"), b.ip("-6", "route", "show", "table", "220"))


def ours(b):
    return (b.ip("rule", "show", "priority", str(PRIO)).strip().splitlines(),
            b.ip("-6", "rule", "show", "priority", str(PRIO)).strip().splitlines())


def test_a_charon_in_our_namespace_keeps_its_rules_and_routes_across_our_start_stop_and_crash(trap_bed):
    b = trap_bed
    run("ip", "-n", b.net.ns_a, "addr", "add", "10.10.0.1/32", "dev", "lo")
    run("ip", "-n", b.net.ns_b, "addr", "add", "10.20.0.1/32", "dev", "lo")
    co = {"version": "2", "proposals": ["aes256gcm16-prfsha256-x25519"], "encap": "yes", "mobike": "no"}
    b.charon.load_psk(PSK, ["co-a", "co-b"], key_id="co")
    b.charon.load_conn("co", dict(co, local_addrs=[OUTER[4][1]], remote_addrs=[OUTER[4][0]],
                                  local={"auth": "psk", "id": "co-b"}, remote={"auth": "psk", "id": "co-a"},
                                  children={"t": {"local_ts": ["10.20.0.0/24"], "remote_ts": ["10.10.0.0/24"],
                                                  "esp_proposals": ["aes256gcm16"]}}))
    neighbour = charon_mod.Charon(b.net.ns_a, os.path.join(b.state, "co"), port=1500, natt_port=14500, loglevel=0)
    b.extra_charons.append(neighbour)
    neighbour.start()
    neighbour.load_psk(PSK, ["co-a", "co-b"])
    neighbour.load_conn("co", dict(co, local_addrs=[OUTER[4][0]], remote_addrs=[OUTER[4][1]], remote_port="500",
                                   local={"auth": "psk", "id": "co-a"}, remote={"auth": "psk", "id": "co-b"},
                                   children={"t": {"local_ts": ["10.10.0.0/24"], "remote_ts": ["10.20.0.0/24"],
                                                   "esp_proposals": ["aes256gcm16"]}}))
    neighbour.initiate("t", "co")
    theirs = snapshot(b)
    assert "from all lookup 220" in theirs[0] and "10.20.0.0/24 dev ipsec0" in theirs[2], theirs

    def neighbour_works():
        r = run("ip", "netns", "exec", b.net.ns_a, "ping", "-c", "1", "-W", "2", "10.20.0.1", check=False)
        return r.returncode == 0

    rule = ["%d:\tnot from all fwmark 0x494b4f lookup %d proto %d" % (PRIO, TABLE, PROTO)]
    for step in ("stop", "start", "crash", "start"):
        if step == "stop":
            b.stop_daemon(signal.SIGTERM)
            assert ours(b) == ([], []) and b.ip("route", "show", "table", "all", "proto", str(PROTO)) == ""
        elif step == "crash":
            b.stop_daemon(signal.SIGKILL)
            assert ours(b) == (rule, rule)                        # a crash leaves ours behind ...
        else:
            b.start_daemon()
            assert wait_for(lambda: ours(b) == (rule, rule), 5), ours(b)   # ... the next start replaces them
        assert snapshot(b) == theirs, (step, snapshot(b), theirs)
        assert neighbour_works(), step
    p = Pinger(b.net.ns_a, None, INNER_B[4], interval=0.05, count=5)            # and ours works too
    p.start()
    wait_for(lambda: len(p.replies) == 5, 5)
    p.stop()
    assert p.ok, p.summary() + b.log_tail(30)


# ---------------------------------------------------------------- transport mode

def test_transport_mode_between_the_gateways_is_protected_on_the_wire():
    """Both gateways ikeoffloadd, each with its board: charon 5.9.8's kernel-libipsec refuses a
    transport-mode SA ("IPsec SA: unsupported mode", then NO_PROPOSAL_CHOSEN), and this kernel has
    no ESP of its own. Selectors "dynamic": the gateways' own addresses. The pings between them
    cross the wire as ESP-in-UDP only, in transport mode."""
    b = RoutingBed(peer="ours", mode="transport", ours=(["dynamic"], ["dynamic"]), theirs=(["dynamic"], ["dynamic"]))
    try:
        b.start()
        (sa,) = b.wait_tunnels()
        child = sa["children"][0]
        assert child["mode"] == "transport", child
        tap = Tap(b.net.ns_b, b.net.if_b)
        tap.start()
        p = Pinger(b.net.ns_a, OUTER[4][0], OUTER[4][1], interval=0.02, count=50)
        p.start()
        wait_for(lambda: len(p.replies) == 50, 10)
        p.stop()
        time.sleep(0.2)
        tap.stop()
        assert p.ok, p.summary() + b.log_tail(30) + b.peer_log_tail(30)
        between = [s for s in tap.seen if {s[3], s[4]} == set(OUTER[4])]
        icmp = [s for s in between if s[2] == 1]
        assert icmp == [], icmp[:3]                             # no ping crossed in the clear
        spis = {child["spi_out"], child["spi_in"]}
        esp = [s for s in between if s[2] == 17 and 4500 in (s[5], s[6]) and int.from_bytes(s[7][:4], "big") in spis]
        assert len(esp) >= 100, (len(esp), between[:5])         # each request and each reply, as ESP
        # transport mode on the wire (RFC 4303 §3.1.1): the ciphertext holds the ICMP message and the
        # ESP trailer, no room for the inner IPv4 header tunnel mode would add (AES-GCM: 8 bytes of
        # SPI and sequence number, 8 of IV, 16 of ICV; padding to 4 bytes)
        assert b.esp_proposals == ["aes256gcm16"], b.esp_proposals
        icmp_len = 8 + PING_PAYLOAD
        plain = {s[8] - 8 - 8 - 16 for s in esp}
        assert plain == {(icmp_len + 2 + 3) // 4 * 4}, (plain, icmp_len)
        print("\ntransport mode: 50 pings between the gateways, %d ESP-in-UDP packets on the wire (%d bytes of "
              "plaintext each: the ICMP message, no inner IP header), no ICMP" % (len(esp), plain.pop()))
    finally:
        b.stop()
