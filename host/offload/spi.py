"""SPI transport to a board that is an SPI peripheral (RP2040 PIO, docs/spi-link.md), with the
host as controller through an FTDI adapter (pyftdi's SpiController, FT232H-class).

`SpiTransport` is a `host.offload.transport.Transport` (open, write, close, is_open, and the
on_data / on_error callbacks, called on the event loop). pyftdi is blocking, so transactions run
in a thread and received bytes are handed to the loop with call_soon_threadsafe.

A board of link kind "spi-pio" named with a pty or socket:// URL instead of an ftdi:// one is
the simulator standing in for it (python -m firmware.sim --profile ...): the link's byte stream
at the SPI link's payload rate, without the transaction layer (tested on its own:
tests/test_spi_transport.py), so `transport_for` gives a serial port there.

The link's reliability over SPI is firmware/link/spi.py (one implementation for host, board and
the test peripheral): fixed-size blocks with length, flags and CRC-32, go-back-N acknowledgement.
This module only decides *when* to clock a transaction:

- the board raises data-ready when it is armed and has something to send;
- the host has something to send or acknowledge, or the board's last block said MORE;
- nothing for poll_ms: poll anyway (a data-ready line that glitches low must not stall the link);

always at least gap_us after the previous transaction (the board re-arms in between). A board
that was not armed yet answers an idle block; the gap then doubles (up to poll_ms) until it
answers again.

The hardware sits behind a small `bus` interface, so the same transport is tested against an
emulated peripheral (tests/spi_peripheral.py) and runs on pyftdi (PyftdiBus) unchanged:

    bus.exchange(block) -> bytes    one full-duplex transaction of len(block) bytes, CS around it
    bus.data_ready() -> bool        the board's data-ready line
    bus.close()
"""
import asyncio
import os
import threading
import time

from firmware.link import spi as spilink
from host.offload import serial_port
from host.offload.errors import TransportError


class PyftdiBus:
    """pyftdi binding: SPI on the adapter's AD0-AD3 (+ CS), data-ready and reset on its GPIOs."""

    def __init__(self, url, *, cs=0, clock_hz=8_000_000, mode=0, data_ready_gpio=4, reset_gpio=None):
        try:
            from pyftdi.spi import SpiController
        except ImportError as e:
            raise TransportError("pyftdi is not installed: %s" % e) from None
        self.url = url
        self.ctrl = SpiController(cs_count=cs + 1)
        try:
            self.ctrl.configure(url)
            self.port = self.ctrl.get_port(cs=cs, freq=clock_hz, mode=mode)
            self.gpio = self.ctrl.get_gpio()
            self.dr_mask = 1 << data_ready_gpio
            self.reset_mask = (1 << reset_gpio) if reset_gpio is not None else 0
            self.gpio.set_direction(self.dr_mask | self.reset_mask, self.reset_mask)
            if self.reset_mask:
                self.gpio.write(self.reset_mask)             # RUN/EN released (high)
        except Exception as e:   # pyftdi raises UsbToolsError, ValueError, USBError, ...
            self.close()
            raise TransportError("cannot open the SPI adapter %s: %s" % (url, e)) from None

    def exchange(self, block):
        return bytes(self.port.exchange(block, duplex=True))

    def data_ready(self):
        return bool(self.gpio.read() & self.dr_mask)

    def reset(self, pulse_s=0.05):
        if not self.reset_mask:
            raise TransportError("no reset GPIO configured for %s" % self.url)
        self.gpio.write(0)
        time.sleep(pulse_s)
        self.gpio.write(self.reset_mask)

    def close(self):
        try:
            self.ctrl.terminate()
        except Exception:
            pass


def pyftdi_bus(profile, url=None):
    """A PyftdiBus from a profile's [spi] and [spi.host] tables (url overrides ftdi_url)."""
    spi = profile["spi"]
    host = spi.get("host", {})
    url = url or host.get("ftdi_url")
    if not url:
        raise TransportError("no FTDI URL: pass --port ftdi://... or set spi.host.ftdi_url")
    return PyftdiBus(url, cs=host.get("cs", 0), clock_hz=spi["clock_hz"], mode=spi.get("mode", 0),
                     data_ready_gpio=host.get("data_ready_gpio", 4), reset_gpio=host.get("reset_gpio"))


