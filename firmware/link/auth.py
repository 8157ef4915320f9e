"""Link security: every frame authenticated, SA keys encrypted (docs/link-protocol.md, "Link security").

A per-board secret, the *link key* (32 bytes, provisioned by `inv flash`), is the root of it all:

    boot keys     HKDF(salt "ikeoffload link boot", link key, "boot keys")       -> h2b, b2h
    session keys  HKDF(salt Nh | Nb, link key, "ikeoffload link session")        -> h2b, b2h, enc

HKDF is RFC 5869's with HMAC-SHA-256, the one MAC every MicroPython port has in C (hashlib).
An authenticated frame carries FLAG_AUTH and, before the CRC, an 8-byte auth sequence number and a
16-byte tag, HMAC-SHA-256-128 over header, body and sequence number under its direction's key. A
receiver takes a sequence number once (an RFC 4303 §3.4.3 window of 64, firmware/replay.py), and
only after the tag verified. FLAG_ENC bodies (SA_ADD) are XORed with a keystream of
HMAC-SHA-256(enc, auth seq | block counter) before the tag is made (encrypt-then-MAC): the board
has no AES in every port (the wasm build has no cryptolib) and SA_ADD is rare, so the MAC it must
have anyway is the cipher too.

Sessions: the host's HELLO request (boot key h2b) carries a fresh nonce Nh; the board answers with
its own Nb, under the keys of the session they make, which it keeps *pending*: the session the
board had stays until a frame verifies under the pending one, which then replaces it. A replayed
HELLO therefore changes nothing but a pending session nobody can use. A board without a session
answers a frame it cannot verify with a HELLO event under the boot key b2h that echoes the
frame's tag (rate-limited by the board): the host sent that tag in its current session, so the
answer proves, now, that the board lost it. The HELLO event a board sends at boot echoes zeros:
it is a hint (a replay is possible), which the host confirms by asking at once.

Runs on CPython (HMAC from the standard library, which is OpenSSL's) and MicroPython
(firmware/crypto/hmac256.py, its padded keys kept per link key).
"""
import struct
import sys

from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.replay import ReplayWindow

KEY_LEN = 32
NONCE_LEN = 16
TAG_LEN = fr.TAG_LEN
SEQ_LEN = fr.AUTH_SEQ_LEN
WINDOW = 64
ZERO_ECHO = bytes(TAG_LEN)
# what an authenticated frame adds on the wire, at most: auth seq and tag, and COBS's byte per 254
WIRE_OVERHEAD = fr.AUTH_LEN + 1

if sys.implementation.name == "micropython":
    from firmware.crypto.hmac256 import HmacKeyed as Mac
    from firmware.crypto.hmac256 import ct_equal
else:
    import hmac as _hmac  # mpy-ok: CPython only (OpenSSL's HMAC); a board has hmac256 above

    ct_equal = _hmac.compare_digest

    class Mac:
        """HMAC-SHA-256 under one key (the standard library's, in C)."""
        __slots__ = ("_k",)

        def __init__(self, key):
            self._k = bytes(key)

        def digest(self, data, tail=b""):
            if tail:
                data = bytes(data) + tail
            return _hmac.digest(self._k, data, "sha256")

        def __repr__(self):
            return "Mac(<key hidden>)"


class KeyError_(ValueError):
    """A link key that is not 64 hex digits (32 bytes)."""


