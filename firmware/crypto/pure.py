"""Pure-Python crypto backend: AES (FIPS 197), CTR/GCM (NIST SP 800-38D), CBC, HMAC-SHA-256.

For runtimes without cryptolib (the wasm MicroPython) and as a reference the other backends
are checked against. Slow by nature (MicroPython: ~10k AES blocks/s), so every transform it
runs is advertised SPEED_SLOW. Tables are built at first use, not at import.

AES works on four 32-bit column words with the usual combined SubBytes/ShiftRows/MixColumns
tables; GHASH uses 4-bit tables (Shoup) with 16 multiples of H per key, which keeps the
per-SA memory small on a microcontroller.
"""
import os
import struct

from firmware.crypto.hmac256 import HmacSha256, ct_equal
from firmware.link import messages as m

NAME = "pure"


class AuthError(ValueError):
    """GCM tag did not verify."""


def speed(encr):
    return m.SPEED_SLOW


# None where the runtime has no os.urandom (the wasm port): the ESP engine then derives CBC IVs
# by encrypting the sequence number (NIST SP 800-38A Appendix C).
random = getattr(os, "urandom", None)


def hmac_sha256(key):
    return HmacSha256(key)


# ---- AES tables ------------------------------------------------------------------------------
_T = None  # (S, IS, TE0..TE3, TD0..TD3, RCON)


def _xt(a):
    a <<= 1
    return (a ^ 0x11B) if a & 0x100 else a


def _mul(a, b):
    r = 0
    while b:
        if b & 1:
            r ^= a
        a = _xt(a)
        b >>= 1
    return r


def _tables():
    global _T
    if _T is not None:
        return _T
    # S-box: multiplicative inverse in GF(2^8) followed by the affine map (FIPS 197 §5.1.1),
    # walking the field with generator 3 and its inverse.
    s = bytearray(256)
    p = q = 1
    while True:
        p = p ^ _xt(p) & 0xFF
        q ^= (q << 1) & 0xFF
        q ^= (q << 2) & 0xFF
        q ^= (q << 4) & 0xFF
        if q & 0x80:
            q ^= 0x09
        x = q
        for sh in (1, 2, 3, 4):
            x ^= ((q << sh) | (q >> (8 - sh))) & 0xFF
        s[p] = x ^ 0x63
        if p == 1:
            break
    s[0] = 0x63
    inv = bytearray(256)
    for i in range(256):
        inv[s[i]] = i
    te0, te1, te2, te3 = [0] * 256, [0] * 256, [0] * 256, [0] * 256
    td0, td1, td2, td3 = [0] * 256, [0] * 256, [0] * 256, [0] * 256
    for i in range(256):
        a = s[i]
        w = (_mul(a, 2) << 24) | (a << 16) | (a << 8) | _mul(a, 3)
        te0[i] = w
        te1[i] = ((w >> 8) | (w << 24)) & 0xFFFFFFFF
        te2[i] = ((w >> 16) | (w << 16)) & 0xFFFFFFFF
        te3[i] = ((w >> 24) | (w << 8)) & 0xFFFFFFFF
        b = inv[i]
        w = (_mul(b, 14) << 24) | (_mul(b, 9) << 16) | (_mul(b, 13) << 8) | _mul(b, 11)
        td0[i] = w
        td1[i] = ((w >> 8) | (w << 24)) & 0xFFFFFFFF
        td2[i] = ((w >> 16) | (w << 16)) & 0xFFFFFFFF
        td3[i] = ((w >> 24) | (w << 8)) & 0xFFFFFFFF
    rcon = []
    r = 1
    for _ in range(10):
        rcon.append(r << 24)
        r = _xt(r)
    _T = (bytes(s), bytes(inv), te0, te1, te2, te3, td0, td1, td2, td3, rcon)
    return _T


