"""Sans-I/O board session: open (HELLO, flush), heartbeat watchdog, SAD books, loss detection.

The board is "lost" — every SA the host put there is gone or untrustworthy — when:
  boot-id-changed          a heartbeat ack carries another boot id (a reset between heartbeats)
  unsolicited-hello        the board announced a boot
  missed-heartbeats        `misses` heartbeat periods in a row passed without an ack (hung board)
  sa-count-mismatch        the SA count in an ack is not the host's books
  sad-generation-mismatch  the SAD changed without the host asking
  board-flushed            the board failed closed (host silence) and said so
  request-timeout          an SA command got no answer in time (nothing acknowledged is lost)
  transport-error          the serial port or socket failed

A heartbeat is retried within its period (idempotent, never from the reply cache, so each ack
is fresh); only a whole period without an ack is a miss, so a lossy line does not raise false
alarms. Counts and generations are compared only when no SAD-changing request is in flight.

After a loss the session fails every request in flight, forgets its books, and re-opens: a new
HELLO (new session id, so stale cached replies cannot be returned), then SA_FLUSH, then
BoardReady. The daemon's flush (RFC 7296 §2.4) acts on BoardLost.

On an authenticated link (firmware/link/auth.py) a HELLO event proves a reboot only when it
echoes a frame of this session (the board answers so when it has no session): then the loss is
declared at once. A boot announcement echoes nothing and may be a replay: the session asks the
board at once (a heartbeat out of turn); a rebooted board answers that with a proof, a live one
with an ack — and a replayed announcement changes nothing.
"""
import collections
import logging
import os

from firmware.link import messages as m
from host.offload.events import (BoardFrame, BoardLost, BoardReady, Reply, SaExpired, UnknownSpiReport)
from host.offload.link import LinkClient

log = logging.getLogger("ikeoffloadd.board")

OPENING = "opening"
READY = "ready"
CLOSED = "closed"


class NotReady(RuntimeError):
    """The board is not ready for SA commands (opening after a loss, or closed)."""


class SadBooks:
    """What the host believes the board's SAD holds."""

    def __init__(self):
        self.sas = {}      # (spi, direction) -> reqid
        self.gen = 0       # SAD generation the board should report
        self.pending = 0   # SAD-changing requests not yet answered

    def reset(self, gen):
        self.sas = {}
        self.gen = gen
        self.pending = 0


