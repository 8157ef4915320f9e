"""Link security (firmware/link/auth.py) on the board core, as an attacker on the wire meets it:
what it can read, forge and replay. Runs on CPython and MicroPython."""
import binascii
import struct

from firmware import board as bd
from firmware.link import auth as la
from firmware.link import cobs
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests.linkhost import LinkHost
from firmware.tests.util import raises

KEY = bytes(range(32))
ENCR_KEY = b"\xe1\xe2\xe3\xe4\xe5\xe6\xe7\xe8\xe9\xea\xeb\xec\xed\xee\xef\xd0\x51\x52\x53\x54"


def rand():
    n = [0]

    def r(k):
        n[0] += 1
        return bytes(((n[0] * 151 + i * 7) & 0xFF for i in range(k)))
    return r


def board(key=KEY, **profile):
    profile["link_key"] = key
    return bd.Board(profile, 0, random_bytes=rand())


def host(b=None, key=KEY):
    """A host with a session on board `b` (the HELLO, then a first frame that confirms it)."""
    h = LinkHost(b or board(), 0, key)
    assert h.call(m.HELLO, m.encode_hello_request(b"session1"))[0] == m.OK
    assert h.call(m.HEARTBEAT)[0] == m.OK
    return h


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_GCM_16, ENCR_KEY, reqid=spi)


def raw_frames(wire):
    """The decoded frames (COBS undone, CRC kept) in a stretch of wire bytes."""
    return [cobs.decode(b) for b in bytes(wire).split(b"\x00") if b]


def test_hkdf_is_rfc5869():
    # RFC 5869 A.1 (SHA-256)
    okm = la.hkdf(bytes(range(13)), b"\x0b" * 22, bytes(range(0xf0, 0xfa)), 42)
    want = ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c"
            "5db02d56ecc4c5bf34007208d5b887185865")
    assert binascii.hexlify(okm).decode() == want, okm


def test_a_key_file_is_64_hex_digits():
    assert la.parse_key(la.key_text(KEY)) == KEY
    assert la.parse_key(b"  " + la.key_text(KEY).encode() + b"\n") == KEY
    raises(la.KeyError_, la.parse_key, "00" * 31, contains="64 hex digits")
    raises(la.KeyError_, la.parse_key, "zz" * 32, contains="64 hex digits")


def test_sealed_frames_open_once_and_only_unchanged():
    h2b, _ = la.boot_keys(KEY)
    sealer, opener = la.Sealer(h2b), la.Opener(h2b)
    dec = fr.FrameDecoder(auth=True)
    wire, _ = sealer.seal(m.HEARTBEAT, 7, fr.FLAG_NOCACHE, b"body")
    (f,) = dec.feed(wire)
    assert (f.type, f.seq, f.flags & fr.FLAG_AUTH, f.body) == (m.HEARTBEAT, 7, fr.FLAG_AUTH, b"body")
    assert opener.open(f) == la.OK
    (f,) = dec.feed(wire)
    assert opener.open(f) == la.REPLAYED                   # the same sequence number twice
    raw = bytearray(raw_frames(sealer.seal(m.HEARTBEAT, 8, 0, b"body")[0])[0])
    raw[6] ^= 1                                            # a body byte, CRC made right again
    raw[-4:] = struct.pack("<I", binascii.crc32(raw[:-4]) & 0xFFFFFFFF)
    (f,) = dec.feed(b"\x00" + cobs.encode(bytes(raw)) + b"\x00")
    assert opener.open(f) == la.BAD_TAG
    (f,) = dec.feed(sealer.seal(m.HEARTBEAT, 9, 0, b"body")[0])
    assert opener.open(f) == la.OK                         # the forgery did not move the window
    assert la.Opener(la.boot_keys(bytes(32))[0]).open(f) == la.BAD_TAG     # another key


def test_an_authenticated_decoder_drops_open_frames_and_an_open_one_sealed_frames():
    sealed = la.Sealer(KEY).seal(m.HEARTBEAT, 1, 0, b"")[0]
    plain = fr.encode(m.HEARTBEAT, 2, 0, b"")
    a, o = fr.FrameDecoder(auth=True), fr.FrameDecoder()
    assert [f.seq for f in a.feed(plain + sealed)] == [1] and a.counters["unauthenticated"] == 1
    assert [f.seq for f in o.feed(plain + sealed)] == [2] and o.counters["auth_dropped"] == 1


def test_sa_keys_do_not_cross_the_link_in_the_clear():
    h = host()
    assert m.SadReply.decode(h.call(m.SA_ADD, spec(0x1000).encode())).status == m.OK
    sniffed = h.sent[-1]
    assert ENCR_KEY[:8] not in sniffed and ENCR_KEY[8:16] not in sniffed
    for raw in raw_frames(sniffed):
        assert ENCR_KEY[:8] not in raw and ENCR_KEY[8:16] not in raw and ENCR_KEY[16:] not in raw
    assert h.board.sad.get(0x1000, m.DIR_IN).spec.encr_key == ENCR_KEY      # the board got it
    # the same SA_ADD on an open link shows the key (the check above can fail)
    o = LinkHost(bd.Board({}, 0), 0)
    o.call(m.SA_ADD, spec(0x1000).encode())
    assert ENCR_KEY[:8] in b"".join(raw_frames(o.sent[-1]))


