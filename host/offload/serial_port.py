"""The board link over a pyserial port: a device (`/dev/ttyUSB0`, a pty such as `/dev/pts/3`) or
`socket://HOST:PORT`, for link kinds "uart" and "vboard", and the simulator's "sim".

pyserial opens and configures the port (baud rate, RTS/CTS); the bytes then move with
non-blocking os.read/os.write on its file descriptor from the event loop, so a slow UART never
blocks the daemon. `SerialTransport` is a `host.offload.transport.Transport`.
"""
import asyncio
import os

import serial

from host.offload.errors import TransportError
from host.offload.port_names import os_errno


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
            err = TransportError("cannot open %s: %s" % (self.url, e))
            err.errno = os_errno(e)          # the cause, for the words the daemon logs (port_names)
            raise err from None
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


def serial_settings(profile, url=None):
    """pyserial's settings for the profile's link: the baud rate (115200 where it states none: a
    pty or socket:// ignores it) and RTS/CTS flow control."""
    link = profile["link"] if profile else {}
    return {"baudrate": link.get("baud") or 115200, "rtscts": bool(link.get("rtscts"))}


def transport_for(profile, url, *, on_data=None, on_error=None):
    """The link registry's factory (host/offload/transport.py): a pyserial port at the profile's
    baud rate and flow control (no profile: 115200, none)."""
    return SerialTransport(url, **serial_settings(profile, url), on_data=on_data, on_error=on_error)
