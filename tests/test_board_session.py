"""Host board session against the real board core over a simulated wire (virtual time).

These are the watchdog's and the exactly-once machinery's rules, checked fast and
deterministically; hil_tests/ checks the same over a real pseudo-terminal with pyserial.
"""
import pytest

from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.events import BoardReady, Reply, RequestFailed
from host.offload.link import LinkClient
from host.offload.session import READY, NotReady
from tests.board_wire import Wire


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_GCM_16, b"k" * 20, reqid=spi & 0xFFFF)


def ready(w):
    w.run_until(lambda: w.session.state == READY)
    return w


def add(w, spi, d=m.DIR_IN):
    ev = w.call(lambda now: w.session.sa_add(spec(spi, d), now))
    assert isinstance(ev, Reply), ev
    return m.SadReply.decode(ev.body)


def test_open_flushes_the_board_and_announces_ready():
    w = Wire()
    w.board.sad.add(spec(0x100))    # left over from an earlier host run
    ready(w)
    assert [type(e) for e in w.events] == [BoardReady]
    assert len(w.board.sad) == 0
    assert w.events[0].boot_id == w.board.boot_id
    assert w.session.books.gen == w.board.sad.gen


def test_open_without_flush_adopts_the_generation():
    w = ready(Wire(flush_on_open=False))
    w.run(1.0)
    assert w.session.books.gen == w.board.sad.gen and not w.lost()


def test_sa_commands_keep_the_books():
    w = ready(Wire())
    for i in range(10):
        assert add(w, 0x1000 + i).status == m.OK
    assert add(w, 0x1000).status == m.EXISTS
    ev = w.call(lambda now: w.session.sa_del(0x1003, m.DIR_IN, now))
    assert m.SadReply.decode(ev.body).status == m.OK
    assert set(w.session.books.sas) == {(0x1000 + i, 0) for i in range(10) if i != 3}
    w.run(2.0)                        # heartbeats agree with the books: no alarm
    assert not w.lost()
    assert w.session.counters["heartbeats"] >= 19


@pytest.mark.parametrize("seed", [1, 2])
def test_exactly_once_under_one_percent_byte_faults(seed):
    """10,000 SA_ADD/SA_DEL with 1% of bytes dropped or flipped both ways: books == SAD."""
    w = ready(Wire({"max_sas": 512, "reply_cache": 8}, fault=0.01, seed=seed, period=0.5, misses=3))
    live = []
    n = 0
    outstanding = {}
    spi = 0x10000
    while n < 10000 or outstanding:
        while n < 10000 and len(outstanding) < 8:
            if len(live) < 200 and (len(live) < 20 or w.rng.random() < 0.5):
                spi += 1
                seq = w.session.sa_add(spec(spi), w.now)
                outstanding[seq] = ("add", spi)   # deletable once acknowledged
            else:
                victim = live.pop(w.rng.randrange(len(live)))
                seq = w.session.sa_del(victim, m.DIR_IN, w.now)
                outstanding[seq] = ("del", victim)
            n += 1
        w.pump()
        w.step(w.now + 1.0)
        for ev in list(w.events):
            if isinstance(ev, (Reply, RequestFailed)) and ev.seq in outstanding:
                w.events.remove(ev)
                assert isinstance(ev, Reply), ev
                assert m.SadReply.decode(ev.body).status == m.OK, outstanding[ev.seq]
                kind, which = outstanding.pop(ev.seq)
                if kind == "add":
                    live.append(which)
    assert not w.lost()
    assert set(w.session.books.sas) == {(s, 0) for s in live}
    assert set(w.board.sad.by_key) == set(w.session.books.sas)
    c = w.board.counters
    assert c["sa_add_ok"] + c["sa_del_ok"] == 10000
    assert "sa_add_exists" not in c and "sa_del_not_found" not in c
    assert w.session.link.counters["retries"] > 1000     # the faults were real
    assert c["replies_from_cache"] > 100                  # and the cache answered retries


def test_ten_thousand_heartbeats_under_faults_raise_no_false_alarm():
    w = ready(Wire(fault=0.01, seed=7, period=0.1, misses=3))
    add(w, 0x2000)
    start = w.session.counters["heartbeats"]
    w.run_until(lambda: w.session.counters["heartbeats"] - start >= 10000, timeout=2000)
    assert not w.lost(), w.lost()[:3]
    assert w.session.counters["missed_heartbeats"] < 10   # retries inside a period cover the loss
    assert w.session.link.counters["retries"] > 500


