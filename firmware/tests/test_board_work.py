"""Control before data on the board (firmware/board.py): ENCRYPT/DECRYPT requests are queued and
worked on a packet at a time; heartbeats and SA commands are answered first; a full data queue
answers BUSY at once. Runs on both runtimes, with the fastest backend each has."""
from firmware import esp
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, det, ipv4
from firmware.tests.linkhost import LinkHost

NOCACHE = fr.FLAG_NOCACHE


def _host(queue=4):
    b = esp.make_board({"data_queue": queue, "max_batch": 8}, 1000, backend=d.fast_backend().NAME,
                       random_bytes=lambda n: det(n, 9))
    h = LinkHost(b, 1000)
    for direction, src, dst in ((m.DIR_OUT, A1, A2), (m.DIR_IN, A2, A1)):
        spec = d.spec(0x7000, direction, flags=m.SAF_UDP_ENCAP, src=(src, 4500), dst=(dst, 4500))
        body = h.call(m.SA_ADD, spec.encode())
        assert m.SadReply.decode(body).status == m.OK
    b.work_budget = 0           # as the main loop runs it: feed() answers control only
    return h, b


def _packets(n, size=200):
    return [(0x7000, ipv4(A1, A2, 17, d.udp(1000 + i, 53, det(size, i)))) for i in range(n)]


def test_a_heartbeat_is_answered_before_queued_data():
    h, b = _host()
    req = m.encode_encrypt_request(_packets(8))
    wire = fr.encode(m.ENCRYPT, 100, NOCACHE, req) + fr.encode(m.ENCRYPT, 101, NOCACHE, req)
    wire += fr.encode(m.HEARTBEAT, 102, NOCACHE, b"")
    replies = h.collect(b.feed(wire, 1000))
    assert [f.type for f in replies] == [m.HEARTBEAT]          # data waits, the heartbeat does not
    assert b.busy()
    got, steps = [], 0
    while b.busy():
        got += h.collect(b.work(1000, 1))
        steps += 1
        # a heartbeat arriving in the middle is answered at once, ahead of the rest
        if steps == 3:
            mid = h.collect(b.feed(fr.encode(m.HEARTBEAT, 103, NOCACHE, b""), 1000))
            assert [f.seq for f in mid] == [103]
    assert steps == 16                                          # one packet per step
    assert [(f.type, f.seq) for f in got] == [(m.ENCRYPT, 100), (m.ENCRYPT, 101)]
    st, items = m.decode_encrypt_reply(got[0].body)
    assert st == m.OK and len(items) == 8 and all(s == m.P_OK for s, _ in items)
    assert b.counters["data_packets"] == 16 and b.counters["data_frames"] == 2


def test_work_per_packet_gives_the_same_ciphertext_as_one_pass():
    items = _packets(6, 500)
    h1, b1 = _host()
    b1.work_budget = None
    one = h1.collect(b1.feed(fr.encode(m.ENCRYPT, 7, NOCACHE, m.encode_encrypt_request(items)), 1000))
    h2, b2 = _host()
    h2.collect(b2.feed(fr.encode(m.ENCRYPT, 7, NOCACHE, m.encode_encrypt_request(items)), 1000))
    stepped = []
    while b2.busy():
        stepped += h2.collect(b2.work(1000, 1))
    assert len(one) == len(stepped) == 1 and one[0].body == stepped[0].body


def test_a_full_data_queue_answers_busy_and_control_still_works():
    h, b = _host(queue=2)
    req = m.encode_encrypt_request(_packets(2, 400))        # bulk: small frames have more room
    wire = b"".join(fr.encode(m.ENCRYPT, 200 + i, NOCACHE, req) for i in range(3))
    replies = h.collect(b.feed(wire, 1000))
    assert [(f.seq, f.body[:1]) for f in replies] == [(202, bytes((m.BUSY,)))]
    assert b.counters["data_busy"] == 1
    ack = h.call(m.HEARTBEAT, flags=NOCACHE)
    assert ack[0] == m.OK
    done = []
    while b.busy():
        done += h.collect(b.work(1000, 4))
    assert [f.seq for f in done] == [200, 201]


def test_a_malformed_data_request_is_refused_at_once():
    h, b = _host()
    replies = h.collect(b.feed(fr.encode(m.DECRYPT, 300, NOCACHE, b"\x00"), 1000))
    assert [(f.seq, f.body) for f in replies] == [(300, bytes((m.BAD_REQUEST,)))]
    assert not b.busy()


