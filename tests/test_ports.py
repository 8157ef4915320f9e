"""The boards' link ports (firmware/ports/uart.py, spi_rp2.py) against stand-ins for MicroPython
1.27's rp2 and esp32 drivers, on CPython: the real `machine` and `rp2` modules exist on boards
only (the emulated RP2040 runs the real ones). Each stand-in keeps the one rule of its driver
that the port must respect, and fails the test when the port breaks it:
- rp2 UART readinto(buf, n) for more than any() bytes stalls 1-2 ms (timeout_char): refused;
- esp32 UART write() blocks until everything is in the TX ring (for ever while CTS is held):
  a write for more than the ring's free space, or while it is not empty, is refused;
- StateMachine.exec() of a string runs the Python assembler: refused, ints only.
"""
import sys
import types

import pytest


class Clock:
    def __init__(self):
        self.ms = 0

    def ticks_ms(self):
        return self.ms

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.ms += ms


class Uart:
    """A UART driver: RX bytes waiting, a TX ring of `txbuf` bytes that drains to `line` while
    CTS lets it."""

    def __init__(self, esp32, txbuf=4096):
        self.esp32, self.txbuf = esp32, txbuf
        self.rx = bytearray()
        self.ring = bytearray()
        self.line = bytearray()
        self.cts_held = False
        self.writes = []

    def any(self):
        return len(self.rx)

    def readinto(self, buf, n):
        assert n <= len(self.rx), "read for more than any(): the rp2 driver would wait timeout_char"
        buf[:n] = self.rx[:n]
        del self.rx[:n]
        return n

    def txdone(self):
        return not self.ring

    def write(self, buf, off, n):
        self.writes.append(n)
        free = self.txbuf - len(self.ring)
        if self.esp32:
            assert n <= free, "esp32 write() would block until the ring has room"
        k = min(n, free)
        self.ring += buf[off:off + k]
        return k or None

    def drain(self, n=1 << 30):
        if not self.cts_held:
            self.line += self.ring[:n]
            del self.ring[:n]


class Poll:
    def __init__(self):
        self.waits = []

    def register(self, obj, flags):
        pass

    def ipoll(self, ms):
        self.waits.append(ms)
        return iter(())


@pytest.fixture
def hw(monkeypatch):
    machine = types.ModuleType("machine")
    machine.Pin = lambda n, *a: n
    machine.mem32 = {}
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.delitem(sys.modules, "firmware.ports.uart", raising=False)
    monkeypatch.delitem(sys.modules, "firmware.ports.spi_rp2", raising=False)
    import importlib
    uart = importlib.import_module("firmware.ports.uart")
    clock = Clock()
    monkeypatch.setattr(uart, "time", clock)
    monkeypatch.setattr(uart.select, "poll", Poll)
    yield types.SimpleNamespace(uart=uart, clock=clock, machine=machine, monkeypatch=monkeypatch)
    for name in ("firmware.ports.uart", "firmware.ports.spi_rp2"):
        sys.modules.pop(name, None)


def port_for(hw, mcu, **link):
    cfg = {"mcu": mcu, "max_frame": 4096, "wdt_ms": 4000, "link": dict({"kind": "uart"}, **link)}
    dev = Uart(mcu == "esp32", link.get("txbuf", 4096))
    return hw.uart.UartPort(cfg, dev), dev


@pytest.mark.parametrize("mcu", ["rp2040", "esp32"])
def test_reads_ask_for_what_has_arrived_only(hw, mcu):
    port, dev = port_for(hw, mcu)
    buf = bytearray(1024)
    assert port.read_into(buf) == 0
    dev.rx += b"abc"
    assert port.read_into(buf) == 3 and buf[:3] == b"abc"
    dev.rx += bytes(3000)
    assert port.read_into(buf) == 1024 and len(dev.rx) == 3000 - 1024


@pytest.mark.parametrize("mcu", ["rp2040", "esp32"])
def test_frames_leave_in_order_and_whole_through_the_queue(hw, mcu):
    port, dev = port_for(hw, mcu, txbuf=512)
    sent = bytearray()
    for i in range(60):
        data = bytes([i]) * (100 + 37 * (i % 9))
        port.write(data)
        sent += data
        dev.drain(300)               # the line is slower than the writes
        port.read_into(bytearray(16))
    for _ in range(200):
        dev.drain()
        port.wait(50)
    assert dev.line == sent and port.pending() == 0
    assert port.counters == {"link_tx_dropped_bytes": 0, "link_tx_stalls": 0}
    if mcu == "esp32":
        assert max(dev.writes) <= 512


@pytest.mark.parametrize("mcu", ["rp2040", "esp32"])
def test_cts_held_longer_than_write_ms_drops_and_counts_instead_of_starving_the_watchdog(hw, mcu):
    port, dev = port_for(hw, mcu, txbuf=256)
    dev.cts_held = True
    port.write(b"x" * 1000)
    assert port.pending() == 1000 - 256
    steps = 0
    while port.pending():
        port.wait(50)                 # the main loop's idle wait, which also pushes
        hw.clock.ms += 2
        steps += 1
        assert steps < 1000
    assert hw.clock.ms <= port.write_ms + 10
    assert port.counters == {"link_tx_dropped_bytes": 1000 - 256, "link_tx_stalls": 1}
    dev.cts_held = False
    dev.drain()
    port.write(b"after")
    dev.drain()
    assert dev.line.endswith(b"after")


