"""Board core (firmware/board.py) driven through its byte interface, as a port would."""
from firmware import board as bd
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests.linkhost import LinkHost


class Host(LinkHost):
    """A LinkHost on a plain board core with deterministic boot ids."""

    _r = 0

    def __init__(self, profile=None, now=0):
        LinkHost.__init__(self, bd.Board(profile or {}, now, random_bytes=self.rand), now)

    def rand(self, n):
        Host._r += 1
        return bytes(((Host._r * 37 + i) & 0xFF for i in range(n)))


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_GCM_16, b"k" * 20, reqid=spi)


def test_boot_hello_then_hello_request():
    h = Host({"board_id": "b1", "max_sas": 8})
    assert len(h.events) == 1 and h.events[0].type == m.HELLO
    boot = m.Hello.decode(h.events[0].body)
    assert boot.board_id == "b1" and boot.max_sas == 8 and len(boot.boot_id) == 8
    body = h.call(m.HELLO, m.encode_hello_request(b"session1"))
    assert body[0] == m.OK and m.Hello.decode(body[1:]).boot_id == boot.boot_id
    assert m.Hello.decode(body[1:]).reply_cache == bd.DEFAULT_PROFILE["reply_cache"]


def test_each_boot_has_its_own_boot_id():
    ids = set(bd.Board({}, 0).boot_id for _ in range(20))
    assert len(ids) == 20


def test_sad_bookkeeping_counts_and_generation():
    h = Host({"max_sas": 3})
    r = m.SadReply.decode(h.call(m.SA_ADD, spec(0x100).encode()))
    assert (r.status, r.sad_gen, r.sa_count) == (m.OK, 1, 1)
    r = m.SadReply.decode(h.call(m.SA_ADD, spec(0x100, m.DIR_OUT).encode()))
    assert (r.status, r.sad_gen, r.sa_count) == (m.OK, 2, 2)
    r = m.SadReply.decode(h.call(m.SA_ADD, spec(0x100).encode()))
    assert (r.status, r.sad_gen, r.sa_count) == (m.EXISTS, 2, 2)
    h.call(m.SA_ADD, spec(0x101).encode())
    r = m.SadReply.decode(h.call(m.SA_ADD, spec(0x102).encode()))
    assert (r.status, r.sa_count) == (m.SAD_FULL, 3)
    r = m.SadReply.decode(h.call(m.SA_DEL, m.encode_sa_ref(0x999, 0)))
    assert (r.status, r.sad_gen) == (m.NOT_FOUND, 3)
    r = m.SadReply.decode(h.call(m.SA_DEL, m.encode_sa_ref(0x100, m.DIR_OUT)))
    assert (r.status, r.sad_gen, r.sa_count) == (m.OK, 4, 2)
    r = m.SadReply.decode(h.call(m.SA_FLUSH))
    assert (r.status, r.sad_gen, r.sa_count, r.removed) == (m.OK, 5, 0, 2)
    r = m.SadReply.decode(h.call(m.SA_FLUSH))
    assert (r.sad_gen, r.removed) == (5, 0)   # flushing nothing changes nothing
    ack = m.HeartbeatAck.decode(h.call(m.HEARTBEAT)[1:])
    assert (ack.sa_count, ack.sad_gen) == (0, 5)


def test_retried_request_is_applied_once():
    h = Host()
    first = h.send(m.SA_ADD, spec(0x200).encode(), seq=7)
    again = h.send(m.SA_ADD, spec(0x200).encode(), seq=7)
    assert first == again and m.SadReply.decode(again[0].body).status == m.OK
    assert len(h.board.sad) == 1 and h.board.sad.gen == 1
    assert h.board.counters["replies_from_cache"] == 1
    # a retried SA_DEL likewise
    d1 = h.send(m.SA_DEL, m.encode_sa_ref(0x200, 0), seq=8)
    d2 = h.send(m.SA_DEL, m.encode_sa_ref(0x200, 0), seq=8)
    assert m.SadReply.decode(d2[0].body).status == m.OK and d1 == d2
    assert h.board.sad.gen == 2


def test_new_session_cannot_hit_old_replies():
    h = Host()
    h.call(m.HELLO, m.encode_hello_request(b"sessionA"))
    h.call(m.SA_ADD, spec(0x300).encode(), seq=50)
    h.call(m.HELLO, m.encode_hello_request(b"sessionB"))
    r = m.SadReply.decode(h.call(m.SA_DEL, m.encode_sa_ref(0x300, 0), seq=50))
    assert r.status == m.OK and len(h.board.sad) == 0


def test_nocache_requests_run_again():
    h = Host()
    a = m.HeartbeatAck.decode(h.call(m.HEARTBEAT, seq=9, flags=fr.FLAG_NOCACHE)[1:])
    h.call(m.SA_ADD, spec(0x400).encode())
    b = m.HeartbeatAck.decode(h.call(m.HEARTBEAT, seq=9, flags=fr.FLAG_NOCACHE)[1:])
    assert (a.sa_count, b.sa_count) == (0, 1)


