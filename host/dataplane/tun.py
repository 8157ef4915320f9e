"""A TUN device for the plaintext side of the data path (Linux, needs CAP_NET_ADMIN).

Packets the kernel routes into the device come out of read() as whole IP packets (IFF_NO_PI:
no packet-information header); decrypted inner packets written to it enter the kernel's stack.
Routes to remote traffic selectors go through the device in a routing table of its own, with
an `ip rule` — the way strongSwan's libipsec does it — so the router's main table is untouched.
Routes change through one long-lived `ip -batch` process fed a line a route: hundreds of tunnels
coming up cost no process each, and the event loop never waits for `ip`.
"""
import asyncio
import errno
import fcntl
import logging
import os
import struct
import subprocess

log = logging.getLogger("ikeoffloadd")

TUNSETIFF = 0x400454CA
# Packets the kernel holds for the daemon to read (a TUN device's default is 500): what arrives
# while the event loop is busy for a moment (a flush of hundreds of IKE SAs, a burst of IKE work)
# waits here instead of being dropped; the data path's own queues then manage the delay.
TXQUEUELEN = 2000
TUN_BURST = 1024
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(OSError):
    """A TUN device, route or rule that could not be set up; ``key`` names the setting it concerns."""

    def __init__(self, message, key="dataplane.tun"):
        super().__init__(message)
        self.key = key


def ip(*args, check=True, key="dataplane.tun"):
    """Run `ip ARGS`; raise TunError with ip's message on failure."""
    r = subprocess.run(("ip",) + args, capture_output=True, text=True)
    if check and r.returncode:
        raise TunError("ip %s: %s" % (" ".join(args), r.stderr.strip()), key)
    return r


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
    def __init__(self, name="ikeo0", mtu=1400, table=220, priority=220):
        self.name = name
        self.mtu = mtu
        self.table = table
        self.priority = priority
        self.fd = None
        self.routes = set()
        self._loop = None
        self._on_packets = None
        self._batch = None       # `ip -force -batch -`: route changes, a line each
        self.route_errors = 0
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
        ip("link", "set", "dev", self.name, "mtu", str(self.mtu), "txqueuelen", str(TXQUEUELEN), "up",
           key="dataplane.mtu")
        ip("rule", "del", "priority", str(self.priority), check=False)
        ip("rule", "add", "priority", str(self.priority), "table", str(self.table), key="dataplane.routing_table")
        self._loop = asyncio.get_running_loop()
        self._on_packets = on_packets
        self._loop.add_reader(fd, self._readable)
        self._start_batch()

    def _start_batch(self):
        self._batch = subprocess.Popen(["ip", "-force", "-batch", "-"], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0,
                                       start_new_session=True)
        os.set_blocking(self._batch.stderr.fileno(), False)
        self._loop.add_reader(self._batch.stderr.fileno(), self._batch_errors, self._batch)

    def _batch_errors(self, proc):
        """What `ip` says about a route it could not change (the SA stays; its traffic needs the
        route the operator adds)."""
        try:
            data = os.read(proc.stderr.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(proc.stderr.fileno())
            return
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("Error") or "failed" in line:
                self.route_errors += 1
            log.warning("routes into %s: ip: %s", self.name, line)

    def _route_cmd(self, line):
        """One route change, to the batch process (restarted if it died)."""
        if self._batch is None or self._batch.poll() is not None:
            if self._batch is not None:
                self._loop.remove_reader(self._batch.stderr.fileno())
            self._start_batch()
        try:
            self._batch.stdin.write((line + "\n").encode())
        except OSError as e:
            raise TunError("ip -batch: %s" % e) from None

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

    def add_route(self, cidr, src=None):
        """Route a remote traffic selector into the tunnel (idempotent)."""
        if cidr in self.routes:
            return
        self._route_cmd("route replace %s dev %s table %d%s" % (cidr, self.name, self.table,
                                                                " src %s" % src if src else ""))
        self.routes.add(cidr)

    def del_route(self, cidr):
        if cidr in self.routes:
            self._route_cmd("route del %s dev %s table %d" % (cidr, self.name, self.table))
            self.routes.discard(cidr)

    def close(self):
        if self.fd is None:
            return
        for cidr in list(self.routes):
            self.del_route(cidr)
        if self._batch is not None:
            self._loop.remove_reader(self._batch.stderr.fileno())
            try:
                self._batch.stdin.close()
                self._batch.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self._batch.kill()
            self._batch.stderr.close()
            self._batch = None
        ip("rule", "del", "priority", str(self.priority), check=False)
        try:
            self._loop.remove_reader(self.fd)
        except (ValueError, RuntimeError):
            pass
        os.close(self.fd)
        self.fd = None
