"""HMAC-SHA-256 (RFC 2104) on hashlib.sha256, for runtimes without an hmac module (MicroPython).

Where sha256 objects have copy() (CPython) the keyed inner and outer states are kept and copied
per message. MicroPython's have none, so each MAC hashes the 64-byte padded keys again; those
are derived per message from the key (one big-int XOR each, in C), and an SA keeps only the key
— the caller's bytes object, not a copy (issue 7: 64 SAs in 64 KB).
"""
import hashlib

_sha256 = hashlib.sha256
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def _key(key):
    """The key as bytes of at most 64 (RFC 2104 §2: hashed if longer)."""
    key = key if type(key) is bytes else bytes(key)
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

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


class HmacPads:
    """MicroPython (no copy()): only the key is kept; the padded keys are made per message."""

    def __init__(self, key):
        self._k = _key(key)

    def digest(self, data, tail=b""):
        ipad, opad = _pads(self._k)
        h = _sha256(ipad)
        h.update(bytes(data))
        if tail:
            h.update(tail)
        return _sha256(opad + h.digest()).digest()

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
