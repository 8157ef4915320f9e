"""The lookaside ESP data path: TUN -> board ENCRYPT -> ESP-in-UDP, and back.

Outbound: packets read from the TUN device are matched to a Child SA by their addresses against
its traffic selectors (RFC 4301 §4.4.1 SPD lookup, simplified to the SAs we installed) and
queued for that SA's board; each ESP packet the board returns goes to the peer from our NAT-T
port (RFC 3948). Inbound: ESP-in-UDP received on the NAT-T port is queued for the board of the
SA its SPI names; inner packets are written to the TUN device.

Admission at the board's capacity: each board has a `BoardQueue` (host/dataplane/aqm.py, CoDel)
and batches leave it only while the board's link has data budget left (host/offload/link.py) —
so the link never holds more than a small fraction of a heartbeat period of data, heartbeats and
SA commands go first, and what the board cannot take is dropped here, early, counted by reason.
Each packet's cost is its time on the wire at the link's rate plus the board's CPU time for its
transform (the profile's [crypto.cost_us]).

The routes are indexed by handle, inbound SPI, board and remote network (the outbound lookup
tries only the prefix lengths in use): nothing per packet or per event walks every Child SA.

Only SAs marked usable carry traffic: while a board is lost nothing is sent on its SAs (RFC 7296
§2.4). Inbound ESP must come from the address and port of its SA's peer (RFC 3948: the SA's
encapsulation ports), or it costs no link time. An inbound SPI the host never installed is not
sent to any board (a flood of junk must not fill the link): it goes straight to
`on_unknown_spi`, like a board's UNKNOWN_SPI report.
"""
import asyncio
import collections
import ipaddress
import logging
import time

from firmware.link import messages as m
from host.dataplane.aqm import IN, OUT, BoardQueue, Item, QueueLimits
from host.offload.client import LinkError

log = logging.getLogger("ikeoffloadd.datapath")


class ChildRoute:
    """One installed Child SA as the data path sees it: its board, SPIs, selectors and peer. It is
    the daemon's one record of a Child SA on a board; the IKE side of it (name, state, IKE SA)
    is the engine's ChildSa."""

    __slots__ = ("handle", "board", "spi_in", "spi_out", "peer", "local_nets", "remote_nets", "encap",
                 "usable", "sending", "packets_out", "packets_in", "bytes_out", "bytes_in", "last_in",
                 "last_reported", "transform", "out_in_flight")

    def __init__(self, handle, board, spi_in, spi_out, peer, local_nets, remote_nets, sending=True,
                 transform=None, encap=True):
        """peer: (ip, port) the SA's ESP comes from and goes to; transform: (encr, key bits,
        integ) as the board's profile prices it; encap: the board's SA is ESP-in-UDP (RFC 3948)."""
        self.handle, self.board = handle, board
        self.spi_in, self.spi_out, self.peer = spi_in, spi_out, peer
        self.transform = transform
        self.encap = encap
        self.out_in_flight = 0    # packets handed to the board's link on this SA, not yet back
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


# Bytes a packet adds on the link beyond itself, request or reply (the larger): item headers,
# ESP's header, IV, padding and ICV, a share of the frame's header, CRC and COBS.
LINK_OVERHEAD = 80
# why the host drops a packet before the link: in a board's queue (CoDel's delay, a full queue, the
# queue emptied when its board went) or in the data path (no board, no SA, an unknown SPI, ...)
QUEUE_DROPS = ("queue_full", "queue_delay", "board_lost", "board_not_ready")
PATH_DROPS = ("dropped_board_not_ready", "out_dropped_board_lost", "in_dropped_board_lost", "in_wrong_peer",
              "out_no_sa", "in_unknown_spi", "trap_hold_overflow", "trap_hold_expired")
DROP_REASONS = QUEUE_DROPS + PATH_DROPS
SPARSE_FRAME = 512      # bytes of small packets in one urgent frame (the board works small frames first)


