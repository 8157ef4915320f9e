"""The sans-I/O IKEv2 engine (manager of all IKE SAs), driven like aioquic's connection:

    engine.receive_datagram(data, addr, now, local)   # an IKE message (non-ESP marker removed)
    engine.datagrams_to_send(now) -> [Datagram]       # what to send, from which local port
    engine.get_timer() -> float | None                # when to call handle_timer next
    engine.handle_timer(now)
    engine.next_event() -> Event | None               # IkeSaUp, ChildSaInstall, ChildSaDelete, ...
    engine.child_sa_installed(handle, ok, now)        # phase two of a Child SA install

plus the commands initiate(), create_child(), delete_child(), delete_ike() and check_liveness().
Time is whatever monotonic clock the caller uses, in seconds. The engine keeps the SPI tables,
counts half-open SAs (RFC 7296 §2.6 limits) and rate-limits every answer it gives to unprotected
messages (§2.21).
"""
from __future__ import annotations

import heapq
import itertools
import os
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

from . import child_create, ike_auth, informational
from .config import Connection, RetransmitPolicy
from .constants import ExchangeType, Flag, Notify
from .events import ChildSaDelete, IkeSaDown, IkeSaUp, Warning_
from .ike_init import IGNORED, IkeInitTask, ZERO_SPI, respond as init_respond
from .ike_sa import CONNECTING, DEAD, ESTABLISHED, IkeSa
from .message import Message, VersionError, open_sk, parse_header, parse_plain
from .payloads import NotifyPayload, SyntaxError_, UnsupportedCritical
from .proposals import OffloadCapabilities
from .ratelimit import KeyedBuckets

_INIT = int(ExchangeType.IKE_SA_INIT)
_AUTH = int(ExchangeType.IKE_AUTH)
_CHILD = int(ExchangeType.CREATE_CHILD_SA)
_INFO = int(ExchangeType.INFORMATIONAL)
_RESPONDERS = {_AUTH: ike_auth.respond, _CHILD: child_create.respond, _INFO: informational.respond}


class Datagram(NamedTuple):
    """An IKE message to send. ``local`` = (ip, port) to send from; the driver adds the non-ESP
    marker when that port is the NAT-T port (RFC 3948 §2.2)."""
    data: bytes
    remote: tuple
    local: tuple


@dataclass
class EngineSettings:
    port: int = 500                     # our IKE port
    natt_port: int = 4500               # our NAT-T port (ESP-in-UDP too)
    local_addr: str | None = None       # default source address when a connection names none
    half_open_timeout: float = 30.0     # responder: IKE_AUTH must follow within this time
    max_half_open: int = 4096           # responder: half-open IKE SAs in total ...
    max_half_open_per_ip: int = 512     # ... and per initiator address
    reply_rate: float = 20.0            # unprotected error answers per source per second
    reply_burst: float = 40.0
    reply_global_rate: float = 500.0
    reply_global_burst: float = 1000.0


_FAIL_CLOSED = object()


