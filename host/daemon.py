"""ikeoffloadd's event loop: the IKE engine, the offload boards and the data path, joined.

The reason it exists is RFC 7296 §2.4: when the IPsec SA processor (a board) resets, hangs or
loses SAs, every IKE SA whose Child SAs lived there is removed too — with a best-effort Delete
to the peer (it is still authentic) — and re-established on a ready board, so the tunnel comes
back in about a second instead of after the peer's dead-peer detection gives up.

`Daemon` builds the parts and hands each event to the one that acts on it:

    host/child_sas.py      Child SAs on the boards: two-phase install with rollback, make-before-break removal
    host/board_loss.py     a lost board's IKE SAs flushed and re-established; the recovery timelines
    host/control_views.py  list-sas, list-conns, list-boards, stats
    host/operations.py     ikeoffloadctl's initiate, terminate, rekey, waiting for their outcome
    host/reload.py         a configuration reload (SIGHUP, ikeoffloadctl reload) as swanctl --load-all
    host/metrics.py        the OpenMetrics endpoint
    host/dataplane/        the data path (TUN <-> board <-> ESP-in-UDP), the TUN device's routes and rules
    host/on_demand.py      on-demand tunnels (trap): the first packet for a trapped Child SA asks for it
    host/ike_driver.py     the IKE engine's sockets and timer
    host/ikeoffloadd.py    the command line and logging
"""
import asyncio
import ipaddress
import logging
import signal
import time

from firmware.link import keyfile
from firmware.link import messages as m
from host import sdnotify
from host.board_loss import BoardLossRecovery
from host.child_sas import ChildSas, esp_transforms
from host.control import ControlServer
from host.control_views import RESET_CAUSES, list_boards, list_conns, list_sas, stats
from host.dataplane.datapath import DataPath
from host.dataplane.netlink import Rtnl
from host.dataplane.traps import TrapTable
from host.dataplane.tun import Tun
from host.dataplane.tun_routes import TunRoutes
from host.ha import HaState
from host.ha_track_file import HealthFile
from host.ike import events as ike_ev
from host.ike.engine import IkeEngine
from host.ike.proposals import OffloadCapabilities
from host.ike_driver import IkeUdpEndpoint
from host.offload.client import BoardClient, LinkError
from host.offload.events import BoardLost, BoardReady, SaExpired, UnknownSpiReport
from host.offload.pool import BoardPool, NoBoard
from host.standby import Standby
from host.on_demand import OnDemand
from host.operations import Operations, Waiters
from host.preflight import Guard
from host.reload import Reloader

log = logging.getLogger("ikeoffloadd")

# ESP from an unexpected address or port on a NAT'd IKE SA starts a liveness check at most this often.
WRONG_PEER_CHECK = 2.0


