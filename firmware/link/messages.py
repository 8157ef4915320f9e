"""Message bodies of the host<->board link protocol (the one implementation; the host imports it).

Requests go host -> board with a sequence number; the board answers with the same type and seq
and FLAG_REPLY, and every reply body starts with a status byte. Events go board -> host with
FLAG_EVENT. A board that boots announces itself with an unsolicited HELLO event.

Every decoder checks lengths and counts before it allocates, and raises MessageError on
anything malformed; callers answer BAD_REQUEST (board) or drop and count (host).
Integers are big-endian. Addresses are (ip bytes of length 4 or 16, port) or None.
"""
import struct

# ---- message types -------------------------------------------------------------------------
HELLO = 0x01         # request: HelloRequest; reply and boot event: Hello
HEARTBEAT = 0x02     # request: empty; reply: HeartbeatAck
SA_ADD = 0x10        # request: SaSpec; reply: SadReply
SA_DEL = 0x11        # request: SaRef; reply: SadReply
SA_FLUSH = 0x12      # request: empty; reply: SadReply
SA_STATS = 0x13      # request: StatsRequest; reply: StatsReply
ENCRYPT = 0x20       # request: [(spi, plaintext packet)]; reply: [(status, ESP packet)]
DECRYPT = 0x21       # request: [(source address, UDP payload)]; reply: [(status, spi, packet)]
RESET = 0x30         # request: empty; reply: status, then the board resets
COUNTERS = 0x31      # request: empty; reply: named counters
EV_UNKNOWN_SPI = 0x40  # event: UnknownSpi (aggregated, rate limited on the board)
EV_SA_EXPIRE = 0x41    # event: SaExpire (soft or hard lifetime, sequence number exhausted)
EV_FLUSHED = 0x42      # event: Flushed (the board emptied its SAD on its own, e.g. host silence)

NAMES = {HELLO: "HELLO", HEARTBEAT: "HEARTBEAT", SA_ADD: "SA_ADD", SA_DEL: "SA_DEL",
         SA_FLUSH: "SA_FLUSH", SA_STATS: "SA_STATS", ENCRYPT: "ENCRYPT", DECRYPT: "DECRYPT",
         RESET: "RESET", COUNTERS: "COUNTERS", EV_UNKNOWN_SPI: "UNKNOWN_SPI",
         EV_SA_EXPIRE: "SA_EXPIRE", EV_FLUSHED: "FLUSHED"}

# Requests that change the SAD: their replies carry the new SAD generation.
SAD_CHANGING = (SA_ADD, SA_DEL, SA_FLUSH)

# ---- reply status (first byte of every reply body) -------------------------------------------
OK = 0
BAD_REQUEST = 1
UNSUPPORTED = 2   # message type, transform or attribute this board does not do
SAD_FULL = 3
EXISTS = 4        # SA_ADD of an (spi, dir) already installed
NOT_FOUND = 5
TOO_BIG = 6       # reply would not fit a frame / batch larger than max_batch
INTERNAL = 7
BUSY = 8          # data request refused at once: the board's data queue is full

STATUS_NAMES = {OK: "OK", BAD_REQUEST: "BAD_REQUEST", UNSUPPORTED: "UNSUPPORTED",
                SAD_FULL: "SAD_FULL", EXISTS: "EXISTS", NOT_FOUND: "NOT_FOUND",
                TOO_BIG: "TOO_BIG", INTERNAL: "INTERNAL", BUSY: "BUSY"}

# Data-path requests: the board queues them and works on them between looks at the link, so
# control requests (heartbeats, SA commands) are answered first (docs/link-protocol.md).
DATA_TYPES = (ENCRYPT, DECRYPT)

# ---- per-packet status inside ENCRYPT/DECRYPT replies ----------------------------------------
P_OK = 0
P_UNKNOWN_SPI = 1   # no SA with this SPI (reported to the host as EV_UNKNOWN_SPI, rate limited)
P_AUTH_FAIL = 2     # ICV did not verify (RFC 4303 §3.4.4)
P_REPLAY = 3        # duplicate or left of the anti-replay window (RFC 4303 §3.4.3)
P_MALFORMED = 4     # too short, bad padding, bad next header
P_EXPIRED = 5       # hard lifetime reached or sequence number space exhausted (RFC 4303 §3.3.3)
P_NOT_ESP = 6       # UDP payload with the non-ESP marker: IKE on port 4500 (RFC 3948 §2.2)
P_KEEPALIVE = 7     # NAT-keepalive 0xFF (RFC 3948 §2.3): ignored
P_TOO_BIG = 8
P_POLICY = 9        # decrypted inner packet outside the SA's traffic selectors (RFC 4301 §5.2)
P_UNSUPPORTED = 10
P_DUMMY = 11        # authentic dummy packet, next header 59 (RFC 4303 §2.6): nothing to deliver

