"""MicroPython boards: AES from `cryptolib` (ECB and CBC, mbedTLS, hardware on ESP32) and
HMAC-SHA-256 on `hashlib.sha256`.

AES-CBC + HMAC-SHA2-256-128 runs in C and is advertised SPEED_FAST. Stock cryptolib has no CTR
or GCM, so AES-GCM builds its counter blocks in Python, encrypts them in one ECB call and does
GHASH in Python (firmware/crypto/pure.py): advertised SPEED_SLOW.

A cryptolib object is either an encryptor or a decryptor, and a CBC object carries its IV
forward, so cryptolib objects are made per packet (a key setup in C, cheap next to the packet)
and an SA keeps only its key — the caller's bytes object, not a copy — and, for GCM, H: no
mbedTLS context (~300 bytes) per SA on the heap (issue 7: 64 SAs in 64 KB).
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


_check_key = pure.check_key


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
        self._key = _check_key(key)
        self._h = int.from_bytes(cryptolib.aes(self._key, MODE_ECB).encrypt(bytes(16)), "big")

    def keystream(self, nonce, first, n):
        blocks = bytearray()
        for c in range(first, first + n):
            blocks += nonce
            blocks += struct.pack(">I", c)
        return cryptolib.aes(self._key, MODE_ECB).encrypt(blocks)


def aes_gcm(key):
    return AesGcm(key)


__all__ = ["NAME", "AuthError", "speed", "random", "hmac_sha256", "aes_cbc", "aes_gcm", "ct_equal"]
