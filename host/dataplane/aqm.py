"""The queue in front of a board: packets wait here, not on the link, and are dropped early.

A board's link and CPU are the narrowest part of the path (a UART at 921600 baud carries ~92 KB/s,
a MicroPython board encrypts a few hundred packets a second). The host never queues more into the
link than its data budget (host/offload/link.py); everything else waits in one `BoardQueue` per
board: per direction (packets to encrypt, packets to decrypt, served in turn) a bulk FIFO managed
for delay by CoDel (RFC 8289) — a packet whose sojourn time stayed above `target` for a whole
`interval` is dropped at the head, more often the longer it lasts, so a TCP sender slows down,
and a UDP flood costs queueing delay bounded by `max_delay` (tail drop beyond the work the board
does in that time) — and a sparse FIFO for small packets (pings, TCP ACKs, DNS, keepalives) that
goes first, as fq_codel serves sparse flows first: the flows inside ESP cannot be told apart, so
size stands in for sparseness, and a sparse FIFO that stops being short is not sparse traffic any
more (small packets then join the bulk FIFO). Drops are counted by reason. Sans-I/O: every call
takes `now` (seconds).
"""
import collections
import math
from dataclasses import dataclass, field

OUT = 0     # plaintext from the TUN device, to encrypt
IN = 1      # ESP from the peer, to decrypt

SMALL = 256         # bytes: a packet this small is sparse traffic (ICMP echo, TCP ACK, DNS query)
SPARSE_DEPTH = 8    # a sparse FIFO longer than this is carrying a flood, not sparse traffic


@dataclass
class Item:
    kind: int
    route: object
    data: bytes
    addr: tuple | None
    work: float          # the board's CPU seconds for this packet
    cost: float          # the longer of its link and board time: what it takes of the data budget
    at: float            # when it was queued


class CoDel:
    """One FIFO with RFC 8289's CoDel (section 5 pseudocode's state machine)."""

    def __init__(self, target, interval, mtu=1500):
        self.target = target
        self.interval = interval
        self.mtu = mtu
        self.q = collections.deque()
        self.bytes = 0
        self.first_above_time = 0.0
        self.drop_next = 0.0
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.dropped = 0

    def __len__(self):
        return len(self.q)

    def push(self, item):
        self.q.append(item)
        self.bytes += len(item.data)

    def head_age(self, now):
        return now - self.q[0].at if self.q else 0.0

    def _pop(self):
        item = self.q.popleft()
        self.bytes -= len(item.data)
        return item

    def _ok_to_drop(self, item, now):
        """RFC 8289 §5.4 dodequeue(): is this head packet past the target for an interval?"""
        if now - item.at < self.target or self.bytes <= self.mtu:
            self.first_above_time = 0.0
            return False
        if self.first_above_time == 0.0:
            self.first_above_time = now + self.interval
            return False
        return now >= self.first_above_time

    def _control_law(self, t):
        return t + self.interval / math.sqrt(self.count)

    def pop(self, now, drop):
        """The next packet to send, or None; packets CoDel drops go to drop(item)."""
        if not self.q:
            self.first_above_time = 0.0
            self.dropping = False
            return None
        item = self._pop()
        ok = self._ok_to_drop(item, now)
        if self.dropping:
            if not ok:
                self.dropping = False
            while self.dropping and now >= self.drop_next:
                drop(item)
                self.dropped += 1
                self.count += 1
                if not self.q:
                    self.dropping = False
                    return None
                item = self._pop()
                if not self._ok_to_drop(item, now):
                    self.dropping = False
                else:
                    self.drop_next = self._control_law(self.drop_next)
        elif ok:
            drop(item)
            self.dropped += 1
            if not self.q:
                return None
            item = self._pop()
            self._ok_to_drop(item, now)
            self.dropping = True
            delta = self.count - self.lastcount
            self.count = delta if delta > 1 and now - self.drop_next < 16 * self.interval else 1
            self.drop_next = self._control_law(now)
            self.lastcount = self.count
        return item

    def clear(self):
        items = list(self.q)
        self.q.clear()
        self.bytes = 0
        self.first_above_time = 0.0
        self.dropping = False
        return items