def test_forged_and_unauthenticated_reset_flush_and_sa_add_change_nothing():
    h = host()
    h.call(m.SA_ADD, spec(0x1000).encode())
    gen, n = h.board.sad.gen, len(h.board.sad)
    other = LinkHost(h.board, 0, bytes(32))      # an attacker with a key of its own
    forger = la.Sealer(bytes(32))                # ... or tags made up, with new sequence numbers
    forger.next = 1 << 20
    for wire in (fr.encode(m.RESET, 100, 0, b""), fr.encode(m.SA_FLUSH, 101, 0, b""),
                 fr.encode(m.SA_ADD, 102, 0, spec(0x2000).encode()),
                 other.frame(m.HELLO, m.encode_hello_request(b"attacker")),
                 forger.seal(m.RESET, 103, 0, b"")[0],
                 forger.seal(m.SA_ADD, 104, fr.FLAG_ENC, spec(0x2000).encode(), la.Mac(bytes(32)))[0]):
        assert h.feed(wire) == []                              # no answer
    assert not h.board.reset_requested and (h.board.sad.gen, len(h.board.sad)) == (gen, n)
    assert h.board.decoder.counters["unauthenticated"] == 3
    assert h.board.auth.counters["auth_bad_tag"] == 3
    ack = m.HeartbeatAck.decode(h.call(m.HEARTBEAT)[1:])     # the host's session goes on
    assert ack.link_errors == 6 and ack.sa_count == 1


def test_a_replayed_frame_is_refused():
    h = host()
    h.call(m.SA_ADD, spec(0x1000).encode())
    add = h.sent[-1]
    h.call(m.SA_DEL, m.encode_sa_ref(0x1000, m.DIR_IN))
    delete = h.sent[-1]
    h.call(m.SA_ADD, spec(0x1000).encode())
    gen = h.board.sad.gen
    assert h.feed(delete) == [] and h.feed(add) == []
    assert h.board.sad.gen == gen and h.board.sad.get(0x1000, m.DIR_IN) is not None
    assert h.board.auth.counters["auth_replayed"] == 2
    # a retry is a new frame (a fresh auth seq) with the old seq: answered from the reply cache
    seq = h.seq
    r = h.send(m.SA_ADD, spec(0x1000).encode(), seq=seq)
    assert m.SadReply.decode(r[0].body).status == m.OK and h.board.counters["replies_from_cache"] == 1


def test_a_replayed_hello_leaves_the_session_alone():
    h = host()
    h.call(m.SA_ADD, spec(0x1000).encode())
    hello = h.sent[0]
    h.feed(hello)                 # its reply is sealed in a session the attacker cannot use
    seq = h.seq
    r = h.send(m.SA_ADD, spec(0x1000).encode(), seq=seq)      # the session and its reply cache live
    assert m.SadReply.decode(r[0].body).status == m.OK and h.board.counters["replies_from_cache"] == 1
    assert h.board.auth.counters["auth_sessions"] == 1 and len(h.board.sad) == 1


def test_hello_requests_are_rate_limited():
    h = host()
    hello = h.sent[0]
    for _ in range(50):
        h.feed(hello)             # each would derive a session's keys
    assert h.board.auth.counters["auth_hello_limited"] >= 50 - bd.DEFAULT_PROFILE["hello_burst"]


def test_a_rebooted_board_proves_it_lost_the_session_and_a_boot_hello_is_only_a_hint():
    h = host()
    b2 = board()                                     # the board rebooted: same key, no session
    boot = [f for f in h.collect(b2.tick(0))]
    assert boot == [] and h.events[-1].type == m.HELLO and h.events[-1].proof is False
    h.board = b2
    assert h.send(m.HEARTBEAT) == []                 # it cannot answer: it has no session ...
    ev = h.events[-1]
    assert ev.type == m.HELLO and ev.proof is True   # ... and says so, echoing our frame
    assert m.Hello.decode(ev.body).boot_id == b2.boot_id
    # the answers are rate-limited (each costs a MAC and a frame)
    for _ in range(50):
        h.send(m.HEARTBEAT)
    assert b2.auth.counters["auth_answers"] <= bd.DEFAULT_PROFILE["answer_burst"] + 1


def test_an_old_proof_replayed_is_stale():
    h = host()
    b2 = board()
    b2.tick(0)
    proof = b2.feed(h.frame(m.HEARTBEAT), 0)          # recorded by an attacker
    assert h.collect(proof) == [] and h.events[-1].proof is True
    h2 = host(board())                               # a later session of the same host and key
    events = len(h2.events)
    assert h2.collect(proof) == [] and len(h2.events) == events
    assert h2.auth.counters["auth_stale_echo"] == 1


def test_replies_are_sealed_in_the_order_they_leave():
    """Control replies overtake data replies (control before data): sealing as they leave keeps
    the host's replay window, which takes each sequence number once, from refusing any."""
    b = board()
    b.hold_data = True
    h = host(b)
    h.call(m.SA_ADD, m.SaSpec(0x1000, m.DIR_OUT, m.ENCR_AES_GCM_16, ENCR_KEY).encode())
    for _ in range(3):
        h.send(m.ENCRYPT, m.encode_encrypt_request([(0x1000, b"p" * 40)]), flags=fr.FLAG_NOCACHE)
    assert len(b.data_out) == 3
    assert m.HeartbeatAck.decode(h.call(m.HEARTBEAT)[1:]).boot_id == b.boot_id     # ahead of them
    got = []
    while b.data_out:
        got += h.collect(b.next_data())
    assert [f.type for f in got] == [m.ENCRYPT] * 3 and h.auth.counters["auth_replayed"] == 0
