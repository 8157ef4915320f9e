"""The Child SAs on the boards: two-phase install with rollback, make-before-break removal.

The engine asks for a Child SA with ChildSaInstall and waits for the answer
(``answer(handle, ok, reason)``, the engine's ``child_sa_installed``): both halves go on the IKE
SA's board (its failure domain, RFC 7296 §2.4) — two SA_ADDs at once, which the link client
sends in order within its window, as it does those of other installs — then the data path gets
its route and the engine its answer. A ChildSaDelete takes the route out of the data path and both halves off the board;
a replaced SA's (rekey, reauthentication: RFC 7296 §2.8) inbound half stays a little longer.

What the daemon knows of an installed Child SA is its data path route (ChildRoute: board, SPIs,
selectors, transform, peer); what the protocol knows of it (name, state, mode, IKE SA) is the
engine's ChildSa. Nothing else keeps a copy.
"""
import asyncio
import ipaddress
import logging
import time

from firmware.link import messages as m
from host.dataplane.datapath import ChildRoute, ts_networks
from host.offload.client import LinkError
from host.offload.pool import NoBoard

log = logging.getLogger("ikeoffloadd")

# How long a replaced Child SA's inbound half stays on the board once the rekey or
# reauthentication that replaced it is complete (RFC 7296 §2.8): what the peer sent on it just
# before it switched, and what is queued here for the board behind the Delete, still decrypts.
# Its outbound half goes at once. strongSwan keeps one 5 s; a board's SA slots are scarcer, and
# in-flight packets need milliseconds.
REPLACED_INBOUND_LINGER = 1.0
# How long an outbound SA's deletion waits for the packets already on their way to the board on it.
OUTBOUND_DRAIN = 1.0
# How long the Child SAs of a lost board keep their routes into the TUN device. They are being
# re-established (RFC 7296 §2.4), and meanwhile their traffic goes into the TUN device and is
# dropped there rather than out of another route in the clear; the new Child SAs find their routes
# in place, and a flush of hundreds of Child SAs changes no routes.
LOST_BOARD_ROUTE_HOLD = 10.0


def _addr(ip, port):
    return (ipaddress.ip_address(ip).packed, port)


def _selectors(ts):
    return [(t.start, t.end, t.ip_proto, t.start_port, t.end_port) for t in ts]


_ESP_TRANSFORMS = {}


def esp_transforms(conn):
    """The (encr, key bits, integ) transforms ``conn``'s Child SAs may use (its ESP proposals):
    the board an IKE SA is placed on must run one of them. Cached per connection object."""
    hit = _ESP_TRANSFORMS.get(id(conn))
    if hit is None or hit[0] is not conn:
        need = frozenset((int(e), b, int(i)) for cfg in conn.children.values() for spec in cfg.esp_proposals
                         for e, b in spec.encr for i in (spec.integ or (0,)))
        if len(_ESP_TRANSFORMS) >= 4096:
            _ESP_TRANSFORMS.clear()
        hit = _ESP_TRANSFORMS[id(conn)] = (conn, need)
    return hit[1]


def sa_specs(ev, replay_window):
    """ChildSaInstall -> the board's two SaSpecs (inbound, outbound); the Child SA's handle is the
    reqid the board echoes in its events."""
    flags = (m.SAF_ESN if ev.esn else 0) | (m.SAF_UDP_ENCAP if ev.encap else 0)
    common = dict(mode=m.MODE_TRANSPORT if ev.mode == "transport" else m.MODE_TUNNEL, flags=flags,
                  replay_window=replay_window, src=_addr(ev.local_addr, ev.local_port),
                  dst=_addr(ev.remote_addr, ev.remote_port), reqid=ev.handle & 0xFFFFFFFF,
                  ts_local=_selectors(ev.local_ts), ts_remote=_selectors(ev.remote_ts))
    spec_in = m.SaSpec(ev.spi_in, m.DIR_IN, ev.encr, ev.key_in + ev.salt_in, ev.integ, ev.integ_key_in,
                       **common)
    spec_out = m.SaSpec(ev.spi_out, m.DIR_OUT, ev.encr, ev.key_out + ev.salt_out, ev.integ,
                        ev.integ_key_out, **common)
    return spec_in, spec_out


def route_for(ev, board):
    """The data path's record of an installed Child SA. A rekey's new SA we answered may have to
    wait for ChildSaOutbound before it sends (make before break, RFC 7296 §2.8)."""
    return ChildRoute(ev.handle, board, ev.spi_in, ev.spi_out, (ev.remote_addr, ev.remote_port),
                      ts_networks(ev.local_ts), ts_networks(ev.remote_ts),
                      sending=not (ev.rekey_of is not None and ev.defer_outbound),
                      transform=(ev.encr, ev.encr_key_bits, ev.integ), encap=ev.encap)


