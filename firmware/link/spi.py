"""SPI link transactions: fixed-size blocks with length, flags and CRC, carrying the link's byte
stream reliably in both directions (the one implementation: the RP2040 firmware, the host's
SPI transport and the test peripheral all use it). docs/spi-link.md is the specification.

SPI is full duplex and the host (pyftdi, an FT232H) is the controller: every transaction moves
exactly `size` bytes each way, host -> board on MOSI and board -> host on MISO, at the same time.
The board's MISO block must be ready (loaded into the PIO's DMA) before the host starts clocking,
so it can only answer the host's block in a later transaction. Both blocks have one layout:

    off  len  field
    0    1    magic       0x5A host -> board, 0xA5 board -> host (a dead or unarmed peer
                          gives 0x00/0xFF: "idle", not an error)
    1    1    flags       0x01 DATA (payload carries seq), 0x02 MORE (the sender has more
                          queued: clock again), other bits 0
    2    2    epoch       the sender's random, non-zero id for this start (big-endian)
    4    2    ack_epoch   the peer's epoch the ack refers to (0: none seen yet)
    6    1    seq         DATA: this payload's sequence number; else the next one
    7    1    ack         the last payload received in order from the peer
    8    2    len         payload bytes (big-endian), 0..size-14
    10   len  payload     link bytes (COBS frames); the rest up to the CRC is zero
    size-4 4  crc32       binascii.crc32 of bytes 0..size-5, little-endian (as link frames)

Reliability is go-back-N with a window of WINDOW payloads per direction. A block received in
transaction t was built after the peer saw every block of transactions < t, so a payload sent
before t that its ack does not cover was lost (or arrived corrupted): the sender goes back and
resends from the oldest unacknowledged one. When it has nothing new it resends the oldest
unacknowledged payload (a transaction costs the same either way). The receiver delivers
payloads in order only and drops duplicates, so the link's byte stream is exactly once and in
order; a block with a bad CRC is dropped and counted, never acted on. A peer that restarts
shows a new epoch: the receiver starts again at seq 0, and an ack for another epoch is ignored.
"""
import binascii
import struct

MAGIC_HOST = 0x5A
MAGIC_BOARD = 0xA5
F_DATA = 0x01
F_MORE = 0x02
HEADER = 10
TRAILER = 4
OVERHEAD = HEADER + TRAILER
WINDOW = 4
MIN_SIZE = 64
MAX_SIZE = 4096
RESYNC_AFTER = 32   # consecutive in-epoch blocks whose seq is never the one expected
HEADER_FMT = ">BBHHBBH"


