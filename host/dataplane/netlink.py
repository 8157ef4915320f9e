"""Routes, policy rules and the TUN device's link settings through rtnetlink, with pyroute2's
asyncio API (AsyncIPRoute): a netlink request never blocks the event loop that carries the
heartbeats and the ESP (no `ip` subprocess, no synchronous socket).

Everything added here carries the daemon's routing protocol number (`rtm_protocol` of a route,
FRA_PROTOCOL of a rule: `ip route` and `ip rule` show it as `proto N`), so the daemon can tell
its own routes and rules from everyone else's: `flush_ours` removes exactly those — a crashed
run's leftovers at start, all of them at stop — and never another program's (strongSwan's rule
and table 220 included).

pyroute2's messages are reference cycles (each message and attribute lists itself in its
``chain``), so only the cyclic collector frees them: a route change leaves ~45 objects (~8 KB), an
address read ~31 per address (~4 KB). Left to age, they wait for collections that a daemon whose
other objects live long seldom makes — none ran while 500 tunnels came up — and stay resident
meanwhile, with the memory pools they hold. So every request here ends by collecting the young
generations, while its messages are still in them (cheap: those generations hold what was made
since the last few hundred allocations, not the daemon's SAs).
"""
from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import socket

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from host.dataplane.tun import TunError

# pyroute2 logs every netlink message at DEBUG: the daemon's debug level is about IKE and boards
logging.getLogger("pyroute2").setLevel(logging.WARNING)

FIB_RULE_INVERT = 0x2          # linux/fib_rules.h: the rule matches what its selectors do not
FAMILIES = (socket.AF_INET, socket.AF_INET6)
RT_SCOPE_UNIVERSE = 0


def collects_young(request):
    """An Rtnl request that collects the young generations when it is over (the module's
    docstring says why), whether it succeeded or raised."""
    @functools.wraps(request)
    async def run(*args, **kw):
        try:
            return await request(*args, **kw)
        finally:
            gc.collect(1)
    return run


def family_of(net) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


class Rtnl:
    """One rtnetlink socket of the daemon; ``proto`` tags what it adds."""

    def __init__(self, proto: int, netns: str | None = None):
        """netns: a named network namespace to work in (tests; the daemon works in its own)."""
        self.proto = proto
        self.netns = netns
        self._ipr = None

    async def open(self):
        # its netlink socket joins the running loop on first use
        self._ipr = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
        return self

    def close(self):
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @collects_young
    async def link_up(self, ifname: str, mtu: int, txqlen: int) -> int:
        """Set the MTU and queue length of interface ``ifname``, bring it up; its index."""
        try:
            found = await self._ipr.link_lookup(ifname=ifname)
            if not found:
                raise TunError("no interface %s" % ifname)
            await self._ipr.link("set", index=found[0], mtu=mtu, txqlen=txqlen, state="up")
        except NetlinkError as e:
            raise TunError("interface %s: mtu %d, up: %s" % (ifname, mtu, e.args[1] if len(e.args) > 1 else e),
                           "dataplane.mtu") from None
        return found[0]

    @collects_young
    async def add_bypass_rule(self, family: int, priority: int, table: int, fwmark: int):
        """`ip rule add not fwmark FWMARK lookup TABLE priority PRIORITY proto PROTO`: every packet
        but those the daemon's own sockets mark is looked up in TABLE first."""
        try:
            await self._ipr.rule("add", family=family, priority=priority, table=table, fwmark=fwmark,
                                 fwmask=0xFFFFFFFF, flags=FIB_RULE_INVERT, protocol=self.proto)
        except NetlinkError as e:
            raise TunError("ip rule (priority %d, table %d, IPv%d): %s" % (
                priority, table, 4 if family == socket.AF_INET else 6, e.args[1] if len(e.args) > 1 else e),
                "dataplane.rule_priority") from None

    @collects_young
    async def flush_ours(self) -> tuple[int, int]:
        """Delete every rule and route (any table, both families) that carries our protocol
        number; returns (rules, routes) deleted."""
        rules = routes = 0
        for family in FAMILIES:
            for msg in [r async for r in await self._ipr.rule("dump", family=family)]:
                if msg.get("protocol") == self.proto:
                    try:
                        await self._ipr.rule("del", family=family, priority=msg.get("priority"),
                                             table=msg.get("table"), fwmark=msg.get("fwmark"),
                                             fwmask=msg.get("fwmask"), flags=msg["flags"], protocol=self.proto)
                        rules += 1
                    except NetlinkError:
                        pass
            for msg in [r async for r in await self._ipr.route("dump", family=family, proto=self.proto)]:
                if msg["proto"] != self.proto:
                    continue
                dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
                try:
                    await self._ipr.route("del", family=family, dst="%s/%d" % (dst, msg["dst_len"]),
                                          table=msg.get("table"), proto=self.proto, scope=msg["scope"])
                    routes += 1
                except NetlinkError:
                    pass
        return rules, routes

    @collects_young
    async def replace_route(self, net, ifindex: int, table: int, src=None):
        """`ip route replace NET dev IFINDEX table TABLE proto PROTO [src SRC]`."""
        kw = {"prefsrc": str(src)} if src is not None else {}
        try:
            await self._ipr.route("replace", family=family_of(net), dst=str(net), oif=ifindex, table=table,
                                  proto=self.proto, **kw)
        except NetlinkError as e:
            raise TunError("ip route replace %s table %d%s: %s" % (
                net, table, " src %s" % src if src is not None else "", e.args[1] if len(e.args) > 1 else e)) from None

    @collects_young
    async def delete_route(self, net, ifindex: int, table: int):
        try:
            await self._ipr.route("del", family=family_of(net), dst=str(net), oif=ifindex, table=table,
                                  proto=self.proto)
        except NetlinkError:
            pass                   # gone already (the interface went, or someone removed it)

    @collects_young
    async def addresses(self) -> list:
        """This host's global-scope addresses (no loopback, no link-local), interface by
        interface, as ipaddress objects: the candidates for a route's source."""
        out = []
        async for msg in await self._ipr.addr("dump"):
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            a = msg.get("local") or msg.get("address")
            if a:
                out.append((msg["index"], ipaddress.ip_address(a)))
        out.sort(key=lambda x: x[0])
        return [a for _, a in out]