def test_bad_requests_change_nothing():
    h = Host()
    h.call(m.SA_ADD, spec(0x500).encode())
    gen = h.board.sad.gen
    assert h.call(m.SA_ADD, spec(0x501).encode()[:-3]) == bytes((m.BAD_REQUEST,))
    assert h.call(m.SA_ADD, spec(0x502).encode() + b"\x40\x00\x00") == bytes((m.UNSUPPORTED,))
    assert h.call(m.SA_DEL, b"\x00") == bytes((m.BAD_REQUEST,))
    assert h.call(0x7E) == bytes((m.UNSUPPORTED,))
    assert h.call(m.HEARTBEAT, b"junk") == bytes((m.BAD_REQUEST,))
    assert len(h.board.sad) == 1 and h.board.sad.gen == gen
    # replies and events sent to the board are ignored
    assert h.send(m.SA_FLUSH, flags=fr.FLAG_REPLY) == []
    assert len(h.board.sad) == 1
    assert h.board.counters["bad_requests"] == 5 and h.board.counters["unknown_types"] == 1


def test_corrupt_frames_are_counted_never_acted_on():
    h = Host()
    wire = bytearray(fr.encode(m.SA_ADD, 1, 0, spec(0x600).encode()))
    wire[10] = 0x00 if wire[10] != 0 else 0x55   # a flipped byte may even split the frame
    assert h.collect(h.board.feed(bytes(wire), 0)) == []
    assert len(h.board.sad) == 0 and h.board.decoder.dropped() >= 1
    ack = m.HeartbeatAck.decode(h.call(m.HEARTBEAT)[1:])
    assert ack.link_errors == h.board.decoder.dropped()


def test_host_silence_flushes_the_sad():
    h = Host({"host_silence_ms": 1000})
    h.call(m.SA_ADD, spec(0x700).encode())
    h.call(m.SA_ADD, spec(0x701).encode())
    h.tick(900)
    h.call(m.HEARTBEAT)       # the host speaks: the clock restarts
    h.tick(900)
    assert len(h.board.sad) == 2 and len(h.events) == 1
    assert h.board.next_deadline() == h.now - 900 + 1001
    h.tick(200)
    assert len(h.board.sad) == 0
    ev = h.events[-1]
    assert ev.type == m.EV_FLUSHED
    f = m.Flushed.decode(ev.body)
    assert (f.reason, f.removed, f.sad_gen) == (m.FLUSH_HOST_SILENCE, 2, 3)
    ack = m.HeartbeatAck.decode(h.call(m.HEARTBEAT)[1:])
    assert (ack.flushes, ack.sa_count) == (1, 0)
    h.tick(5000)              # nothing left to flush: no further events
    assert len(h.events) == 2


def test_unknown_spi_events_are_aggregated_and_rate_limited():
    h = Host({"unknown_spi_rate": 2, "unknown_spi_burst": 1})
    src = (b"\xc0\x00\x02\x02", 4500)
    pkts = [(src, b"\x00\x00\x99\x99" + b"\x00\x00\x00\x01" + b"x" * 32)] * 5
    for _ in range(10):
        body = h.call(m.DECRYPT, m.encode_decrypt_request(pkts), flags=fr.FLAG_NOCACHE)
        st, items = m.decode_decrypt_reply(body)
        assert st == m.OK and [i[0] for i in items] == [m.P_UNKNOWN_SPI] * 5
    unknown = [e for e in h.events if e.type == m.EV_UNKNOWN_SPI]
    assert len(unknown) == 1   # 50 packets, one event so far (burst 1)
    ev = m.UnknownSpi.decode(unknown[0].body)
    assert ev.entries == [(0x9999, src, 5)]
    h.tick(100)                # 100 ms at 2/s: no token yet
    assert len([e for e in h.events if e.type == m.EV_UNKNOWN_SPI]) == 1
    h.tick(500)
    later = [e for e in h.events if e.type == m.EV_UNKNOWN_SPI]
    assert len(later) == 2 and m.UnknownSpi.decode(later[1].body).entries == [(0x9999, src, 45)]


def test_unknown_spi_entries_are_bounded():
    h = Host({"unknown_spi_rate": 1, "unknown_spi_burst": 1})
    h.tick(0)
    h.board._unknown_bucket.tokens = 0
    for spi in range(0x1000, 0x1000 + 100):
        h.board.note_unknown_spi(spi, None)
    assert len(h.board._unknown) == m.UnknownSpi.MAX_ENTRIES
    h.tick(1001)
    ev = m.UnknownSpi.decode(h.events[-1].body)
    assert len(ev.entries) == m.UnknownSpi.MAX_ENTRIES and ev.suppressed == 100 - m.UnknownSpi.MAX_ENTRIES


def test_stats_are_paged_within_the_frame():
    h = Host({"max_sas": 200, "max_frame": 1024})
    for i in range(60):
        h.call(m.SA_ADD, spec(0x1000 + i).encode())
    seen = []
    start = 0
    while True:
        r = m.StatsReply.decode(h.call(m.SA_STATS, m.encode_stats_request(start)))
        assert r.status == m.OK and r.total == 60
        size = fr.MIN_FRAME + 5 + len(r.records) * m.SaStats.SIZE
        assert size <= 1024 < size + m.SaStats.SIZE or len(r.records) < 24
        if not r.records:
            break
        seen += [s.spi for s in r.records]
        start += len(r.records)
    assert seen == [0x1000 + i for i in range(60)]


def test_reset_request_is_answered_first():
    h = Host()
    assert h.call(m.RESET) == bytes((m.OK,))
    assert h.board.reset_requested


def test_counters_reply_names_link_errors():
    h = Host()
    h.board.feed(b"\x00\x05\x01\x02\x00", 0)
    st, d = m.decode_counters_reply(h.call(m.COUNTERS))
    assert st == m.OK and d["link_bad_cobs"] + d["link_short"] == 1 and d["requests"] >= 1
