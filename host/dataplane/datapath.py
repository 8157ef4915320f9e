"""The lookaside ESP data path: TUN -> board ENCRYPT -> ESP-in-UDP, and back.

Outbound: packets read from the TUN device are matched to a Child SA by their addresses against
its traffic selectors (RFC 4301 §4.4.1 SPD lookup, simplified to the SAs we installed), grouped
per board and sent as ENCRYPT batches; each ESP packet goes to the peer from our NAT-T port
(RFC 3948). Inbound: ESP-in-UDP received on the NAT-T port is grouped per board by its SPI and
sent as DECRYPT batches; inner packets are written to the TUN device.

Only SAs marked usable carry traffic: while a board is lost nothing is sent on its SAs (RFC 7296
§2.4). An inbound SPI the host never installed is not sent to any board (a flood of junk must not
fill the link): it goes straight to `on_unknown_spi`, like a board's UNKNOWN_SPI report.
"""
import asyncio
import collections
import ipaddress
import logging

from firmware.link import messages as m
from host.offload.client import LinkError

log = logging.getLogger("ikeoffloadd.datapath")


class ChildRoute:
    """One installed Child SA as the data path sees it."""

    __slots__ = ("handle", "ike_id", "board", "spi_in", "spi_out", "peer", "local_nets", "remote_nets",
                 "usable", "sending", "packets_out", "packets_in", "bytes_out", "bytes_in", "last_in",
                 "last_reported")

    def __init__(self, handle, ike_id, board, spi_in, spi_out, peer, local_nets, remote_nets, sending=True):
        self.handle, self.ike_id, self.board = handle, ike_id, board
        self.spi_in, self.spi_out, self.peer = spi_in, spi_out, peer
        self.local_nets, self.remote_nets = local_nets, remote_nets
        self.usable = True        # False once its board was lost: nothing goes through it
        self.sending = sending    # False for a rekeyed SA that must not send yet (make before break)
        self.packets_out = self.packets_in = self.bytes_out = self.bytes_in = 0
        self.last_in = None
        self.last_reported = 0.0

    def matches(self, src, dst):
        return (any(dst in n for n in self.remote_nets) and any(src in n for n in self.local_nets))


def ts_networks(selectors):
    """TrafficSelectors -> ip_network objects covering their address ranges (ports ignored here:
    the board checks the full selectors)."""
    nets = []
    for ts in selectors:
        a, b = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        nets.extend(ipaddress.summarize_address_range(a, b))
    return nets


def _addresses(pkt):
    v = pkt[0] >> 4
    if v == 4 and len(pkt) >= 20:
        return ipaddress.IPv4Address(pkt[12:16]), ipaddress.IPv4Address(pkt[16:20])
    if v == 6 and len(pkt) >= 40:
        return ipaddress.IPv6Address(pkt[8:24]), ipaddress.IPv6Address(pkt[24:40])
    return None, None


HOLD_SECONDS = 1.0          # how long ESP for a Child SA still being installed waits for it
HOLD_PER_SPI = 32           # packets held per such SPI; more are dropped
HOLD_SPIS = 16              # SPIs held at once


