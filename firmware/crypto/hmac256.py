"""HMAC-SHA-256 (RFC 2104) on hashlib.sha256, for runtimes without an hmac module (MicroPython).

    mac.digest(data, tail=b"")                       -> 32 bytes of HMAC(key, data || tail)
    mac.digest_into(buf, off, end, tail, out, ooff, n)  HMAC(key, buf[off:end] || tail)[:n]
                                                        written to out[ooff:ooff + n]

`tail` lets ESN append seq-hi without a copy (RFC 4303 §3.3.2.1). Where sha256 objects have
copy() (CPython) the keyed inner and outer states are kept and copied per message. MicroPython's
have none, so each MAC hashes the 64-byte padded keys again; those are derived per message from
the key into one module buffer (no big ints, nothing per SA but the key, which is the caller's
object, not a copy: the SA zeroes it when it is deleted).
"""
import hashlib

_sha256 = hashlib.sha256
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def _key(key):
    """The key (bytes or bytearray, not copied) of at most 64 bytes (RFC 2104 §2: hashed if
    longer)."""
    key = key if type(key) in (bytes, bytearray) else bytes(key)
    return _sha256(key).digest() if len(key) > 64 else key


def _pads(key):
    """(K ^ ipad, K ^ opad) with K the key zero-padded to the 64-byte block."""
    k = int.from_bytes(key, "big") << (8 * (64 - len(key)))
    return (k ^ _IPAD).to_bytes(64, "big"), (k ^ _OPAD).to_bytes(64, "big")


class HmacCopy:
    """CPython: the keyed states, copied per message."""
    __slots__ = ("_inner", "_outer")

    def __init__(self, key):
        ipad, opad = _pads(_key(key))
        self._inner = _sha256(ipad)
        self._outer = _sha256(opad)

    def digest(self, data, tail=b""):
        h = self._inner.copy()
        h.update(data)
        if tail:
            h.update(tail)
        o = self._outer.copy()
        o.update(h.digest())
        return o.digest()

    def digest_into(self, buf, off, end, tail, out, ooff, n):
        h = self._inner.copy()
        h.update(memoryview(buf)[off:end])
        if tail:
            h.update(tail)
        o = self._outer.copy()
        o.update(h.digest())
        out[ooff:ooff + n] = o.digest()[:n]

    def wipe(self):
        # OpenSSL's states cannot be zeroed from Python: dropped
        self._inner = self._outer = None

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


_PAD = bytearray(64)


def _padded(k, x):
    """The module buffer holding the key zero-padded to 64 bytes, XOR x."""
    p = _PAD
    n = len(k)
    for i in range(n):
        p[i] = k[i] ^ x
    for i in range(n, 64):
        p[i] = x
    return p


class HmacPads:
    """MicroPython (no copy()): only the key is kept; the padded keys are made per message."""

    def __init__(self, key):
        self._k = _key(key)

    def _mac(self, data, tail):
        h = _sha256(_padded(self._k, 0x36))
        h.update(data)
        if tail:
            h.update(tail)
        d = h.digest()
        o = _sha256(_padded(self._k, 0x5C))
        o.update(d)
        return o.digest()

    def digest(self, data, tail=b""):
        return self._mac(data, tail)

    def digest_into(self, buf, off, end, tail, out, ooff, n):
        d = self._mac(memoryview(buf)[off:end], tail)
        for i in range(n):
            out[ooff + i] = d[i]

    def wipe(self):
        for i in range(64):
            _PAD[i] = 0

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


HmacSha256 = HmacCopy if hasattr(_sha256(), "copy") else HmacPads


class HmacKeyed:
    """MicroPython: the padded keys kept (128 bytes), so a MAC costs the two hashes only — for
    the few long-lived keys of the link (firmware/link/auth.py), which MAC every frame."""

    def __init__(self, key):
        self._ipad, self._opad = _pads(_key(key))

    def digest(self, data, tail=b""):
        h = _sha256(self._ipad)
        h.update(data)
        if tail:
            h.update(tail)
        return _sha256(self._opad + h.digest()).digest()

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


def ct_equal(a, b):
    """Constant-time equality of two byte strings (time depends on the length only)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def equal_at(a, b, boff, n):
    """a[0:n] == b[boff:boff + n] in a time that depends on n only (a tag or ICV check)."""
    r = 0
    for i in range(n):
        r |= a[i] ^ b[boff + i]
    return r == 0