# ---- SA directions and modes -----------------------------------------------------------------
DIR_IN = 0
DIR_OUT = 1
MODE_TUNNEL = 0
MODE_TRANSPORT = 1

# SaSpec.flags
SAF_ESN = 0x01        # extended sequence numbers (RFC 4303 §2.2.1)
SAF_UDP_ENCAP = 0x02  # ESP-in-UDP (RFC 3948)

# Hello.features
FEAT_ESN = 0x01
FEAT_UDP_ENCAP = 0x02
FEAT_TUNNEL = 0x04
FEAT_TRANSPORT = 0x08
FEAT_BATCH = 0x10
FEAT_LINK_AUTH = 0x80

# Hello.reset_cause (machine.reset_cause() mapped to stable numbers)
RESET_UNKNOWN = 0
RESET_POWER_ON = 1
RESET_HARD = 2
RESET_WDT = 3
RESET_DEEPSLEEP = 4
RESET_SOFT = 5
RESET_COMMAND = 6   # the host sent RESET
RESET_SIM = 7       # simulator control channel
RESET_CRASH = 8     # the firmware failed and reset the board itself (firmware/main.py)

# Transform ids are IKEv2's (RFC 7296 §3.3.2 / IANA), so the host matches proposals directly.
ENCR_AES_CBC = 12
ENCR_AES_GCM_16 = 20
ENCR_CHACHA20_POLY1305 = 28     # RFC 7634
AUTH_NONE = 0
AUTH_HMAC_SHA2_256_128 = 12
AUTH_HMAC_SHA2_384_192 = 13     # RFC 4868
AUTH_HMAC_SHA2_512_256 = 14

# Transform.speed: how the board's backend does it
SPEED_SLOW = 0    # pure Python
SPEED_FAST = 1    # C library / cryptolib
SPEED_HW = 2      # hardware engine

# EV_SA_EXPIRE reasons
EXP_BYTES = 1
EXP_PACKETS = 2
EXP_SEQ = 3

# EV_FLUSHED reasons
FLUSH_HOST_SILENCE = 1


class MessageError(ValueError):
    pass


# ---- primitive reader / writer ---------------------------------------------------------------
class Reader:
    """Bounds-checked cursor over a body."""

    def __init__(self, data):
        # a view of anything but bytes: each field is copied out of it once (the body of a
        # frame the board decoded is a view of a buffer the next frame overwrites)
        self.data = data if type(data) is bytes else memoryview(data)
        self.pos = 0

    def take(self, n):
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise MessageError("body truncated")
        b = self.data[self.pos:end]
        self.pos = end
        return b if type(b) is bytes else bytes(b)

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        hi, lo = struct.unpack(">II", self.take(8))
        return (hi << 32) | lo

    def str8(self):
        b = self.take(self.u8())
        try:
            return b.decode()
        except Exception:
            raise MessageError("string is not UTF-8")

    def bytes16(self):
        return self.take(self.u16())

    def addr(self):
        fam = self.u8()
        if fam == 0:
            return None
        if fam == 4:
            ip = self.take(4)
        elif fam == 6:
            ip = self.take(16)
        else:
            raise MessageError("bad address family")
        return (ip, self.u16())

    def count(self, limit):
        n = self.u16()
        if n > limit:
            raise MessageError("count %d exceeds %d" % (n, limit))
        return n

    def remaining(self):
        return len(self.data) - self.pos

    def end(self):
        if self.pos != len(self.data):
            raise MessageError("trailing bytes")


def w_u64(v):
    return struct.pack(">II", (v >> 32) & 0xFFFFFFFF, v & 0xFFFFFFFF)


def w_str8(s):
    b = s.encode()
    if len(b) > 255:
        raise MessageError("string too long")
    return bytes((len(b),)) + b


def w_addr(a):
    if a is None:
        return b"\x00"
    ip, port = a
    if len(ip) == 4:
        return b"\x04" + bytes(ip) + struct.pack(">H", port)
    if len(ip) == 16:
        return b"\x06" + bytes(ip) + struct.pack(">H", port)
    raise MessageError("address must be 4 or 16 bytes")


