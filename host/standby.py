"""What the daemon does when keepalived moves it between active and standby (host/ha.py decides).

Activate: IKE datagrams and ESP are taken again, and every ``start_action = "start"`` connection
is initiated — with INITIAL_CONTACT, since no other IKE SA with the peer exists here (RFC 7296
§2.4), so the peer drops what the old active side left. Requests for IKE SAs we never had are
answered with INVALID_IKE_SPI by the engine (§2.21.4, ``ike.invalid_ike_spi``), ESP for SPIs we
never had with an unprotected INVALID_SPI (§1.5, ``ike.unprotected_invalid_spi``).

Deactivate: nothing more is taken from the address, every IKE SA is dropped (a best-effort
Delete first when we were active: still authentic, and sent even though keepalived may already
have taken the address away — the sockets may send from it, see IkeUdpEndpoint ``transparent``),
their Child SAs leave the boards, and every ready board is flushed so that it holds nothing a
later MASTER did not negotiate. The boards stay open, heartbeats go on.
"""
import logging
import socket
import time

from host.ha import Activate, Deactivate, Role

log = logging.getLogger("ikeoffloadd")


class Standby:
    def __init__(self, ha, engine, udp, clients, recovery, start_connections):
        """ha: the HaState; udp: the IkeUdpEndpoint (its ``accepting`` gate); clients: board name
        -> BoardClient; recovery: BoardLossRecovery (its pending re-initiations); start_connections():
        initiate the start connections."""
        self.ha = ha
        self.engine = engine
        self.udp = udp
        self.clients = clients
        self.recovery = recovery
        self.start_connections = start_connections
        self.udp.accepting = ha.active
        self.transitions = []              # (monotonic time, state, IKE SAs dropped, Deletes sent)

    def address_here(self):
        """Is the virtual address on one of our interfaces (keepalived put it there)? Only asked
        before keepalived told us a role: a bind without IP_FREEBIND succeeds only then."""
        if self.ha.role is not Role.UNKNOWN:
            return False
        ip = self.udp.local_ip
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 0))
            except OSError:
                return False
        return True

    def status(self):
        return self.ha.status(time.monotonic(), self.address_here())

    async def set(self, state):
        """keepalived says ``state``; returns the status after acting on it."""
        now = time.monotonic()
        for action in self.ha.set(state, now):
            if isinstance(action, Activate):
                self._activate(action, now)
            elif isinstance(action, Deactivate):
                await self._deactivate(action, now)
        return self.status()

    def _activate(self, action, now):
        self.udp.accepting = True
        n = len(self.start_connections(force=True) or [])
        log.warning("HA %s: active on %s; initiating %d connection(s) with INITIAL_CONTACT",
                    action.reason, self.udp.local_ip, n)
        self.transitions.append((now, "master", 0, 0))

    async def _deactivate(self, action, now):
        self.udp.accepting = False
        self.recovery.cancel_restarts()
        ids = [sa.ike_id for sa in self.engine.ctx.by_id.values()]
        deletes = 0
        for ike_id in ids:
            sa = self.engine.ike_sa(ike_id)
            if sa is None:
                continue
            send = action.deletes and sa.established_at is not None
            deletes += send
            self.udp.call(self.engine.drop_ike, ike_id, reason="HA %s" % action.reason, send_delete=send)
        flushed = []
        for name, client in self.clients.items():
            if client.ready:
                if await client.flush():
                    flushed.append(name)
                else:
                    log.warning("HA %s: board %s did not confirm its flush", action.reason, name)
        log.warning("HA %s: standby; dropped %d IKE SA(s), sent %d Delete(s), flushed board(s) %s in %.1f ms",
                    action.reason, len(ids), deletes, ", ".join(flushed) or "-", (time.monotonic() - now) * 1000)
        self.transitions.append((now, self.ha.role.value, len(ids), deletes))
