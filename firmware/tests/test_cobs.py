"""COBS against the published examples (Cheshire & Baker; the Wikipedia table)."""
from firmware.link import cobs


def h(s):
    return bytes(int(x, 16) for x in s.split())


def seq(a, b):
    return bytes(range(a, b + 1))


VECTORS = [
    (b"", h("01")),
    (h("00"), h("01 01")),
    (h("00 00"), h("01 01 01")),
    (h("00 11 00"), h("01 02 11 01")),
    (h("11 22 00 33"), h("03 11 22 02 33")),
    (h("11 22 33 44"), h("05 11 22 33 44")),
    (h("11 00 00 00"), h("02 11 01 01 01")),
    (seq(1, 254), b"\xff" + seq(1, 254)),
    (b"\x00" + seq(1, 254), b"\x01\xff" + seq(1, 254)),
    (seq(1, 255), b"\xff" + seq(1, 254) + b"\x02\xff"),
    (seq(2, 255) + b"\x00", b"\xff" + seq(2, 255) + b"\x01\x01"),
    (seq(3, 255) + b"\x00\x01", b"\xfe" + seq(3, 255) + b"\x02\x01"),
]


def test_published_vectors():
    for raw, enc in VECTORS:
        assert cobs.encode(raw) == enc, raw
        assert cobs.decode(enc) == raw, enc


def test_no_zero_in_output_and_bounded_overhead():
    for n in (0, 1, 253, 254, 255, 508, 509, 1400):
        for fill in (b"\x00", b"\x01", b"\xff"):
            data = fill * n
            enc = cobs.encode(data)
            assert b"\x00" not in enc
            assert len(enc) <= n + n // 254 + 1
            assert cobs.decode(enc) == data


def test_malformed_blocks_raise():
    for bad in (h("05 11 22"), h("02 00"), h("ff 01")):
        try:
            cobs.decode(bad)
        except cobs.CobsError:
            continue
        raise AssertionError("decoded malformed block %r" % bad)


def test_into_buffers_gives_the_published_bytes():
    """encode_into/decode_into (the boards' path: the caller's buffers) give encode()/decode()'s
    bytes, at an offset, over a prefix of a longer source, and leave the rest of dst alone."""
    for raw, enc in VECTORS:
        dst = bytearray(b"\xee" * (len(enc) + 5))
        assert cobs.encode_into(b"\x05" + raw + b"\x07\x00", dst, 3, 1, 1 + len(raw)) == 3 + len(enc)
        assert dst[3:3 + len(enc)] == enc and dst[:3] == b"\xee" * 3 and dst[3 + len(enc):] == b"\xee" * 2
        out = bytearray(b"\xee" * (len(enc) + 2))
        assert cobs.decode_into(b"\x00" + bytearray(enc) + b"\x00\x00", out, 2, 1, 1 + len(enc)) == 2 + len(raw)
        assert out[2:2 + len(raw)] == raw
    for bad in (h("00"), h("03 11"), h("02 11 00 01")):
        out = bytearray(8)
        try:
            cobs.decode_into(bad, out)
        except cobs.CobsError:
            continue
        raise AssertionError(bad)


def test_frame_encode_into_gives_encode_bytes():
    from firmware.link import frame as fr
    for body in (b"", b"\x00" * 300, bytes(range(256)) * 3):
        want = fr.encode(0x21, 70000, fr.FLAG_REPLY, body)
        dst = bytearray(fr.max_wire_len(fr.MIN_FRAME + len(body)) + 3)
        scratch = bytearray(fr.MIN_FRAME + len(body))
        end = fr.encode_into(dst, 1, 0x21, 70000, fr.FLAG_REPLY, body, scratch)
        assert dst[1:end] == want, body[:8]
