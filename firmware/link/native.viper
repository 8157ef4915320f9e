# native: armv6m xtensawin
# ruff: noqa: F821  (ptr8 is a viper builtin, not a Python name)
"""Native code for the boards (@micropython.viper): COBS encoding and decoding of
firmware/link/cobs.py, which says what they compute and uses them only after they gave its
Python versions' answers on a test vector (cobs.select()).

The Python loops cost one interpreter turn per zero byte: a frame of zero-filled plaintext
(a DECRYPT reply, an ENCRYPT request) took ~0.15 s on an RP2040 for 2.8 KB, longer than any
slice of crypto the board does between looks at its link; these take a few cycles a byte
whatever the content.

A .viper file, not .py: mpy-cross compiles it only with -march (tools/fwcheck.py; `inv flash`
installs it as firmware/link/native.mpy for the board's architecture, or as native.py where a
board takes sources). The arithmetic is on bytes and offsets, so each expression has the value
it has in Python: tests/test_native.py runs this source on CPython with ptr8 as plain indexing.
"""
import micropython


@micropython.viper
def cobs_encode(src, start: int, end: int, dst, off: int) -> int:
    """COBS of src[start:end] written to dst from offset off (cobs.encode_into's contract: dst
    has end - start + (end - start) // 254 + 1 bytes from off); returns the offset after it."""
    s = ptr8(src)
    d = ptr8(dst)
    at = off                    # where the code byte of the block being built goes
    o = off + 1
    code = 1
    i = start
    while i < end:
        b = s[i]
        i += 1
        if b == 0:
            d[at] = code
            at = o
            o += 1
            code = 1
        else:
            d[o] = b
            o += 1
            code += 1
            if code == 255:
                d[at] = 255
                if i == end:
                    return o    # ended on a full block: no implied zero to encode
                at = o
                o += 1
                code = 1
    d[at] = code
    return o


@micropython.viper
def cobs_decode(src, start: int, end: int, dst, off: int) -> int:
    """Decode the COBS block src[start:end] into dst from offset off (dst has end - start bytes
    from off); returns the offset after the data, -1 if the block is truncated, -2 if it holds a
    zero byte."""
    s = ptr8(src)
    d = ptr8(dst)
    i = start
    o = off
    while i < end:
        code = s[i]
        if code == 0:
            return -2
        e = i + code
        if e > end:
            return -1
        i += 1
        while i < e:
            b = s[i]
            if b == 0:
                return -2
            d[o] = b
            o += 1
            i += 1
        if code < 255 and i < end:
            d[o] = 0
            o += 1
    return o
