"""Sans-I/O link client: requests with sequence numbers, retries, RTT-based timeouts, and the
rule that control goes before data.

Verbs in the aioquic style: request(), receive(data, now), data_to_send(), get_timer(),
handle_timer(now), next_event(). Times are seconds (time.monotonic()).

Two kinds of request share the link:

- **control** (HELLO, HEARTBEAT, SA_*, COUNTERS, RESET): sent at once, never behind data. A
  cached request (SA commands) is retried with the same seq and bytes, so the board's reply cache
  answers a retried SA_ADD without applying it twice; it is only sent while the oldest unanswered
  cached request is fewer than `cache_size` cached requests back, so its reply cannot have been
  evicted from the board's cache when it is retried. Idempotent requests (heartbeats) retry at the
  RTO within their deadline.
- **data** (ENCRYPT/DECRYPT, retry=False): sent once. What is in flight is bounded by `data_budget`
  seconds of link-or-board time — each request holds the longer of its wire time (request or
  reply, at the link's `byte_time`) and the board's crypto time the caller states (`work`): the
  board works on one frame while the next is on the wire, so the two overlap — and by
  `data_frames` / `data_bytes` where the link has no rate (a pty): data frames and urgent ones
  together, since the board's data queue holds both (a bulk frame finding `data_frames` queued
  there is refused BUSY). At least one data request may always be in flight whatever its cost
  (keep `urgent_frames` below `data_frames`, so that urgent frames never hold every place). A
  heartbeat therefore waits behind at most `data_budget` of data on the wire in either direction,
  and the caller (the data path) keeps everything else in its own queue, where it can be dropped
  early (docs/link-protocol.md, "Control before data").
- **urgent data** (a frame of small packets: pings, TCP ACKs, DNS): sent once like data, but not
  held back by the data budget — at most `urgent_frames` in flight — so an interactive packet
  does not wait for bulk data to drain (the board works on small frames first, too).

Bytes once written to the port leave in order, so on a link with a rate a bulk frame is written
only when what was written before it leaves the line within `line_ahead` seconds (by the link's
`byte_time`: the host's own byte queue limit, like Linux's BQL for a NIC's ring). It waits here,
where a control or urgent frame can pass it, rather than in the port's buffer, where it could
not; `data_room()` is nil meanwhile, so the data path keeps the next batch in its own queue. A
timer wakes the pump when the line has room again.

The retry timeout follows RFC 6298 (SRTT + 4·RTTVAR, Karn's rule: no samples from retransmitted
requests) plus the wire time of the bytes ahead on a slow UART, and backs off exponentially.
Everything the pump needs is kept as running totals: sending costs O(1) per request whatever
the queue length.

With a link key (firmware/link/auth.py) every frame is sealed when it is transmitted — a retry
too, with a fresh auth sequence number, so the board takes it and answers it from its reply
cache — and every frame received is checked; what fails is dropped and counted
(`auth.counters`). A HELLO request carries a fresh nonce; its reply makes the session.
"""
import collections
import logging
import os

from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.events import BoardFrame, Reply, RequestFailed

log = logging.getLogger("ikeoffloadd.board")


class _Pending:
    __slots__ = ("seq", "type", "wire", "retry", "cached", "index", "first_sent", "sent_at",
                 "tries", "expires", "deadline", "reply_len", "cost", "step", "urgent", "flags", "body",
                 "nonce", "size")

    def __init__(self, seq, type, wire, retry, cached, index, deadline, reply_len, cost=0.0, step=0.0):
        self.seq = seq
        self.type = type
        self.wire = wire          # the frame, or None on an authenticated link (sealed per transmission)
        self.flags = 0
        self.body = b""
        self.nonce = None         # HELLO on an authenticated link: the nonce its body ends with
        self.size = len(wire) if wire is not None else 0     # bytes on the wire
        self.retry = retry
        self.cached = cached
        self.index = index
        self.deadline = deadline
        self.reply_len = reply_len
        self.cost = cost          # data: seconds of link-or-board time it holds while in flight
        self.step = step          # data: the board's longest single step (one packet's crypto)
        self.urgent = False       # data: a frame of small packets, outside the data budget
        self.first_sent = None
        self.sent_at = None
        self.tries = 0
        self.expires = None


