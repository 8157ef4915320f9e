"""ESP processing on the board: RFC 4303 with RFC 4106 (AES-GCM), RFC 7634 (ChaCha20-Poly1305),
RFC 3602 + RFC 4868 (AES-CBC + HMAC-SHA-256-128, and -384-192 / -512-256 where the backend's
hashlib has SHA-384/512) and RFC 3948 (UDP encapsulation).

The contract of the link's data path (what the host daemon builds on)
--------------------------------------------------------------------
ENCRYPT item (spi, packet) -> (status, esp)
    packet  a whole IPv4 or IPv6 packet, as read from the TUN device; its length field must
            match its size.
    tunnel mode     the whole packet is the ESP payload (next header 4 or 41).
    transport mode  the IP header is taken off (its protocol becomes the next header) and
                    only the upper-layer payload is protected. IPv4 options and IPv6
                    extension headers are not carried (an IPv6 packet with extension headers,
                    or any fragment, is refused with P_UNSUPPORTED: RFC 4303 §3.1.1 applies
                    transport mode to whole datagrams).
    esp     the ESP packet from the SPI on: SPI | seq | IV | ciphertext | ICV. It is the same
            with and without UDP encapsulation: the host sends it as the payload of a UDP
            datagram from/to port 4500 (RFC 3948 §2.1) for an SA with SAF_UDP_ENCAP, or as the
            payload of an IP packet with protocol 50 otherwise; the host builds the outer IP
            (and UDP) header from the SA's addresses, in both modes.
    statuses  P_OK; P_EXPIRED (hard lifetime reached or sequence numbers exhausted, §3.3.3);
            P_MALFORMED (not an IP packet, length fields wrong); P_POLICY (outside the SA's
            traffic selectors); P_UNSUPPORTED; P_UNKNOWN_SPI / P_TOO_BIG (board.py).

DECRYPT item (source, data) -> (status, spi, packet)
    source  (ip, port) the datagram came from. port != 0: `data` is a UDP payload received on
            port 4500 (RFC 3948): a single 0xFF byte is a NAT-keepalive (P_KEEPALIVE, §2.3),
            four zero bytes first is the non-ESP marker of IKE (P_NOT_ESP, §2.2) and anything
            else is ESP. port 0 or source None: `data` is the payload of an IP protocol-50
            packet. An SA with SAF_UDP_ENCAP accepts only UDP-encapsulated ESP and an SA
            without it only plain ESP (P_POLICY otherwise), so the encapsulation cannot be
            switched by an attacker.
    data    from the SPI on.
    packet  a whole IP packet, ready for the TUN device:
    tunnel mode     the inner packet, trimmed to its IP length (TFC padding, §2.7).
    transport mode  a rebuilt IP header (version of the SA's addresses; source = the peer,
                    A_DST; destination = us, A_SRC; TTL 64; IPv4 ID 0) followed by the
                    payload. With UDP encapsulation, TCP and UDP checksums are fixed as RFC
                    3948 §3.1.2 asks (recomputed; a UDP checksum over IPv4 is zeroed), since a
                    NAT changed the addresses they were computed over.
    statuses  P_OK; P_DUMMY (next header 59, a TFC dummy packet, §2.6: authentic, nothing to
            deliver); P_AUTH_FAIL (ICV, §3.4.4); P_REPLAY (§3.4.3); P_EXPIRED; P_MALFORMED
            (truncated, bad padding or next header, broken inner packet); P_POLICY (inner
            packet outside the SA's selectors, RFC 4301 §5.2, or wrong encapsulation);
            P_KEEPALIVE / P_NOT_ESP / P_UNKNOWN_SPI (board.py).

Sequence numbers and IVs: outbound sequence numbers start at 1 (initial_seq + 1) and never
cycle: after 2^32 - 1 (2^64 - 1 with ESN) the SA is hard-expired (EXP_SEQ) and refuses to send
(§3.3.3); a soft EXP_SEQ fires 1/16 of the space before. The GCM IV is the 64-bit sequence
number (unique under the key, RFC 4106 §3.1); the CBC IV is E_K(0^64 || seq), unpredictable
without the key and unique per SA (RFC 3602 §2.1 asks for an unpredictable IV; NIST SP 800-38A
Appendix C, its first method), on every runtime: no board RNG is trusted for it. The
anti-replay window is updated only after the ICV verified (replay.py).

Memory on a board: with an IN_PLACE backend (pure, cryptolib) a packet is laid out, encrypted
and authenticated in one new buffer, the ESP packet returned (encrypt) or the inner packet
decrypted into one new buffer and trimmed in place (decrypt): besides that buffer a packet
allocates only a few small objects (bench/mpy_alloc.py measures it). The CPython backend
(cryptography) returns new bytes from OpenSSL and takes the fast paths below.

Keys: an SA owns its spec once installed; when it leaves the SAD (SA_DEL, SA_FLUSH, the
fail-closed flush) wipe() zeroes its keys (bytearrays) and whatever the backend derived from
them that Python can reach.

Lifetimes (RFC 4301 §4.4.2.1): packets and bytes of the IP packets (inner, plaintext) are
counted after processing; the first one at or above a soft limit raises a soft SA_EXPIRE, at
or above a hard limit a hard one, after which the SA answers P_EXPIRED until the host deletes
it. Events are collected by pop_expiry() and sent by the board core.
"""
import struct
import sys

from firmware import crypto
from firmware.board import Board
from firmware.link import messages as m
from firmware.replay import ReplayWindow
from firmware.sad import SaRecord, UnsupportedSa

P_DUMMY = m.P_DUMMY
NH_IPV4 = 4
NH_IPV6 = 41
NH_NONE = 59
IPV6_EXT = (0, 43, 44, 51, 60, 135, 139, 140)
PORT_PROTOS = (6, 17, 132, 136)   # TCP, UDP, SCTP, UDP-Lite: ports in the first 4 bytes
ICMP_PROTOS = (1, 58)             # type/code take the place of ports (RFC 7296 §3.13.1)

