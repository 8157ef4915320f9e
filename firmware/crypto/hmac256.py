"""HMAC-SHA-256 (RFC 2104) on hashlib.sha256, for runtimes without an hmac module (MicroPython);
HMAC-SHA-384 and -512 where hashlib has them (CPython; no stock MicroPython port does: its
hashlib offers sha256, sha1 and md5 only, so boards do not advertise them).

    mac.digest(data, tail=b"")                       -> HMAC(key, data || tail)
    mac.digest_into(buf, off, end, tail, out, ooff, n)  HMAC(key, buf[off:end] || tail)[:n]
                                                        written to out[ooff:ooff + n]
    hmac(name, key)                                  HMAC with hashlib.<name> ("sha256",
                                                        "sha384", "sha512"); HASHES: those here

`tail` lets ESN append seq-hi without a copy (RFC 4303 §3.3.2.1). Where sha256 objects have
copy() (CPython) the keyed inner and outer states are kept and copied per message. MicroPython's
have none, so each MAC hashes the 64-byte padded keys again; those are derived per message from
the key into one module buffer (no big ints, nothing per SA but the key, which is the caller's
object, not a copy: the SA zeroes it when it is deleted).
"""
import hashlib

_sha256 = hashlib.sha256
# hash name -> block size (RFC 2104's B; FIPS 180-4): what hashlib may have
BLOCK = {"sha256": 64, "sha384": 128, "sha512": 128}
HASHES = tuple(n for n in ("sha256", "sha384", "sha512") if hasattr(hashlib, n))


def _key(key, h=_sha256, block=64):
    """The key (bytes or bytearray, not copied) of at most one block (RFC 2104 §2: hashed if
    longer)."""
    key = key if type(key) in (bytes, bytearray) else bytes(key)
    return h(key).digest() if len(key) > block else key


def _pads(key, block):
    """(K ^ ipad, K ^ opad) with K the key zero-padded to the block."""
    k = int.from_bytes(key, "big") << (8 * (block - len(key)))
    ipad = int.from_bytes(b"\x36" * block, "big")
    opad = int.from_bytes(b"\x5c" * block, "big")
    return (k ^ ipad).to_bytes(block, "big"), (k ^ opad).to_bytes(block, "big")


class HmacCopy:
    """CPython: the keyed states, copied per message."""
    __slots__ = ("_inner", "_outer")

    def __init__(self, key, h=_sha256, block=64):
        ipad, opad = _pads(_key(key, h, block), block)
        self._inner = h(ipad)
        self._outer = h(opad)

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
        return "Hmac(<key hidden>)"


_PADS = {64: bytearray(64), 128: bytearray(128)}


def _padded(k, x, block):
    """The module buffer holding the key zero-padded to the block, XOR x."""
    p = _PADS[block]
    n = len(k)
    for i in range(n):
        p[i] = k[i] ^ x
    for i in range(n, block):
        p[i] = x
    return p


class HmacPads:
    """MicroPython (no copy()): only the key is kept; the padded keys are made per message."""

    def __init__(self, key, h=_sha256, block=64):
        self._h = h
        self._block = block
        self._k = _key(key, h, block)

    def _mac(self, data, tail):
        b = self._block
        h = self._h(_padded(self._k, 0x36, b))
        h.update(data)
        if tail:
            h.update(tail)
        d = h.digest()
        o = self._h(_padded(self._k, 0x5C, b))
        o.update(d)
        return o.digest()

    def digest(self, data, tail=b""):
        return self._mac(data, tail)

    def digest_into(self, buf, off, end, tail, out, ooff, n):
        d = self._mac(memoryview(buf)[off:end], tail)
        for i in range(n):
            out[ooff + i] = d[i]

    def wipe(self):
        p = _PADS[self._block]
        for i in range(len(p)):
            p[i] = 0

    def __repr__(self):
        return "Hmac(<key hidden>)"


HmacSha256 = HmacCopy if hasattr(_sha256(), "copy") else HmacPads


class HmacKeyed:
    """MicroPython: the padded keys kept (128 bytes), so a MAC costs the two hashes only — for
    the few long-lived keys of the link (firmware/link/auth.py), which MAC every frame."""

    def __init__(self, key):
        self._ipad, self._opad = _pads(_key(key), 64)

    def digest(self, data, tail=b""):
        h = _sha256(self._ipad)
        h.update(data)
        if tail:
            h.update(tail)
        return _sha256(self._opad + h.digest()).digest()

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


def hmac(name, key):
    """HMAC with hashlib's ``name`` (one of HASHES); ValueError if this runtime has no such hash."""
    if name not in HASHES:
        raise ValueError("no %s in this runtime's hashlib" % name)
    h = getattr(hashlib, name)
    return HmacSha256(key, h, BLOCK[name])


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
