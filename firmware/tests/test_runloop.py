"""The board's main loop (firmware/runloop.py) with a scripted port and clock, on both runtimes."""
from firmware import runloop
from firmware.board import Board
from firmware.link import frame as fr
from firmware.link import messages as m


class FakeClock:
    def __init__(self):
        self.ms = 1000

    def __call__(self):
        return self.ms


class FakePort:
    """Hands out scripted input chunks; wait() advances the fake clock like a sleep."""

    def __init__(self, clock, chunks):
        self.clock = clock
        self.chunks = list(chunks)
        self.out = bytearray()
        self.waits = []
        self.flushed = 0

    def read_into(self, buf):
        if not self.chunks:
            return 0
        data = self.chunks.pop(0)
        buf[:len(data)] = data
        return len(data)

    def write(self, data):
        self.out += data

    def wait(self, ms):
        self.waits.append(ms)
        self.clock.ms += ms

    def flush(self):
        self.flushed += 1

    def close(self):
        pass


def frames(data):
    return fr.FrameDecoder(65535).feed(data)


def test_requests_are_answered_and_the_boot_hello_goes_first():
    clock = FakeClock()
    hello_req = fr.encode(m.HELLO, 1, 0, m.encode_hello_request(b"S" * 8))
    hb = fr.encode(m.HEARTBEAT, 2, fr.FLAG_NOCACHE, b"")
    port = FakePort(clock, [hello_req[:7], hello_req[7:] + hb])
    board = Board({"board_id": "t", "host_silence_ms": 0}, clock(), random_bytes=lambda n: b"\x01" * n)
    feeds = []
    assert runloop.run(board, port, lambda: feeds.append(1), clock, steps=6) is None
    got = frames(bytes(port.out))
    kinds = [(f.type, f.seq, f.flags & (fr.FLAG_REPLY | fr.FLAG_EVENT)) for f in got]
    assert kinds == [(m.HELLO, 1, fr.FLAG_EVENT), (m.HELLO, 1, fr.FLAG_REPLY),
                     (m.HEARTBEAT, 2, fr.FLAG_REPLY)], kinds
    assert len(feeds) == 6, feeds          # the watchdog is fed on every turn of the loop
    assert port.waits and max(port.waits) <= runloop.IDLE_MS, port.waits


def test_reset_request_flushes_the_reply_then_returns():
    clock = FakeClock()
    port = FakePort(clock, [fr.encode(m.RESET, 9, 0, b"")])
    board = Board({"board_id": "t"}, clock(), random_bytes=lambda n: b"\x02" * n)
    assert runloop.run(board, port, lambda: None, clock, steps=50) == "reset"
    assert port.flushed == 1
    replies = [f for f in frames(bytes(port.out)) if f.flags & fr.FLAG_REPLY]
    assert [(f.type, f.seq, f.body) for f in replies] == [(m.RESET, 9, bytes((m.OK,)))], replies


def test_idle_loop_sleeps_until_the_board_has_work():
    """With SAs installed and the host silent, the loop sleeps in port.wait() up to the board's
    host-silence deadline and then fails closed (FLUSHED event) -- no busy polling."""
    clock = FakeClock()
    spec = m.SaSpec(0x1234, m.DIR_IN, m.ENCR_AES_GCM_16, b"k" * 20)
    port = FakePort(clock, [fr.encode(m.SA_ADD, 3, 0, spec.encode())])
    board = Board({"board_id": "t", "host_silence_ms": 300}, clock(), random_bytes=lambda n: b"\x03" * n)
    runloop.run(board, port, lambda: None, clock, idle_ms=100, steps=12)
    types = [f.type for f in frames(bytes(port.out))]
    assert m.EV_FLUSHED in types, types
    assert sum(port.waits) >= 300 and all(w <= 100 for w in port.waits), port.waits


def test_clock_does_not_wrap():
    ticks = [0]
    period = 1 << 30

    def ticks_ms():
        return ticks[0] % period

    def ticks_diff(a, b):
        d = (a - b) % period
        return d - period if d >= period // 2 else d

    c = runloop.Clock(ticks_ms, ticks_diff)
    total = 0
    for _ in range(10):
        ticks[0] += 300000000
        total += 300000000
        assert c() == total, (c.ms, total)
