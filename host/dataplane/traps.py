"""On-demand tunnels in the data path: trap policies, and the packets held until their Child SA is up.

A trap policy is a Child SA configuration set up on demand (strongSwan's `start_action = trap`,
libreswan's `auto=ondemand`; here also what `close_action` / `dpd_action = trap` leave behind):
its remote networks are routed into the TUN device from the start (tun_routes.py), no SA exists,
and a packet from its local to its remote networks that no installed Child SA carries is held and
asks for the Child SA — the recovery RFC 7296's authors describe for a rebooted gateway: "the
next packet will trigger the creation of the new IKE and IPsec SA".

* Held, not dropped: the first packets wait in a small queue per policy, bounded in packets and
  bytes (more are dropped, counted: ``trap_hold_overflow``); once the Child SA is installed the
  packets it carries leave through the board's queue like any other packet (its admission, its
  drops); what is still held after ``HOLD_SECONDS`` is dropped (``trap_hold_expired``).
* Asked once, rate limited: the first held packet triggers the negotiation; while it runs, more
  packets trigger nothing; after a failed one a policy asks again at most every
  ``TRIGGER_INTERVAL``, and after ``PENDING_TIMEOUT`` if it never settled. A negotiation that
  brought its Child SA up lifts the limit: when that SA goes, the next packet asks at once.

Sans-I/O: every call takes ``now`` (seconds); counters go to the ``stats`` Counter given.
"""
from __future__ import annotations

import collections

HOLD_SECONDS = 5.0          # an IKE exchange lost once is retransmitted within this (RFC 7296 §2.1)
HOLD_PACKETS = 16           # per policy
HOLD_BYTES = 32 * 1024      # per policy
TRIGGER_INTERVAL = 1.0
PENDING_TIMEOUT = 30.0


class TrapPolicy:
    """One Child SA configuration on demand: ``conn``/``child`` name it; its networks are
    ip_network objects (the configuration's selectors, ``dynamic`` resolved)."""

    __slots__ = ("conn", "child", "local_nets", "remote_nets", "held", "held_bytes", "asked_at", "pending")

    def __init__(self, conn, child, local_nets, remote_nets):
        self.conn, self.child = conn, child
        self.local_nets, self.remote_nets = list(local_nets), list(remote_nets)
        self.held = collections.deque()      # (packet, src, dst, held at)
        self.held_bytes = 0
        self.asked_at = None                 # when it last asked for its Child SA
        self.pending = False                 # a negotiation it asked for runs

    def matches(self, src, dst) -> bool:
        return any(dst in n for n in self.remote_nets) and any(src in n for n in self.local_nets)

    def __repr__(self):
        return "TrapPolicy(%s/%s %s == %s)" % (self.conn, self.child, self.local_nets, self.remote_nets)


class TrapTable:
    def __init__(self, stats=None):
        self.policies = []
        self.stats = stats if stats is not None else collections.Counter()

    def find(self, conn, child):
        return next((p for p in self.policies if p.conn == conn and p.child == child), None)

    def add(self, policy) -> bool:
        """Install a trap policy; False if that connection's child is trapped already."""
        if self.find(policy.conn, policy.child) is not None:
            return False
        self.policies.append(policy)
        return True

    def remove(self, conn) -> list:
        """Drop every trap policy of connection ``conn`` (a reload removed or changed it); what
        they held is dropped and counted (``trap_hold_expired``: it will never be sent). Returns
        the removed policies."""
        gone = [p for p in self.policies if p.conn == conn]
        if gone:
            self.policies = [p for p in self.policies if p.conn != conn]
            n = sum(len(p.held) for p in gone)
            if n:
                self.stats["trap_hold_expired"] += n
        return gone

    def held(self) -> int:
        return sum(len(p.held) for p in self.policies)

    # ---- a packet no Child SA carries ------------------------------------------------------------
    def hold(self, packet, src, dst, now):
        """Returns (held, policy to ask for its Child SA or None): ``held`` is False when no
        policy covers the packet (it is none of ours to hold)."""
        p = next((p for p in self.policies if p.matches(src, dst)), None)
        if p is None:
            return False, None
        self._expire(p, now)
        if len(p.held) < HOLD_PACKETS and p.held_bytes + len(packet) <= HOLD_BYTES:
            p.held.append((packet, src, dst, now))
            p.held_bytes += len(packet)
            self.stats["trap_held"] += 1
        else:
            self.stats["trap_hold_overflow"] += 1
        since = now - p.asked_at if p.asked_at is not None else None
        if since is None or (not p.pending and since >= TRIGGER_INTERVAL) or since >= PENDING_TIMEOUT:
            self.asking(p, now)
            return True, p
        return True, None

    def asking(self, policy, now):
        """``policy`` asks for its Child SA now."""
        policy.asked_at = now
        policy.pending = True
        self.stats["trap_triggers"] += 1

    def settled(self, conn, child, up=False):
        """The negotiation a policy asked for is over: a packet it still holds may ask again —
        after TRIGGER_INTERVAL if it failed, at once if its Child SA came ``up`` (when that SA
        goes, a board reset for one, the next packet brings the tunnel back without waiting)."""
        p = self.find(conn, child)
        if p is not None:
            p.pending = False
            if up:
                p.asked_at = None

    def unasked(self, policy):
        """The driver could not start the negotiation (no board ready): the next packet asks."""
        policy.asked_at = None
        policy.pending = False

    # ---- the Child SA is there -----------------------------------------------------------------
    def release(self, carries, now) -> list:
        """The held packets an installed Child SA carries (``carries(src, dst)``), oldest first;
        they leave the hold queues (expired ones are dropped)."""
        out = []
        for p in self.policies:
            self._expire(p, now)
            if not p.held:
                continue
            keep = collections.deque()
            for item in p.held:
                if carries(item[1], item[2]):
                    out.append(item)
                    p.held_bytes -= len(item[0])
                else:
                    keep.append(item)
            p.held = keep
        out.sort(key=lambda it: it[3])
        self.stats["trap_released"] += len(out)
        return [it[0] for it in out]

    def expire(self, now) -> int:
        """Drop what was held longer than HOLD_SECONDS; returns how many."""
        return sum(self._expire(p, now) for p in self.policies)

    def _expire(self, p, now) -> int:
        n = 0
        while p.held and now - p.held[0][3] >= HOLD_SECONDS:
            pkt = p.held.popleft()[0]
            p.held_bytes -= len(pkt)
            n += 1
        if n:
            self.stats["trap_hold_expired"] += n
        return n