def parse_key(text):
    """The link key from its file's text: 64 hex digits (whitespace around them ignored)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode()
        except Exception:
            raise KeyError_("a link key file holds 64 hex digits, not binary data")
    t = text.strip()
    if len(t) != 2 * KEY_LEN:
        raise KeyError_("a link key is 64 hex digits, not %d characters" % len(t))
    try:
        return bytes(int(t[i:i + 2], 16) for i in range(0, len(t), 2))
    except ValueError:
        raise KeyError_("a link key is 64 hex digits")


def key_text(key):
    return "".join("%02x" % b for b in key) + "\n"


def hkdf(salt, ikm, info, length):
    """RFC 5869 with HMAC-SHA-256: Expand(Extract(salt, ikm), info, length)."""
    prk = Mac(salt).digest(ikm)
    mac = Mac(prk)
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = mac.digest(t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


def boot_keys(link_key):
    """(h2b, b2h) MAC keys of the frames outside any session: HELLO requests and HELLO events."""
    okm = hkdf(b"ikeoffload link boot", link_key, b"boot keys", 2 * KEY_LEN)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def session_keys(link_key, nh, nb):
    """(h2b MAC, b2h MAC, h2b encryption) keys of the session the nonces Nh and Nb make."""
    okm = hkdf(bytes(nh) + bytes(nb), link_key, b"ikeoffload link session", 3 * KEY_LEN)
    return okm[:KEY_LEN], okm[KEY_LEN:2 * KEY_LEN], okm[2 * KEY_LEN:]


def _u64(v):
    return struct.pack(">II", (v >> 32) & 0xFFFFFFFF, v & 0xFFFFFFFF)


def keystream_xor(mac, aseq, data):
    """data XOR HMAC(enc key, aseq(8) | i(4)) for i = 0, 1, ...: a keystream block per 32 bytes,
    never reused (the auth seq is unique per direction and session)."""
    n = len(data)
    if not n:
        return b""
    nonce = _u64(aseq)
    ks = bytearray()
    i = 0
    while len(ks) < n:
        ks += mac.digest(nonce + struct.pack(">I", i))
        i += 1
    x = int.from_bytes(bytes(data), "big") ^ int.from_bytes(bytes(ks[:n]), "big")
    return x.to_bytes(n, "big")


class Sealer:
    """The sending half of one direction: its MAC key and the next auth sequence number. A boot
    key's sealer sends sequence number 0 (its frames' freshness is proved otherwise)."""

    def __init__(self, key, counting=True):
        self.mac = Mac(key)
        self.next = 1 if counting else 0

    def seal(self, type, seq, flags, body, enc=None):
        """(wire bytes, tag) of an authenticated frame; `enc` (a Mac) encrypts a FLAG_ENC body."""
        raw = bytearray(fr.MIN_FRAME + fr.AUTH_LEN + len(body))
        n, tag = self.raw_into(raw, type, seq, flags, body, enc)
        return fr.encode_raw(memoryview(raw)[0:n]), tag

    def seal_into(self, dst, off, raw, type, seq, flags, body, enc=None):
        """seal()'s wire bytes written to dst from offset off, the frame built in `raw` (a
        bytearray of at least MIN_FRAME + AUTH_LEN + len(body) bytes); returns the offset after
        them. dst needs fr.max_wire_len(len(raw)) + 2 bytes from off. For the boards: nothing of
        the frame's size is allocated."""
        n = self.raw_into(raw, type, seq, flags, body, enc)[0]
        return fr.encode_raw_into(dst, off, raw, n)

    def raw_into(self, raw, type, seq, flags, body, enc=None):
        """The frame before its CRC (header, body, auth seq, tag) written to raw from offset 0,
        the next auth sequence number taken; returns (its length, the tag)."""
        aseq = self.next
        if aseq:
            self.next = aseq + 1
        if flags & fr.FLAG_ENC:
            if enc is None:
                raise ValueError("FLAG_ENC needs the session's encryption key")
            body = keystream_xor(enc, aseq, body)
        struct.pack_into(fr.HEADER_FMT, raw, 0, fr.VERSION, type, flags | fr.FLAG_AUTH, seq & 0xFFFF)
        n = fr.HEADER_LEN + len(body)
        raw[fr.HEADER_LEN:n] = body
        struct.pack_into(">II", raw, n, (aseq >> 32) & 0xFFFFFFFF, aseq & 0xFFFFFFFF)
        n += SEQ_LEN
        tag = self.mac.digest(memoryview(raw)[0:n])[:TAG_LEN]
        raw[n:n + TAG_LEN] = tag
        return n + TAG_LEN, tag


# Opener.open() results
OK = 0
BAD_TAG = 1
REPLAYED = 2


def frame_tag(f):
    r = f.raw
    n = len(r) - fr.CRC_LEN
    return bytes(r[n - TAG_LEN:n])