class RouteIndex:
    """Outbound lookup: the routes whose remote selectors contain a destination, by (IP version,
    prefix length, network) — a packet looks at the prefix lengths in use only. Among the routes
    that match, the newest wins (a rekey's new SA, RFC 7296 §2.8)."""

    def __init__(self):
        self.buckets = {}               # (version, prefixlen, network as int) -> {handle: (order, route)}
        self.prefixes = {4: {}, 6: {}}  # version -> {prefixlen: routes using it}, longest first
        self.order = 0

    @staticmethod
    def _key(net):
        return (net.version, net.prefixlen, int(net.network_address) >> (net.max_prefixlen - net.prefixlen))

    def add(self, route):
        self.order += 1
        for net in set(route.remote_nets):
            self.buckets.setdefault(self._key(net), {})[route.handle] = (self.order, route)
            lens = self.prefixes[net.version]
            if net.prefixlen not in lens:
                lens[net.prefixlen] = 0
                self.prefixes[net.version] = lens = dict(sorted(lens.items(), reverse=True))
            lens[net.prefixlen] += 1

    def remove(self, route):
        for net in set(route.remote_nets):
            key = self._key(net)
            b = self.buckets.get(key)
            if b is None or b.pop(route.handle, None) is None:
                continue
            if not b:
                del self.buckets[key]
            lens = self.prefixes[net.version]
            lens[net.prefixlen] -= 1
            if not lens[net.prefixlen]:
                del lens[net.prefixlen]

    def covering(self, net):
        """The routes with ``net`` among their remote networks."""
        return [r for _, r in self.buckets.get(self._key(net), {}).values()]

    def lookup(self, src, dst):
        """The newest sending route whose selectors match (src, dst), or None."""
        best = None
        d = int(dst)
        bits = dst.max_prefixlen
        for plen in self.prefixes[dst.version]:
            b = self.buckets.get((dst.version, plen, d >> (bits - plen)))
            if b is None:
                continue
            for order, r in b.values():
                if r.sending and (best is None or order > best[0]) and r.matches(src, dst):
                    best = (order, r)
        return best[1] if best is not None else None

    def newest_first(self):
        seen = {}
        for b in self.buckets.values():
            for order, r in b.values():
                seen[r.handle] = (order, r)
        return [r for _, r in sorted(seen.values(), key=lambda x: -x[0])]