class DataPath:
    def __init__(self, boards, send_esp, write_tun, on_unknown_spi=None, on_inbound=None, pending=None):
        """boards: name -> BoardClient; send_esp(esp, (ip, port)); write_tun(packet);
        on_unknown_spi(spi, (ip, port)); on_inbound(route) for liveness proof; pending(spi) says
        whether an inbound SPI belongs to a Child SA being set up (its ESP waits for the install)."""
        self.pending = pending
        self._held = {}                  # spi -> [(data, addr)] waiting for that SA's install
        self.boards = boards
        self.send_esp = send_esp
        self.write_tun = write_tun
        self.on_unknown_spi = on_unknown_spi
        self.on_inbound = on_inbound
        self.routes = []                 # outbound lookup, newest first (rekeyed SAs win)
        self.by_spi_in = {}
        self.by_handle = {}
        self._out = collections.defaultdict(list)   # board -> [(route, packet)]
        self._in = collections.defaultdict(list)    # board -> [(route, (ip, port), data)]
        self._flush_scheduled = False
        self.stats = collections.Counter()
        self._loop = None

    # ---- routes -----------------------------------------------------------------------------
    def add(self, route):
        self.routes.insert(0, route)
        self.by_spi_in[route.spi_in] = route
        self.by_handle[route.handle] = route
        for data, addr in self._held.pop(route.spi_in, ()):
            self.stats["in_held_delivered"] += 1
            self.esp_in(data, addr)

    def remove(self, handle):
        r = self.by_handle.pop(handle, None)
        if r is None:
            return None
        self.by_spi_in.pop(r.spi_in, None)
        self.routes = [x for x in self.routes if x.handle != handle]
        return r

    def retire(self, handle):
        """Take a replaced SA out of the outbound lookup but keep decrypting on it (its late
        inbound packets still reach the TUN device) until :meth:`forget_inbound`."""
        r = self.remove(handle)
        if r is not None:
            r.sending = False
            self.by_spi_in[r.spi_in] = r
        return r

    def forget_inbound(self, route):
        if self.by_spi_in.get(route.spi_in) is route:
            del self.by_spi_in[route.spi_in]

    def send_on(self, handle, replaces=None):
        """Outbound traffic moves to `handle` (a rekey's new SA), away from `replaces`."""
        r = self.by_handle.get(handle)
        if r is not None:
            r.sending = True
        old = self.by_handle.get(replaces) if replaces is not None else None
        if old is not None:
            old.sending = False

    def set_usable(self, board, usable):
        for r in self.routes:
            if r.board == board:
                r.usable = usable

    # ---- packets ----------------------------------------------------------------------------
    def tun_packets(self, pkts):
        for pkt in pkts:
            src, dst = _addresses(pkt)
            if src is None:
                self.stats["tun_malformed"] += 1
                continue
            for r in self.routes:
                if r.sending and r.matches(src, dst):
                    if not r.usable:
                        self.stats["out_dropped_board_lost"] += 1
                    else:
                        self._out[r.board].append((r, pkt))
                    break
            else:
                self.stats["out_no_sa"] += 1
                log.debug("no SA for %s -> %s; routes: %s", src, dst,
                          ["#%d%s%s" % (r.handle, "" if r.sending else " (not sending)", "" if r.usable else " (lost)")
                           for r in self.routes])
        self._schedule()

    def esp_in(self, data, addr):
        if len(data) < 8:
            self.stats["in_malformed"] += 1
            return
        spi = int.from_bytes(data[:4], "big")
        r = self.by_spi_in.get(spi)
        if r is None:
            if self.pending is not None and self._hold(spi, data, addr):
                return
            self.stats["in_unknown_spi"] += 1
            if self.on_unknown_spi:
                self.on_unknown_spi(spi, addr)
            return
        if not r.usable:
            self.stats["in_dropped_board_lost"] += 1
            return
        self._in[r.board].append((r, addr, data))
        self._schedule()

    def _hold(self, spi, data, addr) -> bool:
        """The peer installs a Child SA when it answers and may send on it before the board has
        it here (RFC 7296 §2.8 make-before-break, §1.2 IKE_AUTH): keep such ESP, bounded, until
        the install, instead of dropping it and telling the peer the SPI is invalid."""
        held = self._held.get(spi)
        if held is None:
            if len(self._held) >= HOLD_SPIS or not self.pending(spi):
                return False
            held = self._held[spi] = []
            self._running_loop().call_later(HOLD_SECONDS, self._held_expired, spi)
        if len(held) < HOLD_PER_SPI:
            held.append((data, addr))
            self.stats["in_held"] += 1
        else:
            self.stats["in_held_overflow"] += 1
        return True

    def _held_expired(self, spi):
        held = self._held.pop(spi, None)
        if held:
            self.stats["in_held_expired"] += len(held)
            if self.on_unknown_spi:
                self.on_unknown_spi(spi, held[0][1])

    def _running_loop(self):
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _schedule(self):
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._running_loop().call_soon(self._flush)

    def _flush(self):
        """Once per loop iteration: everything gathered so far goes out as batches."""
        self._flush_scheduled = False
        out, self._out = self._out, collections.defaultdict(list)
        inn, self._in = self._in, collections.defaultdict(list)
        for board, items in out.items():
            self._batches(board, items, self._encrypt)
        for board, items in inn.items():
            self._batches(board, items, self._decrypt)

    def _batches(self, board, items, fn):
        client = self.boards.get(board)
        if client is None or not client.ready:
            self.stats["dropped_board_not_ready"] += len(items)
            return
        hello = client.session.hello
        limit = max(1, hello.max_batch)
        room = hello.max_frame - 64
        batch, size = [], 0
        for it in items:
            n = len(it[-1]) + 80
            if batch and (len(batch) >= limit or size + n > room):
                self._loop.create_task(fn(client, batch))
                batch, size = [], 0
            batch.append(it)
            size += n
        if batch:
            self._loop.create_task(fn(client, batch))

    async def _encrypt(self, client, batch):
        try:
            res = await client.encrypt([(r.spi_out, pkt) for r, pkt in batch])
        except LinkError as e:
            self.stats["encrypt_failed"] += len(batch)
            log.debug("ENCRYPT batch of %d failed: %s", len(batch), e)
            return
        for (r, pkt), (st, esp) in zip(batch, res):
            if st == m.P_OK:
                r.packets_out += 1
                r.bytes_out += len(pkt)
                self.send_esp(esp, r.peer)
            else:
                self.stats["encrypt_status_%d" % st] += 1

    async def _decrypt(self, client, batch):
        try:
            res = await client.decrypt([((ipaddress.ip_address(a[0]).packed, a[1]), d) for _, a, d in batch])
        except LinkError as e:
            self.stats["decrypt_failed"] += len(batch)
            log.debug("DECRYPT batch of %d failed: %s", len(batch), e)
            return
        for (r, addr, _), (st, spi, inner) in zip(batch, res):
            if st == m.P_OK:
                r.packets_in += 1
                r.bytes_in += len(inner)
                self.write_tun(inner)
                if self.on_inbound:
                    self.on_inbound(r)
            elif st == m.P_DUMMY:
                if self.on_inbound:
                    self.on_inbound(r)
            elif st == m.P_UNKNOWN_SPI:
                self.stats["in_unknown_spi_board"] += 1
                if self.on_unknown_spi:
                    self.on_unknown_spi(spi, addr)
            else:
                self.stats["decrypt_status_%d" % st] += 1
