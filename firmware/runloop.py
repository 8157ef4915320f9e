"""The board's main loop: a port, the sans-I/O board core, the watchdog, and a clock.

A tight loop, not asyncio: on the wasm MicroPython it moves a request through the board core in
less time than asyncio does (bench/mpy_loop.py measures both), the firmware has one job, and a
tight loop keeps the watchdog honest (a stuck step stops the feeding). The loop sleeps in the
port's wait() only while the board has nothing due (board.next_deadline()).

Control before data: everything waiting on the port is read and fed first — heartbeats and SA
commands are answered at once, ENCRYPT/DECRYPT requests only queued — and the board then works
on one data packet per turn (one slice of a packet for a transform the board works on in slices,
firmware/crypto/chachapoly.py), looking at the port again after each. A heartbeat therefore waits
for at most one packet's crypto (or one slice), however much data the host has in flight. A port that can tell
when its transmitter is idle (tx_ready()) gets data replies one frame at a time, so a control
reply, or a small data reply, never queues behind more than the frame on the line.

Nothing of a frame's size is allocated per frame but a reply's body (Board.preallocate()): frames
are decoded into the board's buffers and handed on as memoryviews, a data reply is sealed, CRC'd
and COBS-encoded into one buffer, and port.write() copies it from there (into its TX queue).
"""
import time

IDLE_MS = 50       # longest sleep in port.wait(): bounds the WDT feed interval and timer lag
BUF = 1024         # bytes read from the port per step


class Clock:
    """Milliseconds since start, monotonic and without wrap (time.ticks_ms wraps after 2^30 ms
    on MicroPython; the board core subtracts times, so it needs an unwrapped clock)."""

    def __init__(self, ticks_ms=None, ticks_diff=None):
        self.ticks_ms = ticks_ms or time.ticks_ms
        self.ticks_diff = ticks_diff or time.ticks_diff
        self.last = self.ticks_ms()
        self.ms = 0

    def __call__(self):
        t = self.ticks_ms()
        self.ms += self.ticks_diff(t, self.last)
        self.last = t
        return self.ms


def _always():
    return True


def run(board, port, feed, clock, idle_ms=IDLE_MS, steps=None):
    """Serve the link until the host asks for a reset (returns "reset") or `steps` loop turns
    ran (tests; returns None). The reply to RESET is flushed out of the port first."""
    buf = bytearray(BUF)
    mv = memoryview(buf)
    board.work_budget = 0              # feed() answers control; data waits for work()
    board.preallocate()                # frames decoded and data replies sealed in buffers made once
    tx_ready = getattr(port, "tx_ready", None) or _always
    board.hold_data = True             # data replies leave through next_data(): the port copies each
    while steps is None or steps > 0:
        if steps is not None:
            steps -= 1
        feed()
        n = port.read_into(buf)
        now = clock()
        if n:
            out = board.feed(mv[:n], now)
        elif board.busy():
            out = board.work(now, 1)   # one packet (or slice), then look at the port again
        else:
            out = board.tick(now)
        if out:
            port.write(out)
        while board.data_out and tx_ready():
            wire = board.next_data()
            if wire:
                port.write(wire)
        if board.reset_requested:
            port.flush()
            return "reset"
        if n or board.busy():
            continue                   # more may be waiting: read again before sleeping
        d = board.next_deadline()
        wait = idle_ms if d is None else min(idle_ms, max(0, d - now))
        if board.data_out:
            wait = min(wait, 1)        # a reply waits for the transmitter: look again soon
        if wait:
            port.wait(wait)
    return None