def status_of(body):
    """The status byte of a reply body (BAD_REQUEST for an empty body)."""
    return body[0] if body else BAD_REQUEST


# ---- HELLO -----------------------------------------------------------------------------------
class Transform:
    """One ESP transform the board can run, with the backend that runs it."""

    def __init__(self, encr, key_bits, integ=AUTH_NONE, backend="", speed=SPEED_SLOW):
        self.encr = encr
        self.key_bits = key_bits
        self.integ = integ
        self.backend = backend
        self.speed = speed

    def key(self):
        return (self.encr, self.key_bits, self.integ)

    def __eq__(self, other):
        return isinstance(other, Transform) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "Transform(%d, %d, %d, %r, %d)" % (self.encr, self.key_bits, self.integ, self.backend, self.speed)


class Hello:
    """Board identity and capabilities; boot_id is random per boot, so a reset shows as a new id."""

    def __init__(self, boot_id, board_id="", fw_version="", reset_cause=RESET_UNKNOWN, max_sas=0,
                 max_frame=0, max_batch=0, host_silence_ms=0, features=0, transforms=None,
                 reply_cache=0):
        self.boot_id = bytes(boot_id)
        self.board_id = board_id
        self.fw_version = fw_version
        self.reset_cause = reset_cause
        self.max_sas = max_sas
        self.max_frame = max_frame
        self.max_batch = max_batch
        self.host_silence_ms = host_silence_ms
        self.features = features
        self.transforms = transforms if transforms is not None else []
        self.reply_cache = reply_cache  # the host keeps fewer retryable requests in flight

    def __eq__(self, other):
        return isinstance(other, Hello) and self.__dict__ == other.__dict__

    def encode(self):
        if len(self.boot_id) != 8:
            raise MessageError("boot id must be 8 bytes")
        out = bytearray(self.boot_id)
        out += struct.pack(">BHHHIHH", self.reset_cause, self.max_sas, self.max_frame, self.max_batch,
                           self.host_silence_ms, self.features, self.reply_cache)
        out += w_str8(self.board_id) + w_str8(self.fw_version)
        out.append(len(self.transforms))
        for t in self.transforms:
            out += struct.pack(">HHHB", t.encr, t.key_bits, t.integ, t.speed) + w_str8(t.backend)
        return bytes(out)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        h = cls(r.take(8))
        h.reset_cause = r.u8()
        h.max_sas = r.u16()
        h.max_frame = r.u16()
        h.max_batch = r.u16()
        h.host_silence_ms = r.u32()
        h.features = r.u16()
        h.reply_cache = r.u16()
        h.board_id = r.str8()
        h.fw_version = r.str8()
        n = r.u8()
        for _ in range(n):
            encr, bits, integ, speed = r.u16(), r.u16(), r.u16(), r.u8()
            h.transforms.append(Transform(encr, bits, integ, r.str8(), speed))
        r.end()
        return h


def encode_hello_request(session):
    """HELLO request: the host's session id (8 bytes). A new session empties the reply cache."""
    if len(session) != 8:
        raise MessageError("session id must be 8 bytes")
    return bytes(session)


def decode_hello_request(body):
    r = Reader(body)
    s = r.take(8)
    r.end()
    return s


# ---- HEARTBEAT -------------------------------------------------------------------------------
class HeartbeatAck:
    """What the host checks against its books: boot id, SA count, SAD generation."""

    def __init__(self, boot_id, uptime_ms=0, sa_count=0, sad_gen=0, flushes=0, link_errors=0):
        self.boot_id = bytes(boot_id)
        self.uptime_ms = uptime_ms
        self.sa_count = sa_count
        self.sad_gen = sad_gen
        self.flushes = flushes
        self.link_errors = link_errors

    def __eq__(self, other):
        return isinstance(other, HeartbeatAck) and self.__dict__ == other.__dict__

    def encode(self):
        return (self.boot_id + w_u64(self.uptime_ms)
                + struct.pack(">HIHI", self.sa_count, self.sad_gen, self.flushes, self.link_errors))

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        a = cls(r.take(8), r.u64(), r.u16(), r.u32(), r.u16(), r.u32())
        r.end()
        return a