class LinkClient:
    def __init__(self, *, window=8, cache_size=1, rto_initial=0.2, rto_min=0.005, rto_max=0.2, give_up=3.0,
                 byte_time=0.0, max_frame=fr.DEFAULT_MAX_FRAME, data_budget=0.05, data_frames=16,
                 data_bytes=1 << 18, urgent_frames=4, link_key=None, name="board", line_ahead=0.005):
        """byte_time: seconds per byte on the wire (10/baud for a UART, 0 for a pty);
        data_budget: seconds of link-or-board time the data requests in flight may hold;
        line_ahead: seconds of written bytes still to leave the line below which a bulk frame
        is written (the rest wait in this client, where control and urgent frames pass them);
        link_key: the board's link key (None: an open link)."""
        self.name = name             # for the log
        self.window = window
        self.cache_size = cache_size
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.give_up = give_up
        self.byte_time = byte_time
        self.data_budget = data_budget
        self.data_frames = data_frames
        self.data_bytes = data_bytes
        self.urgent_frames = urgent_frames
        self.line_ahead = line_ahead
        self._line_free_at = 0.0                     # when the bytes written so far will have left
        self.auth = la.HostAuth(link_key, os.urandom) if link_key else None
        self.decoder = fr.FrameDecoder(max_frame, auth=self.auth is not None)
        self.srtt = None
        self.rttvar = None
        self.rto = rto_initial
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._cached_index = 0
        self._pending = {}                           # seq -> _Pending, in flight
        self._cached_out = collections.OrderedDict() # index -> _Pending: cached requests in flight, oldest first
        self._waiting_cached = collections.deque()   # cached control not yet sent (window full)
        self._waiting_idem = collections.deque()     # idempotent control: leaves at the next pump
        self._waiting_data = collections.deque()     # data not yet sent (budget full)
        self._waiting_urgent = collections.deque()   # urgent data not yet sent
        self._urgent_n = 0
        self._bytes_out = 0                          # wire + reply bytes of everything in flight
        self._data_n = 0                             # data requests in flight, their cost and bytes
        self._data_cost = 0.0
        self._data_bytes = 0
        self._out = bytearray()
        self._events = collections.deque()
        self.counters = collections.Counter()

    # ---- requests ---------------------------------------------------------------------------
    def request(self, type, body, now, *, retry=True, idempotent=False, deadline=None, reply_len=16,
                work=0.0, step=None, urgent=False):
        """Queue a request; returns its seq. Its outcome arrives as Reply or RequestFailed.

        retry=False: a data request, sent once (work: the board's crypto seconds for it, step: its
        longest single packet; urgent: a frame of small packets, outside the data budget).
        idempotent=True: may be retried but the board need not cache the reply (re-executing it
        is harmless and gives fresher state). deadline: absolute time after which it fails
        (default: `give_up` seconds after it is first sent).
        """
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        cached = retry and not idempotent
        flags = 0 if cached else fr.FLAG_NOCACHE
        nonce = None
        if self.auth is None:
            wire = fr.encode(type, seq, flags, body)
        else:
            wire = None
            if type == m.HELLO:
                nonce = self.auth.new_nonce()
                body = bytes(body) + nonce
            elif type == m.SA_ADD:
                flags |= fr.FLAG_ENC            # SA keys never cross the link in the clear
        index = None
        if cached:
            self._cached_index += 1
            index = self._cached_index
        p = _Pending(seq, type, wire, retry, cached, index, deadline, reply_len)
        if wire is None:
            p.flags, p.body, p.nonce = flags, body, nonce
            p.size = len(body) + fr.MIN_FRAME + fr.AUTH_LEN + (len(body) + 32) // 254 + 3
        if cached:
            self._waiting_cached.append(p)
        elif retry:
            self._waiting_idem.append(p)
        else:
            p.cost = max(max(p.size, reply_len) * self.byte_time, work)
            p.step = work if step is None else step
            p.urgent = urgent
            (self._waiting_urgent if urgent else self._waiting_data).append(p)
        self._pump(now)
        return seq

    def data_room(self):
        """Seconds of data budget left (<= 0: a data request now would wait in this client)."""
        if self._waiting_data or self._data_n + self._urgent_n >= self.data_frames:
            return 0.0
        if not self._data_n:
            return self.data_budget if self.data_budget > 0 else 1.0
        if self._data_bytes >= self.data_bytes:
            return 0.0
        return self.data_budget - self._data_cost

    def urgent_room(self):
        """Whether an urgent data request now would be sent at once."""
        return not self._waiting_urgent and self._urgent_n < self.urgent_frames

    def data_in_flight(self):
        """(requests, seconds of cost, longest board step) of the data requests in flight."""
        if not self._data_n:
            return 0, 0.0, 0.0
        step = max((p.step for p in self._pending.values() if not p.retry and not p.urgent), default=0.0)
        return self._data_n, self._data_cost, step

    def set_max_frame(self, max_frame):
        """The board's frame limit from its HELLO: longer replies are legitimate."""
        self.decoder.set_max_frame(max_frame)

    def cancel(self, seq):
        """Forget a request (its reply, if any, will be counted as stale)."""
        p = self._pending.get(seq)
        if p is not None:
            self._retire(p)
            return
        for q in self._queues():
            for w in q:
                if w.seq == seq:
                    q.remove(w)
                    return

    def _queues(self):
        return (self._waiting_idem, self._waiting_cached, self._waiting_urgent, self._waiting_data)

    def fail_all(self, reason, now):
        """Fail every request in flight or waiting (the board was lost: nothing is acknowledged)."""
        for p in list(self._pending.values()) + [w for q in self._queues() for w in q]:
            self._events.append(RequestFailed(p.seq, p.type, reason))
        self._pending.clear()
        self._cached_out.clear()
        for q in self._queues():
            q.clear()
        self._bytes_out = self._data_n = self._data_bytes = self._urgent_n = 0
        self._data_cost = 0.0

    def in_flight(self):
        return len(self._pending) + sum(len(q) for q in self._queues())

    def _pump(self, now):
        """Send what the rules allow: control first (idempotent requests at once; cached ones in
        order, within the window and the board's reply cache), then data within its budget."""
        wi = self._waiting_idem
        while wi:
            self._send(wi.popleft(), now)
        wc = self._waiting_cached
        while wc:
            oldest = next(iter(self._cached_out), None)
            if len(self._cached_out) >= self.window or (oldest is not None and wc[0].index - oldest >= self.cache_size):
                break
            self._send(wc.popleft(), now)
        wu = self._waiting_urgent
        while wu and self._urgent_n < self.urgent_frames:
            self._send(wu.popleft(), now)
        wd = self._waiting_data
        while wd and self._data_fits(wd[0]) and self._line_room(now):
            self._send(wd.popleft(), now)

    def _line_room(self, now):
        """Whether a bulk frame written now would queue behind at most `line_ahead` of bytes."""
        return not self.byte_time or self._line_free_at - now <= self.line_ahead + 1e-6

    def _data_fits(self, p):
        if self._data_n + self._urgent_n >= self.data_frames:
            return False
        if not self._data_n:
            return True
        return self._data_cost + p.cost <= self.data_budget and self._data_bytes + p.size <= self.data_bytes

    def _send(self, p, now):
        self._pending[p.seq] = p
        self._bytes_out += p.size + p.reply_len
        if not p.retry:
            if p.urgent:
                self._urgent_n += 1
            else:
                self._data_n += 1
                self._data_cost += p.cost
                self._data_bytes += p.size
        elif p.cached:
            self._cached_out[p.index] = p
        self._transmit(p, now)

    def _retire(self, p):
        """Take an answered, failed or cancelled request out of flight and its totals."""
        del self._pending[p.seq]
        self._bytes_out -= p.size + p.reply_len
        if not p.retry:
            if p.urgent:
                self._urgent_n -= 1
            else:
                self._data_n -= 1
                self._data_cost = max(0.0, self._data_cost - p.cost) if self._data_n else 0.0
                self._data_bytes -= p.size
        elif p.cached:
            self._cached_out.pop(p.index, None)

    def _wire_time(self, p):
        """Wire time of the bytes ahead of (and including) `p` and its reply on a slow link."""
        return self._bytes_out * self.byte_time if self.byte_time else 0.0

    def _transmit(self, p, now):
        if p.first_sent is None:
            p.first_sent = now
            if p.deadline is None:
                p.deadline = now + self.give_up
        else:
            self.counters["retries"] += 1
            log.debug("%s: %s seq %d retried (try %d)", self.name, m.NAMES.get(p.type, p.type), p.seq, p.tries + 1)
        p.sent_at = now
        if not p.retry:
            p.expires = p.deadline  # sent once: it waits for its reply until the deadline
        elif p.cached:
            # Back off, but only to 4 x RTO: on a point-to-point link loss is noise, not
            # congestion, and the board answers retries from its cache at no cost.
            p.expires = now + min(self.rto * (1 << min(p.tries, 2)), self.rto_max) + self._wire_time(p)
        elif p.retry:
            # idempotent requests (heartbeats) live within a deadline of one period: retry at
            # the RTO without backoff so that a lossy line does not turn into missed periods
            p.expires = now + self.rto + self._wire_time(p)
        p.tries += 1
        wire = p.wire
        if wire is None:
            wire = self.auth.seal(p.type, p.seq, p.flags, p.body)
            if wire is None:
                return          # no session yet to seal it in: it times out
        self._out += wire
        if self.byte_time:
            self._line_free_at = max(now, self._line_free_at) + len(wire) * self.byte_time
        self.counters["sent"] += 1
        if not p.retry:
            self.counters["data_sent"] += 1

    # ---- input ------------------------------------------------------------------------------
    def receive(self, data, now):
        for f in self.decoder.feed(data):
            if self.auth is not None:
                nonce = None
                if f.type == m.HELLO and f.flags & fr.FLAG_REPLY:
                    p = self._pending.get(f.seq)
                    nonce = p.nonce if p is not None and p.type == m.HELLO else None
                f = self.auth.open(f, nonce)
                if f is None:
                    continue
            if f.flags & fr.FLAG_EVENT:
                self.counters["events"] += 1
                self._events.append(BoardFrame(f.type, f.seq, f.body, getattr(f, "proof", None)))
                continue
            if not f.flags & fr.FLAG_REPLY:
                self.counters["bad_frames"] += 1
                continue
            p = self._pending.get(f.seq)
            if p is None or p.type != f.type:
                self.counters["stale_replies"] += 1
                continue
            wire_time = self._wire_time(p)
            self._retire(p)
            rtt = None
            if p.tries == 1:
                rtt = now - p.sent_at
                if p.retry:
                    self._sample(rtt - wire_time)
            self.counters["replies"] += 1
            self._events.append(Reply(f.seq, f.type, f.body, rtt))
        self._pump(now)

    def _sample(self, rtt):
        """RFC 6298 §2."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + 4 * self.rttvar, self.rto_min), self.rto_max)

    # ---- output and timers --------------------------------------------------------------------
    def link_errors(self):
        """Frames from the board dropped: broken, or (authenticated link) not authentic."""
        return self.decoder.dropped() + (self.auth.dropped() if self.auth is not None else 0)

    def data_to_send(self):
        out = bytes(self._out)
        self._out = bytearray()
        return out

    def get_timer(self):
        t = None
        for q in self._queues():
            for p in q:
                if p.deadline is not None and (t is None or p.deadline < t):
                    t = p.deadline
        for p in self._pending.values():
            e = min(p.expires, p.deadline)
            if t is None or e < t:
                t = e
        if self._waiting_data and self.byte_time and self._data_fits(self._waiting_data[0]):
            e = self._line_free_at - self.line_ahead       # the line has room for it then
            if t is None or e < t:
                t = e
        return t

    def handle_timer(self, now):
        for q in self._queues():
            expired = [w for w in q if w.deadline is not None and now >= w.deadline]
            for p in expired:
                q.remove(p)
                self.counters["failed"] += 1
                self._events.append(RequestFailed(p.seq, p.type, "timeout (never sent: window full)"))
        for p in list(self._pending.values()):
            if now >= p.deadline:
                self._retire(p)
                self.counters["failed"] += 1
                if p.retry:          # a data request sent once is the data path's to count
                    log.debug("%s: %s seq %d got no reply after %d tries", self.name, m.NAMES.get(p.type, p.type),
                              p.seq, p.tries)
                self._events.append(RequestFailed(p.seq, p.type, "timeout"))
            elif now >= p.expires:
                self._transmit(p, now)
        self._pump(now)

    def next_event(self):
        return self._events.popleft() if self._events else None
