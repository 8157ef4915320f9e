"""HMAC-SHA-256 (RFC 2104) on hashlib.sha256, for runtimes without an hmac module (MicroPython).

MicroPython's sha256 objects have no copy(), so each MAC hashes the 64-byte padded keys
again; where copy() exists (CPython) the keyed states are kept and copied.
"""
import hashlib

_sha256 = hashlib.sha256


class HmacSha256:
    __slots__ = ("_ipad", "_opad", "_inner", "_outer")

    def __init__(self, key):
        key = bytes(key)
        if len(key) > 64:
            key = _sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._ipad = bytes([b ^ 0x36 for b in key])
        self._opad = bytes([b ^ 0x5C for b in key])
        self._inner = self._outer = None
        h = _sha256(self._ipad)
        if hasattr(h, "copy"):
            self._inner = h
            self._outer = _sha256(self._opad)

    def digest(self, data, tail=b""):
        if self._inner is not None:
            h = self._inner.copy()
            h.update(data)
            if tail:
                h.update(tail)
            o = self._outer.copy()
            o.update(h.digest())
            return o.digest()
        h = _sha256(self._ipad)
        h.update(bytes(data))
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