# ---- SA_ADD / SA_DEL / SA_FLUSH ----------------------------------------------------------------
# SaSpec is a TLV list: type(1) len(2) value. Types < 0x80 are critical: a board that does not
# know one answers UNSUPPORTED. Types >= 0x80 may be ignored.
A_SPI = 1
A_DIR = 2
A_ENCR = 3
A_ENCR_KEY = 4      # cipher key; for AES-GCM (RFC 4106 §8.1) the 4-byte salt follows the key
A_INTEG = 5
A_INTEG_KEY = 6
A_MODE = 7
A_FLAGS = 8
A_REPLAY_WINDOW = 9
A_SOFT_BYTES = 10
A_HARD_BYTES = 11
A_SOFT_PACKETS = 12
A_HARD_PACKETS = 13
A_SRC = 14          # our address (tunnel endpoint / UDP encap), for either direction
A_DST = 15          # the peer's address, for either direction; transport mode needs both
A_REQID = 16        # host's Child SA handle, echoed in events
A_TS_LOCAL = 17     # traffic selectors: repeated (start ip, end ip, proto, start port, end port)
A_TS_REMOTE = 18
A_INITIAL_SEQ = 19  # first outbound sequence number minus one (testing wrap; default 0)

MAX_KEY = 64
MAX_TS = 8
MAX_REPLAY_WINDOW = 1024


def w_ts(sels):
    out = bytearray()
    for (start, end, proto, pstart, pend) in sels:
        if len(start) != len(end) or len(start) not in (4, 16):
            raise MessageError("bad traffic selector")
        out.append(len(start))
        out += bytes(start) + bytes(end) + struct.pack(">BHH", proto, pstart, pend)
    return bytes(out)


def _check_ts(value):
    """Checks the wire form of a selector list (what w_ts makes) without decoding it."""
    i, n, k = 0, len(value), 0
    while i < n:
        if k >= MAX_TS:
            raise MessageError("too many traffic selectors")
        a = value[i]
        if a not in (4, 16):
            raise MessageError("bad traffic selector")
        i += 2 * a + 6
        if i > n:
            raise MessageError("body truncated")
        k += 1


def _r_ts(value):
    r = Reader(value)
    sels = []
    while r.remaining():
        if len(sels) >= MAX_TS:
            raise MessageError("too many traffic selectors")
        n = r.u8()
        if n not in (4, 16):
            raise MessageError("bad traffic selector")
        start, end = r.take(n), r.take(n)
        proto, pstart, pend = r.u8(), r.u16(), r.u16()
        sels.append((start, end, proto, pstart, pend))
    return sels


def _check_addr(value):
    """Checks the wire form of an address (what w_addr makes); False for family 0 (none)."""
    n = len(value)
    if not n:
        raise MessageError("body truncated")
    fam = value[0]
    want = 1 if fam == 0 else 7 if fam == 4 else 19 if fam == 6 else 0
    if not want:
        raise MessageError("bad address family")
    if n != want:
        raise MessageError("body truncated" if n < want else "trailing bytes")
    return fam != 0


def _tlv(t, v):
    return struct.pack(">BH", t, len(v)) + v


