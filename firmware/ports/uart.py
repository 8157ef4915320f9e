"""machine.UART link port (ESP32, RP2040), with RTS/CTS hardware flow control where wired.

Written against MicroPython 1.27's UART drivers (ports/rp2/machine_uart.c, ports/esp32/
machine_uart.c), whose behaviour shapes it:
- rp2: readinto(buf) waits up to timeout_char after each byte for the next one, and the driver
  raises timeout_char to at least one character time plus 1 ms: a read for more bytes than
  have arrived stalls 1-2 ms. So a read asks for at most any() bytes, which are all buffered.
- rp2: write() puts what fits in the driver's TX ring (txbuf) and then waits for room at line
  rate, giving up after timeout_char (>= 1 ms) without progress (CTS held). So a write hands it
  at most txbuf bytes when the ring is empty (txdone()), else a small chunk.
- esp32: write() is ESP-IDF's uart_write_bytes, which blocks until every byte is in the TX ring:
  with CTS held and the ring full, for ever. So the port writes only when txdone() (ring and
  FIFO empty), and at most txbuf bytes.
- esp32: select's poll waits in FreeRTOS ticks (10 ms) which arriving bytes end only if a UART
  IRQ_RX handler is set; the port sets one (it does nothing), so bytes wake wait().
What the host is sent waits in the port's TX queue (preallocated, capped). Bytes that cannot
leave for write_ms (CTS held by the host, a stuck adapter) are dropped and counted, so the
main loop goes on and feeds the watchdog; a write that does not fit the queue is dropped whole
(it is whole link frames: the host sees them missing, as on a lossy line).
"""
import select
import time

import machine

TXBUF = 4096          # the driver's TX ring: one 4 KB reply frame leaves in one write
RXBUF = 4096
CHUNK = 256           # what an rp2 write is given while its ring is not empty (<= 3 ms of line)


class UartPort:
    def __init__(self, cfg, uart=None):
        link = cfg["link"]
        self.esp32 = cfg.get("mcu") == "esp32"
        self.txbuf = link.get("txbuf") or TXBUF
        if uart is None:
            kw = {"baudrate": link["baud"], "bits": 8, "parity": None, "stop": 1,
                  "tx": machine.Pin(link["tx_pin"]), "rx": machine.Pin(link["rx_pin"]),
                  "rxbuf": link.get("rxbuf", RXBUF), "txbuf": self.txbuf, "timeout": 0, "timeout_char": 0}
            if link.get("rtscts"):
                kw["rts"] = machine.Pin(link["rts_pin"])
                kw["cts"] = machine.Pin(link["cts_pin"])
                kw["flow"] = machine.UART.RTS | machine.UART.CTS
            uart = machine.UART(link["uart"], **kw)
            if self.esp32 and hasattr(machine.UART, "IRQ_RX"):
                uart.irq(handler=self._rx_irq, trigger=machine.UART.IRQ_RX)
        self.uart = uart
        self.poll = select.poll()
        self.poll.register(uart, select.POLLIN)
        # the TX queue: txq[head:tail], at most `cap` bytes (two of the largest frames)
        max_frame = cfg.get("max_frame", 4096)
        self.cap = 2 * (max_frame + max_frame // 254 + 4)
        self.txq = bytearray(self.cap)
        self.head = self.tail = 0
        # how long bytes may wait for the line: well inside the watchdog's period
        self.write_ms = max(50, min(1000, (cfg.get("wdt_ms") or 4000) // 4))
        self.stalled_at = None
        self.counters = {"link_tx_dropped_bytes": 0, "link_tx_stalls": 0}

    def _rx_irq(self, uart):
        pass                       # its only job: the driver wakes the main task for it

    def read_into(self, buf):
        if self.head != self.tail:
            self._push()
        n = self.uart.any()
        if not n:
            return 0
        return self.uart.readinto(buf, min(n, len(buf))) or 0

    def write(self, data):
        n = len(data)
        if self.tail - self.head + n > self.cap:
            self.counters["link_tx_dropped_bytes"] += n
            return
        if self.tail + n > self.cap:               # move the queue to the front: O(n) once
            k = self.tail - self.head
            self.txq[0:k] = memoryview(self.txq)[self.head:self.tail]
            self.head, self.tail = 0, k
        self.txq[self.tail:self.tail + n] = data
        self.tail += n
        self._push()

    def _push(self):
        """Hand the driver what it takes without blocking; drop the queue after write_ms
        without progress."""
        k = self.tail - self.head
        if not k:
            return
        done = self.uart.txdone()
        if done:
            k = min(k, self.txbuf)
        elif self.esp32:
            k = 0                                  # its write would block until there is room
        else:
            k = min(k, CHUNK)
        w = self.uart.write(self.txq, self.head, k) if k else 0
        now = time.ticks_ms()
        if w:
            self.head += w
            if self.head == self.tail:
                self.head = self.tail = 0
            self.stalled_at = None
        elif self.stalled_at is None:
            self.stalled_at = now
        elif time.ticks_diff(now, self.stalled_at) > self.write_ms:
            self.counters["link_tx_stalls"] += 1
            self.counters["link_tx_dropped_bytes"] += self.tail - self.head
            self.head = self.tail = 0
            self.stalled_at = None

    def pending(self):
        return self.tail - self.head

    def wait(self, ms):
        if self.head != self.tail:
            self._push()
            if self.head != self.tail:
                ms = min(ms, 2)                    # come back soon to hand over more
        self.poll.ipoll(ms)                        # ipoll: no result list is built

    def flush(self):
        """Before a reset: what is queued goes out (or is dropped after write_ms), then the
        driver's ring."""
        while self.head != self.tail:
            self._push()
            time.sleep_ms(1)
        try:
            self.uart.flush()
        except OSError:
            pass                                   # ETIMEDOUT: CTS held; the reset goes ahead

    def close(self):
        self.uart.deinit()
