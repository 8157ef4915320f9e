"""GCM's parts outside the block cipher (NIST SP 800-38D): GHASH and the CTR XOR, on small ints.

Both GCM backends of a board use them: the pure one (firmware/crypto/pure.py) and the cryptolib
one, whose C module has no GCM. Everything works on 16-bit halves, so every value is a small int
on MicroPython (31-bit there) and nothing is allocated per block; the state lives in module
buffers (the firmware is single-threaded).

GHASH, as Horner's rule on 16-bit chunks: a block X is eight halves w0..w7 (w0 its first two
bytes), X = sum of w_j(x) * x^(16j) with each half's first bit the lowest power (SP 800-38D
§6.3: the first bit of a block is the coefficient of x^0). Then
    Z = w7 * H;  Z = Z * x^16 + w_j * H  for j = 6 .. 0
Multiplying by x^16 moves every half up by one; the half that falls off the top (16
coefficients, x^112..x^127) comes back as d(x) * x^128 = d(x) * (1 + x + x^2 + x^7) in the two
lowest halves. w * H is looked up as hi(x) * H + lo(x) * x^8 * H from two 256-entry tables of
128-bit values (TA, TB), one per byte of w (Shoup's method at 16-bit steps): 8 steps a block.
The tables (8 KB, array('H')) are kept for the last key's H or two (SLOTS) and built again for
another key's; the reduction tables (2 KB) are constant.

Native code: on boards with a native emitter, firmware/crypto/native.viper (@micropython.viper,
compiled with mpy-cross -march only, installed as native.mpy) does the same work on the same
tables, and builds them. It is used only if it loads and gives the Python versions' answers on a
test vector (`select()`); else the Python versions run (the wasm MicroPython rejects native
code). IMPL says which runs.
"""
import struct
from array import array

from firmware import native_code
from firmware.crypto.hmac256 import equal_at  # noqa: F401  (the tag check of pure.AesGcm)

# Tables for this many keys' H: with the native builder (a board) one, since changing key costs
# well under a millisecond there; with the Python one two (the SAs of a tunnel, one each way),
# since a rebuild costs about what a packet's GHASH does.
SLOTS = {"native": 1, "python": 2}
_slots = []                     # [H (bytearray 16, valid if the last item > 0), TA/TB, views, last use]
_TV = None                      # the tables in use, as 16 memoryviews (TA0..TA7, TB0..TB7)
_T = None                       # ... and as one array (native code indexes k * 256 + byte)
_R = None                       # reduction: RA0 RA1 RB0 RB1, 256 halves each (constant)
_RV = None
_clock = [0]
_Y = array("H", bytes(16))      # the running GHASH value
_X = array("H", bytes(16))      # the block being multiplied, Y ^ X_i
_PAD = bytearray(16)            # a partial last block, zero-padded; the lengths block
_pack_into = struct.pack_into


def _reduction():
    global _R, _RV
    r = array("H", bytes(2 * 4 * 256))
    for b in range(256):
        # d's byte of x^0..x^7 (RA, the high byte) or x^8..x^15 (RB), its top bit the lowest
        # power; d(x) * x^128 reduced, as 32 bits (bit 31 is x^0) split in two halves
        for k, base in ((0, 0), (2, 8)):
            w = 0
            for q in range(8):
                if b & (0x80 >> q):
                    for t in (0, 1, 2, 7):
                        w ^= 1 << (31 - base - q - t)
            r[k * 256 + b] = w >> 16
            r[(k + 1) * 256 + b] = w & 0xFFFF
    _R = r
    mv = memoryview(r)
    _RV = tuple(mv[k * 256:(k + 1) * 256] for k in range(4))


def _slot():
    """A table slot for a new H: a free one, else the least recently used."""
    if _R is None:
        _reduction()
    if len(_slots) < SLOTS[IMPL or "python"]:
        t = array("H", bytes(2 * 16 * 256))
        mv = memoryview(t)
        _slots.append([bytearray(16), t, tuple(mv[k * 256:(k + 1) * 256] for k in range(16)), 0])
        return _slots[-1]
    old = _slots[0]
    for sl in _slots:
        if sl[3] < old[3]:
            old = sl
    return old


def reserve():
    """Make every table now: what a board with GCM SAs in use holds (10 KB with native code,
    18 KB without)."""
    if IMPL is None:
        select()
    while len(_slots) < SLOTS[IMPL]:
        _slot()[3] = 0


