"""MicroPython boards: AES from `cryptolib` (ECB and CBC, mbedTLS, hardware on ESP32) and
HMAC-SHA-256 on `hashlib.sha256`.

AES-CBC + HMAC-SHA2-256-128 runs in C and is advertised SPEED_FAST. Stock cryptolib has no CTR
or GCM, so AES-GCM builds its counter blocks in Python, encrypts them in one ECB call and does
GHASH and the XOR in Python or native code (firmware/crypto/gcm.py): advertised SPEED_SLOW.
ChaCha20-Poly1305 is the pure backend's (firmware/crypto/chachapoly.py): SPEED_SLOW too.

One cryptolib object per SA, made at its first packet and used in place (`encrypt(in, out)`):
no key schedule and no allocation per packet. A cryptolib object only encrypts or only decrypts
(an SA does one of them) and a CBC object carries its IV from call to call (the last ciphertext
block), which encrypt_into/decrypt_into take into account (see AesCbc). The object costs ~300
bytes on an RP2040 (mbedTLS 3.6's AES context 280, the IV 16, a header), less on an ESP32
(hardware AES keeps the key only); 64 SAs still fit the 64 KB budget (bench/mpy_heap.py).

Key material: the object's context (round keys) is C memory Python cannot zero; wipe() drops
the object, and the SA zeroes its own copy of the key (firmware/esp.py).
"""
import struct

import cryptolib

from firmware.crypto import gcm, hmac256, pure
from firmware.crypto.hmac256 import HmacSha256, ct_equal
from firmware.link import messages as m

NAME = "cryptolib"
IN_PLACE = True
MODE_ECB = 1
MODE_CBC = 2

AuthError = pure.AuthError
_check_key = pure.check_key
_Z16 = bytes(16)


def speed(encr):
    return m.SPEED_FAST if encr == m.ENCR_AES_CBC else m.SPEED_SLOW


def hmac_sha256(key):
    return HmacSha256(key)


HASHES = hmac256.HASHES
hmac = hmac256.hmac
chacha20_poly1305 = pure.chacha20_poly1305     # cryptolib has no ChaCha20: the small-int one


class AesCbc:
    """AES-CBC on one long-lived cryptolib object (zero IV at creation). Its state between calls
    is the chaining block X (the last ciphertext block it produced or consumed):
      encrypt_into: the first block is XORed with X before the call, so the call computes
                    E_K(P1 ^ X ^ X) = E_K(P1): CBC under a zero IV, as pure.AesCbc does;
      decrypt_into: X only changes the first output block, which the contract leaves open."""

    def __init__(self, key):
        self.key = _check_key(key)
        self._c = None
        self._x = None

    def encrypt_into(self, buf, off, end):
        if (end - off) % 16 or end <= off:
            raise ValueError("CBC data must be whole blocks")
        c = self._c
        if c is None:
            c = self._c = cryptolib.aes(self.key, MODE_CBC, _Z16)
            self._x = bytearray(16)
        x = self._x
        for i in range(16):
            buf[off + i] ^= x[i]
        mv = memoryview(buf)[off:end]
        c.encrypt(mv, mv)
        e = end - 16
        for i in range(16):
            x[i] = buf[e + i]

    def decrypt_into(self, buf, off, end):
        if (end - off) % 16 or end <= off:
            raise ValueError("CBC data must be whole blocks")
        c = self._c
        if c is None:
            c = self._c = cryptolib.aes(self.key, MODE_CBC, _Z16)
        mv = memoryview(buf)[off:end]
        c.decrypt(mv, mv)

    # bytes in, bytes out (known-answer tests): a fresh object per call
    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        return cryptolib.aes(self.key, MODE_CBC, bytes(iv)).encrypt(bytes(data))

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        return cryptolib.aes(self.key, MODE_CBC, bytes(iv)).decrypt(bytes(data))

    def wipe(self):
        self._c = None
        if self._x is not None:
            for i in range(16):
                self._x[i] = 0

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


_KS = [bytearray(0)]        # counter blocks, then the keystream: grows to the largest packet
_EK0 = bytearray(16)


class AesGcm(pure.AesGcm):
    """GCM with the block cipher in cryptolib ECB (one object per SA, one call per packet) and
    GHASH and the XOR in firmware/crypto/gcm.py."""

    def __init__(self, key):
        self._key = _check_key(key)
        e = self._e = cryptolib.aes(self._key, MODE_ECB)
        h = self._h = bytearray(16)
        e.encrypt(h, h)
        if gcm.IMPL is None:
            gcm.select()

    def _ek0(self, nonce):
        b = _EK0
        b[0:12] = nonce
        struct.pack_into(">I", b, 12, 1)
        self._e.encrypt(b, b)
        s = pure._BLK
        for i in range(8):
            s[i] = b[2 * i] << 8 | b[2 * i + 1]
        return s

    def _ctr(self, nonce, src, soff, dst, doff, n):
        if not n:
            return
        k = (n + 15) & ~15
        ks = _KS[0]
        if len(ks) < k:
            ks = _KS[0] = bytearray((k + 255) & ~255)
        pack = struct.pack_into
        c = 2
        for o in range(0, k, 16):
            ks[o:o + 12] = nonce
            pack(">I", ks, o + 12, c)
            c += 1
        mv = memoryview(ks)[0:k]
        self._e.encrypt(mv, mv)
        gcm.xor_into(dst, doff, src, soff, ks, 0, n)

    def wipe(self):
        gcm.forget(self._h)
        for i in range(16):
            self._h[i] = 0
        self._e = None
        ks = _KS[0]
        for i in range(len(ks)):
            ks[i] = 0
        for i in range(16):
            _EK0[i] = 0


def aes_gcm(key):
    return AesGcm(key)


__all__ = ["NAME", "IN_PLACE", "AuthError", "speed", "hmac_sha256", "hmac", "HASHES", "aes_cbc", "aes_gcm",
           "chacha20_poly1305", "ct_equal"]
