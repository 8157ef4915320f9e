# cpython-only: the `cryptography` library (OpenSSL); the simulated board and the host use it
"""CPython backend: `cryptography` (OpenSSL) for AES-GCM, ChaCha20-Poly1305 and AES-CBC; HMAC-SHA-2
on hashlib (also OpenSSL on CPython), whose copy() of the keyed states beats building an HMAC per
packet.

aes_gcm() returns cryptography's AESGCM object itself, so the ESP fast path calls OpenSSL with
no Python layer in between (cache it per SA: building one costs more than sealing a packet).
"""
import hmac as _hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from firmware.crypto import hmac256
from firmware.crypto.hmac256 import HmacSha256  # hashlib (OpenSSL) with copied keyed states
from firmware.link import messages as m

NAME = "cryptography"
IN_PLACE = False     # aes_gcm() is AESGCM itself: bytes in, bytes out (firmware/crypto/__init__.py)
AuthError = InvalidTag


def speed(encr):
    return m.SPEED_FAST


def ct_equal(a, b):
    return _hmac.compare_digest(a, b)       # any bytes-like objects, no copies


def aes_gcm(key):
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return AESGCM(bytes(key))


class AesCbc:
    """AES-CBC on two long-lived OpenSSL contexts per key: building a context costs ~30 us,
    more than the packet. CBC's only state is the chaining block, so a packet with its own
    IV is run through a running context like this:
      decrypt: feed IV || C and drop the first output block (the IV acts as C0);
      encrypt: feed (P1 ^ IV ^ X) || P2.. where X is the context's last output block, giving
               E_K(P1 ^ IV) || ... exactly as a fresh CBC(IV) context would.
    Checked against fresh contexts by tests/test_crypto_backends.py."""
    __slots__ = ("_enc", "_dec", "_last")

    def __init__(self, key):
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        alg = algorithms.AES(bytes(key))
        self._enc = Cipher(alg, modes.CBC(bytes(16))).encryptor()
        self._dec = Cipher(alg, modes.CBC(bytes(16))).decryptor()
        self._last = 0   # the encryptor's chaining value (its IV, then its last output block)

    def encrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        if not data:
            return b""
        first = int.from_bytes(data[:16], "big") ^ int.from_bytes(iv, "big") ^ self._last
        out = self._enc.update(first.to_bytes(16, "big") + data[16:])
        self._last = int.from_bytes(out[-16:], "big")
        return out

    def decrypt(self, iv, data):
        if len(data) % 16 or len(iv) != 16:
            raise ValueError("CBC data must be whole blocks, IV 16 bytes")
        if not data:
            return b""
        return self._dec.update(bytes(iv) + bytes(data))[16:]

    # In place under a zero IV (the other backends' contract, firmware/crypto/pure.py AesCbc):
    # encrypt_into is encrypt() with IV 0; decrypt_into feeds the blocks as they are, which
    # leaves the plaintext of buf[off + 16:end] under the IV buf[off:off + 16] behind them.
    def encrypt_into(self, buf, off, end):
        if (end - off) % 16 or end <= off:
            raise ValueError("CBC data must be whole blocks")
        mv = memoryview(buf)[off:end]
        mv[:16] = (int.from_bytes(mv[:16], "big") ^ self._last).to_bytes(16, "big")
        out = self._enc.update(mv)
        mv[:] = out
        self._last = int.from_bytes(out[-16:], "big")

    def decrypt_into(self, buf, off, end):
        if (end - off) % 16:
            raise ValueError("CBC data must be whole blocks")
        mv = memoryview(buf)[off:end]
        mv[:] = self._dec.update(mv)

    def wipe(self):
        # OpenSSL's contexts cannot be zeroed from Python: dropped
        self._enc = self._dec = None

    def __repr__(self):
        return "AesCbc(<key hidden>)"


def aes_cbc(key):
    return AesCbc(key)


def hmac_sha256(key):
    return HmacSha256(key)


HASHES = hmac256.HASHES
hmac = hmac256.hmac


def chacha20_poly1305(key):
    if len(key) != 32:
        raise ValueError("ChaCha20-Poly1305 key must be 32 bytes")
    return ChaCha20Poly1305(bytes(key))