class IkeEngine:
    """All IKE SAs of one daemon. ``connections`` maps names to :class:`Connection`;
    ``capabilities`` is the offload board's :class:`OffloadCapabilities`, or a callable
    ``(IkeSa) -> OffloadCapabilities`` when several boards differ (issue 6 places IKE SAs)."""

    def __init__(self, connections, capabilities, settings: EngineSettings | None = None,
                 retransmit: RetransmitPolicy | None = None):
        if isinstance(connections, (list, tuple)):
            connections = {c.name: c for c in connections}
        self.connections: dict[str, Connection] = dict(connections)
        if capabilities is None:
            raise ValueError("the engine needs the offload board's capabilities")
        self._caps = capabilities
        self.settings = settings or EngineSettings()
        self.retransmit = retransmit or RetransmitPolicy()
        self._sas: dict[bytes, IkeSa] = {}          # by our SPI
        self._ids: dict[int, IkeSa] = {}
        self._half_open: dict[tuple, IkeSa] = {}    # responder: (SPIi, peer IP) -> SA
        self._half_open_ip: Counter = Counter()
        self._installing: dict = {}                  # handle -> ChildSa awaiting the board
        self._child_spis: dict[int, object] = {}     # our inbound ESP SPIs in use
        self._heap = []
        self._seq = itertools.count()
        self._ike_ids = itertools.count(1)
        self._handles = itertools.count(1)
        self._out: list[Datagram] = []
        self._events = deque()
        self._conn_cache: dict = {}
        self._replies = KeyedBuckets(self.settings.reply_rate, self.settings.reply_burst,
                                     self.settings.reply_global_rate, self.settings.reply_global_burst)
        self._rand = random.SystemRandom()
        self.stats = Counter()
        self.strict = bool(os.environ.get("IKE_ENGINE_RAISE"))   # tests: let internal errors escape
        # hooks for the lifecycle work (issue 5): CREATE_CHILD_SA rekeys, notifications
        self.rekey_responder: Callable | None = None
        self.notify_hooks: dict[int, Callable] = {}

    # ================================================================ public API: commands

    def start(self, now: float) -> list[int]:
        """Initiate every connection with ``start_action = "start"``, with the children marked
        ``start_action = "start"`` (or its first child if none is). Returns the IKE SA ids."""
        ids = []
        for name, conn in self.connections.items():
            if conn.start_action != "start":
                continue
            marked = [c for c, cfg in conn.children.items() if cfg.start_action == "start"]
            ids.append(self.initiate(name, now, marked or None))
        return ids

    def initiate(self, conn_name: str, now: float, child: str | list | None | bool = None) -> int:
        """Start an IKE SA for ``conn_name``. ``child``: a child name or list of names (the first is
        negotiated in IKE_AUTH, the others with CREATE_CHILD_SA right after), None for the first
        configured child, False for none (childless, RFC 6023). Returns the IKE SA id."""
        conn = self.connections[conn_name]
        remote = conn.remote_host
        if remote is None:
            raise ValueError(f"connection {conn_name} has no specific remote address to initiate to")
        local = conn.local_host or self.settings.local_addr
        if local is None:
            raise ValueError(f"connection {conn_name}: no local address (set local_addrs)")
        sa = self._new_sa(True, (local, conn.local_port), (remote, conn.remote_port), now)
        sa.conn = conn
        sa.spi_i = self._alloc_ike_spi(sa)
        if child is False or not conn.children:
            cfgs = []
        elif child is None:
            cfgs = [next(iter(conn.children.values()))]
        else:
            cfgs = [conn.children[c] for c in ([child] if isinstance(child, str) else child)]
        sa.add_task(IkeInitTask(conn.proposals[0].dh[0]), now)
        sa.queue.append(ike_auth.IkeAuthTask(cfgs[0] if cfgs else None))
        for cfg in cfgs[1:]:
            sa.queue.append(child_create.CreateChildTask(cfg))
        return sa.ike_id

    def create_child(self, ike_id: int, child: str, now: float):
        """Negotiate one more Child SA on an established IKE SA (CREATE_CHILD_SA, §1.3.1)."""
        sa = self._ids[ike_id]
        sa.add_task(child_create.CreateChildTask(sa.conn.children[child]), now)

    def delete_child(self, handle: int, now: float, reason: str = "deleted locally"):
        for sa in self._ids.values():
            if handle in sa.children:
                sa.add_task(informational.DeleteChildTask([handle], reason), now)
                return
        raise KeyError(handle)

    def delete_ike(self, ike_id: int, now: float, reason: str = "deleted locally"):
        """Delete an IKE SA and its Child SAs: an INFORMATIONAL Delete if it is established (sent
        ahead of queued exchanges), otherwise dropped at once."""
        sa = self._ids.get(ike_id)
        if sa is None:
            return
        if sa.state == ESTABLISHED:
            sa.queue.clear()
            sa.add_task(informational.DeleteIkeTask(reason), now, first=True)
        else:
            self._destroy(sa, reason, send_delete=False)

    def drop_ike(self, ike_id: int, now: float, reason: str, send_delete: bool = True):
        """Remove an IKE SA at once (the daemon's flush when a board is lost, RFC 7296 §2.4): a
        best-effort INFORMATIONAL Delete goes out (not retransmitted), ChildSaDelete for each Child
        SA and IkeSaDown follow immediately."""
        sa = self._ids.get(ike_id)
        if sa is not None:
            self._destroy(sa, reason, send_delete=send_delete)

    def check_liveness(self, ike_id: int, now: float, on_alive=None):
        """Send an empty INFORMATIONAL request (§1.4); no answer after the retransmissions tears the
        IKE SA down (§2.4)."""
        sa = self._ids[ike_id]
        sa.add_task(informational.LivenessTask(on_alive), now)

    # ================================================================ public API: I/O

    def receive_datagram(self, data: bytes, addr: tuple, now: float, local: tuple | None = None):
        """Feed one received IKE message (without the non-ESP marker). ``addr`` is the sender's
        (ip, port), ``local`` our (ip, port) it arrived on. Never raises for bad input."""
        try:
            self._receive(data, addr, now, local)
        except (SyntaxError_, UnsupportedCritical, VersionError):
            self.stats["malformed"] += 1
        except Exception:                      # pragma: no cover - a bug; keep the daemon alive
            self.stats["internal_errors"] += 1
            if self.strict:
                raise

    def datagrams_to_send(self, now: float | None = None) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            t, _s, sa = heap[0]
            if sa.state != DEAD and sa.deadline == t:
                return t
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float):
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _s, sa = heapq.heappop(heap)
            if sa.state != DEAD and sa.deadline == t:
                sa.deadline = None
                sa.on_timer(now)

    def next_event(self):
        return self._events.popleft() if self._events else None

    def child_sa_installed(self, handle: int, ok: bool, now: float, reason: str | None = None):
        """Phase two of a Child SA install: the board accepted (``ok``) or refused it. ``reason``
        "unsupported" answers NO_PROPOSAL_CHOSEN, anything else TEMPORARY_FAILURE."""
        child = self._installing.pop(handle, None)
        if child is None:
            raise KeyError(f"no Child SA install pending with handle {handle}")
        sa = child.ike
        if sa.state == DEAD:
            if ok:
                child.state = "installed"
                self._remove_child(sa, child, child.doomed or "IKE SA gone while installing")
            return
        cont, child.on_installed = child.on_installed, None
        cont(ok, reason, now)
        if child.doomed and child.state == "installed":
            self._remove_child(sa, child, child.doomed)

    # ================================================================ introspection

    def capabilities_for(self, sa: IkeSa) -> OffloadCapabilities:
        return self._caps(sa) if callable(self._caps) else self._caps

    def ike_sa(self, ike_id: int) -> IkeSa | None:
        return self._ids.get(ike_id)

    def ike_sas(self) -> list[IkeSa]:
        return list(self._ids.values())

    def half_open_count(self) -> int:
        return len(self._half_open)

    def ike_sas_with_peer(self, ip: str) -> list[IkeSa]:
        """IKE SAs whose peer is at ``ip`` (e.g. to answer an unknown-SPI report, issue 5)."""
        return [sa for sa in self._ids.values() if sa.remote[0] == ip and sa.state != DEAD]

    def child_by_spi_in(self, spi: int):
        """The Child SA that receives on ``spi``, if any."""
        c = self._child_spis.get(spi)
        return c if c is not None and c.state != "dead" else None

    # ================================================================ receive path

    def _receive(self, data, addr, now, local):
        hdr = parse_header(data)
        if local is None:
            local = (self.settings.local_addr or "0.0.0.0", self.settings.port)
        if hdr.exchange == _INIT:
            if hdr.flags & Flag.RESPONSE:
                self._init_response(hdr, data, addr, local, now)
            elif hdr.flags & Flag.INITIATOR and hdr.spi_r == ZERO_SPI and hdr.mid == 0:
                self._init_request(hdr, data, addr, local, now)
            return
        ours = hdr.spi_r if hdr.flags & Flag.INITIATOR else hdr.spi_i
        sa = self._sas.get(ours)
        if sa is None or sa.state == DEAD:
            self.stats["unknown_spi"] += 1
            return
        if bool(hdr.flags & Flag.INITIATOR) == sa.initiator or \
                sa.peer_spi != (hdr.spi_r if sa.initiator else hdr.spi_i):
            self.stats["unknown_spi"] += 1
            return
        if hdr.flags & Flag.RESPONSE:
            self._response(sa, hdr, data, addr, local, now)
        else:
            self._request(sa, hdr, data, addr, local, now)

    def _init_request(self, hdr, data, addr, local, now):
        key = (hdr.spi_i, addr[0])
        sa = self._half_open.get(key)
        if sa is not None:
            # §2.1: a retransmitted IKE_SA_INIT gets the same answer, no new state
            if sa.init_req == data and sa.init_resp and sa.state == CONNECTING:
                if self._replies.take(addr[0], now):     # a replayed request must not make us a reflector
                    self.stats["init_retransmits_answered"] += 1
                    self._send(sa.init_resp, addr, local)
                else:
                    self.stats["replies_rate_limited"] += 1
            return
        try:
            payloads, sk = parse_plain(hdr, data)
        except UnsupportedCritical as e:
            self._reply_error(hdr, Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type,)), addr,
                              local, now)
            raise
        except SyntaxError_:
            self._reply_error(hdr, Notify.INVALID_SYNTAX, b"", addr, local, now)
            raise
        if sk is not None:
            self.stats["malformed"] += 1
            return
        s = self.settings
        if len(self._half_open) >= s.max_half_open or self._half_open_ip[addr[0]] >= s.max_half_open_per_ip:
            self.stats["half_open_limit"] += 1
            return
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, payloads)
        if not self._admit_init(hdr, msg, addr, local, now):
            return
        conns = self._conns_for(local[0], addr[0])
        if not conns:
            self._reply_error(hdr, Notify.NO_PROPOSAL_CHOSEN, b"", addr, local, now)
            return
        sa = init_respond(self, hdr, msg, data, addr, local, conns, now)
        if sa is not None:
            sa.ho_key = key
            self._half_open[key] = sa
            self._half_open_ip[addr[0]] += 1
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

    def set_connections(self, connections):
        """Replace the configuration (existing SAs keep the Connection objects they have)."""
        if isinstance(connections, (list, tuple)):
            connections = {c.name: c for c in connections}
        self.connections = dict(connections)
        self._conn_cache.clear()

    def _admit_init(self, hdr, msg, addr, local, now) -> bool:
        """Hook for stateless cookies (§2.6, issue 5): return False after answering with a
        COOKIE. Admits everything for now; the half-open limits above still apply."""
        return True

    def _init_response(self, hdr, data, addr, local, now):
        sa = self._sas.get(hdr.spi_i)
        if sa is None or not sa.initiator or sa.state != CONNECTING or hdr.mid != 0:
            return
        o = sa.outstanding
        if o is None or o.exchange != _INIT:
            return
        payloads, sk = parse_plain(hdr, data)
        if sk is not None:
            return
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, payloads)
        task = o.task
        sa.outstanding = None
        done = task.on_response(sa, msg, data, now)
        if sa.state == DEAD:
            return
        if done is IGNORED:
            sa.outstanding = o          # not a usable answer: keep waiting and retransmitting
            self.stats["init_responses_ignored"] += 1
        elif done:
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

    def _request(self, sa, hdr, data, addr, local, now):
        mid = hdr.mid
        if mid != sa.peer_mid:
            if mid == sa.peer_mid - 1 and sa.pending_mid != mid and sa.last_request == data \
                    and sa.last_response is not None:
                self.stats["retransmits_answered"] += 1      # §2.1: resend our answer unchanged
                self._send(sa.last_response[0], addr, local)
            else:
                self.stats["bad_message_id"] += 1
            return
        exch = hdr.exchange
        err = None
        try:
            inner = self._decrypt(sa, hdr, data)
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
            if sa.state == DEAD and _exch != _AUTH and _exch != _INFO:
                return None
            sa.pending_mid = None
            sa.send_response(_mid, _exch, payloads, _addr, _local)
            return None

        if err is not None:
            reply([NotifyPayload(err[0], err[1])], now)
            if exch == _AUTH:
                self._destroy(sa, "malformed IKE_AUTH", send_delete=False, established=False)
            return
        handler = _RESPONDERS.get(exch)
        valid = handler is not None and (
            (exch == _AUTH and sa.state == CONNECTING and not sa.initiator) or
            (exch != _AUTH and sa.state != CONNECTING))
        if not valid:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return
        msg = Message(hdr.spi_i, hdr.spi_r, exch, hdr.flags, mid, inner, True)
        sa.pending_mid = mid
        handler(sa, msg, reply, now)

    def _response(self, sa, hdr, data, addr, local, now):
        o = sa.outstanding
        if o is None or hdr.mid != o.mid or hdr.exchange != o.exchange:
            self.stats["unexpected_response"] += 1
            return
        try:
            inner = self._decrypt(sa, hdr, data)
        except (SyntaxError_, UnsupportedCritical):
            # authentic but malformed: this exchange cannot complete; give the IKE SA up
            sa.outstanding = None
            self._warn(sa, "malformed protected response")
            self._destroy(sa, "malformed response from peer", send_delete=False)
            return
        if inner is None:
            self.stats["bad_icv"] += 1
            return
        sa.outstanding = None
        sa.my_mid += 1
        sa.last_heard = now
        self._nat_update(sa, addr, local)
        msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, inner, True)
        task = o.task
        if task.on_response(sa, msg, data, now) and sa.state != DEAD and sa.active is task:
            sa.finish_task(now)
        if sa.state != DEAD:
            sa.reschedule()

    # ================================================================ helpers used by exchanges

    def _send(self, data, remote, local):
        self._out.append(Datagram(data, remote, local))

    def _event(self, ev):
        self._events.append(ev)

    def _warn(self, sa, text):
        self._events.append(Warning_(sa.ike_id if sa is not None else None, text))

    def _schedule(self, sa, t):
        heapq.heappush(self._heap, (t, next(self._seq), sa))

    def _next_handle(self) -> int:
        return next(self._handles)

    def _new_sa(self, initiator, local, remote, now) -> IkeSa:
        sa = IkeSa(self, next(self._ike_ids), initiator, local, remote, now)
        self._ids[sa.ike_id] = sa
        return sa

    def _alloc_ike_spi(self, sa) -> bytes:
        while True:
            spi = os.urandom(8)
            if spi != ZERO_SPI and spi not in self._sas:
                self._sas[spi] = sa
                return spi

    def _alloc_child_spi(self) -> int:
        """A fresh inbound ESP SPI (>= 256, RFC 4303 §2.1), unique across the engine."""
        while True:
            spi = self._rand.getrandbits(32)
            if spi >= 256 and spi not in self._child_spis:
                self._child_spis[spi] = None
                return spi

    def _reply_error(self, hdr, notify, data, addr, local, now):
        """An unprotected error answer to IKE_SA_INIT (§2.21.1), rate-limited per source and in
        total; the request leaves no state behind."""
        if not self._replies.take(addr[0], now):
            self.stats["replies_rate_limited"] += 1
            return
        msg = Message(hdr.spi_i, ZERO_SPI, _INIT, Flag.RESPONSE, 0, [NotifyPayload(notify, data)])
        self.stats["error_replies"] += 1
        self._send(msg.encode(), addr, local)

    def _float(self, sa):
        """§2.23: after NAT detection the initiator moves to the NAT-T ports."""
        if sa.local[1] != self.settings.natt_port:
            sa.local = (sa.local[0], self.settings.natt_port)
            sa.remote = (sa.remote[0], sa.conn.remote_port_nat_t)

    def _nat_update(self, sa, addr, local):
        """§2.23: with a NAT in the path, follow the address of the latest authentic message."""
        if sa.nat and (addr != sa.remote or local != sa.local):
            sa.remote = addr
            sa.local = local

    def _wants_initial_contact(self, sa) -> bool:
        """Send INITIAL_CONTACT only when no other IKE SA exists between the same authenticated
        identities (§2.4: it asserts this is the only one; the peer deletes the others — so two
        connections with the same identities must not send it for each other)."""
        if not sa.conn.initial_contact:
            return False
        ids = (sa.conn.local.id, sa.conn.remote.id)
        return not any(o is not sa and o.conn is not None and o.state != DEAD
                       and (o.conn.local.id, o.conn.remote.id) == ids for o in self._ids.values())

    def _established(self, sa, now):
        sa.state = ESTABLISHED
        sa.established_at = now
        sa.expire_at = None
        self._leave_half_open(sa)
        sa.init_req = sa.init_resp = b""        # only the AUTH payloads needed them
        sa.local_id = sa.conn.local.id
        self._event(IkeSaUp(sa.ike_id, sa.conn.name, sa.initiator, sa.local, sa.remote, str(sa.local_id),
                            str(sa.remote_id), sa.chosen.describe()))
        if not sa.initiator and sa.initial_contact:
            # §2.4: the peer has no memory of older IKE SAs with us: drop those.
            for other in list(self._ids.values()):
                if other is not sa and other.state == ESTABLISHED and other.conn is sa.conn and \
                        other.remote_id == sa.remote_id:
                    self._destroy(other, "replaced (INITIAL_CONTACT)", send_delete=False)
        sa.reschedule()

    def _leave_half_open(self, sa):
        key, sa.ho_key = sa.ho_key, None
        if key is not None and self._half_open.get(key) is sa:
            del self._half_open[key]
            n = self._half_open_ip[key[1]] - 1
            if n > 0:
                self._half_open_ip[key[1]] = n
            else:
                del self._half_open_ip[key[1]]

    def _fail(self, sa, reason):
        self._warn(sa, reason)
        self._destroy(sa, reason, send_delete=False, established=False)

    def _remove_child(self, sa, child, reason):
        if child.state in ("installed", "deleting"):
            self._event(ChildSaDelete(child.handle, sa.ike_id, child.spi_in, child.spi_out, reason))
        child.state = "dead"
        sa.children.pop(child.handle, None)
        self._child_spis.pop(child.spi_in, None)

    def _destroy(self, sa, reason, send_delete=False, established=None):
        """Remove an IKE SA and its Child SAs (ChildSaDelete for each installed one, then IkeSaDown).
        With ``send_delete`` a best-effort Delete goes out first (not retransmitted)."""
        if sa.state == DEAD:
            return
        if send_delete and sa.established_at is not None and sa.cipher is not None:
            flags = Flag.INITIATOR if sa.initiator else 0
            from .payloads import DeletePayload
            msg = Message(sa.spi_i, sa.spi_r, _INFO, flags, sa.my_mid, [DeletePayload(1)])
            self._send(msg.encode(sa.cipher), sa.remote, sa.local)
        for child in list(sa.children.values()):
            if child.state == "installing":
                child.doomed = reason
                sa.children.pop(child.handle, None)
                continue
            self._remove_child(sa, child, reason)
        sa.state = DEAD
        sa.deleted_reason = reason
        sa.outstanding = None
        sa.queue.clear()
        for spi in (sa.spi_i, sa.spi_r):
            if self._sas.get(spi) is sa:
                del self._sas[spi]
        self._leave_half_open(sa)
        self._ids.pop(sa.ike_id, None)
        self._event(IkeSaDown(sa.ike_id, sa.conn.name if sa.conn else "", reason,
                              sa.established_at is not None if established is None else established))
