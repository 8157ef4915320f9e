"""IKEv2 payloads: one small class per payload type, each with a strict codec (RFC 7296 §3).

Every ``decode`` checks lengths exactly and raises :class:`SyntaxError_` (the RFC's INVALID_SYNTAX)
on anything malformed; nothing here allocates more than the input it was given. Counts are capped
(proposals, transforms, selectors, SPIs) so a hostile message cannot make us loop without bound.
"""
from __future__ import annotations

import ipaddress
import struct

from .constants import (
    ATTR_KEY_LENGTH, ATTR_TV_FLAG, GENERIC_HEADER_LEN, Notify, PayloadType, TsType,
)

MAX_PROPOSALS = 32
MAX_TRANSFORMS = 64
MAX_TS = 32
MAX_PAYLOADS = 64
NONCE_MIN, NONCE_MAX = 16, 256          # §3.9

_H = struct.Struct("!BBH")                # generic payload header
_U16 = struct.Struct("!H")


class SyntaxError_(Exception):
    """A message that breaks a §3 length or format rule (answered with INVALID_SYNTAX)."""


class UnsupportedCritical(Exception):
    """A payload we do not know with the critical bit set (§2.5, §3.2)."""

    def __init__(self, payload_type: int):
        super().__init__(f"unsupported critical payload {payload_type}")
        self.payload_type = payload_type


class Payload:
    """Base class. ``ptype`` is the payload type on the wire; ``body()`` the bytes after the
    generic header."""
    __slots__ = ()
    ptype = 0

    def body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, body: bytes, ptype: int):
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.ptype == other.ptype and self.body() == other.body()

    def __hash__(self):
        return hash((self.ptype, self.body()))

    def __repr__(self):
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__ if not s.startswith("_"))
        return f"{type(self).__name__}({fields})"


# ---------------------------------------------------------------- SA (§3.3)

class Transform:
    """§3.3.2. ``key_len`` is the Key Length attribute in bits (None if absent).
    ``unknown_attr`` marks a transform carrying an attribute we do not understand: §3.3.6 says such a
    transform must not be chosen."""
    __slots__ = ("ttype", "tid", "key_len", "unknown_attr")

    def __init__(self, ttype: int, tid: int, key_len: int | None = None, unknown_attr: bool = False):
        self.ttype, self.tid, self.key_len, self.unknown_attr = ttype, tid, key_len, unknown_attr

    def key(self):
        return (self.ttype, self.tid, self.key_len)

    def __eq__(self, other):
        return isinstance(other, Transform) and self.key() == other.key() and \
            self.unknown_attr == other.unknown_attr

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        kl = f"/{self.key_len}" if self.key_len is not None else ""
        return f"T({self.ttype}:{self.tid}{kl})"

    def encode(self, last: bool) -> bytes:
        attrs = b"" if self.key_len is None else struct.pack("!HH", ATTR_TV_FLAG | ATTR_KEY_LENGTH,
                                                              self.key_len)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.ttype, 0,
                           self.tid) + attrs


class Proposal:
    """§3.3.1. ``spi`` is empty in IKE_SA_INIT, 8 bytes for an IKE SA rekey, 4 bytes for ESP/AH."""
    __slots__ = ("num", "protocol", "spi", "transforms")

    def __init__(self, num: int, protocol: int, spi: bytes, transforms: list[Transform]):
        self.num, self.protocol, self.spi, self.transforms = num, protocol, spi, transforms

    def __eq__(self, other):
        return isinstance(other, Proposal) and (self.num, self.protocol, self.spi, self.transforms) == \
            (other.num, other.protocol, other.spi, other.transforms)

    def __repr__(self):
        return f"Proposal(#{self.num} proto={self.protocol} spi={self.spi.hex()} {self.transforms})"

    def encode(self, last: bool) -> bytes:
        n = len(self.transforms)
        tr = b"".join(t.encode(i == n - 1) for i, t in enumerate(self.transforms))
        return struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(self.spi) + len(tr), self.num,
                           self.protocol, len(self.spi), n) + self.spi + tr