FEATURES = m.FEAT_ESN | m.FEAT_UDP_ENCAP | m.FEAT_TUNNEL | m.FEAT_TRANSPORT | m.FEAT_BATCH
KEY_BITS = (128, 256)
MAX_OVERHEAD = 8 + 16 + 15 + 2 + 32  # SPI+seq, IV, padding, trailer, ICV: worst case
# HMAC integrity transforms: hash, key bytes, ICV bytes (RFC 4868 §2.1, §2.3)
INTEGS = {m.AUTH_HMAC_SHA2_256_128: ("sha256", 32, 16), m.AUTH_HMAC_SHA2_384_192: ("sha384", 48, 24),
          m.AUTH_HMAC_SHA2_512_256: ("sha512", 64, 32)}
CHACHA_KEY = 32 + 4                   # RFC 7634 §2: the 256-bit key and a 4-byte salt

_pack = struct.pack
_unpack_from = struct.unpack_from
_NEVER = 1 << 64
_ST_ACTIVE = m.SaStats.STATE_ACTIVE
_ST_SOFT = m.SaStats.STATE_SOFT_EXPIRED
_ST_HARD = m.SaStats.STATE_HARD_EXPIRED

_R_EXPIRED = (m.P_EXPIRED, b"")
_R_MALFORMED = (m.P_MALFORMED, b"")
_R_REPLAY = (m.P_REPLAY, b"")
_R_AUTH = (m.P_AUTH_FAIL, b"")
_R_POLICY = (m.P_POLICY, b"")
_R_UNSUPPORTED = (m.P_UNSUPPORTED, b"")
_R_DUMMY = (P_DUMMY, b"")

_PAD = bytes(range(1, 256))     # default padding 1, 2, 3, ... (RFC 4303 §2.4): its first padlen
_PADV = memoryview(_PAD)
_TRAILERS = {}                  # CPython's general GCM path: trailer bytes by (nh, padlen)


def _trailer(padlen, nh):
    t = _PAD[:padlen] + bytes((padlen, nh))
    _TRAILERS[(nh << 8) | padlen] = t
    return t


# The trailer of a tunnelled IPv4 packet by len(packet) & 3 (default padding to 4 bytes, GCM)
_TR4 = tuple(_trailer((2 - k) & 3, NH_IPV4) for k in range(4))
_SEQ32 = 0xFFFFFFFF                   # the last sequence number (RFC 4303 §3.3.3), ESN: _SEQ64
_SEQ64 = 0xFFFFFFFFFFFFFFFF
_SOFT32 = _SEQ32 - (_SEQ32 >> 4)      # the soft EXP_SEQ: 1/16 of the space before the end
_SOFT64 = _SEQ64 - (_SEQ64 >> 4)


_Z4 = bytes(4)
_join = b"".join
_pack_into = struct.pack_into
# scratch of the in-place path (the firmware is single-threaded): a GCM nonce, AADs, an ICV
_NONCE = bytearray(12)
_AAD8 = bytearray(8)
_AAD12 = bytearray(12)
_ICV = bytearray(32)
_ICVV = {16: memoryview(_ICV)[:16], 24: memoryview(_ICV)[:24], 32: _ICV}
_TS_LOCAL = m.A_TS_LOCAL
_TS_REMOTE = m.A_TS_REMOTE
_DIR_IN = m.DIR_IN


