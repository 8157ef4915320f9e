"""An in-process wire between a host BoardSession and a real board core, on a virtual clock.

Both ends are the real sans-I/O cores; only the wire is simulated: latency, a byte rate, and
byte faults (each byte dropped or flipped with probability `fault`, both directions), so that
thousands of requests and heartbeats run in seconds and deterministically (seeded). With
`link_key` the link is authenticated (firmware/link/auth.py); `sniffed` keeps every byte put on
the wire each way, `inject()` puts an attacker's bytes on it. On an open link `rewrite` (a
function of a frame the board sent, returning the frame to deliver instead, or None to lose it)
stands in for a board that answers wrongly: another firmware's HELLO, a reply that does not
decode.
"""
import heapq
import random

from firmware import board as bd
from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.events import BoardLost
from host.offload.link import LinkClient
from host.offload.session import BoardSession


class Wire:
    def __init__(self, profile=None, *, period=0.1, misses=3, fault=0.0, seed=1, latency=0.0002,
                 byte_time=0.0, link=None, flush_on_open=True, link_key=None):
        self.now = 0.0
        self.rng = random.Random(seed)
        self.fault = fault
        self.latency = latency
        self.byte_time = byte_time
        self.profile = dict(profile or {})
        if link_key:
            self.profile["link_key"] = link_key
        self.sniffed = {"to_board": bytearray(), "to_host": bytearray()}
        self.board = self.new_board()
        self.board_hung = False
        self.host_muted = False   # host bytes never reach the board (cable pulled one way)
        self.queue = []           # (arrival, n, direction, bytes)
        self.rewrite = None       # frame -> frame or None, on what the board sends (open link only)
        self._board_frames = fr.FrameDecoder(1 << 16)
        self._n = 0
        self.link_free = {"to_board": 0.0, "to_host": 0.0}
        self.session = BoardSession("b0", self.now, period=period, misses=misses,
                                    flush_on_open=flush_on_open,
                                    link=link or LinkClient(byte_time=byte_time, link_key=link_key))
        self.events = []
        self._push("to_host", self.board.tick(self._ms()))
        self.pump()

    def _ms(self):
        return int(self.now * 1000)

    def new_board(self, cause=m.RESET_POWER_ON):
        return bd.Board(self.profile, self._ms() if hasattr(self, "now") else 0,
                        random_bytes=lambda n: bytes(self.rng.getrandbits(8) for _ in range(n)),
                        reset_cause=cause)

    def corrupt(self, data):
        if not self.fault:
            return data
        out = bytearray()
        rnd = self.rng.random
        for b in data:
            r = rnd()
            if r < self.fault / 2:
                continue                                  # dropped
            if r < self.fault:
                b ^= self.rng.randrange(1, 256)           # flipped
            out.append(b)
        return bytes(out)

    def _push(self, direction, data):
        if not data:
            return
        if direction == "to_host" and self.rewrite is not None:
            frames = [self.rewrite(f) for f in self._board_frames.feed(data)]
            data = b"".join(fr.encode(f.type, f.seq, f.flags, f.body) for f in frames if f is not None)
            if not data:
                return
        self.sniffed[direction] += data
        data = self.corrupt(data)
        start = max(self.now, self.link_free[direction])
        done = start + len(data) * self.byte_time
        self.link_free[direction] = done
        self._n += 1
        heapq.heappush(self.queue, (done + self.latency, self._n, direction, data))

    def pump(self):
        """Move what the session wants to send onto the wire and collect its events."""
        self._push("to_board", self.session.data_to_send())
        while True:
            ev = self.session.next_event()
            if ev is None:
                break
            self.events.append(ev)

    def inject(self, direction, data):
        """An attacker's bytes on the wire ("to_board" or "to_host"), delivered next step."""
        self._n += 1
        heapq.heappush(self.queue, (self.now, self._n, direction, bytes(data)))

    def reset_board(self, quiet=False, cause=m.RESET_SIM):
        self.board = self.new_board(cause)
        hello = self.board.tick(self._ms())
        self.board_hung = False
        if not quiet:
            self._push("to_host", hello)

    def step(self, until):
        """Advance to the next thing that happens (at most `until`)."""
        times = [until]
        if self.queue:
            times.append(self.queue[0][0])
        t = self.session.get_timer()
        if t is not None:
            times.append(t)
        d = None if self.board_hung else self.board.next_deadline()
        times.append(self.now + 0.01 if d is None else min(self.now + 0.01, d / 1000))
        self.now = max(self.now, min(times))
        while self.queue and self.queue[0][0] <= self.now:
            _, _, direction, data = heapq.heappop(self.queue)
            if direction == "to_board":
                if not self.board_hung and not self.host_muted:
                    self._push("to_host", self.board.feed(data, self._ms()))
            else:
                self.session.receive(data, self.now)
        if not self.board_hung:
            self._push("to_host", self.board.tick(self._ms()))
        t = self.session.get_timer()
        if t is not None and t <= self.now:
            self.session.handle_timer(self.now)
        self.pump()

    def run(self, seconds):
        end = self.now + seconds
        while self.now < end:
            self.step(end)

    def run_until(self, cond, timeout=10.0):
        end = self.now + timeout
        while not cond():
            if self.now >= end:
                raise TimeoutError("condition not met in %.1f virtual seconds" % timeout)
            self.step(end)

    def call(self, start, timeout=10.0):
        """Start a request (a function of now returning its seq) and run until its outcome."""
        seq = start(self.now)
        self.pump()
        found = []

        def done():
            for ev in self.events:
                if getattr(ev, "seq", None) == seq and not isinstance(ev, BoardLost):
                    found.append(ev)
                    return True
            return False
        self.run_until(done, timeout)
        self.events.remove(found[0])
        return found[0]

    def lost(self):
        return [e for e in self.events if isinstance(e, BoardLost)]
