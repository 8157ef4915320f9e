"""IKE SA and Child SA state, and the message plumbing every exchange shares: Message IDs with a
window of one, retransmission of requests on an exponential schedule, and the responder's cache of
its last response (RFC 7296 §2.1-§2.3).

The exchanges themselves are tasks (task.py), one module each: ike_init, ike_auth, child_create,
rekey, informational. The IKE SA queues them and runs one at a time; ``ctx`` is the engine's
context (context.py), the only part of the engine an IKE SA and its tasks see.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

from . import fragments, liveness, pacing, reauth
from .constants import ExchangeType, Flag
from .message import Message
from .states import ChildSaState, IkeSaState

_INIT = int(ExchangeType.IKE_SA_INIT)


class RekeyCollision(NamedTuple):
    """A rekey by the peer that we answered while our own rekey of the same SA ran (§2.8.1,
    §2.8.2): its nonces decide which of the two new SAs stays once both exchanges are done."""
    ni: bytes
    nr: bytes
    new: object                     # the ChildSa or IkeSa the peer's rekey created


class Attempt(NamedTuple):
    """An initiation that is tried again when it fails (``keyingtries``, liveness.py)."""
    number: int
    children: list | bool           # the Child SA names to bring up; False: none


class ChildSa:
    """One Child SA (a pair of ESP SAs). ``state`` (ChildSaState): installing -> installed ->
    deleting -> dead.
    ``exchange_initiator`` tells which half of KEYMAT is ours (§2.17)."""
    __slots__ = (
        "cfg",
        "chosen",
        "collisions",
        "defer_outbound",
        "doomed",
        "exchange_initiator",
        "handle",
        "ike",
        "installed_at",
        "installer",
        "keys",
        "local_ts",
        "mode",
        "name",
        "rekey_of",
        "rekey_state",
        "remote_ts",
        "spi_in",
        "spi_out",
        "state",
    )

    def __init__(self, handle, ike, name, cfg):
        self.handle, self.ike, self.name, self.cfg = handle, ike, name, cfg
        self.state = ChildSaState.INSTALLING
        self.spi_in = self.spi_out = 0
        self.chosen = None
        self.mode = "tunnel"
        self.local_ts = self.remote_ts = ()
        self.keys = None
        self.exchange_initiator = False
        self.installer = None           # the task waiting for the board's verdict on it
        self.doomed = None              # reason, if the SA must go as soon as its install returns
        self.rekey_of = None            # handle of the Child SA this one replaces (rekey, §2.8)
        self.rekey_state = None         # RekeyState, or None: no rekey involves it
        self.collisions = []            # RekeyCollision: peer rekeys of this SA answered while ours ran
        self.installed_at = None
        self.defer_outbound = False     # responder of a rekey: keep sending on rekey_of until it goes

    def __repr__(self):
        return (f"<ChildSa {self.handle} {self.name} {self.state} in={self.spi_in:08x} "
                f"out={self.spi_out:08x}>")


class Outstanding:
    """Our request in flight (window size 1): its datagrams (several if fragmented, RFC 7383) are
    resent unchanged (§2.1) on ``policy``'s exponential schedule (§2.4)."""
    __slots__ = ("data", "exchange", "hinted", "invalid_ike_spi", "mid", "next_at", "policy", "task", "tries")

    def __init__(self, mid, exchange, data, task, next_at, policy):
        self.mid, self.exchange, self.data, self.task = mid, exchange, data, task
        self.tries, self.next_at, self.policy = 0, next_at, policy
        self.hinted = False             # an unprotected hint started it or moved it to the hint schedule
        self.invalid_ike_spi = False    # it was answered with an unprotected INVALID_IKE_SPI


