"""Sans-I/O link client: requests with sequence numbers, retries, RTT-based timeouts.

Verbs in the aioquic style: request(), receive(data, now), data_to_send(), get_timer(),
handle_timer(now), next_event(). Times are seconds (time.monotonic()).

Retries reuse the request's seq and bytes, so the board's reply cache answers a retried
SA_ADD without applying it twice. The retry timeout follows RFC 6298 (SRTT + 4·RTTVAR, Karn's
rule: no samples from retransmitted requests) plus the wire time of the bytes ahead on a slow
UART, and backs off exponentially. A cached request is only sent while the oldest unanswered
cached request is fewer than `cache_size` cached requests back, so its reply cannot have
been evicted from the board's cache when it is retried.
"""
import collections
import os

from firmware.link import frame as fr
from host.offload.events import BoardFrame, Reply, RequestFailed


class _Pending:
    __slots__ = ("seq", "type", "wire", "retry", "cached", "index", "first_sent", "sent_at",
                 "tries", "expires", "deadline", "reply_len")

    def __init__(self, seq, type, wire, retry, cached, index, deadline, reply_len):
        self.seq = seq
        self.type = type
        self.wire = wire
        self.retry = retry
        self.cached = cached
        self.index = index
        self.deadline = deadline
        self.reply_len = reply_len
        self.first_sent = None
        self.sent_at = None
        self.tries = 0
        self.expires = None


