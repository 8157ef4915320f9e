"""MicroPython boards: AES from `cryptolib` (ECB and CBC, mbedTLS, hardware on ESP32) and
HMAC-SHA-256 on `hashlib.sha256`.

AES-CBC + HMAC-SHA2-256-128 runs in C and is advertised SPEED_FAST. Stock cryptolib has no CTR
or GCM, so AES-GCM builds its counter blocks in Python, encrypts them in one ECB call and does
GHASH in Python (firmware/crypto/pure.py): advertised SPEED_SLOW.

A cryptolib object is either an encryptor or a decryptor, and a CBC object carries its IV
forward, so CBC objects are made per packet; the GCM key's ECB encryptor is kept per SA.
"""
import os
import struct

import cryptolib

from firmware.crypto import pure
from firmware.crypto.hmac256 import HmacSha256, ct_equal
from firmware.link import messages as m

NAME = "cryptolib"
MODE_ECB = 1
MODE_CBC = 2

AuthError = pure.AuthError


def speed(encr):
    return m.SPEED_FAST if encr == m.ENCR_AES_CBC else m.SPEED_SLOW


# None where the runtime has no os.urandom (the wasm port): the ESP engine then derives CBC IVs
# by encrypting the sequence number (NIST SP 800-38A Appendix C).
random = getattr(os, "urandom", None)


def hmac_sha256(key):
    return HmacSha256(key)


def _check_key(key):
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return bytes(key)


class AesCbc:
    def __init__(self, key):
        self.key = _check_key(key)

    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        return cryptolib.aes(self.key, MODE_CBC, bytes(iv)).encrypt(bytes(data))

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        return cryptolib.aes(self.key, MODE_CBC, bytes(iv)).decrypt(bytes(data))

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


class AesGcm(pure.AesGcm):
    """GCM with the block cipher in cryptolib ECB (one call per packet) and GHASH in Python."""

    def __init__(self, key):
        key = _check_key(key)
        self._ecb = cryptolib.aes(key, MODE_ECB)
        h = self._ecb.encrypt(bytes(16))
        self.ghash = pure.Ghash(int.from_bytes(h, "big"))

    def _ctr(self, n0, n1, n2, counter, data):
        n = len(data)
        if not n:
            return b""
        prefix = struct.pack(">III", n0, n1, n2)
        blocks = bytearray()
        for i in range((n + 15) // 16):
            blocks += prefix
            blocks += struct.pack(">I", (counter + i) & 0xFFFFFFFF)
        ks = self._ecb.encrypt(blocks)
        if len(ks) != n:
            ks = ks[:n]
        return pure._xor(data, ks)

    def _tag(self, n0, n1, n2, aad, ct):
        g = self.ghash
        y = g.update(0, aad)
        y = g.update(y, ct)
        y = g.mult(y ^ ((len(aad) * 8) << 64 | (len(ct) * 8)))
        e = self._ecb.encrypt(struct.pack(">IIII", n0, n1, n2, 1))
        return (y ^ int.from_bytes(e, "big")).to_bytes(16, "big")


def aes_gcm(key):
    return AesGcm(key)


__all__ = ["NAME", "AuthError", "speed", "random", "hmac_sha256", "aes_cbc", "aes_gcm", "ct_equal"]