class ChildSas:
    def __init__(self, pool, datapath, answer, *, replay_window=64, routes=None, stats=None):
        """pool: the BoardPool; datapath: the DataPath; answer(handle, ok, reason): the engine's
        child_sa_installed; routes: the TUN device's routes (TunRoutes) or None; stats: the
        daemon's counters (child_installs, child_install_failures)."""
        self.pool = pool
        self.datapath = datapath
        self.answer = answer
        self.replay_window = replay_window
        self.routes = routes
        self.stats = stats if stats is not None else {"child_installs": 0, "child_install_failures": 0}
        self._tasks = set()

    def installed(self, handle):
        """The data path's route of an installed Child SA (None: not on a board)."""
        return self.datapath.by_handle.get(handle)

    def __len__(self):
        return len(self.datapath.by_handle)

    # ---- install ------------------------------------------------------------------------------
    def begin_install(self, ev):
        """ChildSaInstall: the install runs in the background; the engine hears of it when it ends."""
        return self._spawn(self.install(ev))

    async def install(self, ev):
        """Two-phase install: the exchange is answered once both SAs are on the board, or once
        the install failed, whatever failed (the board refused, was lost, answered something
        that does not decode, or a bug here): the engine always hears back, and the board's
        slots reserved for it are always released."""
        try:
            reason = await self._install(ev)
        except Exception as e:          # never leave the exchange waiting for an answer
            log.exception("Child SA %s #%d: install failed", ev.name, ev.handle)
            reason = "install failed: %s" % (e,)
        if reason is None:
            self.stats["child_installs"] += 1
        else:
            self.stats["child_install_failures"] += 1
        self.answer(ev.handle, reason is None, reason)

    async def _install(self, ev):
        """Both halves on the IKE SA's board and the route in the data path; returns None, or why not."""
        b = self.pool.owner_of(ev.ike_id)
        if b is None:
            try:
                b = self.pool.place(ev.ike_id)
            except NoBoard:
                b = None
        if b is None or not b.ready:
            return "no ready board"
        if len(ev.local_ts) > m.MAX_TS or len(ev.remote_ts) > m.MAX_TS:
            log.warning("Child SA %s #%d: %d/%d traffic selectors, a board holds %d each way", ev.name,
                        ev.handle, len(ev.local_ts), len(ev.remote_ts), m.MAX_TS)
            return "too many traffic selectors"
        try:       # what the board and the data path get, checked before the board is asked
            route = route_for(ev, b.name)
            specs = sa_specs(ev, self.replay_window)
        except (ValueError, m.MessageError) as e:
            log.warning("Child SA %s #%d: cannot be installed: %s", ev.name, ev.handle, e)
            return "bad traffic selectors: %s" % (e,)
        keys = [(spec.spi, spec.direction) for spec in specs]
        if not b.reserve(keys):
            log.warning("Child SA %s #%d: board %s has no room for 2 more SAs", ev.name, ev.handle, b.name)
            return "full"
        client = b.client
        try:
            results = await asyncio.gather(*(client.sa_add(spec) for spec in specs), return_exceptions=True)
        finally:
            b.unreserve(keys)       # what went on the board is counted in its books from here on
        e = next((r for r in results if isinstance(r, BaseException)), None)
        if e is not None:
            await self._roll_back(client, [s for s, r in zip(specs, results) if not isinstance(r, BaseException)])
            if not isinstance(e, LinkError):
                raise e
            log.warning("Child SA %s #%d: board %s refused it: %s", ev.name, ev.handle, b.name, e)
            return "unsupported" if e.status == m.UNSUPPORTED else "full" if e.status == m.SAD_FULL else str(e)
        try:
            self.datapath.add(route)
            if self.routes is not None:
                self.routes.add(route)
        except Exception:
            self.datapath.remove(route.handle)
            await self._roll_back(client, specs)
            raise
        return None

    async def _roll_back(self, client, specs):
        """Take the halves of a failed install off the board again (best effort: a lost board
        has none of them)."""
        for spec in specs:
            try:
                await client.sa_del(spec.spi, spec.direction)
            except LinkError:
                pass

    # ---- removal ------------------------------------------------------------------------------
    def remove(self, ev):
        """ChildSaDelete: out of the data path at once, off the board in the background."""
        log.debug("Child SA #%d removed: %s", ev.handle, ev.reason)
        linger = ev.replaced and REPLACED_INBOUND_LINGER > 0
        route = self.datapath.retire(ev.handle) if linger else self.datapath.remove(ev.handle)
        if route is None:
            return
        if self.routes is not None:
            if route.usable:
                self._drop_route(route)
            else:                   # its board was lost: the route stays while it comes back
                asyncio.get_running_loop().call_later(LOST_BOARD_ROUTE_HOLD, self._drop_route, route)
        b = self.pool.boards.get(route.board)
        client = b.client if b is not None else None
        if client is not None and client.ready and client.has_sa(route.spi_in, m.DIR_IN):
            self._spawn(self._board_del(client, route, REPLACED_INBOUND_LINGER if linger else 0.0))
        else:
            self.datapath.forget_inbound(route)

    def _drop_route(self, route):
        """The TUN routes of ``route``'s remote networks go unless another Child SA covers them."""
        self.routes.remove(route, self.datapath.routes_covering(route.remote_nets))

    async def _board_del(self, client, route, linger):
        """SA_DEL both halves; a replaced SA's inbound half after ``linger`` seconds, so packets the
        peer sent on it before it switched (and those still queued here for the board) decrypt.
        The outbound half goes once the packets already handed to the link on it are encrypted:
        the board answers control before data, so an SA_DEL would overtake them."""
        for spi, d in ((route.spi_out, m.DIR_OUT), (route.spi_in, m.DIR_IN)):
            if d == m.DIR_OUT:
                deadline = time.monotonic() + OUTBOUND_DRAIN
                while route.out_in_flight and time.monotonic() < deadline and client.ready:
                    await asyncio.sleep(0.005)
            if d == m.DIR_IN and linger:
                await asyncio.sleep(linger)
                self.datapath.forget_inbound(route)
                if not client.ready or not client.has_sa(spi, d):
                    return              # the board was lost or flushed meanwhile
            try:
                await client.sa_del(spi, d)
            except LinkError as e:
                log.debug("board %s: SA_DEL %08x: %s", client.name, spi, e)
        self.datapath.forget_inbound(route)

    def _spawn(self, coro):
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t