# Decoded SA payloads by their bytes (peers send the same offer again and again), bounded in bytes:
# a cache filled while parsing unauthenticated IKE_SA_INIT requests must not grow with them.
SA_CACHE_BYTES = 64 * 1024      # bodies held in all
SA_CACHE_ENTRY = 2048           # a body longer than this (no real offer is) is not kept
_SA_CACHE: dict = {}
_sa_cache_bytes = 0


def sa_cache_bytes() -> int:
    """Bytes of SA payload bodies the decode cache holds."""
    return _sa_cache_bytes


def _sa_cache_put(body: bytes, sa):
    global _sa_cache_bytes
    if len(body) > SA_CACHE_ENTRY:
        return
    while _SA_CACHE and _sa_cache_bytes + len(body) > SA_CACHE_BYTES:
        old = next(iter(_SA_CACHE))             # the oldest goes first
        del _SA_CACHE[old]
        _sa_cache_bytes -= len(old)
    _SA_CACHE[body] = sa
    _sa_cache_bytes += len(body)


class SaPayload(Payload):
    """§3.3. Decoded SA payloads are cached by their bytes (peers send the same offer again and
    again); treat ``proposals`` as read-only."""
    __slots__ = ("proposals", "_raw")
    ptype = PayloadType.SA

    def __init__(self, proposals: list[Proposal]):
        self.proposals = proposals
        self._raw = None

    def body(self) -> bytes:
        if self._raw is None:
            n = len(self.proposals)
            self._raw = b"".join(p.encode(i == n - 1) for i, p in enumerate(self.proposals))
        return self._raw

    @property
    def raw(self) -> bytes:
        return self.body()

    @classmethod
    def decode(cls, body: bytes, ptype: int = PayloadType.SA):
        body = bytes(body)
        hit = _SA_CACHE.get(body)
        if hit is not None:
            return hit
        sa = cls._decode(body)
        sa._raw = body
        _sa_cache_put(body, sa)
        return sa

    @classmethod
    def _decode(cls, body: bytes):
        proposals = []
        off, end = 0, len(body)
        if end == 0:
            raise SyntaxError_("SA payload without proposals")
        last = False
        while off < end:
            if last:
                raise SyntaxError_("data after the last proposal")
            if len(proposals) >= MAX_PROPOSALS:
                raise SyntaxError_("too many proposals")
            if end - off < 8:
                raise SyntaxError_("truncated proposal")
            more, _r, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, off)
            if more not in (0, 2) or plen < 8 + spi_size or off + plen > end:
                raise SyntaxError_("bad proposal header")
            last = more == 0
            pend = off + plen
            spi = bytes(body[off + 8:off + 8 + spi_size])
            toff = off + 8 + spi_size
            transforms = []
            tlast = False
            for _ in range(ntrans):
                if tlast or pend - toff < 8:
                    raise SyntaxError_("transform count does not match")
                tmore, _r1, tlen, ttype, _r2, tid = struct.unpack_from("!BBHBBH", body, toff)
                if tmore not in (0, 3) or tlen < 8 or toff + tlen > pend:
                    raise SyntaxError_("bad transform header")
                tlast = tmore == 0
                key_len, unknown = None, False
                aoff, aend = toff + 8, toff + tlen
                while aoff < aend:
                    if aend - aoff < 4:
                        raise SyntaxError_("truncated attribute")
                    atype, aval = struct.unpack_from("!HH", body, aoff)
                    if atype & ATTR_TV_FLAG:
                        aoff += 4
                        if atype & 0x7FFF == ATTR_KEY_LENGTH and key_len is None:
                            key_len = aval
                        else:
                            unknown = True
                    else:       # TLV: aval is the length
                        if aend - aoff < 4 + aval:
                            raise SyntaxError_("truncated attribute")
                        aoff += 4 + aval
                        unknown = True
                transforms.append(Transform(ttype, tid, key_len, unknown))
                toff += tlen
            if toff != pend or (ntrans and not tlast):
                raise SyntaxError_("proposal length does not match its transforms")
            if ntrans > MAX_TRANSFORMS:
                raise SyntaxError_("too many transforms")
            proposals.append(Proposal(num, proto, spi, transforms))
            off = pend
        if not last:
            raise SyntaxError_("last proposal not marked")
        return cls(proposals)


# ---------------------------------------------------------------- KE, ID, CERT, AUTH, Nonce

