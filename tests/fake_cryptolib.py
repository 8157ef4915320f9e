"""A stand-in for MicroPython's `cryptolib` on CPython, so the cryptolib backend's own code runs
in CI: aes(key, mode[, IV]) with MODE_ECB (1) and MODE_CBC (2), multi-block ECB, a CBC IV that
chains across calls, and the one-direction-per-object rule of the real module."""
import sys
import types

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class aes:
    def __init__(self, key, mode, iv=None):
        if mode not in (1, 2):
            raise ValueError("mode")
        if mode == 2 and (iv is None or len(iv) != 16):
            raise ValueError("IV")
        self._c = Cipher(algorithms.AES(bytes(key)), modes.ECB() if mode == 1 else modes.CBC(bytes(iv)))
        self._dir = None
        self._ctx = None

    def _run(self, enc, data, out):
        if self._dir is None:
            self._dir = enc
            self._ctx = self._c.encryptor() if enc else self._c.decryptor()
        elif self._dir != enc:
            raise ValueError("can't encrypt & decrypt")
        if len(data) % 16:
            raise ValueError("blksize")
        r = self._ctx.update(bytes(data))
        if out is not None:
            out[:len(r)] = r
            return out
        return r

    def encrypt(self, data, out=None):
        return self._run(True, data, out)

    def decrypt(self, data, out=None):
        return self._run(False, data, out)


def load_backend():
    """firmware.crypto.cryptolib_backend bound to the stand-in, without leaving `cryptolib`
    importable (other tests must see this runtime as it is: no cryptolib)."""
    mod = types.ModuleType("cryptolib")
    mod.aes = aes
    mod.MODE_ECB, mod.MODE_CBC = 1, 2
    saved = sys.modules.get("cryptolib")
    sys.modules["cryptolib"] = mod
    sys.modules.pop("firmware.crypto.cryptolib_backend", None)
    try:
        from firmware.crypto import cryptolib_backend
    finally:
        import firmware.crypto as pkg
        sys.modules.pop("firmware.crypto.cryptolib_backend", None)
        if hasattr(pkg, "cryptolib_backend"):
            del pkg.cryptolib_backend
        if saved is None:
            sys.modules.pop("cryptolib", None)
        else:
            sys.modules["cryptolib"] = saved
    return cryptolib_backend