class SaSpec:
    """Everything the board needs to run one unidirectional ESP SA.

    The defaults are class attributes and __init__ stores only what differs from them: a board
    keeps one SaSpec per SA, and on MicroPython every instance attribute is a slot in the
    instance's hash table (8 bytes, the table growing in steps), so a plain tunnel SA's spec
    holds 4-7 attributes instead of 19, and no empty selector lists (issue 7: 64 SAs in 64 KB).
    Reading an attribute gives the same value either way.

    Addresses and traffic selectors are kept in their wire form: the TLVs A_TS_LOCAL,
    A_TS_REMOTE, A_SRC and A_DST (those present, in this order: the data path reads the
    selectors) as they are on the wire, one after the other in one bytes object (`wire_tlvs`,
    empty when there are none). On a board that is one object of ~60 bytes where the tuples
    of bytes and ints took ~350 (two addresses, one selector each way).
    `src`, `dst`, `ts_local` and `ts_remote` read the same as before ((ip, port) or None, a
    list of (start, end, proto, start port, end port)) and are decoded at each read; the
    board's ESP engine matches packets against the wire form itself (esp.ts_ok)."""
    integ = AUTH_NONE
    integ_key = b""
    mode = MODE_TUNNEL
    flags = 0
    replay_window = 64
    soft_bytes = 0
    hard_bytes = 0
    soft_packets = 0
    hard_packets = 0
    reqid = 0
    initial_seq = 0
    wire_tlvs = b""
    FIELDS = ("spi", "direction", "encr", "encr_key", "integ", "integ_key", "mode", "flags",
              "replay_window", "soft_bytes", "hard_bytes", "soft_packets", "hard_packets", "src", "dst",
              "reqid", "ts_local", "ts_remote", "initial_seq")

    def __init__(self, spi, direction, encr, encr_key, integ=AUTH_NONE, integ_key=b"",
                 mode=MODE_TUNNEL, flags=0, replay_window=64, soft_bytes=0, hard_bytes=0,
                 soft_packets=0, hard_packets=0, src=None, dst=None, reqid=0,
                 ts_local=None, ts_remote=None, initial_seq=0):
        """Raises MessageError for an address or selector that has no wire form."""
        self.spi = spi
        self.direction = direction
        self.encr = encr
        self.encr_key = bytearray(encr_key)      # bytearrays: the board zeroes them (SaRecord.wipe)
        if integ != AUTH_NONE:
            self.integ = integ
        if integ_key:
            self.integ_key = bytearray(integ_key)
        if mode != MODE_TUNNEL:
            self.mode = mode
        if flags:
            self.flags = flags
        if replay_window != 64:
            self.replay_window = replay_window
        if soft_bytes:
            self.soft_bytes = soft_bytes
        if hard_bytes:
            self.hard_bytes = hard_bytes
        if soft_packets:
            self.soft_packets = soft_packets
        if hard_packets:
            self.hard_packets = hard_packets
        if reqid:
            self.reqid = reqid
        if initial_seq:
            self.initial_seq = initial_seq
        x = b""
        if ts_local:
            x += _tlv(A_TS_LOCAL, w_ts(ts_local))
        if ts_remote:
            x += _tlv(A_TS_REMOTE, w_ts(ts_remote))
        if src is not None:
            x += _tlv(A_SRC, w_addr(src))
        if dst is not None:
            x += _tlv(A_DST, w_addr(dst))
        if x:
            self.wire_tlvs = x

    def wire(self, t):
        """The value of attribute `t` (A_SRC, A_DST, A_TS_LOCAL or A_TS_REMOTE) as it is on the
        wire, or None if the spec has none."""
        x = self.wire_tlvs
        i, n = 0, len(x)
        while i < n:
            j = i + 3 + ((x[i + 1] << 8) | x[i + 2])
            if x[i] == t:
                return x[i + 3:j]
            i = j
        return None

    @property
    def src(self):
        v = self.wire(A_SRC)
        return None if v is None else Reader(v).addr()

    @property
    def dst(self):
        v = self.wire(A_DST)
        return None if v is None else Reader(v).addr()

    @property
    def ts_local(self):
        v = self.wire(A_TS_LOCAL)
        return [] if v is None else _r_ts(v)

    @property
    def ts_remote(self):
        v = self.wire(A_TS_REMOTE)
        return [] if v is None else _r_ts(v)

    def _values(self):
        return [getattr(self, f) for f in self.FIELDS]

    def __eq__(self, other):
        return isinstance(other, SaSpec) and self._values() == other._values()

    def __repr__(self):
        # never print key material
        return "SaSpec(spi=0x%08x, dir=%s, encr=%d, integ=%d, mode=%d, flags=0x%x)" % (
            self.spi, "out" if self.direction == DIR_OUT else "in", self.encr, self.integ,
            self.mode, self.flags)

    def encode(self):
        out = bytearray()

        def tlv(t, v):
            out.extend(struct.pack(">BH", t, len(v)))
            out.extend(v)

        tlv(A_SPI, struct.pack(">I", self.spi))
        tlv(A_DIR, bytes((self.direction,)))
        tlv(A_ENCR, struct.pack(">H", self.encr))
        tlv(A_ENCR_KEY, self.encr_key)
        if self.integ:
            tlv(A_INTEG, struct.pack(">H", self.integ))
            tlv(A_INTEG_KEY, self.integ_key)
        tlv(A_MODE, bytes((self.mode,)))
        tlv(A_FLAGS, struct.pack(">H", self.flags))
        tlv(A_REPLAY_WINDOW, struct.pack(">H", self.replay_window))
        for t, v in ((A_SOFT_BYTES, self.soft_bytes), (A_HARD_BYTES, self.hard_bytes),
                     (A_SOFT_PACKETS, self.soft_packets), (A_HARD_PACKETS, self.hard_packets),
                     (A_INITIAL_SEQ, self.initial_seq)):
            if v:
                tlv(t, w_u64(v))
        # A_SRC, A_DST, A_REQID, A_TS_LOCAL, A_TS_REMOTE, in type order as always: the addresses
        # and the selectors from their wire form (which holds the selectors first)
        x = self.wire_tlvs
        i = 0
        while i < len(x) and x[i] > A_REQID:
            i += 3 + ((x[i + 1] << 8) | x[i + 2])
        out.extend(x[i:])
        if self.reqid:
            tlv(A_REQID, struct.pack(">I", self.reqid))
        out.extend(x[:i])
        return bytes(out)

    @classmethod
    def decode(cls, body):
        """Raises MessageError (malformed) or UnsupportedAttribute (critical type unknown)."""
        r = Reader(body)
        seen = {}
        while r.remaining():
            t = r.u8()
            v = r.take(r.u16())
            if t in seen:
                raise MessageError("attribute %d repeated" % t)
            seen[t] = v
        for need in (A_SPI, A_DIR, A_ENCR, A_ENCR_KEY):
            if need not in seen:
                raise MessageError("attribute %d missing" % need)

        def fixed(t, fmt, size, default):
            v = seen.get(t)
            if v is None:
                return default
            if len(v) != size:
                raise MessageError("attribute %d has length %d" % (t, len(v)))
            return struct.unpack(fmt, v)[0]

        def u64(t):
            v = seen.get(t)
            if v is None:
                return 0
            if len(v) != 8:
                raise MessageError("attribute %d has length %d" % (t, len(v)))
            return Reader(v).u64()

        spec = cls(fixed(A_SPI, ">I", 4, 0), fixed(A_DIR, ">B", 1, 0),
                   fixed(A_ENCR, ">H", 2, 0), seen[A_ENCR_KEY],
                   fixed(A_INTEG, ">H", 2, AUTH_NONE), seen.get(A_INTEG_KEY, b""),
                   fixed(A_MODE, ">B", 1, MODE_TUNNEL), fixed(A_FLAGS, ">H", 2, 0),
                   fixed(A_REPLAY_WINDOW, ">H", 2, 64),
                   u64(A_SOFT_BYTES), u64(A_HARD_BYTES), u64(A_SOFT_PACKETS), u64(A_HARD_PACKETS),
                   reqid=fixed(A_REQID, ">I", 4, 0), initial_seq=u64(A_INITIAL_SEQ))
        # addresses and selectors: checked, and kept as they came (no tuples made)
        x = b""
        for t in (A_TS_LOCAL, A_TS_REMOTE, A_SRC, A_DST):
            v = seen.get(t)
            if v is None:
                continue
            if t == A_SRC or t == A_DST:
                if not _check_addr(v):
                    continue                # family 0: no address
            else:
                _check_ts(v)
                if not v:
                    continue                # no selectors
            x += _tlv(t, v)
        if x:
            spec.wire_tlvs = x
        if spec.direction not in (DIR_IN, DIR_OUT):
            raise MessageError("bad direction")
        if spec.mode not in (MODE_TUNNEL, MODE_TRANSPORT):
            raise MessageError("bad mode")
        if len(spec.encr_key) > MAX_KEY or len(spec.integ_key) > MAX_KEY:
            raise MessageError("key too long")
        if spec.replay_window > MAX_REPLAY_WINDOW:
            raise MessageError("replay window above %d" % MAX_REPLAY_WINDOW)
        if spec.spi < 256:
            raise MessageError("SPI values 0-255 are reserved (RFC 4303 §2.1)")
        unknown = [t for t in seen if t < 0x80 and t > A_INITIAL_SEQ]
        if unknown:
            raise UnsupportedAttribute(unknown[0])
        return spec


