"""The board core with the ESP engine, driven through link frames (sans-I/O): SA_ADD, batched
ENCRYPT/DECRYPT, RFC 3948 classification, UNKNOWN_SPI rate limiting, SA_EXPIRE events,
per-packet TOO_BIG. Uses the first backend this runtime has."""
from firmware import esp
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, det, ipv4
from firmware.tests.linkhost import LinkHost


class Host(LinkHost):
    """A LinkHost on the ESP board with the fastest backend this runtime has."""

    def __init__(self, profile=None):
        LinkHost.__init__(self, esp.make_board(profile or {}, 1000, backend=d.fast_backend().NAME,
                                               random_bytes=lambda n: det(n, 5)), 1000)

    def request(self, type, body, nocache=False):
        return self.call(type, body, flags=fr.FLAG_NOCACHE if nocache else 0)

    def add(self, spec):
        return m.SadReply.decode(self.request(m.SA_ADD, spec.encode())).status

    def encrypt(self, items):
        st, out = m.decode_encrypt_reply(self.request(m.ENCRYPT, m.encode_encrypt_request(items), True))
        assert st == m.OK
        return out

    def decrypt(self, items):
        st, out = m.decode_decrypt_reply(self.request(m.DECRYPT, m.encode_decrypt_request(items), True))
        assert st == m.OK
        return out


def _pair(h, spi=0x5000, flags=0, **kw):
    """Install an outbound and an inbound SA with the same keys (the board talks to itself)."""
    assert h.add(d.spec(spi, m.DIR_OUT, flags=flags, src=(A1, 4500), dst=(A2, 4500), **kw)) == m.OK
    assert h.add(d.spec(spi, m.DIR_IN, flags=flags, src=(A2, 4500), dst=(A1, 4500), **kw)) == m.OK


def test_hello_advertises_transforms_with_backend_and_features():
    h = Host()
    hello = m.Hello.decode(h.events_of(m.HELLO)[0].body)
    keys = [t.key() for t in hello.transforms]
    assert (m.ENCR_AES_GCM_16, 128, m.AUTH_NONE) in keys and (m.ENCR_AES_GCM_16, 256, m.AUTH_NONE) in keys
    assert (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_256_128) in keys
    assert all(t.backend == d.fast_backend().NAME for t in hello.transforms)
    for f in (m.FEAT_ESN, m.FEAT_UDP_ENCAP, m.FEAT_TUNNEL, m.FEAT_TRANSPORT, m.FEAT_BATCH):
        assert hello.features & f


def test_batched_encrypt_then_decrypt_over_udp():
    h = Host()
    _pair(h, flags=m.SAF_UDP_ENCAP)
    pkts = [ipv4(A1, A2, 17, d.udp(1, 2, det(n))) for n in (1, 60, 200)]
    out = h.encrypt([(0x5000, p) for p in pkts] + [(0x5999, pkts[0])])
    assert [st for st, _ in out] == [m.P_OK, m.P_OK, m.P_OK, m.P_UNKNOWN_SPI]
    back = h.decrypt([((A1, 4500), esp_) for _, esp_ in out[:3]])
    assert back == [(m.P_OK, 0x5000, p) for p in pkts]
    assert h.decrypt([((A1, 4500), out[0][1])]) == [(m.P_REPLAY, 0x5000, b"")]


def test_rfc3948_keepalive_non_esp_marker_and_encapsulation_mismatch():
    h = Host()
    _pair(h)   # plain ESP SAs
    esp_pkt = h.encrypt([(0x5000, ipv4())])[0][1]
    out = h.decrypt([((A1, 4500), b"\xff"), ((A1, 4500), b"\x00\x00\x00\x00" + det(30)),
                     ((A1, 4500), esp_pkt), ((A1, 0), b"\x00" * 8), ((A1, 0), esp_pkt)])
    assert [st for st, _, _ in out] == [m.P_KEEPALIVE, m.P_NOT_ESP, m.P_POLICY, m.P_MALFORMED, m.P_OK]
    c = h.board.counters
    assert (c["nat_keepalives"], c["non_esp"], c["encap_mismatch"]) == (1, 1, 1)
    assert h.board.sad.get(0x5000, m.DIR_IN).packets == 1    # the mismatch did not count


