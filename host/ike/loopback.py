"""Test helpers: auto-accept Child SA installs, and wire engines together in memory.

Only for tests and benchmarks of the engine itself; the daemon answers ChildSaInstall from the
offload board.
"""
from __future__ import annotations

from .events import ChildSaInstall


def drain(engine, now: float, accept: bool | None = True, reason: str | None = None) -> list:
    """Pop all pending events. Every ChildSaInstall is answered at once with ``accept`` (and
    ``reason``), unless ``accept`` is None (left for the caller). Returns the events seen."""
    seen = []
    while True:
        ev = engine.next_event()
        if ev is None:
            return seen
        seen.append(ev)
        if accept is not None and isinstance(ev, ChildSaInstall):
            engine.child_sa_installed(ev.handle, accept, now, None if accept else reason)


class Network:
    """Engines reachable by IP address; datagrams are delivered in order, optionally dropped by
    ``loss(datagram) -> bool``. ``events[ip]`` collects each engine's events (installs are
    auto-accepted per ``accept[ip]``)."""

    def __init__(self):
        self.engines = {}
        self.events = {}
        self.accept = {}
        self.loss = None
        self.delivered = 0
        self.keepalives = []        # (time, sender ip, Datagram) of every NAT-keepalive sent

    def add(self, ip: str, engine, accept=True):
        self.engines[ip] = engine
        self.events[ip] = []
        self.accept[ip] = accept

    def pump(self, now: float, rounds: int = 50) -> int:
        """Move datagrams until nothing is in flight. Returns the datagrams delivered."""
        n = 0
        for _ in range(rounds):
            moved = False
            for ip, eng in self.engines.items():
                self.events[ip] += drain(eng, now, self.accept[ip])
                for d in eng.datagrams_to_send(now):
                    if d.keepalive:             # a NAT-keepalive: no IKE message, nothing to deliver
                        self.keepalives.append((now, ip, d))
                        continue
                    if self.loss is not None and self.loss(d):
                        continue
                    dst = self.engines.get(d.remote[0])
                    if dst is None:
                        continue
                    dst.receive_datagram(d.data, (ip, d.local[1]), now, d.remote)
                    moved = True
                    n += 1
            if not moved:
                for ip, eng in self.engines.items():
                    self.events[ip] += drain(eng, now, self.accept[ip])
                break
        self.delivered += n
        return n

    def run_timers(self, now: float):
        for eng in self.engines.values():
            t = eng.get_timer()
            if t is not None and t <= now:
                eng.handle_timer(now)
