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
The engine keeps the SPI tables, counts half-open SAs (RFC 7296 §2.6 limits, cookies) and
rate-limits every action it takes because of an unprotected message (§2.4, §2.21). The lifecycle
lives in its own modules: rekey.py, liveness.py, invalid_spi.py, cookies.py.
"""
from __future__ import annotations

import heapq
import itertools
import os
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

from . import (child_create, cookies, fragments, ike_auth, informational, invalid_spi, liveness, natt, reauth,
               rekey)
from .config import Connection, RetransmitPolicy
from .constants import ExchangeType, Flag, Notify, PayloadType
from .events import ChildSaDelete, ChildSaOutbound, IkeSaDown, IkeSaMoved, IkeSaUp, Warning_
from .ike_init import IGNORED, IkeInitTask, ZERO_SPI, respond as init_respond
from .ike_sa import CONNECTING, DEAD, DELETING, ESTABLISHED, IkeSa
from .message import Message, VersionError, open_sk, parse_header, parse_plain
from .payloads import NotifyPayload, SyntaxError_, UnsupportedCritical
from .proposals import OffloadCapabilities
from .ratelimit import KeyedBuckets

_INIT = int(ExchangeType.IKE_SA_INIT)
_AUTH = int(ExchangeType.IKE_AUTH)
_SKF = int(PayloadType.SKF)
_CHILD = int(ExchangeType.CREATE_CHILD_SA)
_INFO = int(ExchangeType.INFORMATIONAL)
_RESPONDERS = {_AUTH: ike_auth.respond, _CHILD: child_create.respond, _INFO: informational.respond}


class Datagram(NamedTuple):
    """An IKE message to send. ``local`` = (ip, port) to send from; the driver adds the non-ESP
    marker when that port is the NAT-T port (RFC 3948 §2.2) — except to a ``keepalive``, the
    one-byte NAT-keepalive, which goes as it is (RFC 3948 §2.3, natt.py)."""
    data: bytes
    remote: tuple
    local: tuple
    keepalive: bool = False


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
    # cookies (§2.6): demanded from this many half-open SAs on (0 = never)
    cookie_threshold: int = 30          # in total (strongSwan's default)
    cookie_threshold_ip: int = 3        # from one address
    cookie_secret_lifetime: float = 60.0
    cookie_rate: float = 20.0           # COOKIE answers per source per second ...
    cookie_burst: float = 40.0
    cookie_global_rate: float = 10000.0     # ... and in total (small, never amplifying)
    cookie_global_burst: float = 10000.0
    # INVALID_SPI (§1.5): outgoing, for ESP with an unknown SPI reported by the board
    unprotected_invalid_spi: bool = False   # answer outside any IKE SA when none exists (DoS magnet)
    invalid_spi_rate: float = 1.0       # per source address per second
    invalid_spi_burst: float = 3.0
    invalid_spi_global_rate: float = 20.0
    invalid_spi_global_burst: float = 40.0
    # liveness checks started by unprotected INVALID_SPI hints (plus: one in flight per IKE SA)
    hint_rate: float = 1.0              # per source address per second
    hint_burst: float = 2.0
    hint_global_rate: float = 10.0
    hint_global_burst: float = 20.0
    hint_retransmit: RetransmitPolicy | None = None     # schedule of those checks (None: the engine's)
    # INVALID_IKE_SPI (§2.21.4): answer a protected request for an IKE SA we do not have (we lost
    # it), unprotected, on the invalid_spi_* rates; an answer to one of ours is a hint (hint_*)
    invalid_ike_spi: bool = True
    # IKE fragmentation (RFC 7383): offered/accepted in IKE_SA_INIT; fragments fit this IP size
    fragmentation: bool = True
    fragment_size: int = 1280
    rsa_pss: bool = False               # sign RFC 7427 AUTH with RSASSA-PSS (RSA keys; verified always)
    # lifecycle
    restart_delay_max: float = 60.0     # cap on the pause between re-initiation attempts
    retry_delay: float = 10.0           # a refused rekey / TEMPORARY_FAILURE is retried after 0.5..1 x this
    rekey_reap_time: float = 30.0       # a replaced IKE SA the peer did not delete goes after this
    nat_keepalive: float = 20.0         # behind a NAT: a NAT-keepalive this often (RFC 3948 §4; 0 = off)


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
        self._children: dict = {}                    # handle -> ChildSa (installing or installed)
        self._spi_out: dict[int, list] = {}          # peer's inbound SPI -> Child SAs (INVALID_SPI hints)
        self._peers: dict[str, set] = {}             # peer IP -> IKE SAs
        self._heap = []
        self._seq = itertools.count()
        self._ike_ids = itertools.count(1)
        self._handles = itertools.count(1)
        self._out: list[Datagram] = []
        self._events = deque()
        self._conn_cache: dict = {}
        st = self.settings
        self._replies = KeyedBuckets(st.reply_rate, st.reply_burst, st.reply_global_rate,
                                     st.reply_global_burst)
        self._cookie_replies = KeyedBuckets(st.cookie_rate, st.cookie_burst, st.cookie_global_rate,
                                            st.cookie_global_burst)
        self._invalid_spi_out = KeyedBuckets(st.invalid_spi_rate, st.invalid_spi_burst,
                                             st.invalid_spi_global_rate, st.invalid_spi_global_burst)
        self._hints = KeyedBuckets(st.hint_rate, st.hint_burst, st.hint_global_rate, st.hint_global_burst)
        self._invalid_ike_spi_out = KeyedBuckets(st.invalid_spi_rate, st.invalid_spi_burst,
                                                 st.invalid_spi_global_rate, st.invalid_spi_global_burst)
        self._cookies = cookies.CookieJar(st.cookie_secret_lifetime)
        self._fragment_bytes = 0            # plaintext held by all partial reassemblies (RFC 7383)
        self._rand = random.SystemRandom()
        self.jitter = random.Random()       # lifetime jitter (tests may seed it); not for keys or SPIs
        self._delayed_ids = itertools.count(1)
        self._now = 0.0                     # the latest time any entry point was given
        self.stats = Counter()
        self.strict = bool(os.environ.get("IKE_ENGINE_RAISE"))   # tests: let internal errors escape
        # CREATE_CHILD_SA rekeys and protected notifications (replaceable, e.g. by tests)
        self.rekey_responder: Callable | None = rekey.respond
        self.notify_hooks: dict[int, Callable] = {Notify.INVALID_SPI: invalid_spi.protected_received}
        self._timer_kinds = {
            "dpd": liveness.on_dpd, "start": liveness.on_start,
            rekey.CHILD_REKEY: rekey.on_child_rekey, rekey.CHILD_EXPIRE: rekey.on_child_expire,
            "ike_rekey": rekey.on_ike_rekey, "ike_expire": rekey.on_ike_expire, "reap": rekey.on_reap,
            "ike_reauth": reauth.on_timer, natt.TIMER[0]: natt.on_timer,
            "task": self._delayed_task_due,
        }

    # ================================================================ public API: commands

    def start(self, now: float) -> list[int]:
        """Initiate every connection with ``start_action = "start"``, with the children marked
        ``start_action = "start"`` (or its first child if none is), retried per ``keyingtries``.
        Returns the IKE SA ids."""
        ids = []
        for name, conn in self.connections.items():
            if conn.start_action != "start":
                continue
            marked = [c for c, cfg in conn.children.items() if cfg.start_action == "start"]
            ids.append(self.initiate(name, now, marked or None, retry=True))
        return ids

    def initiate(self, conn_name: str, now: float, child: str | list | None | bool = None, *,
                 retry: bool = False, start_at: float | None = None, attempt: int = 1) -> int:
        """Start an IKE SA for ``conn_name``. ``child``: a child name or list of names (the first is
        negotiated in IKE_AUTH, the others with CREATE_CHILD_SA right after), None for the first
        configured child, False for none (childless, RFC 6023). ``retry``: if it fails before it is
        established, try again per the connection's ``keyingtries`` (liveness.py). ``start_at``:
        send the first message only then. Returns the IKE SA id."""
        self._now = now
        conn = self.connections[conn_name]
        remote = conn.remote_host
        if remote is None:
            raise ValueError(f"connection {conn_name} has no specific remote address to initiate to")
        local = conn.local_host or self.settings.local_addr
        if local is None:
            raise ValueError(f"connection {conn_name}: no local address (set local_addrs)")
        if child is False or not conn.children:
            cfgs = []
        elif child is None:
            cfgs = [next(iter(conn.children.values()))]
        else:
            cfgs = [conn.children[c] for c in ([child] if isinstance(child, str) else child)]
        sa = self._new_sa(True, (local, conn.local_port), (remote, conn.remote_port), now)
        sa.conn = conn
        sa.spi_i = self._alloc_ike_spi(sa)
        if retry:
            sa.keying = (attempt, [c.name for c in cfgs] or False)
        sa.queue.append(IkeInitTask(conn.proposals[0].dh[0]))
        sa.queue.append(ike_auth.IkeAuthTask(cfgs[0] if cfgs else None))
        for cfg in cfgs[1:]:
            sa.queue.append(child_create.CreateChildTask(cfg))
        if start_at is not None and start_at > now:
            sa.set_timer(liveness.START, start_at)
        else:
            sa.kick(now)
        return sa.ike_id

    def create_child(self, ike_id: int, child: str, now: float):
        """Negotiate one more Child SA on an established IKE SA (CREATE_CHILD_SA, §1.3.1)."""
        self._now = now
        sa = self._ids[ike_id]
        sa.add_task(child_create.CreateChildTask(sa.conn.children[child]), now)

    def rekey_child(self, handle: int, now: float) -> bool:
        """Rekey Child SA ``handle`` now (§1.3.3). False if it cannot be (not installed, being
        rekeyed or already replaced)."""
        self._now = now
        c = self._children.get(handle)
        return c is not None and rekey.start_child_rekey(c.ike, c, now)

    def rekey_ike(self, ike_id: int, now: float) -> bool:
        """Rekey IKE SA ``ike_id`` now (§2.18); its Child SAs move to the new one."""
        self._now = now
        sa = self._ids.get(ike_id)
        return sa is not None and rekey.start_ike_rekey(sa, now)

    def delete_child(self, handle: int, now: float, reason: str = "deleted locally"):
        for sa in self._ids.values():
            if handle in sa.children:
                sa.add_task(informational.DeleteChildTask([handle], reason), now)
                return
        raise KeyError(handle)

    def delete_ike(self, ike_id: int, now: float, reason: str = "deleted locally"):
        """Delete an IKE SA and its Child SAs: an INFORMATIONAL Delete if it is established (sent
        ahead of queued exchanges), otherwise dropped at once."""
        self._now = now
        sa = self._ids.get(ike_id)
        if sa is None:
            return
        if sa.state == ESTABLISHED:
            sa.queue.clear()
            sa.add_task(informational.DeleteIkeTask(reason), now, first=True)
        else:
            self._destroy(sa, reason, send_delete=False)

    def drop_ike(self, ike_id: int, now: float, reason: str, send_delete: bool = True) -> list[str]:
        """Remove an IKE SA at once (the daemon's flush when a board is lost, RFC 7296 §2.4): a
        best-effort INFORMATIONAL Delete goes out (not retransmitted), ChildSaDelete for each Child
        SA and IkeSaDown follow immediately. Nothing is re-initiated here; returns the names of the
        Child SA configurations it carried, for ``initiate(conn, now, names, retry=True)``."""
        self._now = now
        sa = self._ids.get(ike_id)
        if sa is None:
            return []
        names = liveness.child_names(sa)
        self._destroy(sa, reason, send_delete=send_delete)
        return names

    def check_liveness(self, ike_id: int, now: float, on_alive=None):
        """Send an empty INFORMATIONAL request (§1.4); no answer after the retransmissions tears the
        IKE SA down (§2.4) and the connection's ``dpd_action`` applies."""
        self._now = now
        sa = self._ids[ike_id]
        sa.add_task(informational.LivenessTask(on_alive), now)

    # ================================================================ public API: the ESP processor

    def esp_unknown_spi(self, spi: int, src: tuple | None, now: float, local: tuple | None = None):
        """The board received ESP for ``spi`` it does not have, from ``src`` = (ip, port); ``local``
        = (our ip, port) it arrived on. INVALID_SPI inside an IKE SA with that peer, or (only with
        ``unprotected_invalid_spi``) outside any; rate-limited per source and in total
        (invalid_spi.py, §1.5). Returns "protected", "unprotected" or None (nothing sent)."""
        self._now = now
        return invalid_spi.report(self, spi, src, now, local)

    def spi_pending(self, spi_in: int) -> bool:
        """``spi_in`` is an inbound SPI we offered in a request still in flight, or one of a Child
        SA being installed: the peer, which installs when it answers, may already send on it."""
        if spi_in not in self._child_spis:
            return False
        c = self._child_spis[spi_in]
        return c is None or c.state == "installing"

    def esp_received(self, handle: int, now: float):
        """Inbound ESP decrypted on Child SA ``handle`` (board counters moved): proof of liveness
        for its IKE SA (§2.4). Cheap; call it per poll, not per packet."""
        c = self._children.get(handle)
        if c is not None and c.state != "dead":
            liveness.proof(c.ike, now)

    def esp_received_spi(self, spi_in: int, now: float):
        """As :meth:`esp_received`, by the SPI the packet arrived with."""
        c = self._child_spis.get(spi_in)
        if c is not None and c.state != "dead":
            liveness.proof(c.ike, now)

    def child_sa_expired(self, handle: int, hard: bool, now: float):
        """The board reports a lifetime (time, bytes, packets, sequence numbers) of Child SA
        ``handle`` ran out (RFC 4301 §4.4.2.1). Soft: rekey it now (§2.8). Hard: it is unusable —
        delete it (at the peer too) and create it anew unless a rekey already replaced it."""
        self._now = now
        c = self._children.get(handle)
        if c is None or c.state != "installed":
            return
        sa = c.ike
        if not hard:
            self.stats["child_soft_expiries"] += 1
            rekey.start_child_rekey(sa, c, now)
            return
        self.stats["child_hard_expiries"] += 1
        self._recreate_child(sa, c, now, "hard lifetime expired (board)")

    # ================================================================ public API: I/O

    def receive_datagram(self, data: bytes, addr: tuple, now: float, local: tuple | None = None):
        """Feed one received IKE message (without the non-ESP marker). ``addr`` is the sender's
        (ip, port), ``local`` our (ip, port) it arrived on. Never raises for bad input."""
        self._now = now
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
        self._now = now
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
        self._now = now
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
        """Every IKE SA the driver was told of (not the redundant ones of a rekey collision)."""
        return [sa for sa in self._ids.values() if sa.announced]

    def half_open_count(self) -> int:
        return len(self._half_open)

    def ike_sas_with_peer(self, ip: str) -> list[IkeSa]:
        """IKE SAs whose peer is at ``ip`` (e.g. to answer an unknown-SPI report)."""
        return sorted((sa for sa in self._peers.get(ip, ()) if sa.state != DEAD), key=lambda s: s.ike_id)

    def child_by_spi_in(self, spi: int):
        """The Child SA that receives on ``spi``, if any."""
        c = self._child_spis.get(spi)
        return c if c is not None and c.state != "dead" else None

    def child_by_spi_out(self, spi: int, peer_ip: str | None = None):
        """The Child SA that sends with ``spi`` (to ``peer_ip``), if any: for outbound SA_EXPIRE."""
        for c in self._spi_out.get(spi, ()):
            if c.state != "dead" and (peer_ip is None or c.ike.remote[0] == peer_ip):
                return c
        return None

    def child_sa(self, handle: int):
        return self._children.get(handle)

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
            invalid_spi.unknown_ike_sa(self, hdr, data, addr, local, now)      # §1.5, §2.21.4
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
        """Stateless cookies (§2.6, cookies.py): False after answering with a COOKIE. The
        half-open limits above apply in any case."""
        return cookies.admit(self, hdr, msg, addr, local, now)

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

    def _request(self, sa, hdr, data, addr, local, now, opened=None):
        mid = hdr.mid
        if mid != sa.peer_mid:
            if mid == sa.peer_mid - 1 and sa.pending_mid != mid and sa.last_request == data \
                    and sa.last_response is not None:
                self.stats["retransmits_answered"] += 1      # §2.1: resend our answer unchanged
                for d in sa.last_response[0]:
                    self._send(d, addr, local)
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
        if sa.collision_of is not None:
            rekey.peer_resolved(sa, inner, now)
        sa.pending_mid = mid
        handler(sa, msg, reply, now)

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
            self._warn(sa, "malformed protected response")
            self._destroy(sa, "malformed response from peer", send_delete=False)
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
        task = o.task
        if task.on_response(sa, msg, data, now) and sa.state != DEAD and sa.active is task:
            sa.finish_task(now)
        if sa.state != DEAD:
            sa.reschedule()

    # ================================================================ helpers used by exchanges

    def _send(self, data, remote, local, keepalive=False):
        self._out.append(Datagram(data, remote, local, keepalive))

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
        self._register_sa(sa)
        return sa

    def _register_sa(self, sa):
        self._ids[sa.ike_id] = sa
        self._peers.setdefault(sa.remote[0], set()).add(sa)

    def _unregister_peer(self, sa):
        peers = self._peers.get(sa.remote[0])
        if peers is not None:
            peers.discard(sa)
            if not peers:
                del self._peers[sa.remote[0]]

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
        """§2.23: with a NAT in the path, follow the address of the latest authentic message; once
        the IKE SA is up its Child SAs' ESP-in-UDP must follow too (IkeSaMoved)."""
        if sa.nat and (addr != sa.remote or local != sa.local):
            if addr[0] != sa.remote[0]:
                self._unregister_peer(sa)
                self._peers.setdefault(addr[0], set()).add(sa)
            sa.remote = addr
            sa.local = local
            if sa.state != CONNECTING:
                self.stats["nat_moves"] += 1
                self._event(IkeSaMoved(sa.ike_id, sa.local, sa.remote))

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
        sa.last_heard = now
        sa.expire_at = None
        sa.keying = None
        self._leave_half_open(sa)
        sa.init_req = sa.init_resp = b""        # only the AUTH payloads needed them
        sa.local_id = sa.conn.local.id
        self._event(IkeSaUp(sa.ike_id, sa.conn.name, sa.initiator, sa.local, sa.remote, str(sa.local_id),
                            str(sa.remote_id), sa.chosen.describe()))
        if not sa.initiator and sa.initial_contact:
            self._initial_contact(sa)
        liveness.arm(sa, now)
        natt.arm(sa, now)
        rekey.arm_ike(sa, now)
        reauth.arm(sa, now)
        sa.reschedule()

    def _initial_contact(self, sa):
        """§2.4: INITIAL_CONTACT asserts the peer has no other IKE SA with us: every IKE SA between
        the same two authenticated identities that was up before this one began goes, without a
        Delete (the peer has no keys for it) and without a restart. SAs that came up while this
        one was being set up (both sides starting at once) stay: deleting them on one side only
        would leave the other side with a dead IKE SA."""
        for other in list(self._ids.values()):
            if other is sa or other.state not in (ESTABLISHED, DELETING) or other.established_at is None \
                    or other.established_at >= sa.created:
                continue
            if other.remote_id == sa.remote_id and other.local_id == sa.local_id:
                self.stats["initial_contact_replaced"] += 1
                self._destroy(other, "replaced (INITIAL_CONTACT)", send_delete=False)

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
        self._destroy(sa, reason, send_delete=False, established=False, cause="failed")

    # ---------------------------------------------------------------- lifecycle helpers

    def _register_child(self, child):
        self._children[child.handle] = child
        self._child_spis[child.spi_in] = child
        self._spi_out.setdefault(child.spi_out, []).append(child)

    def _forget_child(self, child):
        self._children.pop(child.handle, None)
        if child.spi_in in self._child_spis and self._child_spis[child.spi_in] in (child, None):
            del self._child_spis[child.spi_in]
        lst = self._spi_out.get(child.spi_out)
        if lst is not None:
            if child in lst:
                lst.remove(child)
            if not lst:
                del self._spi_out[child.spi_out]
        rekey.clear_child_timers(child.ike, child.handle)

    def _install_failed(self, sa, child):
        """The board refused ``child`` (child_create.install_failed)."""
        if child.rekey_of is not None:
            rekey.responder_install_failed(sa, child, self._now)

    def _child_up(self, sa, child, now):
        """A Child SA is installed and its exchange done (ChildSaUp was just emitted)."""
        rekey.arm_child(sa, child, now)
        if sa.reauth_of is not None:
            reauth.progress(sa, now)
        if child.rekey_of is not None and not child.exchange_initiator:
            old = sa.children.get(child.rekey_of)
            if old is None or old.state == "dead":
                self._switch_outbound(sa, child)        # the peer deleted the old one already

    def _switch_outbound(self, sa, child):
        if child.defer_outbound and child.state == "installed" and child.rekey_state != "redundant":
            child.defer_outbound = False
            self._event(ChildSaOutbound(child.handle, sa.ike_id, child.rekey_of))

    def _recreate_child(self, sa, child, now, reason, tell_peer=True):
        """Drop ``child`` now (ChildSaDelete), ask the peer to delete its half, and negotiate it
        anew unless a rekey already replaced it (INVALID_SPI, CHILD_SA_NOT_FOUND, hard expiry)."""
        cfg = child.cfg
        replaced = child.rekey_state in ("rekeyed", "redundant")
        rekeying = child.rekey_state == "rekeying"
        if rekeying:
            child.rekey_state = "recreate"         # the rekey in flight replaces it, or we create it
        self._remove_child(sa, child, reason)
        if tell_peer:
            sa.add_task(informational.DeleteSpisTask([child.spi_in]), now)
        if cfg is not None and not replaced and not rekeying and sa.state == ESTABLISHED and \
                sa.successor is None and cfg.name in sa.conn.children:
            self.stats["child_sas_recreated"] += 1
            sa.add_task(child_create.CreateChildTask(cfg), now)

    def _reauth_progress(self, sa, now):
        reauth.progress(sa, now)

    def _child_closed_by_peer(self, sa, cfg, now):
        """The peer deleted a Child SA (§1.4.1, not a rekey): with ``close_action = start`` it is
        negotiated again in the same IKE SA."""
        if cfg is not None and cfg.close_action == "start" and sa.state == ESTABLISHED and \
                sa.successor is None and cfg.name in sa.conn.children and \
                not any(c.cfg is cfg and c.state == "installed" for c in sa.children.values()) and \
                not liveness.carried_elsewhere(self, sa, cfg.name):
            self.stats["child_sas_reopened"] += 1
            sa.add_task(child_create.CreateChildTask(cfg), now)

    def _retry_delay(self) -> float:
        """§2.25: after TEMPORARY_FAILURE "MUST NOT immediately retry": 0.5..1 x retry_delay."""
        d = self.settings.retry_delay
        return self.jitter.uniform(d / 2, d)

    def _delay_task(self, sa, task, t):
        n = next(self._delayed_ids)
        sa.delayed[n] = task
        sa.set_timer(("task", n), t)

    def _delayed_task_due(self, sa, key, now):
        task = sa.delayed.pop(key[1], None)
        if task is not None and sa.state == ESTABLISHED:
            sa.add_task(task, now)

    def _sa_timer(self, sa, key, now):
        handler = self._timer_kinds.get(key[0])
        if handler is not None:
            handler(sa, key, now)

    def _request_timed_out(self, sa, task, reason, now):
        liveness.request_timed_out(sa, task, reason, now)

    def _peer_deletes_ike(self, sa, now):
        """The peer deletes this IKE SA (§1.4.1). If we had answered its rekey of it while ours
        ran, its new IKE SA survives and takes the Child SAs (§2.25.2: forget our own rekey)."""
        col, sa.rekey_collision = sa.rekey_collision, None
        if col is not None and col[2].state == ESTABLISHED:
            rekey.adopt(sa, col[2], now, delete_old=False)
        self._destroy(sa, "deleted by peer", send_delete=False, cause="closed", now=now)

    def _remove_child(self, sa, child, reason):
        if child.state in ("installed", "deleting"):
            self._event(ChildSaDelete(child.handle, sa.ike_id, child.spi_in, child.spi_out, reason,
                                      replaced=child.rekey_state == "rekeyed"))
        child.state = "dead"
        sa.children.pop(child.handle, None)
        self._forget_child(child)
        for other in sa.children.values():
            if other.rekey_of == child.handle and other.defer_outbound:
                self._switch_outbound(sa, other)

    def _destroy(self, sa, reason, send_delete=False, established=None, cause=None, now=None):
        """Remove an IKE SA and its Child SAs (ChildSaDelete for each installed one, then IkeSaDown).
        With ``send_delete`` a best-effort Delete goes out first (not retransmitted). ``cause``
        ("timeout", "failed", "expired", "closed") lets liveness.after_down re-initiate the connection."""
        if sa.state == DEAD:
            return
        if now is None:
            now = self._now
        abort = getattr(sa.active, "abort", None)
        if abort is not None:
            abort(sa)
        children = liveness.child_names(sa)
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
        fragments.drop(sa)
        sa.outstanding = None
        sa.queue.clear()
        sa.timers.clear()
        sa.delayed.clear()
        for spi in (sa.spi_i, sa.spi_r):
            if self._sas.get(spi) is sa:
                del self._sas[spi]
        self._leave_half_open(sa)
        if self._ids.get(sa.ike_id) is sa:
            del self._ids[sa.ike_id]
        self._unregister_peer(sa)
        col, sa.rekey_collision = sa.rekey_collision, None
        if col is not None and col[2].state != DEAD and not col[2].announced:
            self._destroy(col[2], "IKE SA it rekeyed is gone", send_delete=True)
        if sa.reauth_of is not None:
            reauth.failed(sa, now)
        restart = liveness.after_down(self, sa, cause, children, now)
        if not sa.announced:
            return
        replaced = sa.successor.ike_id if sa.successor is not None else None
        self._event(IkeSaDown(sa.ike_id, sa.conn.name if sa.conn else "",
                              "rekeyed" if replaced is not None else reason,
                              sa.established_at is not None if established is None else established,
                              replaced_by=replaced, restart_ike_id=restart))
