"""Link security end to end: the host's BoardSession and link client against the real board core
over a simulated wire (tests/board_wire.py), an attacker on that wire (docs/link-protocol.md,
"Link security")."""
import os

import pytest

from firmware import board as bd
from firmware.link import auth as la
from firmware.link import cobs
from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.events import Reply
from host.offload.session import READY
from tests.board_wire import Wire

KEY = bytes(range(100, 132))
ENCR = bytes(range(200, 220))
INTEG = bytes(range(1, 33))


def ready(w):
    w.run_until(lambda: w.session.state == READY)
    return w


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_CBC, ENCR[:16], m.AUTH_HMAC_SHA2_256_128, INTEG, reqid=spi & 0xFFFF)


def add(w, spi, d=m.DIR_IN):
    ev = w.call(lambda now: w.session.sa_add(spec(spi, d), now))
    assert isinstance(ev, Reply), ev
    return m.SadReply.decode(ev.body)


def frames_of(data):
    return [cobs.decode(b) for b in bytes(data).split(b"\x00") if b]


def sealed_frames(data, type=None):
    """The wire frames (with delimiters) in `data` of one type, as an attacker cuts them out."""
    out = []
    for block in bytes(data).split(b"\x00"):
        if block:
            raw = cobs.decode(block)
            if type is None or raw[1] == type:
                out.append(b"\x00" + block + b"\x00")
    return out


def test_a_sniffed_sa_add_does_not_hold_the_keys():
    w = ready(Wire(link_key=KEY))
    assert add(w, 0x1000).status == m.OK
    seen = bytes(w.sniffed["to_board"])
    decoded = b"".join(frames_of(seen))
    for k in (ENCR[:16], INTEG):
        for part in (k[:6], k[6:12], k[-6:]):
            assert part not in seen and part not in decoded
    assert w.board.sad.get(0x1000, m.DIR_IN).spec.integ_key == INTEG
    o = ready(Wire())                                         # an open link shows them: the check can fail
    add(o, 0x1000)
    assert INTEG[:6] in b"".join(frames_of(o.sniffed["to_board"]))


def test_forged_hello_reset_and_sa_add_change_nothing_and_are_counted():
    w = ready(Wire(link_key=KEY))
    add(w, 0x1000)
    boot, gen = w.board.boot_id, w.board.sad.gen
    forger = la.Sealer(os.urandom(32))
    forger.next = 1 << 30
    other = bd.Board({"link_key": os.urandom(32)}, 0)         # a board made with another key says HELLO
    to_board = [fr.encode(m.RESET, 1, 0, b""), fr.encode(m.SA_ADD, 2, 0, spec(0x2000).encode()),
                forger.seal(m.RESET, 3, 0, b"")[0], forger.seal(m.SA_FLUSH, 4, 0, b"")[0],
                forger.seal(m.HELLO, 5, 0, m.encode_hello_request(b"attacker") + bytes(16))[0]]
    to_host = [other.tick(0), fr.encode(m.HELLO, 1, fr.FLAG_EVENT, other.hello().encode()),
               forger.seal(m.EV_FLUSHED, 9, fr.FLAG_EVENT, m.Flushed(1, 1, 1).encode())[0]]
    for data in to_board:
        w.inject("to_board", data)
    for data in to_host:
        w.inject("to_host", data)
    w.run(1.0)
    assert not w.lost() and w.session.state == READY
    assert (w.board.boot_id, w.board.sad.gen, len(w.board.sad)) == (boot, gen, 1)
    assert w.board.decoder.counters["unauthenticated"] == 2 and w.board.auth.counters["auth_bad_tag"] == 3
    link = w.session.link
    assert link.decoder.counters["unauthenticated"] == 1 and link.auth.counters["auth_bad_tag"] == 2
    assert w.session.last_ack.link_errors == 5                # the board reports what it dropped


def test_a_replayed_authentic_frame_is_refused():
    w = ready(Wire(link_key=KEY))
    add(w, 0x1000)
    w.call(lambda now: w.session.sa_del(0x1000, m.DIR_IN, now))
    sa_del = sealed_frames(w.sniffed["to_board"], m.SA_DEL)[-1]
    add(w, 0x1000)
    w.run(0.5)
    acks = sealed_frames(w.sniffed["to_host"], m.HEARTBEAT)
    assert len(acks) >= 3
    gen = w.board.sad.gen
    w.inject("to_board", sa_del)                              # would delete the SA again
    for a in acks[:3]:
        w.inject("to_host", a)                                # old acks (with an older generation)
    w.run(1.0)
    assert not w.lost() and w.board.sad.gen == gen and w.board.sad.get(0x1000, m.DIR_IN) is not None
    assert w.board.auth.counters["auth_replayed"] == 1
    assert w.session.link.auth.counters["auth_replayed"] == 3