class BoardSession:
    def __init__(self, name, now, *, period=0.1, misses=3, flush_on_open=True, link=None):
        self.name = name
        self.period = period
        self.misses = misses
        self.flush_on_open = flush_on_open
        self.link = link or LinkClient()
        self.books = SadBooks()
        self.state = OPENING
        self.hello = None
        self.boot_id = None
        self.missed = 0
        self.last_ack_at = None
        self.last_ack = None
        self.rtt = None
        self.next_heartbeat = None
        self.losses = 0
        self.last_loss = None
        self.counters = collections.Counter()
        self.slack_base = 0.0      # one data reply frame on the wire (the board's max frame)
        self.announced = None      # boot id of an unconfirmed boot announcement being checked
        self._hello_seq = None     # the HELLO request of this opening (one at a time)
        self._ops = {}   # seq -> (kind, arg) for requests the session must interpret
        self._events = collections.deque()
        self._open(now)

    # ---- public API -------------------------------------------------------------------------
    def sa_add(self, spec, now):
        """Install an SA; the outcome is a Reply (body: SadReply) or RequestFailed for the seq."""
        self._need_ready()
        self.books.pending += 1
        seq = self.link.request(m.SA_ADD, spec.encode(), now, reply_len=12)
        self._ops[seq] = ("sa_add", ((spec.spi, spec.direction), spec.reqid))
        return seq

    def sa_del(self, spi, direction, now):
        self._need_ready()
        self.books.pending += 1
        seq = self.link.request(m.SA_DEL, m.encode_sa_ref(spi, direction), now, reply_len=12)
        self._ops[seq] = ("sa_del", (spi, direction))
        return seq

    def sa_flush(self, now):
        self._need_ready()
        self.books.pending += 1
        seq = self.link.request(m.SA_FLUSH, b"", now, reply_len=12)
        self._ops[seq] = ("sa_flush", None)
        return seq

    def request(self, type, body, now, **kw):
        """Any other request (SA_STATS, COUNTERS, ENCRYPT, DECRYPT, RESET): Reply/RequestFailed."""
        if type in m.SAD_CHANGING or type in (m.HELLO, m.HEARTBEAT):
            raise ValueError("use the session's own methods for %s" % m.NAMES.get(type, type))
        if type != m.RESET:
            self._need_ready()
        return self.link.request(type, body, now, **kw)

    def receive(self, data, now):
        self.link.receive(data, now)
        self._drain(now)

    def data_to_send(self):
        return self.link.data_to_send()

    def get_timer(self):
        t = self.link.get_timer()
        if self.state == READY and self.next_heartbeat is not None:
            t = self.next_heartbeat if t is None else min(t, self.next_heartbeat)
        return t

    def handle_timer(self, now):
        self.link.handle_timer(now)
        self._drain(now)
        if self.state == READY and self.next_heartbeat is not None and now >= self.next_heartbeat:
            self._heartbeat(now)

    def next_event(self):
        return self._events.popleft() if self._events else None

    def transport_error(self, detail, now):
        self._lose("transport-error", detail, now)

    def reopen(self, now):
        """Start over (e.g. after the transport was re-opened)."""
        if self.state == READY:
            self._lose("closed", "reopened by the host", now)
        else:
            self.link.fail_all("reopened", now)
            self._drain(now)
            self._open(now)

    def close(self, now):
        self.link.fail_all("closed", now)
        self._drain(now)
        self.state = CLOSED

    # ---- internals --------------------------------------------------------------------------
    def _need_ready(self):
        if self.state != READY:
            raise NotReady("board %s is %s" % (self.name, self.state))

    def _open(self, now):
        self.state = OPENING
        self.hello = None
        self.next_heartbeat = None
        self.missed = 0
        self.session_id = os.urandom(8)
        self.link.cache_size = 1
        if self._hello_seq is not None:
            # one HELLO at a time: an earlier one's reply must not open a second session (on an
            # authenticated link it would make its keys the link's)
            self.link.cancel(self._hello_seq)
            self._ops.pop(self._hello_seq, None)
        seq = self._hello_seq = self.link.request(m.HELLO, m.encode_hello_request(self.session_id), now,
                                                  reply_len=120)
        log.debug("board %s: HELLO (seq %d)", self.name, seq)
        self._ops[seq] = ("hello", None)

    def heartbeat_slack(self):
        """How late a healthy board's ack may be beyond the period: the data in flight ahead of the
        heartbeat and of its ack (the board answers control between packets, so at most one
        packet's crypto, and sends control replies between frames, so at most one frame)."""
        _, cost, step = self.link.data_in_flight()
        return self.slack_base + cost + step

    def _heartbeat(self, now, probe=False):
        if not probe:
            self.next_heartbeat = max(self.next_heartbeat + self.period, now + self.period / 2)
        seq = self.link.request(m.HEARTBEAT, b"", now, idempotent=True,
                                deadline=now + self.period + self.heartbeat_slack(), reply_len=40)
        self._ops[seq] = ("probe" if probe else "heartbeat", now)
        self.counters["probes" if probe else "heartbeats"] += 1

    def _lose(self, reason, detail, now):
        if self.state != READY:
            return
        self.state = OPENING  # before failing requests: their failures must not lose it again
        self.hello = None     # ... and the events still queued must not take it for one opening
        self.announced = None
        self.losses += 1
        self.counters["lost_" + reason] += 1
        log.debug("board %s: session lost (%s: %s); opening a new one", self.name, reason, detail)
        ev = BoardLost(self.name, reason, detail, now, self.last_ack_at, tuple(sorted(self.books.sas)))
        self.last_loss = ev
        self._events.append(ev)
        self.books.reset(0)
        self.link.fail_all("board lost: " + reason, now)
        self._drain(now)
        self._open(now)

    def _drain(self, now):
        while True:
            ev = self.link.next_event()
            if ev is None:
                return
            if isinstance(ev, BoardFrame):
                self._board_event(ev, now)
                continue
            op = self._ops.pop(ev.seq, None)
            if op is None:
                self._events.append(ev)  # the user's own request
                continue
            kind, arg = op
            if isinstance(ev, Reply):
                getattr(self, "_on_" + kind)(ev, arg, now)
            else:
                self._failed(kind, ev, now)

    def _failed(self, kind, ev, now):
        if kind in ("sa_add", "sa_del", "sa_flush"):
            self.books.pending = max(0, self.books.pending - 1)
            self._events.append(ev)
            if self.state == READY:
                self._lose("request-timeout", "%s got no reply" % kind.upper(), now)
        elif kind == "probe":
            self.announced = None       # unanswered: the heartbeats in turn decide
        elif kind == "heartbeat":
            self._missed(now)
        elif kind in ("hello", "open_flush"):
            if self.state == OPENING and ev.reason == "timeout":
                self._open(now)  # board absent or dead: keep knocking

    def _missed(self, now):
        """A heartbeat period ended without an ack."""
        if self.state == READY:
            self.missed += 1
            self.counters["missed_heartbeats"] += 1
            log.info("board %s: no heartbeat ack in a period of %.0f ms (%d of %d before it counts as lost)",
                     self.name, self.period * 1000, self.missed, self.misses)
            if self.missed >= self.misses:
                self._lose("missed-heartbeats", "%d heartbeat periods of %.0f ms without an ack"
                           % (self.missed, self.period * 1000), now)

    def _on_hello(self, ev, arg, now):
        if m.status_of(ev.body) != m.OK:
            self._open(now)
            return
        try:
            hello = m.Hello.decode(ev.body[1:])
        except m.MessageError:
            self.counters["bad_replies"] += 1
            log.debug("board %s: a reply that does not decode, dropped", self.name)
            self._open(now)
            return
        self.hello = hello
        self.boot_id = hello.boot_id
        # Batched data-path replies are as large as the board's frames: decode them.
        self.link.set_max_frame(max(hello.max_frame, 64))
        self.slack_base = hello.max_frame * self.link.byte_time
        # Retryable requests in flight stay within the board's reply cache (exactly-once).
        self.link.cache_size = max(1, hello.reply_cache // 2)
        if self.flush_on_open:
            seq = self.link.request(m.SA_FLUSH, b"", now, reply_len=12)
            self._ops[seq] = ("open_flush", None)
        else:
            self._ready(None, now)

    def _on_open_flush(self, ev, arg, now):
        try:
            r = m.SadReply.decode(ev.body)
        except m.MessageError:
            self.counters["bad_replies"] += 1
            log.debug("board %s: a reply that does not decode, dropped", self.name)
            self._open(now)
            return
        if r.status != m.OK:
            self._open(now)
            return
        self._ready(r, now)

    def _ready(self, flush_reply, now):
        self.books.reset(flush_reply.sad_gen if flush_reply else 0)
        if flush_reply is None:
            self.books.gen = None  # unknown until the first ack
        self.state = READY
        self.missed = 0
        self.last_ack_at = now
        self.next_heartbeat = now
        log.debug("board %s: session open (boot %s), SAD flushed: %s", self.name,
                  self.boot_id.hex() if self.boot_id else "-", "yes" if flush_reply else "no")
        self._events.append(BoardReady(self.name, self.boot_id, self.hello, now))

    def _on_probe(self, ev, sent_at, now):
        if self.state == READY and self.announced is not None:
            self.counters["boot_hellos_refuted"] += 1     # the board still has this session
            log.info("board %s: a boot announcement the board refuted (its session lives on): a replayed frame?",
                     self.name)
        self.announced = None
        self._on_heartbeat(ev, sent_at, now, probe=True)

    def _on_heartbeat(self, ev, sent_at, now, probe=False):
        if self.state != READY:
            return
        try:
            if m.status_of(ev.body) != m.OK:
                raise m.MessageError("status")
            ack = m.HeartbeatAck.decode(ev.body[1:])
        except m.MessageError:
            # a refusal or an ack that does not decode is no ack: the period passed without
            # one (a board that answers every heartbeat so is not working)
            self.counters["bad_replies"] += 1
            log.debug("board %s: a heartbeat reply that is no ack (refused or not decodable)", self.name)
            if not probe:
                self._missed(now)
            return
        self.missed = 0
        self.last_ack_at = now
        self.last_ack = ack
        if ev.rtt is not None:
            self.rtt = ev.rtt
        if ack.boot_id != self.boot_id:
            self._lose("boot-id-changed", "boot id %s -> %s" % (self.boot_id.hex(), ack.boot_id.hex()), now)
            return
        b = self.books
        if b.gen is None:
            b.gen = ack.sad_gen
        if b.pending:
            return
        if ack.sa_count != len(b.sas):
            self._lose("sa-count-mismatch", "board has %d SAs, host books %d" % (ack.sa_count, len(b.sas)), now)
        elif ack.sad_gen != b.gen:
            self._lose("sad-generation-mismatch", "board SAD generation %d, host books %d"
                       % (ack.sad_gen, b.gen), now)

    def _sad_reply(self, ev):
        self.books.pending = max(0, self.books.pending - 1)
        try:
            r = m.SadReply.decode(ev.body)
        except m.MessageError:
            self.counters["bad_replies"] += 1
            log.debug("board %s: a reply that does not decode, dropped", self.name)
            return None
        if r.status == m.OK and (self.books.gen is None or r.sad_gen > self.books.gen):
            self.books.gen = r.sad_gen
        return r

    def _on_sa_add(self, ev, arg, now):
        r = self._sad_reply(ev)
        key, reqid = arg
        if r is not None and r.status == m.OK:
            self.books.sas[key] = reqid
        self._events.append(ev)

    def _on_sa_del(self, ev, key, now):
        r = self._sad_reply(ev)
        self._events.append(ev)
        if r is None:
            return
        if r.status == m.OK:
            self.books.sas.pop(key, None)
        elif r.status == m.NOT_FOUND and key in self.books.sas:
            self._lose("sa-count-mismatch", "SA 0x%08x/%d missing on the board" % key, now)

    def _on_sa_flush(self, ev, arg, now):
        r = self._sad_reply(ev)
        if r is not None and r.status == m.OK:
            self.books.sas = {}
        self._events.append(ev)

    def _board_event(self, f, now):
        try:
            if f.type == m.HELLO:
                hello = m.Hello.decode(f.body)
                if f.proof is False:
                    # authentic but maybe replayed: ask the board now (a real reboot answers
                    # with a proof, below)
                    self.counters["boot_hellos_unconfirmed"] += 1
                    if self.state == READY and self.announced is None:
                        self.announced = hello.boot_id
                        self._heartbeat(now, probe=True)
                    return
                if self.state == READY:
                    if f.proof and hello.boot_id != self.announced:
                        self._lose("boot-id-changed", "the board answered with boot %s (reset cause %d): it "
                                   "lost this session" % (hello.boot_id.hex(), hello.reset_cause), now)
                    else:
                        self._lose("unsolicited-hello", "board announced boot %s (reset cause %d)"
                                   % (hello.boot_id.hex(), hello.reset_cause), now)
                elif self.state == OPENING and hello.boot_id != self.boot_id and self.hello is not None:
                    self.link.fail_all("board rebooted while opening", now)
                    self._drain(now)
                    self._open(now)
            elif f.type == m.EV_FLUSHED:
                fl = m.Flushed.decode(f.body)
                self._lose("board-flushed", "board flushed %d SAs (reason %d)" % (fl.removed, fl.reason), now)
            elif f.type == m.EV_UNKNOWN_SPI:
                u = m.UnknownSpi.decode(f.body)
                self._events.append(UnknownSpiReport(self.name, tuple(u.entries), u.suppressed, now))
            elif f.type == m.EV_SA_EXPIRE:
                x = m.SaExpire.decode(f.body)
                self._events.append(SaExpired(self.name, x.spi, x.direction, x.hard, x.reason, x.reqid, now))
            else:
                self.counters["unknown_events"] += 1
        except m.MessageError:
            self.counters["bad_events"] += 1