def test_unknown_spi_events_are_aggregated_and_rate_limited():
    h = Host()
    flood = [((A1, 4500), (0x10000 + i).to_bytes(4, "big") + det(36)) for i in range(60)]
    before = len(h.events_of(m.EV_UNKNOWN_SPI))
    for k in range(0, 60, 20):
        out = h.decrypt(flood[k:k + 20] + flood[:1])
        assert all(st == m.P_UNKNOWN_SPI for st, _, _ in out)
    evs = [m.UnknownSpi.decode(f.body) for f in h.events_of(m.EV_UNKNOWN_SPI)[before:]]
    # burst 5 allows one event per request here; every packet is either listed or counted
    assert 1 <= len(evs) <= 5
    total = sum(n for e in evs for _, _, n in e.entries) + sum(e.suppressed for e in evs)
    h.tick(1000)
    evs2 = [m.UnknownSpi.decode(f.body) for f in h.events_of(m.EV_UNKNOWN_SPI)[before + len(evs):]]
    total += sum(n for e in evs2 for _, _, n in e.entries) + sum(e.suppressed for e in evs2)
    assert total == 63
    assert all(len(e.entries) <= m.UnknownSpi.MAX_ENTRIES for e in evs + evs2)
    assert h.board.counters["unknown_spi_packets"] == 63
    # a sustained flood cannot make more events than the bucket allows
    n0 = len(h.events_of(m.EV_UNKNOWN_SPI))
    for _ in range(50):
        h.decrypt(flood[:3])
    assert len(h.events_of(m.EV_UNKNOWN_SPI)) - n0 <= 5


def test_expiry_events_and_expired_sa_stays_until_deleted():
    h = Host()
    _pair(h, hard_packets=2, soft_packets=1, reqid=77)
    out = h.encrypt([(0x5000, ipv4())] * 3)
    assert [st for st, _ in out] == [m.P_OK, m.P_OK, m.P_EXPIRED]
    exp = [m.SaExpire.decode(f.body) for f in h.events_of(m.EV_SA_EXPIRE)]
    assert [(e.spi, e.direction, e.hard, e.reason, e.reqid) for e in exp] == [
        (0x5000, m.DIR_OUT, False, m.EXP_PACKETS, 77), (0x5000, m.DIR_OUT, True, m.EXP_PACKETS, 77)]
    assert len(h.board.sad) == 2                      # the host deletes it, not the board
    stats = m.StatsReply.decode(h.request(m.SA_STATS, m.encode_stats_request()))
    out_stats = [s for s in stats.records if s.direction == m.DIR_OUT][0]
    assert (out_stats.state, out_stats.packets, out_stats.seq) == (m.SaStats.STATE_HARD_EXPIRED, 2, 2)


def test_sa_add_refusals():
    h = Host()
    assert h.add(m.SaSpec(0x6000, m.DIR_OUT, 3, det(24))) == m.UNSUPPORTED
    assert h.add(m.SaSpec(0x6000, m.DIR_OUT, m.ENCR_AES_GCM_16, det(28))) == m.UNSUPPORTED
    body = h.request(m.SA_ADD, m.SaSpec(0x6000, m.DIR_OUT, m.ENCR_AES_GCM_16, det(20),
                                        mode=m.MODE_TRANSPORT).encode())
    assert body[0] == m.BAD_REQUEST
    assert len(h.board.sad) == 0


def test_oversize_result_gets_too_big_without_using_a_sequence_number():
    h = Host({"max_frame": 720})
    _pair(h)
    big = ipv4(payload=det(640))       # the request fits a frame, its ESP reply would not
    assert h.encrypt([(0x5000, big)]) == [(m.P_TOO_BIG, b"")]
    out = h.encrypt([(0x5000, ipv4(payload=det(100)))])
    assert out[0][0] == m.P_OK and out[0][1][4:8] == b"\x00\x00\x00\x01"


def _per_item_encrypt(b, items):
    """The ENCRYPT handler as it was before runs went through encrypt_batch: one item at a time."""
    out = []
    room = b._reply_room()
    for spi, pkt in items:
        rec = b.sad.get(spi, m.DIR_OUT)
        if rec is None:
            res = (m.P_UNKNOWN_SPI, b"")
        elif len(pkt) + b.ESP_OVERHEAD + 3 > room:
            res = (m.P_TOO_BIG, b"")
        else:
            res = rec.encrypt(pkt)
            b._expiry(rec)
        room -= 3 + len(res[1])
        out.append(res)
    return out


