"""Property tests for the link codec (firmware/link), run on CPython with hypothesis."""
from hypothesis import given, settings, strategies as st

from firmware.link import cobs, frame as fr, messages as m

frames = st.builds(fr.Frame, st.integers(0, 255), st.integers(0, 0xFFFF),
                   st.integers(0, 0x7F), st.binary(max_size=1500))


@given(st.binary(max_size=3000))
def test_cobs_round_trip(data):
    enc = cobs.encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(enc) == data


@given(frames)
def test_frame_round_trip(f):
    wire = fr.encode(f.type, f.seq, f.flags, f.body)
    assert fr.FrameDecoder(65535).feed(wire) == [f]


@given(st.lists(st.tuples(st.binary(max_size=300), frames), max_size=12), st.binary(max_size=300),
       st.integers(1, 64))
@settings(max_examples=300)
def test_garbage_between_frames(chunks, tail, step):
    """Garbage never yields a frame that was not sent and never costs the valid frames after it."""
    stream = bytearray()
    sent = []
    for garbage, f in chunks:
        stream += garbage
        stream += fr.encode(f.type, f.seq, f.flags, f.body)
        sent.append(f)
    stream += tail
    dec = fr.FrameDecoder(65535)
    got = []
    for i in range(0, len(stream), step):
        got += dec.feed(bytes(stream[i:i + step]))
    assert got == sent


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_random_bytes_never_crash_the_decoders(data):
    fr.FrameDecoder(4096).feed(data)
    for decode in (m.Hello.decode, m.HeartbeatAck.decode, m.SaSpec.decode, m.SadReply.decode,
                   m.StatsReply.decode, m.UnknownSpi.decode, m.SaExpire.decode, m.Flushed.decode,
                   lambda b: m.decode_encrypt_request(b, 64), lambda b: m.decode_decrypt_request(b, 64),
                   m.decode_encrypt_reply, m.decode_decrypt_reply, m.decode_counters_reply):
        try:
            decode(data)
        except m.MessageError:
            pass


addresses = st.one_of(st.none(), st.tuples(st.binary(min_size=4, max_size=4), st.integers(0, 65535)),
                      st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 65535)))


@given(st.integers(256, 0xFFFFFFFF), st.sampled_from([0, 1]), st.binary(max_size=64), st.binary(max_size=64),
       st.integers(0, 1024), st.integers(0, (1 << 64) - 1), addresses, addresses)
def test_sa_spec_round_trip(spi, d, ek, ik, window, life, src, dst):
    s = m.SaSpec(spi, d, m.ENCR_AES_CBC, ek, m.AUTH_HMAC_SHA2_256_128 if ik else 0, ik,
                 replay_window=window, hard_bytes=life, src=src, dst=dst)
    assert m.SaSpec.decode(s.encode()) == s


@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=1500)), max_size=20))
def test_encrypt_batch_round_trip(items):
    assert m.decode_encrypt_request(m.encode_encrypt_request(items), 20) == items
