"""The daemon's routes and rules over real rtnetlink (pyroute2's asyncio API) in a network namespace
of their own: tagged with the daemon's protocol number, a crashed run's removed at start, all of
ours and nothing else at stop — a strongSwan's rule and table 220 beside them stay as they were —
both families, routes counted by what needs them, sources inside the local selectors. Root."""
import asyncio
import gc
import ipaddress
import os

import pytest

from host.dataplane.netlink import Rtnl
from host.dataplane.traps import TrapPolicy
from host.dataplane.tun_routes import TunRoutes, pick_source
from testbed.netns import run, unique_prefix

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")

PROTO, TABLE, PRIO, MARK = 149, 210, 210, 0x494B4F
N = ipaddress.ip_network


class Route:
    """What TunRoutes reads of a ChildRoute."""

    def __init__(self, local, remote):
        self.local_nets, self.remote_nets = [N(x) for x in local], [N(x) for x in remote]


@pytest.fixture
def ns():
    name = unique_prefix("ikt") + "a"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "tuntap", "add", "ikeo0", "mode", "tun")
        run("ip", "-n", name, "link", "set", "ikeo0", "up")
        run("ip", "-n", name, "addr", "add", "198.51.100.1/32", "dev", "lo")
        run("ip", "-n", name, "addr", "add", "2001:db8:a::1/128", "dev", "lo")
        # a strongSwan beside us: its rule and table 220, and one of its routes in our table
        run("ip", "-n", name, "rule", "add", "priority", "220", "table", "220")
        run("ip", "-n", name, "-6", "rule", "add", "priority", "220", "table", "220")
        run("ip", "-n", name, "route", "add", "10.1.0.0/16", "dev", "ikeo0", "table", "220", "proto", "static")
        run("ip", "-n", name, "route", "add", "10.2.0.0/16", "dev", "ikeo0", "table", str(TABLE), "proto", "static")
        # what a crashed run of ours left: its rule and a route
        run("ip", "-n", name, "rule", "add", "priority", str(PRIO), "not", "fwmark", hex(MARK), "table", str(TABLE),
            "proto", str(PROTO))
        run("ip", "-n", name, "route", "add", "10.9.0.0/16", "dev", "ikeo0", "table", str(TABLE), "proto", str(PROTO))
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def ip(ns, *args):
    return run("ip", "-n", ns, *args).stdout


def foreign(ns):
    return (ip(ns, "rule", "show", "priority", "220"), ip(ns, "-6", "rule", "show", "priority", "220"),
            ip(ns, "route", "show", "table", "220"), ip(ns, "route", "show", "table", str(TABLE), "proto", "static"))


