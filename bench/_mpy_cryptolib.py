# A stand-in for MicroPython's `cryptolib`, for bench/mpy_heap.py only: the wasm MicroPython has
# no cryptolib, so the heap benchmark runs the firmware's cryptolib backend on this one, sent to
# the board through the REPL and put in sys.modules (never flashed, never on a board).
# Same API as the real module: aes(key, mode[, IV]) with MODE_ECB (1) and MODE_CBC (2),
# multi-block encrypt/decrypt, a CBC IV carried across calls, one direction per object. The
# block cipher is firmware/crypto/pure.py's, so it is as slow as the pure backend; its objects
# live for one packet (the backend makes them per packet) and its tables are reported apart.
import sys as _sys

from firmware.crypto import pure as _pure


class _cryptolib:
    MODE_ECB = 1
    MODE_CBC = 2

    class aes:
        def __init__(self, key, mode, IV=None):
            if mode not in (1, 2) or len(key) not in (16, 24, 32):
                raise ValueError("mode or key")
            if mode == 2 and (IV is None or len(IV) != 16):
                raise ValueError("IV")
            self._key, self._mode, self._iv, self._dir = bytes(key), mode, IV and bytes(IV), None

        def _run(self, enc, data):
            if self._dir is None:
                self._dir = enc
            elif self._dir != enc:
                raise ValueError("can't encrypt & decrypt")
            if len(data) % 16:
                raise ValueError("blksize")
            data = bytes(data)
            if self._mode == 2:
                c = _pure.AesCbc(self._key)
                out = c.encrypt(self._iv, data) if enc else c.decrypt(self._iv, data)
                if data:
                    self._iv = (out if enc else data)[-16:]
                return out
            a = _pure.Aes(self._key)
            f = a.encrypt_block if enc else a.decrypt_block
            return b"".join([f(data[i:i + 16]) for i in range(0, len(data), 16)])

        def encrypt(self, data):
            return self._run(True, data)

        def decrypt(self, data):
            return self._run(False, data)


_sys.modules["cryptolib"] = _cryptolib
