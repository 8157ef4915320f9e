"""Initiation pacing: how many of the IKE SAs we initiate may be half-open at once.

A responder guards itself against half-open IKE SAs (RFC 7296 §2.6): strongSwan's charon answers
at most ``block_threshold`` (5) IKE_SA_INITs from one initiator address whose IKE_AUTH has not
completed and silently drops the others, so an initiator that sends 60 at once gets 5 answered
and waits out its retransmission timer (§2.4, 1 s x 1.8^n) for the rest, round after round.

So an IKE SA we initiate asks for a slot before its IKE_SA_INIT goes out: at most
``per_peer`` of ours are half-open (IKE_SA_INIT sent, IKE_AUTH not yet answered) per peer
address, at most ``total`` in all (what the peers and our CPU answer well within a
retransmission timeout); the others wait, in order, per peer address. An SA that is established
or gone frees its slot and the next waiting one starts at once — the peers' queues take turns.
The same holds after a board-loss flush: its re-initiations queue like any others.

Sans-I/O: the pacer keeps books and says which IKE SAs may start; the context sends.
"""
from __future__ import annotations

from collections import Counter, deque

from .states import IkeSaState

WAITING = "waiting"     # IkeSa.pacing: queued for a slot
ACTIVE = "active"       # holds a slot: its IKE_SA_INIT / IKE_AUTH may be in flight


class InitiationPacer:
    def __init__(self, per_peer: int, total: int, stats: Counter | None = None):
        """``per_peer`` / ``total``: half-open IKE SAs of ours per peer address / in all (0: no limit);
        ``stats``: where ``initiations_queued`` is counted."""
        self.per_peer = per_peer
        self.total = total
        self.active = Counter()         # peer IP -> our IKE SAs holding a slot
        self.n_active = 0
        self.waiting: dict[str, deque] = {}     # peer IP -> IKE SAs waiting, oldest first
        self._turns = deque()           # peer IPs with waiting SAs and room of their own, in turn
        self._in_turns = set()
        self.stats = stats if stats is not None else Counter()

    def _peer_room(self, ip: str) -> bool:
        return not self.per_peer or self.active[ip] < self.per_peer

    def _total_room(self) -> bool:
        return not self.total or self.n_active < self.total

    def admit(self, sa) -> bool:
        """``sa`` wants to send its IKE_SA_INIT. True: it holds a slot now and may; False: it waits
        (``release`` of another one hands it a slot)."""
        if sa.pacing is not None:
            return sa.pacing == ACTIVE
        ip = sa.remote[0]
        if ip not in self.waiting and self._peer_room(ip) and self._total_room():
            self._take(sa, ip)
            return True
        sa.pacing = WAITING
        self.waiting.setdefault(ip, deque()).append(sa)
        self.stats["initiations_queued"] += 1
        if self._peer_room(ip):
            self._turn(ip)
        return False

    def release(self, sa) -> list:
        """``sa`` is established or gone: its slot (or place in the queue) is free. Returns the IKE SAs
        that hold a slot now and must be started, in order."""
        state, sa.pacing = sa.pacing, None
        if state != ACTIVE:
            return []                   # a waiting one is skipped when its turn comes (it is DEAD)
        ip = sa.pacing_peer
        n = self.active[ip] - 1
        if n > 0:
            self.active[ip] = n
        else:
            del self.active[ip]
        self.n_active -= 1
        if ip in self.waiting:
            self._turn(ip)
        return self._pump()

    def _take(self, sa, ip):
        sa.pacing = ACTIVE
        sa.pacing_peer = ip             # the slot is counted here even if a NAT moves the peer
        self.active[ip] += 1
        self.n_active += 1

    def _turn(self, ip):
        if ip not in self._in_turns:
            self._in_turns.add(ip)
            self._turns.append(ip)

    def _pump(self) -> list:
        started = []
        while self._turns and self._total_room():
            ip = self._turns.popleft()
            self._in_turns.discard(ip)
            q = self.waiting.get(ip)
            sa = None
            while q:
                cand = q.popleft()
                if cand.pacing == WAITING and cand.state != IkeSaState.DEAD:
                    sa = cand
                    break
            if q is not None and not q:
                del self.waiting[ip]
            if sa is None:
                continue
            self._take(sa, ip)
            started.append(sa)
            if ip in self.waiting and self._peer_room(ip):
                self._turn(ip)          # round robin: its next one goes after the other peers'
        return started

    def queued(self) -> int:
        """IKE SAs waiting for a slot (those dropped meanwhile included until their turn)."""
        return sum(len(q) for q in self.waiting.values())