def _adapter(url):
    """An ftdi:// URL, or none (the profile's spi.host.ftdi_url): the SPI adapter itself."""
    return not url or url.startswith("ftdi://")


def transport_for(profile, url, *, on_data=None, on_error=None):
    """The link registry's factory (host/offload/transport.py): SPI through the FTDI adapter,
    or a serial port where the simulator stands in for the board."""
    if _adapter(url):
        return SpiTransport(pyftdi_bus(profile, url), profile["spi"], on_data=on_data, on_error=on_error)
    return serial_port.transport_for(profile, url, on_data=on_data, on_error=on_error)


def serial_settings(profile, url=None):
    """None for the adapter (no serial port to talk to); the simulator's pty or socket:// otherwise."""
    return None if _adapter(url) else serial_port.serial_settings(profile, url)


class SpiTransport:
    def __init__(self, bus, spi_cfg, *, on_data=None, on_error=None, epoch=None):
        """bus: see the module docstring. spi_cfg: the profile's [spi] table (block_size, gap_us,
        poll_ms; data_ready_poll_us under [spi.host])."""
        self.bus = bus
        self.size = spilink.check_size(spi_cfg["block_size"])
        self.gap = spi_cfg.get("gap_us", 300) / 1e6
        self.poll = spi_cfg.get("poll_ms", 20) / 1000
        self.dr_poll = spi_cfg.get("host", {}).get("data_ready_poll_us", 500) / 1e6
        if epoch is None:
            epoch = int.from_bytes(os.urandom(2), "big")
        self.ep = spilink.Endpoint(self.size, False, epoch)
        self.on_data = on_data
        self.on_error = on_error
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._loop = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.transactions = 0
        self.dr_polls = 0

    # ---- the interface BoardClient uses -----------------------------------------------------
    def open(self):
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="spi-transport", daemon=True)
        self._thread.start()

    @property
    def is_open(self):
        return self._thread is not None and not self._stop.is_set()

    def write(self, data):
        if not data or not self.is_open:
            return
        with self._lock:
            self.ep.send(data)
        self.bytes_out += len(data)
        self._wake.set()

    def close(self):
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None
        try:
            self.bus.close()
        except Exception:
            pass

    @property
    def counters(self):
        c = dict(self.ep.counters)
        c.update(transactions=self.transactions, dr_polls=self.dr_polls)
        return c

    # ---- the transaction thread -------------------------------------------------------------
    def _deliver(self, data):
        self.bytes_in += len(data)
        if self.on_data and self._thread is not None:
            self.on_data(data)

    def _fail(self, exc):
        if self._thread is None:
            return
        self.close()
        if self.on_error:
            self.on_error(exc)

    def _run(self):
        gap = self.gap
        last = time.monotonic() - self.poll
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                since = now - last
                with self._lock:
                    want = self.ep.pending() or self.ep.peer_more
                if not want and since < self.poll:
                    self.dr_polls += 1
                    if not self.bus.data_ready():
                        self._wake.wait(min(self.dr_poll, self.poll - since))
                        self._wake.clear()
                        continue
                if since < gap:
                    time.sleep(gap - since)
                with self._lock:
                    block = self.ep.next_block()
                miso = self.bus.exchange(block)
                last = time.monotonic()
                self.transactions += 1
                with self._lock:
                    idle_before = self.ep.counters["idle"]
                    data = self.ep.on_block(miso)
                    idle = self.ep.counters["idle"] != idle_before
                gap = min(gap * 2, self.poll) if idle else self.gap
                if data:
                    self._loop.call_soon_threadsafe(self._deliver, data)
        except Exception as e:     # USB unplugged, adapter gone: the session sees a transport error
            if not self._stop.is_set():
                self._loop.call_soon_threadsafe(self._fail, TransportError("SPI link: %s" % e))