@dataclass
class QueueLimits:
    """How a board's queue is managed: CoDel's target and interval, and the tail-drop limit."""
    target: float = 0.005
    interval: float = 0.1
    max_delay: float = 0.1          # tail drop when the queue holds more work than this
    max_bytes: int = 1 << 20
    mtu: int = 1500

    @classmethod
    def for_board(cls, packet_service):
        """From the time the board takes for one MTU-sized packet (link and CPU): CoDel's target
        must not be below one packet's service time on a slow link (RFC 8289 §4.4, as fq_codel
        is tuned for slow uplinks), the interval ten targets and at least 100 ms."""
        target = max(0.005, 1.5 * packet_service)
        interval = max(0.1, 10 * target)
        return cls(target=target, interval=interval, max_delay=interval)


@dataclass
class BoardQueue:
    """Packets waiting for one board, both directions; `take` forms the next batch."""
    limits: QueueLimits = field(default_factory=QueueLimits)
    drops: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        lim = self.limits
        self.fifos = (CoDel(lim.target, lim.interval, lim.mtu), CoDel(lim.target, lim.interval, lim.mtu))
        self.sparse = (collections.deque(), collections.deque())
        self.work = [0.0, 0.0]           # seconds of board time queued in the bulk FIFOs
        self._turn = OUT
        self._sparse_turn = OUT

    def __len__(self):
        return len(self.fifos[OUT]) + len(self.fifos[IN]) + len(self.sparse[OUT]) + len(self.sparse[IN])

    def push(self, item):
        """Queue a packet; False (and counted) when its direction already holds `max_delay` of
        link-or-board time."""
        k = item.kind
        if len(item.data) <= SMALL and len(self.sparse[k]) < SPARSE_DEPTH:
            self.sparse[k].append(item)
            return True
        fifo = self.fifos[k]
        if (fifo.q and self.work[k] + item.cost > self.limits.max_delay) \
                or fifo.bytes + len(item.data) > self.limits.max_bytes:
            self.drops["queue_full"] += 1
            return False
        fifo.push(item)
        self.work[k] += item.cost
        return True

    def take_sparse(self, max_items, max_bytes):
        """The next batch of small packets (the directions take turns): (kind, [items])."""
        for kind in (self._sparse_turn, 1 - self._sparse_turn):
            q = self.sparse[kind]
            batch, size = [], 0
            while q and len(batch) < max_items and size + len(q[0].data) <= max_bytes:
                it = q.popleft()
                batch.append(it)
                size += len(it.data)
            if batch:
                self._sparse_turn = 1 - kind
                return kind, batch
        return None, []

    def has_sparse(self):
        return bool(self.sparse[OUT] or self.sparse[IN])

    def has_bulk(self):
        return bool(self.fifos[OUT].q or self.fifos[IN].q)

    def take(self, now, room, max_items, max_bytes):
        """The next bulk batch: packets of one direction (the two take turns) while their time
        fits `room` seconds (the first always does), at most `max_items` and `max_bytes` of data.
        Returns (kind, [items]), or (None, []); CoDel's drops are counted."""
        for kind in (self._turn, 1 - self._turn):
            fifo = self.fifos[kind]
            batch, size, used = [], 0, 0.0
            while len(batch) < max_items and fifo.q:
                head = fifo.q[0]
                if batch and (used + head.cost > room or size + len(head.data) > max_bytes):
                    break
                item = fifo.pop(now, self._dropped)
                if item is None:
                    break
                self._left(item)
                batch.append(item)
                size += len(item.data)
                used += item.cost
            if batch:
                self._turn = 1 - kind
                return kind, batch
        return None, []

    def _left(self, item):
        k = item.kind
        self.work[k] = self.work[k] - item.cost if self.fifos[k].q else 0.0

    def _dropped(self, item):
        self.drops["queue_delay"] += 1
        self._left(item)

    def clear(self, reason):
        n = 0
        for k, fifo in enumerate(self.fifos):
            n += len(fifo.clear()) + len(self.sparse[k])
            self.sparse[k].clear()
            self.work[k] = 0.0
        if n:
            self.drops[reason] += n
        return n
