"""ikeoffloadd: the IKE engine, the offload boards and the data path, joined on one event loop.

The reason it exists is RFC 7296 §2.4: when the IPsec SA processor (a board) resets, hangs or
loses SAs, every IKE SA whose Child SAs lived there is removed too — with a best-effort Delete
to the peer (it is still authentic) — and re-established on a ready board, so the tunnel comes
back in about a second instead of after the peer's dead-peer detection gives up.

    ikeoffloadd --config /etc/ikeoffload/ikeoffloadd.toml [--log-level info]
    ikeoffloadd --check-config FILE
"""
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
import time

from firmware import cli
from firmware.link import messages as m
from host import __version__
from host import config as cfgmod
from host import preflight, sdnotify
from host.control import ControlServer
from host.dataplane.datapath import ChildRoute, DataPath, ts_networks
from host.dataplane.tun import Tun, TunError
from host.ike_driver import IkeUdpEndpoint
from host.ike import events as ike_ev
from host.ike.engine import IkeEngine
from host.ike.proposals import OffloadCapabilities
from host.offload.client import BoardClient, LinkError
from host.offload.events import BoardLost, BoardReady, SaExpired, UnknownSpiReport
from host.offload.pool import BoardPool, NoBoard

log = logging.getLogger("ikeoffloadd")

# How long a replaced Child SA's inbound half stays on the board once the rekey or
# reauthentication that replaced it is complete (RFC 7296 §2.8): what the peer sent on it just
# before it switched, and what is queued here for the board behind the Delete, still decrypts.
# Its outbound half goes at once. strongSwan keeps one 5 s; a board's SA slots are scarcer, and
# in-flight packets need milliseconds.
REPLACED_INBOUND_LINGER = 1.0
# How long an outbound SA's deletion waits for the packets already on their way to the board on it.
OUTBOUND_DRAIN = 1.0
# ESP from an unexpected address or port on a NAT'd IKE SA starts a liveness check at most this often.
WRONG_PEER_CHECK = 2.0

RESET_CAUSES = {m.RESET_UNKNOWN: "unknown", m.RESET_POWER_ON: "power-on", m.RESET_HARD: "hard",
                m.RESET_WDT: "watchdog", m.RESET_DEEPSLEEP: "deep-sleep", m.RESET_SOFT: "soft",
                m.RESET_COMMAND: "command", m.RESET_SIM: "simulator"}


class BoardIncident:
    """One board loss and what the daemon did about it (the recovery timeline)."""

    def __init__(self, board, lost):
        self.board = board
        self.reason = lost.reason
        self.detail = lost.detail
        self.detected_at = lost.at            # time.monotonic()
        self.last_ack_at = lost.last_ack_at
        self.flushed_at = None
        self.ike_sas = []
        self.deletes_sent = 0
        self.ready_at = None
        self.reinitiated = []                 # (conn, ike_id, at)
        self.ike_up_at = None
        self.child_up_at = None

    def as_dict(self):
        return {"board": self.board, "reason": self.reason, "detail": self.detail,
                "detected_at": self.detected_at, "last_ack_at": self.last_ack_at,
                "flushed_at": self.flushed_at, "ike_sas_flushed": len(self.ike_sas),
                "deletes_sent": self.deletes_sent, "board_ready_at": self.ready_at,
                "reinitiated": [c for c, _, _ in self.reinitiated],
                "ike_up_at": self.ike_up_at, "child_up_at": self.child_up_at}