class BlockError(ValueError):
    """A received block that must be dropped; .reason is a counter name."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def check_size(size):
    if size % 4 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError("SPI block size must be a multiple of 4 within %d..%d, not %r"
                         % (MIN_SIZE, MAX_SIZE, size))
    return size


_ZEROS = memoryview(bytes(MAX_SIZE))


def encode_block(size, magic, flags, epoch, ack_epoch, seq, ack, payload=b"", out=None):
    """One block of exactly `size` bytes: written into `out` (a bytearray of that size, as the
    board's armed DMA buffer) or a new bytearray."""
    n = len(payload)
    if n > size - OVERHEAD:
        raise ValueError("payload of %d bytes does not fit a %d-byte block" % (n, size))
    if not (0 <= epoch <= 0xFFFF and 0 <= ack_epoch <= 0xFFFF):
        raise ValueError("epoch out of range")
    if out is None:
        out = bytearray(size)
    else:
        out[HEADER + n:size - TRAILER] = _ZEROS[:size - TRAILER - HEADER - n]
    struct.pack_into(HEADER_FMT, out, 0, magic, flags, epoch, ack_epoch, seq & 0xFF, ack & 0xFF, n)
    out[HEADER:HEADER + n] = payload
    struct.pack_into("<I", out, size - TRAILER, binascii.crc32(memoryview(out)[:size - TRAILER]) & 0xFFFFFFFF)
    return out


def decode_block(block, magic):
    """(flags, epoch, ack_epoch, seq, ack, payload) of a valid block, else BlockError."""
    size = len(block)
    if size < MIN_SIZE:
        raise BlockError("short")
    first = block[0]
    if first != magic:
        if first in (0x00, 0xFF) and block[1] == first and block[size - 1] == first:
            raise BlockError("idle")         # the peer was not armed (or is not there)
        raise BlockError("bad_magic")
    mv = memoryview(block)
    crc = struct.unpack_from("<I", block, size - TRAILER)[0]
    if binascii.crc32(mv[:size - TRAILER]) & 0xFFFFFFFF != crc:
        raise BlockError("bad_crc")
    _m, flags, epoch, ack_epoch, seq, ack, n = struct.unpack_from(HEADER_FMT, block, 0)
    if n > size - OVERHEAD or epoch == 0:
        raise BlockError("bad_header")
    return flags, epoch, ack_epoch, seq, ack, bytes(mv[HEADER:HEADER + n])


class Endpoint:
    """One side of the SPI link (sans-I/O).

    Per transaction: `next_block()` gives the block to send (the board arms it before the host
    clocks), `on_block(received)` takes the peer's block of the same transaction and returns the
    link bytes it delivered, in order. `send(data)` queues link bytes; `pending()` says whether
    anything waits to go out or be acknowledged (the board's data-ready line, the host's reason
    to clock)."""

    def __init__(self, size, board, epoch, max_queue=65536):
        self.size = check_size(size)
        self.tx_magic = MAGIC_BOARD if board else MAGIC_HOST
        self.rx_magic = MAGIC_HOST if board else MAGIC_BOARD
        self.room = size - OVERHEAD
        self.epoch = (epoch & 0xFFFF) or 1
        self.max_queue = max_queue
        self.outq = bytearray()  # queued link bytes: outq[_head:] (taken from the front in O(1))
        self._head = 0
        self.unacked = []        # [seq, payload, last transaction it was sent in]
        self.next_send = 0       # index into unacked of the next payload to (re)send
        self.tx_seq = 0
        self.peer_epoch = 0
        self.rx_expected = 0
        self.peer_more = False
        self.t = 0               # transactions so far (this side's count)
        self._mismatch = 0
        self.counters = {"blocks_out": 0, "blocks_in": 0, "payloads_out": 0, "payloads_in": 0,
                         "resent": 0, "go_back": 0, "duplicates": 0, "out_of_order": 0, "idle": 0,
                         "bad_crc": 0, "bad_magic": 0, "bad_header": 0, "short": 0, "peer_restarts": 0,
                         "resyncs": 0, "overflow_bytes": 0}

    # ---- sending ----------------------------------------------------------------------------
    def send(self, data):
        """Queue link bytes; beyond max_queue they are dropped (as a UART overruns) and counted."""
        q = self.outq
        if self._head and self._head * 2 >= len(q):
            q[:self._head] = b""        # drop what was sent: each byte moves at most once more
            self._head = 0
        room = self.max_queue - (len(q) - self._head)
        if len(data) > room:
            self.counters["overflow_bytes"] += len(data) - max(room, 0)
            data = memoryview(data)[:max(room, 0)]
        q += data

    def pending(self):
        return len(self.outq) > self._head or bool(self.unacked)

    def queued(self):
        n = len(self.outq) - self._head
        for u in self.unacked:
            n += len(u[1])
        return n

    def next_block(self, out=None):
        """The block to send in the next transaction (into `out` if given: see encode_block)."""
        self.t += 1
        entry = None
        if self.next_send < len(self.unacked):
            entry = self.unacked[self.next_send]
            self.next_send += 1
            self.counters["resent"] += 1
        elif len(self.unacked) < WINDOW and len(self.outq) > self._head:
            h = self._head
            payload = bytes(memoryview(self.outq)[h:h + self.room])
            self._head = h + len(payload)
            if self._head == len(self.outq):
                self.outq[:] = b""
                self._head = 0
            entry = [self.tx_seq, payload, 0]
            self.tx_seq = (self.tx_seq + 1) & 0xFF
            self.unacked.append(entry)
            self.next_send = len(self.unacked)
            self.counters["payloads_out"] += 1
        elif self.unacked:
            entry = self.unacked[0]          # nothing new: resend the oldest, it costs nothing
            self.counters["resent"] += 1
        if entry is not None:
            entry[2] = self.t
            flags = F_DATA
            seq = entry[0]
            payload = entry[1]
        else:
            flags = 0
            seq = self.tx_seq
            payload = b""
        if self.pending():
            flags |= F_MORE              # queued or unacknowledged: the peer should clock again
        self.counters["blocks_out"] += 1
        return encode_block(self.size, self.tx_magic, flags, self.epoch, self.peer_epoch, seq,
                            (self.rx_expected - 1) & 0xFF, payload, out)

    # ---- receiving --------------------------------------------------------------------------
    def on_block(self, block):
        """The peer's block of the transaction just done; returns the link bytes it delivered."""
        try:
            flags, epoch, ack_epoch, seq, ack, payload = decode_block(block, self.rx_magic)
        except BlockError as e:
            self.counters[e.reason] += 1
            self.peer_more = False
            return b""
        self.counters["blocks_in"] += 1
        self.peer_more = bool(flags & F_MORE)
        if epoch != self.peer_epoch:
            # first contact, or the peer restarted: both directions start again at seq 0;
            # what we still hold unacknowledged is renumbered and resent, not lost
            if self.peer_epoch:
                self.counters["peer_restarts"] += 1
            self.peer_epoch = epoch
            self.rx_expected = 0
            self._mismatch = 0
            for i in range(len(self.unacked)):
                self.unacked[i][0] = i
            self.tx_seq = len(self.unacked)
            self.next_send = 0
            ack_epoch = 0                     # its ack cannot be about our renumbered payloads
        if ack_epoch == self.epoch:
            self._acked(ack)
        if self.unacked and self.unacked[0][2] < self.t:
            # sent before this transaction and still not acknowledged: lost; go back
            if self.next_send:
                self.counters["go_back"] += 1
            self.next_send = 0
        if not flags & F_DATA:
            return b""
        d = (seq - self.rx_expected) & 0xFF
        if d >= 256 - 2 * WINDOW:
            self.counters["duplicates"] += 1      # delivered already: our ack was lost
            self._mismatch = 0
            return b""
        if d:
            # ahead of what we expect: an earlier payload was lost and the peer will go back.
            # A peer that never does is out of step for good (it restarted with our old
            # epoch): follow it after RESYNC_AFTER blocks.
            self._mismatch += 1
            if self._mismatch < RESYNC_AFTER:
                self.counters["out_of_order"] += 1
                return b""
            self.counters["resyncs"] += 1
        self._mismatch = 0
        self.rx_expected = (seq + 1) & 0xFF
        self.counters["payloads_in"] += 1
        return payload

    def _acked(self, ack):
        if not self.unacked:
            return
        base = self.unacked[0][0]
        k = (ack - base + 1) & 0xFF
        if k == 0 or k > len(self.unacked):
            return                                   # acks nothing we have in flight
        del self.unacked[:k]
        self.next_send = max(0, self.next_send - k)