def test_decrypt_is_worked_per_packet_too():
    h, b = _host()
    b.work_budget = None
    wire = h.collect(b.feed(fr.encode(m.ENCRYPT, 1, NOCACHE, m.encode_encrypt_request(_packets(4))), 1000))
    esps = [p for _, p in m.decode_encrypt_reply(wire[0].body)[1]]
    b.work_budget = 0
    req = m.encode_decrypt_request([((A2, 4500), p) for p in esps])
    assert h.collect(b.feed(fr.encode(m.DECRYPT, 2, NOCACHE, req), 1000)) == []
    out, steps = [], 0
    while b.busy():
        out += h.collect(b.work(1000, 1))
        steps += 1
    assert steps == 4
    st, items = m.decode_decrypt_reply(out[0].body)
    assert st == m.OK and [i[0] for i in items] == [m.P_OK] * 4


def test_a_small_frame_goes_ahead_of_bulk_not_yet_started():
    h, b = _host(queue=2)
    bulk = m.encode_encrypt_request(_packets(4, 600))
    small = m.encode_encrypt_request(_packets(1, 60))
    wire = fr.encode(m.ENCRYPT, 10, NOCACHE, bulk) + fr.encode(m.ENCRYPT, 11, NOCACHE, bulk)
    h.collect(b.feed(wire, 1000))
    h.collect(b.work(1000, 1))                        # bulk 10 started
    h.collect(b.feed(fr.encode(m.ENCRYPT, 12, NOCACHE, small), 1000))   # beyond data_queue: admitted
    done = []
    while b.busy():
        done += [f.seq for f in h.collect(b.work(1000, 1))]
    assert done == [10, 12, 11]                       # after the started job, before the waiting one


# ---- a transform worked on in slices of a packet (ChaCha20-Poly1305 in Python) -------------------
CHACHA = m.ENCR_CHACHA20_POLY1305


def _chacha_host(budget=0):
    b = esp.make_board({"data_queue": 4, "max_batch": 8}, 1000, backend="pure", random_bytes=lambda n: det(n, 9))
    h = LinkHost(b, 1000)
    for direction, src, dst in ((m.DIR_OUT, A1, A2), (m.DIR_IN, A2, A1)):
        spec = d.spec(0x7100, direction, CHACHA, flags=m.SAF_UDP_ENCAP, src=(src, 4500), dst=(dst, 4500))
        assert m.SadReply.decode(h.call(m.SA_ADD, spec.encode())).status == m.OK
    b.work_budget = budget
    return h, b


def _chacha_packets(n, size):
    return [(0x7100, ipv4(A1, A2, 17, d.udp(2000 + i, 53, det(size, i)))) for i in range(n)]


def _drain(h, b):
    got, steps = [], 0
    while b.busy():
        got += h.collect(b.work(1000, 1))
        steps += 1
    return got, steps


def test_a_chacha_packet_is_worked_in_slices_and_control_is_answered_between_them():
    from firmware.crypto import chachapoly
    items = _chacha_packets(2, 1372)                   # 1400-byte IPv4 packets
    h1, b1 = _chacha_host(None)
    want = h1.collect(b1.feed(fr.encode(m.ENCRYPT, 7, NOCACHE, m.encode_encrypt_request(items)), 1000))
    h, b = _chacha_host()
    h.collect(b.feed(fr.encode(m.ENCRYPT, 7, NOCACHE, m.encode_encrypt_request(items)), 1000))
    h.collect(b.work(1000, 1))                         # the first packet begun: k is still 0
    assert b.data_queue[0].pend is not None and b.data_queue[0].k == 0
    # a heartbeat in the middle of a packet is answered at once; a small frame waits behind it
    mid = h.collect(b.feed(fr.encode(m.HEARTBEAT, 8, NOCACHE, b"") +
                           fr.encode(m.ENCRYPT, 9, NOCACHE, m.encode_encrypt_request(_chacha_packets(1, 40))), 1000))
    assert [f.seq for f in mid] == [8]
    got, steps = _drain(h, b)
    assert [f.seq for f in got] == [7, 9]
    assert got[0].body == want[0].body                 # the same bytes as in one pass
    # a 1400-byte packet: its ~22 ChaCha20 blocks and ~90 Poly1305 blocks, SLICE units a step
    assert steps >= 2 * (22 * chachapoly._CHACHA + 90) // chachapoly.SLICE, steps
    assert b.counters["data_packets"] == 3
    # and back, in slices too, to the packets sent
    esps = [p for _, p in m.decode_encrypt_reply(got[0].body)[1]]
    req = m.encode_decrypt_request([((A2, 4500), p) for p in esps])
    h.collect(b.feed(fr.encode(m.DECRYPT, 10, NOCACHE, req), 1000))
    back, steps = _drain(h, b)
    st, res = m.decode_decrypt_reply(back[0].body)
    assert st == m.OK and [r[2] for r in res] == [p for _, p in items], [r[0] for r in res]
    assert steps >= 2 * (22 * chachapoly._CHACHA + 90) // chachapoly.SLICE, steps


