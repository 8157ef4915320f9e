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


@settings(max_examples=100, deadline=None)
@given(type_=st.integers(0, 255), seq=st.integers(0, 1 << 20), flags=st.integers(0, 0x3F), body=data,
       enc=st.booleans())
def test_sealer_seal_into_agrees_with_seal(type_, seq, flags, body, enc):
    from firmware.link import auth as la
    key, ek = bytes(range(32)), la.Mac(bytes(32))
    flags |= fr.FLAG_ENC if enc else 0
    want, tag = la.Sealer(key).seal(type_, seq, flags, body, ek)
    n = fr.MIN_FRAME + fr.AUTH_LEN + len(body)
    dst, raw = bytearray(fr.max_wire_len(n) + 2), bytearray(n)
    s = la.Sealer(key)
    end = s.seal_into(dst, 0, raw, type_, seq, flags, body, ek)
    assert dst[:end] == want and s.next == 2


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF), data), max_size=4),
       junk=st.lists(st.binary(max_size=40), max_size=4), cuts=st.lists(st.integers(1, 900), max_size=8))
def test_decoder_views_give_the_frames_feed_gives(frames, junk, cuts):
    """A decoder of views (the boards) decodes any chunking of a stream with broken blocks in it
    as feed() does: the same frames (bodies copied while they are valid), the same counters."""
    stream = b"".join(fr.encode(t, s, 0, b) + (junk[i] if i < len(junk) else b"")
                      for i, (t, s, b) in enumerate(frames))
    plain = fr.FrameDecoder(1500)
    want = plain.feed(stream)
    views = fr.FrameDecoder(1500, views=True)
    got, i = [], 0
    for c in cuts + [len(stream)]:
        for f in views.frames(stream[i:i + c]):
            got.append(fr.Frame(f.type, f.seq, f.flags, bytes(f.body)))
        i += c
    assert got == want and views.counters == plain.counters
