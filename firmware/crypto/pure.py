"""Pure-Python crypto backend: AES (FIPS 197), CTR/GCM (NIST SP 800-38D), CBC, HMAC-SHA-256.

For runtimes without cryptolib (the wasm MicroPython) and as a reference the other backends
are checked against. Slow by nature (wasm MicroPython: ~9k AES-128 blocks/s), so every
transform it runs is advertised SPEED_SLOW. Tables are built at first use, not at import.

Written for a microcontroller's heap (issue 7: 64 SAs in 64 KB):
- AES works on 16-bit halves of the four column words, so every value is a small int on
  MicroPython (31-bit there: 32-bit words would be heap ints, built and dropped at every XOR).
  The combined SubBytes/ShiftRows/MixColumns tables then come down to four 256-entry tables of
  16-bit halves per direction (the eight halves of T0..T3 are four distinct tables), as
  array('H'): 2 KB each way, shared by every SA (the decryption ones only once a CBC SA decrypts).
- Round keys are one array('H') of halves per key (176 bytes for AES-128, 240 for AES-256),
  made when first needed: a GCM key and an outbound CBC key keep the encryption schedule, an
  inbound CBC key only the decryption one.
- GHASH keeps only H (one int) per key; its 4-bit table (Shoup, 16 multiples of H) is built per
  message, ~20 big-int operations against the 200 a block costs.
"""
import os
import struct
from array import array

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


def check_key(key):
    """The AES key as bytes (the same object when it is bytes already: no copy)."""
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return key if type(key) is bytes else bytes(key)


# ---- AES tables ------------------------------------------------------------------------------
_SB = None   # (S-box, inverse S-box) as bytes
_TE = None   # encryption tables: four array('H') of 16-bit halves
_TD = None   # decryption tables, likewise


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


def _sboxes():
    global _SB
    if _SB is not None:
        return _SB
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
    _SB = (bytes(s), bytes(inv))
    return _SB


# The round tables: T0[x] = (2s, s, s, 3s) as bytes of a word, s = S[x], and T1..T3 its byte
# rotations. As 16-bit halves: T0 = A|C, T1 = B|D, T2 = C|A, T3 = D|B with A = (2s, s),
# B = (3s, 2s), C = (s, 3s), D = (s, s). Decryption likewise with (14s, 9s, 13s, 11s), s = IS[x].
def _enc_tables():
    global _TE
    if _TE is None:
        s = _sboxes()[0]
        a, b, c, d = array("H"), array("H"), array("H"), array("H")
        for i in range(256):
            x = s[i]
            x2 = _xt(x)
            x3 = x2 ^ x
            a.append((x2 << 8) | x)
            b.append((x3 << 8) | x2)
            c.append((x << 8) | x3)
            d.append((x << 8) | x)
        _TE = (a, b, c, d)
    return _TE


def _dec_tables():
    global _TD
    if _TD is None:
        s = _sboxes()[1]
        a, b, c, d = array("H"), array("H"), array("H"), array("H")
        for i in range(256):
            x = s[i]
            x9, x11, x13, x14 = _mul(x, 9), _mul(x, 11), _mul(x, 13), _mul(x, 14)
            a.append((x14 << 8) | x9)
            b.append((x11 << 8) | x14)
            c.append((x13 << 8) | x11)
            d.append((x9 << 8) | x13)
        _TD = (a, b, c, d)
    return _TD


# ---- AES on 16-bit halves ----------------------------------------------------------------------
def expand_key(key):
    """The encryption key schedule (FIPS 197 §5.2): 4 * (Nr + 1) words as 8 * (Nr + 1) halves."""
    S = _sboxes()[0]
    nk = len(key) // 4
    w = list(struct.unpack(">%dH" % (2 * nk), key))
    r = 1
    for i in range(nk, 4 * (nk + 7)):
        th, tl = w[2 * i - 2], w[2 * i - 1]
        if i % nk == 0:      # SubWord(RotWord(t)) ^ Rcon
            th, tl = (((S[th & 255] << 8) | S[tl >> 8]) ^ (r << 8), (S[tl & 255] << 8) | S[th >> 8])
            r = _xt(r)
        elif nk > 6 and i % nk == 4:
            th, tl = (S[th >> 8] << 8) | S[th & 255], (S[tl >> 8] << 8) | S[tl & 255]
        w.append(w[2 * (i - nk)] ^ th)
        w.append(w[2 * (i - nk) + 1] ^ tl)
    return array("H", w)


