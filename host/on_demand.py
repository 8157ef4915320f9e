"""On-demand tunnels (trap), the daemon's side: which Child SA configurations are trapped, their
routes, and the negotiation a trapped packet asks for.

* ``start_action = "trap"`` (``Connection.trapped_children``): trapped from the start — no SA,
  the selectors' remote networks routed into the TUN device, nothing negotiated until a packet
  needs it.
* ``close_action = "trap"`` / ``dpd_action = "trap"``: trapped once the engine says so
  (TrapRequested: the peer closed them, or stopped answering); and when a board is lost, since a
  lost IPsec processor ends the Child SAs as a dead peer does (RFC 7296 §2.4).
* A packet the data path holds for a trap (host/dataplane/traps.py, which rate-limits the asking)
  asks for its Child SA: a CREATE_CHILD_SA on an established IKE SA of the connection, or a new IKE
  SA; either way the packet's addresses go first in TSi/TSr (RFC 7296 §2.9), so a peer that
  narrows keeps its flow. With no board ready nothing is asked; the next packet asks again.
"""
import logging
import time

from host.dataplane.datapath import ts_networks
from host.dataplane.traps import TrapPolicy
from host.ike.config import resolve_ts
from host.ike.states import IkeSaState

log = logging.getLogger("ikeoffloadd")


class OnDemand:
    def __init__(self, engine, call, table, routes, pool, stats=None, clock=time.monotonic):
        """engine: the IkeEngine; call(fn, *args, **kw): runs an engine command and sends what it
        queued (IkeUdpEndpoint.call); table: the data path's TrapTable; routes: TunRoutes or
        None (no TUN device); pool: the BoardPool; stats: the daemon's counters."""
        self.engine = engine
        self.call = call
        self.table = table
        self.routes = routes
        self.pool = pool
        self.clock = clock
        self.stats = stats if stats is not None else {}
        for k in ("trap_asked_ike", "trap_asked_child", "trap_no_board"):
            self.stats.setdefault(k, 0)

    def start(self):
        """Trap what ``start_action = "trap"`` names."""
        for name, conn in self.engine.connections.items():
            for child in conn.trapped_children():
                self.trap(name, child)

    def trap(self, conn_name, child):
        """Trap one Child SA configuration (again a no-op if it is)."""
        conn = self.engine.connections.get(conn_name)
        if conn is None or child not in conn.children:
            return None
        cfg = conn.children[child]
        local = conn.local_host or self.engine.settings.local_addr
        remote = conn.remote_host
        if local is None or remote is None:
            log.warning("connection %s: child %s cannot be trapped: no specific %s address", conn_name, child,
                        "local" if local is None else "remote")
            return None
        policy = TrapPolicy(conn_name, child, ts_networks(resolve_ts(cfg.local_ts, local)),
                            ts_networks(resolve_ts(cfg.remote_ts, remote)))
        if not self.table.add(policy):
            return None
        if self.routes is not None:
            self.routes.trap(policy)
        log.info("trap %s/%s: %s == %s, on demand", conn_name, child,
                 ", ".join(map(str, policy.local_nets)), ", ".join(map(str, policy.remote_nets)))
        return policy

    def reloaded(self, removed, changed, added):
        """A configuration reload (IkeEngine.load_connections): the traps of removed and changed
        connections go with their routes; changed and added ones trap what they now name."""
        for name in list(removed) + list(changed):
            for policy in self.table.remove(name):
                if self.routes is not None:
                    self.routes.untrap(policy)
                log.info("trap %s/%s removed by the reload", policy.conn, policy.child)
        for name in list(changed) + list(added):
            conn = self.engine.connections.get(name)
            if conn is not None:
                for child in conn.trapped_children():
                    self.trap(name, child)

    # ---- engine events --------------------------------------------------------------------------
    def requested(self, ev):
        """TrapRequested (close_action / dpd_action = trap)."""
        for child in ev.children:
            self.trap(ev.conn, child)

    def board_lost(self, ike_ids):
        """The IKE SAs ``ike_ids`` go with their board: the Child SAs of those whose connection says
        trap after a failure come back on demand."""
        for ike_id in ike_ids:
            sa = self.engine.ike_sa(ike_id)
            conn = sa.conn if sa is not None else None
            if conn is None:
                continue
            for c in list(sa.children.values()):
                if c.cfg is not None and (conn.dpd_action == "trap" or c.cfg.close_action == "trap"):
                    self.trap(conn.name, c.cfg.name)

    def board_ready(self):
        """A board is ready: policies that hold packets and asked nothing (no board then) ask now."""
        for p in self.table.policies:
            if p.held and not p.pending:
                _pkt, src, dst, _at = p.held[0]
                self.table.asking(p, self.clock())
                self.triggered(p, src, dst)

    def child_sa_up(self, ev):
        sa = self.engine.ike_sa(ev.ike_id)
        if sa is not None and sa.conn is not None:
            self.table.settled(sa.conn.name, ev.name, up=True)

    def child_sa_failed(self, ev):
        sa = self.engine.ike_sa(ev.ike_id)
        if sa is not None and sa.conn is not None:
            self.table.settled(sa.conn.name, ev.name)

    def ike_sa_down(self, ev):
        if ev.restart_ike_id is None and ev.replaced_by is None:
            for p in self.table.policies:
                if p.conn == ev.conn:
                    self.table.settled(p.conn, p.child)

    # ---- a trapped packet -----------------------------------------------------------------------
    def triggered(self, policy, src, dst):
        """The data path held a packet for ``policy`` and asks for its Child SA."""
        if not self.pool.ready_boards():
            self.stats["trap_no_board"] += 1
            self.table.unasked(policy)
            return
        trigger = (str(src), str(dst))
        sas = [sa for sa in self.engine.ike_sas() if sa.conn is not None and sa.conn.name == policy.conn
               and sa.successor is None]
        up = next((sa for sa in sas if sa.state == IkeSaState.ESTABLISHED), None)
        if up is not None:
            self.stats["trap_asked_child"] += 1
            self.call(self.engine.create_child, up.ike_id, policy.child, trigger=trigger)
            log.info("trap %s/%s: %s -> %s asks for a Child SA on IKE SA #%d", policy.conn, policy.child,
                     src, dst, up.ike_id)
        elif any(sa.state == IkeSaState.CONNECTING for sa in sas):
            self.table.settled(policy.conn, policy.child)    # its IKE SA is on the way; then ask again
        else:
            self.stats["trap_asked_ike"] += 1
            ike_id = self.call(self.engine.initiate, policy.conn, child=[policy.child], trigger=trigger)
            log.info("trap %s/%s: %s -> %s initiates IKE SA #%d", policy.conn, policy.child, src, dst, ike_id)
