# native: armv6m xtensawin
# ruff: noqa: F821  (ptr8/ptr16 are viper builtins, not Python names)
"""Native code for the boards (@micropython.viper): GHASH blocks and the CTR XOR of
firmware/crypto/gcm.py, which says what they compute and runs them only after they gave its
Python versions' answers on a test vector (gcm.select()).

A .viper file, not .py: mpy-cross compiles it only with -march=armv6m (RP2040) or
-march=xtensawin (ESP32) (tools/fwcheck.py; `inv flash` installs it as firmware/crypto/native.mpy
for the board's architecture, or as native.py where a board takes sources); the wasm MicroPython
and CPython cannot import it (gcm.py then uses its Python versions). The arithmetic is on 16-bit
halves and bytes, so each expression has the value it has in Python (no 32-bit wrap, no sign):
tests/test_native.py runs this source on CPython with ptr8/ptr16 standing for plain indexing.
"""
import micropython


@micropython.viper
def ghash_blocks(y, xs, t, r, data, off: int, end: int):
    """Fold the whole blocks data[off:end] into y (8 halves); xs: 8 halves of scratch; t, r: the
    tables of gcm.py (TA/TB at k * 256 + byte, RA0 RA1 RB0 RB1 likewise)."""
    Y = ptr16(y)
    X = ptr16(xs)
    T = ptr16(t)
    R = ptr16(r)
    D = ptr8(data)
    z0 = Y[0]
    z1 = Y[1]
    z2 = Y[2]
    z3 = Y[3]
    z4 = Y[4]
    z5 = Y[5]
    z6 = Y[6]
    z7 = Y[7]
    while off < end:
        X[0] = z0 ^ ((D[off] << 8) | D[off + 1])
        X[1] = z1 ^ ((D[off + 2] << 8) | D[off + 3])
        X[2] = z2 ^ ((D[off + 4] << 8) | D[off + 5])
        X[3] = z3 ^ ((D[off + 6] << 8) | D[off + 7])
        X[4] = z4 ^ ((D[off + 8] << 8) | D[off + 9])
        X[5] = z5 ^ ((D[off + 10] << 8) | D[off + 11])
        X[6] = z6 ^ ((D[off + 12] << 8) | D[off + 13])
        w = z7 ^ ((D[off + 14] << 8) | D[off + 15])
        off += 16
        hi = w >> 8
        lo = (w & 255) + 2048
        z0 = T[hi] ^ T[lo]
        z1 = T[hi + 256] ^ T[lo + 256]
        z2 = T[hi + 512] ^ T[lo + 512]
        z3 = T[hi + 768] ^ T[lo + 768]
        z4 = T[hi + 1024] ^ T[lo + 1024]
        z5 = T[hi + 1280] ^ T[lo + 1280]
        z6 = T[hi + 1536] ^ T[lo + 1536]
        z7 = T[hi + 1792] ^ T[lo + 1792]
        j = 6
        while j >= 0:
            w = X[j]
            hi = w >> 8
            lo = (w & 255) + 2048
            a = z7 >> 8
            b = (z7 & 255) + 512
            z7 = z6 ^ T[hi + 1792] ^ T[lo + 1792]
            z6 = z5 ^ T[hi + 1536] ^ T[lo + 1536]
            z5 = z4 ^ T[hi + 1280] ^ T[lo + 1280]
            z4 = z3 ^ T[hi + 1024] ^ T[lo + 1024]
            z3 = z2 ^ T[hi + 768] ^ T[lo + 768]
            z2 = z1 ^ T[hi + 512] ^ T[lo + 512]
            z1 = z0 ^ T[hi + 256] ^ T[lo + 256] ^ R[a + 256] ^ R[b + 256]
            z0 = T[hi] ^ T[lo] ^ R[a] ^ R[b]
            j -= 1
    Y[0] = z0
    Y[1] = z1
    Y[2] = z2
    Y[3] = z3
    Y[4] = z4
    Y[5] = z5
    Y[6] = z6
    Y[7] = z7


@micropython.viper
def xor_into(dst, doff: int, src, soff: int, ks, koff: int, n: int):
    """dst[doff:doff+n] = src[soff:soff+n] ^ ks[koff:koff+n], byte by byte (no alignment
    assumed: the Cortex-M0+ faults on unaligned word access)."""
    d = ptr8(dst)
    s = ptr8(src)
    k = ptr8(ks)
    i = 0
    while i < n:
        d[doff + i] = s[soff + i] ^ k[koff + i]
        i += 1


@micropython.viper
def fill_tables(t):
    """gcm._fill_py: every entry of the 16 tables from its single-bit entries."""
    T = ptr16(t)
    k = 0
    while k < 16:
        base = k << 8
        T[base] = 0
        p = 1
        while p < 256:
            tp = T[base + p]
            q = 1
            while q < p:
                T[base + p + q] = tp ^ T[base + q]
                q += 1
            p <<= 1
        k += 1