class KePayload(Payload):
    """§3.4."""
    __slots__ = ("group", "data")
    ptype = PayloadType.KE

    def __init__(self, group: int, data: bytes):
        self.group, self.data = group, data

    def body(self):
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.KE):
        if len(body) < 4:
            raise SyntaxError_("KE payload too short")
        return cls(_U16.unpack_from(body, 0)[0], bytes(body[4:]))


class IdPayload(Payload):
    """§3.5. The same class serves IDi and IDr (``ptype`` tells them apart)."""
    __slots__ = ("ptype", "id_type", "data")

    def __init__(self, id_type: int, data: bytes, ptype: int = PayloadType.IDi):
        self.ptype, self.id_type, self.data = ptype, id_type, data

    def body(self):
        return bytes((self.id_type, 0, 0, 0)) + self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.IDi):
        if len(body) < 5:
            raise SyntaxError_("ID payload too short")
        return cls(body[0], bytes(body[4:]), ptype)


class CertPayload(Payload):
    """§3.6 (and CERTREQ §3.7 with ``ptype`` CERTREQ)."""
    __slots__ = ("ptype", "encoding", "data")

    def __init__(self, encoding: int, data: bytes, ptype: int = PayloadType.CERT):
        self.ptype, self.encoding, self.data = ptype, encoding, data

    def body(self):
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.CERT):
        if len(body) < 1:
            raise SyntaxError_("CERT payload too short")
        return cls(body[0], bytes(body[1:]), ptype)


class AuthPayload(Payload):
    """§3.8."""
    __slots__ = ("method", "data")
    ptype = PayloadType.AUTH

    def __init__(self, method: int, data: bytes):
        self.method, self.data = method, data

    def body(self):
        return bytes((self.method, 0, 0, 0)) + self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.AUTH):
        if len(body) < 5:
            raise SyntaxError_("AUTH payload too short")
        return cls(body[0], bytes(body[4:]))


class NoncePayload(Payload):
    """§3.9: 16 to 256 octets."""
    __slots__ = ("data",)
    ptype = PayloadType.NONCE

    def __init__(self, data: bytes):
        self.data = data

    def body(self):
        return self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.NONCE):
        if not NONCE_MIN <= len(body) <= NONCE_MAX:
            raise SyntaxError_("nonce length out of range")
        return cls(bytes(body))


class NotifyPayload(Payload):
    """§3.10."""
    __slots__ = ("protocol", "spi", "notify_type", "data")
    ptype = PayloadType.NOTIFY

    def __init__(self, notify_type: int, data: bytes = b"", protocol: int = 0, spi: bytes = b""):
        self.notify_type, self.data, self.protocol, self.spi = notify_type, data, protocol, spi

    def body(self):
        return struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.NOTIFY):
        if len(body) < 4:
            raise SyntaxError_("Notify payload too short")
        proto, spi_size, ntype = struct.unpack_from("!BBH", body, 0)
        if len(body) < 4 + spi_size:
            raise SyntaxError_("Notify SPI truncated")
        return cls(ntype, bytes(body[4 + spi_size:]), proto, bytes(body[4:4 + spi_size]))

    @property
    def is_error(self) -> bool:
        """§3.10.1: types below 16384 are errors, the rest status."""
        return self.notify_type < 16384


