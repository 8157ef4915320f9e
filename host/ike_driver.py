"""The IKE engine's asyncio driver: its UDP sockets on ports 500 and 4500 (RFC 7296 §2.11, §2.23)
and its timer. It is the control plane's I/O; the data path (host/dataplane/) gets the ESP-in-UDP
that RFC 3948 sends to the same NAT-T port.

* On the NAT-T port (4500) a datagram starting with the 4-byte non-ESP marker is IKE; a single
  0xFF byte is a NAT-keepalive (RFC 3948 §2.3, ignored); anything else is ESP-in-UDP and goes to
  the ``on_esp(data, addr)`` callback (the data path, which hands it to a board).
* IKE sent from the NAT-T port gets the marker prepended (not the engine's NAT-keepalives, which
  are the 0xFF byte alone). A marker on the IKE port is tolerated
  (strongSwan puts one on every packet when it runs on non-standard ports).
* The engine's clock is the event loop's monotonic ``loop.time()``.
* Sockets are non-blocking and read with ``loop.add_reader``; one wake-up drains every queued
  datagram (asyncio's datagram transport reads one per loop iteration) and the engine's output is
  sent once per batch. A send that would block is dropped: IKE retransmits, ESP is datagrams.
* Several local addresses, IPv4 and IPv6, each with both ports (an IPv6 socket is IPv6 only, so
  "0.0.0.0" and "::" can both be listened on). A datagram leaves from the socket of the address
  the engine names; ESP to a peer from the address its IKE SA uses.
* ``fwmark``: every socket's packets carry this firewall mark (SO_MARK), which the daemon's policy
  rule exempts from its tunnel table (host/dataplane/tun_routes.py): IKE, ESP-in-UDP and
  NAT-keepalives never enter the daemon's own tunnel, whatever its selectors cover.

Events from the engine go to ``on_event(event)``; the callback may call back into the driver
(``child_sa_installed``, ``initiate``, ...). Everything runs on the event loop thread.
"""
from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable

from host.ike.constants import NON_ESP_MARKER

KEEPALIVE = b"\xff"
SO_MARK = getattr(socket, "SO_MARK", 36)        # socket(7): Linux's value
IP_FREEBIND, IP_TRANSPARENT = 15, 19            # linux/in.h, and linux/in6.h:
IPV6_FREEBIND, IPV6_TRANSPARENT = 78, 75