class UnsupportedAttribute(MessageError):
    def __init__(self, attr):
        super().__init__("unsupported critical attribute %d" % attr)
        self.attr = attr


def encode_sa_ref(spi, direction):
    return struct.pack(">IB", spi, direction)


def decode_sa_ref(body):
    r = Reader(body)
    ref = (r.u32(), r.u8())
    r.end()
    return ref


class SadReply:
    """Reply to SA_ADD / SA_DEL / SA_FLUSH: the SAD's generation and size after the request."""

    def __init__(self, status, sad_gen=0, sa_count=0, removed=0):
        self.status = status
        self.sad_gen = sad_gen
        self.sa_count = sa_count
        self.removed = removed

    def __eq__(self, other):
        return isinstance(other, SadReply) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "SadReply(%s, gen=%d, count=%d, removed=%d)" % (
            STATUS_NAMES.get(self.status, self.status), self.sad_gen, self.sa_count, self.removed)

    def encode(self):
        return struct.pack(">BIHH", self.status, self.sad_gen, self.sa_count, self.removed)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        s = cls(r.u8(), r.u32(), r.u16(), r.u16())
        r.end()
        return s


# ---- SA_STATS ----------------------------------------------------------------------------------
class SaStats:
    """Per-SA counters (RFC 4303 §3.4.3 replay, §3.4.4 ICV failures)."""

    STATE_ACTIVE = 0
    STATE_SOFT_EXPIRED = 1
    STATE_HARD_EXPIRED = 2

    def __init__(self, spi, direction, state=0, packets=0, octets=0, auth_fail=0, replay=0, seq=0, reqid=0):
        self.spi = spi
        self.direction = direction
        self.state = state
        self.packets = packets
        self.octets = octets
        self.auth_fail = auth_fail
        self.replay = replay
        self.seq = seq
        self.reqid = reqid

    def __eq__(self, other):
        return isinstance(other, SaStats) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "SaStats(spi=0x%08x, dir=%d, packets=%d)" % (self.spi, self.direction, self.packets)

    SIZE = 42  # spi 4, dir 1, state 1, packets 8, octets 8, auth_fail 4, replay 4, seq 8, reqid 4

    def encode(self):
        return (struct.pack(">IBB", self.spi, self.direction, self.state) + w_u64(self.packets)
                + w_u64(self.octets) + struct.pack(">II", self.auth_fail, self.replay) + w_u64(self.seq)
                + struct.pack(">I", self.reqid))

    @classmethod
    def read(cls, r):
        return cls(r.u32(), r.u8(), r.u8(), r.u64(), r.u64(), r.u32(), r.u32(), r.u64(), r.u32())