def test_a_write_beyond_the_queue_is_dropped_whole(hw):
    port, dev = port_for(hw, "esp32", txbuf=256)
    dev.cts_held = True
    port.write(b"a" * 4000)
    port.write(b"b" * 4000)
    port.write(b"c" * 1000)          # does not fit: dropped, nothing of it queued
    assert port.counters["link_tx_dropped_bytes"] == 1000
    dev.cts_held = False
    for _ in range(100):
        dev.drain()
        port.wait(1)
    assert dev.line == b"a" * 4000 + b"b" * 4000


def test_waiting_uses_ipoll_and_comes_back_soon_with_bytes_to_send(hw):
    port, dev = port_for(hw, "rp2040", txbuf=64)
    port.wait(50)
    dev.cts_held = True
    port.write(b"y" * 200)
    port.wait(50)
    assert port.poll.waits == [50, 2]


# ---- the PIO SPI peripheral -----------------------------------------------------------------------
class Sm:
    def __init__(self, *a, **kw):
        self.execs = []

    def exec(self, instr):
        assert isinstance(instr, int), "exec(%r): assembled in Python at every call" % (instr,)
        self.execs.append(instr)

    def active(self, *a):
        pass

    def restart(self):
        pass


class Dma:
    def __init__(self):
        self.count = 0
        self.busy = False

    def active(self, *a):
        if a:
            self.busy = bool(a[0])
        return self.busy

    def pack_ctrl(self, **kw):
        return 0

    def config(self, **kw):
        self.count = 0
        self.busy = False

    def close(self):
        pass


class Mem32(dict):
    """FDEBUG is write-1-to-clear."""

    def __missing__(self, addr):
        return 0

    def __setitem__(self, addr, value):
        if addr & 0xFFF == 0x008:
            value = self.get(addr, 0) & ~value
        dict.__setitem__(self, addr, value)


def _program(fn):
    """The instructions of an @rp2.asm_pio function, in order."""
    seq = []
    names = ("wait", "out", "set", "in_", "wrap_target", "wrap")
    g = fn.__globals__
    saved = {n: g.get(n) for n in ("pin", "pins") + names}
    g["pin"], g["pins"] = "pin", "pins"
    for n in names:
        g[n] = lambda *a, n=n: seq.append((n,) + a)
    try:
        fn()
    finally:
        for n, v in saved.items():
            if v is None:
                g.pop(n, None)
            else:
                g[n] = v
    return seq


@pytest.fixture
def spi_port(hw, monkeypatch):
    rp2 = types.ModuleType("rp2")
    rp2.PIO = types.SimpleNamespace(OUT_LOW=0, SHIFT_LEFT=0)
    rp2.asm_pio = lambda **kw: (lambda fn: fn)
    rp2.asm_pio_encode = lambda instr, sideset: {"set(pins, 1)": 0xE001, "set(pins, 0)": 0xE000}[instr]
    rp2.StateMachine = Sm
    rp2.DMA = Dma
    monkeypatch.setitem(sys.modules, "rp2", rp2)
    hw.machine.mem32 = Mem32()
    hw.machine.freq = lambda: 125_000_000
    hw.machine.Pin = type("Pin", (), {"IN": 0, "PULL_UP": 1, "__init__": lambda self, *a: None,
                                      "value": lambda self: 0})
    import importlib
    mod = importlib.import_module("firmware.ports.spi_rp2")
    cfg = {"max_frame": 4096, "spi": {"block_size": 512, "cs_pin": 2, "mosi_pin": 0, "sck_pin": 1,
                                      "miso_pin": 3, "data_ready_pin": 4}}
    return mod, mod.SpiPioPort(cfg), hw.machine.mem32


def test_miso_is_driven_before_cs_falls(spi_port):
    mod, port, mem = spi_port
    seq = _program(mod.spi_peripheral)
    cs_low = seq.index(("wait", 0, "pin", 2))
    assert ("out", "pins", 1) in seq[:cs_low], seq
    assert seq.index(("wrap_target",)) > cs_low


def test_data_ready_is_set_with_encoded_instructions(spi_port):
    mod, port, mem = spi_port
    port.write(b"hello")
    assert port.sm.execs and set(port.sm.execs) <= {0xE001, 0xE000}


def test_fifo_overruns_are_counted_from_fdebug_and_cleared(spi_port):
    mod, port, mem = spi_port
    fdebug = 0x50200000 + 0x008
    # the PIO sets TXSTALL (expected after every block) and RXSTALL for SM 0
    dict.__setitem__(mem, fdebug, 1 << 24 | 1)
    port.read_into(bytearray(64))             # the transaction is done: serviced, re-armed
    assert port.counters["spi_rx_overruns"] == 1 and mem[fdebug] == 1 << 24
    port.read_into(bytearray(64))
    assert port.counters["spi_rx_overruns"] == 1


def test_the_send_queue_is_capped(spi_port):
    mod, port, mem = spi_port
    cap = port.ep.max_queue
    assert 8192 <= cap <= 9000                # two of the largest frames, not 64 KB
    port.write(b"z" * (cap + 100))
    assert port.ep.queued() == cap and port.ep.counters["overflow_bytes"] == 100