def test_only_our_rules_and_routes_are_touched(ns):
    before = foreign(ns)
    assert "10.1.0.0/16" in before[2] and "10.2.0.0/16" in before[3]

    async def scenario():
        routes = TunRoutes(Rtnl(PROTO, netns=ns), "ikeo0", mtu=1400, table=TABLE, priority=PRIO, fwmark=MARK)
        await routes.start()
        seen = {}
        for fam in ("-4", "-6"):
            seen["rules" + fam] = ip(ns, fam, "rule", "show", "priority", str(PRIO))
        seen["link"] = ip(ns, "link", "show", "ikeo0")
        full = Route(["0.0.0.0/0", "::/0"], ["0.0.0.0/0", "::/0"])
        lan = Route(["198.51.100.0/24"], ["203.0.113.0/24"])
        routes.add(full)
        routes.add(lan)
        routes.trap(TrapPolicy("gw", "net", lan.local_nets, lan.remote_nets))
        await routes.settle()
        seen["v4"] = ip(ns, "route", "show", "table", str(TABLE), "proto", str(PROTO))
        seen["v6"] = ip(ns, "-6", "route", "show", "table", str(TABLE), "proto", str(PROTO))
        routes.remove(lan)               # the trap still needs 203.0.113.0/24
        routes.remove(full)
        await routes.settle()
        seen["after"] = ip(ns, "route", "show", "table", str(TABLE), "proto", str(PROTO)) + \
            ip(ns, "-6", "route", "show", "table", str(TABLE), "proto", str(PROTO))
        await routes.close()
        return seen

    seen = asyncio.run(scenario())
    # one rule per family, ours (tagged), replacing the crashed run's; "not fwmark": our sockets skip it
    for fam in ("-4", "-6"):
        rules = seen["rules" + fam].strip().splitlines()
        assert rules == ["%d:\tnot from all fwmark %#x lookup %d proto %d" % (PRIO, MARK, TABLE, PROTO)], rules
    assert "mtu 1400" in seen["link"] and ",UP" in seen["link"] and "qlen 2000" in seen["link"], seen["link"]
    assert "10.9.0.0/16" not in seen["v4"]                     # the crashed run's route went at start
    # (`ip route show proto N` lists only routes tagged N, and leaves the tag out of each line)
    assert "default dev ikeo0 src 198.51.100.1" in seen["v4"]
    assert "203.0.113.0/24 dev ikeo0 src 198.51.100.1" in seen["v4"]
    assert "default dev ikeo0 src 2001:db8:a::1" in seen["v6"]
    assert seen["after"].split()[:5] == ["203.0.113.0/24", "dev", "ikeo0", "src", "198.51.100.1"], seen["after"]
    # at stop: none of ours is left, and strongSwan's rule, table 220 and its route in our table are as they were
    for fam in ("-4", "-6"):
        assert ip(ns, fam, "rule", "show", "priority", str(PRIO)) == ""
    assert ip(ns, "route", "show", "table", "all", "proto", str(PROTO)) == ""
    assert foreign(ns) == before


def test_a_route_that_cannot_be_added_is_logged_and_the_rest_go_on(ns, caplog):
    async def scenario():
        routes = TunRoutes(Rtnl(PROTO, netns=ns), "ikeo0", mtu=1400, table=TABLE, priority=PRIO, fwmark=MARK)
        await routes.start()
        routes.ifindex = 999999                      # the device vanished under us
        routes.add(Route(["198.51.100.0/24"], ["203.0.113.0/24"]))
        await routes.settle()
        errors = routes.errors
        await routes.close()
        return errors

    assert asyncio.run(scenario()) == 1
    assert "route 203.0.113.0/24" in caplog.text


def test_netlink_requests_leave_no_cyclic_garbage(ns):
    """pyroute2's messages are reference cycles, which a daemon of long-lived objects may not
    collect for a long time (none was while 500 tunnels came up, and their resident memory grew by
    ~4 KB per tunnel): each request collects them while they are young. Automatic collection is
    off here, so whatever a request leaves is found by the last collection."""
    async def scenario():
        rtnl = await Rtnl(PROTO, netns=ns).open()
        try:
            idx = await rtnl.link_up("ikeo0", 1400, 1000)
            gc.collect()
            gc.disable()
            try:
                nets = [N("10.20.%d.0/24" % i) for i in range(20)] + [N("2001:db8:20:%x::/64" % i) for i in range(20)]
                for net in nets:
                    await rtnl.replace_route(net, idx, TABLE)
                found = await rtnl.addresses()
                for net in nets:
                    await rtnl.delete_route(net, idx, TABLE)
                return found, gc.collect()
            finally:
                gc.enable()
        finally:
            rtnl.close()

    found, left = asyncio.run(scenario())
    assert ipaddress.ip_address("198.51.100.1") in found
    # 80 route requests and an address read: ~3,700 objects left behind without the collections
    assert left < 80, left


def test_pick_source_takes_the_first_address_inside_the_local_selectors():
    addrs = [ipaddress.ip_address(a) for a in ("192.0.2.1", "198.51.100.1", "2001:db8::1", "2001:db8:a::1")]
    assert pick_source(addrs, [N("198.51.100.0/24")], 4) == ipaddress.ip_address("198.51.100.1")
    assert pick_source(addrs, [N("0.0.0.0/0")], 4) == ipaddress.ip_address("192.0.2.1")
    assert pick_source(addrs, [N("2001:db8:a::/48"), N("198.51.100.0/24")], 6) == ipaddress.ip_address("2001:db8:a::1")
    assert pick_source(addrs, [N("10.0.0.0/8")], 4) is None