def _seed(t, h):
    """The single-bit entries: the byte 0x80 >> q stands for x^q (TA) or x^(q + 8) (TB), and
    its entry is H * x^q (x^(q + 8)). Multiplying by x moves every bit one place towards the
    end of the block; the bit that falls off (x^128) comes back as 0xE1 || 0^120."""
    v0, v1, v2, v3, v4, v5, v6, v7 = struct.unpack(">8H", h)
    for i in range(16):
        k = (0 if i < 8 else 8 * 256) + (0x80 >> (i & 7))
        t[k] = v0
        t[k + 256] = v1
        t[k + 512] = v2
        t[k + 768] = v3
        t[k + 1024] = v4
        t[k + 1280] = v5
        t[k + 1536] = v6
        t[k + 1792] = v7
        c = v7 & 1
        v7 = (v7 >> 1) | ((v6 & 1) << 15)
        v6 = (v6 >> 1) | ((v5 & 1) << 15)
        v5 = (v5 >> 1) | ((v4 & 1) << 15)
        v4 = (v4 >> 1) | ((v3 & 1) << 15)
        v3 = (v3 >> 1) | ((v2 & 1) << 15)
        v2 = (v2 >> 1) | ((v1 & 1) << 15)
        v1 = (v1 >> 1) | ((v0 & 1) << 15)
        v0 >>= 1
        if c:
            v0 ^= 0xE100


def _fill_py(t):
    """Every other entry of the 16 tables from the single-bit ones (the map is linear):
    T[p + q] = T[p] ^ T[q] for each power of two p and q < p; T[0] = 0."""
    for k in range(16):
        base = k << 8
        t[base] = 0
        p = 1
        while p < 256:
            tp = t[base + p]
            for q in range(1, p):
                t[base + p + q] = tp ^ t[base + q]
            p <<= 1


def _blocks_py(data, off, end):
    """Fold the whole blocks data[off:end] into _Y (see the module docstring)."""
    y, xs = _Y, _X
    ta0, ta1, ta2, ta3, ta4, ta5, ta6, ta7, tb0, tb1, tb2, tb3, tb4, tb5, tb6, tb7 = _TV
    ra0, ra1, rb0, rb1 = _RV
    z0 = y[0]
    z1 = y[1]
    z2 = y[2]
    z3 = y[3]
    z4 = y[4]
    z5 = y[5]
    z6 = y[6]
    z7 = y[7]
    while off < end:
        xs[0] = z0 ^ (data[off] << 8 | data[off + 1])
        xs[1] = z1 ^ (data[off + 2] << 8 | data[off + 3])
        xs[2] = z2 ^ (data[off + 4] << 8 | data[off + 5])
        xs[3] = z3 ^ (data[off + 6] << 8 | data[off + 7])
        xs[4] = z4 ^ (data[off + 8] << 8 | data[off + 9])
        xs[5] = z5 ^ (data[off + 10] << 8 | data[off + 11])
        xs[6] = z6 ^ (data[off + 12] << 8 | data[off + 13])
        w = z7 ^ (data[off + 14] << 8 | data[off + 15])
        off += 16
        hi = w >> 8
        lo = w & 255
        z0 = ta0[hi] ^ tb0[lo]
        z1 = ta1[hi] ^ tb1[lo]
        z2 = ta2[hi] ^ tb2[lo]
        z3 = ta3[hi] ^ tb3[lo]
        z4 = ta4[hi] ^ tb4[lo]
        z5 = ta5[hi] ^ tb5[lo]
        z6 = ta6[hi] ^ tb6[lo]
        z7 = ta7[hi] ^ tb7[lo]
        j = 6
        while j >= 0:
            w = xs[j]
            hi = w >> 8
            lo = w & 255
            a = z7 >> 8
            b = z7 & 255
            z7 = z6 ^ ta7[hi] ^ tb7[lo]
            z6 = z5 ^ ta6[hi] ^ tb6[lo]
            z5 = z4 ^ ta5[hi] ^ tb5[lo]
            z4 = z3 ^ ta4[hi] ^ tb4[lo]
            z3 = z2 ^ ta3[hi] ^ tb3[lo]
            z2 = z1 ^ ta2[hi] ^ tb2[lo]
            z1 = z0 ^ ta1[hi] ^ tb1[lo] ^ ra1[a] ^ rb1[b]
            z0 = ta0[hi] ^ tb0[lo] ^ ra0[a] ^ rb0[b]
            j -= 1
    y[0] = z0
    y[1] = z1
    y[2] = z2
    y[3] = z3
    y[4] = z4
    y[5] = z5
    y[6] = z6
    y[7] = z7


def xor_py(dst, doff, src, soff, ks, koff, n):
    """dst[doff:doff+n] = src[soff:soff+n] ^ ks[koff:koff+n] (dst may be src, same offsets)."""
    pack = _pack_into
    end = soff + n
    while end - soff >= 16:
        pack(">8H", dst, doff,
             (src[soff] << 8 | src[soff + 1]) ^ (ks[koff] << 8 | ks[koff + 1]),
             (src[soff + 2] << 8 | src[soff + 3]) ^ (ks[koff + 2] << 8 | ks[koff + 3]),
             (src[soff + 4] << 8 | src[soff + 5]) ^ (ks[koff + 4] << 8 | ks[koff + 5]),
             (src[soff + 6] << 8 | src[soff + 7]) ^ (ks[koff + 6] << 8 | ks[koff + 7]),
             (src[soff + 8] << 8 | src[soff + 9]) ^ (ks[koff + 8] << 8 | ks[koff + 9]),
             (src[soff + 10] << 8 | src[soff + 11]) ^ (ks[koff + 10] << 8 | ks[koff + 11]),
             (src[soff + 12] << 8 | src[soff + 13]) ^ (ks[koff + 12] << 8 | ks[koff + 13]),
             (src[soff + 14] << 8 | src[soff + 15]) ^ (ks[koff + 14] << 8 | ks[koff + 15]))
        soff += 16
        doff += 16
        koff += 16
    while soff < end:
        dst[doff] = src[soff] ^ ks[koff]
        soff += 1
        doff += 1
        koff += 1