def invert_key(ek):
    """The equivalent inverse cipher's schedule (FIPS 197 §5.3.5): round keys reversed,
    InvMixColumns applied to all but the first and last."""
    S = _sboxes()[0]
    a, b, c, d = _dec_tables()
    nr = len(ek) // 8 - 1
    dk = array("H")
    for r in range(nr, -1, -1):
        for i in range(8 * r, 8 * r + 8, 2):
            h, lo = ek[i], ek[i + 1]
            if 0 < r < nr:
                x0, x1, x2, x3 = S[h >> 8], S[h & 255], S[lo >> 8], S[lo & 255]
                h, lo = a[x0] ^ b[x1] ^ c[x2] ^ d[x3], c[x0] ^ d[x1] ^ a[x2] ^ b[x3]
            dk.append(h)
            dk.append(lo)
    return dk


def encrypt_halves(rk, h0, l0, h1, l1, h2, l2, h3, l3):
    """One block, as the eight big-endian 16-bit halves of its words, under schedule rk."""
    A, B, C, D = _TE
    h0 ^= rk[0]
    l0 ^= rk[1]
    h1 ^= rk[2]
    l1 ^= rk[3]
    h2 ^= rk[4]
    l2 ^= rk[5]
    h3 ^= rk[6]
    l3 ^= rk[7]
    k = 8
    for _ in range(len(rk) // 8 - 2):
        a0, a1, a2, a3 = h0 >> 8, h0 & 255, l0 >> 8, l0 & 255
        b0, b1, b2, b3 = h1 >> 8, h1 & 255, l1 >> 8, l1 & 255
        c0, c1, c2, c3 = h2 >> 8, h2 & 255, l2 >> 8, l2 & 255
        d0, d1, d2, d3 = h3 >> 8, h3 & 255, l3 >> 8, l3 & 255
        h0 = A[a0] ^ B[b1] ^ C[c2] ^ D[d3] ^ rk[k]
        l0 = C[a0] ^ D[b1] ^ A[c2] ^ B[d3] ^ rk[k + 1]
        h1 = A[b0] ^ B[c1] ^ C[d2] ^ D[a3] ^ rk[k + 2]
        l1 = C[b0] ^ D[c1] ^ A[d2] ^ B[a3] ^ rk[k + 3]
        h2 = A[c0] ^ B[d1] ^ C[a2] ^ D[b3] ^ rk[k + 4]
        l2 = C[c0] ^ D[d1] ^ A[a2] ^ B[b3] ^ rk[k + 5]
        h3 = A[d0] ^ B[a1] ^ C[b2] ^ D[c3] ^ rk[k + 6]
        l3 = C[d0] ^ D[a1] ^ A[b2] ^ B[c3] ^ rk[k + 7]
        k += 8
    S = _SB[0]
    return ((S[h0 >> 8] << 8 | S[h1 & 255]) ^ rk[k], (S[l2 >> 8] << 8 | S[l3 & 255]) ^ rk[k + 1],
            (S[h1 >> 8] << 8 | S[h2 & 255]) ^ rk[k + 2], (S[l3 >> 8] << 8 | S[l0 & 255]) ^ rk[k + 3],
            (S[h2 >> 8] << 8 | S[h3 & 255]) ^ rk[k + 4], (S[l0 >> 8] << 8 | S[l1 & 255]) ^ rk[k + 5],
            (S[h3 >> 8] << 8 | S[h0 & 255]) ^ rk[k + 6], (S[l1 >> 8] << 8 | S[l2 & 255]) ^ rk[k + 7])


def decrypt_halves(rk, h0, l0, h1, l1, h2, l2, h3, l3):
    """The inverse of encrypt_halves under rk = invert_key(ek)."""
    A, B, C, D = _TD
    h0 ^= rk[0]
    l0 ^= rk[1]
    h1 ^= rk[2]
    l1 ^= rk[3]
    h2 ^= rk[4]
    l2 ^= rk[5]
    h3 ^= rk[6]
    l3 ^= rk[7]
    k = 8
    for _ in range(len(rk) // 8 - 2):
        a0, a1, a2, a3 = h0 >> 8, h0 & 255, l0 >> 8, l0 & 255
        b0, b1, b2, b3 = h1 >> 8, h1 & 255, l1 >> 8, l1 & 255
        c0, c1, c2, c3 = h2 >> 8, h2 & 255, l2 >> 8, l2 & 255
        d0, d1, d2, d3 = h3 >> 8, h3 & 255, l3 >> 8, l3 & 255
        h0 = A[a0] ^ B[d1] ^ C[c2] ^ D[b3] ^ rk[k]
        l0 = C[a0] ^ D[d1] ^ A[c2] ^ B[b3] ^ rk[k + 1]
        h1 = A[b0] ^ B[a1] ^ C[d2] ^ D[c3] ^ rk[k + 2]
        l1 = C[b0] ^ D[a1] ^ A[d2] ^ B[c3] ^ rk[k + 3]
        h2 = A[c0] ^ B[b1] ^ C[a2] ^ D[d3] ^ rk[k + 4]
        l2 = C[c0] ^ D[b1] ^ A[a2] ^ B[d3] ^ rk[k + 5]
        h3 = A[d0] ^ B[c1] ^ C[b2] ^ D[a3] ^ rk[k + 6]
        l3 = C[d0] ^ D[c1] ^ A[b2] ^ B[a3] ^ rk[k + 7]
        k += 8
    S = _SB[1]
    return ((S[h0 >> 8] << 8 | S[h3 & 255]) ^ rk[k], (S[l2 >> 8] << 8 | S[l1 & 255]) ^ rk[k + 1],
            (S[h1 >> 8] << 8 | S[h0 & 255]) ^ rk[k + 2], (S[l3 >> 8] << 8 | S[l2 & 255]) ^ rk[k + 3],
            (S[h2 >> 8] << 8 | S[h1 & 255]) ^ rk[k + 4], (S[l0 >> 8] << 8 | S[l3 & 255]) ^ rk[k + 5],
            (S[h3 >> 8] << 8 | S[h2 & 255]) ^ rk[k + 6], (S[l1 >> 8] << 8 | S[l0 & 255]) ^ rk[k + 7])


def _enc_schedule(key):
    _enc_tables()
    return expand_key(key)


class Aes:
    """The AES block cipher (FIPS 197), one block at a time (known-answer tests)."""

    def __init__(self, key):
        self.ek = _enc_schedule(check_key(key))
        self.dk = None

    def encrypt_block(self, block):
        return struct.pack(">8H", *encrypt_halves(self.ek, *struct.unpack(">8H", bytes(block))))

    def decrypt_block(self, block):
        if self.dk is None:
            self.dk = invert_key(self.ek)
        return struct.pack(">8H", *decrypt_halves(self.dk, *struct.unpack(">8H", bytes(block))))

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
    """AES-CBC without padding (the ESP trailer pads, RFC 3602 §2.4). Keeps the key (the
    caller's bytes object, not a copy) and the schedules it has needed so far: an SA only
    encrypts or only decrypts, so it holds one."""

    def __init__(self, key):
        self._key = check_key(key)
        self._ek = self._dk = None

    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        rk = self._ek
        if rk is None:
            rk = self._ek = _enc_schedule(self._key)
        data = bytes(data)
        enc = encrypt_halves
        unpack, pack = struct.unpack_from, struct.pack
        c0, c1, c2, c3, c4, c5, c6, c7 = struct.unpack(">8H", bytes(iv))
        out = []
        for i in range(0, len(data), 16):
            p0, p1, p2, p3, p4, p5, p6, p7 = unpack(">8H", data, i)
            c0, c1, c2, c3, c4, c5, c6, c7 = enc(rk, p0 ^ c0, p1 ^ c1, p2 ^ c2, p3 ^ c3, p4 ^ c4,
                                                 p5 ^ c5, p6 ^ c6, p7 ^ c7)
            out.append(pack(">8H", c0, c1, c2, c3, c4, c5, c6, c7))
        return b"".join(out)

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        rk = self._dk
        if rk is None:
            ek = self._ek
            _enc_tables()
            rk = self._dk = invert_key(ek if ek is not None else expand_key(self._key))
        data = bytes(data)
        n = len(data)
        if not n:
            return b""
        dec = decrypt_halves
        unpack, pack = struct.unpack_from, struct.pack
        out = []
        for i in range(0, n, 16):
            out.append(pack(">8H", *dec(rk, *unpack(">8H", data, i))))
        # P_i = D(C_i) ^ C_(i-1), C_0 = IV: one XOR over the whole packet
        return _xor(b"".join(out), bytes(iv) + data[:-16])

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


def _times_x(v):
    return (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1


def _mult(m, r, x):
    """x * H, with m = the 4-bit table of H."""
    z = m[x & 15]
    x >>= 4
    for _ in range(31):
        z = (z >> 4) ^ (r[z & 15] << 112) ^ m[x & 15]
        x >>= 4
    return z


def _ghash_update(m, r, y, data):
    """Fold `data` (zero-padded to whole blocks) into the running value y."""
    n = len(data)
    if not n:
        return y
    rem = n % 16
    data = bytes(data)
    if rem:
        data += bytes(16 - rem)
    fb = int.from_bytes
    for i in range(0, len(data), 16):
        y = _mult(m, r, y ^ fb(data[i:i + 16], "big"))
    return y


def ghash(h, aad, ct):
    """GHASH_H(A || 0^v || C || 0^u || [len(A)]64 || [len(C)]64) (SP 800-38D §6.4, §7.1) with
    Shoup's 4-bit table: M[n] = n(x) * H where the 4-bit n has its top bit as the x^0
    coefficient, built here from H."""
    m8 = h
    m4 = _times_x(m8)
    m2 = _times_x(m4)
    m1 = _times_x(m2)
    m = [0] * 16
    for n in range(1, 16):
        v = 0
        if n & 8:
            v ^= m8
        if n & 4:
            v ^= m4
        if n & 2:
            v ^= m2
        if n & 1:
            v ^= m1
        m[n] = v
    r = _r4()
    y = _ghash_update(m, r, 0, aad)
    y = _ghash_update(m, r, y, ct)
    return _mult(m, r, y ^ ((len(aad) * 8) << 64 | (len(ct) * 8)))


class AesGcm:
    """AES-GCM with 96-bit nonces and 128-bit tags, the call shape of cryptography's AESGCM.
    Per key: the encryption schedule and H. The block cipher is keystream(); the cryptolib
    backend replaces it."""

    def __init__(self, key):
        self._rk = _enc_schedule(check_key(key))
        self._h = int.from_bytes(struct.pack(">8H", *encrypt_halves(self._rk, 0, 0, 0, 0, 0, 0, 0, 0)),
                                 "big")

    def keystream(self, nonce, first, n):
        """E_K(nonce || [ctr]32) for the n counters from `first` (1 is J0, 2.. the CTR blocks)."""
        rk = self._rk
        enc, pack = encrypt_halves, struct.pack
        n0, n1, n2, n3, n4, n5 = struct.unpack(">6H", nonce)
        return b"".join([pack(">8H", *enc(rk, n0, n1, n2, n3, n4, n5, c >> 16, c & 0xFFFF))
                         for c in range(first, first + n)])

    def encrypt(self, nonce, data, aad):
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        nonce, data = bytes(nonce), bytes(data)
        n = len(data)
        ks = self.keystream(nonce, 1, 1 + (n + 15) // 16)    # J0 and the CTR blocks in one go
        ct = _xor(data, ks[16:16 + n])
        s = ghash(self._h, bytes(aad) if aad else b"", ct) ^ int.from_bytes(ks[:16], "big")
        return ct + s.to_bytes(16, "big")

    def decrypt(self, nonce, data, aad):
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        data = bytes(data)
        if len(data) < 16:
            raise AuthError("GCM input shorter than its tag")
        nonce = bytes(nonce)
        ct = data[:-16]
        s = ghash(self._h, bytes(aad) if aad else b"", ct) ^ int.from_bytes(self.keystream(nonce, 1, 1), "big")
        if not ct_equal(s.to_bytes(16, "big"), data[-16:]):   # the tag first: a forgery costs no CTR
            raise AuthError("GCM tag mismatch")
        n = len(ct)
        if not n:
            return b""
        return _xor(ct, self.keystream(nonce, 2, (n + 15) // 16)[:n])

    def __repr__(self):
        return "AesGcm(<key hidden>)"


def aes_gcm(key):
    return AesGcm(key)
