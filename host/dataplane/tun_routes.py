"""The daemon's routing on the router: what goes into the TUN device, and what never does.

* Policy rules, IPv4 and IPv6: ``not fwmark FWMARK lookup TABLE`` at ``rule_priority`` — every
  packet is looked up in the daemon's table first, except those its own sockets mark (IKE on
  500/4500, ESP-in-UDP, NAT-keepalives: host/ike_driver.py sets SO_MARK on them). So no selector
  — 0.0.0.0/0, ::/0, "dynamic" — can route the daemon's own packets into its own tunnel. (A
  socket mark and a rule that skips marked packets is strongSwan's way as well: its socket
  plugin's fwmark and kernel-netlink's ``fwmark = !MARK``.)
* Routes in TABLE: each remote network of an installed Child SA and of a trap policy (on demand),
  into the TUN device; a network stays while any SA or trap needs it (counted). A route's source
  is a global address of this host inside the local selectors of what needs it (the way
  strongSwan's install_routes picks one): traffic the router itself originates toward a remote
  network leaves through the tunnel with an address the peer's selectors accept.
* Only ours: every rule and route carries the daemon's routing protocol number (``proto``). At
  start, those a crashed run left are removed; at stop, all of ours; nothing else is ever touched
  (strongSwan's rule and table 220 included).
* Nothing waits: route changes go to one worker task that makes the netlink calls in order
  (host/dataplane/netlink.py, pyroute2's asyncio API); the install path and the traps never wait
  for them, and the event loop never blocks on them.
"""
import asyncio
import collections
import logging

from host.dataplane.netlink import FAMILIES
from host.dataplane.tun import TXQUEUELEN, TunError

log = logging.getLogger("ikeoffloadd")


def pick_source(addresses, local_nets, version):
    """The first of ``addresses`` (this host's, in interface order) of IP ``version`` inside one of
    ``local_nets``; None if none is."""
    for a in addresses:
        if a.version == version and any(a in n for n in local_nets if n.version == version):
            return a
    return None


class TunRoutes:
    def __init__(self, rtnl, ifname, *, mtu, table, priority, fwmark):
        """rtnl: a host.dataplane.netlink.Rtnl; ifname: the TUN device; table, priority: the
        routing table and its rule's priority; fwmark: the mark on the daemon's own sockets."""
        self.rtnl = rtnl
        self.ifname, self.mtu = ifname, mtu
        self.table, self.priority, self.fwmark = table, priority, fwmark
        self.ifindex = None
        self.refs = collections.Counter()       # remote network -> Child SAs and traps that need it
        self.local_nets = {}                    # remote network -> [local networks of those]
        self.installed = {}                     # remote network -> the source it was installed with
        self.errors = 0
        self._ops = None
        self._worker = None

    # ---- life ---------------------------------------------------------------------------------
    async def start(self):
        """Bring the TUN device up, remove what a crashed run left, add the rules."""
        await self.rtnl.open()
        self.ifindex = await self.rtnl.link_up(self.ifname, self.mtu, TXQUEUELEN)
        rules, routes = await self.rtnl.flush_ours()
        if rules or routes:
            log.warning("removed %d rule(s) and %d route(s) a previous run left (routing protocol %d)",
                        rules, routes, self.rtnl.proto)
        for family in FAMILIES:
            await self.rtnl.add_bypass_rule(family, self.priority, self.table, self.fwmark)
        self._ops = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def settle(self):
        """Wait until every route change asked for so far is made."""
        if self._ops is not None:
            await self._ops.join()

    async def close(self, timeout=2.0):
        """Our routes and rules go (the kernel drops the routes with the device anyway)."""
        if self._worker is not None:
            try:
                await asyncio.wait_for(self.settle(), timeout)
            except asyncio.TimeoutError:
                pass
            self._worker.cancel()
            self._worker = None
        try:
            await self.rtnl.flush_ours()
        finally:
            self.rtnl.close()

    # ---- what needs which route ---------------------------------------------------------------
    def add(self, route):
        """A Child SA was installed (a ChildRoute): its remote networks into the tunnel."""
        self._use(route.remote_nets, route.local_nets)

    def remove(self, route, remaining=None):
        """A Child SA left the data path: its remote networks no other SA or trap needs go."""
        self._unuse(route.remote_nets)

    def trap(self, policy):
        """A trap policy (host/dataplane/traps.py): its remote networks into the tunnel, no SA yet."""
        self._use(policy.remote_nets, policy.local_nets)

    def untrap(self, policy):
        """A trap policy went (a reload): its remote networks no SA or other trap needs go."""
        self._unuse(policy.remote_nets)

    def _use(self, remote_nets, local_nets):
        for net in remote_nets:
            self.refs[net] += 1
            known = self.local_nets.setdefault(net, [])
            known.extend(n for n in local_nets if n not in known)
            if self.refs[net] == 1:
                self._submit(net)

    def _unuse(self, remote_nets):
        for net in remote_nets:
            if self.refs[net] <= 0:
                continue
            self.refs[net] -= 1
            if not self.refs[net]:
                del self.refs[net]
                self.local_nets.pop(net, None)
                self._submit(net)

    def _submit(self, net):
        if self._ops is not None:
            self._ops.put_nowait(net)

    async def _work(self):
        """Make the kernel's table what ``refs`` says, one network at a time, in order."""
        addresses = None        # this host's, read once for a burst of changes (hundreds of tunnels)
        while True:
            net = await self._ops.get()
            try:
                if self.refs.get(net):
                    if addresses is None:
                        addresses = await self.rtnl.addresses()
                    src = pick_source(addresses, self.local_nets.get(net, ()), net.version)
                    if self.installed.get(net, False) != src:
                        await self.rtnl.replace_route(net, self.ifindex, self.table, src)
                        self.installed[net] = src
                elif net in self.installed:
                    del self.installed[net]
                    await self.rtnl.delete_route(net, self.ifindex, self.table)
            except TunError as e:
                self.errors += 1
                log.warning("route %s: %s", net, e)
            except Exception:
                self.errors += 1
                log.exception("route %s", net)
            finally:
                self._ops.task_done()
                if self._ops.empty():
                    addresses = None
