"""Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN 1999).

COBS removes every 0x00 from a frame at a cost of at most one byte per 254, so 0x00 can
delimit frames on a byte stream: a receiver that loses sync resynchronises on the next 0x00.
Runs on CPython and MicroPython (bytes.find and slicing only). On CPython, where PyPI's `cobs`
(a C implementation with the same output, checked by tests/test_cobs_c.py) is installed, encode
and decode are that library's: the Python loop below costs one turn per zero byte, so a frame of
zero-filled plaintext took ~100x longer than one of random bytes. On a board with a native
emitter, firmware/link/native.viper does the same in a few cycles a byte (`select()`); the loops
below run where neither is there (the wasm MicroPython).
"""
from firmware import native_code


class CobsError(ValueError):
    pass


def encode(data):
    """Encode `data` (bytes-like); the result holds no 0x00 byte and no delimiter."""
    data = bytes(data)
    out = bytearray()
    n = len(data)
    i = 0
    while True:
        j = data.find(b"\x00", i)
        if j < 0:
            j = n
        # segment data[i:j] is followed by a zero (or by the end when j == n)
        full = False
        while j - i >= 254:
            out.append(255)
            out += data[i:i + 254]
            i += 254
            full = True
        if full and i == n:
            return bytes(out)  # data ended on a full block: no implied zero to encode
        out.append(j - i + 1)
        out += data[i:j]
        if j >= n:
            return bytes(out)
        i = j + 1


def decode(data):
    """Decode one COBS block (without the 0x00 delimiter). Raises CobsError when malformed."""
    data = bytes(data)
    if data.find(b"\x00") >= 0:
        raise CobsError("zero byte inside COBS block")
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        end = i + code
        if end > n:
            raise CobsError("COBS block truncated")
        out += data[i + 1:end]
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


# ---- into the caller's buffers (the boards: no bytes built per frame) ---------------------------
# The same encoding as encode()/decode(), written into a preallocated bytearray: nothing is
# allocated but a small memoryview per run of bytes copied.
def encode_into(src, dst, off=0, start=0, end=None):
    """COBS of src[start:end] (bytes or bytearray; end defaults to its length) written to dst
    from offset off; returns the offset after it. dst needs n + n // 254 + 1 bytes from off,
    n = end - start."""
    n = len(src) if end is None else end
    mv = memoryview(src)
    i = start
    o = off
    while True:
        j = src.find(b"\x00", i, n)
        if j < 0:
            j = n
        full = False
        while j - i >= 254:
            dst[o] = 255
            dst[o + 1:o + 255] = mv[i:i + 254]
            o += 255
            i += 254
            full = True
        if full and i == n:
            return o       # data ended on a full block: no implied zero to encode
        k = j - i
        dst[o] = k + 1
        if k:
            dst[o + 1:o + 1 + k] = mv[i:j]
        o += k + 1
        if j >= n:
            return o
        i = j + 1


def decode_into(src, dst, off=0, start=0, end=None):
    """Decode the COBS block src[start:end] (without its delimiter; end defaults to the length
    of src) into dst from offset off; returns the offset after the data. dst needs end - start
    bytes from off. CobsError when malformed."""
    n = len(src) if end is None else end
    if src.find(b"\x00", start, n) >= 0:
        raise CobsError("zero byte inside COBS block")
    mv = memoryview(src)
    i = start
    o = off
    while i < n:
        code = src[i]
        e = i + code
        if e > n:
            raise CobsError("COBS block truncated")
        k = code - 1
        if k:
            dst[o:o + k] = mv[i + 1:e]
        o += k
        i = e
        if code < 255 and i < n:
            dst[o] = 0
            o += 1
    return o


# The loops above, whatever encode/decode end up bound to (tests compare the two).
py_encode, py_decode, py_encode_into, py_decode_into = encode, decode, encode_into, decode_into
_native = None


def _encode_native(data):
    n = len(data)
    out = bytearray(n + n // 254 + 1)
    return bytes(memoryview(out)[:_native.cobs_encode(data, 0, n, out, 0)])


def _decode_native(data):
    if type(data) is not bytes and type(data) is not bytearray:
        data = bytes(data)
    n = len(data)
    out = bytearray(n)
    return bytes(memoryview(out)[:_decode_native_into(data, out, 0, 0, n)])


def _encode_native_into(src, dst, off=0, start=0, end=None):
    return _native.cobs_encode(src, start, len(src) if end is None else end, dst, off)


def _decode_native_into(src, dst, off=0, start=0, end=None):
    o = _native.cobs_decode(src, start, len(src) if end is None else end, dst, off)
    if o < 0:
        raise CobsError("zero byte inside COBS block" if o == -2 else "COBS block truncated")
    return o


def select(name=None):
    """Bind encode/decode (and the _into versions) to the native code if `name` is "native" or
    None (the default: if it loads and gives the loops' answers on a test vector), else to the
    loops (on CPython encode/decode to the C library's). Returns IMPL. Runs at import on
    MicroPython; tests call it to force either."""
    global IMPL, _native, encode, decode, encode_into, decode_into
    IMPL = "c" if C_SPEED else "python"
    encode, decode, encode_into, decode_into = _BASE
    nat = native_code.choose(_load_native, _selftest, name, "COBS")
    if nat is None:
        return IMPL
    _native = nat
    IMPL, encode, decode, encode_into, decode_into = (
        "native", _encode_native, _decode_native, _encode_native_into, _decode_native_into)
    return IMPL


def _load_native():
    from firmware.link import native as nat   # mpy-ok: boards with a native emitter only
    return nat


def _selftest(nat):
    """The native functions give the loops' answers on a fixed input: runs of zeros, a block of
    254 bytes without one, a frame ending on a full block."""
    data = bytes(3) + bytes(range(1, 255)) + bytes((7, 0, 0, 9)) + bytes(range(1, 255))
    try:
        want = py_encode(data)
        out = bytearray(len(data) + len(data) // 254 + 3)
        end = nat.cobs_encode(data, 0, len(data), out, 1)
        if out[1:end] != want or out[0] or end != len(want) + 1:
            return False
        back = bytearray(len(data) + 1)
        return (nat.cobs_decode(want, 0, len(want), back, 1) == len(data) + 1 and back[1:] == data
                and nat.cobs_decode(want, 0, len(want) - 1, back, 0) == -1)
    except Exception:
        return False


def _bind_c():
    """CPython: encode/decode become PyPI cobs's C functions (same output, same errors)."""
    global encode, decode
    try:
        from cobs import cobs as _c  # mpy-ok: absent on a board, where the loops above run
    except ImportError:
        return False
    c_decode, c_error = _c.decode, _c.DecodeError

    def decode_c(data):
        try:
            return c_decode(data)
        except c_error as e:
            raise CobsError(str(e))

    encode, decode = _c.encode, decode_c
    return True


C_SPEED = _bind_c()
_BASE = (encode, decode, encode_into, decode_into)
IMPL = "c" if C_SPEED else "python"
if not C_SPEED:
    select()