def _per_item_decrypt(b, items):
    out = []
    room = b._reply_room()
    for src, pkt in items:
        st, spi, inner = b._decrypt_one(src, pkt)
        if len(inner) + 7 > room:
            st, inner = m.P_TOO_BIG, b""
        room -= 7 + len(inner)
        out.append((st, spi, inner))
    return out


def test_runs_through_batches_answer_as_item_by_item():
    """The handlers pass runs of items for one SA to encrypt_batch/decrypt_batch; replies,
    P_TOO_BIG decisions, events and SA counters are those of the item-by-item loop."""
    hosts = [Host({"max_frame": 1376}), Host({"max_frame": 1376})]
    for h in hosts:
        _pair(h, 0x5000, flags=m.SAF_UDP_ENCAP)
        _pair(h, 0x5001, hard_packets=6, soft_packets=2)
        _pair(h, 0x5002, encr=m.ENCR_AES_CBC)
    new, ref = hosts
    p = [ipv4(A1, A2, 17, d.udp(1, 2, det(n, n))) for n in (1, 20, 41, 62)]
    enc_items = ([(0x5000, x) for x in p[:3]] + [(0x5001, x) for x in p] + [(0x5999, p[0])]
                 + [(0x5000, b"\x45" * 20), (0x5000, p[3])] + [(0x5002, x) for x in p[:2]]
                 + [(0x5001, x) for x in p[:3]] + [(0x5000, x) for x in (p[3], p[2], p[0])])
    got = new.encrypt(enc_items)
    want = _per_item_encrypt(ref.board, enc_items)
    ref.collect(ref.board.tick(ref.now))
    assert got == want, (got, want)
    sts = [st for st, _ in got]
    assert m.P_TOO_BIG in sts and m.P_EXPIRED in sts and m.P_UNKNOWN_SPI in sts
    assert sts[-1] == m.P_OK                       # after a P_TOO_BIG, a smaller one still fits
    esps = [(spi, e) for (spi, _), (st, e) in zip(enc_items, got) if st == m.P_OK]
    udp = {0x5000: (A1, 4500)}
    dec_items = [(udp.get(spi, (A1, 0)), e) for spi, e in esps]
    src, last = dec_items[-1]
    dec_items = ([(src, last[:-1] + bytes((last[-1] ^ 1,)))] + dec_items[:3]      # forged, then ...
                 + [dec_items[0], ((A1, 4500), dec_items[1][1][:7]), ((A1, 4500), b"\xff")]  # replay, short
                 + dec_items[3:7] + [((A1, 4500), b"\x00" * 4 + det(20)), ((A1, 0), b"\x00" * 8)]
                 + dec_items[7:8] + [((A1, 0), dec_items[7][1])]              # wrong encapsulation
                 + dec_items[8:] + [((A1, 0), (0x5999).to_bytes(4, "big") + det(40))])
    sts = set()
    half = len(dec_items) // 2
    first, second = dec_items[:half], dec_items[half:]
    for items in (first, second, list(reversed(first)), list(reversed(second))):
        got = new.decrypt(items)
        want = _per_item_decrypt(ref.board, items)
        ref.collect(ref.board.tick(ref.now))
        assert got == want, (got, want)
        sts |= {st for st, _, _ in got}
    assert {m.P_OK, m.P_REPLAY, m.P_AUTH_FAIL, m.P_POLICY, m.P_KEEPALIVE, m.P_NOT_ESP, m.P_MALFORMED,
            m.P_UNKNOWN_SPI} <= sts, sts
    assert [(f.type, f.body) for f in new.events] == [(f.type, f.body) for f in ref.events]
    assert len(new.events_of(m.EV_SA_EXPIRE)) == 4
    for key in new.board.sad.by_key:
        a, b = new.board.sad.by_key[key].stats(), ref.board.sad.by_key[key].stats()
        assert a == b, (key, a, b)


