"""RP2040 SPI peripheral link port: a PIO program clocked by the host's SPI controller (an FT232H
driven by pyftdi), DMA in and out of fixed-size blocks, and a data-ready line (docs/spi-link.md).

Pins (profile [spi]): MOSI, SCK and CS are consecutive (the program's `in` base and the two pins
after it), MISO is the `out` pin and data-ready the `set` pin. SPI mode 0, MSB first.

Per transaction the host clocks exactly block_size bytes each way. Before it may, this port has
*armed* the state machine: the board's next block (firmware/link/spi.py) is in the TX DMA and
the RX DMA waits for the host's. The PIO program drops data-ready as CS falls; the port raises
it again after re-arming when it has something to send. A host that clocks an unarmed board
reads a constant line ("idle") and tries again; a partial or corrupted block fails its CRC.

Costs kept off the re-arm (MicroPython 1.27's rp2 port): StateMachine.exec() of a string runs
rp2.asm_pio_encode, an assembler in Python with an exec(), at every call, so the two data-ready
instructions are encoded once at import and exec'd as ints; the next block is written into the
armed DMA buffer (no block, payload slice or inbox copy is allocated but the payload kept for a
resend); the send queue is capped (two of the largest frames) and drained
from the front in O(1) per block (firmware/link/spi.py). Overruns: the PIO's FDEBUG register
says when the state machine stalled on a full RX FIFO (the RX DMA fell behind and host bits
were lost); each transaction where it did is counted (spi_rx_overruns).
"""
import time

import machine
import rp2

from firmware.link import spi as spilink
from firmware.rand import urandom

_PIO_BASE = (0x50200000, 0x50300000)
_FDEBUG = 0x008        # sticky, write 1 to clear: RXSTALL bit sm, RXUNDER 8 + sm, TXOVER 16 + sm, TXSTALL 24 + sm
_TXF = 0x10
_RXF = 0x20
_SHIFTCTRL = 0xD0
_SM_STRIDE = 0x18
_FJOIN_RX = 1 << 31


@rp2.asm_pio(out_init=rp2.PIO.OUT_LOW, set_init=rp2.PIO.OUT_LOW, in_shiftdir=rp2.PIO.SHIFT_LEFT,
             out_shiftdir=rp2.PIO.SHIFT_LEFT, autopush=True, push_thresh=8, autopull=True, pull_thresh=8)
def spi_peripheral():
    # in_base + 0 = MOSI, + 1 = SCK, + 2 = CS (active low); out = MISO; set = data-ready
    wait(1, pin, 2)            # (re)started between transactions: wait for an idle bus
    out(pins, 1)               # the first MISO bit, on the line before CS falls (autopull)
    wait(0, pin, 2)            # CS falls: a transaction starts
    set(pins, 0)               # data-ready low until the port has re-armed
    wrap_target()
    wait(1, pin, 1)            # SCK rises: sample MOSI
    in_(pins, 1)               # (autopush: one byte per 8 bits, to the RX DMA)
    wait(0, pin, 1)            # SCK falls
    out(pins, 1)               # the next MISO bit, valid before SCK rises (autopull: a byte per 8)
    wrap()                     # (after the last bit it waits for a byte past the block: re-armed)


# data-ready high / low, encoded once (StateMachine.exec of a string assembles it in Python)
_DR_HIGH = rp2.asm_pio_encode("set(pins, 1)", 0)
_DR_LOW = rp2.asm_pio_encode("set(pins, 0)", 0)


