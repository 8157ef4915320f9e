# cpython-only: the `cryptography` library (OpenSSL); the simulated board and the host use it
"""CPython backend: `cryptography` (OpenSSL) for AES-GCM, AES-CBC and HMAC-SHA-256.

aes_gcm() returns cryptography's AESGCM object itself, so the ESP fast path calls OpenSSL with
no Python layer in between (cache it per SA: building one costs more than sealing a packet).
"""
import hmac as _hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware.link import messages as m

NAME = "cryptography"
AuthError = InvalidTag
random = os.urandom


def speed(encr):
    return m.SPEED_FAST


def ct_equal(a, b):
    return _hmac.compare_digest(bytes(a), bytes(b))


def aes_gcm(key):
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return AESGCM(bytes(key))


class AesCbc:
    __slots__ = ("_alg",)

    def __init__(self, key):
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        self._alg = algorithms.AES(bytes(key))

    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        e = Cipher(self._alg, modes.CBC(bytes(iv))).encryptor()
        return e.update(data) + e.finalize()

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        d = Cipher(self._alg, modes.CBC(bytes(iv))).decryptor()
        return d.update(data) + d.finalize()

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


class HmacSha256:
    __slots__ = ("_base",)

    def __init__(self, key):
        self._base = _chmac.HMAC(bytes(key), hashes.SHA256())

    def digest(self, data, tail=b""):
        h = self._base.copy()
        h.update(data)
        if tail:
            h.update(tail)
        return h.finalize()

    def __repr__(self):
        return "HmacSha256(<key hidden>)"


def hmac_sha256(key):
    return HmacSha256(key)