def ones_sum(data):
    """Internet one's-complement sum of `data` (RFC 1071), as an int 0..0xFFFF."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return s


def checksum(data):
    return ~ones_sum(data) & 0xFFFF


# ---- traffic selectors (RFC 4301 §4.4.1, RFC 7296 §3.13.1) -----------------------------------
def flow_of(pkt):
    """(src, dst, proto, sport, dport) of an IP packet; ports are None when the packet has none
    or they cannot be seen (non-first fragment: OPAQUE). None if the header is broken."""
    n = len(pkt)
    if n < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        if ihl < 20 or ihl > n:
            return None
        proto = pkt[9]
        src, dst = pkt[12:16], pkt[16:20]
        off = ihl if not (_unpack_from(">H", pkt, 6)[0] & 0x1FFF) else -1
    elif v == 6:
        if n < 40:
            return None
        proto = pkt[6]
        src, dst = pkt[8:24], pkt[24:40]
        off = 40
        hops = 0
        while proto in IPV6_EXT and off >= 0:
            hops += 1
            if hops > 8 or off + 8 > n:
                return None
            if proto == 44:  # fragment header: ports only in the first fragment
                frag = _unpack_from(">H", pkt, off + 2)[0] & 0xFFF8
                proto = pkt[off]
                off = off + 8 if not frag else -1
            elif proto == 51:  # AH: length in 4-byte units, minus 2
                proto, off = pkt[off], off + (pkt[off + 1] + 2) * 4
            else:
                proto, off = pkt[off], off + (pkt[off + 1] + 1) * 8
    else:
        return None
    sport = dport = None
    if off >= 0:
        if proto in PORT_PROTOS and off + 4 <= n:
            sport, dport = _unpack_from(">HH", pkt, off)
        elif proto in ICMP_PROTOS and off + 2 <= n:
            sport = dport = (pkt[off] << 8) | pkt[off + 1]
    return bytes(src), bytes(dst), proto, sport, dport


def ts_ok(tlvs, inbound, flow):
    """True if a packet's flow (flow_of) is inside an SA's traffic selectors, as SaSpec keeps
    them: TLVs as on the wire, A_TS_LOCAL and A_TS_REMOTE first (SaSpec.wire_tlvs). A
    selector list's value is, per selector, the address length n, the start and end address of
    n bytes each, the protocol, the start and end port of 2 bytes each. The local selectors
    hold the packet's source outbound and its destination inbound; a side without selectors
    takes anything. Addresses compare as bytes (big-endian bytes of one length order as the
    numbers do), a packet without visible ports matches only a full port range. One pass over
    the bytes, nothing decoded."""
    src, dst, proto, sport, dport = flow
    n = len(src)
    fmt = ">4s4sBHH" if n == 4 else ">16s16sBHH"
    i, stop = 0, len(tlvs)
    while i < stop:
        t = tlvs[i]
        if t != _TS_LOCAL and t != _TS_REMOTE:
            break                                    # the addresses: no selectors after them
        j = i + 3 + ((tlvs[i + 1] << 8) | tlvs[i + 2])
        if (t == _TS_LOCAL) != inbound:
            addr, port = src, sport
        else:
            addr, port = dst, dport
        i += 3
        while i < j:                                 # the selectors of this side: one must match
            k = tlvs[i]
            if k == n:
                start, end, p, ps, pe = _unpack_from(fmt, tlvs, i + 1)
                if (start <= addr <= end and (not p or p == proto)
                        and (ps <= port <= pe if port is not None else ps == 0 and pe == 0xFFFF)):
                    break
            i += 2 * k + 6
        else:
            return False
        i = j
    return True


# ---- SA records --------------------------------------------------------------------------------
class EspSa(SaRecord):
    """What every ESP SA shares: mode, sequence numbers, replay window, lifetimes, selectors.
    Subclasses implement encrypt()/decrypt() for one transform, with the hot path inline.

    Memory (issue 7: 64 SAs in 64 KB on MicroPython, where __slots__ is ignored and every
    instance attribute is a slot of a hash table that grows 17 -> 23 -> 29 entries of 8 bytes
    when it is full): an SA keeps what its hot path reads and derives the rest (inbound, udp,
    seq_max, the selectors by direction) from its spec, keeps one fast-path switch for its own
    direction, and its engine keeps only what that direction needs (23 attributes at most);
    per-SA objects are avoided where a shared one does (the trailers, the sequence limits,
    the replay mask, an empty event list)."""
    __slots__ = ("_check_seq", "_events", "_fast", "_in_packets", "_local", "_next_o",
                 "_next_p", "_next_seq", "_peer", "_ts", "backend", "esn", "policy",
                 "spi_b", "tunnel", "window")

    def __init__(self, spec, backend):
        SaRecord.__init__(self, spec)
        if spec.flags & ~(m.SAF_ESN | m.SAF_UDP_ENCAP):
            raise UnsupportedSa("unknown SA flags 0x%x" % spec.flags)
        self.backend = backend
        self.esn = esn = bool(spec.flags & m.SAF_ESN)
        self.tunnel = spec.mode == m.MODE_TUNNEL
        inbound = spec.direction == m.DIR_IN
        self.spi_b = _pack(">I", spec.spi)
        if spec.initial_seq > (_SEQ64 if esn else _SEQ32):
            raise m.MessageError("initial sequence number beyond the sequence space")
        self.policy = 0
        self._events = ()        # shared until the first event
        if inbound:
            if esn and not spec.replay_window:
                raise UnsupportedSa("ESN needs an anti-replay window (RFC 4303 Appendix A)")
            self.window = ReplayWindow(spec.replay_window, esn)
            self.window.top = spec.initial_seq
        else:
            self.window = None
        self._ts = spec.wire(m.A_TS_LOCAL) is not None or spec.wire(m.A_TS_REMOTE) is not None
        if not self.tunnel:
            src, dst = spec.src, spec.dst
            if src is None or dst is None or len(src[0]) != len(dst[0]):
                raise m.MessageError("transport mode needs A_SRC and A_DST of one family")
            self._local = src[0]
            self._peer = dst[0]
        # the fast path of the SA's own direction (GcmSa): tunnel mode, no selectors, no ESN,
        # inbound an anti-replay window
        self._fast = (self.tunnel and not self._ts and not esn
                      and (not inbound or spec.replay_window > 0))
        self._next_seq = (_SOFT64 if esn else _SOFT32) if not inbound else _NEVER
        self._next_limits()

    # Derived from the spec rather than stored (see the class docstring).
    @property
    def inbound(self):
        return self.spec.direction == m.DIR_IN

    @property
    def udp(self):
        return bool(self.spec.flags & m.SAF_UDP_ENCAP)

    @property
    def seq_max(self):
        return _SEQ64 if self.esn else _SEQ32

    # Outbound, every packet sent consumes one sequence number and nothing else does, so the
    # packet count is derived from it (one counter less on the hot path).
    @property
    def packets(self):
        if self.spec.direction == m.DIR_OUT:
            return self.seq - self.spec.initial_seq
        return self._in_packets

    @packets.setter
    def packets(self, value):
        self._in_packets = value

    # ---- lifetimes ------------------------------------------------------------------------
    def _next_limits(self):
        s = self.spec
        p = o = _NEVER
        if s.hard_packets:
            p = s.hard_packets
        if s.hard_bytes:
            o = s.hard_bytes
        if self.state == _ST_ACTIVE:   # no soft limit reached yet
            if s.soft_packets and s.soft_packets < p:
                p = s.soft_packets
            if s.soft_bytes and s.soft_bytes < o:
                o = s.soft_bytes
        self._next_p = p
        self._next_o = o
        # outbound: the first sequence number at which a packet or sequence limit needs a look
        # (no new int when there is no packet limit and no initial sequence number)
        c = self.spec.initial_seq + p if self.spec.initial_seq else p
        self._check_seq = c if c < self._next_seq else self._next_seq

    def _expire(self, hard, reason):
        if hard:
            if self.state == _ST_HARD:
                return
            self.state = _ST_HARD
            self._fast = False
        else:
            if self.state != _ST_ACTIVE:   # soft- or hard-expired already
                return
            self.state = _ST_SOFT
        if self._events:
            self._events.append((hard, reason))
        else:
            self._events = [(hard, reason)]
        self._next_limits()

    def _limits(self, seq=0):
        """Called when a counter reached the next threshold."""
        s = self.spec
        if s.hard_packets and self.packets >= s.hard_packets:
            self._expire(True, m.EXP_PACKETS)
        elif s.hard_bytes and self.octets >= s.hard_bytes:
            self._expire(True, m.EXP_BYTES)
        elif s.soft_packets and self.packets >= s.soft_packets:
            self._expire(False, m.EXP_PACKETS)
        elif s.soft_bytes and self.octets >= s.soft_bytes:
            self._expire(False, m.EXP_BYTES)
        if seq >= self._next_seq:
            seq_max = self.seq_max
            if seq >= seq_max:
                self._expire(True, m.EXP_SEQ)
                self._next_seq = _NEVER
            else:
                self._expire(False, m.EXP_SEQ)
                self._next_seq = seq_max
        self._next_limits()

    def _exhausted(self):
        """No sequence number left (RFC 4303 §3.3.3): refuse and expire."""
        self._expire(True, m.EXP_SEQ)
        return _R_EXPIRED

    def pop_expiry(self):
        ev = self._events
        if not ev:
            return []
        self._events = ()
        return ev

    def stats(self):
        st = SaRecord.stats(self)
        if self.window is not None:
            st.seq = self.window.top
        return st

    # ---- packets in and out ---------------------------------------------------------------
    def _payload_out(self, pkt):
        """(offset of the payload in pkt, next header), or a (status, b"") tuple to return:
        tell them apart by the second item (an int or b"")."""
        n = len(pkt)
        if n < 20:
            return _R_MALFORMED
        v = pkt[0] >> 4
        if self.tunnel:
            if v == 4:
                if ((pkt[2] << 8) | pkt[3]) != n:
                    return _R_MALFORMED
                return 0, NH_IPV4
            if v == 6:
                if n < 40 or ((pkt[4] << 8) | pkt[5]) + 40 != n:
                    return _R_MALFORMED
                return 0, NH_IPV6
            return _R_MALFORMED
        if v == 4:
            ihl = (pkt[0] & 15) * 4
            if ihl < 20 or ihl > n or ((pkt[2] << 8) | pkt[3]) != n:
                return _R_MALFORMED
            if _unpack_from(">H", pkt, 6)[0] & 0x3FFF:  # MF or a fragment offset
                return _R_UNSUPPORTED
            if len(self._local) != 4:
                return _R_POLICY
            return ihl, pkt[9]
        if v == 6:
            if n < 40 or ((pkt[4] << 8) | pkt[5]) + 40 != n:
                return _R_MALFORMED
            if pkt[6] in IPV6_EXT:
                return _R_UNSUPPORTED
            if len(self._local) != 16:
                return _R_POLICY
            return 40, pkt[6]
        return _R_MALFORMED

    def _ts_ok(self, pkt):
        f = flow_of(pkt)
        return f is not None and ts_ok(self.spec.wire_tlvs, self.spec.direction == _DIR_IN, f)

    def _room(self):
        """Bytes to keep in front of a decrypted payload: the IP header transport mode puts
        there (RFC 4303 §3.4.4.1 delivers the payload with the outer header's addresses)."""
        if self.tunnel:
            return 0
        return 20 if len(self._local) == 4 else 40

    def _deliver(self, pt):
        """Authenticated plaintext (bytes) -> (status, IP packet): _deliver_buf on a copy."""
        hl = self._room()
        buf = bytearray(hl + len(pt))
        buf[hl:] = pt
        return self._deliver_buf(buf, hl)

    def _deliver_buf(self, pt, hl):
        """The plaintext in pt[hl:] (a bytearray the caller hands over) -> (status, IP
        packet): trailer, mode, selectors (§3.4.4, RFC 4301 §5.2). The packet is pt itself,
        trimmed in place and, in transport mode, with the IP header written into pt[:hl]."""
        n = len(pt)
        if n - hl < 2:
            return _R_MALFORMED
        padlen = pt[n - 2]
        nh = pt[n - 1]
        end = n - 2 - padlen
        if end < hl:
            return _R_MALFORMED
        if padlen and pt[end:n - 2] != _PAD[:padlen]:
            return _R_MALFORMED
        self._in_packets += 1
        self.octets += end - hl
        if self._in_packets >= self._next_p or self.octets >= self._next_o:
            self._limits()
        if nh == NH_NONE:
            return _R_DUMMY
        if self.tunnel:
            if nh == NH_IPV4:
                if end < 20 or pt[0] >> 4 != 4:
                    return _R_MALFORMED
                tl = (pt[2] << 8) | pt[3]
            elif nh == NH_IPV6:
                if end < 40 or pt[0] >> 4 != 6:
                    return _R_MALFORMED
                tl = ((pt[4] << 8) | pt[5]) + 40
            else:
                return _R_MALFORMED
            if tl > end or tl < 20:
                return _R_MALFORMED
            pt[tl:] = b""                # the trailer and any TFC padding (RFC 4303 §2.7)
        else:
            pt[end:] = b""
            self._rebuild_into(pt, hl, nh)
        if self._ts and not self._ts_ok(pt):
            self.policy += 1
            return _R_POLICY
        return m.P_OK, pt

    def _rebuild_into(self, buf, hl, nh):
        """Transport mode: the IP header in buf[:hl] in front of the payload (see the module
        docstring)."""
        src, dst = self._peer, self._local
        n = len(buf) - hl
        if self.spec.flags & m.SAF_UDP_ENCAP and nh in (6, 17):
            self._fix_l4_into(buf, hl, nh, src, dst)
        if hl == 20:
            _pack_into(">BBHHHBBH", buf, 0, 0x45, 0, 20 + n, 0, 0, 64, nh, 0)
            buf[12:16] = src
            buf[16:20] = dst
            _pack_into(">H", buf, 10, checksum(memoryview(buf)[0:20]))
        else:
            _pack_into(">IHBB", buf, 0, 0x60000000, n, nh, 64)
            buf[8:24] = src
            buf[24:40] = dst

    @staticmethod
    def _fix_l4_into(buf, off, proto, src, dst):
        """RFC 3948 §3.1.2: the NAT changed the addresses the TCP/UDP checksum of the segment
        buf[off:] covers; fixed in place."""
        n = len(buf) - off
        at = off + (16 if proto == 6 else 6)
        if n < at - off + 2:
            return
        buf[at] = 0
        buf[at + 1] = 0
        if proto == 17 and len(src) == 4:
            return  # UDP over IPv4: checksum 0 means none
        if len(src) == 4:
            pseudo = src + dst + _pack(">BBH", 0, proto, n)
        else:
            pseudo = src + dst + _pack(">IBBBB", n, 0, 0, 0, proto)
        # the pseudo-header has an even length: the sums add with an end-around carry
        s = ones_sum(pseudo) + ones_sum(memoryview(buf)[off:])
        s = (s & 0xFFFF) + (s >> 16)
        c = ~s & 0xFFFF
        if proto == 17 and c == 0:
            c = 0xFFFF
        _pack_into(">H", buf, at, c)

    # ---- the in-place path (IN_PLACE backends; CBC on every backend) -------------------------
    def _frame(self, pkt, ivlen, align, icvlen=16):
        """Checks and sequence number for an outbound packet, then the ESP packet laid out in a
        new buffer: SPI, seq, room for the IV, the payload, padding to `align` (RFC 4303 §2.4),
        pad length, next header, room for the ICV. Returns (buffer, seq, end of the part to
        encrypt), or a (status, b"") tuple to return."""
        if self.state == _ST_HARD:
            return _R_EXPIRED
        r = self._payload_out(pkt)
        off, nh = r
        if type(nh) is not int:
            return r
        if self._ts and not self._ts_ok(pkt):
            self.policy += 1
            return _R_POLICY
        seq = self.seq + 1
        if seq > (_SEQ64 if self.esn else _SEQ32):
            return self._exhausted()
        self.seq = seq
        plen = len(pkt) - off
        padlen = (align - 2 - plen) & (align - 1)
        ct = 8 + ivlen
        e = ct + plen
        end = e + padlen + 2
        out = bytearray(end + icvlen)
        out[0:4] = self.spi_b
        _pack_into(">I", out, 4, seq & 0xFFFFFFFF if self.esn else seq)
        out[ct:e] = memoryview(pkt)[off:] if off else pkt
        if padlen:
            out[e:e + padlen] = _PADV[:padlen]
        out[end - 2] = padlen
        out[end - 1] = nh
        return out, seq, end

    def _sealed(self, pkt, seq, out):
        self.octets += len(pkt)
        if seq >= self._check_seq or self.octets >= self._next_o:
            self._limits(seq)
        return m.P_OK, out

    def _seq_in(self, pkt):
        """The full sequence number of an inbound packet if the window lets it in, else the
        (status, b"") to return (RFC 4303 §3.4.3: before the ICV is checked)."""
        w = self.window
        seql = _unpack_from(">I", pkt, 4)[0]
        seq = w.infer(seql) if self.esn else seql
        if not w.check(seq):
            self.replay += 1
            return _R_REPLAY
        return seq

    def wipe(self):
        SaRecord.wipe(self)

class GcmSa(EspSa):
    """ENCR_AES_GCM_16 (RFC 4106): key || 4-byte salt; nonce = salt || IV; IV = the 64-bit
    sequence number; AAD = SPI || seq (8 bytes) or SPI || seq-hi || seq-lo with ESN (§5);
    16-byte ICV; payload padded to 4 bytes. ChaChaSa shares all of it but the cipher."""
    __slots__ = ("_open", "_salt0", "_seal", "salt")

    def __init__(self, spec, backend):
        if spec.integ != m.AUTH_NONE:
            raise UnsupportedSa("an AEAD is combined mode: no integrity transform (RFC 4106 §8.2, RFC 7634 §2)")
        key = spec.encr_key
        self._check_key(key)
        EspSa.__init__(self, spec, backend)
        # the key without a copy (the SA zeroes spec.encr_key when it goes)
        self._setup(self._make_aead(backend, memoryview(key)[:len(key) - 4]), key)

    @staticmethod
    def _check_key(key):
        if (len(key) - 4) * 8 not in KEY_BITS:
            raise UnsupportedSa("AES-GCM key must be 16 or 32 bytes plus a 4-byte salt")

    @staticmethod
    def _make_aead(backend, key):
        return backend.aes_gcm(key)

    def _setup(self, aead, key):
        # what the SA's own direction needs, and nothing for the other (an SA only encrypts or
        # only decrypts; each is an attribute less on a board): outbound a bound method and the
        # nonce prefix salt || IV[:4], where the IV is the 64-bit sequence number and IV[:4] is
        # 0 without ESN (seq < 2^32); inbound a bound method and the salt
        if self.spec.direction == m.DIR_OUT:
            self._seal = aead.encrypt
            self._salt0 = bytes(key[-4:]) + _Z4
        else:
            self._open = aead.decrypt
            self.salt = bytes(key[-4:])

    def encrypt(self, pkt):
        # Fast path (the common case, kept short for CPython): tunnel mode, no selectors, no
        # ESN, an IPv4 packet whose length field matches, no limit near. Else _encrypt().
        n = len(pkt)
        if self._fast and n > 19 and pkt[0] & 0xF0 == 0x40 and pkt[2] * 256 + pkt[3] == n:
            seq = self.seq + 1
            if seq < self._check_seq:  # below the soft sequence limit: seq < 2^32, IV[:4] is 0
                self.seq = seq
                s = seq.to_bytes(4, "big")
                hdr = self.spi_b + s
                o = self.octets + n
                self.octets = o
                if o >= self._next_o:
                    self._limits(seq)
                seal = self._seal  # a local: CPython 3.11 specializes no method call on a slot
                return 0, _join((hdr, _Z4, s, seal(self._salt0 + s, pkt + _TR4[n & 3], hdr)))
        return self._encrypt(pkt)

    def _encrypt(self, pkt):
        if self.state == _ST_HARD:
            return _R_EXPIRED
        r = self._payload_out(pkt)
        off, nh = r
        if type(nh) is not int:
            return r
        payload = pkt[off:] if off else pkt
        if self._ts and not self._ts_ok(pkt):
            self.policy += 1
            return _R_POLICY
        seq = self.seq + 1
        if seq > (_SEQ64 if self.esn else _SEQ32):
            return self._exhausted()
        self.seq = seq
        padlen = (2 - len(payload)) & 3
        trailer = _TRAILERS.get((nh << 8) | padlen) or _trailer(padlen, nh)
        iv = _pack(">II", seq >> 32, seq & 0xFFFFFFFF)
        if self.esn:
            hdr = self.spi_b + iv[4:]
            aad = self.spi_b + iv
        else:
            hdr = aad = self.spi_b + iv[4:]
        out = hdr + iv + self._seal(self._salt0[:4] + iv, payload + trailer, aad)
        self.octets += len(pkt)
        if seq >= self._check_seq or self.octets >= self._next_o:
            self._limits(seq)
        return m.P_OK, out

    def decrypt(self, pkt):
        # Fast path: no ESN, window on, tunnel mode, no selectors, a packet right of the
        # window carrying an IPv4 packet with default padding and no TFC padding. Else the
        # general path (_decrypt / _deliver), which gives the same result.
        if self._fast and len(pkt) > 53:
            seq, iv = _unpack_from(">I8s", pkt, 4)
            w = self.window
            top = w.top
            if seq > top:
                open_ = self._open  # a local, as in encrypt()
                try:
                    pt = open_(self.salt + iv, pkt[16:], pkt[:8])
                except self.backend.AuthError:
                    self.auth_fail += 1
                    return _R_AUTH
                d = seq - top
                w.bits = ((w.bits << d) | 1) & w.mask if d < w.size else 1
                w.top = seq
                # The inner IPv4 total length, then the trailer our encrypt() would put after
                # it (default padding to 4 bytes, pad length, next header 4) in one comparison:
                # it holds only if the padding is right and there is no TFC padding.
                tl = pt[2] * 256 + pt[3]
                if tl > 19 and pt[tl:] == _TR4[tl & 3] and pt[0] & 0xF0 == 0x40:
                    p = self._in_packets + 1
                    self._in_packets = p
                    o = self.octets + tl
                    self.octets = o
                    if p >= self._next_p or o >= self._next_o:
                        self._limits()
                    return 0, pt[:tl]
                return self._deliver(pt)
        return self._decrypt(pkt)

    def _decrypt(self, pkt):
        if self.state == _ST_HARD:
            return _R_EXPIRED
        if len(pkt) < 34:  # SPI, seq, IV, 2-byte trailer, ICV
            return _R_MALFORMED
        w = self.window
        seql = _unpack_from(">I", pkt, 4)[0]
        seq = w.infer(seql) if self.esn else seql
        if not w.check(seq):
            self.replay += 1
            return _R_REPLAY
        aad = self.spi_b + _pack(">II", seq >> 32, seql) if self.esn else pkt[:8]
        try:
            pt = self._open(self.salt + pkt[8:16], pkt[16:], aad)
        except self.backend.AuthError:
            self.auth_fail += 1
            return _R_AUTH
        w.update(seq)
        return self._deliver(pt)

    # ---- batches: the board's ENCRYPT and DECRYPT handlers pass each run of packets for one
    # SA in one call. The result is [encrypt(p) for p in pkts] (decrypt() likewise), packet by
    # packet: the same fast-path conditions and the general path otherwise. What a batch saves
    # is a method call and a result unpacked per packet, and the loads of the SA's constants.
    # The SA's state (sequence number, window, counters) is stored back for every packet before
    # anything can raise, as in encrypt()/decrypt(); the locals that cache thresholds are
    # reloaded after every call that may move them (_limits, the general path).
    def encrypt_batch(self, pkts):
        out = []
        append = out.append
        seal, spi_b, salt0, tr4, z4, join = self._seal, self.spi_b, self._salt0, _TR4, _Z4, _join
        seq, o = self.seq, self.octets
        lim = self._check_seq if self._fast else 0   # fast while seq < lim
        next_o = self._next_o
        for pkt in pkts:
            n = len(pkt)
            if seq + 1 < lim and n > 19 and pkt[0] & 0xF0 == 0x40 and pkt[2] * 256 + pkt[3] == n:
                seq += 1
                self.seq = seq
                o += n
                self.octets = o
                if o >= next_o:
                    self._limits(seq)
                    lim = self._check_seq if self._fast else 0
                    next_o = self._next_o
                s = seq.to_bytes(4, "big")
                hdr = spi_b + s
                append((0, join((hdr, z4, s, seal(salt0 + s, pkt + tr4[n & 3], hdr)))))
            else:
                append(self._encrypt(pkt))
                seq, o = self.seq, self.octets
                lim = self._check_seq if self._fast else 0
                next_o = self._next_o
        return out

    def decrypt_batch(self, pkts):
        out = []
        append = out.append
        open_, salt, tr4, w, auth_error = self._open, self.salt, _TR4, self.window, self.backend.AuthError
        mask, size = w.mask, w.size
        fast, next_p, next_o = self._fast, self._next_p, self._next_o
        top, bits, p, o = w.top, w.bits, self._in_packets, self.octets
        for pkt in pkts:
            if fast and len(pkt) > 53:
                seq, iv = _unpack_from(">I8s", pkt, 4)
                if seq > top:
                    try:
                        pt = open_(salt + iv, pkt[16:], pkt[:8])
                    except auth_error:
                        self.auth_fail += 1
                        append(_R_AUTH)
                        continue
                    d = seq - top
                    bits = ((bits << d) | 1) & mask if d < size else 1
                    top = seq
                    w.bits = bits
                    w.top = seq
                    tl = pt[2] * 256 + pt[3]
                    if tl > 19 and pt[tl:] == tr4[tl & 3] and pt[0] & 0xF0 == 0x40:
                        p += 1
                        o += tl
                        self._in_packets = p
                        self.octets = o
                        if p >= next_p or o >= next_o:
                            self._limits()
                            fast, next_p, next_o = self._fast, self._next_p, self._next_o
                        append((0, pt[:tl]))
                        continue
                    append(self._deliver(pt))
                else:
                    append(self._decrypt(pkt))
            else:
                append(self._decrypt(pkt))
            fast, next_p, next_o = self._fast, self._next_p, self._next_o
            top, bits, p, o = w.top, w.bits, self._in_packets, self.octets
        return out


class GcmBufSa(GcmSa):
    """ENCR_AES_GCM_16 on an IN_PLACE backend (a board): as GcmSa, one path for every packet,
    the packet built and sealed in its own buffer (EspSa._frame) or opened into one
    (_deliver_buf)."""
    __slots__ = ("_aead",)

    def _setup(self, aead, key):
        self._aead = aead
        self.salt = bytearray(key[len(key) - 4:])

    def _seal_args(self, pkt):
        """The ESP packet laid out (EspSa._frame) and its nonce and AAD: (out, seq, end, nonce,
        aad), or a (status, b"") tuple to return."""
        r = self._frame(pkt, 8, 4)
        if len(r) == 2:
            return r
        out, seq, end = r
        hi = seq >> 32
        lo = seq & 0xFFFFFFFF if hi else seq
        _pack_into(">II", out, 8, hi, lo)               # IV = the 64-bit sequence number
        nonce = _NONCE
        nonce[0:4] = self.salt
        _pack_into(">II", nonce, 4, hi, lo)
        if self.esn:                                    # AAD: SPI || seq-hi || seq-lo (§5)
            aad = _AAD12
            aad[0:4] = self.spi_b
            _pack_into(">II", aad, 4, hi, lo)
        else:                                           # SPI || seq
            aad = _AAD8
            aad[0:4] = self.spi_b
            _pack_into(">I", aad, 4, lo)
        return out, seq, end, nonce, aad

    def encrypt(self, pkt):
        r = self._seal_args(pkt)
        if len(r) == 2:
            return r
        out, seq, end, nonce, aad = r
        self._aead.seal_into(nonce, aad, out, 16, end)
        return self._sealed(pkt, seq, out)

    def _open_args(self, pkt):
        """The checks before the ICV (RFC 4303 §3.4), the nonce, the AAD and the plaintext's
        buffer: (seq, nonce, aad, pt, hl), or a (status, b"") tuple to return."""
        if self.state == _ST_HARD:
            return _R_EXPIRED
        n = len(pkt)
        if n < 34:  # SPI, seq, IV, 2-byte trailer, ICV
            return _R_MALFORMED
        seq = self._seq_in(pkt)
        if type(seq) is tuple:
            return seq
        nonce = _NONCE
        nonce[0:4] = self.salt
        for i in range(8):
            nonce[4 + i] = pkt[8 + i]
        if self.esn:
            aad = _AAD12
            aad[0:4] = self.spi_b
            _pack_into(">I", aad, 4, seq >> 32)
            for i in range(4):
                aad[8 + i] = pkt[4 + i]
        else:
            aad = _AAD8
            for i in range(8):
                aad[i] = pkt[i]
        hl = self._room()
        return seq, nonce, aad, bytearray(hl + n - 32), hl

    def decrypt(self, pkt):
        r = self._open_args(pkt)
        if len(r) == 2:
            return r
        seq, nonce, aad, pt, hl = r
        try:
            self._aead.open_into(nonce, aad, pkt, 16, len(pkt) - 16, pt, hl)
        except self.backend.AuthError:
            self.auth_fail += 1
            return _R_AUTH
        self.window.update(seq)
        return self._deliver_buf(pt, hl)

    def encrypt_batch(self, pkts):
        return [self.encrypt(p) for p in pkts]

    def decrypt_batch(self, pkts):
        return [self.decrypt(p) for p in pkts]

    def wipe(self):
        EspSa.wipe(self)
        self._aead.wipe()
        salt = self.salt
        for i in range(4):
            salt[i] = 0


class _ChaChaKey:
    """ENCR_CHACHA20_POLY1305 (RFC 7634 §2) where GCM has AES: a 32-byte key and a 4-byte salt
    from KEYMAT, the rest of GcmSa (nonce = salt || IV, IV = the 64-bit sequence number, AAD as
    RFC 4106 §5, padding to 4 bytes, 16-byte ICV) unchanged."""
    __slots__ = ()

    @staticmethod
    def _check_key(key):
        if len(key) != CHACHA_KEY:
            raise UnsupportedSa("ChaCha20-Poly1305 key must be 32 bytes plus a 4-byte salt")

    @staticmethod
    def _make_aead(backend, key):
        return backend.chacha20_poly1305(key)


class ChaChaSa(_ChaChaKey, GcmSa):
    __slots__ = ()


class ChaChaBufSa(_ChaChaKey, GcmBufSa):
    """ChaCha20-Poly1305 on an IN_PLACE backend (a board), where it runs in Python: a packet
    costs ~0.23 s on an RP2040, so the board works on it in slices (firmware/board.py): begin_*()
    checks, lays out and starts the packet (None: resume() has the rest; else the result), then
    resume() does about a slice of it per call (None until the result). One packet at a time;
    the result is encrypt()'s / decrypt()'s."""
    __slots__ = ("_pend",)
    sliced = True

    def begin_encrypt(self, pkt):
        r = self._seal_args(pkt)
        if len(r) == 2:
            return r
        out, seq, end, nonce, aad = r
        self._aead.seal_begin(nonce, aad, out, 16, end)
        self._pend = (pkt, seq, out)
        return None

    def begin_decrypt(self, pkt):
        r = self._open_args(pkt)
        if len(r) == 2:
            return r
        seq, nonce, aad, pt, hl = r
        self._aead.open_begin(nonce, aad, pkt, 16, len(pkt) - 16, pt, hl)
        self._pend = (None, seq, pt, hl)
        return None

    def resume(self):
        p = self._pend
        try:
            if not self._aead.step_slice():
                return None
        except self.backend.AuthError:
            self._pend = None
            self.auth_fail += 1
            return _R_AUTH
        self._pend = None
        if p[0] is not None:
            return self._sealed(p[0], p[1], p[2])
        self.window.update(p[1])
        return self._deliver_buf(p[2], p[3])

    def wipe(self):
        GcmBufSa.wipe(self)
        self._pend = None


class CbcHmacSa(EspSa):
    """ENCR_AES_CBC (RFC 3602: 16-byte IV, padding to 16) with AUTH_HMAC_SHA2_256_128 (RFC
    4868: 32-byte key, ICV = first 16 bytes of HMAC-SHA-256 over SPI..ciphertext, with seq-hi
    appended for the computation only under ESN, RFC 4303 §2.2.1), or _384_192 / _512_256
    (48 / 64-byte keys, 24 / 32-byte ICVs) where the backend has the hash. The IV is
    E_K(0^64 || seq) (module docstring); one CBC call makes it and encrypts the packet: CBC
    under a zero IV over (0^64 || seq) || payload gives E_K(0^64 || seq), then the payload
    encrypted with that IV, which is the ESP layout IV || ciphertext. The same path on every
    backend."""
    __slots__ = ("cbc", "icv", "mac")

    def __init__(self, spec, backend):
        d = INTEGS.get(spec.integ)
        if d is None or d[0] not in backend.HASHES:
            raise UnsupportedSa("AES-CBC with integrity transform %d: not on this board" % spec.integ)
        name, klen, icv = d
        if len(spec.encr_key) * 8 not in KEY_BITS:
            raise UnsupportedSa("AES-CBC key must be 16 or 32 bytes")
        if len(spec.integ_key) != klen:
            raise UnsupportedSa("HMAC-%s key must be %d bytes (RFC 4868 §2.1.1)" % (name.upper(), klen))
        EspSa.__init__(self, spec, backend)
        self.cbc = backend.aes_cbc(spec.encr_key)
        self.mac = backend.hmac_sha256(spec.integ_key) if name == "sha256" else backend.hmac(name, spec.integ_key)
        self.icv = icv

    def encrypt(self, pkt):
        icv = self.icv
        r = self._frame(pkt, 16, 16, icv)
        if len(r) == 2:
            return r
        out, seq, end = r
        hi = seq >> 32
        _pack_into(">IIII", out, 8, 0, 0, hi, seq & 0xFFFFFFFF if hi else seq)
        self.cbc.encrypt_into(out, 8, end)
        self.mac.digest_into(out, 0, end, _pack(">I", hi) if self.esn else b"", out, end, icv)
        return self._sealed(pkt, seq, out)

    def decrypt(self, pkt):
        if self.state == _ST_HARD:
            return _R_EXPIRED
        n = len(pkt)
        c = self.icv
        if n < 40 + c or (n - 24 - c) % 16:  # SPI, seq, IV, >= 1 block, ICV
            return _R_MALFORMED
        seq = self._seq_in(pkt)
        if type(seq) is tuple:
            return seq
        self.mac.digest_into(pkt, 0, n - c, _pack(">I", (seq >> 32) & 0xFFFFFFFF) if self.esn else b"",
                             _ICV, 0, c)
        if not self.backend.ct_equal(_ICVV[c], memoryview(pkt)[n - c:]):
            self.auth_fail += 1
            return _R_AUTH
        self.window.update(seq)
        hl = self._room()
        k = n - 8 - c                                   # IV and ciphertext
        pt = bytearray(hl + k)
        pt[hl:] = memoryview(pkt)[8:n - c]
        self.cbc.decrypt_into(pt, hl, hl + k)
        pt[hl:hl + 16] = b""                            # what was the IV
        return self._deliver_buf(pt, hl)

    def wipe(self):
        EspSa.wipe(self)
        self.cbc.wipe()
        self.mac.wipe()


def new_sa(spec, backend):
    """SA factory for the SAD: UnsupportedSa for what this board cannot run."""
    if spec.encr == m.ENCR_AES_GCM_16:
        return GcmBufSa(spec, backend) if backend.IN_PLACE else GcmSa(spec, backend)
    if spec.encr == m.ENCR_CHACHA20_POLY1305:
        return ChaChaBufSa(spec, backend) if backend.IN_PLACE else ChaChaSa(spec, backend)
    if spec.encr == m.ENCR_AES_CBC:
        return CbcHmacSa(spec, backend)
    raise UnsupportedSa("transform %d" % spec.encr)


def transforms(backend):
    """The HELLO capability list: every transform with the backend that runs it (HMAC-SHA-384/512
    only where the backend's hashlib has them)."""
    out = []
    for bits in KEY_BITS:
        out.append(m.Transform(m.ENCR_AES_GCM_16, bits, m.AUTH_NONE, backend.NAME,
                               backend.speed(m.ENCR_AES_GCM_16)))
    for bits in KEY_BITS:
        out.append(m.Transform(m.ENCR_AES_CBC, bits, m.AUTH_HMAC_SHA2_256_128, backend.NAME,
                               backend.speed(m.ENCR_AES_CBC)))
    out.append(m.Transform(m.ENCR_CHACHA20_POLY1305, 256, m.AUTH_NONE, backend.NAME,
                           backend.speed(m.ENCR_CHACHA20_POLY1305)))
    for integ in (m.AUTH_HMAC_SHA2_384_192, m.AUTH_HMAC_SHA2_512_256):
        if INTEGS[integ][0] in backend.HASHES:
            for bits in KEY_BITS:
                out.append(m.Transform(m.ENCR_AES_CBC, bits, integ, backend.NAME, backend.speed(m.ENCR_AES_CBC)))
    return out


def make_board(profile, now, reset_cause=m.RESET_POWER_ON, backend=None, random_bytes=None):
    """A board core running this ESP engine. The backend is `backend` (a name), else the
    profile's "crypto" key, else the best this runtime has (firmware/crypto/__init__.py)."""
    be = crypto.load(backend or (profile or {}).get("crypto"))
    g = getattr(be, "gcm", None)
    if g is not None and sys.implementation.name == "micropython":
        g.reserve()         # GHASH's 8 KB tables, before the heap fragments

    def factory(spec):
        return new_sa(spec, be)

    return Board(profile, now, random_bytes=random_bytes, reset_cause=reset_cause,
                 sa_factory=factory, transforms=transforms(be), features=FEATURES)