def test_reset_detected_by_unsolicited_hello():
    w = ready(Wire())
    add(w, 0x3000)
    w.run(0.05)
    t0 = w.now
    w.reset_board()
    w.run_until(lambda: w.lost())
    lost = w.lost()[0]
    assert lost.reason == "unsolicited-hello" and lost.sas == ((0x3000, 0),)
    assert lost.at - t0 < 0.01
    w.run_until(lambda: w.session.state == READY)
    assert isinstance(w.events[-1], BoardReady) and w.events[-1].boot_id == w.board.boot_id


def test_quiet_reset_caught_by_boot_id_on_next_heartbeat():
    w = ready(Wire(period=0.1, misses=3))
    add(w, 0x3100)
    w.run(0.033)
    t0 = w.now
    w.reset_board(quiet=True)
    w.run_until(lambda: w.lost())
    lost = w.lost()[0]
    assert lost.reason == "boot-id-changed"
    assert lost.at - t0 <= 0.1 + 0.01     # the next heartbeat


def test_hung_board_detected_by_missed_heartbeats_within_bound():
    period, misses = 0.1, 3
    w = ready(Wire(period=period, misses=misses))
    w.run(0.25)
    t0 = w.now
    w.board_hung = True
    w.run_until(lambda: w.lost(), timeout=5)
    lost = w.lost()[0]
    assert lost.reason == "missed-heartbeats"
    assert lost.at - t0 <= period * misses + period
    assert lost.at - t0 >= period * (misses - 1)


def test_requests_in_flight_fail_when_the_board_is_lost():
    w = ready(Wire(period=0.1, misses=3))
    w.board_hung = True
    seq = w.session.sa_add(spec(0x4000), w.now)
    w.pump()
    w.run_until(lambda: w.lost())
    failed = [e for e in w.events if isinstance(e, RequestFailed) and e.seq == seq]
    assert failed and "lost" in failed[0].reason
    with pytest.raises(NotReady):
        w.session.sa_add(spec(0x4001), w.now)


def test_request_timeout_loses_the_board():
    w = ready(Wire(period=5.0, misses=3, link=LinkClient(give_up=0.2)))
    w.board_hung = True
    seq = w.session.sa_add(spec(0x4100), w.now)
    w.pump()
    w.run_until(lambda: w.lost(), timeout=2)
    assert w.lost()[0].reason == "request-timeout"
    assert any(isinstance(e, RequestFailed) and e.seq == seq for e in w.events)


def test_sa_lost_behind_the_hosts_back():
    w = ready(Wire())
    add(w, 0x5000)
    add(w, 0x5001)
    w.board.sad.delete(0x5000, 0)
    w.run_until(lambda: w.lost(), timeout=1)
    assert w.lost()[0].reason == "sa-count-mismatch"


def test_sad_changed_behind_the_hosts_back_same_count():
    w = ready(Wire())
    add(w, 0x5100)
    w.board.sad.delete(0x5100, 0)
    w.board.sad.add(spec(0x5100))
    w.run_until(lambda: w.lost(), timeout=1)
    assert w.lost()[0].reason == "sad-generation-mismatch"


def test_delete_of_an_sa_the_board_lost():
    w = ready(Wire(period=10.0))
    add(w, 0x5200)
    w.board.sad.by_key.clear()   # lost without a generation change (a firmware bug)
    w.call(lambda now: w.session.sa_del(0x5200, 0, now))
    assert w.lost()[0].reason == "sa-count-mismatch"


def test_host_silence_flush_reaches_the_host():
    w = ready(Wire({"host_silence_ms": 1000}, period=0.1, misses=50))
    add(w, 0x6000)
    w.host_muted = True
    w.run(1.2)
    assert len(w.board.sad) == 0
    w.run_until(lambda: w.lost(), timeout=1)
    assert w.lost()[0].reason == "board-flushed"
    w.host_muted = False
    w.run_until(lambda: w.session.state == READY)


