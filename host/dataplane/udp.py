"""Thin asyncio UDP driver for the IKE engine: ports 500 and 4500 (RFC 7296 §2.11, §2.23).

* On the NAT-T port (4500) a datagram starting with the 4-byte non-ESP marker is IKE; a single
  0xFF byte is a NAT-keepalive (RFC 3948 §2.3, ignored); anything else is ESP-in-UDP and goes to
  the ``on_esp(data, addr)`` callback (the data path — later the offload board).
* IKE sent from the NAT-T port gets the marker prepended. A marker on the IKE port is tolerated
  (strongSwan puts one on every packet when it runs on non-standard ports).
* The engine's clock is the event loop's monotonic ``loop.time()``.

Events from the engine go to ``on_event(event)``; the callback may call back into the driver
(``child_sa_installed``, ``initiate``, ...). Everything runs on the event loop thread.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

from host.ike.constants import NON_ESP_MARKER

KEEPALIVE = b"\xff"


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, owner, port):
        self.owner, self.port = owner, port

    def datagram_received(self, data, addr):
        self.owner._received(data, addr[:2], self.port)

    def error_received(self, exc):      # ICMP errors: the engine's retransmissions handle loss
        self.owner.stats["socket_errors"] += 1


class IkeUdpEndpoint:
    """Binds ``local_ip`` on ``port`` and ``natt_port`` (or uses the ``sockets`` given, e.g. made
    inside a network namespace) and drives ``engine``."""

    def __init__(self, engine, local_ip: str, port: int = 500, natt_port: int = 4500,
                 on_event: Callable | None = None, on_esp: Callable | None = None,
                 sockets: dict | None = None):
        self.engine = engine
        self.local_ip = local_ip
        self.port, self.natt_port = port, natt_port
        self.on_event = on_event
        self.on_esp = on_esp
        self._given = sockets or {}
        self._transports = {}
        self._timer = None
        self._timer_at = None
        self._loop = None
        self._closed = False
        from collections import Counter
        self.stats = Counter()

    # -------------------------------------------------------------- lifecycle

    async def start(self):
        self._loop = asyncio.get_running_loop()
        for port in (self.port, self.natt_port):
            sock = self._given.get(port)
            if sock is None:
                fam = socket.AF_INET6 if ":" in self.local_ip else socket.AF_INET
                sock = socket.socket(fam, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.local_ip, port))
            sock.setblocking(False)
            tr, _ = await self._loop.create_datagram_endpoint(lambda p=port: _Proto(self, p), sock=sock)
            self._transports[port] = tr
        self._service()
        return self

    def close(self):
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for tr in self._transports.values():
            tr.close()
        self._transports.clear()

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
        """Send an ESP-in-UDP packet from the NAT-T port (no marker: the SPI is never zero)."""
        tr = self._transports.get(self.natt_port)
        if tr is not None:
            tr.sendto(data, remote)

    # -------------------------------------------------------------- internals

    def _received(self, data: bytes, addr, port: int):
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
        self.engine.receive_datagram(data, addr, self.now(), (self.local_ip, port))
        self._service()

    def _service(self):
        """Send what the engine queued, hand out its events, re-arm the timer."""
        if self._closed:
            return
        eng = self.engine
        for _ in range(1000):
            for d in eng.datagrams_to_send():
                tr = self._transports.get(d.local[1])
                if tr is None:
                    self.stats["no_socket"] += 1
                    continue
                tr.sendto(NON_ESP_MARKER + d.data if d.local[1] == self.natt_port else d.data, d.remote)
            ev = eng.next_event()
            if ev is None:
                break
            if self.on_event is not None:
                self.on_event(ev)
        self._arm()

    def _arm(self):
        t = self.engine.get_timer()
        if t == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None:
            self._timer = self._loop.call_at(t, self._fire)

    def _fire(self):
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.now())
        self._service()
