"""An emulated SPI peripheral board: the transaction contract of firmware/ports/spi_rp2.py (the
RP2040 PIO program with its DMA and data-ready line) with the real board core behind it.

It is a peer of the protocol, not a mock of pyftdi: the host's SpiTransport talks to it through
a `bus` object exactly as it talks to PyftdiBus, and the peripheral does what the PIO port does:

- a transaction moves exactly the armed block out and the host's block in (a different length
  is a broken transaction: whatever arrived is handed to the endpoint, which drops it by CRC);
- the PIO program drops data-ready as CS falls; the port re-arms (next block into the TX DMA)
  only after it has processed the received block and fed the board core, which takes
  `process_s`; a transaction before that reads an idle line (0x00) and its MOSI block is lost;
- after re-arming, data-ready goes high if the endpoint has anything to send; the board core's
  timers (heartbeat-less host silence, events) run from a ticker as the main loop's would.

Faults for the tests: bit flips in MOSI and MISO blocks (CRC errors), data-ready glitches
(spurious highs, missed highs, stuck low), a slow board, and a board reset (new epoch, new boot).
"""
import random
import threading
import time

from firmware.board import Board
from firmware.link import messages as m
from firmware.link import spi as spilink


def now_ms():
    return int(time.monotonic() * 1000)


class EmulatedPeripheral:
    def __init__(self, profile, block_size, process_s=0.0002, seed=1):
        self.profile = profile
        self.size = spilink.check_size(block_size)
        self.process_s = process_s
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.resets = 0
        self.transactions = 0
        self.idle_answers = 0
        self._boot(m.RESET_POWER_ON)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, daemon=True)
        self._ticker.start()

    def _boot(self, cause):
        self.board = Board(self.profile, now_ms(), reset_cause=cause)
        self.ep = spilink.Endpoint(self.size, True, self.rng.randrange(1, 0x10000))
        self.ep.send(self.board.tick(now_ms()))        # the boot HELLO
        self.armed = None
        self.rearm_at = 0.0
        self.dr = False
        self._arm()

    def _arm(self):
        self.armed = self.ep.next_block()
        self.dr = self.ep.pending()

    def _maybe_arm(self):
        if self.armed is None and time.monotonic() >= self.rearm_at:
            self._arm()

    # ---- what the bus sees --------------------------------------------------------------------
    def transaction(self, mosi):
        with self.lock:
            self.transactions += 1
            self._maybe_arm()
            if self.armed is None:
                self.idle_answers += 1
                return bytes(len(mosi))          # not armed: an idle line, MOSI lost
            miso = self.armed
            self.armed = None
            self.dr = False                      # the PIO program drops data-ready at CS
            if len(mosi) != self.size:
                mosi = bytes(mosi[:self.size]).ljust(self.size, b"\xff")
            got = self.ep.on_block(mosi)
            if got:
                out = self.board.feed(got, now_ms())
                self.ep.send(out)
                if self.board.reset_requested:   # the reply goes out, then the board resets
                    self._reset_after_flush = True
            self.rearm_at = time.monotonic() + self.process_s
            if miso is not None and len(miso) != len(mosi):
                miso = bytes(miso[:len(mosi)]).ljust(len(mosi), b"\x00")
            return bytes(miso)

    def data_ready(self):
        with self.lock:
            self._maybe_arm()
            return self.dr

    # ---- board life ---------------------------------------------------------------------------
    _reset_after_flush = False

    def reset(self, cause=m.RESET_HARD):
        with self.lock:
            self.resets += 1
            self._reset_after_flush = False
            self._boot(cause)

    def _tick_loop(self):
        while not self._stop.wait(0.005):
            with self.lock:
                if self._reset_after_flush and not self.ep.pending():
                    self.resets += 1
                    self._reset_after_flush = False
                    self._boot(m.RESET_COMMAND)
                    continue
                out = self.board.tick(now_ms())
                if out:
                    self.ep.send(out)
                self._maybe_arm()
                if self.armed is not None and self.ep.pending():
                    self.dr = True

    def close(self):
        self._stop.set()
        self._ticker.join(2)


class EmulatedBus:
    """The bus the host transport drives, routed to the emulated peripheral, with faults."""

    def __init__(self, peripheral, *, flip=0.0, dr_spurious=0.0, dr_missed=0.0, dr_stuck_low=False, seed=2):
        self.p = peripheral
        self.flip = flip
        self.dr_spurious = dr_spurious
        self.dr_missed = dr_missed
        self.dr_stuck_low = dr_stuck_low
        self.rng = random.Random(seed)
        self.flipped = {"mosi": 0, "miso": 0}
        self.dr_glitches = 0
        self.dr_reads = 0
        self.closed = False

    def _corrupt(self, block, which):
        if self.flip and self.rng.random() < self.flip:
            b = bytearray(block)
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            self.flipped[which] += 1
            return bytes(b)
        return block

    def exchange(self, block):
        if self.closed:
            raise OSError("bus closed")
        miso = self.p.transaction(self._corrupt(bytes(block), "mosi"))
        return self._corrupt(miso, "miso")

    def data_ready(self):
        self.dr_reads += 1
        if self.dr_stuck_low:
            return False
        level = self.p.data_ready()
        if level and self.dr_missed and self.rng.random() < self.dr_missed:
            self.dr_glitches += 1
            return False
        if not level and self.dr_spurious and self.rng.random() < self.dr_spurious:
            self.dr_glitches += 1
            return True
        return level

    def close(self):
        self.closed = True