def _heap_full():
    """(lock, unlock): after lock() the next allocation fails as on a full heap. On MicroPython
    that is the real allocator's MemoryError (micropython.heap_lock: the heap refuses every
    allocation; the wasm build's heap grows on demand, so its --heapsize cannot make it full).
    CPython's allocator cannot be made to fail in-process: there lock() raises MemoryError
    itself, where the first allocation would have failed."""
    try:
        import micropython
        return micropython.heap_lock, micropython.heap_unlock
    except (ImportError, AttributeError):
        def lock():
            raise MemoryError("heap full")
        return lock, lambda: None


def _starved(method):
    """`method` (an SA class's) with the heap full while it runs."""
    lock, unlock = _heap_full()

    def run(self, *args):
        lock()
        try:
            return method(self, *args)
        finally:
            unlock()
    return run


def test_memory_error_in_a_request_is_answered_internal_and_the_board_keeps_its_sad():
    """A full heap while handling a request: the reply is INTERNAL and counted, the board
    does not reset, its SAD and boot id stay, the next requests are served, and a retried
    SA_ADD (INTERNAL is not cached) is applied when memory is back."""
    h = Host()
    _pair(h, flags=m.SAF_UDP_ENCAP)
    gen, n = h.board.sad.gen, len(h.board.sad)
    rec = h.board.sad.get(0x5000, m.DIR_OUT)
    cls = type(rec)
    real = cls.encrypt
    cls.encrypt = _starved(real)
    try:
        body = h.request(m.ENCRYPT, m.encode_encrypt_request([(0x5000, ipv4(A1, A2, 17, det(40)))]), True)
    finally:
        cls.encrypt = real
    assert body == bytes((m.INTERNAL,)), body
    assert h.board.counters["memory_errors"] == 1 and h.board.counters["internal_errors"] == 0
    assert (h.board.sad.gen, len(h.board.sad)) == (gen, n)
    assert not h.board.reset_requested and not h.events_of(m.EV_FLUSHED)
    ack = m.HeartbeatAck.decode(h.request(m.HEARTBEAT, b"")[1:])
    assert (ack.sa_count, ack.sad_gen) == (n, gen)
    # the SA still works
    p = ipv4(A1, A2, 17, det(40))
    out = h.encrypt([(0x5000, p)])
    assert h.decrypt([((A1, 4500), out[0][1])]) == [(m.P_OK, 0x5000, p)]
    # SA_ADD on a full heap: refused, nothing added; the retry (same seq) runs again
    new_sa = esp.new_sa
    esp.new_sa = lambda spec, be: _starved(lambda self: new_sa(spec, be))(None)
    spec = d.spec(0x6000, m.DIR_OUT)
    try:
        assert h.call(m.SA_ADD, spec.encode(), seq=900) == bytes((m.INTERNAL,))
    finally:
        esp.new_sa = new_sa
    assert h.board.sad.get(0x6000, m.DIR_OUT) is None and h.board.sad.gen == gen
    assert m.SadReply.decode(h.call(m.SA_ADD, spec.encode(), seq=900)).status == m.OK
    assert len(h.board.sad) == n + 1 and h.board.counters["memory_errors"] == 2


def test_any_exception_in_a_request_is_answered_internal():
    h = Host()
    _pair(h, flags=m.SAF_UDP_ENCAP)
    cls = type(h.board.sad.get(0x5000, m.DIR_IN))
    real = cls.decrypt

    def broken(self, pkt):
        raise ValueError("a bug")
    cls.decrypt = broken
    out = h.encrypt([(0x5000, ipv4(A1, A2, 17, det(40)))])
    try:
        body = h.request(m.DECRYPT, m.encode_decrypt_request([((A1, 4500), out[0][1])]), True)
    finally:
        cls.decrypt = real
    assert body == bytes((m.INTERNAL,))
    assert h.board.counters["internal_errors"] == 1 and len(h.board.sad) == 2
    items = dict(m.decode_counters_reply(h.request(m.COUNTERS, b""))[1])
    assert items["internal_errors"] == 1 and items["memory_errors"] == 0


def test_batch_overhead_bound_covers_the_largest_esp_growth():
    """The handlers' P_TOO_BIG bound must hold for every transform (a 32-byte ICV: HMAC-SHA-512)."""
    from firmware import esp
    from firmware.board import Board
    assert Board.ESP_OVERHEAD >= esp.MAX_OVERHEAD, (Board.ESP_OVERHEAD, esp.MAX_OVERHEAD)
