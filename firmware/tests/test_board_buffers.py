"""A board core in preallocated buffers (Board.preallocate(), as the main loop runs it: frames
decoded into its buffers and handed on as views, data replies sealed, CRC'd and COBS-encoded into
one buffer) puts the same bytes on the wire as one that builds bytes per frame: two boards with
the same randomness are fed the same stream, the second one in small chunks. Runs on both runtimes."""
from firmware import esp
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, det, ipv4
from firmware.tests.linkhost import LinkHost

NOCACHE = fr.FLAG_NOCACHE
KEY = bytes(range(32))


def _boards(key):
    boards = []
    for _ in range(2):
        p = {"max_batch": 8, "host_silence_ms": 0}
        if key:
            p["link_key"] = key
        b = esp.make_board(p, 1000, backend=d.fast_backend().NAME, random_bytes=lambda n: det(n, 9))
        b.work_budget = 0
        boards.append(b)
    boards[1].preallocate()
    boards[1].hold_data = True
    return boards


def _run(b, wire, chunk=None):
    """Everything `b` sends for `wire` (fed whole, or in chunks of `chunk` bytes), worked off."""
    out = bytearray()
    parts = [wire] if chunk is None else [wire[i:i + chunk] for i in range(0, len(wire), chunk)]
    for p in parts:
        out += b.feed(p, 1000)
    while b.busy() or b.data_out:
        out += b.work(1000, 1) if b.busy() else b""
        w = b.next_data() if b.hold_data else None
        if w:
            out += w
    return bytes(out)


def _same_stream(key):
    a, v = _boards(key)
    boot = a.tick(1000)                     # the HELLO event
    assert boot and v.tick(1000) == boot
    h = LinkHost(a, 1000, key)
    h.collect(boot)
    requests = [(m.HELLO, m.encode_hello_request(b"session1"), 0)]
    for direction in (m.DIR_OUT, m.DIR_IN):
        requests.append((m.SA_ADD, d.spec(0x7000, direction).encode(), 0))
    zeros = [(0x7000, ipv4(A1, A2, 17, bytes(1380))), (0x7000, ipv4(A1, A2, 17, det(1380, 3)))]
    requests.append((m.ENCRYPT, m.encode_encrypt_request(zeros), NOCACHE))
    got = []
    for type, body, flags in requests:
        wire = h.frame(type, body, flags=flags)
        want = _run(a, wire)
        assert _run(v, wire, 7) == want, type
        got = h.collect(want)
        assert len(got) == 1 and got[0].type == type and got[0].body[0] == m.OK, (type, got)
    st, items = m.decode_encrypt_reply(got[0].body)
    assert st == m.OK and [s for s, _ in items] == [m.P_OK, m.P_OK]
    # the ESP packets back (under the keys of SA_ADD frames whose buffer later frames overwrote),
    # after a corrupted frame, a block too long, broken COBS and a heartbeat
    dec = h.frame(m.DECRYPT, m.encode_decrypt_request([(None, e) for _, e in items]), flags=NOCACHE)
    bad = bytearray(h.frame(m.HEARTBEAT))
    bad[len(bad) // 2] ^= 0x20
    stream = (bytes(bad) + b"\x01" * (fr.max_wire_len(a.max_frame) + 5) + b"\x00" + b"\x00\x05\x01\x00"
              + h.frame(m.HEARTBEAT) + dec)     # (the heartbeat's reply counts the link errors before it)
    want = _run(a, stream)
    assert _run(v, stream, 300) == want
    got = h.collect(want)
    assert [f.type for f in got] == [m.HEARTBEAT, m.DECRYPT]
    st, inner = m.decode_decrypt_reply(got[1].body)
    assert st == m.OK and [p for _, _, p in inner] == [p for _, p in zeros]
    assert v.decoder.counters == a.decoder.counters and a.decoder.dropped() >= 3 - (not key)
    assert v.counters == a.counters


def test_preallocated_board_sends_the_same_bytes_on_an_authenticated_link():
    _same_stream(KEY)


def test_preallocated_board_sends_the_same_bytes_on_an_open_link():
    _same_stream(None)