def test_a_replayed_boot_hello_is_checked_and_changes_nothing():
    w = Wire(link_key=KEY)
    boot = sealed_frames(w.sniffed["to_host"], m.HELLO)[0]   # the board's HELLO at boot, recorded
    ready(w)
    add(w, 0x1000)
    w.inject("to_host", boot)
    w.run(1.0)
    assert not w.lost() and len(w.board.sad) == 1
    c = w.session.counters
    assert c["boot_hellos_unconfirmed"] == 2 and c["probes"] == 1 and c["boot_hellos_refuted"] == 1


def test_a_replayed_hello_request_leaves_the_session_alone():
    w = ready(Wire(link_key=KEY))
    add(w, 0x1000)
    hello = sealed_frames(w.sniffed["to_board"], m.HELLO)[0]
    w.inject("to_board", hello)
    w.run(1.0)
    assert not w.lost() and len(w.board.sad) == 1 and w.board.auth.pending is not None
    assert add(w, 0x1001).status == m.OK and w.board.auth.counters["auth_sessions"] == 1


def test_a_reset_board_is_seen_at_once_and_a_quiet_one_at_the_next_heartbeat():
    w = ready(Wire(link_key=KEY, latency=0.001))
    add(w, 0x1000)
    w.run(0.05)
    t0 = w.now
    w.reset_board()
    w.run_until(lambda: w.lost())
    lost = w.lost()[-1]
    assert lost.reason == "unsolicited-hello" and lost.at - t0 <= 0.0045   # the HELLO and one round trip
    ready(w)
    add(w, 0x1001)
    w.run(0.03)
    t0 = w.now
    w.reset_board(quiet=True)
    w.run_until(lambda: len(w.lost()) == 2)
    lost = w.lost()[-1]
    assert lost.reason == "boot-id-changed" and lost.at - t0 <= w.session.period + 0.005
    ready(w)


@pytest.mark.parametrize("seed", [1, 2])
def test_exactly_once_under_byte_faults_with_link_security(seed):
    """SA_ADD/SA_DEL with 1% of bytes dropped or flipped both ways on an authenticated link: each
    retry is sealed afresh and answered from the reply cache; the books equal the SAD."""
    w = ready(Wire({"max_sas": 512, "reply_cache": 8}, fault=0.01, seed=seed, period=0.5, misses=3, link_key=KEY))
    live, outstanding, n, spi = [], {}, 0, 0x10000
    while n < 3000 or outstanding:
        while n < 3000 and len(outstanding) < 8:
            if len(live) < 100 and (len(live) < 20 or w.rng.random() < 0.5):
                spi += 1
                outstanding[w.session.sa_add(spec(spi), w.now)] = ("add", spi)
            else:
                victim = live.pop(w.rng.randrange(len(live)))
                outstanding[w.session.sa_del(victim, m.DIR_IN, w.now)] = ("del", victim)
            n += 1
        w.pump()
        w.step(w.now + 1.0)
        for ev in list(w.events):
            op = outstanding.pop(getattr(ev, "seq", None), None)
            if op is None:
                continue
            w.events.remove(ev)
            assert isinstance(ev, Reply), ev
            assert m.SadReply.decode(ev.body).status == m.OK, (op, m.SadReply.decode(ev.body))
            if op[0] == "add":
                live.append(op[1])
    assert not w.lost()
    assert set(w.session.books.sas) == {(s, 0) for s in live} == {(r.spec.spi, 0) for r in w.board.sad.records()}
    assert w.session.link.counters["retries"] > 0 and w.board.counters["replies_from_cache"] > 0


def test_a_rebooted_board_answering_several_frames_is_one_loss_and_one_opening():
    """A rebooted board answers every frame of the old session it reads with a proof; a burst of
    them (frames queued while it booted) makes one loss, one HELLO, one session, one BoardReady."""
    w = ready(Wire(link_key=KEY))
    add(w, 0x1000)
    w.reset_board(quiet=True)
    for _ in range(4):
        w.session.request(m.COUNTERS, b"", w.now, idempotent=True)
    w.pump()
    w.run(1.0)
    kinds = [type(e).__name__ for e in w.events if type(e).__name__ in ("BoardLost", "BoardReady")]
    assert kinds == ["BoardReady", "BoardLost", "BoardReady"], kinds
    assert w.session.link.auth.counters["auth_sessions"] == 2 and w.board.auth.counters["auth_sessions"] == 1
