"""A TUN device for the plaintext side of the data path (Linux, needs CAP_NET_ADMIN).

Packets the kernel routes into the device come out of read() as whole IP packets (IFF_NO_PI:
no packet-information header); decrypted inner packets written to it enter the kernel's stack.
The device's MTU, queue length, its routes and the policy rules that lead to them are set over
rtnetlink by host/dataplane/tun_routes.py, without blocking the event loop.
"""
import asyncio
import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
# Packets the kernel holds for the daemon to read (a TUN device's default is 500): what arrives
# while the event loop is busy for a moment (a flush of hundreds of IKE SAs, a burst of IKE work)
# waits here instead of being dropped; the data path's own queues then manage the delay.
# (Set with the MTU by host/dataplane/tun_routes.py.)
TXQUEUELEN = 2000
TUN_BURST = 1024
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(OSError):
    """A TUN device, route or rule that could not be set up; ``key`` names the setting it concerns."""

    def __init__(self, message, key="dataplane.tun"):
        super().__init__(message)
        self.key = key


def _why(e):
    """strerror, and what to do about a permission error (which root does not get)."""
    if e.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
        return "%s (needs root or CAP_NET_ADMIN)" % e.strerror
    if e.errno == errno.EBUSY:
        return "%s (another program holds a TUN device of that name)" % e.strerror
    if e.errno == errno.ENOENT:
        return "%s (no TUN support: modprobe tun)" % e.strerror
    return e.strerror or str(e)


class Tun:
    def __init__(self, name="ikeo0"):
        self.name = name
        self.fd = None
        self._loop = None
        self._on_packets = None
        self.rx = 0
        self.tx = 0
        self.tx_errors = 0

    def open(self, on_packets):
        """Create the device and call on_packets(list of packets) as they arrive."""
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError("cannot open /dev/net/tun: %s" % _why(e)) from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", self.name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise TunError("cannot create TUN device %s: %s" % (self.name, _why(e))) from None
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._on_packets = on_packets
        self._loop.add_reader(fd, self._readable)

    def _readable(self):
        pkts = []
        # Drain what waits (up to TUN_BURST) per wake-up: batching pays on the board link, and
        # what waits here is invisible to the data path's delay management — when the loop is
        # busy (hundreds of IKE SAs coming back), a small burst per turn would let this queue,
        # and every tunnel's latency, grow.
        for _ in range(TUN_BURST):
            try:
                pkts.append(os.read(self.fd, 65535))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        if pkts:
            self.rx += len(pkts)
            self._on_packets(pkts)

    def write(self, packet):
        try:
            os.write(self.fd, packet)
            self.tx += 1
        except OSError:
            self.tx_errors += 1

    def close(self):
        if self.fd is None:
            return
        try:
            self._loop.remove_reader(self.fd)
        except (ValueError, RuntimeError):
            pass
        os.close(self.fd)
        self.fd = None
