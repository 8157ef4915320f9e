# cpython-only: the simulator's stand-in for MicroPython's cryptolib, on the `cryptography` library
"""MicroPython's `cryptolib` for the simulated board, backed by `cryptography` (OpenSSL).

A board whose profile runs the cryptolib backend (firmware/crypto/cryptolib_backend.py) has no
such module under CPython. The simulator installs this one as `cryptolib` so that it runs that
backend's own code — its CBC per packet, its GCM with GHASH in Python — and advertises in HELLO
what the real board advertises; the profile's CPU model (firmware/profiles.py cpu_costs) then
makes it as slow as the board.

The API is cryptolib's: aes(key, mode[, IV]) with MODE_ECB (1) and MODE_CBC (2); one direction
per object (a second direction raises, as on the board); CBC chains its IV across calls;
encrypt/decrypt(data[, out]) on whole 16-byte blocks.
"""
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MODE_ECB = 1
MODE_CBC = 2


class aes:  # noqa: N801 - cryptolib's name
    def __init__(self, key, mode, IV=None):  # noqa: N803
        if mode not in (MODE_ECB, MODE_CBC):
            raise ValueError("mode")
        if len(key) not in (16, 24, 32):
            raise ValueError("key")
        if mode == MODE_CBC and (IV is None or len(IV) != 16):
            raise ValueError("IV")
        self._cipher = Cipher(algorithms.AES(bytes(key)), modes.CBC(bytes(IV)) if mode == MODE_CBC else modes.ECB())
        self._ctx = None
        self._enc = None

    def _run(self, enc, data, out):
        if self._ctx is None:
            self._enc = enc
            self._ctx = self._cipher.encryptor() if enc else self._cipher.decryptor()
        elif self._enc != enc:
            raise OSError("can't encrypt & decrypt")
        if len(data) % 16:
            raise ValueError("blksize")
        r = self._ctx.update(bytes(data))
        if out is None:
            return r
        out[:len(r)] = r
        return None

    def encrypt(self, data, out=None):
        return self._run(True, data, out)

    def decrypt(self, data, out=None):
        return self._run(False, data, out)


def install():
    """Make `import cryptolib` find this module (the simulator calls it before building a board)."""
    sys.modules.setdefault("cryptolib", sys.modules[__name__])