class LinkClient:
    def __init__(self, *, window=8, data_window=16, cache_size=1, rto_initial=0.2, rto_min=0.005,
                 rto_max=0.2, give_up=3.0, byte_time=0.0, max_frame=fr.DEFAULT_MAX_FRAME):
        """byte_time: seconds per byte on the wire (10/baud for a UART, 0 for a pty)."""
        self.window = window
        self.data_window = data_window
        self.cache_size = cache_size
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.give_up = give_up
        self.byte_time = byte_time
        self.decoder = fr.FrameDecoder(max_frame)
        self.srtt = None
        self.rttvar = None
        self.rto = rto_initial
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._cached_index = 0
        self._pending = collections.OrderedDict()  # seq -> _Pending, in send order
        self._waiting = collections.deque()        # not yet sent (window full)
        self._out = bytearray()
        self._events = collections.deque()
        self.counters = collections.Counter()

    # ---- requests ---------------------------------------------------------------------------
    def request(self, type, body, now, *, retry=True, idempotent=False, deadline=None, reply_len=16):
        """Queue a request; returns its seq. Its outcome arrives as Reply or RequestFailed.

        retry=False: sent once (data path). idempotent=True: may be retried but the board need
        not cache the reply (re-executing it is harmless and gives fresher state).
        deadline: absolute time after which it fails (default now + give_up).
        """
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        cached = retry and not idempotent
        flags = 0 if cached else fr.FLAG_NOCACHE
        wire = fr.encode(type, seq, flags, body)
        index = None
        if cached:
            self._cached_index += 1
            index = self._cached_index
        # Without an explicit deadline a request may wait for the window, then has `give_up`
        # seconds from its first transmission (an unresponsive board, not a busy queue).
        p = _Pending(seq, type, wire, retry, cached, index, deadline, reply_len)
        self._waiting.append(p)
        self._pump(now)
        return seq

    def set_max_frame(self, max_frame):
        """The board's frame limit from its HELLO: longer replies are legitimate."""
        self.decoder.set_max_frame(max_frame)

    def cancel(self, seq):
        """Forget a request (its reply, if any, will be counted as stale)."""
        p = self._pending.pop(seq, None)
        if p is None:
            for w in self._waiting:
                if w.seq == seq:
                    self._waiting.remove(w)
                    break

    def fail_all(self, reason, now):
        """Fail every request in flight or waiting (the board was lost: nothing is acknowledged)."""
        for p in list(self._pending.values()) + list(self._waiting):
            self._events.append(RequestFailed(p.seq, p.type, reason))
        self._pending.clear()
        self._waiting.clear()

    def in_flight(self):
        return len(self._pending) + len(self._waiting)

    def _pump(self, now):
        """Send what the windows allow. Cached requests leave in order; idempotent and data
        requests never wait behind them (a heartbeat must not queue behind SA commands)."""
        cached_blocked = False
        cached_n = sum(1 for q in self._pending.values() if q.cached)
        data_n = sum(1 for q in self._pending.values() if not q.retry)
        oldest = next((q.index for q in self._pending.values() if q.cached), None)
        for p in list(self._waiting):
            if p.cached:
                if cached_blocked or cached_n >= self.window or (
                        oldest is not None and p.index - oldest >= self.cache_size):
                    cached_blocked = True
                    continue
                cached_n += 1
                if oldest is None:
                    oldest = p.index
            elif not p.retry:
                if data_n >= self.data_window:
                    continue
                data_n += 1
            self._waiting.remove(p)
            self._pending[p.seq] = p
            self._transmit(p, now)

    def _wire_time(self, p):
        if not self.byte_time:
            return 0.0
        ahead = sum(len(q.wire) + q.reply_len for q in self._pending.values())
        return (ahead + len(p.wire) + p.reply_len) * self.byte_time

    def _transmit(self, p, now):
        if p.first_sent is None:
            p.first_sent = now
            if p.deadline is None:
                p.deadline = now + self.give_up
        else:
            self.counters["retries"] += 1
        p.sent_at = now
        if p.cached:
            # Back off, but only to 4 x RTO: on a point-to-point link loss is noise, not
            # congestion, and the board answers retries from its cache at no cost.
            p.expires = now + min(self.rto * (1 << min(p.tries, 2)), self.rto_max) + self._wire_time(p)
        elif p.retry:
            # idempotent requests (heartbeats) live within a deadline of one period: retry at
            # the RTO without backoff so that a lossy line does not turn into missed periods
            p.expires = now + self.rto + self._wire_time(p)
        else:
            p.expires = p.deadline  # sent once: it waits for its reply until the deadline
        p.tries += 1
        self._out += p.wire
        self.counters["sent"] += 1

    # ---- input ------------------------------------------------------------------------------
    def receive(self, data, now):
        for f in self.decoder.feed(data):
            if f.flags & fr.FLAG_EVENT:
                self.counters["events"] += 1
                self._events.append(BoardFrame(f.type, f.seq, f.body))
                continue
            if not f.flags & fr.FLAG_REPLY:
                self.counters["bad_frames"] += 1
                continue
            p = self._pending.get(f.seq)
            if p is None or p.type != f.type:
                self.counters["stale_replies"] += 1
                continue
            del self._pending[f.seq]
            rtt = None
            if p.tries == 1:
                rtt = now - p.sent_at
                if p.cached or p.retry:
                    self._sample(rtt - self._wire_time(p))
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
    def data_to_send(self):
        out = bytes(self._out)
        self._out = bytearray()
        return out

    def get_timer(self):
        t = None
        for p in self._waiting:
            if p.deadline is not None and (t is None or p.deadline < t):
                t = p.deadline
        for p in self._pending.values():
            e = min(p.expires, p.deadline)
            if t is None or e < t:
                t = e
        return t

    def handle_timer(self, now):
        for p in [w for w in self._waiting if w.deadline is not None and now >= w.deadline]:
            self._waiting.remove(p)
            self.counters["failed"] += 1
            self._events.append(RequestFailed(p.seq, p.type, "timeout (never sent: window full)"))
        for p in list(self._pending.values()):
            if now >= p.deadline:
                del self._pending[p.seq]
                self.counters["failed"] += 1
                self._events.append(RequestFailed(p.seq, p.type, "timeout"))
            elif now >= p.expires:
                self._transmit(p, now)
        self._pump(now)

    def next_event(self):
        return self._events.popleft() if self._events else None
