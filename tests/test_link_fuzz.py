"""Fuzzing the link at CI scale: the frame decoder, the board core and the host's link client take
random and hypothesis-made input without an exception escaping and with everything bounded
(tests/link_fuzz.py; `inv bench --only fuzz_link` runs a million inputs and more, and these
properties with LINK_FUZZ_SCALE times the examples)."""
import collections
import os

from hypothesis import given, settings, strategies as st

from firmware import esp
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.session import READY
from tests.link_fuzz import KEY, TYPES, LinkFuzzer

N = 25_000
SCALE = int(os.environ.get("LINK_FUZZ_SCALE", "1"))
RUNS = collections.Counter()          # examples each property ran (the bench reports them)

types = st.sampled_from(TYPES)
flags = st.integers(0, 0x7F)
bodies = st.one_of(st.binary(max_size=2000),
                   st.sampled_from([b"\x00", b"\x00" * 9, bytes(range(256))]))


def test_random_and_mutated_input_to_all_three_targets():
    for seed in (11, 12):
        f = LinkFuzzer(seed)
        counts = f.run(N)
        assert counts["decoder"] + counts["board"] + counts["host"] == N
        # the sealed inputs got past the tag check, to the message handlers on both sides
        assert counts["board_sealed"] > N // 8 and counts["host_sealed"] > N // 8
        assert f.board.counters["bad_requests"] > 0 and f.session.link.counters["replies"] > 0
        assert f.board.auth.counters["auth_bad_tag"] > 0 and f.session.link.auth.counters["auth_bad_tag"] > 0


def board_with_session():
    """A board core with a host session on it; returns (board, the host's session keys)."""
    b = esp.make_board({"max_frame": 4096, "max_sas": 8, "reply_cache": 8, "link_key": KEY}, 0,
                       backend="cryptography")
    h = la.HostAuth(KEY)
    nonce = h.new_nonce()
    for f in fr.FrameDecoder(65535, auth=True).feed(b.feed(h.seal(m.HELLO, 1, 0, b"session1" + nonce), 0)):
        h.open(f, nonce)
    b.feed(h.seal(m.HEARTBEAT, 2, fr.FLAG_NOCACHE, b""), 0)     # the first frame of the session confirms it
    assert h.current is not None and b.auth.current is not None
    return b, h


@given(st.lists(st.binary(max_size=700), max_size=12))
@settings(max_examples=300 * SCALE, deadline=None)
def test_any_bytes_to_an_authenticated_board(chunks):
    RUNS["board_bytes"] += 1
    b, _ = board_with_session()
    for c in chunks:
        b.feed(c, 1)
        b.work(1, None)
    assert len(b.sad) == 0 and b.auth.current is not None and b.auth.pending is None


@given(types, flags, st.integers(0, 0xFFFF), bodies)
@settings(max_examples=1500 * SCALE, deadline=None)
def test_any_request_sealed_with_the_key_is_answered_or_dropped(type, fl, seq, body):
    """What a host holding the key could send: the board answers or drops it, nothing raises."""
    RUNS["board_sealed"] += 1
    b, h = board_with_session()
    s = h.current
    wire = s.sealer.seal(type, seq, fl, body, s.enc)[0]
    out = b.feed(wire, 1) + b.work(1, None)
    replies = [f for f in fr.FrameDecoder(65535, auth=True).feed(out) if f.flags & fr.FLAG_REPLY]
    assert len(replies) <= 1


@given(st.lists(st.tuples(types, flags, st.integers(0, 0xFFFF), bodies, st.booleans()), max_size=8))
@settings(max_examples=500 * SCALE, deadline=None)
def test_any_board_frame_sealed_with_the_key_is_taken_or_dropped_by_the_host(frames):
    RUNS["host_sealed"] += 1
    f = LinkFuzzer(7)
    s = f.board.auth.current
    for type, fl, seq, body, to_pending in frames:
        pending = list(f.session.link._pending.values())
        if to_pending and pending:
            seq, type, fl = pending[0].seq, pending[0].type, fr.FLAG_REPLY
        f.session.receive(s.sealer.seal(type, seq, fl & ~fr.FLAG_ENC, body)[0], f.now)
        f.step(0.001)
    f.check_bounds()
    assert f.session.state in (READY, "opening")


@given(st.binary(max_size=3000), st.integers(1, 64))
@settings(max_examples=500 * SCALE, deadline=None)
def test_any_bytes_to_both_kinds_of_decoder(data, step):
    RUNS["decoder"] += 1
    for auth in (False, True):
        d = fr.FrameDecoder(1024, auth=auth)
        for i in range(0, len(data), step):
            for f in d.feed(data[i:i + step]):
                assert bool(f.flags & fr.FLAG_AUTH) == auth
        assert len(d._buf) <= d._max_block
