"""Byte transports for the board link, driven by asyncio.

A pyserial URL names the port: a device (`/dev/ttyUSB0`, a pty path such as `/dev/pts/3`) or
`socket://HOST:PORT`. pyserial opens and configures it (baud rate, RTS/CTS); the bytes then
move with non-blocking os.read/os.write on its file descriptor from the event loop, so a slow
UART never blocks the daemon.
"""
import asyncio
import os

import serial

from host.offload.errors import TransportError


class SerialTransport:
    def __init__(self, url, *, baudrate=115200, rtscts=False, on_data=None, on_error=None):
        self.url = url
        self.baudrate = baudrate or 115200
        self.rtscts = rtscts
        self.on_data = on_data
        self.on_error = on_error
        self.ser = None
        self.fd = None
        self._loop = None
        self._out = bytearray()
        self._writing = False
        self.bytes_in = 0
        self.bytes_out = 0

    def open(self):
        self._loop = asyncio.get_running_loop()
        try:
            self.ser = serial.serial_for_url(self.url, baudrate=self.baudrate, rtscts=self.rtscts,
                                             timeout=0, write_timeout=0)
            self.fd = self.ser.fileno()
        except (serial.SerialException, OSError, ValueError) as e:
            self.ser = None
            raise TransportError("cannot open %s: %s" % (self.url, e)) from None
        os.set_blocking(self.fd, False)
        self._loop.add_reader(self.fd, self._readable)

    @property
    def is_open(self):
        return self.ser is not None

    def write(self, data):
        if not data or self.ser is None:
            return
        if not self._out:
            try:
                n = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._fail(e)
                return
            self.bytes_out += n
            data = data[n:]
            if not data:
                return
        self._out += data
        if not self._writing:
            self._loop.add_writer(self.fd, self._writable)
            self._writing = True

    def _writable(self):
        try:
            n = os.write(self.fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(e)
            return
        self.bytes_out += n
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self.fd)
            self._writing = False

    def _readable(self):
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(e)
            return
        if not data:
            self._fail(TransportError("%s: end of file" % self.url))
            return
        self.bytes_in += len(data)
        if self.on_data:
            self.on_data(data)

    def _fail(self, exc):
        self.close()
        if self.on_error:
            self.on_error(exc)

    def close(self):
        if self.ser is None:
            return
        try:
            self._loop.remove_reader(self.fd)
            if self._writing:
                self._loop.remove_writer(self.fd)
        except (ValueError, OSError):
            pass
        self._writing = False
        self._out = bytearray()
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass
        self.ser = None
        self.fd = None


def for_profile(profile, url, *, on_data=None, on_error=None):
    """The transport a board profile's link needs: SPI (pyftdi; `url` an ftdi:// URL, or none for
    the profile's spi.host.ftdi_url) for link.kind "spi-pio", else a pyserial port at the
    profile's baud rate and flow control (a device, a pty, socket://).

    An spi-pio board named with a pty or socket:// URL is the simulator standing in for it
    (python -m firmware.sim --profile ...): the link's byte stream at the SPI link's payload rate,
    without the transaction layer (tested on its own: tests/test_spi_transport.py)."""
    link = profile["link"]
    if link["kind"] == "spi-pio" and (not url or url.startswith("ftdi://")):
        from host.offload.spi import SpiTransport, pyftdi_bus

        return SpiTransport(pyftdi_bus(profile, url), profile["spi"], on_data=on_data, on_error=on_error)
    return SerialTransport(url, baudrate=link.get("baud") or 115200, rtscts=bool(link.get("rtscts")),
                           on_data=on_data, on_error=on_error)
