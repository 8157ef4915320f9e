"""The boards' COBS and framing into preallocated buffers give the bytes of the one encoder and
decoder (firmware/link/cobs.py, frame.py), for any input (property tests)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.link import cobs
from firmware.link import frame as fr

data = st.binary(max_size=1200) | st.lists(st.sampled_from((b"\x00", b"\x01", bytes(range(1, 255)), b"\xff" * 300)),
                                           max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(raw=data, off=st.integers(0, 7), tail=st.binary(max_size=4))
def test_encode_into_and_decode_into_agree_with_encode_and_decode(raw, off, tail):
    enc = cobs.encode(raw)
    dst = bytearray(off + len(raw) + len(raw) // 254 + 1)
    end = cobs.encode_into(bytearray(tail + raw + tail), dst, off, len(tail), len(tail) + len(raw))
    assert dst[off:end] == enc and not any(dst[:off])
    out = bytearray(off + len(enc))
    assert cobs.decode_into(b"\x00" + enc + b"\x00", out, off, 1, 1 + len(enc)) == off + len(raw)
    assert out[off:off + len(raw)] == raw


@settings(max_examples=200, deadline=None)
@given(block=st.binary(max_size=600))
def test_decode_into_refuses_what_decode_refuses(block):
    try:
        want = cobs.decode(block)
    except cobs.CobsError:
        want = None
    out = bytearray(len(block))
    try:
        got = bytes(out[:cobs.decode_into(block, out)])
    except cobs.CobsError:
        got = None
    assert got == want


@settings(max_examples=100, deadline=None)
@given(type_=st.integers(0, 255), seq=st.integers(0, 1 << 20), flags=st.integers(0, 127), body=data)
def test_frame_encode_into_agrees_with_encode(type_, seq, flags, body):
    want = fr.encode(type_, seq, flags, body)       # (FLAG_AUTH frames are dropped by the decoder)
    dst = bytearray(fr.max_wire_len(fr.MIN_FRAME + len(body)) + 2)
    end = fr.encode_into(dst, 0, type_, seq, flags, body, bytearray(fr.MIN_FRAME + len(body)))
    assert dst[:end] == want
    f, = fr.FrameDecoder(fr.MIN_FRAME + len(body) + 8).feed(dst[:end])
    assert (f.type, f.seq, f.flags, f.body) == (type_, seq & 0xFFFF, flags, body)