class Opener:
    """The receiving half of one direction: its MAC key and replay window (window 0: none)."""

    def __init__(self, key, window=WINDOW):
        self.mac = Mac(key)
        self.window = ReplayWindow(window) if window else None

    def open(self, f, enc=None):
        """Check a decoded FLAG_AUTH frame; on OK its body is decrypted (FLAG_ENC) in place."""
        r = f.raw
        n = len(r) - fr.CRC_LEN - TAG_LEN
        hi, lo = struct.unpack_from(">II", r, n - SEQ_LEN)
        aseq = (hi << 32) | lo
        w = self.window
        if w is not None and not w.check(aseq):
            return REPLAYED
        if not ct_equal(self.mac.digest(memoryview(r)[:n])[:TAG_LEN], bytes(r[n:n + TAG_LEN])):
            return BAD_TAG
        if w is not None:
            w.update(aseq)
        if f.flags & fr.FLAG_ENC:
            if enc is None:
                return BAD_TAG
            f.body = keystream_xor(enc, aseq, f.body)
        return OK


class Session:
    """The keys of one session and the state of both directions, for one end (`host` or not)."""

    def __init__(self, link_key, nh, nb, host):
        h2b, b2h, enc = session_keys(link_key, nh, nb)
        self.nh, self.nb = bytes(nh), bytes(nb)
        self.enc = Mac(enc)
        if host:
            self.sealer, self.opener = Sealer(h2b), Opener(b2h)
        else:
            self.sealer, self.opener = Sealer(b2h), Opener(h2b)

    def __repr__(self):
        return "Session(<keys hidden>)"


BOOT = "boot"      # seal() with the boot key (HELLO events)


class BoardAuth:
    """The board's side. open() a decoded frame (None: dropped, and counted); seal() what goes
    out. HELLO requests verify under the boot key and are answered by start() under the pending
    session they make; a frame that verifies under the pending session makes it the current one
    (`promoted` is set: the board forgets the old session's reply cache). With no session at all,
    `answer` is set to the tag of a request frame that did not verify: the board's caller answers
    with a HELLO event echoing it (rate-limited there)."""

    def __init__(self, link_key, random_bytes):
        self.key = bytes(link_key)
        self.random_bytes = random_bytes
        h2b, b2h = boot_keys(self.key)
        self.boot_in = Opener(h2b, window=0)   # replayable by design: a HELLO starts only a pending session
        self.boot_out = Sealer(b2h, counting=False)
        self.current = None
        self.pending = None
        self.promoted = False
        self.answer = None
        self.counters = {"auth_bad_tag": 0, "auth_replayed": 0, "auth_no_session": 0, "auth_sessions": 0,
                         "auth_hello_limited": 0, "auth_answers": 0, "auth_answers_limited": 0,
                         "auth_unsealed": 0}

    def open(self, f):
        c = self.counters
        if f.flags & (fr.FLAG_REPLY | fr.FLAG_EVENT):
            c["auth_bad_tag"] += 1          # a board takes requests only
            return None
        if f.type == m.HELLO:
            if len(f.body) < NONCE_LEN or self.boot_in.open(f) != OK:
                c["auth_bad_tag"] += 1
                return None
            b = f.body
            f.nonce = bytes(b[len(b) - NONCE_LEN:])
            f.body = b[:len(b) - NONCE_LEN]
            f.boot = True
            return f
        f.boot = False
        cur = self.current
        st = BAD_TAG
        if cur is not None:
            st = cur.opener.open(f, cur.enc)
            if st == OK:
                return f
        p = self.pending
        if p is not None and p.opener.open(f, p.enc) == OK:
            self.current, self.pending = p, None
            self.promoted = True
            c["auth_sessions"] += 1
            return f
        if cur is None:
            c["auth_no_session"] += 1
            self.answer = frame_tag(f)
        else:
            c["auth_replayed" if st == REPLAYED else "auth_bad_tag"] += 1
        return None

    def start(self, nh):
        """The pending session for a HELLO request's nonce (the same one for a retried HELLO)."""
        p = self.pending
        if p is None or p.nh != bytes(nh):
            p = self.pending = Session(self.key, nh, bytes(self.random_bytes(NONCE_LEN)), False)
        return p

    def seal(self, type, seq, flags, body, sess=None):
        """Wire bytes under `sess` (None: the current session; BOOT: the boot key), or None when
        there is no such session (the frame is dropped and counted)."""
        if sess == BOOT:
            return self.boot_out.seal(type, seq, flags, body)[0]
        if sess is None:
            sess = self.current
            if sess is None:
                self.counters["auth_unsealed"] += 1
                return None
        return sess.sealer.seal(type, seq, flags, body)[0]

    def seal_into(self, dst, off, raw, type, seq, flags, body, sess=None):
        """seal() into the caller's buffers (Sealer.seal_into): the offset after the wire bytes
        in dst, or None when there is no such session (dropped, counted)."""
        if sess == BOOT:
            return self.boot_out.seal_into(dst, off, raw, type, seq, flags, body)
        if sess is None:
            sess = self.current
            if sess is None:
                self.counters["auth_unsealed"] += 1
                return None
        return sess.sealer.seal_into(dst, off, raw, type, seq, flags, body)

    def dropped(self):
        c = self.counters
        return c["auth_bad_tag"] + c["auth_replayed"] + c["auth_no_session"] + c["auth_hello_limited"]


