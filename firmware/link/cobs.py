"""Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN 1999).

COBS removes every 0x00 from a frame at a cost of at most one byte per 254, so 0x00 can
delimit frames on a byte stream: a receiver that loses sync resynchronises on the next 0x00.
Runs on CPython and MicroPython (bytes.find and slicing only).
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