class SpiPioPort:
    ABORT_MS = 20   # a transaction cut short (CS up before block_size bytes) is dropped after this

    def __init__(self, cfg):
        s = cfg["spi"]
        self.size = spilink.check_size(s["block_size"])
        max_frame = cfg.get("max_frame", 4096)
        self.ep = spilink.Endpoint(self.size, True, int.from_bytes(urandom(2), "big"),
                                   2 * (max_frame + max_frame // 254 + 4))
        pio, sm_id = s.get("pio", 0), s.get("sm", 0)
        self.cs = machine.Pin(s["cs_pin"], machine.Pin.IN, machine.Pin.PULL_UP)
        machine.Pin(s["mosi_pin"], machine.Pin.IN)
        machine.Pin(s["sck_pin"], machine.Pin.IN)
        self.sm = rp2.StateMachine(pio * 4 + sm_id, spi_peripheral, freq=machine.freq(),
                                   in_base=machine.Pin(s["mosi_pin"]), out_base=machine.Pin(s["miso_pin"]),
                                   set_base=machine.Pin(s["data_ready_pin"]))
        base = _PIO_BASE[pio]
        self.fdebug = base + _FDEBUG
        self.rxstall = 1 << sm_id
        self.txf = base + _TXF + 4 * sm_id
        self.rxf = base + _RXF + 4 * sm_id
        self.shiftctrl = base + _SHIFTCTRL + _SM_STRIDE * sm_id
        self.tx_dma = rp2.DMA()
        self.rx_dma = rp2.DMA()
        self.tx_ctrl = self.tx_dma.pack_ctrl(size=0, inc_read=True, inc_write=False, treq_sel=pio * 8 + sm_id)
        self.rx_ctrl = self.rx_dma.pack_ctrl(size=0, inc_read=False, inc_write=True,
                                             treq_sel=pio * 8 + 4 + sm_id)
        self.txbuf = bytearray(self.size)
        self.rxbuf = bytearray(self.size)
        self.inbox = bytearray()     # received link bytes: inbox[ihead:]
        self.ihead = 0
        self.partial_since = None
        self.counters = {"spi_aborted": 0, "spi_rx_overruns": 0}
        self._arm()

    def _data_ready(self, on):
        self.sm.exec(_DR_HIGH if on else _DR_LOW)

    def _arm(self):
        self.sm.active(0)
        self.tx_dma.active(0)
        self.rx_dma.active(0)
        self.ep.next_block(self.txbuf)
        ctrl = machine.mem32[self.shiftctrl]
        machine.mem32[self.shiftctrl] = ctrl ^ _FJOIN_RX     # toggling FJOIN empties both FIFOs
        machine.mem32[self.shiftctrl] = ctrl
        self.sm.restart()
        self.rx_dma.config(read=self.rxf, write=self.rxbuf, count=self.size, ctrl=self.rx_ctrl, trigger=True)
        self.tx_dma.config(read=self.txbuf, write=self.txf, count=self.size, ctrl=self.tx_ctrl, trigger=True)
        self.sm.active(1)
        self.partial_since = None
        self._data_ready(self.ep.pending())

    def _service(self):
        """Take a finished transaction and re-arm; True if one was taken."""
        if self.rx_dma.active():
            left = self.rx_dma.count
            if 0 < left < self.size and self.cs.value():
                # the host raised CS early: wait ABORT_MS for more, then drop the block
                now = time.ticks_ms()
                if self.partial_since is None:
                    self.partial_since = now
                elif time.ticks_diff(now, self.partial_since) > self.ABORT_MS:
                    self.counters["spi_aborted"] += 1
                    self._arm()
            return False
        fd = machine.mem32[self.fdebug]
        if fd & self.rxstall:
            self.counters["spi_rx_overruns"] += 1       # host bits were lost: the CRC drops it
            machine.mem32[self.fdebug] = self.rxstall
        got = self.ep.on_block(self.rxbuf)
        if got:
            if self.ihead and self.ihead * 2 >= len(self.inbox):
                self.inbox[:self.ihead] = b""      # what was read: each byte moves once more at most
                self.ihead = 0
            self.inbox += got
        self._arm()
        return True

    def read_into(self, buf):
        self._service()
        h = self.ihead
        n = min(len(buf), len(self.inbox) - h)
        if n:
            buf[:n] = memoryview(self.inbox)[h:h + n]
            self.ihead = h + n
        return n

    def write(self, data):
        was = self.ep.pending()
        self.ep.send(data)
        if not was:
            self._data_ready(True)     # the armed block may be ack-only: the next one carries it

    def wait(self, ms):
        t0 = time.ticks_ms()
        while self.rx_dma.active() and time.ticks_diff(time.ticks_ms(), t0) < ms:
            time.sleep_us(100)

    def flush(self):
        """Before a reset: give the host up to 500 ms to take (and acknowledge) what is queued."""
        t0 = time.ticks_ms()
        while self.ep.pending() and time.ticks_diff(time.ticks_ms(), t0) < 500:
            self.wait(10)
            self._service()

    def close(self):
        self.sm.active(0)
        self.tx_dma.close()
        self.rx_dma.close()
