"""Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN 1999).

COBS removes every 0x00 from a frame at a cost of at most one byte per 254, so 0x00 can
delimit frames on a byte stream: a receiver that loses sync resynchronises on the next 0x00.
Runs on CPython and MicroPython (bytes.find and slicing only). On CPython, where PyPI's `cobs`
(a C implementation with the same output, checked by tests/test_cobs_c.py) is installed, encode
and decode are that library's: the Python loop below costs one turn per zero byte, so a frame of
zero-filled plaintext took ~100x longer than one of random bytes.
"""


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


# The loops above, whatever encode/decode end up bound to (tests compare the two).
py_encode, py_decode = encode, decode


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
