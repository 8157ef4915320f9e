"""The host's COBS (PyPI cobs, C) against the firmware's own loops, which the board runs: the
same bytes out for every input, the same inputs refused."""
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.link import cobs

# runs of zeros and 0xFF-heavy data reach the 254-byte block edges and the empty segments
chunks = st.lists(st.one_of(st.binary(max_size=300), st.just(b"\x00" * 300), st.just(b"\xff" * 260),
                            st.sampled_from([b"\x00", b"\x01", b"\xff"])), max_size=12).map(b"".join)


def test_the_host_uses_the_c_implementation():
    assert cobs.C_SPEED, "PyPI cobs is a dependency: without it zero-filled frames cost ~100x more"
    assert cobs.encode is not cobs.py_encode


@settings(max_examples=1000)
@given(chunks)
def test_encode_is_identical_and_round_trips(data):
    wire = cobs.encode(data)
    assert wire == cobs.py_encode(data)
    assert b"\x00" not in wire
    assert cobs.decode(wire) == cobs.py_decode(wire) == data


def _outcome(fn, block):
    try:
        return fn(block)
    except cobs.CobsError:
        return "refused"


@settings(max_examples=1000)
@given(st.one_of(chunks, st.binary(max_size=600)))
def test_decode_accepts_and_refuses_the_same_blocks(block):
    assert _outcome(cobs.decode, block) == _outcome(cobs.py_decode, block)

