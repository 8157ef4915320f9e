"""iputils ping through a tunnel, counted per echo request.

Without a deadline, iputils ping exits max(2 x the slowest RTT, interval) after its last request,
so a single slow final reply (a scheduling hiccup on a loaded machine) reads as a lost packet. With
``-w`` it keeps probing until ``count`` replies came or the deadline passed; we then count which
of the requests 1..count were answered, so only a request really left unanswered for the whole
grace period counts as lost.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", re.M)


@dataclass
class PingResult:
    count: int                                  # echo requests that must be answered
    replies: dict = field(default_factory=dict)  # icmp_seq -> wall-clock time of its reply (ping -D)
    text: str = ""

    @property
    def lost(self) -> list[int]:
        return [s for s in range(1, self.count + 1) if s not in self.replies]

    @property
    def answered(self) -> int:
        return self.count - len(self.lost)

    @property
    def ok(self) -> bool:
        return not self.lost

    def summary(self) -> str:
        """ping's statistics, plus each unanswered request and when the reply before it came
        (time.time(), to lay beside other clocks' records in an assertion message)."""
        s = self.text[self.text.find("---"):] if "---" in self.text else self.text
        if self.lost:
            s += (f"unanswered icmp_seq {self.lost}; the reply before each came at "
                  f"{[self.replies.get(q - 1) for q in self.lost]} (time.time())\n")
        return s

    def __str__(self):
        return f"{self.answered}/{self.count} answered"


def command(ns: str, src: str, dst: str, count: int, interval: float, grace: float = 2.0) -> list[str]:
    deadline = int(count * interval + grace + 0.999)
    return ["ip", "netns", "exec", ns, "ping", "-n", "-D", "-c", str(count), "-i", str(interval),
            "-w", str(deadline), "-I", src, dst]


def parse(text: str, count: int) -> PingResult:
    return PingResult(count, {int(s): float(t) for t, s in _REPLY.findall(text)}, text)


async def start(ns, src, dst, count, interval=0.2, grace=2.0) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*command(ns, src, dst, count, interval, grace),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)


async def finish(proc, count) -> PingResult:
    out, _ = await proc.communicate()
    return parse(out.decode(), count)


async def ping(ns, src, dst, count=3, interval=0.2, grace=2.0) -> PingResult:
    return await finish(await start(ns, src, dst, count, interval, grace), count)
