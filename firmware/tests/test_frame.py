"""Frames: CRC, version, COBS, resynchronisation (firmware/link/frame.py)."""
from firmware.link import frame as fr


def test_round_trip_and_layout():
    wire = fr.encode(0x10, 0xBEEF, fr.FLAG_REPLY, b"body\x00bytes")
    assert wire[0] == 0 and wire[-1] == 0 and b"\x00" not in wire[1:-1]
    dec = fr.FrameDecoder()
    frames = dec.feed(wire)
    assert frames == [fr.Frame(0x10, 0xBEEF, fr.FLAG_REPLY, b"body\x00bytes")]
    raw = fr.pack(0x10, 0xBEEF, fr.FLAG_REPLY, b"body\x00bytes")
    assert raw[:5] == b"\x01\x10\x01\xbe\xef"
    assert dec.counters["frames"] == 1 and dec.dropped() == 0


def test_any_chunking_gives_the_same_frames():
    wires = [fr.encode(t, t * 7, 0, bytes(range(t))) for t in range(1, 40)]
    stream = b"".join(wires)
    for step in (1, 2, 3, 7, 64, len(stream)):
        dec = fr.FrameDecoder()
        got = []
        for i in range(0, len(stream), step):
            got += dec.feed(stream[i:i + step])
        assert [f.type for f in got] == list(range(1, 40)), step
        assert dec.dropped() == 0


def test_bad_crc_dropped_and_next_frame_kept():
    good = fr.encode(2, 1, 0, b"hello")
    bad = bytearray(fr.encode(2, 2, 0, b"hello"))
    bad[4] ^= 0x40
    dec = fr.FrameDecoder()
    frames = dec.feed(bytes(bad) + good)
    assert [f.seq for f in frames] == [1]
    assert dec.counters["bad_crc"] + dec.counters["bad_cobs"] == 1


def test_lost_delimiter_loses_one_frame_only():
    a = fr.encode(1, 1, 0, b"a" * 10)
    b = fr.encode(1, 2, 0, b"b" * 10)
    c = fr.encode(1, 3, 0, b"c" * 10)
    # drop the trailing delimiter of `a`: the leading one of `b` still separates them
    frames = fr.FrameDecoder().feed(a[:-1] + b + c)
    assert [f.seq for f in frames] == [1, 2, 3]
    # drop both delimiters between a and b: a and b merge and die, c survives
    frames = fr.FrameDecoder().feed(a[:-1] + b[1:] + c)
    assert [f.seq for f in frames] == [3]


def test_garbage_then_resync():
    dec = fr.FrameDecoder(max_frame=256)
    junk = bytes(range(1, 256)) * 4   # no delimiter, longer than any frame
    frames = dec.feed(junk + b"\x00" + b"\x07\x07" + fr.encode(3, 9, 0, b"x"))
    assert [f.seq for f in frames] == [9]
    assert dec.counters["too_long"] == 1


def test_version_short_oversize_and_auth_are_dropped():
    from firmware.link import cobs
    import binascii
    import struct
    raw = b"\x02\x01\x00\x00\x01"  # version 2
    raw += struct.pack("<I", binascii.crc32(raw) & 0xFFFFFFFF)
    dec = fr.FrameDecoder(max_frame=64)
    assert dec.feed(b"\x00" + cobs.encode(raw) + b"\x00") == []
    assert dec.counters["bad_version"] == 1
    assert dec.feed(b"\x00" + cobs.encode(b"\x01\x02") + b"\x00") == []
    assert dec.counters["short"] == 1
    assert dec.feed(fr.encode(1, 1, 0, b"z" * 100)) == []
    assert dec.counters["too_long"] == 1
    assert dec.feed(fr.encode(1, 1, fr.FLAG_AUTH, b"tagged")) == []
    assert dec.counters["auth_dropped"] == 1
    assert dec.counters["frames"] == 0
    assert dec.dropped() == 4


def test_empty_blocks_are_not_errors():
    dec = fr.FrameDecoder()
    assert dec.feed(b"\x00\x00\x00") == []
    assert dec.dropped() == 0
