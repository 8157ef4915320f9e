"""Pure-Python crypto backend: AES (FIPS 197), CTR/GCM (NIST SP 800-38D), CBC, HMAC-SHA-256 (and
-384/-512 where hashlib has them), ChaCha20-Poly1305 (RFC 8439, firmware/crypto/chachapoly.py).

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
- GHASH keeps only H (16 bytes) per key; its tables are firmware/crypto/gcm.py's, shared.
- Nothing is allocated per block: blocks are worked on in a module array('H') of 8 halves, the
  ESP engine's buffers are encrypted in place (encrypt_into, seal_into, ...), written with
  struct.pack_into, and no tuple of four or more is built (MicroPython builds one for
  `a, b, c, d = ...`; two and three it swaps on the stack).
"""
import struct
from array import array

from firmware.crypto import gcm, hmac256
from firmware.crypto.hmac256 import HmacSha256, ct_equal, equal_at  # noqa: F401  (ct_equal: the backend interface)
from firmware.link import messages as m

NAME = "pure"
IN_PLACE = True     # aes_gcm objects have seal_into/open_into (firmware/crypto/__init__.py)


class AuthError(ValueError):
    """GCM tag did not verify."""


def speed(encr):
    return m.SPEED_SLOW


def hmac_sha256(key):
    return HmacSha256(key)


HASHES = hmac256.HASHES


def hmac(name, key):
    return hmac256.hmac(name, key)


def chacha20_poly1305(key):
    """ChaCha20-Poly1305 (RFC 8439 §2.8) in firmware/crypto/chachapoly.py, allocation-free. Imported
    at the first ChaCha20-Poly1305 SA: its code takes ~11 KB of a board's heap."""
    from firmware.crypto import chachapoly
    return chachapoly.ChaChaPoly(key, AuthError)


def check_key(key):
    """The AES key: the caller's bytes or bytearray itself (no copy: the SA zeroes its key when
    it is deleted, firmware/esp.py), anything else as bytes."""
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return key if type(key) in (bytes, bytearray) else bytes(key)


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
                x0 = S[h >> 8]
                x1 = S[h & 255]
                x2 = S[lo >> 8]
                x3 = S[lo & 255]
                h, lo = a[x0] ^ b[x1] ^ c[x2] ^ d[x3], c[x0] ^ d[x1] ^ a[x2] ^ b[x3]
            dk.append(h)
            dk.append(lo)
    return dk