class Aes:
    """The AES block cipher on 32-bit words (FIPS 197)."""

    def __init__(self, key):
        key = bytes(key)
        nk = len(key) // 4
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        S, _, _, _, _, _, td0, td1, td2, td3, rcon = _tables()
        self.nr = nr = nk + 6
        w = list(struct.unpack(">%dI" % nk, key))
        for i in range(nk, 4 * (nr + 1)):
            t = w[i - 1]
            if i % nk == 0:
                t = ((t << 8) & 0xFFFFFFFF) | (t >> 24)
                t = ((S[t >> 24] << 24) | (S[(t >> 16) & 255] << 16) | (S[(t >> 8) & 255] << 8)
                     | S[t & 255]) ^ rcon[i // nk - 1]
            elif nk > 6 and i % nk == 4:
                t = (S[t >> 24] << 24) | (S[(t >> 16) & 255] << 16) | (S[(t >> 8) & 255] << 8) | S[t & 255]
            w.append(w[i - nk] ^ t)
        self.ek = w
        self._dk = None

    def _dkeys(self):
        # Equivalent inverse cipher (FIPS 197 §5.3.5): round keys reversed, InvMixColumns
        # applied to all but the first and last.
        if self._dk is None:
            S, _, _, _, _, _, td0, td1, td2, td3, _ = _tables()
            w, nr = self.ek, self.nr
            dk = []
            for r in range(nr, -1, -1):
                for c in range(4):
                    x = w[4 * r + c]
                    if 0 < r < nr:
                        x = (td0[S[x >> 24]] ^ td1[S[(x >> 16) & 255]] ^ td2[S[(x >> 8) & 255]]
                             ^ td3[S[x & 255]])
                    dk.append(x)
            self._dk = dk
        return self._dk

    def encrypt_words(self, s0, s1, s2, s3):
        S, _, t0, t1, t2, t3, _, _, _, _, _ = _T
        rk = self.ek
        s0 ^= rk[0]
        s1 ^= rk[1]
        s2 ^= rk[2]
        s3 ^= rk[3]
        k = 4
        for _ in range(self.nr - 1):
            a = t0[s0 >> 24] ^ t1[(s1 >> 16) & 255] ^ t2[(s2 >> 8) & 255] ^ t3[s3 & 255] ^ rk[k]
            b = t0[s1 >> 24] ^ t1[(s2 >> 16) & 255] ^ t2[(s3 >> 8) & 255] ^ t3[s0 & 255] ^ rk[k + 1]
            c = t0[s2 >> 24] ^ t1[(s3 >> 16) & 255] ^ t2[(s0 >> 8) & 255] ^ t3[s1 & 255] ^ rk[k + 2]
            s3 = t0[s3 >> 24] ^ t1[(s0 >> 16) & 255] ^ t2[(s1 >> 8) & 255] ^ t3[s2 & 255] ^ rk[k + 3]
            s0, s1, s2 = a, b, c
            k += 4
        return (((S[s0 >> 24] << 24) | (S[(s1 >> 16) & 255] << 16) | (S[(s2 >> 8) & 255] << 8)
                 | S[s3 & 255]) ^ rk[k],
                ((S[s1 >> 24] << 24) | (S[(s2 >> 16) & 255] << 16) | (S[(s3 >> 8) & 255] << 8)
                 | S[s0 & 255]) ^ rk[k + 1],
                ((S[s2 >> 24] << 24) | (S[(s3 >> 16) & 255] << 16) | (S[(s0 >> 8) & 255] << 8)
                 | S[s1 & 255]) ^ rk[k + 2],
                ((S[s3 >> 24] << 24) | (S[(s0 >> 16) & 255] << 16) | (S[(s1 >> 8) & 255] << 8)
                 | S[s2 & 255]) ^ rk[k + 3])

    def decrypt_words(self, s0, s1, s2, s3):
        _, IS, _, _, _, _, t0, t1, t2, t3, _ = _T
        rk = self._dkeys()
        s0 ^= rk[0]
        s1 ^= rk[1]
        s2 ^= rk[2]
        s3 ^= rk[3]
        k = 4
        for _ in range(self.nr - 1):
            a = t0[s0 >> 24] ^ t1[(s3 >> 16) & 255] ^ t2[(s2 >> 8) & 255] ^ t3[s1 & 255] ^ rk[k]
            b = t0[s1 >> 24] ^ t1[(s0 >> 16) & 255] ^ t2[(s3 >> 8) & 255] ^ t3[s2 & 255] ^ rk[k + 1]
            c = t0[s2 >> 24] ^ t1[(s1 >> 16) & 255] ^ t2[(s0 >> 8) & 255] ^ t3[s3 & 255] ^ rk[k + 2]
            s3 = t0[s3 >> 24] ^ t1[(s2 >> 16) & 255] ^ t2[(s1 >> 8) & 255] ^ t3[s0 & 255] ^ rk[k + 3]
            s0, s1, s2 = a, b, c
            k += 4
        return (((IS[s0 >> 24] << 24) | (IS[(s3 >> 16) & 255] << 16) | (IS[(s2 >> 8) & 255] << 8)
                 | IS[s1 & 255]) ^ rk[k],
                ((IS[s1 >> 24] << 24) | (IS[(s0 >> 16) & 255] << 16) | (IS[(s3 >> 8) & 255] << 8)
                 | IS[s2 & 255]) ^ rk[k + 1],
                ((IS[s2 >> 24] << 24) | (IS[(s1 >> 16) & 255] << 16) | (IS[(s0 >> 8) & 255] << 8)
                 | IS[s3 & 255]) ^ rk[k + 2],
                ((IS[s3 >> 24] << 24) | (IS[(s2 >> 16) & 255] << 16) | (IS[(s1 >> 8) & 255] << 8)
                 | IS[s0 & 255]) ^ rk[k + 3])

    def encrypt_block(self, block):
        return struct.pack(">IIII", *self.encrypt_words(*struct.unpack(">IIII", bytes(block))))

    def decrypt_block(self, block):
        return struct.pack(">IIII", *self.decrypt_words(*struct.unpack(">IIII", bytes(block))))

    def __repr__(self):
        return "Aes(<key hidden>)"


def _xor(a, b):
    """a XOR b for byte strings of equal length."""
    n = len(a)
    if not n:
        return b""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


# ---- CBC -------------------------------------------------------------------------------------
class AesCbc:
    """AES-CBC without padding (the ESP trailer pads, RFC 3602 §2.4)."""

    def __init__(self, key):
        self.aes = Aes(key)

    def encrypt(self, iv, data):
        data = bytes(data)
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        enc = self.aes.encrypt_words
        unpack, pack = struct.unpack_from, struct.pack
        c0, c1, c2, c3 = struct.unpack(">IIII", bytes(iv))
        out = []
        for i in range(0, len(data), 16):
            p0, p1, p2, p3 = unpack(">IIII", data, i)
            c0, c1, c2, c3 = enc(p0 ^ c0, p1 ^ c1, p2 ^ c2, p3 ^ c3)
            out.append(pack(">IIII", c0, c1, c2, c3))
        return b"".join(out)

    def decrypt(self, iv, data):
        data = bytes(data)
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        dec = self.aes.decrypt_words
        unpack, pack = struct.unpack_from, struct.pack
        v0, v1, v2, v3 = struct.unpack(">IIII", bytes(iv))
        out = []
        for i in range(0, len(data), 16):
            c0, c1, c2, c3 = unpack(">IIII", data, i)
            p0, p1, p2, p3 = dec(c0, c1, c2, c3)
            out.append(pack(">IIII", p0 ^ v0, p1 ^ v1, p2 ^ v2, p3 ^ v3))
            v0, v1, v2, v3 = c0, c1, c2, c3
        return b"".join(out)

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


# ---- GHASH and GCM -----------------------------------------------------------------------------
# A block is an int from its 16 bytes big-endian; bit 127 (the first bit) is the coefficient of
# x^0 (SP 800-38D §6.3), so multiplying by x is a right shift, reduced with R = 0xE1 || 0^120.
_R4 = None


def _r4():
    """Reduction of the 4 bits shifted out when multiplying by x^4, as values to shift by 112."""
    global _R4
    if _R4 is None:
        t = [0] * 16
        for rem in range(16):
            v = 0
            for bit in range(4):          # bit value 1 << bit is x^(127 - bit) -> x^(131 - bit)
                if rem & (1 << bit):
                    v ^= 0xE100 >> (3 - bit)
            t[rem] = v
        _R4 = t
    return _R4


class Ghash:
    """GHASH_H (SP 800-38D §6.4) with Shoup's 4-bit tables."""

    def __init__(self, h):
        # M[n] = n(x) * H where the 4-bit n has its top bit as the x^0 coefficient.
        m8 = h
        m4 = self._times_x(m8)
        m2 = self._times_x(m4)
        m1 = self._times_x(m2)
        t = [0] * 16
        for n in range(16):
            v = 0
            if n & 8:
                v ^= m8
            if n & 4:
                v ^= m4
            if n & 2:
                v ^= m2
            if n & 1:
                v ^= m1
            t[n] = v
        self.m = t
        self.r = _r4()

    @staticmethod
    def _times_x(v):
        return (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1

    def mult(self, x):
        """x * H."""
        m, r = self.m, self.r
        z = m[x & 15]
        x >>= 4
        for _ in range(31):
            z = (z >> 4) ^ (r[z & 15] << 112) ^ m[x & 15]
            x >>= 4
        return z

    def update(self, y, data):
        """Fold `data` (zero-padded to whole blocks) into the running value y."""
        n = len(data)
        if not n:
            return y
        rem = n % 16
        if rem:
            data = bytes(data) + bytes(16 - rem)
        mult = self.mult
        fb = int.from_bytes
        data = bytes(data)
        for i in range(0, len(data), 16):
            y = mult(y ^ fb(data[i:i + 16], "big"))
        return y


class AesGcm:
    """AES-GCM with 96-bit nonces and 128-bit tags, the call shape of cryptography's AESGCM."""

    def __init__(self, key):
        self.aes = Aes(key)
        h0, h1, h2, h3 = self.aes.encrypt_words(0, 0, 0, 0)
        self.ghash = Ghash((h0 << 96) | (h1 << 64) | (h2 << 32) | h3)

    def _ctr(self, n0, n1, n2, counter, data):
        """CTR keystream XOR (SP 800-38D §6.5) from inc32 counter value `counter`."""
        n = len(data)
        if not n:
            return b""
        enc = self.aes.encrypt_words
        pack = struct.pack
        ks = []
        for i in range((n + 15) // 16):
            ks.append(pack(">IIII", *enc(n0, n1, n2, (counter + i) & 0xFFFFFFFF)))
        ks = b"".join(ks)
        if len(ks) != n:
            ks = ks[:n]
        return _xor(data, ks)

    def _tag(self, n0, n1, n2, aad, ct):
        g = self.ghash
        y = g.update(0, aad)
        y = g.update(y, ct)
        y = g.mult(y ^ ((len(aad) * 8) << 64 | (len(ct) * 8)))
        e0, e1, e2, e3 = self.aes.encrypt_words(n0, n1, n2, 1)
        return (y ^ ((e0 << 96) | (e1 << 64) | (e2 << 32) | e3)).to_bytes(16, "big")

    def encrypt(self, nonce, data, aad):
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        aad = bytes(aad) if aad else b""
        n0, n1, n2 = struct.unpack(">III", bytes(nonce))
        ct = self._ctr(n0, n1, n2, 2, bytes(data))
        return ct + self._tag(n0, n1, n2, aad, ct)

    def decrypt(self, nonce, data, aad):
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        data = bytes(data)
        if len(data) < 16:
            raise AuthError("GCM input shorter than its tag")
        aad = bytes(aad) if aad else b""
        n0, n1, n2 = struct.unpack(">III", bytes(nonce))
        ct, tag = data[:-16], data[-16:]
        if not ct_equal(self._tag(n0, n1, n2, aad, ct), tag):
            raise AuthError("GCM tag mismatch")
        return self._ctr(n0, n1, n2, 2, ct)

    def __repr__(self):
        return "AesGcm(<key hidden>)"


def aes_gcm(key):
    return AesGcm(key)
