"""The sans-I/O IKEv2 engine (manager of all IKE SAs), driven like aioquic's connection:

    engine.receive_datagram(data, addr, now, local)   # an IKE message (non-ESP marker removed)
    engine.datagrams_to_send(now) -> [Datagram]       # what to send, from which local port
    engine.get_timer() -> float | None                # when to call handle_timer next
    engine.handle_timer(now)
    engine.next_event() -> Event | None               # IkeSaUp, ChildSaInstall, ChildSaDelete, ...
    engine.child_sa_installed(handle, ok, now)        # phase two of a Child SA install

plus the commands initiate(), create_child(), delete_child(), delete_ike(), check_liveness(),
rekey_child(), rekey_ike(), and the reports from the ESP processor: esp_unknown_spi(),
esp_received(), child_sa_expired(). Time is whatever monotonic clock the caller uses, in seconds.

This module is the driver's side: the verbs above, and the dispatch of each received message to
the task that handles it — after the checks every message passes (SPIs, Message IDs, ICV,
half-open limits, cookies, rate limits on unprotected answers, §2.1, §2.4, §2.6, §2.21). The
tables and services the exchanges share are the context (context.py); the exchanges are tasks
(task.py), one module each; the lifecycle rules live in rekey.py, reauth.py, liveness.py,
invalid_spi.py and cookies.py.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field

from . import cookies, followup_ke, fragments, ike_intermediate, informational, invalid_spi, liveness, rekey
from .child_create import CreateChildTask
from .config import Connection, EngineSettings, RetransmitPolicy, same_connection
from .constants import ExchangeType, Flag, Notify, PayloadType
from .context import Context, Datagram
from .events import IkeSaMoved
from .ike_auth import IkeAuthTask
from .ike_init import ZERO_SPI, respond as init_respond
from .ike_sa import IkeSa
from .message import Message, VersionError, open_sk, parse_header, parse_plain
from .payloads import NotifyPayload, SyntaxError_, UnsupportedCritical
from .proposals import OffloadCapabilities
from .states import ChildSaState, IkeSaState
from .task import Outcome

__all__ = ["ConnectionsLoaded", "Datagram", "EngineSettings", "IkeEngine"]

_INIT = int(ExchangeType.IKE_SA_INIT)
_AUTH = int(ExchangeType.IKE_AUTH)
_SKF = int(PayloadType.SKF)
_CHILD = int(ExchangeType.CREATE_CHILD_SA)
_INFO = int(ExchangeType.INFORMATIONAL)
_INTER = int(ExchangeType.IKE_INTERMEDIATE)
# what makes the task that answers a request, by exchange type (a fresh one for every request)
RESPONDERS = {
    _AUTH: lambda msg: IkeAuthTask(),
    _INTER: lambda msg: ike_intermediate.IntermediateTask(),
    int(ExchangeType.IKE_FOLLOWUP_KE): lambda msg: followup_ke.FollowupKeTask(),
    _CHILD: rekey.responder_for,
    _INFO: lambda msg: informational.InformationalTask(),
}
_DEAD = IkeSaState.DEAD
# What the engine logs: messages in and out (debug: exchange, Message ID, SPIs, addresses — never
# a payload, a key or a secret), commands, malformed input (debug) and internal errors.
log = logging.getLogger("ikeoffloadd.ike")


def _exchange_name(exch):
    try:
        return ExchangeType(exch).name
    except ValueError:
        return "exchange %d" % exch


def describe_header(hdr) -> str:
    """An IKE header in words, for the log: exchange, request/response, Message ID, SPIs."""
    return "%s %s #%d [%s_i %s_r]" % (_exchange_name(hdr.exchange),
                                      "response" if hdr.flags & Flag.RESPONSE else "request", hdr.mid,
                                      hdr.spi_i.hex(), hdr.spi_r.hex())


@dataclass
class ConnectionsLoaded:
    """What :meth:`IkeEngine.load_connections` did, by connection name; the IKE SAs it deleted
    and those it initiated, by id."""
    unchanged: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    added: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    initiated: list = field(default_factory=list)


class IkeEngine:
    """All IKE SAs of one daemon. ``connections`` maps names to :class:`Connection`;
    ``capabilities`` is the offload board's :class:`OffloadCapabilities`, or a callable
    ``(IkeSa) -> OffloadCapabilities`` when several boards differ (the daemon places each IKE SA
    on a board). ``strict``: internal errors raise instead of being counted (tests)."""

    def __init__(self, connections, capabilities, settings: EngineSettings | None = None,
                 retransmit: RetransmitPolicy | None = None, *, strict: bool = False):
        if isinstance(connections, (list, tuple)):
            connections = {c.name: c for c in connections}
        if capabilities is None:
            raise ValueError("the engine needs the offload board's capabilities")
        self.ctx = Context(dict(connections), capabilities, settings or EngineSettings(),
                           retransmit or RetransmitPolicy())
        self.strict = strict
        self.responders = dict(RESPONDERS)      # replaceable, e.g. by tests
        # False: a new IKE_SA_INIT request gets no answer (the daemon says so while an HA router has
        # no board to carry a Child SA: the standby can serve it, and an IKE SA set up here would be
        # one without Child SAs, dropped when this router hands the address over)
        self.answer_init = True
        self._conn_cache: dict = {}

    @property
    def connections(self) -> dict[str, Connection]:
        return self.ctx.connections

    @property
    def settings(self) -> EngineSettings:
        return self.ctx.settings

    @property
    def retransmit(self) -> RetransmitPolicy:
        return self.ctx.retransmit

    @property
    def stats(self):
        return self.ctx.stats

    @property
    def jitter(self):
        """The ``random.Random`` behind lifetime jitter (tests seed it); SPIs, nonces and cookies
        use the system CSPRNG."""
        return self.ctx.jitter

    # ================================================================ public API: commands

    def start(self, now: float, names=None) -> list[int]:
        """Initiate every connection with ``start_action = "start"`` (of ``names`` only, if given),
        with the children marked ``start_action = "start"`` (or its first child if none is),
        retried per ``keyingtries``. Returns the IKE SA ids."""
        ids = []
        for name, conn in self.connections.items():
            if conn.start_action != "start" or (names is not None and name not in names):
                continue
            marked = [c for c, cfg in conn.children.items() if cfg.start_action == "start"]
            ids.append(self.initiate(name, now, marked or None, retry=True))
        return ids

    def initiate(self, conn_name: str, now: float, child: str | list | None | bool = None, *,
                 retry: bool = False, start_at: float | None = None, attempt: int = 1,
                 trigger: tuple | None = None) -> int:
        """Start an IKE SA for ``conn_name``. ``child``: a child name or list of names (the first is
        negotiated in IKE_AUTH, the others with CREATE_CHILD_SA right after), None for the first
        configured child, False for none (childless, RFC 6023). ``retry``: if it fails before it is
        established, try again per the connection's ``keyingtries`` (liveness.py). ``start_at``:
        send the first message only then. ``trigger``: (source, destination) of the packet that
        asked for the first Child SA (on demand): its selectors come first (§2.9). Returns the
        IKE SA id."""
        ike_id = self.ctx.initiate(conn_name, now, child, retry=retry, start_at=start_at, attempt=attempt,
                                   trigger=trigger).ike_id
        log.debug("initiating %s as IKE SA #%d (attempt %d)", conn_name, ike_id, attempt)
        return ike_id

    def load_connections(self, connections, now: float, start: bool = True) -> ConnectionsLoaded:
        """Take a new set of connections (a configuration reload, as swanctl --load-all): an
        unchanged connection keeps its IKE SAs; a removed one's IKE SAs are deleted (a Delete to
        the peer, §1.4.1); a changed one's are deleted and it is established anew; an added one
        starts. With ``start`` (False while the driver holds connections back, e.g. until an ESP
        processor is ready), changed and added connections with ``start_action = "start"`` are
        initiated, and a changed one that had IKE SAs up comes back with the Child SAs they
        carried whatever its start_action."""
        if isinstance(connections, (list, tuple)):
            connections = {c.name: c for c in connections}
        old = self.connections
        out = ConnectionsLoaded()
        new = {}
        for name, conn in connections.items():
            if name not in old:
                out.added.append(name)
                new[name] = conn
            elif same_connection(old[name], conn):
                out.unchanged.append(name)
                new[name] = old[name]           # its IKE SAs keep the very object they were made with
            else:
                out.changed.append(name)
                new[name] = conn
        out.removed = [name for name in old if name not in connections]
        self.ctx.connections = new
        self._conn_cache.clear()
        log.debug("connections loaded: unchanged %s, changed %s, added %s, removed %s",
                  out.unchanged, out.changed, out.added, out.removed)
        carried = {}
        for sa in self.ike_sas():
            name = sa.conn.name if sa.conn is not None else None
            if name in out.removed or name in out.changed:
                if sa.state == IkeSaState.ESTABLISHED:
                    carried.setdefault(name, liveness.child_names(sa))
                out.deleted.append(sa.ike_id)
                self.delete_ike(sa.ike_id, now, "connection %s by a configuration reload"
                                % ("removed" if name in out.removed else "changed"))
        if start:
            out.initiated = self.start(now, set(out.added) | set(out.changed))
            started = {self.ctx.by_id[i].conn.name for i in out.initiated if i in self.ctx.by_id}
            for name in out.changed:
                conn = new[name]
                if name in carried and name not in started and conn.remote_host is not None:
                    kids = [c for c in carried[name] if c in conn.children] or None
                    out.initiated.append(self.initiate(name, now, kids, retry=True))
        return out

    def create_child(self, ike_id: int, child: str, now: float, trigger: tuple | None = None):
        """Negotiate one more Child SA on an established IKE SA (CREATE_CHILD_SA, §1.3.1);
        ``trigger`` as for :meth:`initiate`."""
        sa = self.ctx.by_id[ike_id]
        sa.add_task(CreateChildTask(sa.conn.children[child], trigger=trigger), now)

    def rekey_child(self, handle: int, now: float) -> bool:
        """Rekey Child SA ``handle`` now (§1.3.3). False if it cannot be (not installed, being
        rekeyed or already replaced)."""
        c = self.ctx.children.get(handle)
        return c is not None and rekey.start_child_rekey(c.ike, c, now)

    def rekey_ike(self, ike_id: int, now: float) -> bool:
        """Rekey IKE SA ``ike_id`` now (§2.18); its Child SAs move to the new one."""
        sa = self.ctx.by_id.get(ike_id)
        return sa is not None and rekey.start_ike_rekey(sa, now)

    def delete_child(self, handle: int, now: float, reason: str = "deleted locally"):
        """Delete Child SA ``handle`` with an INFORMATIONAL exchange (§1.4.1)."""
        child = self.ctx.children.get(handle)
        sa = child.ike if child is not None else None
        if sa is None or self.ctx.by_id.get(sa.ike_id) is not sa or handle not in sa.children:
            raise KeyError(handle)
        sa.add_task(informational.DeleteChildTask([handle], reason), now)

    def delete_ike(self, ike_id: int, now: float, reason: str = "deleted locally"):
        """Delete an IKE SA and its Child SAs: an INFORMATIONAL Delete if it is established (sent
        ahead of queued exchanges), otherwise dropped at once."""
        sa = self.ctx.by_id.get(ike_id)
        if sa is None:
            return
        log.debug("deleting IKE SA #%d: %s", ike_id, reason)
        if sa.state == IkeSaState.ESTABLISHED:
            sa.queue.clear()
            sa.add_task(informational.DeleteIkeTask(reason), now, first=True)
        else:
            self.ctx.destroy(sa, reason, now)

    def drop_ike(self, ike_id: int, now: float, reason: str, send_delete: bool = True) -> list[str]:
        """Remove an IKE SA at once (the daemon's flush when a board is lost, RFC 7296 §2.4): a
        best-effort INFORMATIONAL Delete goes out (not retransmitted), ChildSaDelete for each Child
        SA and IkeSaDown follow immediately. Nothing is re-initiated here; returns the names of the
        Child SA configurations it carried, for ``initiate(conn, now, names, retry=True)``."""
        sa = self.ctx.by_id.get(ike_id)
        if sa is None:
            return []
        names = liveness.child_names(sa)
        self.ctx.destroy(sa, reason, now, send_delete=send_delete)
        return names

    def check_liveness(self, ike_id: int, now: float, on_alive=None):
        """Send an empty INFORMATIONAL request (§1.4); no answer after the retransmissions tears the
        IKE SA down (§2.4) and the connection's ``dpd_action`` applies."""
        sa = self.ctx.by_id[ike_id]
        sa.add_task(informational.LivenessTask(on_alive), now)

    # ================================================================ public API: the ESP processor

    def esp_unknown_spi(self, spi: int, src: tuple | None, now: float, local: tuple | None = None):
        """The board received ESP for ``spi`` it does not have, from ``src`` = (ip, port); ``local``
        = (our ip, port) it arrived on. INVALID_SPI inside an IKE SA with that peer, or (only with
        ``unprotected_invalid_spi``) outside any; rate-limited per source and in total
        (invalid_spi.py, §1.5). Returns "protected", "unprotected" or None (nothing sent)."""
        return invalid_spi.report(self.ctx, spi, src, now, local)

    def spi_pending(self, spi_in: int) -> bool:
        """``spi_in`` is an inbound SPI we offered in a request still in flight, or one of a Child
        SA being installed: the peer, which installs when it answers, may already send on it."""
        spis = self.ctx.child_spis
        if spi_in not in spis:
            return False
        c = spis[spi_in]
        return c is None or c.state == ChildSaState.INSTALLING

    def esp_received(self, handle: int, now: float):
        """Inbound ESP decrypted on Child SA ``handle`` (board counters moved): proof of liveness
        for its IKE SA (§2.4). Cheap; call it per poll, not per packet."""
        c = self.ctx.children.get(handle)
        if c is not None and c.state != ChildSaState.DEAD:
            liveness.proof(c.ike, now)

    def esp_received_spi(self, spi_in: int, now: float):
        """As :meth:`esp_received`, by the SPI the packet arrived with."""
        c = self.ctx.child_spis.get(spi_in)
        if c is not None and c.state != ChildSaState.DEAD:
            liveness.proof(c.ike, now)

    def child_sa_expired(self, handle: int, hard: bool, now: float):
        """The board reports a lifetime (time, bytes, packets, sequence numbers) of Child SA
        ``handle`` ran out (RFC 4301 §4.4.2.1). Soft: rekey it now (§2.8). Hard: it is unusable —
        delete it (at the peer too) and create it anew unless a rekey already replaced it."""
        c = self.ctx.children.get(handle)
        if c is None or c.state != ChildSaState.INSTALLED:
            return
        sa = c.ike
        if not hard:
            self.stats["child_soft_expiries"] += 1
            rekey.start_child_rekey(sa, c, now)
            return
        self.stats["child_hard_expiries"] += 1
        self.ctx.recreate_child(sa, c, now, "hard lifetime expired (board)")

    # ================================================================ public API: I/O

    def receive_datagram(self, data: bytes, addr: tuple, now: float, local: tuple | None = None):
        """Feed one received IKE message (without the non-ESP marker). ``addr`` is the sender's
        (ip, port), ``local`` our (ip, port) it arrived on. Never raises for bad input."""
        if len(data) > self.settings.max_packet:
            self.stats["too_big"] += 1           # never parsed: its cost is the copy we got
            return
        try:
            self._receive(data, addr, now, local)
        except (SyntaxError_, UnsupportedCritical, VersionError) as e:
            self.stats["malformed"] += 1
            log.debug("malformed IKE message from %s[%s] dropped: %s", addr[0], addr[1], e.__class__.__name__)
        except Exception:                      # pragma: no cover - a bug; keep the daemon alive
            self.stats["internal_errors"] += 1
            if self.strict:
                raise
            log.exception("internal error on an IKE message from %s[%s]", addr[0], addr[1])

    def datagrams_to_send(self, now: float | None = None) -> list[Datagram]:
        ctx = self.ctx
        out, ctx.datagrams = ctx.datagrams, []
        if out and log.isEnabledFor(logging.DEBUG):
            for d in out:
                if not d.keepalive:
                    try:
                        what = describe_header(parse_header(d.data))
                    except (SyntaxError_, VersionError):
                        what = "%d bytes" % len(d.data)
                    log.debug("sending %s to %s[%s] from port %s", what, d.remote[0], d.remote[1], d.local[1])
        return out

    def get_timer(self) -> float | None:
        heap = self.ctx.timer_heap
        while heap:
            t, _s, sa = heap[0]
            if sa.state != _DEAD and sa.deadline == t:
                return t
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float):
        heap = self.ctx.timer_heap
        while heap and heap[0][0] <= now:
            t, _s, sa = heapq.heappop(heap)
            if sa.state != _DEAD and sa.deadline == t:
                sa.deadline = None
                sa.on_timer(now)

    def next_event(self):
        events = self.ctx.events
        return events.popleft() if events else None

    def child_sa_installed(self, handle: int, ok: bool, now: float, reason: str | None = None):
        """Phase two of a Child SA install: the board accepted (``ok``) or refused it. ``reason``
        "unsupported" answers NO_PROPOSAL_CHOSEN, anything else TEMPORARY_FAILURE."""
        child = self.ctx.installing.pop(handle, None)
        if child is None:
            raise KeyError(f"no Child SA install pending with handle {handle}")
        sa = child.ike
        if sa.state == _DEAD:
            if ok:
                child.state = ChildSaState.INSTALLED
                self.ctx.remove_child(sa, child, child.doomed or "IKE SA gone while installing")
            return
        task, child.installer = child.installer, None
        task.installed(sa, child, ok, reason, now)
        if child.doomed and child.state == ChildSaState.INSTALLED:
            self.ctx.remove_child(sa, child, child.doomed)

    # ================================================================ introspection

    def capabilities_for(self, sa: IkeSa) -> OffloadCapabilities:
        return self.ctx.capabilities_for(sa)

    def ike_sa(self, ike_id: int) -> IkeSa | None:
        return self.ctx.ike_sa(ike_id)

    def ike_sas(self) -> list[IkeSa]:
        """Every IKE SA the driver was told of (not the redundant ones of a rekey collision)."""
        return self.ctx.ike_sas()

    def half_open_count(self) -> int:
        return self.ctx.half_open_count()

    def ike_sas_with_peer(self, ip: str) -> list[IkeSa]:
        """IKE SAs whose peer is at ``ip`` (e.g. to answer an unknown-SPI report)."""
        return self.ctx.ike_sas_with_peer(ip)

    def child_by_spi_in(self, spi: int):
        """The Child SA that receives on ``spi``, if any."""
        c = self.ctx.child_spis.get(spi)
        return c if c is not None and c.state != ChildSaState.DEAD else None

    def child_by_spi_out(self, spi: int, peer_ip: str | None = None):
        """The Child SA that sends with ``spi`` (to ``peer_ip``), if any: for outbound SA_EXPIRE."""
        for c in self.ctx.children_sending_with(spi):
            if c.state != ChildSaState.DEAD and (peer_ip is None or c.ike.remote[0] == peer_ip):
                return c
        return None

    # ================================================================ receive path

    def _receive(self, data, addr, now, local):
        hdr = parse_header(data)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("received %s from %s[%s]", describe_header(hdr), addr[0], addr[1])
        if local is None:
            local = (self.settings.local_addr or "0.0.0.0", self.settings.port)
        if hdr.exchange == _INIT:
            if hdr.flags & Flag.RESPONSE:
                self._init_response(hdr, data, addr, local, now)
            elif hdr.flags & Flag.INITIATOR and hdr.spi_r == ZERO_SPI and hdr.mid == 0:
                self._init_request(hdr, data, addr, local, now)
            return
        ours = hdr.spi_r if hdr.flags & Flag.INITIATOR else hdr.spi_i
        sa = self.ctx.by_spi.get(ours)
        if sa is None or sa.state == _DEAD:
            invalid_spi.unknown_ike_sa(self.ctx, hdr, data, addr, local, now)      # §1.5, §2.21.4
            return
        if bool(hdr.flags & Flag.INITIATOR) == sa.initiator or \
                sa.peer_spi != (hdr.spi_r if sa.initiator else hdr.spi_i):
            self.stats["unknown_spi"] += 1
            return
        opened = None
        if hdr.next_payload == _SKF:                  # RFC 7383: one fragment of a message
            opened = fragments.receive(sa, hdr, data, now)
            if opened is None:
                return
        if hdr.flags & Flag.RESPONSE:
            self._response(sa, hdr, data, addr, local, now, opened)
        else:
            self._request(sa, hdr, data, addr, local, now, opened)

    def _init_request(self, hdr, data, addr, local, now):
        ctx = self.ctx
        key = (hdr.spi_i, addr[0])
        sa = ctx.half_open.get(key)
        if sa is not None:
            # §2.1: a retransmitted IKE_SA_INIT gets the same answer, no new state
            if sa.init_req == data and sa.init_resp and sa.state == IkeSaState.CONNECTING:
                if ctx.limits.replies.take(addr[0], now):     # a replayed request must not make us a reflector
                    self.stats["init_retransmits_answered"] += 1
                    ctx.send(sa.init_resp, addr, local)
                else:
                    self.stats["replies_rate_limited"] += 1
            return
        if not self.answer_init:
            self.stats["init_not_answered"] += 1
            return
        try:
            payloads, sk = parse_plain(hdr, data)
        except UnsupportedCritical as e:
            ctx.reply_error(hdr, Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type,)), addr, local, now)
            raise
        except SyntaxError_:
            ctx.reply_error(hdr, Notify.INVALID_SYNTAX, b"", addr, local, now)
            raise
        if sk is not None:
            self.stats["malformed"] += 1
            return
        s = self.settings
        if ctx.half_open_count() >= s.max_half_open or ctx.half_open_from(addr[0]) >= s.max_half_open_per_ip:
            self.stats["half_open_limit"] += 1
            return
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, payloads)
        if not cookies.admit(ctx, hdr, msg, addr, local, now):      # §2.6
            return
        conns = self._conns_for(local[0], addr[0])
        if not conns:
            ctx.reply_error(hdr, Notify.NO_PROPOSAL_CHOSEN, b"", addr, local, now)
            return
        sa = init_respond(ctx, hdr, msg, data, addr, local, conns, now)
        if sa is not None:
            ctx.enter_half_open(sa, key)
            self.stats["half_open_created"] += 1

    def _conns_for(self, local_ip: str, remote_ip: str) -> list:
        """Connections whose addresses fit, in configuration order (cached per address pair)."""
        key = (local_ip, remote_ip)
        hit = self._conn_cache.get(key)
        if hit is None:
            if len(self._conn_cache) >= 4096:
                self._conn_cache.clear()
            hit = self._conn_cache[key] = [c for c in self.connections.values()
                                           if c.matches_addrs(local_ip, remote_ip)]
        return hit

    def _init_response(self, hdr, data, addr, local, now):
        sa = self.ctx.by_spi.get(hdr.spi_i)
        if sa is None or not sa.initiator or sa.state != IkeSaState.CONNECTING or hdr.mid != 0:
            return
        o = sa.outstanding
        if o is None or o.exchange != _INIT:
            return
        payloads, sk = parse_plain(hdr, data)
        if sk is not None:
            return
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, payloads)
        sa.outstanding = None
        outcome = o.task.on_response(sa, msg, data, now)
        if outcome is Outcome.FAILED:
            return
        if outcome is Outcome.IGNORED:
            sa.outstanding = o          # not a usable answer: keep waiting and retransmitting
            self.stats["init_responses_ignored"] += 1
        elif outcome is Outcome.DONE:
            sa.my_mid = 1
            sa.finish_task(now)
        sa.reschedule()

    def _decrypt(self, sa, hdr, data):
        """Returns the inner payloads or None (not authentic: unparsable outside the Encrypted
        payload, no Encrypted payload, or ICV failure). Raises SyntaxError_/UnsupportedCritical only
        for a message whose ICV verified, i.e. an authentic but malformed one."""
        try:
            _outer, sk = parse_plain(hdr, data)
        except (SyntaxError_, UnsupportedCritical):
            self.stats["malformed"] += 1
            return None
        if sk is None:
            return None         # §3.14: after IKE_SA_INIT everything is protected
        return open_sk(data, sk, sa.cipher)

    def _nat_update(self, sa, addr, local):
        """§2.23: with a NAT in the path, follow the address of the latest authentic message; once
        the IKE SA is up its Child SAs' ESP-in-UDP must follow too (IkeSaMoved)."""
        if sa.nat and (addr != sa.remote or local != sa.local):
            self.ctx.peer_moved(sa, addr)
            sa.remote = addr
            sa.local = local
            if sa.state != IkeSaState.CONNECTING:
                self.stats["nat_moves"] += 1
                self.ctx.emit(IkeSaMoved(sa.ike_id, sa.local, sa.remote))

    def _request(self, sa, hdr, data, addr, local, now, opened=None):
        mid = hdr.mid
        if mid != sa.peer_mid:
            if mid == sa.peer_mid - 1 and sa.pending_mid != mid and sa.last_request == data \
                    and sa.last_response is not None:
                self.stats["retransmits_answered"] += 1      # §2.1: resend our answer unchanged
                for d in sa.last_response[0]:
                    self.ctx.send(d, addr, local)
            else:
                self.stats["bad_message_id"] += 1
            return
        exch = hdr.exchange
        err = None
        try:
            inner = opened() if opened is not None else self._decrypt(sa, hdr, data)
        except UnsupportedCritical as e:
            inner, err = [], (Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type,)))
        except SyntaxError_:
            inner, err = [], (Notify.INVALID_SYNTAX, b"")
        if inner is None:
            self.stats["bad_icv"] += 1
            return
        # authentic from here on
        sa.peer_mid = mid + 1
        sa.last_request = data
        sa.last_response = None
        sa.last_heard = now
        self._nat_update(sa, addr, local)

        def reply(payloads, now2, _mid=mid, _exch=exch, _addr=addr, _local=local):
            if sa.state == _DEAD and _exch != _AUTH and _exch != _INFO:
                return
            sa.pending_mid = None
            sa.send_response(_mid, _exch, payloads, _addr, _local)

        if err is not None:
            reply([NotifyPayload(err[0], err[1])], now)
            if exch == _AUTH:
                self.ctx.destroy(sa, "malformed IKE_AUTH", now, established=False)
            return
        responder = self.responders.get(exch)
        setup = exch == _AUTH or exch == _INTER         # the exchanges before the IKE SA is up
        valid = responder is not None and (
            (setup and sa.state == IkeSaState.CONNECTING and not sa.initiator) or
            (not setup and sa.state != IkeSaState.CONNECTING))
        if not valid:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return
        msg = Message(hdr.spi_i, hdr.spi_r, exch, hdr.flags, mid, inner, True)
        if sa.collision_of is not None:
            rekey.peer_resolved(sa, inner, now)
        if sa.unconfirmed is not None or (sa.successor is not None and sa.successor.unconfirmed is not None):
            rekey.peer_request(sa, inner, now)
        if responder(msg).on_request(sa, msg, reply, now) is Outcome.PENDING:
            sa.pending_mid = mid    # answered after the board's verdict; a resend of it waits too

    def _response(self, sa, hdr, data, addr, local, now, opened=None):
        o = sa.outstanding
        if o is None or hdr.mid != o.mid or hdr.exchange != o.exchange:
            self.stats["unexpected_response"] += 1
            return
        try:
            inner = opened() if opened is not None else self._decrypt(sa, hdr, data)
        except (SyntaxError_, UnsupportedCritical):
            # authentic but malformed: this exchange cannot complete; give the IKE SA up
            sa.outstanding = None
            self.ctx.warn(sa, "malformed protected response")
            self.ctx.destroy(sa, "malformed response from peer", now)
            return
        if inner is None:
            if not invalid_spi.ike_spi_hint(sa, hdr, data, addr, now):        # §2.21.4
                self.stats["bad_icv"] += 1
            return
        sa.outstanding = None
        sa.my_mid += 1
        sa.last_heard = now
        self._nat_update(sa, addr, local)
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, inner, True)
        if o.task.on_response(sa, msg, data, now) is Outcome.DONE and sa.state != _DEAD:
            sa.finish_task(now)
        if sa.state != _DEAD:
            sa.reschedule()