class Daemon:
    def __init__(self, cfg, *, tun=True, guard=None, log_override=None, followers=None):
        """guard: what host/preflight.py holds (board port locks: a reload adds and releases
        them); log_override: --log-level, which a reload keeps; followers: the logs.Followers
        handler that `ikeoffloadctl log` reads."""
        self.cfg = cfg
        self.use_tun = tun
        self.guard = guard if guard is not None else Guard()
        self.log_override = log_override
        self.followers = followers
        self.waiters = Waiters()
        self.operations = None
        self.reloader = Reloader(self)
        self.notify = sdnotify.Notifier({})   # run() makes the one systemd's environment names
        self.metrics = None
        self._tasks = set()
        self.pool = BoardPool()
        self.clients = {}
        self.engine = None
        self.udp = None
        self.tun = None
        self.routes = None
        self.on_demand = None
        self.datapath = None
        self.child_sas = None
        self.recovery = None
        self.control = None
        self.ha = HaState(cfg.ha, time.monotonic())   # active/standby under keepalived (host/ha.py)
        self.standby = None
        # keepalived's track_file: the daemon says at once when it can no longer be the active side
        self.health_file = HealthFile(cfg.ha_track_file) if cfg.ha and cfg.ha_track_file else None
        self._health_timer = None
        self._stopping = False
        self._wrong_peer_checks = {}  # ike_id -> when ESP from an unexpected source last started a check
        self._stopped = asyncio.Event()
        self.started_at = time.time()
        self._connections_started = False
        self._boards_awaited = False     # start-up waited for the boards (then a late one starts them)
        self.stats = {"board_losses": 0, "ike_sas_flushed": 0, "deletes_sent": 0, "child_installs": 0,
                      "child_install_failures": 0, "unknown_spi_reports": 0, "sa_expired": 0,
                      "wrong_peer_checks": 0}

    # ---- life -------------------------------------------------------------------------------
    async def start(self):
        c = self.cfg
        if self.health_file:       # no board yet: not a router keepalived may make active
            self.health_file.publish(False, "starting")
        for b in c.boards:
            self.add_board(b)
        self.engine = IkeEngine(c.connections, self._capabilities, c.engine, c.retransmit)
        # the daemon's own packets carry fwmark: its rule keeps them out of its tunnel (tun_routes.py)
        self.udp = IkeUdpEndpoint(self.engine, c.listen_addrs, c.ike_port, c.natt_port,
                                  on_event=self._ike_event, on_esp=self._esp_in, fwmark=c.fwmark if self.use_tun else 0,
                                  transparent=c.ha)
        self.datapath = DataPath(self.clients, self.udp.send_esp, self._tun_write,
                                 on_unknown_spi=self._unknown_spi, on_inbound=self._inbound,
                                 pending=self.engine.spi_pending, on_wrong_peer=self._wrong_peer,
                                 on_trap=self._trapped)
        self.datapath.traps = TrapTable(self.datapath.stats)
        if self.use_tun:
            self.tun = Tun(c.tun)
            self.tun.open(self.datapath.tun_packets)
            self.routes = TunRoutes(Rtnl(c.route_protocol), c.tun, mtu=c.mtu, table=c.routing_table,
                                    priority=c.rule_priority, fwmark=c.fwmark)
            await self.routes.start()
        self.child_sas = ChildSas(self.pool, self.datapath, self.udp.child_sa_installed,
                                  replay_window=c.replay_window, routes=self.routes, stats=self.stats)
        self.recovery = BoardLossRecovery(self.engine, self.udp.call, self.pool, self.datapath,
                                          flush=c.flush_on_board_loss, stats=self.stats,
                                          active=lambda: self.ha.active)
        self.operations = Operations(self.engine, self.udp.call, self.waiters)
        self.on_demand = OnDemand(self.engine, self.udp.call, self.datapath.traps, self.routes, self.pool,
                                  stats=self.stats)
        self.standby = Standby(self.ha, self.engine, self.udp, self.clients, self.recovery,
                               self._start_connections)
        if c.metrics:
            from host.metrics import MetricsServer
            self.metrics = MetricsServer(self, c.metrics)
            self.recovery.on_flushed, self.recovery.on_recovered = self.metrics.flushed, self.metrics.recovered
        await self.udp.start()
        self.on_demand.start()
        if self.metrics:
            self.metrics.start()
        self.control = ControlServer(c.control_socket, self._control)
        await self.control.start()
        for client in self.clients.values():
            await client.start(retry=True)  # HELLO, then SA_FLUSH: a starting daemon flushes its boards
        try:      # give every board a moment; a late one starts the connections when it comes
            await asyncio.wait_for(asyncio.gather(*(cl.wait_ready(5) for cl in self.clients.values()),
                                                  return_exceptions=True), 5)
        except asyncio.TimeoutError:
            pass
        ready = [n for n, cl in self.clients.items() if cl.ready]
        log.info("started: %d board(s) ready (%s), %d connection(s), IKE on %s:%d/%d, control %s",
                 len(ready), ", ".join(ready) or "none", len(c.connections), ", ".join(c.listen_addrs), c.ike_port,
                 c.natt_port, c.control_socket)
        self._boards_changed(bool(ready), time.monotonic())
        if c.ha:
            log.info("HA: standby until keepalived says MASTER (ikeoffloadctl ha master)")
        if not c.flush_on_board_loss:
            log.warning("flush_on_board_loss = false: IKE SAs will outlive a lost board (RFC 7296 §2.4 "
                        "says they must not); their tunnels stay dead until the peer's DPD gives up")
        self._boards_awaited = True
        if ready:
            self._start_connections()
        else:
            log.warning("no board ready yet: connections start when one is")

    def _boards_changed(self, any_ready: bool, now: float):
        """With no board ready an HA router is about to hand the address over (its health check
        fails after the grace): it answers no new IKE_SA_INIT, whose IKE SA could carry no Child
        SA here, so that the peer's retransmission reaches the router that takes over."""
        self.ha.boards(any_ready, now)
        if self.cfg.ha:
            self.engine.answer_init = any_ready
        self._publish_health()

    def _publish_health(self):
        """Tell keepalived's track_file whether this router can be the active one, as host/ha.py
        judges it now — and again when the grace for a missing board runs out."""
        if self.health_file is None or self.standby is None or self._stopping:
            return
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        now = time.monotonic()
        healthy, why = self.ha.health(now, self.standby.address_here())
        self.health_file.publish(healthy, why)
        at = self.ha.unhealthy_at()
        if healthy and at is not None:      # a few ms late: health() must see the grace over
            self._health_timer = asyncio.get_running_loop().call_later(max(at - now, 0) + 0.005,
                                                                       self._publish_health)

    def add_board(self, b):
        """A configured board's client, in the pool (opened by its start())."""
        client = BoardClient(b.name, b.port, profile=b.profile, period=b.period, misses=b.misses,
                             flush_on_open=True, on_event=self._board_event,
                             link_key=keyfile.read(b.link_key) if b.link_key else None)
        self.clients[b.name] = client
        self.pool.add(b.name, client)
        return client

    @property
    def connections_started(self):
        return self._connections_started

    def _start_connections(self, force=False):
        """start_action = start: once, when the first board is ready (Child SAs need a board) —
        and again on every move to HA MASTER (``force``). Only on the active side. Returns the IKE
        SA ids initiated."""
        if not self.ha.active or (self._connections_started and not force):
            return []
        if not self.pool.ready_boards():
            self._connections_started = False      # the first board to come up starts them
            return []
        self._connections_started = True
        self.stats["connections_started_at"] = time.monotonic()
        return self.udp.call(self.engine.start)

    async def run(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self.start()
        self.notify = notify = sdnotify.Notifier()   # systemd Type=notify: READY, STOPPING, watchdog pings
        notify.ready(loop, self._status())
        await self._stopped.wait()
        notify.stopping()
        await self.shutdown()
        notify.close()

    def _status(self):
        return "%d board(s), %d connection(s)" % (len(self.clients), len(self.cfg.connections))

    async def reload(self):
        """The configuration file again (host/reload.py). systemd hears RELOADING=1 and, when it
        is over (applied or refused), READY=1 (sd_notify(3))."""
        self.notify.reloading()
        try:
            return await self.reloader.reload()
        finally:
            self.notify.reloaded(self._status())

    def stop(self):
        self._stopped.set()

    def _sighup(self):
        """SIGHUP (systemd's ExecReload): reload the configuration; a bad file is logged, and
        everything runs on as it was."""
        async def reload():
            try:
                await self.reload()
            except ValueError as e:           # ConfigError: file:line: key: message
                log.error("reload refused, still running as before: %s", e)
            except Exception:
                log.exception("reload failed")
        t = asyncio.get_running_loop().create_task(reload())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def shutdown(self):
        """keepalived hears that this router can no longer be active; Deletes to every peer, then
        the boards are flushed and closed."""
        t0 = time.monotonic()
        if self.health_file:
            self.health_file.publish(False, "the daemon stops")
        self._stopping = True
        if self._health_timer is not None:
            self._health_timer.cancel()
        ids = [sa.ike_id for sa in self.engine.ike_sas()]
        for ike_id in ids:
            self.udp.call(self.engine.delete_ike, ike_id, reason="daemon shutdown")
        deadline = time.monotonic() + 2.0
        while self.engine.ike_sas() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for ike_id in [sa.ike_id for sa in self.engine.ike_sas()]:
            self.udp.call(self.engine.drop_ike, ike_id, reason="daemon shutdown", send_delete=False)
        for client in self.clients.values():
            await client.flush_and_close()
        if self.control:
            await self.control.close()
        if self.metrics:
            self.metrics.close()
        self.udp.close()
        if self.routes:
            await self.routes.close()       # our routes and rules, nobody else's
        if self.tun:
            self.tun.close()
        log.info("stopped: %d IKE SA(s) deleted, boards flushed, in %.0f ms", len(ids),
                 (time.monotonic() - t0) * 1000)

    # ---- boards -----------------------------------------------------------------------------
    def _capabilities(self, sa):
        """The engine asks which transforms the IKE SA's board runs: place the SA (failure domain)."""
        try:
            b = self.pool.place(sa.ike_id, esp_transforms(sa.conn) if sa.conn and sa.conn.children else None)
        except NoBoard:
            return OffloadCapabilities(frozenset())
        sa.placement = b.name
        h = b.hello
        return OffloadCapabilities(frozenset(b.capabilities()), esn=bool(h and h.features & m.FEAT_ESN),
                                   max_ts=m.MAX_TS)

    def _board_event(self, ev):
        now = time.monotonic()
        if isinstance(ev, BoardLost):
            self.on_demand.board_lost(self.pool.ike_sas_on(ev.board))
            self.recovery.board_lost(ev, now)
            self._boards_changed(bool(self.pool.ready_boards()), now)
        elif isinstance(ev, BoardReady):
            self.pool.on_event(ev)
            self._boards_changed(True, now)
            h = ev.hello
            log.info("board %s ready: boot %s, %s reset, firmware %s, %d SA slots, transforms %s",
                     ev.board, ev.boot_id.hex(), RESET_CAUSES.get(h.reset_cause, h.reset_cause), h.fw_version,
                     h.max_sas, ", ".join("%d/%d/%d:%s" % (t.encr, t.key_bits, t.integ, t.backend)
                                          for t in h.transforms))
            # Routes that survived a loss (flush_on_board_loss = false) stay unusable: their SAs
            # are gone from the board. New Child SAs bring new routes.
            if self._boards_awaited:       # not during start-up: placement by load sees every board
                self._start_connections()  # that comes up within the grace time
            self.recovery.board_ready(ev, now)
            self.on_demand.board_ready()
        elif isinstance(ev, UnknownSpiReport):
            for spi, src, n in ev.entries:
                if src is not None:
                    self._unknown_spi(spi, (str(ipaddress.ip_address(src[0])), src[1]), n)
        elif isinstance(ev, SaExpired):
            self.stats["sa_expired"] += 1
            log.info("board %s: SA %08x %s %s lifetime reached (reason %d)", ev.board, ev.spi,
                     "out" if ev.direction else "in", "hard" if ev.hard else "soft", ev.reason)
            if self.child_sas.installed(ev.reqid) is not None:     # reqid is the engine's Child SA handle
                self.udp.call(self.engine.child_sa_expired, ev.reqid, ev.hard)

    # ---- IKE events -------------------------------------------------------------------------
    def _ike_event(self, ev):
        self.waiters.feed(ev)            # ikeoffloadctl's initiate, terminate, rekey wait for these
        if isinstance(ev, ike_ev.ChildSaInstall):
            self.child_sas.begin_install(ev)
        elif isinstance(ev, ike_ev.ChildSaDelete):
            self.child_sas.remove(ev)
        elif isinstance(ev, ike_ev.IkeSaMoved):
            sa = self.engine.ike_sa(ev.ike_id)
            self.datapath.moved(list(sa.children) if sa is not None else [], ev.remote)
            log.info("IKE SA #%d: the peer moved to %s[%d] (NAT mapping); its ESP follows", ev.ike_id, *ev.remote)
        elif isinstance(ev, ike_ev.ChildSaOutbound):
            self.datapath.send_on(ev.handle, ev.replaces)
            log.info("Child SA #%d: outbound traffic moves to it from #%s", ev.handle, ev.replaces)
        elif isinstance(ev, ike_ev.IkeSaRekeyed):
            self.pool.transfer(ev.old_ike_id, ev.new_ike_id)     # its successor lives on the same board
            log.info("IKE SA %s #%d rekeyed as #%d (%s)", ev.conn, ev.old_ike_id, ev.new_ike_id, ev.proposal)
        elif isinstance(ev, ike_ev.ChildSaUp):
            self.recovery.child_sa_up(ev)
            self.on_demand.child_sa_up(ev)
            log.info("Child SA %s #%d up: SPIs in %08x out %08x", ev.name, ev.handle, ev.spi_in, ev.spi_out)
        elif isinstance(ev, ike_ev.IkeSaUp):
            self.recovery.ike_sa_up(ev)
            b = self.pool.owner_of(ev.ike_id)
            log.info("IKE SA %s #%d up (%s) with %s, %s, board %s", ev.conn, ev.ike_id,
                     "initiator" if ev.initiator else "responder", ev.remote_addr[0], ev.proposal,
                     b.name if b else "-")
        elif isinstance(ev, ike_ev.IkeSaDown):
            self.pool.release(ev.ike_id)
            self.recovery.ike_sa_down(ev)
            self.on_demand.ike_sa_down(ev)
            if ev.replaced_by is None:
                (log.info if ev.established else log.debug)(
                    "IKE SA %s #%d down: %s%s", ev.conn, ev.ike_id, ev.reason,
                    "; re-initiating as #%d" % ev.restart_ike_id if ev.restart_ike_id else "")
        elif isinstance(ev, ike_ev.ChildSaFailed):
            log.warning("Child SA %s of IKE SA #%d failed: %s", ev.name, ev.ike_id, ev.reason)
            self.on_demand.child_sa_failed(ev)
        elif isinstance(ev, ike_ev.TrapRequested):
            self.on_demand.requested(ev)
        elif isinstance(ev, ike_ev.IkeWarning):
            log.warning("IKE SA #%s: %s", ev.ike_id, ev.text)

    # ---- data path hooks ----------------------------------------------------------------------
    def _esp_in(self, data, addr):
        self.datapath.esp_in(data, addr)

    def _trapped(self, policy, src, dst):
        if self.ha.active:          # an HA standby initiates nothing, whatever traffic arrives
            self.on_demand.triggered(policy, src, dst)

    def _tun_write(self, pkt):
        if self.tun:
            self.tun.write(pkt)

    def _inbound(self, route):
        """Inbound ESP proves the peer alive (RFC 7296 §2.4); told to the engine at most 10 times a second."""
        now = time.monotonic()
        route.last_in = now
        if now - route.last_reported >= 0.1:
            route.last_reported = now
            self.engine.esp_received(route.handle, now)

    def _wrong_peer(self, route, addr):
        """ESP on a known SPI from another address or port: spoofed, or the peer's NAT gave it a new
        mapping. Behind a NAT, check the peer's liveness — its authenticated answer moves the IKE
        SA and its Child SAs (RFC 7296 §2.23) — at most once a WRONG_PEER_CHECK per IKE SA: an
        action on an unprotected packet, rate-limited (§2.4)."""
        now = time.monotonic()
        child = self.engine.child_by_spi_in(route.spi_in)
        sa = child.ike if child is not None else None
        if sa is None or not sa.nat or now - self._wrong_peer_checks.get(sa.ike_id, -1e9) < WRONG_PEER_CHECK:
            return
        self._wrong_peer_checks[sa.ike_id] = now
        del_old = [i for i, t in self._wrong_peer_checks.items() if now - t > WRONG_PEER_CHECK]
        for i in del_old:
            del self._wrong_peer_checks[i]
        self.stats["wrong_peer_checks"] += 1
        self.udp.call(self.engine.check_liveness, sa.ike_id)

    def _unknown_spi(self, spi, addr, n=1):
        """ESP for an SPI nobody has: INVALID_SPI to the peer, rate-limited (RFC 7296 §1.5, §2.21)."""
        self.stats["unknown_spi_reports"] += 1
        self.udp.call(self.engine.esp_unknown_spi, spi, addr, local=(self.cfg.listen, self.cfg.natt_port))

    # ---- control ----------------------------------------------------------------------------
    async def _control(self, req):
        cmd = req["cmd"]
        if cmd == "list-sas":
            return list_sas(self.engine, self.pool, self.datapath, await self._board_counters())
        if cmd == "list-conns":
            return list_conns(self.engine)
        if cmd == "list-boards":
            return list_boards(self.cfg.boards, self.pool, self.recovery)
        if cmd == "ha":
            if req.get("state") is None:
                return self.standby.status()
            try:
                return await self.standby.set(req["state"])
            finally:            # a role from keepalived ends the unhealthy "address here, no role"
                self._publish_health()
        if cmd in ("initiate", "rekey") and not self.ha.active:
            raise ValueError("standby (HA %s): IKE is initiated only on the active side" % self.ha.role.value)
        if cmd in ("initiate", "terminate", "rekey"):
            args = {k: v for k, v in req.items() if k != "cmd" and v is not None}
            return await getattr(self.operations, cmd)(**args)
        if cmd == "reload":
            return await self.reload()
        if cmd == "log":
            if self.followers is None:
                raise LookupError("this daemon keeps no log to follow")
            return self._follow(req.get("level"))
        if cmd == "flush-board":
            name = req.get("board")
            client = self.clients.get(name)
            if client is None:
                raise KeyError("no board %r" % name)
            # The board stays up: its IKE SAs go as if it had been lost, their Child SAs are
            # deleted from it, and the connections come back (on it or another board).
            now = time.monotonic()
            gone = self.pool.ike_sas_on(name)
            for ike_id in gone:
                self.pool.release(ike_id)
            lost = BoardLost(name, "operator", "ikeoffloadctl flush-board", now, client.session.last_ack_at,
                             client.sas())
            inc = self.recovery.flush_board(lost, gone, now)
            return (await self.recovery.flushed(inc)).as_dict()
        if cmd == "stats":
            s = stats(self.stats, self.engine, self.child_sas, self.datapath, self.udp, self.recovery,
                      self.started_at, self.pool)
            s.update(reloads=self.reloader.reloads, reload_failures=self.reloader.failures,
                     last_reload=self.reloader.last)
            return s
        raise ValueError(cmd)

    async def _follow(self, level):
        """`ikeoffloadctl log`: the records the loggers let through (at ``level`` or above), as
        they come; None every tenth of a second so that the control server notices a client
        that went."""
        floor = getattr(logging, (level or "debug").upper())
        q = self.followers.follow()
        try:
            while True:
                while q:
                    item = q.popleft()
                    if getattr(logging, item["level"].upper()) >= floor:
                        yield item
                yield None
                await asyncio.sleep(0.1)
        finally:
            self.followers.unfollow(q)

    async def _board_counters(self):
        """Every ready board's SA counters, by (spi, direction); a board that does not answer in
        2 s is left out."""
        counters = {}
        for client in self.clients.values():
            if client.ready:
                try:
                    for st in await asyncio.wait_for(client.stats(), 2):
                        counters[(st.spi, st.direction)] = st
                except (LinkError, asyncio.TimeoutError):
                    pass
        return counters