def test_unknown_spi_and_expiry_events_reach_the_host():
    w = ready(Wire())
    w.board.note_unknown_spi(0x7777, (b"\xc0\x00\x02\x02", 4500))
    w._push("to_host", w.board.tick(w._ms()))
    w.run(0.01)
    rep = [e for e in w.events if type(e).__name__ == "UnknownSpiReport"]
    assert rep and rep[0].entries == ((0x7777, (b"\xc0\x00\x02\x02", 4500), 1),)


def test_retryable_window_stays_inside_the_reply_cache():
    """With a tiny reply cache and heavy loss, retries must never re-execute (EXISTS)."""
    w = ready(Wire({"reply_cache": 2, "max_sas": 4096}, fault=0.02, seed=3, period=1.0, misses=5,
                   link=LinkClient(give_up=60)))
    assert w.session.link.cache_size == 1
    for i in range(150):
        w.session.sa_add(spec(0x8000 + i), w.now)
    w.pump()
    w.run_until(lambda: sum(1 for e in w.events if isinstance(e, Reply)) >= 150, timeout=900)
    assert all(m.SadReply.decode(e.body).status == m.OK for e in w.events if isinstance(e, Reply))
    assert len(w.board.sad) == 150 and not w.lost()
    assert w.board.counters["replies_from_cache"] > 10


# ---- a board that answers wrongly (tests/board_wire.py `rewrite`: the real board core's frames,
# replaced on their way to the host) ------------------------------------------------------------

def replace_replies(w, type, bodies):
    """The board's next replies of ``type`` get these bodies instead (then they pass unchanged);
    returns the list of replies seen."""
    seen = []
    bodies = list(bodies)

    def rewrite(f):
        if f.type == type and f.flags & fr.FLAG_REPLY:
            seen.append(f)
            if bodies:
                return fr.Frame(f.type, f.seq, f.flags, bodies.pop(0))
        return f
    w.rewrite = rewrite
    return seen


def test_a_hello_refused_or_undecodable_is_asked_again():
    """A HELLO answered with an error status, or with a body that does not decode (another
    firmware's HELLO), opens nothing: the session asks again with a new HELLO."""
    w = Wire()
    seen = replace_replies(w, m.HELLO, [bytes((m.INTERNAL,)), bytes((m.OK,)) + b"\x07not a hello"])
    ready(w)
    assert len(seen) == 3 and len({f.seq for f in seen}) == 3          # three HELLOs, three answers
    assert w.session.counters["bad_replies"] == 1
    assert [type(e) for e in w.events] == [BoardReady] and w.session.boot_id == w.board.boot_id


def test_an_opening_flush_refused_or_undecodable_starts_the_opening_over():
    """The board must confirm its SAD empty before the session is ready: a flush it refuses, or a
    reply that does not decode, means a new HELLO and a new flush."""
    w = Wire()
    seen = replace_replies(w, m.SA_FLUSH, [m.SadReply(m.INTERNAL).encode(), b"\x00\x01"])
    ready(w)
    assert len(seen) == 3 and w.session.counters["bad_replies"] == 1
    assert [type(e) for e in w.events] == [BoardReady] and len(w.board.sad) == 0


def test_a_hello_unanswered_while_opening_is_sent_again():
    """A board that does not answer the HELLO (absent, or hung at boot) is knocked at again after
    the request's timeout, and opens once it answers."""
    w = Wire(link=LinkClient(give_up=0.5))
    w.board_hung = True
    w.run(1.2)
    assert w.session.state != READY and w.session.link.counters["failed"] == 2
    w.board_hung = False
    ready(w)
    assert [type(e) for e in w.events] == [BoardReady]


def test_a_board_that_reboots_while_opening_is_opened_afresh():
    """A boot announcement from a new boot between HELLO and the opening flush: what the session
    learnt from the old boot's HELLO is stale — it starts over and opens the new boot, which
    no heartbeat then finds changed."""
    w = Wire()
    w.run_until(lambda: w.session.hello is not None)
    first = w.session.boot_id
    w.reset_board()                                      # before the flush is answered
    ready(w)
    assert w.session.boot_id == w.board.boot_id != first
    w.run(0.5)
    assert not w.lost() and [type(e) for e in w.events] == [BoardReady]
    assert w.events[0].boot_id == w.board.boot_id


