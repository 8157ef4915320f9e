"""ICMP echo through a tunnel, counted per request: the demo's, the daemon tests' and the interop
tests' one traffic check.

A raw ICMP (or ICMPv6) socket opened inside a network namespace sends an echo request every
``interval`` seconds from ``src`` (None: the address the route to ``dst`` gives, as a program on
the router picks none) to ``dst`` and stamps every reply (time.monotonic()), matched by
identifier, sequence number and source address (two pingers in one process share the
identifier). Losses are
counted per request, so a reply that is merely slow is not a loss, as it is for iputils ping,
which stops waiting max(2 x slowest RTT, interval) after its last request.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

from testbed.netns import entered


def checksum(b: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``b``: an ICMP message's (RFC 792), an IPv4 header's."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger(threading.Thread):
    """Echo requests every ``interval`` seconds (``count`` of them, or until stop())."""

    def __init__(self, ns, src, dst, interval=0.02, count=None):
        super().__init__(daemon=True)
        self.dst, self.interval, self.count = dst, interval, count
        self.v6 = ":" in dst
        with entered(ns):
            if self.v6:
                self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            else:
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if src is not None:
            self.sock.bind((src, 0))
        self.sock.settimeout(0.005)
        self.icmp_id = os.getpid() & 0xFFFF
        self.sent = {}      # seq -> monotonic send time
        self.replies = {}   # seq -> monotonic reply time
        self.send_errors = {}   # seq -> why the kernel refused to send it
        self._halt = threading.Event()
        self.seq = 0
        self.stopped_at = None

    def run(self):
        next_at = time.monotonic()
        # ICMPv6 (RFC 4443): request 128, reply 129, the kernel fills in the checksum and hands a
        # raw socket the message without the IPv6 header; ICMP (RFC 792): 8 and 0, with the header
        request, reply = (128, 129) if self.v6 else (8, 0)
        dst = socket.inet_pton(socket.AF_INET6 if self.v6 else socket.AF_INET, self.dst)
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= next_at and (self.count is None or self.seq < self.count):
                self.seq = (self.seq + 1) & 0xFFFF
                body = struct.pack("!d", now) + b"ikeoffload-demo"
                hdr = struct.pack("!BBHHH", request, 0, 0, self.icmp_id, self.seq)
                csum = 0 if self.v6 else checksum(hdr + body)
                pkt = struct.pack("!BBHHH", request, 0, csum, self.icmp_id, self.seq) + body
                try:
                    self.sock.sendto(pkt, (self.dst, 0))
                except OSError as e:          # no route yet, say: counted as lost, the reason kept
                    self.send_errors[self.seq] = e.strerror or str(e)
                self.sent[self.seq] = now
                next_at += self.interval
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:             # socket.timeout included: nothing arrived in 5 ms
                continue
            off = 0 if self.v6 else (data[0] & 0x0F) * 4
            if len(data) < off + 8:
                continue
            typ, _, _, ident, seq = struct.unpack("!BBHHH", data[off:off + 8])
            frm = socket.inet_pton(socket.AF_INET6 if self.v6 else socket.AF_INET, addr[0].split("%")[0])
            if typ == reply and ident == self.icmp_id and frm == dst and seq in self.sent:
                self.replies.setdefault(seq, time.monotonic())

    def stop(self):
        self.stopped_at = time.monotonic()
        self._halt.set()
        self.join(2)
        self.sock.close()

    def first_reply_sent_after(self, t):
        """(send time, reply time) of the first echo sent after t that was answered."""
        best = None
        for seq, at in self.replies.items():
            st = self.sent.get(seq)
            if st is not None and st > t and (best is None or st < best[0]):
                best = (st, at)
        return best

    def lost_between(self, t0, t1):
        return sum(1 for seq, st in self.sent.items() if t0 < st < t1 and seq not in self.replies)

    def lost_before_stop(self, settle=0.5):
        """Echoes never answered, among those sent at least ``settle`` seconds before stop() (the
        later ones may have been on their way back when the pinger stopped listening)."""
        return self.lost_between(0, self.stopped_at - settle)

    # ---- a counted run, for the interop tests --------------------------------------------------
    @property
    def lost(self) -> list[int]:
        return [s for s in sorted(self.sent) if s not in self.replies]

    @property
    def ok(self) -> bool:
        return bool(self.sent) and not self.lost

    def summary(self) -> str:
        """For an assertion message: each unanswered request, when it was sent and when the reply
        before it came (time.monotonic())."""
        s = f"{len(self.replies)} of {len(self.sent)} echo requests to {self.dst} answered\n"
        for q in self.lost:
            s += f"  icmp_seq {q} sent at {self.sent[q]:.6f}, unanswered; the reply before it at " \
                 f"{self.replies.get(q - 1)}" + (f" (not sent: {self.send_errors[q]})" if q in self.send_errors
                                                  else "") + "\n"
        return s

    def __str__(self):
        return f"{len(self.replies)}/{len(self.sent)} answered"


def start(ns, src, dst, count, interval=0.2) -> Pinger:
    p = Pinger(ns, src, dst, interval, count)
    p.start()
    return p


async def finish(p: Pinger, grace=2.0) -> Pinger:
    """Wait until all ``count`` requests are sent and answered, at most ``grace`` seconds past
    the last one; then stop the pinger and return it (``ok``, ``lost``, ``summary()``)."""
    while len(p.sent) < p.count or (len(p.replies) < p.count and time.monotonic() < p.sent[p.count] + grace):
        await asyncio.sleep(0.01)
    p.stop()
    return p


async def ping(ns, src, dst, count=3, interval=0.2, grace=2.0) -> Pinger:
    return await finish(start(ns, src, dst, count, interval), grace)
