"""The TUN device's routes to the Child SAs' remote selectors.

Each remote network of an installed Child SA is routed into the TUN device (in the daemon's own
table, host/dataplane/tun.py), from the SA's own inner address when its local selector is a
single one; a network goes when the last Child SA that covers it goes.
"""
import logging

from host.dataplane.tun import TunError

log = logging.getLogger("ikeoffloadd")


class TunRoutes:
    def __init__(self, tun):
        self.tun = tun

    def add(self, route):
        """Route a newly installed Child SA's remote networks into the tunnel (a route that cannot
        be added is logged: the SA stays, reachable through routes the operator adds)."""
        src = next((str(n.network_address) for n in route.local_nets if n.num_addresses == 1), None)
        for net in route.remote_nets:
            try:
                self.tun.add_route(str(net), src)
            except TunError as e:
                log.warning("route %s: %s", net, e)

    def remove(self, route, remaining):
        """A Child SA left the data path: its remote networks that no ``remaining`` route covers go."""
        still = {str(n) for r in remaining for n in r.remote_nets}
        for net in route.remote_nets:
            if str(net) not in still:
                self.tun.del_route(str(net))