class DataPath:
    def __init__(self, boards, send_esp, write_tun, on_unknown_spi=None, on_inbound=None, pending=None,
                 clock=time.monotonic, on_wrong_peer=None, traps=None, on_trap=None):
        """boards: name -> BoardClient; send_esp(esp, (ip, port)); write_tun(packet);
        on_unknown_spi(spi, (ip, port)); on_inbound(route) for liveness proof; pending(spi) says
        whether an inbound SPI belongs to a Child SA being set up (its ESP waits for the install);
        on_wrong_peer(route, (ip, port)): ESP on a known SPI from another address or port (dropped
        here; the driver may check whether a NAT moved the peer); traps: a TrapTable (traps.py)
        whose policies hold the packets no Child SA carries yet, on_trap(policy, src, dst) asks
        for a policy's Child SA."""
        self.on_wrong_peer = on_wrong_peer
        self.traps = traps
        self.on_trap = on_trap
        self._trap_expiry = None
        self.pending = pending
        self._held = {}                  # spi -> [(data, addr)] waiting for that SA's install
        self.boards = boards
        self.send_esp = send_esp
        self.write_tun = write_tun
        self.on_unknown_spi = on_unknown_spi
        self.on_inbound = on_inbound
        self.clock = clock
        self.out_index = RouteIndex()    # outbound lookup (rekeyed SAs win)
        self.by_spi_in = {}
        self.by_handle = {}
        self.by_board = {}               # board -> {handle: route} of the routes in the outbound lookup
        self.queues = {}                 # board -> BoardQueue
        self._pump_scheduled = set()
        self.stats = collections.Counter()
        self._loop = None

    # ---- routes -----------------------------------------------------------------------------
    @property
    def routes(self):
        """The routes of the outbound lookup, newest first."""
        return self.out_index.newest_first()

    def routes_covering(self, nets):
        """Routes in the outbound lookup with one of ``nets`` among their remote networks."""
        return [r for n in nets for r in self.out_index.covering(n)]

    def add(self, route):
        self.out_index.add(route)
        self.by_board.setdefault(route.board, {})[route.handle] = route
        self.by_spi_in[route.spi_in] = route
        self.by_handle[route.handle] = route
        for data, addr in self._held.pop(route.spi_in, ()):
            self.stats["in_held_delivered"] += 1
            self.esp_in(data, addr)
        if self.traps is not None and route.sending:
            for pkt in self.traps.release(route.matches, self.clock()):
                self._queue(route, OUT, pkt, None)      # the board's admission, as for any packet

    def remove(self, handle):
        r = self.by_handle.pop(handle, None)
        if r is None:
            return None
        r.sending = False
        if self.by_spi_in.get(r.spi_in) is r:
            del self.by_spi_in[r.spi_in]
        self.out_index.remove(r)
        on_board = self.by_board.get(r.board)
        if on_board is not None:
            on_board.pop(handle, None)
            if not on_board:
                del self.by_board[r.board]
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

    def moved(self, handles, remote):
        """A NAT gave the peer of the Child SAs ``handles`` (those of one IKE SA) a new mapping
        (RFC 7296 §2.23): their ESP-in-UDP goes to, and is accepted from, `remote` = (ip, port)
        from now on. A replaced SA still decrypting from their old mapping follows them: a
        NAT's mapping is per address pair, not per SA."""
        remote = tuple(remote)
        moving = [self.by_handle[h] for h in handles if h in self.by_handle]
        old = {r.peer for r in moving}
        retired = [r for r in self.by_spi_in.values() if self.by_handle.get(r.handle) is not r and r.peer in old]
        for r in moving + retired:
            r.peer = remote

    def send_on(self, handle, replaces=None):
        """Outbound traffic moves to `handle` (a rekey's new SA), away from `replaces`."""
        r = self.by_handle.get(handle)
        if r is not None:
            r.sending = True
        old = self.by_handle.get(replaces) if replaces is not None else None
        if old is not None:
            old.sending = False

    def set_usable(self, board, usable):
        for r in self.by_board.get(board, {}).values():
            r.usable = usable
        if not usable:
            q = self.queues.get(board)
            if q is not None:
                q.clear("board_lost")

    # ---- packets ----------------------------------------------------------------------------
    def tun_packets(self, pkts):
        for pkt in pkts:
            src, dst = _addresses(pkt)
            if src is None:
                self.stats["tun_malformed"] += 1
                continue
            r = self._route_out(src, dst)
            if r is not None:
                if not r.usable:
                    self.stats["out_dropped_board_lost"] += 1
                else:
                    self._queue(r, OUT, pkt, None)
            elif self.traps is not None and self._trap(pkt, src, dst):
                continue
            else:
                self.stats["out_no_sa"] += 1
                log.debug("no SA for %s -> %s", src, dst)

    def _trap(self, pkt, src, dst) -> bool:
        """A packet for an on-demand Child SA not there yet: held (bounded, counted) and, once,
        the Child SA asked for. False: no trap policy covers it."""
        held, ask = self.traps.hold(pkt, src, dst, self.clock())
        if not held:
            return False
        if self._trap_expiry is None:
            self._trap_expiry = self._running_loop().call_later(1.0, self._expire_traps)
        if ask is not None and self.on_trap is not None:
            self.on_trap(ask, src, dst)
        return True

    def _expire_traps(self):
        self._trap_expiry = None
        self.traps.expire(self.clock())
        if self.traps.held():
            self._trap_expiry = self._running_loop().call_later(1.0, self._expire_traps)

    def _route_out(self, src, dst):
        return self.out_index.lookup(src, dst)

    def _current(self, it):
        """An outbound packet queued on an SA that has stopped sending (a rekey moved traffic to
        its successor, RFC 7296 §2.8) leaves on the SA that carries its flow now, on that board."""
        r = it.route
        if r.sending:
            return True
        src, dst = _addresses(it.data)
        n = self._route_out(src, dst)
        if n is None or n.board != r.board or not n.usable:
            self.stats["out_no_sa"] += 1
            return False
        it.route = n
        return True

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
        if tuple(addr) != r.peer:
            # not from the SA's peer (RFC 4301 §5.2 / RFC 3948): it may not cost link time, and
            # a spoofed flood with a valid SPI must not crowd out the peer's own packets
            self.stats["in_wrong_peer"] += 1
            if self.on_wrong_peer is not None:
                self.on_wrong_peer(r, addr)
            return
        if not r.usable:
            self.stats["in_dropped_board_lost"] += 1
            return
        self._queue(r, IN, data, addr)

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

    # ---- admission: per-board queues, batches within the link's data budget ------------------
    def _queue(self, route, kind, data, addr):
        client = self.boards.get(route.board)
        if client is None or not client.ready:
            self.stats["dropped_board_not_ready"] += 1
            return
        q = self.queues.get(route.board)
        if q is None:
            q = self.queues[route.board] = BoardQueue(self._limits(client))
        work = client.packet_work(route.transform, len(data))
        cost = max((len(data) + LINK_OVERHEAD) * client.byte_time, work)
        if q.push(Item(kind, route, data, addr, work, cost, self.clock())):
            self._schedule(route.board)

    def _limits(self, client):
        """CoDel and tail drop for a board, from one MTU packet's time on its link and CPU (its
        fastest transform: the queue's limits are in seconds of work, so a slow transform's
        packets fill them sooner, and its target must not grow with it)."""
        mtu = 1500
        work = min((client.packet_work(t, mtu) for t in client.costs), default=0.0)
        return QueueLimits.for_board(max((mtu + LINK_OVERHEAD) * client.byte_time, work))

    def _schedule(self, board):
        if board not in self._pump_scheduled:
            self._pump_scheduled.add(board)
            self._running_loop().call_soon(self._pump, board)

    def _pump(self, board):
        """Hand the link batches while it has data budget (once per loop iteration and after
        every completed batch): packets gathered meanwhile go together."""
        self._pump_scheduled.discard(board)
        q = self.queues.get(board)
        client = self.boards.get(board)
        if q is None or not len(q):
            return
        if client is None or not client.ready:
            q.clear("board_not_ready")
            return
        hello = client.session.hello
        limit = max(1, hello.max_batch)
        room_bytes = hello.max_frame - 64 - LINK_OVERHEAD * limit
        now = self.clock()
        # small packets first, in frames of their own that the link does not hold back
        while q.has_sparse() and client.urgent_room():
            kind, batch = q.take_sparse(limit, min(room_bytes, SPARSE_FRAME))
            self._submit(board, client, kind, batch, urgent=True)
        # a bulk batch holds at most half the data budget, so that the next one is in flight (and
        # on the board) when the board finishes it: a CPU-bound board never waits for the link
        half = client.session.link.data_budget / 2
        while q.has_bulk():
            room = client.data_room()
            if room <= 0:
                return                                     # the next reply pumps again
            kind, batch = q.take(now, min(room, half), limit, room_bytes)
            if not batch:
                return
            self._submit(board, client, kind, batch)

    def _submit(self, board, client, kind, batch, urgent=False):
        if kind == OUT:
            batch = [it for it in batch if self._current(it)]
            if not batch:
                return
            for it in batch:
                it.route.out_in_flight += 1
        work = sum(it.work for it in batch)
        step = max(it.work for it in batch)
        if kind == OUT:
            fut = client.submit_encrypt([(it.route.spi_out, it.data) for it in batch], work, step, urgent=urgent)
        else:
            fut = client.submit_decrypt([((ipaddress.ip_address(it.addr[0]).packed, it.addr[1]), it.data)
                                         for it in batch], work, step, urgent=urgent)
        fut.add_done_callback(lambda f: self._done(board, kind, batch, f))

    def _done(self, board, kind, batch, fut):
        if kind == OUT:
            for it in batch:
                it.route.out_in_flight -= 1
        try:
            res = fut.result()
        except LinkError as e:
            self.stats["encrypt_failed" if kind == OUT else "decrypt_failed"] += len(batch)
            log.debug("%s batch of %d failed: %s", "ENCRYPT" if kind == OUT else "DECRYPT", len(batch), e)
            res = None
        if res is not None:
            (self._encrypted if kind == OUT else self._decrypted)(batch, res)
        self._schedule(board)

    def _encrypted(self, batch, res):
        for it, (st, esp) in zip(batch, res):
            r = it.route
            if st == m.P_OK:
                r.packets_out += 1
                r.bytes_out += len(it.data)
                self.send_esp(esp, r.peer)
            else:
                self.stats["encrypt_status_%d" % st] += 1

    def _decrypted(self, batch, res):
        for it, (st, spi, inner) in zip(batch, res):
            r = it.route
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
                    self.on_unknown_spi(spi, it.addr)
            else:
                self.stats["decrypt_status_%d" % st] += 1

    def queue_state(self):
        """Per board: packets and seconds of work queued each way, data in flight on the link."""
        out = {}
        for name, q in self.queues.items():
            client = self.boards.get(name)
            n, cost, _ = client.session.link.data_in_flight() if client and client.session else (0, 0.0, 0.0)
            out[name] = {"out": len(q.fifos[OUT]), "in": len(q.fifos[IN]), "sparse_out": len(q.sparse[OUT]),
                         "sparse_in": len(q.sparse[IN]), "out_s": round(q.work[OUT], 4),
                         "in_s": round(q.work[IN], 4), "in_flight": n, "in_flight_s": round(cost, 4)}
        return out

    def drops(self):
        """Packets dropped on the host before the link, by reason."""
        out = collections.Counter()
        for q in self.queues.values():
            out.update(q.drops)
        for k in PATH_DROPS:
            if self.stats[k]:
                out[k] = self.stats[k]
        return out