def encode_stats_request(start=0, limit=0xFFFF):
    return struct.pack(">HH", start, limit)


def decode_stats_request(body):
    r = Reader(body)
    v = (r.u16(), r.u16())
    r.end()
    return v


class StatsReply:
    """A page of SaStats records: `total` SAs exist, `records` start at the requested index."""

    def __init__(self, status, total=0, records=None):
        self.status = status
        self.total = total
        self.records = records if records is not None else []

    def encode(self):
        out = bytearray(struct.pack(">BHH", self.status, self.total, len(self.records)))
        for rec in self.records:
            out += rec.encode()
        return bytes(out)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        status, total = r.u8(), r.u16()
        n = r.count(r.remaining() // SaStats.SIZE)
        s = cls(status, total, [SaStats.read(r) for _ in range(n)])
        r.end()
        return s


# ---- ENCRYPT / DECRYPT (batched) ---------------------------------------------------------------
def encode_encrypt_request(items):
    """items: [(spi, plaintext IP packet)]."""
    out = bytearray(struct.pack(">H", len(items)))
    for spi, pkt in items:
        out += struct.pack(">IH", spi, len(pkt))
        out += pkt
    return bytes(out)


def decode_encrypt_request(body, max_batch):
    r = Reader(body)
    n = r.count(max_batch)
    items = []
    for _ in range(n):
        spi = r.u32()
        items.append((spi, r.bytes16()))
    r.end()
    return items


def encode_encrypt_reply(items):
    """items: [(packet status, ESP packet or b"")]. One buffer of the reply's size (a bytearray):
    a board builds a frame-sized reply without growing or copying it."""
    n = 3
    for _, pkt in items:
        n += 3 + len(pkt)
    out = bytearray(n)
    struct.pack_into(">BH", out, 0, OK, len(items))
    o = 3
    for st, pkt in items:
        k = len(pkt)
        struct.pack_into(">BH", out, o, st, k)
        out[o + 3:o + 3 + k] = pkt
        o += 3 + k
    return out


def decode_encrypt_reply(body, max_batch=0xFFFF):
    """Returns (status, [(packet status, bytes)])."""
    r = Reader(body)
    status = r.u8()
    if status != OK:
        return status, []
    n = r.count(max_batch)
    items = []
    for _ in range(n):
        st = r.u8()
        items.append((st, r.bytes16()))
    r.end()
    return status, items


def encode_decrypt_request(items):
    """items: [(source address (ip bytes, port) or None, UDP payload or raw ESP)]."""
    out = bytearray(struct.pack(">H", len(items)))
    for src, pkt in items:
        out += w_addr(src)
        out += struct.pack(">H", len(pkt))
        out += pkt
    return bytes(out)


def decode_decrypt_request(body, max_batch):
    r = Reader(body)
    n = r.count(max_batch)
    items = []
    for _ in range(n):
        src = r.addr()
        items.append((src, r.bytes16()))
    r.end()
    return items


def encode_decrypt_reply(items):
    """items: [(packet status, spi, inner packet or b"")]; one buffer, as encode_encrypt_reply."""
    n = 3
    for _, _, pkt in items:
        n += 7 + len(pkt)
    out = bytearray(n)
    struct.pack_into(">BH", out, 0, OK, len(items))
    o = 3
    for st, spi, pkt in items:
        k = len(pkt)
        struct.pack_into(">BIH", out, o, st, spi, k)
        out[o + 7:o + 7 + k] = pkt
        o += 7 + k
    return out


def decode_decrypt_reply(body, max_batch=0xFFFF):
    """Returns (status, [(packet status, spi, bytes)])."""
    r = Reader(body)
    status = r.u8()
    if status != OK:
        return status, []
    n = r.count(max_batch)
    items = []
    for _ in range(n):
        st, spi = r.u8(), r.u32()
        items.append((st, spi, r.bytes16()))
    r.end()
    return status, items


# ---- COUNTERS ----------------------------------------------------------------------------------
def encode_counters_reply(counters):
    """counters: list of (name, value) pairs (a list keeps the order on MicroPython)."""
    out = bytearray(struct.pack(">BB", OK, len(counters)))
    for name, value in counters:
        out += w_str8(name) + w_u64(value)
    return bytes(out)


def decode_counters_reply(body):
    r = Reader(body)
    status = r.u8()
    if status != OK:
        return status, {}
    d = {}
    for _ in range(r.u8()):
        name = r.str8()
        d[name] = r.u64()
    r.end()
    return status, d


# ---- events ------------------------------------------------------------------------------------
class UnknownSpi:
    """ESP arrived for SPIs the board does not have (RFC 7296 §2.21.1 asks the host to tell the
    peer). Aggregated: `entries` are (spi, source address, packets); `suppressed` counts packets
    the board's token bucket kept out of events since the previous event."""

    MAX_ENTRIES = 32

    def __init__(self, entries=None, suppressed=0):
        self.entries = entries if entries is not None else []
        self.suppressed = suppressed

    def __eq__(self, other):
        return isinstance(other, UnknownSpi) and self.__dict__ == other.__dict__

    def encode(self):
        out = bytearray(struct.pack(">IB", self.suppressed, len(self.entries)))
        for spi, src, n in self.entries:
            out += struct.pack(">I", spi) + w_addr(src) + struct.pack(">I", n)
        return bytes(out)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        ev = cls(suppressed=r.u32())
        n = r.u8()
        if n > cls.MAX_ENTRIES:
            raise MessageError("too many entries")
        for _ in range(n):
            spi = r.u32()
            src = r.addr()
            ev.entries.append((spi, src, r.u32()))
        r.end()
        return ev


class SaExpire:
    """A lifetime ran out (RFC 4301 §4.4.2.1): soft asks the host to rekey, hard stops the SA."""

    def __init__(self, spi, direction, hard, reason, reqid=0):
        self.spi = spi
        self.direction = direction
        self.hard = hard
        self.reason = reason
        self.reqid = reqid

    def __eq__(self, other):
        return isinstance(other, SaExpire) and self.__dict__ == other.__dict__

    def encode(self):
        return struct.pack(">IBBBI", self.spi, self.direction, 1 if self.hard else 0, self.reason, self.reqid)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        ev = cls(r.u32(), r.u8(), bool(r.u8()), r.u8(), r.u32())
        r.end()
        return ev


class Flushed:
    """The board emptied its SAD on its own (fail closed), e.g. the host fell silent."""

    def __init__(self, reason, removed, sad_gen):
        self.reason = reason
        self.removed = removed
        self.sad_gen = sad_gen

    def __eq__(self, other):
        return isinstance(other, Flushed) and self.__dict__ == other.__dict__

    def encode(self):
        return struct.pack(">BHI", self.reason, self.removed, self.sad_gen)

    @classmethod
    def decode(cls, body):
        r = Reader(body)
        ev = cls(r.u8(), r.u16(), r.u32())
        r.end()
        return ev
