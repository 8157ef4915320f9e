"""Link frames: header, CRC-32 and COBS on a 0x00-delimited byte stream.

Decoded frame layout (all integers big-endian except the CRC):

    version(1) type(1) flags(1) seq(2) body(...) [auth seq(8) tag(16) if FLAG_AUTH] crc32(4, little-endian)

The CRC (binascii.crc32, IEEE 802.3) covers everything before it. On the wire a frame is
0x00 COBS(frame) 0x00: the leading delimiter costs one byte and means a lost or corrupted
delimiter loses one frame, not two. Empty blocks between delimiters are ignored.

A frame with a bad CRC, broken COBS, a foreign version or an oversize length is dropped and
counted, never acted on; the decoder resynchronises on the next 0x00. A decoder is made for one
kind of link: on an authenticated one (a link key is provisioned) it drops and counts frames
without FLAG_AUTH, on an open one frames with it; checking the tag is firmware/link/auth.py's.
"""
import binascii
import struct

from firmware.link import cobs

VERSION = 1
HEADER_FMT = ">BBBH"  # MicroPython has no struct.Struct
HEADER_LEN = 5
CRC_LEN = 4
TAG_LEN = 16
AUTH_SEQ_LEN = 8
AUTH_LEN = AUTH_SEQ_LEN + TAG_LEN   # what FLAG_AUTH adds to a decoded frame

FLAG_REPLY = 0x01    # answer to the request with the same seq
FLAG_EVENT = 0x02    # unsolicited, board to host; seq is the board's event counter
FLAG_NOCACHE = 0x04  # data-path request: never retried, so the board keeps no reply for it
FLAG_ENC = 0x40      # with FLAG_AUTH: the body is encrypted (SA_ADD: it carries keys)
FLAG_AUTH = 0x80     # an auth sequence number and a tag precede the CRC (firmware/link/auth.py)

DEFAULT_MAX_FRAME = 4096  # decoded bytes, header to CRC inclusive
MIN_FRAME = HEADER_LEN + CRC_LEN


class Frame:
    """One decoded link frame."""

    def __init__(self, type, seq, flags=0, body=b""):
        self.type = type
        self.seq = seq
        self.flags = flags
        self.body = body

    def __repr__(self):
        return "Frame(type=0x%02x, seq=%d, flags=0x%02x, body=%d bytes)" % (
            self.type, self.seq, self.flags, len(self.body))

    def __eq__(self, other):
        return (isinstance(other, Frame) and self.type == other.type and self.seq == other.seq
                and self.flags == other.flags and bytes(self.body) == bytes(other.body))


def pack(type, seq, flags=0, body=b""):
    """The decoded frame bytes (header, body, CRC) without COBS."""
    raw = struct.pack(HEADER_FMT, VERSION, type, flags, seq & 0xFFFF) + bytes(body)
    return raw + struct.pack("<I", binascii.crc32(raw) & 0xFFFFFFFF)


def encode(type, seq, flags=0, body=b""):
    """A frame ready for the wire: 0x00 COBS(header body crc) 0x00."""
    return b"\x00" + cobs.encode(pack(type, seq, flags, body)) + b"\x00"


def header(type, seq, flags):
    return struct.pack(HEADER_FMT, VERSION, type, flags, seq & 0xFFFF)


def encode_raw(raw):
    """A frame whose bytes before the CRC are `raw` (an authenticated one: header, body, auth
    seq, tag), ready for the wire."""
    return b"\x00" + cobs.encode(bytes(raw) + struct.pack("<I", binascii.crc32(raw) & 0xFFFFFFFF)) + b"\x00"


def encode_into(dst, off, type, seq, flags, body, scratch):
    """encode()'s bytes written to dst from offset off, the frame built in `scratch` (a
    bytearray of at least MIN_FRAME + len(body) bytes); returns the offset after it. dst needs
    max_wire_len(MIN_FRAME + len(body)) + 2 bytes from off. For the boards: no frame, COBS
    or concatenation is allocated."""
    n = HEADER_LEN + len(body)
    struct.pack_into(HEADER_FMT, scratch, 0, VERSION, type, flags, seq & 0xFFFF)
    scratch[HEADER_LEN:n] = body
    return encode_raw_into(dst, off, scratch, n)


def encode_raw_into(dst, off, raw, n):
    """encode_raw(raw[:n])'s bytes written to dst from offset off, the CRC put in raw[n:n + 4]
    (raw: a bytearray with that room); returns the offset after them. dst needs
    max_wire_len(n + CRC_LEN) + 2 bytes from off."""
    struct.pack_into("<I", raw, n, binascii.crc32(memoryview(raw)[0:n]) & 0xFFFFFFFF)
    dst[off] = 0
    o = cobs.encode_into(raw, dst, off + 1, 0, n + CRC_LEN)
    dst[o] = 0
    return o + 1


def max_wire_len(max_frame):
    """Longest COBS block a decoded frame of `max_frame` bytes can produce."""
    return max_frame + max_frame // 254 + 2


