"""The engine's context: what the exchanges (tasks) and the rule modules may use of the engine.

Every IKE SA holds it as ``sa.ctx``. It owns the engine's shared state — the tables of IKE SAs,
SPIs and Child SAs, the datagrams and events on their way out, the timer heap, the rate limits —
and offers the services that keep those tables consistent:

* out: ``send(data, remote, local)``, ``emit(event)``, ``warn(sa, text)``;
* IKE SAs: ``new_ike_sa``, ``register_sa``, ``ike_sa(id)``, ``ike_sas()``, ``ike_sas_with_peer``,
  ``initiate(conn, now, ...)``, ``start_initiation(sa, now)`` (paced: pacing.py),
  ``destroy(sa, reason, now, ...)``, ``fail(sa, reason, now)``;
* SPIs: ``alloc_ike_spi`` / ``release_ike_spi``, ``alloc_child_spi`` / ``release_child_spi``;
* Child SAs: ``new_child_handle``, ``register_child``, ``forget_child``, ``remove_child``,
  ``recreate_child``, ``reopen_child``, ``switch_outbound``, ``children_sending_with``;
* time: ``schedule(sa, t)``, ``timer_due`` (with ``timer_handlers``), ``delay_task``,
  ``retry_delay()``; ``jitter`` for lifetimes, ``retransmit`` (RetransmitPolicy), ``settings``,
  ``stats``.

``now`` is always passed in: the context has no clock. Nothing here reads a socket or a clock;
the engine (engine.py) drives it.
"""
from __future__ import annotations

import heapq
import itertools
import os
import random
from collections import Counter, deque
from typing import Callable, NamedTuple

from . import cookies, followup_ke, fragments, invalid_spi, lifetimes, liveness, natt, pacing, reauth, rekey
from .child_create import CreateChildTask
from .config import Connection, EngineSettings, RetransmitPolicy
from .constants import ExchangeType, Flag, Notify
from .events import ChildSaDelete, ChildSaOutbound, IkeSaDown, IkeWarning, TrapRequested
from .ike_auth import IkeAuthTask
from .ike_init import ZERO_SPI, IkeInitTask
from .ike_sa import Attempt, IkeSa
from .informational import DeleteSpisTask
from .message import Message
from .payloads import DeletePayload, NotifyPayload
from .proposals import OffloadCapabilities
from .ratelimit import KeyedBuckets
from .states import ChildSaState, IkeSaState, RekeyState

_INIT = int(ExchangeType.IKE_SA_INIT)
_INFO = int(ExchangeType.INFORMATIONAL)
DELAYED_TASK = "task"           # timer (DELAYED_TASK, n): queue the task parked under n


class Datagram(NamedTuple):
    """An IKE message to send. ``local`` = (ip, port) to send from; the driver adds the non-ESP
    marker when that port is the NAT-T port (RFC 3948 §2.2) — except to a ``keepalive``, the
    one-byte NAT-keepalive, which goes as it is (RFC 3948 §2.3, natt.py)."""
    data: bytes
    remote: tuple
    local: tuple
    keepalive: bool = False


def _conn_ids(conn) -> tuple:
    return (conn.local.id, conn.remote.id)


class RateLimits:
    """Token buckets (per source address and in total) for every answer to, or action on, an
    unprotected message (§2.4, §2.21)."""

    def __init__(self, st: EngineSettings):
        self.replies = KeyedBuckets(st.reply_rate, st.reply_burst, st.reply_global_rate, st.reply_global_burst)
        self.cookie_replies = KeyedBuckets(st.cookie_rate, st.cookie_burst, st.cookie_global_rate,
                                           st.cookie_global_burst)
        self.invalid_spi_out = KeyedBuckets(st.invalid_spi_rate, st.invalid_spi_burst,
                                            st.invalid_spi_global_rate, st.invalid_spi_global_burst)
        self.hints = KeyedBuckets(st.hint_rate, st.hint_burst, st.hint_global_rate, st.hint_global_burst)
        self.invalid_ike_spi_out = KeyedBuckets(st.invalid_spi_rate, st.invalid_spi_burst,
                                                st.invalid_spi_global_rate, st.invalid_spi_global_burst)