def may_use_absent_address(sock):
    """An HA router's IKE sockets are bound to the virtual address, which keepalived adds and
    removes: bind it while it is absent (IP_FREEBIND), and send from it just after keepalived took
    it away (IP_TRANSPARENT, CAP_NET_ADMIN) — the Deletes a router leaving MASTER still owes."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


# Bytes the kernel holds for a socket (ESP of hundreds of tunnels, IKE) while the event loop is
# busy for a moment; the default (about 200 KB) is a few hundred packets.
RECEIVE_BUFFER = 4 << 20
# Seconds of IKE work one readable socket may take per turn of the event loop.
IKE_TURN = 0.005


PEERS_REMEMBERED = 65536     # peer address -> our address its IKE SA uses (ESP leaves from there)


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _receive_buffer(sock):
    """RECEIVE_BUFFER for ``sock``: beyond net.core.rmem_max where the daemon may (CAP_NET_ADMIN),
    else as much as the system allows."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, RECEIVE_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class IkeUdpEndpoint:
    """Binds each of ``local_ip`` (an address or a list of them) on ``port`` and ``natt_port``
    (or uses the ``sockets`` given, by port or by (address, port), e.g. made inside a network
    namespace) and drives ``engine``. ``fwmark``: SO_MARK on the sockets made here (0: none)."""

    def __init__(self, engine, local_ip: str | list, port: int = 500, natt_port: int = 4500,
                 on_event: Callable | None = None, on_esp: Callable | None = None,
                 sockets: dict | None = None, fwmark: int = 0, transparent: bool = False):
        self.engine = engine
        self.transparent = transparent
        self.accepting = True           # False on an HA standby: what arrives is dropped
        self.local_ips = [local_ip] if isinstance(local_ip, str) else list(local_ip)
        self.local_ip = self.local_ips[0]
        self.port, self.natt_port = port, natt_port
        self.fwmark = fwmark
        self.on_event = on_event
        self.on_esp = on_esp
        self._given = sockets or {}
        self._sockets = {}                  # (our address, port) -> socket
        self._by_peer = {}                  # peer address -> our address its IKE uses
        self._timer = None
        self._timer_at = None
        self._loop = None
        self._closed = False
        from collections import Counter
        self.stats = Counter()

    # -------------------------------------------------------------- lifecycle

    async def start(self):
        self._loop = asyncio.get_running_loop()
        for ip in self.local_ips:
            for port in (self.port, self.natt_port):
                sock = self._given.get((ip, port)) or (self._given.get(port) if ip == self.local_ip else None)
                if sock is None:
                    sock = self._bind(ip, port)
                sock.setblocking(False)
                _receive_buffer(sock)
                self._sockets[(ip, port)] = sock
                self._loop.add_reader(sock.fileno(), self._readable, sock, ip, port)
        self._service()
        return self

    def _bind(self, ip, port):
        sock = socket.socket(family_of(ip), socket.SOCK_DGRAM)
        try:
            if family_of(ip) == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.fwmark)
            if self.transparent:
                may_use_absent_address(sock)
            sock.bind((ip, port))
        except OSError:
            sock.close()
            raise
        return sock

    def socket_for(self, local_ip: str | None, port: int, remote_ip: str):
        """The socket to send to ``remote_ip`` from (``local_ip``, ``port``): that address's, else
        the first of the remote's family on that port (a wildcard address)."""
        sock = self._sockets.get((local_ip, port))
        if sock is not None:
            return sock
        fam = family_of(remote_ip)
        return next((s for (ip, p), s in self._sockets.items() if p == port and family_of(ip) == fam), None)

    def close(self):
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sock in self._sockets.values():
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def now(self) -> float:
        return self._loop.time()

    # -------------------------------------------------------------- engine commands (then flush)

    def initiate(self, conn: str, child=None) -> int:
        ike_id = self.engine.initiate(conn, self.now(), child)
        self._service()
        return ike_id

    def child_sa_installed(self, handle: int, ok: bool, reason: str | None = None):
        self.engine.child_sa_installed(handle, ok, self.now(), reason)
        self._service()

    def call(self, fn, *args, **kw):
        """Run ``fn(*args, now=..., **kw)`` on the engine and flush, e.g. ``call(engine.delete_ike, id)``."""
        r = fn(*args, now=self.now(), **kw)
        self._service()
        return r

    def send_esp(self, data: bytes, remote: tuple):
        """Send an ESP-in-UDP packet from the NAT-T port (no marker: the SPI is never zero), from
        the address the peer's IKE SA uses."""
        self._sendto(self._by_peer.get(remote[0]), self.natt_port, data, remote)

    # -------------------------------------------------------------- internals

    def _sendto(self, local_ip, port, data, remote):
        sock = self.socket_for(local_ip, port, remote[0])
        if sock is None:
            self.stats["no_socket"] += 1
            return
        try:
            sock.sendto(data, remote)
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += 1
        except OSError:
            self.stats["socket_errors"] += 1

    def _readable(self, sock, ip, port):
        """Read what waits: ESP (cheap, to the data path) and IKE messages (a key exchange each,
        at worst) until IKE_TURN seconds of work are done; the rest waits for the next turn of
        the event loop, so that hundreds of IKE SAs coming up at once do not hold up every
        tunnel's traffic behind them."""
        t_end = time.perf_counter() + IKE_TURN
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:                 # e.g. ICMP port unreachable: retransmissions handle loss
                self.stats["socket_errors"] += 1
                break
            if self._received(data, addr[:2], port, batch=True, local_ip=ip) and time.perf_counter() > t_end:
                break
        self._service()

    def _received(self, data: bytes, addr, port: int, batch: bool = False, local_ip: str | None = None):
        """One datagram from ``port``; True if it was an IKE message (not ESP or a keepalive)."""
        if not self.accepting:
            self.stats["standby_dropped"] += 1
            return
        if port == self.natt_port:
            if data[:4] == NON_ESP_MARKER:
                data = data[4:]
            elif data == KEEPALIVE:
                self.stats["keepalives"] += 1
                return
            else:
                self.stats["esp_in"] += 1
                if self.on_esp is not None:
                    self.on_esp(data, addr)
                return
        elif data[:4] == NON_ESP_MARKER:
            data = data[4:]
        self.engine.receive_datagram(data, addr, self.now(), (local_ip or self.local_ip, port))
        if not batch:
            self._service()
        return True

    def _service(self):
        """Send what the engine queued, hand out its events, re-arm the timer."""
        if self._closed:
            return
        eng = self.engine
        for _ in range(1000):
            for d in eng.datagrams_to_send():
                port = d.local[1]
                marker = port == self.natt_port and not d.keepalive      # RFC 3948 §2.2, §2.3
                self._sendto(d.local[0], port, NON_ESP_MARKER + d.data if marker else d.data, d.remote)
                if self._by_peer.get(d.remote[0]) != d.local[0]:
                    if len(self._by_peer) >= PEERS_REMEMBERED:
                        self._by_peer.clear()
                    self._by_peer[d.remote[0]] = d.local[0]
            ev = eng.next_event()
            if ev is None:
                break
            if self.on_event is not None:
                self.on_event(ev)
        self._arm()

    def _arm(self):
        """Keep one loop timer at or before the engine's next deadline. A deadline that moves later
        leaves the armed timer alone (it fires, finds nothing due, and re-arms): re-arming on every
        message would churn the loop's timer heap."""
        t = self.engine.get_timer()
        if t is None or (self._timer_at is not None and self._timer_at <= t):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self._loop.call_at(t, self._fire)

    def _fire(self):
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.now())
        self._service()