class Daemon:
    def __init__(self, cfg, *, tun=True):
        self.cfg = cfg
        self.use_tun = tun
        self.pool = BoardPool()
        self.clients = {}
        self.engine = None
        self.udp = None
        self.tun = None
        self.datapath = None
        self.control = None
        self.children = {}           # handle -> dict (for list-sas)
        self.ike_info = {}           # ike_id -> {"proposal": ...} from IkeSaUp
        self.incidents = []
        self._open_incident = {}     # board -> BoardIncident awaiting recovery
        self._restart_pending = {}   # conn -> BoardIncident
        self._restart_of = {}        # ike_id -> BoardIncident
        self._wrong_peer_checks = {}  # ike_id -> when ESP from an unexpected source last started a check
        self._tasks = set()
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
        for b in c.boards:
            client = BoardClient(b.name, b.port, profile=b.profile, period=b.period, misses=b.misses,
                                 flush_on_open=True, on_event=self._board_event)
            self.clients[b.name] = client
            self.pool.add(b.name, client)
        self.engine = IkeEngine(c.connections, self._capabilities, c.engine, c.retransmit)
        self.udp = IkeUdpEndpoint(self.engine, c.listen, c.ike_port, c.natt_port,
                                  on_event=self._ike_event, on_esp=self._esp_in)
        self.datapath = DataPath(self.clients, self.udp.send_esp, self._tun_write,
                                 on_unknown_spi=self._unknown_spi, on_inbound=self._inbound,
                                 pending=self.engine.spi_pending, on_wrong_peer=self._wrong_peer)
        if self.use_tun:
            self.tun = Tun(c.tun, c.mtu, c.routing_table, c.routing_table)
            self.tun.open(self.datapath.tun_packets)
        await self.udp.start()
        self.control = ControlServer(c.control_socket, self._control)
        await self.control.start()
        for name, client in self.clients.items():
            await client.start(retry=True)  # HELLO, then SA_FLUSH: a starting daemon flushes its boards
            if client.transport is None:
                log.error("board %s: cannot open %s yet; retrying every %.0f s", name, client.url,
                          client.reopen_interval)
        try:      # give every board a moment; a late one starts the connections when it comes
            await asyncio.wait_for(asyncio.gather(*(cl.wait_ready(5) for cl in self.clients.values()),
                                                  return_exceptions=True), 5)
        except asyncio.TimeoutError:
            pass
        ready = [n for n, cl in self.clients.items() if cl.ready]
        log.info("started: %d board(s) ready (%s), %d connection(s), IKE on %s:%d/%d, control %s",
                 len(ready), ", ".join(ready) or "none", len(c.connections), c.listen, c.ike_port,
                 c.natt_port, c.control_socket)
        if not c.flush_on_board_loss:
            log.warning("flush_on_board_loss = false: IKE SAs will outlive a lost board (RFC 7296 §2.4 "
                        "says they must not); their tunnels stay dead until the peer's DPD gives up")
        self._boards_awaited = True
        if ready:
            self._start_connections()
        else:
            log.warning("no board ready yet: connections start when one is")

    def _start_connections(self):
        """start_action = start: once, when the first board is ready (Child SAs need a board)."""
        if not self._connections_started:
            self._connections_started = True
            self.udp.call(self.engine.start)

    async def run(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP: reloading the configuration is not "
                                "supported yet; still running with %s as it was loaded", self.cfg.path)
        await self.start()
        notify = sdnotify.Notifier()       # systemd Type=notify: READY, STOPPING, watchdog pings
        notify.ready(loop, "%d board(s), %d connection(s)" % (len(self.clients), len(self.cfg.connections)))
        await self._stopped.wait()
        notify.stopping()
        await self.shutdown()
        notify.close()

    def stop(self):
        self._stopped.set()

    async def shutdown(self):
        """Deletes to every peer, then the boards are flushed and closed."""
        t0 = time.monotonic()
        ids = [sa.ike_id for sa in self.engine.ike_sas()]
        for ike_id in ids:
            self.udp.call(self.engine.delete_ike, ike_id, reason="daemon shutdown")
        deadline = time.monotonic() + 2.0
        while self.engine.ike_sas() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for ike_id in [sa.ike_id for sa in self.engine.ike_sas()]:
            self.udp.call(self.engine.drop_ike, ike_id, reason="daemon shutdown", send_delete=False)
        for client in self.clients.values():
            if client.ready:
                try:
                    await asyncio.wait_for(client.sa_flush(), 2)
                except (LinkError, asyncio.TimeoutError):
                    pass
            await client.close()
        if self.control:
            await self.control.close()
        self.udp.close()
        if self.tun:
            self.tun.close()
        log.info("stopped: %d IKE SA(s) deleted, boards flushed, in %.0f ms", len(ids),
                 (time.monotonic() - t0) * 1000)

    def _spawn(self, coro):
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # ---- boards -----------------------------------------------------------------------------
    def _capabilities(self, sa):
        """The engine asks which transforms the IKE SA's board runs: place the SA (failure domain)."""
        try:
            b = self.pool.place(sa.ike_id)
        except NoBoard:
            return OffloadCapabilities(frozenset())
        sa.placement = b.name
        h = b.hello
        return OffloadCapabilities(frozenset(b.capabilities()), esn=bool(h and h.features & m.FEAT_ESN))

    def _board_event(self, ev):
        now = time.monotonic()
        if isinstance(ev, BoardLost):
            self._board_lost(ev, now)
        elif isinstance(ev, BoardReady):
            self.pool.on_event(ev)
            h = ev.hello
            log.info("board %s ready: boot %s, %s reset, firmware %s, %d SA slots, transforms %s",
                     ev.board, ev.boot_id.hex(), RESET_CAUSES.get(h.reset_cause, h.reset_cause), h.fw_version,
                     h.max_sas, ", ".join("%d/%d/%d:%s" % (t.encr, t.key_bits, t.integ, t.backend)
                                          for t in h.transforms))
            inc = self._open_incident.get(ev.board)
            if inc is not None and inc.ready_at is None:
                inc.ready_at = ev.at
            # Routes that survived a loss (flush_on_board_loss = false) stay unusable: their SAs
            # are gone from the board. New Child SAs bring new routes.
            if self._boards_awaited:       # not during start-up: placement by load sees every board
                self._start_connections()  # that comes up within the grace time
            self._restart(now)
        elif isinstance(ev, UnknownSpiReport):
            for spi, src, n in ev.entries:
                if src is not None:
                    self._unknown_spi(spi, (str(ipaddress.ip_address(src[0])), src[1]), n)
        elif isinstance(ev, SaExpired):
            self.stats["sa_expired"] += 1
            log.info("board %s: SA %08x %s %s lifetime reached (reason %d)", ev.board, ev.spi,
                     "out" if ev.direction else "in", "hard" if ev.hard else "soft", ev.reason)
            if ev.reqid in self.children:        # reqid is the engine's Child SA handle
                self.udp.call(self.engine.child_sa_expired, ev.reqid, ev.hard)

    def _board_lost(self, ev, now):
        """RFC 7296 §2.4: the IKE SAs whose Child SAs were on this board go too."""
        self.stats["board_losses"] += 1
        self._flush(ev, self.pool.on_event(ev), now)

    def _flush(self, ev, gone, now):
        inc = BoardIncident(ev.board, ev)
        self.incidents.append(inc)
        del self.incidents[:-50]
        self._open_incident[ev.board] = inc
        self.datapath.set_usable(ev.board, False)
        ids = sorted(i for i in gone if self.engine.ike_sa(i) is not None)
        inc.ike_sas = ids
        if not self.cfg.flush_on_board_loss:
            log.error("board %s lost (%s: %s): %d IKE SA(s) keep running WITHOUT their Child SAs because "
                      "flush_on_board_loss = false; nothing is sent on them, the peer is not told",
                      ev.board, ev.reason, ev.detail, len(ids))
            return
        conns = []
        for ike_id in ids:
            sa = self.engine.ike_sa(ike_id)
            conn = sa.conn.name if sa.conn else None
            established = sa.established_at is not None
            children = self.udp.call(self.engine.drop_ike, ike_id,
                                     reason="board %s lost: %s" % (ev.board, ev.reason), send_delete=established)
            inc.deletes_sent += 1 if established else 0
            if conn and sa.conn.remote_host and (sa.conn.start_action == "start" or sa.conn.dpd_action == "restart"):
                conns.append(conn)
                self._restart_pending[conn] = (inc, children or None)
        inc.flushed_at = time.monotonic()
        self.stats["ike_sas_flushed"] += len(ids)
        self.stats["deletes_sent"] += inc.deletes_sent
        log.warning("board %s lost (%s: %s), detected %.0f ms after its last ack: flushed %d IKE SA(s), "
                    "sent %d Delete(s) in %.1f ms%s", ev.board, ev.reason, ev.detail,
                    (ev.at - ev.last_ack_at) * 1000 if ev.last_ack_at else 0, len(ids), inc.deletes_sent,
                    (inc.flushed_at - ev.at) * 1000,
                    "; re-establishing %s" % ", ".join(conns) if conns else "")
        self._restart(now)

    def _restart(self, now):
        if not self._restart_pending or not self.pool.ready_boards():
            return
        pending, self._restart_pending = self._restart_pending, {}
        for conn, (inc, children) in pending.items():
            ike_id = self.udp.call(self.engine.initiate, conn, child=children, retry=True)
            inc.reinitiated.append((conn, ike_id, time.monotonic()))
            self._restart_of[ike_id] = inc

    # ---- IKE events -------------------------------------------------------------------------
    def _ike_event(self, ev):
        if isinstance(ev, ike_ev.ChildSaInstall):
            self._spawn(self._install(ev))
        elif isinstance(ev, ike_ev.ChildSaDelete):
            self._remove_child(ev)
        elif isinstance(ev, ike_ev.IkeSaMoved):
            self.datapath.moved(ev.ike_id, ev.remote)
            log.info("IKE SA #%d: the peer moved to %s[%d] (NAT mapping); its ESP follows", ev.ike_id, *ev.remote)
        elif isinstance(ev, ike_ev.ChildSaOutbound):
            self.datapath.send_on(ev.handle, ev.replaces)
            log.info("Child SA #%d: outbound traffic moves to it from #%s", ev.handle, ev.replaces)
        elif isinstance(ev, ike_ev.IkeSaRekeyed):
            self.pool.transfer(ev.old_ike_id, ev.new_ike_id)
            self.ike_info[ev.new_ike_id] = {"proposal": ev.proposal}
            for ch in self.children.values():
                if ch["ike_id"] == ev.old_ike_id:
                    ch["ike_id"] = ev.new_ike_id
            for r in self.datapath.routes:
                if r.ike_id == ev.old_ike_id:
                    r.ike_id = ev.new_ike_id
            log.info("IKE SA %s #%d rekeyed as #%d (%s)", ev.conn, ev.old_ike_id, ev.new_ike_id, ev.proposal)
        elif isinstance(ev, ike_ev.ChildSaUp):
            ch = self.children.get(ev.handle)
            if ch is not None:
                ch["state"] = "INSTALLED"
            inc = self._restart_of.get(ev.ike_id)
            if inc is not None and inc.child_up_at is None:
                inc.child_up_at = time.monotonic()
                log.info("board %s recovery: new Child SA %s up %.0f ms after the loss was detected",
                         inc.board, ev.name, (inc.child_up_at - inc.detected_at) * 1000)
                self._open_incident.pop(inc.board, None)
            log.info("Child SA %s #%d up: SPIs in %08x out %08x", ev.name, ev.handle, ev.spi_in, ev.spi_out)
        elif isinstance(ev, ike_ev.IkeSaUp):
            inc = self._restart_of.get(ev.ike_id)
            if inc is not None and inc.ike_up_at is None:
                inc.ike_up_at = time.monotonic()
            self.ike_info[ev.ike_id] = {"proposal": ev.proposal}
            b = self.pool.owner_of(ev.ike_id)
            log.info("IKE SA %s #%d up (%s) with %s, %s, board %s", ev.conn, ev.ike_id,
                     "initiator" if ev.initiator else "responder", ev.remote_addr[0], ev.proposal,
                     b.name if b else "-")
        elif isinstance(ev, ike_ev.IkeSaDown):
            self.pool.release(ev.ike_id)
            inc = self._restart_of.pop(ev.ike_id, None)
            self.ike_info.pop(ev.ike_id, None)
            if ev.restart_ike_id is not None and inc is not None:
                self._restart_of[ev.restart_ike_id] = inc    # the engine retries the connection itself
            if ev.replaced_by is None:
                (log.info if ev.established else log.debug)(
                    "IKE SA %s #%d down: %s%s", ev.conn, ev.ike_id, ev.reason,
                    "; re-initiating as #%d" % ev.restart_ike_id if ev.restart_ike_id else "")
        elif isinstance(ev, ike_ev.ChildSaFailed):
            log.warning("Child SA %s of IKE SA #%d failed: %s", ev.name, ev.ike_id, ev.reason)
        elif isinstance(ev, ike_ev.IkeWarning):
            log.warning("IKE SA #%s: %s", ev.ike_id, ev.text)

    def _addr(self, ip, port):
        return (ipaddress.ip_address(ip).packed, port)

    async def _install(self, ev):
        """Two-phase install: the exchange is answered only once both SAs are on the board."""
        b = self.pool.owner_of(ev.ike_id)
        if b is None:
            try:
                b = self.pool.place(ev.ike_id)
            except NoBoard:
                b = None
        if b is None or not b.ready:
            self.stats["child_install_failures"] += 1
            self.udp.child_sa_installed(ev.handle, False, "no ready board")
            return
        client = b.client
        flags = (m.SAF_ESN if ev.esn else 0) | (m.SAF_UDP_ENCAP if ev.encap else 0)
        mode = m.MODE_TRANSPORT if ev.mode == "transport" else m.MODE_TUNNEL
        local = self._addr(ev.local_addr, ev.local_port)
        remote = self._addr(ev.remote_addr, ev.remote_port)
        ts_l = [(t.start, t.end, t.ip_proto, t.start_port, t.end_port) for t in ev.local_ts]
        ts_r = [(t.start, t.end, t.ip_proto, t.start_port, t.end_port) for t in ev.remote_ts]
        common = dict(mode=mode, flags=flags, replay_window=self.cfg.replay_window, src=local, dst=remote,
                      reqid=ev.handle & 0xFFFFFFFF, ts_local=ts_l, ts_remote=ts_r)
        spec_in = m.SaSpec(ev.spi_in, m.DIR_IN, ev.encr, ev.key_in + ev.salt_in, ev.integ, ev.integ_key_in,
                           **common)
        spec_out = m.SaSpec(ev.spi_out, m.DIR_OUT, ev.encr, ev.key_out + ev.salt_out, ev.integ,
                            ev.integ_key_out, **common)
        if not b.reserve(2):
            self.stats["child_install_failures"] += 1
            log.warning("Child SA %s #%d: board %s has no room for 2 more SAs", ev.name, ev.handle, b.name)
            self.udp.child_sa_installed(ev.handle, False, "full")
            return
        done = []
        try:
            for spec in (spec_in, spec_out):
                await client.sa_add(spec)
                done.append(spec)
        except LinkError as e:
            b.unreserve(2)
            for spec in done:
                try:
                    await client.sa_del(spec.spi, spec.direction)
                except LinkError:
                    pass
            reason = "unsupported" if e.status == m.UNSUPPORTED else "full" if e.status == m.SAD_FULL else str(e)
            self.stats["child_install_failures"] += 1
            log.warning("Child SA %s #%d: board %s refused it: %s", ev.name, ev.handle, b.name, e)
            self.udp.child_sa_installed(ev.handle, False, reason)
            return
        b.unreserve(2)       # now counted in the board's books
        # make before break (RFC 7296 §2.8): a rekeyed SA may have to wait for ChildSaOutbound
        route = ChildRoute(ev.handle, ev.ike_id, b.name, ev.spi_in, ev.spi_out,
                           (ev.remote_addr, ev.remote_port), ts_networks(ev.local_ts), ts_networks(ev.remote_ts),
                           sending=not (ev.rekey_of is not None and ev.defer_outbound),
                           transform=(ev.encr, ev.encr_key_bits, ev.integ))
        self.datapath.add(route)
        if self.tun:
            for net in route.remote_nets:
                src = next((str(n.network_address) for n in route.local_nets if n.num_addresses == 1), None)
                try:
                    self.tun.add_route(str(net), src)
                except TunError as e:
                    log.warning("route %s: %s", net, e)
        self.children[ev.handle] = {"handle": ev.handle, "ike_id": ev.ike_id, "name": ev.name, "board": b.name,
                                    "spi_in": ev.spi_in, "spi_out": ev.spi_out, "mode": ev.mode, "encap": ev.encap,
                                    "encr": ev.encr, "key_bits": ev.encr_key_bits, "integ": ev.integ,
                                    "local_ts": [str(n) for n in route.local_nets],
                                    "remote_ts": [str(n) for n in route.remote_nets],
                                    "installed_at": time.time(), "state": "INSTALLING"}
        self.stats["child_installs"] += 1
        self.udp.child_sa_installed(ev.handle, True)

    def _remove_child(self, ev):
        log.debug("Child SA #%d removed: %s", ev.handle, ev.reason)
        linger = ev.replaced and REPLACED_INBOUND_LINGER > 0
        route = self.datapath.retire(ev.handle) if linger else self.datapath.remove(ev.handle)
        self.children.pop(ev.handle, None)
        if route is None:
            return
        if self.tun:
            still = {str(n) for r in self.datapath.routes for n in r.remote_nets}
            for net in route.remote_nets:
                if str(net) not in still:
                    self.tun.del_route(str(net))
        client = self.clients.get(route.board)
        if client is not None and client.ready and (route.spi_in, m.DIR_IN) in client.session.books.sas:
            self._spawn(self._board_del(client, route, REPLACED_INBOUND_LINGER if linger else 0.0))
        else:
            self.datapath.forget_inbound(route)

    async def _board_del(self, client, route, linger):
        """SA_DEL both halves; a replaced SA's inbound half after ``linger`` seconds, so packets the
        peer sent on it before it switched (and those still queued here for the board) decrypt.
        The outbound half goes once the packets already handed to the link on it are encrypted:
        the board answers control before data, so an SA_DEL would overtake them."""
        halves = [(route.spi_out, m.DIR_OUT), (route.spi_in, m.DIR_IN)]
        for spi, d in halves:
            if d == m.DIR_OUT:
                deadline = time.monotonic() + OUTBOUND_DRAIN
                while route.out_in_flight and time.monotonic() < deadline and client.ready:
                    await asyncio.sleep(0.005)
            if d == m.DIR_IN and linger:
                await asyncio.sleep(linger)
                self.datapath.forget_inbound(route)
                if not client.ready or (spi, d) not in client.session.books.sas:
                    return              # the board was lost or flushed meanwhile
            try:
                await client.sa_del(spi, d)
            except LinkError as e:
                log.debug("board %s: SA_DEL %08x: %s", client.name, spi, e)
        self.datapath.forget_inbound(route)

    # ---- data path hooks ----------------------------------------------------------------------
    def _esp_in(self, data, addr):
        self.datapath.esp_in(data, addr)

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
        sa = self.engine.ike_sa(route.ike_id)
        if sa is None or not sa.nat or now - self._wrong_peer_checks.get(route.ike_id, -1e9) < WRONG_PEER_CHECK:
            return
        self._wrong_peer_checks[route.ike_id] = now
        del_old = [i for i, t in self._wrong_peer_checks.items() if now - t > WRONG_PEER_CHECK]
        for i in del_old:
            del self._wrong_peer_checks[i]
        self.stats["wrong_peer_checks"] += 1
        self.udp.call(self.engine.check_liveness, route.ike_id)

    def _unknown_spi(self, spi, addr, n=1):
        """ESP for an SPI nobody has: INVALID_SPI to the peer, rate-limited (RFC 7296 §1.5, §2.21)."""
        self.stats["unknown_spi_reports"] += 1
        self.udp.call(self.engine.esp_unknown_spi, spi, addr, local=(self.cfg.listen, self.cfg.natt_port))

    # ---- control ----------------------------------------------------------------------------
    async def _control(self, req):
        cmd = req["cmd"]
        if cmd == "list-sas":
            return await self._list_sas()
        if cmd == "list-boards":
            return self._list_boards()
        if cmd == "initiate":
            conn = req.get("conn")
            if conn not in self.engine.connections:
                raise KeyError("no connection %r (known: %s)" % (conn, ", ".join(self.engine.connections)))
            return {"ike_id": self.udp.call(self.engine.initiate, conn)}
        if cmd == "terminate":
            if req.get("ike_id") is not None and self.engine.ike_sa(req["ike_id"]) is None:
                raise LookupError("no IKE SA #%s (ikeoffloadctl list-sas shows them)" % req["ike_id"])
            ids = [req["ike_id"]] if req.get("ike_id") is not None else [
                sa.ike_id for sa in self.engine.ike_sas() if sa.conn and sa.conn.name == req.get("conn")]
            if not ids:
                raise KeyError("no IKE SA for %s" % (req.get("conn") or req.get("ike_id")))
            for i in ids:
                self.udp.call(self.engine.delete_ike, i, reason="terminated by operator")
            return {"terminated": ids}
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
            self._flush(BoardLost(name, "operator", "ikeoffloadctl flush-board", now, client.session.last_ack_at,
                                  tuple(sorted(client.session.books.sas))), gone, now)
            return self.incidents[-1].as_dict()
        if cmd == "stats":
            s = dict(self.stats)
            s.update({"ike_sas": len(self.engine.ike_sas()), "child_sas": len(self.children),
                      "half_open": self.engine.half_open_count(), "uptime_s": round(time.time() - self.started_at, 1)})
            s.update({"datapath_" + k: v for k, v in self.datapath.stats.items()})
            s["host_drops"] = dict(self.datapath.drops())
            s["board_queues"] = self.datapath.queue_state()
            s.update({"udp_" + k: v for k, v in self.udp.stats.items()})
            s.update({"engine_" + k: v for k, v in self.engine.stats.items()})
            s["incidents"] = [i.as_dict() for i in self.incidents]
            s["monotonic_now"] = time.monotonic()
            return s
        raise ValueError(cmd)

    async def _list_sas(self):
        counters = {}
        for client in self.clients.values():
            if client.ready:
                try:
                    for st in await asyncio.wait_for(client.stats(), 2):
                        counters[(st.spi, st.direction)] = st
                except (LinkError, asyncio.TimeoutError):
                    pass
        out = []
        for sa in self.engine.ike_sas():
            b = self.pool.owner_of(sa.ike_id)
            kids = []
            for ch in self.children.values():
                if ch["ike_id"] != sa.ike_id:
                    continue
                c = dict(ch)
                si, so = counters.get((ch["spi_in"], m.DIR_IN)), counters.get((ch["spi_out"], m.DIR_OUT))
                c.update(bytes_in=si.octets if si else 0, packets_in=si.packets if si else 0,
                         bytes_out=so.octets if so else 0, packets_out=so.packets if so else 0,
                         proposal=_esp_name(ch))
                kids.append(c)
            est = sa.established_at
            out.append({"ike_id": sa.ike_id, "conn": sa.conn.name if sa.conn else None,
                        "state": sa.state.upper() if isinstance(sa.state, str) else str(sa.state),
                        "initiator": sa.initiator, "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
                        "local": "%s[%d]" % sa.local, "remote": "%s[%d]" % sa.remote,
                        "local_id": str(sa.local_id) if sa.local_id else "",
                        "remote_id": str(sa.remote_id) if sa.remote_id else "",
                        "proposal": self.ike_info.get(sa.ike_id, {}).get("proposal", ""),
                        "established_at": (time.time() - (time.monotonic() - est)) if est else None,
                        "board": b.name if b else None, "children": kids})
        return out

    def _list_boards(self):
        out = []
        for b in self.cfg.boards:
            client = self.clients[b.name]
            s = client.session
            st = self.pool.boards[b.name]
            h = s.hello if s else None
            loss = st.last_loss
            inc = next((i for i in reversed(self.incidents) if i.board == b.name), None)
            out.append({
                "name": b.name, "port": b.port, "profile": b.profile_name, "state": s.state if s else "closed",
                "boot_id": s.boot_id.hex() if s and s.boot_id else None,
                "uptime_ms": s.last_ack.uptime_ms if s and s.last_ack else None,
                "reset_cause": RESET_CAUSES.get(h.reset_cause) if h else None,
                "firmware": h.fw_version if h else None, "max_sas": h.max_sas if h else None,
                "sa_count": len(s.books.sas) if s else 0, "ike_sas": len(st.ike_sas),
                "rtt_ms": s.rtt * 1000 if s and s.rtt is not None else None,
                "heartbeat_ms": b.period * 1000, "misses": b.misses,
                "transforms": ["%s/%s" % (_transform_name(t.encr, t.key_bits, t.integ), t.backend)
                               for t in (h.transforms if h else [])],
                "losses": st.losses,
                "last_loss": {"reason": loss.reason, "detail": loss.detail,
                              "at": time.time() - (time.monotonic() - loss.at),
                              "ike_sas_flushed": len(inc.ike_sas) if inc else 0} if loss else None,
            })
        return out