class IkeSa:
    """State of one IKE SA, from the first IKE_SA_INIT to its deletion."""

    def __init__(self, ctx, ike_id: int, initiator: bool, local: tuple, remote: tuple, now: float):
        self.ctx = ctx
        self.ike_id = ike_id
        self.initiator = initiator          # we are the original initiator
        self.local = local                  # (ip, port) we send from
        self.remote = remote                # (ip, port) we send requests to
        self.state = IkeSaState.CONNECTING
        self.created = now
        self.established_at = None
        self.spi_i = self.spi_r = b"\0" * 8
        # negotiation
        self._conn = None
        self.candidates = []
        self.chosen = None
        self.prf = None
        self.keys = None
        self.cipher = None
        self.ni = self.nr = b""
        self.dh_group = 0
        self.dh_priv = None
        self.dh_pub = b""
        self.init_req = self.init_resp = b""
        self.nat_local = self.nat_remote = False
        self.peer_hashes = set()            # RFC 7427 hashes the peer accepts
        self.peer_certreq = False
        self.local_id = self.remote_id = None
        self.cookie = b""
        self.retries = 0                    # COOKIE / INVALID_KE restarts of IKE_SA_INIT
        self.initial_contact = False
        self.fragmentation = False          # RFC 7383 negotiated in IKE_SA_INIT
        self.ake_pending = []               # RFC 9370: (type, method) of the key exchanges still to do
        self.int_auth_i = self.int_auth_r = b""     # RFC 9242 §3.3.2: IntAuth of IKE_INTERMEDIATE
        self.followup_waiting = {}          # RFC 9370 §2.2.4, responder: link -> exchange awaiting KEs
        self.prev_cipher = None             # responder: the SK cipher before the last IKE_INTERMEDIATE
        self.reassembly = None              # fragments.Reassembly of the message being received
        # messaging (§2.1-§2.3)
        self.my_mid = 0
        self.peer_mid = 0
        self.outstanding: Outstanding | None = None
        self.queue = deque()
        self.active = None                  # the task whose exchange is running
        self.last_request = None           # bytes of the last request we answered
        self.last_response = None           # bytes of our last response
        self.pending_mid = None             # a request we are still answering (two-phase install)
        # timers
        self.expire_at = None               # half-open lifetime
        self.deadline = None
        self.last_heard = now
        self.children: dict[int, ChildSa] = {}
        self.deleted_reason = None
        self.half_open_key = None           # responder: (SPIi, peer IP) in the half-open table
        self.placement = None               # opaque to the engine: the daemon's board for this SA
        # lifecycle: named timers, rekey successor, restart bookkeeping
        self.timers: dict = {}              # key (kind, arg) -> time; handlers: Context.timer_handlers
        self.successor = None               # IKE rekey: the IKE SA our Child SAs moved to (§2.18)
        self.rekey_collision = None         # RekeyCollision of a peer rekey we answered (§2.8.2)
        self.collision_of = None            # that new IkeSa: the old one, until the collision is decided
        self.unconfirmed = None             # rekey responder: (old IkeSa, its own timers) until the peer
                                            # shows it took this new one (rekey.confirm / take_back)
        self.attempt = None                 # Attempt, when a failure before it is up re-initiates
        self.reopening = None               # child names a close_action = start brings back
        self.reauth_of = None               # reauth.py: the IKE SA this one replaces (§2.8.3) ...
        self.reauth_children = set()        # ... and the Child SAs it must carry
        self.reauth_by = None               # the IKE SA replacing this one
        self.announced = True               # IkeSaDown only for SAs the driver heard of
        self.invalid_spi_task = None        # a queued INVALID_SPI notification still open for SPIs
        self.delayed: dict = {}             # n -> task queued when timer ("task", n) fires
        self.pacing = None                  # initiator: None, or waiting for / holding a slot (pacing.py)
        self.pacing_peer = None             # the peer address its slot is counted for

    # -------------------------------------------------------------- identity helpers

    @property
    def conn(self):
        """The connection this IKE SA belongs to (None until one is chosen)."""
        return self._conn

    @conn.setter
    def conn(self, conn):
        old, self._conn = self._conn, conn
        if old is not conn:
            self.ctx.conn_changed(self, old)

    @property
    def peer_spi(self) -> bytes:
        return self.spi_r if self.initiator else self.spi_i

    @property
    def nat(self) -> bool:
        return self.nat_local or self.nat_remote

    def __repr__(self):
        return f"<IkeSa {self.ike_id} {self.state} {self.spi_i.hex()}/{self.spi_r.hex()} {self.remote}>"

    # -------------------------------------------------------------- requests we send

    def add_task(self, task, now: float, first: bool = False):
        if first:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)
        self.kick(now)

    def kick(self, now: float):
        """Start the next queued exchange if none is running (window size 1, §2.3); none on a new
        IKE SA from the peer's rekey before the peer shows it has it (it may have refused our answer)."""
        while self.active is None and self.queue and self.state != IkeSaState.DEAD and \
                self.pacing != pacing.WAITING and self.unconfirmed is None:
            task = self.queue.popleft()
            payloads = task.build(self, now)
            if payloads is None:            # nothing to do after all
                continue
            self.active = task
            self.send_request(task, payloads, now)

    def send_request(self, task, payloads, now: float):
        flags = Flag.INITIATOR if self.initiator else 0
        msg = Message(self.spi_i, self.spi_r, task.exchange, flags, self.my_mid, payloads)
        init = task.exchange == _INIT
        data = msg.encode(None if init else self.cipher)
        if init:
            self.init_req = data
        datas = [data] if init else fragments.outgoing(self, msg, data)
        policy = task.retransmit or self.ctx.retransmit
        self.outstanding = Outstanding(self.my_mid, task.exchange, datas, task, now + policy.delay(0), policy)
        for d in datas:
            self.ctx.send(d, self.remote, self.local)
        self.reschedule()

    def restart_init(self, task, now: float):
        """Send IKE_SA_INIT again (after COOKIE or INVALID_KE_PAYLOAD), still Message ID 0."""
        self.outstanding = None
        self.send_request(task, task.build(self, now), now)

    def finish_task(self, now: float):
        """The running exchange is complete: let the next one go."""
        self.active = None
        self.kick(now)
        if self.reauth_of is not None:
            reauth.progress(self, now)

    # -------------------------------------------------------------- responses we send

    def send_response(self, mid: int, exchange: int, payloads, dest: tuple, local: tuple):
        flags = Flag.RESPONSE | (Flag.INITIATOR if self.initiator else 0)
        msg = Message(self.spi_i, self.spi_r, exchange, flags, mid, payloads)
        data = msg.encode(None if exchange == _INIT else self.cipher)
        if exchange == _INIT:
            self.init_resp = data
        datas = [data] if exchange == _INIT else fragments.outgoing(self, msg, data)
        self.last_response = (datas, dest, local)
        for d in datas:
            self.ctx.send(d, dest, local)

    # -------------------------------------------------------------- timers

    def set_timer(self, key, t: float):
        """Arm the named lifecycle timer ``key`` = (kind, arg) for time ``t`` (replacing it)."""
        self.timers[key] = t
        self.reschedule()

    def clear_timer(self, key):
        self.timers.pop(key, None)      # a deadline left earlier just fires and finds nothing

    def reschedule(self):
        t = None
        if self.outstanding is not None:
            t = self.outstanding.next_at
        if self.expire_at is not None and (t is None or self.expire_at < t):
            t = self.expire_at
        if self.timers:
            m = min(self.timers.values())
            if t is None or m < t:
                t = m
        if t != self.deadline:
            self.deadline = t
            if t is not None:
                self.ctx.schedule(self, t)

    def on_timer(self, now: float):
        if self.expire_at is not None and now >= self.expire_at:
            self.ctx.destroy(self, "half-open timeout", now)
            return
        o = self.outstanding
        if o is not None and now >= o.next_at:
            policy = o.policy
            if o.tries >= policy.tries:
                self.outstanding = None
                reason = o.task.timeout_reason()
                if o.invalid_ike_spi:
                    reason += "; it answered INVALID_IKE_SPI"
                elif o.hinted:
                    reason += "; after an unprotected INVALID_SPI"
                liveness.request_timed_out(self, o.task, reason, now)
                return
            o.tries += 1
            o.next_at = now + policy.delay(o.tries)
            self.ctx.stats["retransmits"] += 1
            for d in o.data:
                self.ctx.send(d, self.remote, self.local)
        if self.timers:
            due = sorted((t, k) for k, t in self.timers.items() if t <= now)
            for t, k in due:
                if self.state == IkeSaState.DEAD:
                    return
                if self.timers.get(k) == t:         # an earlier handler may have moved or cleared it
                    del self.timers[k]
                    self.ctx.timer_due(self, k, now)
        if self.state != IkeSaState.DEAD:
            self.reschedule()