def test_a_reboot_while_opening_on_an_authenticated_link():
    """The same on an authenticated link: the new boot cannot take the old session's flush (it
    has no session) and answers it with a HELLO that proves the reboot."""
    w = Wire(link_key=bytes(range(32)))
    w.run_until(lambda: w.session.hello is not None)
    first = w.session.boot_id
    w.reset_board()
    ready(w)
    assert w.session.boot_id == w.board.boot_id != first
    w.run(0.5)
    assert not w.lost() and [type(e) for e in w.events] == [BoardReady]


def test_bad_and_refused_heartbeat_acks_are_not_acks():
    """A heartbeat reply with an error status or an undecodable body proves nothing: counted, and
    when no good ack follows, the heartbeats are missed and the board is lost."""
    w = ready(Wire(period=0.1, misses=3))
    replace_replies(w, m.HEARTBEAT, [bytes((m.INTERNAL,)), bytes((m.OK,)) + b"\x01"] * 20)
    w.run_until(lambda: w.lost(), timeout=2)
    assert w.lost()[0].reason == "missed-heartbeats"
    assert w.session.counters["bad_replies"] >= 3


def test_a_bad_ack_between_good_ones_loses_nothing():
    w = ready(Wire(period=0.1, misses=3))
    replace_replies(w, m.HEARTBEAT, [bytes((m.OK,)) + b"\x01"])
    w.run(1.0)
    assert not w.lost() and w.session.counters["bad_replies"] == 1


def test_unknown_and_malformed_events_are_counted_and_ignored():
    """An event type the host does not know (a newer firmware's), and a known event whose body
    does not decode, change nothing."""
    w = ready(Wire())
    add(w, 0x9000)
    w.inject("to_host", fr.encode(0x4F, 1, fr.FLAG_EVENT, b"from the future"))
    w.inject("to_host", fr.encode(m.EV_FLUSHED, 2, fr.FLAG_EVENT, b"\x01"))       # too short
    w.inject("to_host", fr.encode(m.HELLO, 3, fr.FLAG_EVENT, b"\x01\x02"))        # not a HELLO
    w.run(0.5)
    assert w.session.counters["unknown_events"] == 1 and w.session.counters["bad_events"] == 2
    assert not w.lost() and w.session.books.sas == {(0x9000, 0): 0x9000}


def test_undecodable_sa_replies_keep_the_books_until_a_heartbeat_decides():
    """An SA_DEL or SA_FLUSH reply that does not decode, or a flush the board refuses, changes
    nothing in the books; the board's own count in the next ack decides."""
    w = ready(Wire(period=0.1))
    add(w, 0x9100)
    add(w, 0x9101)
    replace_replies(w, m.SA_DEL, [b"\x00"])
    ev = w.call(lambda now: w.session.sa_del(0x9100, m.DIR_IN, now))
    assert ev.body == b"\x00" and (0x9100, 0) in w.session.books.sas
    assert w.session.counters["bad_replies"] == 1
    replace_replies(w, m.SA_FLUSH, [m.SadReply(m.INTERNAL).encode()])
    w.call(lambda now: w.session.sa_flush(now))
    assert len(w.session.books.sas) == 2
    w.run_until(lambda: w.lost(), timeout=1)          # the board deleted 0x9100: its ack says 1 SA
    assert w.lost()[0].reason == "sa-count-mismatch"


def test_the_session_keeps_its_own_requests_and_a_reopen_loses_a_ready_board():
    w = ready(Wire())
    for t in (m.SA_ADD, m.SA_DEL, m.SA_FLUSH, m.HELLO, m.HEARTBEAT):
        with pytest.raises(ValueError):
            w.session.request(t, b"", w.now)
    add(w, 0x9200)
    w.session.reopen(w.now)                         # the transport was re-opened under a ready session
    w.pump()
    (lost,) = w.lost()
    assert lost.reason == "closed" and lost.sas == ((0x9200, 0),)
    ready(w)
    assert w.session.books.sas == {} and len(w.board.sad) == 0
    w.session.transport_error("gone", w.now)        # while opening: nothing more to lose
    w.session.transport_error("gone again", w.now)
    w.pump()
    assert len(w.lost()) == 2 and w.lost()[1].reason == "transport-error"