def test_each_chacha_slice_does_a_bounded_amount_of_work():
    """Units counted as step() spends them: a ChaCha20 block is _CHACHA units, a Poly1305 block
    one; no step goes beyond SLICE by more than one ChaCha20 block (nor the tag)."""
    from firmware.crypto import chachapoly as cp
    from firmware.crypto import pure
    used = [0]
    block, poly = cp._block, cp._poly_blocks

    def count_block(st, ks, koff):
        used[0] += cp._CHACHA
        block(st, ks, koff)

    def count_poly(hh, rs, data, off, end):
        used[0] += (end - off) // 16
        poly(hh, rs, data, off, end)
    c = cp.ChaChaPoly(det(32, 5), pure.AuthError)
    buf = bytearray(det(1403, 6)) + bytearray(16)
    want = c.encrypt(det(12, 7), bytes(buf[:1403]), b"aad")
    cp._block, cp._poly_blocks = count_block, count_poly
    try:
        c.seal_begin(det(12, 7), b"aad", buf, 0, 1403)
        worst = steps = 0
        used[0] = 0
        while not c.step_slice():
            worst = max(worst, used[0])
            used[0] = 0
            steps += 1
        worst = max(worst, used[0])
        out = bytearray(1403)
        c.open_begin(det(12, 7), b"aad", buf, 0, 1403, out, 0)
        used[0] = 0
        while not c.step_slice():
            worst = max(worst, used[0])
            used[0] = 0
    finally:
        cp._block, cp._poly_blocks = block, poly
    assert bytes(buf) == want and bytes(out) == bytes(det(1403, 6))
    assert steps >= (22 * cp._CHACHA + 88) // cp.SLICE, steps
    assert worst <= cp.SLICE + cp._CHACHA - 1, worst


def test_an_sa_deleted_in_the_middle_of_a_packet_takes_the_packet_with_it():
    h, b = _chacha_host()
    h.collect(b.feed(fr.encode(m.ENCRYPT, 20, NOCACHE, m.encode_encrypt_request(_chacha_packets(2, 600))), 1000))
    h.collect(b.work(1000, 1))
    h.collect(b.work(1000, 1))
    assert b.data_queue[0].pend is not None
    body = h.call(m.SA_DEL, m.encode_sa_ref(0x7100, m.DIR_OUT))
    assert m.SadReply.decode(body).status == m.OK
    got, _ = _drain(h, b)
    st, res = m.decode_encrypt_reply(got[0].body)
    assert st == m.OK and [r[0] for r in res] == [m.P_UNKNOWN_SPI] * 2


def test_a_tampered_chacha_packet_fails_in_slices_and_the_next_one_passes():
    h, b = _chacha_host(None)
    got = h.collect(b.feed(fr.encode(m.ENCRYPT, 30, NOCACHE, m.encode_encrypt_request(_chacha_packets(2, 300))), 1000))
    esps = [bytearray(p) for _, p in m.decode_encrypt_reply(got[0].body)[1]]
    esps[0][-1] ^= 1
    b.work_budget = 0
    h.collect(b.feed(fr.encode(m.DECRYPT, 31, NOCACHE,
                               m.encode_decrypt_request([((A2, 4500), bytes(p)) for p in esps])), 1000))
    back, steps = _drain(h, b)
    st, res = m.decode_decrypt_reply(back[0].body)
    assert st == m.OK and [r[0] for r in res] == [m.P_AUTH_FAIL, m.P_OK], res
    assert steps > 2
    assert b.sad.get(0x7100, m.DIR_IN).auth_fail == 1