# ---- the implementation in use ----------------------------------------------------------------
# None until the first GCM message (or an explicit select()): the self-test builds tables, which
# a board without GCM SAs should not carry.
IMPL = None
_blocks = _blocks_py
_fill = _fill_py
xor_into = xor_py
_native = None


def _native_blocks(data, off, end):
    _native.ghash_blocks(_Y, _X, _T, _R, data, off, end)


def select(name=None):
    """Use the native versions if `name` is "native" or None (the default: if they load and pass
    the self-test), else the Python ones. Returns IMPL. Runs at the first GCM message; tests and
    the emulated board call it to force either."""
    global IMPL, _blocks, _fill, xor_into, _native
    IMPL, _blocks, _fill, xor_into = "python", _blocks_py, _fill_py, xor_py
    nat = native_code.choose(_load_native, _selftest, name, "GHASH/XOR")
    if nat is None:
        return IMPL
    _native = nat
    IMPL, _blocks, _fill, xor_into = "native", _native_blocks, nat.fill_tables, nat.xor_into
    return IMPL


def _load_native():
    from firmware.crypto import native as nat   # mpy-ok: boards with a native emitter only
    return nat


def _selftest(nat):
    """The native functions give the Python versions' answers on a fixed input."""
    global _T, _TV
    saved = _T, _TV
    sl = _slot()
    h = bytes((i * 37 + 11) & 255 for i in range(16))
    data = bytes((i * 91 + 7) & 255 for i in range(80))
    try:
        t = sl[1]
        _seed(t, h)
        nat.fill_tables(t)
        native_t = bytes(t)
        _fill_py(t)
        _T, _TV = t, sl[2]
        for i in range(8):
            _Y[i] = 0
        _blocks_py(data, 0, 80)
        want = bytes(_Y)
        for i in range(8):
            _Y[i] = 0
        nat.ghash_blocks(_Y, _X, t, _R, data, 0, 80)
        a, b = bytearray(37), bytearray(37)
        xor_py(a, 0, data, 3, data, 40, 37)
        nat.xor_into(b, 0, data, 3, data, 40, 37)
        return native_t == bytes(t) and bytes(_Y) == want and a == b
    except Exception:
        return False
    finally:
        sl[3] = 0                       # the slot holds no H
        _T, _TV = saved


# ---- GHASH of one message -------------------------------------------------------------------------
def start(h):
    """Begin GHASH_H (h: 16 bytes) of a new message."""
    global _T, _TV
    if IMPL is None:
        select()
    _clock[0] += 1
    for sl in _slots:
        if sl[3] and sl[0] == h:
            break
    else:
        sl = _slot()
        _seed(sl[1], h)
        _fill(sl[1])
        sl[0][:] = h
    sl[3] = _clock[0]
    _T, _TV = sl[1], sl[2]
    y = _Y
    for i in range(8):
        y[i] = 0


def update(data, off, end):
    """Fold data[off:end] in, zero-padded to whole blocks (A and C each start a new block)."""
    full = off + ((end - off) & ~15)
    if full > off:
        _blocks(data, off, full)
    if full < end:
        p = _PAD
        for i in range(16):
            p[i] = data[full + i] if full + i < end else 0
        _blocks(p, 0, 16)


def finish(alen, clen, ek0, out, ooff):
    """Fold in [len(A)]64 || [len(C)]64 and write the tag GHASH ^ E_K(J0) to out[ooff:ooff+16];
    ek0 is E_K(J0) as an array('H') of 8 halves."""
    _pack_into(">IIII", _PAD, 0, 0, alen * 8, 0, clen * 8)
    _blocks(_PAD, 0, 16)
    y = _Y
    _pack_into(">8H", out, ooff, y[0] ^ ek0[0], y[1] ^ ek0[1], y[2] ^ ek0[2], y[3] ^ ek0[3],
               y[4] ^ ek0[4], y[5] ^ ek0[5], y[6] ^ ek0[6], y[7] ^ ek0[7])


def forget(h):
    """Zero everything derived from H (16 bytes): its key is being deleted."""
    for sl in _slots:
        if sl[3] and sl[0] == h:
            t = sl[1]
            for i in range(len(t)):
                t[i] = 0
            hh = sl[0]
            for i in range(16):
                hh[i] = 0
            sl[3] = 0
    for i in range(8):
        _Y[i] = 0
        _X[i] = 0
    for i in range(16):
        _PAD[i] = 0
