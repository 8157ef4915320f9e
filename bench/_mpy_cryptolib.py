# A stand-in for MicroPython's `cryptolib`, for the benchmarks only (bench/mpy_heap.py,
# bench/mpy_alloc.py): the wasm MicroPython has no cryptolib, so the firmware's cryptolib backend
# runs there on this one, put in sys.modules (never flashed, never on a board).
#
# Same API as the real module (extmod/modcryptolib.c, MicroPython 1.27): aes(key, mode[, IV]) with
# MODE_ECB (1) and MODE_CBC (2); encrypt(in[, out]) / decrypt(in[, out]) on whole blocks, `out` at
# least as long as `in` and allowed to be `in` itself; a CBC IV carried across calls; one direction
# per object ("can't encrypt & decrypt").
#
# What it allocates is what the C module allocates, and nothing else is counted: the object (the
# C object on an RP2040 is ~300 bytes: mbedTLS 3.6's AES context 280, the IV 16, a header; the
# stand-in keeps all its state in a bytearray of that size) and, without `out`, the result. Its
# own Python work (the block cipher is firmware/crypto/pure.py's, the key schedule made per
# call) allocates too; that is measured with gc.mem_alloc() around it and added up in
# `cryptolib.standin_alloc`, which a benchmark subtracts.
import gc as _gc
import sys as _sys

from firmware.crypto import pure as _pure

_CTX_BYTES = 288      # with the bytearray's own header, about the C object's ~300 bytes


def _blocks(data):
    if len(data) % 16:
        raise ValueError("blksize % 16")


class _cryptolib:
    MODE_ECB = 1
    MODE_CBC = 2
    standin_alloc = [0]      # bytes the stand-in's Python work allocated (not the C module's)

    class aes:
        # All of an object's state is in one bytearray of the C object's size (the heap it
        # keeps is the C object's): the key at 0, its length at 32, the mode at 33, the
        # direction at 34 (0 none yet, 1 encrypt, 2 decrypt), the IV at 48.
        def __init__(self, key, mode, IV=None):
            if mode not in (1, 2):
                raise ValueError("mode")
            if len(key) not in (16, 32):
                raise ValueError("key")
            if IV is not None and len(IV) != 16 or mode == 2 and IV is None:
                raise ValueError("IV")
            c = self._ctx = bytearray(_CTX_BYTES)
            c[0:len(key)] = key
            c[32] = len(key)
            c[33] = mode
            if IV is not None:
                c[48:64] = IV

        def _run(self, enc, data, out):
            _blocks(data)
            if out is None:
                out = bytearray(len(data))              # the C module returns a new bytes object
            elif len(out) < len(data):
                raise ValueError("output too small")
            c = self._ctx
            d = 1 if enc else 2
            if not c[34]:
                c[34] = d
            elif c[34] != d:
                raise ValueError("can't encrypt & decrypt")
            a = _gc.mem_alloc()
            aes = _pure.Aes(bytes(c[0:c[32]]))          # the schedule, made per call: not kept
            f = aes.encrypt_block if enc else aes.decrypt_block
            cbc = c[33] == 2
            for i in range(0, len(data), 16):
                blk = bytes(data[i:i + 16])
                if cbc and enc:
                    blk = bytes(blk[j] ^ c[48 + j] for j in range(16))
                r = f(blk)
                if cbc:
                    if enc:
                        c[48:64] = r
                    else:
                        r = bytes(r[j] ^ c[48 + j] for j in range(16))
                        c[48:64] = blk
                out[i:i + 16] = r
            _cryptolib.standin_alloc[0] += _gc.mem_alloc() - a
            return out

        def encrypt(self, data, out=None):
            return self._run(True, data, out)

        def decrypt(self, data, out=None):
            return self._run(False, data, out)


_sys.modules["cryptolib"] = _cryptolib