class DeletePayload(Payload):
    """§3.11. An IKE SA delete has protocol 1 and no SPIs; ESP/AH carry 4-byte SPIs."""
    __slots__ = ("protocol", "spi_size", "spis")
    ptype = PayloadType.DELETE

    def __init__(self, protocol: int, spis: list[bytes] = (), spi_size: int | None = None):
        self.protocol = protocol
        self.spis = list(spis)
        self.spi_size = spi_size if spi_size is not None else (0 if protocol == 1 else 4)

    def body(self):
        return struct.pack("!BBH", self.protocol, self.spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode(cls, body, ptype=PayloadType.DELETE):
        if len(body) < 4:
            raise SyntaxError_("Delete payload too short")
        proto, size, n = struct.unpack_from("!BBH", body, 0)
        if len(body) != 4 + size * n or (size == 0 and n != 0):
            raise SyntaxError_("Delete payload length does not match its SPIs")
        return cls(proto, [bytes(body[4 + i * size:4 + (i + 1) * size]) for i in range(n)], size)


class VendorPayload(Payload):
    """§3.12."""
    __slots__ = ("data",)
    ptype = PayloadType.VENDOR

    def __init__(self, data: bytes):
        self.data = data

    def body(self):
        return self.data

    @classmethod
    def decode(cls, body, ptype=PayloadType.VENDOR):
        return cls(bytes(body))


# ---------------------------------------------------------------- Traffic selectors (§3.13)

class TrafficSelector:
    """§3.13.1: an address range, a port range and an IP protocol (0 = any)."""
    __slots__ = ("ts_type", "ip_proto", "start_port", "end_port", "start", "end")

    def __init__(self, ts_type: int, ip_proto: int, start_port: int, end_port: int, start: bytes,
                 end: bytes):
        self.ts_type, self.ip_proto = ts_type, ip_proto
        self.start_port, self.end_port, self.start, self.end = start_port, end_port, start, end

    @classmethod
    def from_network(cls, net: str, ip_proto: int = 0, ports: tuple[int, int] = (0, 65535)):
        n = ipaddress.ip_network(net, strict=False)
        ts_type = TsType.IPV4_ADDR_RANGE if n.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(ts_type, ip_proto, ports[0], ports[1], n.network_address.packed,
                   n.broadcast_address.packed)

    @classmethod
    def from_range(cls, first: str, last: str, ip_proto: int = 0, ports=(0, 65535)):
        a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
        ts_type = TsType.IPV4_ADDR_RANGE if a.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(ts_type, ip_proto, ports[0], ports[1], a.packed, b.packed)

    def key(self):
        return (self.ts_type, self.ip_proto, self.start_port, self.end_port, self.start, self.end)

    def __eq__(self, other):
        return isinstance(other, TrafficSelector) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        s, e = ipaddress.ip_address(self.start), ipaddress.ip_address(self.end)
        return f"TS({s}-{e} proto={self.ip_proto} ports={self.start_port}-{self.end_port})"

    def contains(self, other: "TrafficSelector") -> bool:
        return (self.ts_type == other.ts_type and self.ip_proto in (0, other.ip_proto)
                and self.start_port <= other.start_port and other.end_port <= self.end_port
                and self.start <= other.start and other.end <= self.end)

    def intersect(self, other: "TrafficSelector") -> "TrafficSelector | None":
        """The narrowed selector (§2.9), or None if the two do not overlap."""
        if self.ts_type != other.ts_type:
            return None
        if self.ip_proto and other.ip_proto and self.ip_proto != other.ip_proto:
            return None
        proto = self.ip_proto or other.ip_proto
        sp, ep = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        sa, ea = max(self.start, other.start), min(self.end, other.end)
        if sp > ep or sa > ea:
            return None
        return TrafficSelector(self.ts_type, proto, sp, ep, sa, ea)

    def encode(self) -> bytes:
        return struct.pack("!BBHHH", self.ts_type, self.ip_proto, 8 + 2 * len(self.start),
                           self.start_port, self.end_port) + self.start + self.end


class TsPayload(Payload):
    """§3.13, serves TSi and TSr."""
    __slots__ = ("ptype", "selectors")

    def __init__(self, selectors: list[TrafficSelector], ptype: int = PayloadType.TSi):
        self.ptype, self.selectors = ptype, selectors

    def body(self):
        return bytes((len(self.selectors), 0, 0, 0)) + b"".join(t.encode() for t in self.selectors)

    @classmethod
    def decode(cls, body, ptype=PayloadType.TSi):
        if len(body) < 4:
            raise SyntaxError_("TS payload too short")
        n = body[0]
        if n == 0 or n > MAX_TS:
            raise SyntaxError_("bad number of traffic selectors")
        off, out = 4, []
        for _ in range(n):
            if len(body) - off < 8:
                raise SyntaxError_("truncated traffic selector")
            ts_type, proto, tlen, sp, ep = struct.unpack_from("!BBHHH", body, off)
            alen = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}.get(ts_type)
            if alen is None:
                # §3.13.1: unknown TS types are skipped by length; we still insist the length is sane.
                if tlen < 8 or off + tlen > len(body):
                    raise SyntaxError_("bad traffic selector length")
                off += tlen
                continue
            if tlen != 8 + 2 * alen or off + tlen > len(body):
                raise SyntaxError_("bad traffic selector length")
            start, end = bytes(body[off + 8:off + 8 + alen]), bytes(body[off + 8 + alen:off + tlen])
            if start > end:        # §3.13.1: a range of addresses (ports may be "opaque": 65535-0)
                raise SyntaxError_("traffic selector ends before it starts")
            out.append(TrafficSelector(ts_type, proto, sp, ep, start, end))
            off += tlen
        if off != len(body):
            raise SyntaxError_("TS payload length does not match its selectors")
        return cls(out, ptype)


