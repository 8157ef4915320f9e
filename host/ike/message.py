"""IKE messages: the header (RFC 7296 §3.1), payload chains and the Encrypted payload (§3.14)."""
from __future__ import annotations

import struct

from .constants import IKE_HEADER_LEN, IKE_VERSION, MAX_IKE_MESSAGE, Flag, PayloadType
from .payloads import (
    GENERIC_HEADER_LEN, NotifyPayload, Payload, SyntaxError_, decode_chain, encode_chain,
)

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")
_SK = int(PayloadType.SK)
_SKF = int(PayloadType.SKF)
_SKF_HDR = struct.Struct("!BBHHH")       # RFC 7383 §2.5: generic header, Fragment Number, Total


class VersionError(Exception):
    """Major version other than 2 (§2.5)."""


class Message:
    """One IKE message. ``payloads`` are the cleartext payloads (inside SK for protected ones);
    ``protected`` says whether they arrived in (or go out in) an Encrypted payload."""
    __slots__ = ("spi_i", "spi_r", "exchange", "flags", "mid", "payloads", "protected")

    def __init__(self, spi_i: bytes, spi_r: bytes, exchange: int, flags: int, mid: int,
                 payloads: list[Payload] | None = None, protected: bool = False):
        self.spi_i, self.spi_r, self.exchange, self.flags, self.mid = spi_i, spi_r, exchange, flags, mid
        self.payloads = payloads if payloads is not None else []
        self.protected = protected

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flag.INITIATOR)

    def get(self, ptype: int):
        for p in self.payloads:
            if p.ptype == ptype:
                return p
        return None

    def all(self, ptype: int) -> list:
        return [p for p in self.payloads if p.ptype == ptype]

    def notify(self, ntype: int) -> NotifyPayload | None:
        for p in self.payloads:
            if p.ptype == PayloadType.NOTIFY and p.notify_type == ntype:
                return p
        return None

    def notifies(self) -> list[NotifyPayload]:
        return [p for p in self.payloads if p.ptype == PayloadType.NOTIFY]

    def error_notify(self) -> NotifyPayload | None:
        for p in self.payloads:
            if p.ptype == PayloadType.NOTIFY and p.is_error:
                return p
        return None

    def __repr__(self):
        kind = "response" if self.is_response else "request"
        names = []
        for p in self.payloads:
            if p.ptype == PayloadType.NOTIFY:
                names.append(f"N({p.notify_type})")
            else:
                try:
                    names.append(PayloadType(p.ptype).name)
                except ValueError:
                    names.append(str(p.ptype))
        return (f"<{self.exchange} {kind} mid={self.mid} {self.spi_i.hex()}/{self.spi_r.hex()} "
                f"[{' '.join(names)}]{' SK' if self.protected else ''}>")

    # ------------------------------------------------------------ encoding

    def encode(self, cipher=None) -> bytes:
        """Encode, inside an Encrypted payload when ``cipher`` is given (§3.14)."""
        first, chain = encode_chain(self.payloads)
        if cipher is None:
            return _HDR.pack(self.spi_i, self.spi_r, first, IKE_VERSION, self.exchange, self.flags,
                             self.mid, IKE_HEADER_LEN + len(chain)) + chain
        plain = cipher.pad(chain)
        sk_len = GENERIC_HEADER_LEN + cipher.iv_len + len(plain) + cipher.icv_len
        aad = _HDR.pack(self.spi_i, self.spi_r, _SK, IKE_VERSION, self.exchange, self.flags, self.mid,
                        IKE_HEADER_LEN + sk_len) + _GEN.pack(first, 0, sk_len)
        return aad + cipher.seal(aad, plain)


    def encode_fragments(self, cipher, limit: int) -> list[bytes]:
        """RFC 7383 §2.5: the inner chain in Encrypted Fragment payloads, each message at most
        ``limit`` bytes, each fragment sealed on its own (AAD: IKE header .. Total Fragments)."""
        first, chain = encode_chain(self.payloads)
        room = limit - IKE_HEADER_LEN - _SKF_HDR.size - cipher.iv_len - cipher.icv_len
        size = room - 1
        while size > 0 and cipher.padded_len(size) > room:
            size -= 1
        if size < 1:
            raise ValueError(f"fragment size {limit} leaves no room for data")
        chunks = [chain[i:i + size] for i in range(0, len(chain), size)] or [b""]
        out = []
        for n, chunk in enumerate(chunks, 1):
            plain = cipher.pad(chunk)
            skf_len = _SKF_HDR.size + cipher.iv_len + len(plain) + cipher.icv_len
            aad = _HDR.pack(self.spi_i, self.spi_r, _SKF, IKE_VERSION, self.exchange, self.flags, self.mid,
                            IKE_HEADER_LEN + skf_len) + \
                _SKF_HDR.pack(first if n == 1 else 0, 0, skf_len, n, len(chunks))
            out.append(aad + cipher.seal(aad, plain))
        return out


class Header:
    """The parsed fixed header plus where the payloads start (for SK processing)."""
    __slots__ = ("spi_i", "spi_r", "next_payload", "exchange", "flags", "mid")

    def __init__(self, spi_i, spi_r, next_payload, exchange, flags, mid):
        self.spi_i, self.spi_r, self.next_payload = spi_i, spi_r, next_payload
        self.exchange, self.flags, self.mid = exchange, flags, mid

    @property
    def is_response(self):
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self):
        return bool(self.flags & Flag.INITIATOR)


def parse_header(data: bytes) -> Header:
    """§3.1. Raises SyntaxError_ if the datagram is not one whole IKE message, VersionError for a
    major version other than 2 (minor versions are ignored, §2.5)."""
    if len(data) < IKE_HEADER_LEN or len(data) > MAX_IKE_MESSAGE:
        raise SyntaxError_("datagram length")
    spi_i, spi_r, nxt, ver, exch, flags, mid, length = _HDR.unpack_from(data, 0)
    if length != len(data):
        raise SyntaxError_("IKE header length does not match the datagram")
    if ver >> 4 != 2:
        raise VersionError(ver)
    return Header(spi_i, spi_r, nxt, exch, flags, mid)


def parse_plain(hdr: Header, data: bytes):
    """Decode the payloads that follow the header. Returns (payloads, sk) as decode_chain."""
    return decode_chain(hdr.next_payload, data, IKE_HEADER_LEN, len(data))


def open_sk(data: bytes, sk, cipher) -> list[Payload] | None:
    """Verify and decrypt the Encrypted payload ``sk`` = (inner first type, start, end).
    Returns the inner payloads, None if the integrity check fails; raises SyntaxError_ if the
    decrypted content is malformed (§3.14: padding rules, §3.2 chain rules)."""
    inner_first, start, end = sk
    if end != len(data):
        raise SyntaxError_("Encrypted payload does not end the message")
    plain = cipher.open_(data, start + GENERIC_HEADER_LEN)
    if plain is None:
        return None
    if not plain:
        raise SyntaxError_("empty Encrypted payload")
    padlen = plain[-1]
    if padlen + 1 > len(plain):
        raise SyntaxError_("bad pad length")
    payloads, nested = decode_chain(inner_first, plain, 0, len(plain) - 1 - padlen)
    if nested is not None:
        raise SyntaxError_("Encrypted payload inside an Encrypted payload")
    return payloads