class HostAuth:
    """The host's side. seal() requests (HELLO under the boot key: its body must end with a
    nonce from new_nonce()); open() what the board sends: a HELLO reply (with the nonce of the
    request it answers) makes the session current; a HELLO event gets `proof` (True: it echoes a
    frame this session sent, so the board lost the session just now; False: a boot announcement,
    which may be a replay)."""

    RECENT = 256      # tags of our own frames a proof may echo

    def __init__(self, link_key, random_bytes=None):
        if random_bytes is None:
            from firmware.rand import urandom as random_bytes
        self.key = bytes(link_key)
        self.random_bytes = random_bytes
        h2b, b2h = boot_keys(self.key)
        self.boot_out = Sealer(h2b, counting=False)
        self.boot_in = Opener(b2h, window=0)
        self.current = None
        self._tags = {}
        self._order = []
        self.counters = {"auth_bad_tag": 0, "auth_replayed": 0, "auth_stale_echo": 0, "auth_sessions": 0,
                         "auth_no_session": 0}

    def new_nonce(self):
        return bytes(self.random_bytes(NONCE_LEN))

    def seal(self, type, seq, flags, body):
        if type == m.HELLO:
            return self.boot_out.seal(type, seq, flags, body)[0]
        s = self.current
        if s is None:
            self.counters["auth_no_session"] += 1
            return None
        wire, tag = s.sealer.seal(type, seq, flags, body, s.enc)
        self._tags[tag] = True
        self._order.append(tag)
        if len(self._order) > self.RECENT:
            self._tags.pop(self._order.pop(0), None)
        return wire

    def open(self, f, nonce=None):
        c = self.counters
        if f.type == m.HELLO and f.flags & fr.FLAG_EVENT:
            if len(f.body) < TAG_LEN or self.boot_in.open(f) != OK:
                c["auth_bad_tag"] += 1
                return None
            echo = bytes(f.body[:TAG_LEN])
            f.body = f.body[TAG_LEN:]
            if echo == ZERO_ECHO:
                f.proof = False
            elif echo in self._tags:
                f.proof = True
            else:
                c["auth_stale_echo"] += 1     # an old answer, replayed
                return None
            return f
        if f.type == m.HELLO and f.flags & fr.FLAG_REPLY:
            if nonce is None or len(f.body) < NONCE_LEN:
                c["auth_bad_tag"] += 1
                return None
            s = Session(self.key, nonce, f.body[:NONCE_LEN], True)
            if s.opener.open(f) != OK:
                c["auth_bad_tag"] += 1
                return None
            self.current = s
            self._tags, self._order = {}, []
            c["auth_sessions"] += 1
            f.body = f.body[NONCE_LEN:]
            return f
        s = self.current
        if s is None:
            c["auth_no_session"] += 1
            return None
        st = s.opener.open(f)
        if st == OK:
            return f
        c["auth_replayed" if st == REPLAYED else "auth_bad_tag"] += 1
        return None

    def dropped(self):
        c = self.counters
        return c["auth_bad_tag"] + c["auth_replayed"] + c["auth_stale_echo"] + c["auth_no_session"]