def encrypt_block(rk, s):
    """Encrypt the block in s (array('H'): its eight big-endian 16-bit halves) in place under
    schedule rk. No tuple, no int object: nothing is allocated."""
    A, B, C, D = _TE
    h0 = s[0] ^ rk[0]
    l0 = s[1] ^ rk[1]
    h1 = s[2] ^ rk[2]
    l1 = s[3] ^ rk[3]
    h2 = s[4] ^ rk[4]
    l2 = s[5] ^ rk[5]
    h3 = s[6] ^ rk[6]
    l3 = s[7] ^ rk[7]
    k = 8
    for _ in range(len(rk) // 8 - 2):
        # column c's bytes are (hc >> 8, hc & 255, lc >> 8, lc & 255); row r is taken from
        # column c + r (ShiftRows), the tables do SubBytes and MixColumns
        n0 = A[h0 >> 8] ^ B[h1 & 255] ^ C[l2 >> 8] ^ D[l3 & 255] ^ rk[k]
        n1 = C[h0 >> 8] ^ D[h1 & 255] ^ A[l2 >> 8] ^ B[l3 & 255] ^ rk[k + 1]
        n2 = A[h1 >> 8] ^ B[h2 & 255] ^ C[l3 >> 8] ^ D[l0 & 255] ^ rk[k + 2]
        n3 = C[h1 >> 8] ^ D[h2 & 255] ^ A[l3 >> 8] ^ B[l0 & 255] ^ rk[k + 3]
        n4 = A[h2 >> 8] ^ B[h3 & 255] ^ C[l0 >> 8] ^ D[l1 & 255] ^ rk[k + 4]
        n5 = C[h2 >> 8] ^ D[h3 & 255] ^ A[l0 >> 8] ^ B[l1 & 255] ^ rk[k + 5]
        n6 = A[h3 >> 8] ^ B[h0 & 255] ^ C[l1 >> 8] ^ D[l2 & 255] ^ rk[k + 6]
        l3 = C[h3 >> 8] ^ D[h0 & 255] ^ A[l1 >> 8] ^ B[l2 & 255] ^ rk[k + 7]
        h0 = n0
        l0 = n1
        h1 = n2
        l1 = n3
        h2 = n4
        l2 = n5
        h3 = n6
        k += 8
    S = _SB[0]
    s[0] = (S[h0 >> 8] << 8 | S[h1 & 255]) ^ rk[k]
    s[1] = (S[l2 >> 8] << 8 | S[l3 & 255]) ^ rk[k + 1]
    s[2] = (S[h1 >> 8] << 8 | S[h2 & 255]) ^ rk[k + 2]
    s[3] = (S[l3 >> 8] << 8 | S[l0 & 255]) ^ rk[k + 3]
    s[4] = (S[h2 >> 8] << 8 | S[h3 & 255]) ^ rk[k + 4]
    s[5] = (S[l0 >> 8] << 8 | S[l1 & 255]) ^ rk[k + 5]
    s[6] = (S[h3 >> 8] << 8 | S[h0 & 255]) ^ rk[k + 6]
    s[7] = (S[l1 >> 8] << 8 | S[l2 & 255]) ^ rk[k + 7]


def decrypt_block(rk, s):
    """The inverse of encrypt_block under rk = invert_key(ek), in place."""
    A, B, C, D = _TD
    h0 = s[0] ^ rk[0]
    l0 = s[1] ^ rk[1]
    h1 = s[2] ^ rk[2]
    l1 = s[3] ^ rk[3]
    h2 = s[4] ^ rk[4]
    l2 = s[5] ^ rk[5]
    h3 = s[6] ^ rk[6]
    l3 = s[7] ^ rk[7]
    k = 8
    for _ in range(len(rk) // 8 - 2):
        n0 = A[h0 >> 8] ^ B[h3 & 255] ^ C[l2 >> 8] ^ D[l1 & 255] ^ rk[k]
        n1 = C[h0 >> 8] ^ D[h3 & 255] ^ A[l2 >> 8] ^ B[l1 & 255] ^ rk[k + 1]
        n2 = A[h1 >> 8] ^ B[h0 & 255] ^ C[l3 >> 8] ^ D[l2 & 255] ^ rk[k + 2]
        n3 = C[h1 >> 8] ^ D[h0 & 255] ^ A[l3 >> 8] ^ B[l2 & 255] ^ rk[k + 3]
        n4 = A[h2 >> 8] ^ B[h1 & 255] ^ C[l0 >> 8] ^ D[l3 & 255] ^ rk[k + 4]
        n5 = C[h2 >> 8] ^ D[h1 & 255] ^ A[l0 >> 8] ^ B[l3 & 255] ^ rk[k + 5]
        n6 = A[h3 >> 8] ^ B[h2 & 255] ^ C[l1 >> 8] ^ D[l0 & 255] ^ rk[k + 6]
        l3 = C[h3 >> 8] ^ D[h2 & 255] ^ A[l1 >> 8] ^ B[l0 & 255] ^ rk[k + 7]
        h0 = n0
        l0 = n1
        h1 = n2
        l1 = n3
        h2 = n4
        l2 = n5
        h3 = n6
        k += 8
    S = _SB[1]
    s[0] = (S[h0 >> 8] << 8 | S[h3 & 255]) ^ rk[k]
    s[1] = (S[l2 >> 8] << 8 | S[l1 & 255]) ^ rk[k + 1]
    s[2] = (S[h1 >> 8] << 8 | S[h0 & 255]) ^ rk[k + 2]
    s[3] = (S[l3 >> 8] << 8 | S[l2 & 255]) ^ rk[k + 3]
    s[4] = (S[h2 >> 8] << 8 | S[h1 & 255]) ^ rk[k + 4]
    s[5] = (S[l0 >> 8] << 8 | S[l3 & 255]) ^ rk[k + 5]
    s[6] = (S[h3 >> 8] << 8 | S[h2 & 255]) ^ rk[k + 6]
    s[7] = (S[l1 >> 8] << 8 | S[l0 & 255]) ^ rk[k + 7]


def _enc_schedule(key):
    _enc_tables()
    return expand_key(key)


def _zero(a):
    """Zero an array or bytearray in place (key material of a deleted SA)."""
    if a is not None:
        for i in range(len(a)):
            a[i] = 0


_BLK = array("H", bytes(16))    # the block being worked on (the firmware is single-threaded)
_pack_into = struct.pack_into


class Aes:
    """The AES block cipher (FIPS 197), one block at a time (known-answer tests)."""

    def __init__(self, key):
        self.ek = _enc_schedule(check_key(key))
        self.dk = None

    def encrypt_block(self, block):
        s = array("H", struct.unpack(">8H", bytes(block)))
        encrypt_block(self.ek, s)
        return struct.pack(">8H", *s)

    def decrypt_block(self, block):
        if self.dk is None:
            self.dk = invert_key(self.ek)
        s = array("H", struct.unpack(">8H", bytes(block)))
        decrypt_block(self.dk, s)
        return struct.pack(">8H", *s)

    def __repr__(self):
        return "Aes(<key hidden>)"


# ---- CBC -------------------------------------------------------------------------------------
class AesCbc:
    """AES-CBC without padding (the ESP trailer pads, RFC 3602 §2.4), in place on the caller's
    buffer (encrypt_into/decrypt_into: what the ESP engine uses; nothing is allocated) or on
    bytes (encrypt/decrypt). Keeps the key (the caller's object, not a copy) and the schedule
    it has needed so far: an SA only encrypts or only decrypts, so it holds one."""

    def __init__(self, key):
        self._key = check_key(key)
        self._ek = self._dk = None

    def _enc_rk(self):
        rk = self._ek
        if rk is None:
            rk = self._ek = _enc_schedule(self._key)
        return rk

    def encrypt_into(self, buf, off, end):
        """CBC-encrypt buf[off:end] (whole blocks) in place under a zero IV. With an IV V,
        CBC_V(P1, P2..) is the same as this over (P1 ^ V), P2..; and over B, P1, P2.. it gives
        E_K(B) followed by CBC with the IV E_K(B) (how the ESP engine derives its IVs)."""
        if (end - off) % 16:
            raise ValueError("CBC data must be whole blocks")
        rk = self._enc_rk()
        s = _BLK
        for i in range(8):
            s[i] = 0
        enc, pack = encrypt_block, _pack_into
        for o in range(off, end, 16):
            s[0] ^= buf[o] << 8 | buf[o + 1]
            s[1] ^= buf[o + 2] << 8 | buf[o + 3]
            s[2] ^= buf[o + 4] << 8 | buf[o + 5]
            s[3] ^= buf[o + 6] << 8 | buf[o + 7]
            s[4] ^= buf[o + 8] << 8 | buf[o + 9]
            s[5] ^= buf[o + 10] << 8 | buf[o + 11]
            s[6] ^= buf[o + 12] << 8 | buf[o + 13]
            s[7] ^= buf[o + 14] << 8 | buf[o + 15]
            enc(rk, s)
            pack(">8H", buf, o, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])

    def decrypt_into(self, buf, off, end):
        """CBC-decrypt buf[off:end] in place under a zero IV: buf[off + 16:end] becomes the
        plaintext of the ciphertext there with the IV buf[off:off + 16]; what the first block
        becomes is not specified (the cryptolib backend leaves something else there)."""
        if (end - off) % 16:
            raise ValueError("CBC data must be whole blocks")
        rk = self._dk
        if rk is None:
            ek = self._ek
            _enc_tables()
            rk = self._dk = invert_key(ek if ek is not None else expand_key(self._key))
        s = _BLK
        dec, pack = decrypt_block, _pack_into
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 0
        for o in range(off, end, 16):
            c0 = buf[o] << 8 | buf[o + 1]
            c1 = buf[o + 2] << 8 | buf[o + 3]
            c2 = buf[o + 4] << 8 | buf[o + 5]
            c3 = buf[o + 6] << 8 | buf[o + 7]
            c4 = buf[o + 8] << 8 | buf[o + 9]
            c5 = buf[o + 10] << 8 | buf[o + 11]
            c6 = buf[o + 12] << 8 | buf[o + 13]
            c7 = buf[o + 14] << 8 | buf[o + 15]
            s[0] = c0
            s[1] = c1
            s[2] = c2
            s[3] = c3
            s[4] = c4
            s[5] = c5
            s[6] = c6
            s[7] = c7
            dec(rk, s)
            pack(">8H", buf, o, s[0] ^ p0, s[1] ^ p1, s[2] ^ p2, s[3] ^ p3, s[4] ^ p4, s[5] ^ p5,
                 s[6] ^ p6, s[7] ^ p7)
            p0 = c0
            p1 = c1
            p2 = c2
            p3 = c3
            p4 = c4
            p5 = c5
            p6 = c6
            p7 = c7

    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        buf = bytearray(data)
        for i in range(min(16, len(buf))):
            buf[i] ^= iv[i]
        self.encrypt_into(buf, 0, len(buf))
        return bytes(buf)

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        buf = bytearray(iv) + data
        self.decrypt_into(buf, 0, len(buf))
        return bytes(buf[16:])

    def wipe(self):
        """Forget the key: zero the schedules (the key itself is the caller's to zero)."""
        _zero(self._ek)
        _zero(self._dk)
        self._ek = self._dk = None
        _zero(_BLK)

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


# ---- GCM ---------------------------------------------------------------------------------------
class AesGcm:
    """AES-GCM with 96-bit nonces and 128-bit tags (NIST SP 800-38D). seal_into/open_into work on
    the caller's buffers (the ESP engine's path: nothing allocated per block); encrypt/decrypt
    have the call shape of cryptography's AESGCM. Per key: the encryption schedule and H; GHASH
    and the tables it shares between keys are firmware/crypto/gcm.py's. The block cipher is
    _ctr() and _ek0(); the cryptolib backend replaces them."""

    def __init__(self, key):
        self._rk = _enc_schedule(check_key(key))
        s = _BLK
        for i in range(8):
            s[i] = 0
        encrypt_block(self._rk, s)
        self._h = bytearray(struct.pack(">8H", *s))

    def _counter(self, nonce, c):
        s = _BLK
        s[0] = nonce[0] << 8 | nonce[1]
        s[1] = nonce[2] << 8 | nonce[3]
        s[2] = nonce[4] << 8 | nonce[5]
        s[3] = nonce[6] << 8 | nonce[7]
        s[4] = nonce[8] << 8 | nonce[9]
        s[5] = nonce[10] << 8 | nonce[11]
        s[6] = c >> 16
        s[7] = c & 0xFFFF
        return s

    def _ek0(self, nonce):
        """E_K(J0), J0 = nonce || 1, as an array('H') of 8 halves."""
        s = self._counter(nonce, 1)
        encrypt_block(self._rk, s)
        return s

    def _ctr(self, nonce, src, soff, dst, doff, n):
        """dst[doff:doff+n] = src[soff:soff+n] ^ the keystream from counter 2 (GCTR, §6.5)."""
        rk, enc, pack = self._rk, encrypt_block, _pack_into
        c = 2
        end = soff + n
        while soff < end:
            s = self._counter(nonce, c)
            enc(rk, s)
            c += 1
            if end - soff >= 16:
                pack(">8H", dst, doff,
                     (src[soff] << 8 | src[soff + 1]) ^ s[0], (src[soff + 2] << 8 | src[soff + 3]) ^ s[1],
                     (src[soff + 4] << 8 | src[soff + 5]) ^ s[2], (src[soff + 6] << 8 | src[soff + 7]) ^ s[3],
                     (src[soff + 8] << 8 | src[soff + 9]) ^ s[4], (src[soff + 10] << 8 | src[soff + 11]) ^ s[5],
                     (src[soff + 12] << 8 | src[soff + 13]) ^ s[6], (src[soff + 14] << 8 | src[soff + 15]) ^ s[7])
                soff += 16
                doff += 16
            else:
                for j in range(end - soff):
                    v = s[j >> 1]
                    dst[doff + j] = src[soff + j] ^ (v & 255 if j & 1 else v >> 8)
                break

    def _tag(self, nonce, aad, ct, off, end, out, ooff):
        gcm.start(self._h)
        gcm.update(aad, 0, len(aad))
        gcm.update(ct, off, end)
        gcm.finish(len(aad), end - off, self._ek0(nonce), out, ooff)

    def seal_into(self, nonce, aad, buf, off, end):
        """Encrypt buf[off:end] in place and write the tag to buf[end:end + 16]."""
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        self._ctr(nonce, buf, off, buf, off, end - off)
        self._tag(nonce, aad, buf, off, end, buf, end)

    def open_into(self, nonce, aad, src, off, end, dst, doff):
        """Check the tag src[end:end + 16] over src[off:end], then decrypt src[off:end] into
        dst[doff:]. AuthError (nothing written) if the tag is wrong: a forgery costs no CTR."""
        if len(nonce) != 12:
            raise ValueError("GCM nonce must be 12 bytes")
        if end + 16 > len(src) or end < off:
            raise AuthError("GCM input shorter than its tag")
        t = _TAG
        self._tag(nonce, aad, src, off, end, t, 0)
        if not equal_at(t, src, end, 16):
            raise AuthError("GCM tag mismatch")
        self._ctr(nonce, src, off, dst, doff, end - off)

    def encrypt(self, nonce, data, aad):
        n = len(data)
        buf = bytearray(n + 16)
        buf[0:n] = data
        self.seal_into(nonce, aad or b"", buf, 0, n)
        return bytes(buf)

    def decrypt(self, nonce, data, aad):
        n = len(data) - 16
        if n < 0:
            raise AuthError("GCM input shorter than its tag")
        out = bytearray(n)
        self.open_into(nonce, aad or b"", data, 0, n, out, 0)
        return bytes(out)

    def wipe(self):
        """Forget the key: zero the schedule, H and whatever GHASH derived from H."""
        gcm.forget(self._h)
        _zero(self._rk)
        _zero(self._h)
        _zero(_BLK)
        _zero(_TAG)

    def __repr__(self):
        return "AesGcm(<key hidden>)"


_TAG = bytearray(16)


def aes_gcm(key):
    return AesGcm(key)