class RawPayload(Payload):
    """A payload we carry but do not interpret (CP, EAP, unknown non-critical types)."""
    __slots__ = ("ptype", "data", "critical")

    def __init__(self, ptype: int, data: bytes, critical: bool = False):
        self.ptype, self.data, self.critical = ptype, data, critical

    def body(self):
        return self.data

    @classmethod
    def decode(cls, body, ptype):
        return cls(ptype, bytes(body))


DECODERS = {
    PayloadType.SA: SaPayload.decode,
    PayloadType.KE: KePayload.decode,
    PayloadType.IDi: IdPayload.decode,
    PayloadType.IDr: IdPayload.decode,
    PayloadType.CERT: CertPayload.decode,
    PayloadType.CERTREQ: CertPayload.decode,
    PayloadType.AUTH: AuthPayload.decode,
    PayloadType.NONCE: NoncePayload.decode,
    PayloadType.NOTIFY: NotifyPayload.decode,
    PayloadType.DELETE: DeletePayload.decode,
    PayloadType.VENDOR: VendorPayload.decode,
    PayloadType.TSi: TsPayload.decode,
    PayloadType.TSr: TsPayload.decode,
    PayloadType.CP: RawPayload.decode,
    PayloadType.EAP: RawPayload.decode,
}
# plain ints for the hot path
DECODERS = {int(k): v for k, v in DECODERS.items()}
_SK = int(PayloadType.SK)
_SKF = int(PayloadType.SKF)


def encode_chain(payloads: list[Payload]) -> tuple[int, bytes]:
    """Encode a payload chain. Returns (type of the first payload, bytes)."""
    if not payloads:
        return 0, b""
    parts = []
    n = len(payloads)
    for i, p in enumerate(payloads):
        body = p.body()
        nxt = payloads[i + 1].ptype if i + 1 < n else 0
        crit = 0x80 if getattr(p, "critical", False) else 0
        parts.append(_H.pack(nxt, crit, GENERIC_HEADER_LEN + len(body)))
        parts.append(body)
    return payloads[0].ptype, b"".join(parts)


def decode_chain(first: int, data, off: int, end: int):
    """Decode payloads from ``data[off:end]`` starting with type ``first``.

    Returns (payloads, sk) where ``sk`` is None or (next_payload_of_SK, start, end) for an
    Encrypted payload, which §3.14 requires to be the last one.
    """
    out = []
    nxt = first
    while nxt != 0:
        if len(out) >= MAX_PAYLOADS:
            raise SyntaxError_("too many payloads")
        if end - off < GENERIC_HEADER_LEN:
            raise SyntaxError_("truncated payload header")
        following, flags, plen = _H.unpack_from(data, off)
        if plen < GENERIC_HEADER_LEN or off + plen > end:
            raise SyntaxError_("bad payload length")
        if nxt == _SK or nxt == _SKF:
            if off + plen != end:
                raise SyntaxError_("Encrypted payload is not the last one")
            return out, (following, off, end)
        dec = DECODERS.get(nxt)
        body = data[off + GENERIC_HEADER_LEN:off + plen]
        if dec is None:
            if flags & 0x80:
                raise UnsupportedCritical(nxt)
            out.append(RawPayload(nxt, bytes(body)))
        else:
            out.append(dec(body, nxt))
        off += plen
        nxt = following
    if off != end:
        raise SyntaxError_("trailing bytes after the last payload")
    return out, None


def notify_error_name(n: int) -> str:
    try:
        return Notify(n).name
    except ValueError:
        return f"NOTIFY_{n}"