class Context:
    def __init__(self, connections: dict[str, Connection], capabilities, settings: EngineSettings,
                 retransmit: RetransmitPolicy):
        self.connections = connections
        self.capabilities = capabilities    # OffloadCapabilities, or a callable (IkeSa) -> them
        self.settings = settings
        self.retransmit = retransmit
        self.stats = Counter()
        self.jitter = random.Random()       # lifetime jitter (tests may seed it); not for keys or SPIs
        self.limits = RateLimits(settings)
        self.cookies = cookies.CookieJar(settings.cookie_secret_lifetime)
        self.fragment_bytes = 0             # plaintext held by all partial reassemblies (RFC 7383) ...
        self.fragment_peers = {}            # ... by peer address: ip -> {IkeSa: bytes its reassembly holds}
        # protected notifications in INFORMATIONAL requests, by type (add others here)
        self.notify_hooks: dict[int, Callable] = {Notify.INVALID_SPI: invalid_spi.protected_received}
        # IKE SA timers (kind, arg) by kind
        self.timer_handlers: dict[str, Callable] = {
            liveness.DPD[0]: liveness.on_dpd, liveness.START[0]: liveness.on_start,
            lifetimes.CHILD_REKEY: rekey.on_child_rekey, lifetimes.CHILD_EXPIRE: rekey.on_child_expire,
            lifetimes.IKE_REKEY[0]: rekey.on_ike_rekey, lifetimes.IKE_EXPIRE[0]: rekey.on_ike_expire,
            lifetimes.REAP[0]: rekey.on_reap, reauth.REAUTH[0]: reauth.on_timer, natt.TIMER[0]: natt.on_timer,
            DELAYED_TASK: self._delayed_task_due, followup_ke.TIMER: followup_ke.drop,
        }
        # tables
        self.by_spi: dict[bytes, IkeSa] = {}        # IKE SAs by our SPI
        self.by_id: dict[int, IkeSa] = {}           # ... by id (not the unregistered new SA of a rekey)
        self.half_open: dict[tuple, IkeSa] = {}     # responder: (SPIi, peer IP) -> SA
        self.half_open_per_ip: Counter = Counter()
        self.pacer = pacing.InitiationPacer(settings.max_initiating_per_peer, settings.max_initiating,
                                             self.stats)
        self.installing: dict = {}                  # handle -> ChildSa awaiting the board
        self.children: dict = {}                    # handle -> ChildSa (installing or installed)
        self.child_spis: dict[int, object] = {}     # our inbound ESP SPIs in use (None: offered only)
        self._spi_out: dict[int, list] = {}         # peer's inbound SPI -> Child SAs (INVALID_SPI hints)
        self._peers: dict[str, set] = {}            # peer IP -> IKE SAs
        self._by_conn_ids: dict[tuple, set] = {}    # (local id, remote id) configured -> IKE SAs
        # out
        self.datagrams: list[Datagram] = []
        self.events = deque()
        self.timer_heap = []                        # (time, seq, IkeSa); stale entries are skipped
        self._seq = itertools.count()
        self._ike_ids = itertools.count(1)
        self._handles = itertools.count(1)
        self._delayed_ids = itertools.count(1)
        self._rand = random.SystemRandom()

    # ================================================================ out

    def send(self, data: bytes, remote: tuple, local: tuple, keepalive: bool = False):
        self.datagrams.append(Datagram(data, remote, local, keepalive))

    def emit(self, event):
        self.events.append(event)

    def warn(self, sa: IkeSa | None, text: str):
        self.events.append(IkeWarning(sa.ike_id if sa is not None else None, text))

    def reply_error(self, hdr, notify: int, data: bytes, addr: tuple, local: tuple, now: float):
        """An unprotected error answer to IKE_SA_INIT (§2.21.1), rate-limited per source and in
        total; the request leaves no state behind."""
        if not self.limits.replies.take(addr[0], now):
            self.stats["replies_rate_limited"] += 1
            return
        msg = Message(hdr.spi_i, ZERO_SPI, _INIT, Flag.RESPONSE, 0, [NotifyPayload(notify, data)])
        self.stats["error_replies"] += 1
        self.send(msg.encode(), addr, local)

    # ================================================================ IKE SAs

    def capabilities_for(self, sa: IkeSa) -> OffloadCapabilities:
        return self.capabilities(sa) if callable(self.capabilities) else self.capabilities

    def new_ike_sa(self, initiator: bool, local: tuple, remote: tuple, now: float,
                   register: bool = True) -> IkeSa:
        """A fresh IKE SA; ``register=False`` for the new one of a rekey, which joins the tables
        only when its exchange completes (rekey.setup)."""
        sa = IkeSa(self, next(self._ike_ids), initiator, local, remote, now)
        if register:
            self.register_sa(sa)
        return sa

    def register_sa(self, sa: IkeSa):
        self.by_id[sa.ike_id] = sa
        self._peers.setdefault(sa.remote[0], set()).add(sa)
        if sa.conn is not None:
            self._by_conn_ids.setdefault(_conn_ids(sa.conn), set()).add(sa)

    def conn_changed(self, sa: IkeSa, old):
        """``sa`` was given a connection: file it under that connection's identities."""
        if self.by_id.get(sa.ike_id) is not sa:
            return                      # not registered (yet): register_sa files it
        self._unregister_conn(sa, old)
        if sa.conn is not None:
            self._by_conn_ids.setdefault(_conn_ids(sa.conn), set()).add(sa)

    def _unregister_conn(self, sa: IkeSa, conn):
        if conn is None:
            return
        group = self._by_conn_ids.get(_conn_ids(conn))
        if group is not None:
            group.discard(sa)
            if not group:
                del self._by_conn_ids[_conn_ids(conn)]

    def ike_sas_with_conn_ids(self, local_id, remote_id):
        """The live IKE SAs whose connections have these configured identities."""
        return self._by_conn_ids.get((local_id, remote_id), ())

    def _unregister_peer(self, sa: IkeSa):
        peers = self._peers.get(sa.remote[0])
        if peers is not None:
            peers.discard(sa)
            if not peers:
                del self._peers[sa.remote[0]]

    def peer_moved(self, sa: IkeSa, addr: tuple):
        """The peer's address changed (NAT, §2.23): file ``sa`` under its new IP."""
        if addr[0] != sa.remote[0]:
            self._unregister_peer(sa)
            self._peers.setdefault(addr[0], set()).add(sa)

    def ike_sa(self, ike_id: int) -> IkeSa | None:
        return self.by_id.get(ike_id)

    def ike_sas(self) -> list[IkeSa]:
        """Every IKE SA the driver was told of (not the redundant ones of a rekey collision)."""
        return [sa for sa in self.by_id.values() if sa.announced]

    def ike_sas_with_peer(self, ip: str) -> list[IkeSa]:
        return sorted((sa for sa in self._peers.get(ip, ()) if sa.state != IkeSaState.DEAD),
                      key=lambda s: s.ike_id)

    def half_open_count(self) -> int:
        return len(self.half_open)

    def half_open_from(self, ip: str) -> int:
        return self.half_open_per_ip.get(ip, 0)

    def enter_half_open(self, sa: IkeSa, key: tuple):
        sa.half_open_key = key
        self.half_open[key] = sa
        self.half_open_per_ip[key[1]] += 1

    def leave_half_open(self, sa: IkeSa, now: float):
        """``sa`` is established or gone: out of the responder's half-open table, and as an
        initiator its pacing slot goes to the next IKE SA waiting for one."""
        if sa.pacing is not None:
            for nxt in self.pacer.release(sa):
                nxt.kick(now)
        key, sa.half_open_key = sa.half_open_key, None
        if key is not None and self.half_open.get(key) is sa:
            del self.half_open[key]
            n = self.half_open_per_ip[key[1]] - 1
            if n > 0:
                self.half_open_per_ip[key[1]] = n
            else:
                del self.half_open_per_ip[key[1]]

    def initiate(self, conn_name: str, now: float, child=None, *, retry: bool = False,
                 start_at: float | None = None, attempt: int = 1, trigger: tuple | None = None) -> IkeSa:
        """Start an IKE SA for ``conn_name`` (see ``IkeEngine.initiate``)."""
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
        sa = self.new_ike_sa(True, (local, conn.local_port), (remote, conn.remote_port), now)
        sa.conn = conn
        sa.spi_i = self.alloc_ike_spi(sa)
        if retry:
            sa.attempt = Attempt(attempt, [c.name for c in cfgs] or False)
        sa.queue.append(IkeInitTask(conn.proposals[0].dh[0]))
        sa.queue.append(IkeAuthTask(cfgs[0] if cfgs else None, trigger))
        for cfg in cfgs[1:]:
            sa.queue.append(CreateChildTask(cfg))
        if start_at is not None and start_at > now:
            sa.set_timer(liveness.START, start_at)
        else:
            self.start_initiation(sa, now)
        return sa

    def start_initiation(self, sa: IkeSa, now: float):
        """Send ``sa``'s IKE_SA_INIT now if the pacer gives it a slot, else when one frees up."""
        if sa.active is None and sa.my_mid == 0 and self.pacer.admit(sa):
            sa.kick(now)

    def fail(self, sa: IkeSa, reason: str, now: float):
        """An initiation the peer refused: warn, drop it, and let the after-down rules retry."""
        self.warn(sa, reason)
        self.destroy(sa, reason, now, established=False, cause="failed")

    def destroy(self, sa: IkeSa, reason: str, now: float, *, send_delete: bool = False,
                established: bool | None = None, cause: str | None = None):
        """Remove an IKE SA and its Child SAs (ChildSaDelete for each installed one, then IkeSaDown).
        With ``send_delete`` a best-effort Delete goes out first (not retransmitted). ``cause``
        ("timeout", "failed", "expired", "closed") lets liveness.after_down re-initiate the connection."""
        if sa.state == IkeSaState.DEAD:
            return
        if sa.active is not None:
            sa.active.abort(sa)
        children = liveness.child_names(sa)
        if send_delete and sa.established_at is not None and sa.cipher is not None:
            flags = Flag.INITIATOR if sa.initiator else 0
            msg = Message(sa.spi_i, sa.spi_r, _INFO, flags, sa.my_mid, [DeletePayload(1)])
            self.send(msg.encode(sa.cipher), sa.remote, sa.local)
        for child in list(sa.children.values()):
            if child.state == ChildSaState.INSTALLING:
                child.doomed = reason
                sa.children.pop(child.handle, None)
                continue
            self.remove_child(sa, child, reason)
        sa.state = IkeSaState.DEAD
        sa.deleted_reason = reason
        # its keys go now, not when the last reference to the SA does (a DEAD SA needs none)
        sa.keys = sa.cipher = sa.dh_priv = None
        fragments.drop(sa)
        followup_ke.drop_all(sa)
        sa.outstanding = None
        sa.queue.clear()
        sa.timers.clear()
        sa.delayed.clear()
        for spi in (sa.spi_i, sa.spi_r):
            self.release_ike_spi(spi, sa)
        self.leave_half_open(sa, now)
        if self.by_id.get(sa.ike_id) is sa:
            del self.by_id[sa.ike_id]
            self._unregister_conn(sa, sa.conn)
        self._unregister_peer(sa)
        sa.unconfirmed = None
        succ = sa.successor
        if succ is not None and succ.unconfirmed is not None and succ.unconfirmed[0] is sa:
            rekey.confirm(succ, now)            # the old one is gone: the new one carries on alone
        col, sa.rekey_collision = sa.rekey_collision, None
        if col is not None and col.new.state != IkeSaState.DEAD and not col.new.announced:
            self.destroy(col.new, "IKE SA it rekeyed is gone", now, send_delete=True)
        if sa.reauth_of is not None:
            reauth.failed(sa, now)
        restart = liveness.after_down(sa, cause, children, now)
        if not sa.announced:
            return
        replaced = sa.successor.ike_id if sa.successor is not None else None
        self.emit(IkeSaDown(sa.ike_id, sa.conn.name if sa.conn else "",
                            "rekeyed" if replaced is not None else reason,
                            sa.established_at is not None if established is None else established,
                            replaced_by=replaced, restart_ike_id=restart))

    def peer_deletes_ike(self, sa: IkeSa, now: float):
        """The peer deletes this IKE SA (§1.4.1). If we had answered its rekey of it while ours
        ran, its new IKE SA survives and takes the Child SAs (§2.25.2: forget our own rekey)."""
        col, sa.rekey_collision = sa.rekey_collision, None
        if col is not None and col.new.state == IkeSaState.ESTABLISHED:
            rekey.adopt(sa, col.new, now, delete_old=False)
        self.destroy(sa, "deleted by peer", now, cause="closed")

    # ================================================================ SPIs

    def alloc_ike_spi(self, sa: IkeSa) -> bytes:
        while True:
            spi = os.urandom(8)
            if spi != ZERO_SPI and spi not in self.by_spi:
                self.by_spi[spi] = sa
                return spi

    def release_ike_spi(self, spi: bytes, sa: IkeSa):
        if self.by_spi.get(spi) is sa:
            del self.by_spi[spi]

    def alloc_child_spi(self) -> int:
        """A fresh inbound ESP SPI (>= 256, RFC 4303 §2.1), unique across the engine."""
        while True:
            spi = self._rand.getrandbits(32)
            if spi >= 256 and spi not in self.child_spis:
                self.child_spis[spi] = None
                return spi

    def release_child_spi(self, spi: int):
        """An SPI we offered that no Child SA got (the exchange failed)."""
        self.child_spis.pop(spi, None)

    # ================================================================ Child SAs

    def new_child_handle(self) -> int:
        return next(self._handles)

    def register_child(self, child, installing: bool = False):
        self.children[child.handle] = child
        self.child_spis[child.spi_in] = child
        self._spi_out.setdefault(child.spi_out, []).append(child)
        if installing:
            self.installing[child.handle] = child

    def forget_child(self, child):
        self.children.pop(child.handle, None)
        if child.spi_in in self.child_spis and self.child_spis[child.spi_in] in (child, None):
            del self.child_spis[child.spi_in]
        lst = self._spi_out.get(child.spi_out)
        if lst is not None:
            if child in lst:
                lst.remove(child)
            if not lst:
                del self._spi_out[child.spi_out]
        lifetimes.clear_child_timers(child.ike, child.handle)

    def children_sending_with(self, spi: int) -> list:
        """Child SAs whose outbound SPI (the peer's inbound one) is ``spi``."""
        return self._spi_out.get(spi, [])

    def remove_child(self, sa: IkeSa, child, reason: str):
        """Drop ``child`` (ChildSaDelete if the board has it); a rekey's successor that was
        waiting for it to go sends from now on."""
        if child.state in (ChildSaState.INSTALLED, ChildSaState.DELETING):
            self.emit(ChildSaDelete(child.handle, sa.ike_id, child.spi_in, child.spi_out, reason,
                                    replaced=child.rekey_state == RekeyState.REKEYED))
        child.state = ChildSaState.DEAD
        child.keys = None
        sa.children.pop(child.handle, None)
        self.forget_child(child)
        for other in sa.children.values():
            if other.rekey_of == child.handle and other.defer_outbound:
                self.switch_outbound(sa, other)

    def switch_outbound(self, sa: IkeSa, child):
        """ChildSaOutbound: ``child``, installed with ``defer_outbound``, takes over sending."""
        if child.defer_outbound and child.state == ChildSaState.INSTALLED and \
                child.rekey_state != RekeyState.REDUNDANT:
            child.defer_outbound = False
            self.emit(ChildSaOutbound(child.handle, sa.ike_id, child.rekey_of))

    def recreate_child(self, sa: IkeSa, child, now: float, reason: str, tell_peer: bool = True):
        """Drop ``child`` now (ChildSaDelete), ask the peer to delete its half, and negotiate it
        anew unless a rekey already replaced it (INVALID_SPI, CHILD_SA_NOT_FOUND, hard expiry)."""
        cfg = child.cfg
        replaced = child.rekey_state in (RekeyState.REKEYED, RekeyState.REDUNDANT)
        rekeying = child.rekey_state == RekeyState.REKEYING
        if rekeying:
            child.rekey_state = RekeyState.RECREATE     # the rekey in flight replaces it, or we create it
        self.remove_child(sa, child, reason)
        if tell_peer:
            sa.add_task(DeleteSpisTask([child.spi_in]), now)
        if cfg is not None and not replaced and not rekeying and sa.state == IkeSaState.ESTABLISHED and \
                sa.successor is None and cfg.name in sa.conn.children:
            self.stats["child_sas_recreated"] += 1
            sa.add_task(CreateChildTask(cfg), now)

    def reopen_child(self, sa: IkeSa, cfg, now: float):
        """The peer deleted a Child SA (§1.4.1, not a rekey): with ``close_action = start`` it is
        negotiated again in the same IKE SA; with ``close_action = trap`` on the next packet for it."""
        if cfg is not None and cfg.close_action == "trap" and cfg.name in sa.conn.children:
            self.emit(TrapRequested(sa.conn.name, [cfg.name], "closed"))
        if cfg is not None and cfg.close_action == "start" and sa.state == IkeSaState.ESTABLISHED and \
                sa.successor is None and cfg.name in sa.conn.children and \
                not any(c.cfg is cfg and c.state == ChildSaState.INSTALLED for c in sa.children.values()) and \
                not liveness.carried_elsewhere(sa, cfg.name):
            self.stats["child_sas_reopened"] += 1
            sa.add_task(CreateChildTask(cfg), now)

    # ================================================================ time

    def schedule(self, sa: IkeSa, t: float):
        heapq.heappush(self.timer_heap, (t, next(self._seq), sa))

    def timer_due(self, sa: IkeSa, key: tuple, now: float):
        handler = self.timer_handlers.get(key[0])
        if handler is not None:
            handler(sa, key, now)

    def retry_delay(self) -> float:
        """§2.25: after TEMPORARY_FAILURE "MUST NOT immediately retry": 0.5..1 x retry_delay."""
        d = self.settings.retry_delay
        return self.jitter.uniform(d / 2, d)

    def delay_task(self, sa: IkeSa, task, t: float):
        """Queue ``task`` on ``sa`` at time ``t`` (if ``sa`` is still established then)."""
        n = next(self._delayed_ids)
        sa.delayed[n] = task
        sa.set_timer((DELAYED_TASK, n), t)

    def move_delayed_tasks(self, old: IkeSa, new: IkeSa):
        """An IKE rekey: the tasks ``old`` had parked for later go to ``new``."""
        for k in [k for k in old.timers if k[0] == DELAYED_TASK]:
            new.timers[k] = old.timers.pop(k)
            new.delayed[k[1]] = old.delayed.pop(k[1])

    def _delayed_task_due(self, sa: IkeSa, key: tuple, now: float):
        task = sa.delayed.pop(key[1], None)
        if task is not None and sa.state == IkeSaState.ESTABLISHED:
            sa.add_task(task, now)
