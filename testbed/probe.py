"""ICMP echo through every tunnel of a hub: the scale testbed's traffic check.

One raw ICMP socket, opened inside a network namespace, probes tunnel ``i`` with echo requests
from ``pairs[i][0]`` to ``pairs[i][1]`` (the source address chosen per packet with IP_PKTINFO, so
hundreds of tunnels need one socket and one thread) and stamps every reply (time.monotonic()),
matched by identifier, sequence number and the replying address. A tunnel is probed every
``interval`` seconds, or every ``fast`` seconds while it is *watched*: from ``watch(tunnels, t)``
until the first reply to an echo sent after ``t`` — so the moment a tunnel passes traffic again
after a board reset is known to ``fast`` seconds while the others are checked at a gentle rate,
every echo counted (a reply that is merely slow is not a loss).
"""
from __future__ import annotations

import heapq
import os
import select
import socket
import struct
import threading
import time

from testbed.netns import entered
from testbed.ping import checksum

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


class TunnelProbe(threading.Thread):
    def __init__(self, ns: str, pairs, interval: float = 0.5, fast: float = 0.1):
        super().__init__(daemon=True)
        self.pairs = [(socket.inet_aton(s), d) for s, d in pairs]
        self.interval, self.fast = interval, fast
        self.by_dst = {socket.inet_aton(d): i for i, (_, d) in enumerate(pairs)}
        if len(self.by_dst) != len(pairs):
            raise ValueError("each tunnel needs its own destination address")
        with entered(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.icmp_id = (os.getpid() ^ 0x5A5A) & 0xFFFF
        n = len(pairs)
        self.sent = [dict() for _ in range(n)]         # tunnel -> {seq: send time}
        self.replies = [dict() for _ in range(n)]      # tunnel -> {seq: reply time}
        self.seq = [0] * n
        self.watch_from = [None] * n                   # watched since (None: not watched)
        self.watched = [None] * n                      # the last watch's start ...
        self.answered = [None] * n                     # ... and the reply that ended it
        self.send_errors = 0
        self.errors = []                               # (time, tunnel, errno) of the last failed sends
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._gen = [0] * n                            # only a tunnel's newest entry in _due counts
        self._due = [(time.monotonic() + i * interval / max(n, 1), i, 0) for i in range(n)]
        heapq.heapify(self._due)

    # ---- control -------------------------------------------------------------------------------
    def watch(self, tunnels, t: float | None = None):
        """Probe ``tunnels`` every ``fast`` seconds until each answers an echo sent after ``t``."""
        t = time.monotonic() if t is None else t
        with self._lock:
            for i in tunnels:
                self.watch_from[i] = self.watched[i] = t
                self.answered[i] = None
                self._push(i, t)

    def _push(self, i, t):
        self._gen[i] += 1
        heapq.heappush(self._due, (t, i, self._gen[i]))

    def stop(self):
        self._halt.set()
        self.join(5)
        self.sock.close()

    # ---- the loop --------------------------------------------------------------------------------
    def run(self):
        while not self._halt.is_set():
            now = time.monotonic()
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    _, i, gen = heapq.heappop(self._due)
                    if gen != self._gen[i]:
                        continue                # replaced by a newer entry (watch())
                    self._send(i, now)
                    self._push(i, now + (self.fast if self.watch_from[i] is not None else self.interval))
                wait = max(0.0, min(self._due[0][0] - time.monotonic(), 0.05)) if self._due else 0.05
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                self._receive()

    def _send(self, i, now):
        src, dst = self.pairs[i]
        seq = self.seq[i] = (self.seq[i] + 1) & 0xFFFF
        body = struct.pack("!Hd", i & 0xFFFF, now) + b"ikeoffload-scale"
        hdr = struct.pack("!BBHHH", 8, 0, 0, self.icmp_id, seq)
        pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + body), self.icmp_id, seq) + body
        try:
            self.sock.sendmsg([pkt], [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("@I4s4s", 0, src, b"\0" * 4))],
                              0, (dst, 0))
        except OSError as e:
            self.send_errors += 1
            self.errors.append((now, i, e.errno))
            del self.errors[:-1000]
        self.sent[i][seq] = now

    def _receive(self):
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            typ, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            i = self.by_dst.get(data[12:16])
            if typ != 0 or ident != self.icmp_id or i is None:
                continue
            with self._lock:
                st = self.sent[i].get(seq)
                if st is None or seq in self.replies[i]:
                    continue
                self.replies[i][seq] = now
                w = self.watch_from[i]
                if w is not None and st >= w:
                    self.watch_from[i] = None       # answered: back to the gentle rate
                    self.answered[i] = now

    # ---- results -----------------------------------------------------------------------------------
    def first_reply_after(self, i: int, t: float):
        """(send time, reply time) of the first echo on tunnel i sent after ``t`` that was answered."""
        with self._lock:
            best = None
            for seq, at in self.replies[i].items():
                st = self.sent[i].get(seq)
                if st is not None and st > t and (best is None or st < best[0]):
                    best = (st, at)
            return best

    def up_after(self, tunnels, t: float) -> dict:
        """tunnel -> reply time of its first echo sent after ``t`` that was answered (answered ones
        only); for tunnels watched from ``t`` without looking at every echo."""
        out = {}
        for i in tunnels:
            if self.watched[i] == t:
                if self.answered[i] is not None:
                    out[i] = self.answered[i]
                continue
            r = self.first_reply_after(i, t)
            if r is not None:
                out[i] = r[1]
        return out

    def lost(self, tunnels, t0: float, t1: float) -> int:
        """Echoes on ``tunnels`` sent in (t0, t1) and never answered."""
        with self._lock:
            return sum(1 for i in tunnels for seq, st in self.sent[i].items()
                       if t0 < st < t1 and seq not in self.replies[i])

    def sent_between(self, tunnels, t0: float, t1: float) -> int:
        with self._lock:
            return sum(1 for i in tunnels for st in self.sent[i].values() if t0 < st < t1)