class FrameDecoder:
    """Stream decoder: feed() any chunking of the byte stream, get whole valid frames back.

    Counters (attribute `counters`, a dict) say what was dropped and why.

    With `views` (the boards) nothing is allocated per frame but the Frame: the stream is
    gathered and COBS-decoded into buffers made once, and frames() hands each frame on with its
    body (and raw) a memoryview of them, valid until the next frame is asked for. Without, a
    frame's body is its own bytes (feed(), the host).
    """

    def __init__(self, max_frame=DEFAULT_MAX_FRAME, auth=False, views=False):
        """auth: the link is authenticated (frames without FLAG_AUTH are dropped); else frames
        with FLAG_AUTH are (a tag nobody can check is worth nothing)."""
        self.views = views
        self.set_max_frame(max_frame)
        self.auth = auth
        self._buf = bytearray()
        self._skipping = False  # an oversize block: discard until the next delimiter
        self.counters = {"frames": 0, "bad_crc": 0, "bad_cobs": 0, "short": 0,
                         "too_long": 0, "bad_version": 0, "auth_dropped": 0, "unauthenticated": 0}

    def set_max_frame(self, max_frame):
        """Accept frames up to `max_frame` decoded bytes (the host learns the board's from HELLO)."""
        self.max_frame = max_frame
        self._max_block = max_wire_len(max_frame)
        if self.views:
            self._in = bytearray(1024)                 # the chunk being looked at
            self._block = bytearray(self._max_block)   # a block gathered across chunks
            self._n = 0
            self._raw = bytearray(self._max_block)     # the block decoded

    def raw_buffer(self):
        """Views mode: the buffer blocks are decoded into (max_wire_len(max_frame) bytes), which
        the caller may use between frames() calls."""
        return self._raw

    def feed(self, data):
        """The whole valid frames that `data` completes (a list; each body its own bytes)."""
        if self.views:
            raise ValueError("a decoder of views hands frames on with frames()")
        frames = []
        data = bytes(data)
        n = len(data)
        i = 0
        while i < n:
            j = data.find(b"\x00", i)
            if j < 0:
                if not self._skipping:
                    self._buf += data[i:]
                    if len(self._buf) > self._max_block:
                        self.counters["too_long"] += 1
                        self._buf = bytearray()
                        self._skipping = True
                return frames
            if self._skipping:
                self._skipping = False
            else:
                if self._buf:
                    self._buf += data[i:j]
                    block = bytes(self._buf)
                    self._buf = bytearray()
                else:
                    block = data[i:j]
                if block:
                    if len(block) > self._max_block:
                        self.counters["too_long"] += 1
                    else:
                        f = self._decode_block(block)
                        if f is not None:
                            frames.append(f)
            i = j + 1
        return frames

    def frames(self, data):
        """Views mode: yields the whole valid frames that `data` completes, each a view of the
        decoder's buffers until the next is asked for (copy what must outlive it)."""
        src = memoryview(data)
        buf = self._in
        at = 0
        while at < len(src):
            n = min(len(src) - at, len(buf))
            buf[0:n] = src[at:at + n]
            at += n
            for f in self._scan(n):
                yield f

    def _scan(self, n):
        """frames() of the chunk in self._in[:n]."""
        buf = self._in
        blk = self._block
        i = 0
        while i < n:
            j = buf.find(b"\x00", i, n)
            end = n if j < 0 else j
            if not self._skipping and end > i:
                k = self._n + end - i
                if k > self._max_block:
                    self.counters["too_long"] += 1
                    self._n = 0
                    self._skipping = True
                else:
                    blk[self._n:k] = memoryview(buf)[i:end]
                    self._n = k
            if j < 0:
                return
            i = j + 1
            if self._skipping:
                self._skipping = False
                continue
            k, self._n = self._n, 0
            if not k:
                continue
            try:
                k = cobs.decode_into(blk, self._raw, 0, 0, k)
            except cobs.CobsError:
                self.counters["bad_cobs"] += 1
                continue
            f = self._check(memoryview(self._raw)[0:k])
            if f is not None:
                yield f

    def _decode_block(self, block):
        try:
            raw = cobs.decode(block)
        except cobs.CobsError:
            self.counters["bad_cobs"] += 1
            return None
        return self._check(raw)

    def _check(self, raw):
        """The Frame in decoded block `raw` (bytes, or a memoryview: the frame's body and raw
        are then views too), or None when it is dropped (counted)."""
        c = self.counters
        n = len(raw)
        if n < MIN_FRAME:
            c["short"] += 1
            return None
        if n > self.max_frame:
            c["too_long"] += 1
            return None
        crc = struct.unpack_from("<I", raw, n - CRC_LEN)[0]
        if binascii.crc32(raw[:n - CRC_LEN]) & 0xFFFFFFFF != crc:
            c["bad_crc"] += 1
            return None
        version, type, flags, seq = struct.unpack_from(HEADER_FMT, raw, 0)
        if version != VERSION:
            c["bad_version"] += 1
            return None
        if flags & FLAG_AUTH:
            if not self.auth:
                c["auth_dropped"] += 1
                return None
            if n < MIN_FRAME + AUTH_LEN:
                c["short"] += 1
                return None
            c["frames"] += 1
            f = Frame(type, seq, flags, raw[HEADER_LEN:n - CRC_LEN - AUTH_LEN])
            f.raw = raw          # the tag covers raw[:-CRC_LEN - TAG_LEN]
            return f
        if self.auth:
            c["unauthenticated"] += 1
            return None
        c["frames"] += 1
        return Frame(type, seq, flags, raw[HEADER_LEN:n - CRC_LEN])

    def dropped(self):
        """Total frames dropped for any reason."""
        c = self.counters
        return (c["bad_crc"] + c["bad_cobs"] + c["short"] + c["too_long"] + c["bad_version"] + c["auth_dropped"]
                + c["unauthenticated"])