def _transform_name(encr, bits, integ):
    name = {m.ENCR_AES_GCM_16: "AES_GCM_16", m.ENCR_AES_CBC: "AES_CBC"}.get(encr, "ENCR_%d" % encr)
    out = "%s-%d" % (name, bits)
    if integ:
        out += "/" + {m.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128"}.get(integ, "INTEG_%d" % integ)
    return out


def _esp_name(ch):
    return _transform_name(ch["encr"], ch["key_bits"], ch["integ"])


class JournalFormatter(logging.Formatter):
    """stderr lines journald files by priority (<N> prefix, sd-daemon(3)); plain time-stamped lines
    on a terminal or file."""

    PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal):
        super().__init__("%(message)s" if journal else "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record):
        s = super().format(record)
        return "<%d>%s" % (self.PRIO.get(record.levelno, 6), s) if self.journal else s


def setup_logging(level):
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(getattr(logging, level.upper()))


def main(argv=None):
    ap = cli.ArgumentParser(prog="ikeoffloadd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "-c", default="/etc/ikeoffload/ikeoffloadd.toml")
    ap.add_argument("--check-config", metavar="FILE", help="validate FILE and exit (0: valid)")
    ap.add_argument("--log-level", choices=cfgmod.LOG_LEVELS, help="override daemon.log_level")
    ap.add_argument("--no-tun", action="store_true", help="run without a TUN device (control plane only)")
    ap.add_argument("--version", action="version", version="%(prog)s " + __version__)
    args = ap.parse_args(argv)
    if args.check_config:
        try:
            c = cfgmod.load(args.check_config)
        except cfgmod.ConfigError as e:
            print("ikeoffloadd: %s" % e, file=sys.stderr)
            return 1
        for w in c.warnings:
            print("ikeoffloadd: warning: %s" % w, file=sys.stderr)
        print("%s: valid (%d board(s), %d connection(s))" % (args.check_config, len(c.boards), len(c.connections)))
        return 0
    try:
        c = cfgmod.load(args.config)
    except cfgmod.ConfigError as e:
        print("ikeoffloadd: %s" % e, file=sys.stderr)
        return 1
    setup_logging(args.log_level or c.log_level)
    for w in c.warnings:
        log.warning("%s", w)
    try:      # a second daemon, ports in use, bad board ports: refused before anything changes
        guard = preflight.check(c, tun=not args.no_tun)
    except cfgmod.ConfigError as e:
        log.error("%s", e)
        return 1
    gc.set_threshold(20000, 20, 20)   # thousands of live SAs make full collections expensive
    try:
        asyncio.run(Daemon(c, tun=not args.no_tun).run())
    except OSError as e:
        log.error("%s", preflight.runtime_error(c, e))
        return 1
    finally:
        guard.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
