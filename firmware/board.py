"""Sans-I/O board core: feed(bytes, now_ms) -> bytes; tick(now_ms) -> bytes.

The same core runs in the simulator (CPython, firmware/sim.py) and on MicroPython boards
(firmware/main.py); ports only move bytes and read the clock.

Rules it keeps:
- HELLO is announced at boot with a random boot id, so a reset is visible to the host.
- A corrupt frame is dropped and counted, never acted on (firmware/link/frame.py).
- A repeated request seq is answered from the reply cache, so a retried SA_ADD is applied
  once. Data-path requests (FLAG_NOCACHE) are never retried and not cached.
- Fail closed: when the host has been silent for longer than the profile's
  host_silence_ms, the SAD is flushed and a FLUSHED event sent (RFC 7296 §2.4: no SA may
  outlive the processor that keeps its peer's state in step).
- UNKNOWN_SPI events are aggregated and rate limited by a token bucket, so an ESP flood
  with random SPIs cannot saturate the link.
- Control before data: ENCRYPT/DECRYPT requests are queued (at most `data_queue` frames; more
  are refused at once with BUSY) and worked on by work(now, limit) a few packets at a time, so a
  port that calls work() between looks at the link answers a heartbeat or an SA command within
  one packet's crypto, however much data waits. A transform too slow for that (ChaCha20-Poly1305
  in Python: SaRecord.sliced) is worked on in slices of a packet, one per unit of work().
  Control replies and events leave before data replies. A small data frame (the host's frames
  of pings, ACKs and the like) goes ahead of the bulk frames not yet started, and has room
  beyond `data_queue`; its reply goes ahead of bulk replies not yet sent. feed() itself works
  off `work_budget` packets (None: everything queued). A port that can tell when its line is
  free sets `hold_data` and sends data replies one at a time with next_data(), so a control
  reply or a small data reply never waits behind more than the one frame on the line.
- Link security (firmware/link/auth.py), when the profile gives a link key: every frame is
  authenticated, frames that are not are dropped and counted, and only frames of the host's
  session count as the host being there. Frames are sealed (given their auth sequence number)
  when they leave: control frames as they are made, data replies when they are put on the line
  (next_data(), tick()), so sequence numbers rise in the order the host receives them whatever
  the control-before-data reordering. The reply cache keeps replies unsealed for that reason.
"""
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.sad import Sad, SaRecord

FW_VERSION = "0.1.0"

DEFAULT_PROFILE = {
    "board_id": "sim",
    "max_sas": 64,
    "max_frame": 4096,
    "max_batch": 32,
    "host_silence_ms": 3000,
    "reply_cache": 32,
    "unknown_spi_rate": 10,     # events per second
    "unknown_spi_burst": 5,
    "data_queue": 4,            # ENCRYPT/DECRYPT frames queued on the board; more get BUSY
    "hello_rate": 20,           # HELLO requests a second (each derives a session's keys)...
    "hello_burst": 8,
    "answer_rate": 10,          # ... and "no session" answers (HELLO events echoing a tag)
    "answer_burst": 4,
}


_INTERNAL = bytes((m.INTERNAL,))     # made at import: answering a full heap must not need one


def profile_value(profile, key):
    v = profile.get(key)
    return DEFAULT_PROFILE[key] if v is None else v


class TokenBucket:
    """Rate limiter: `rate` tokens per second, at most `burst` banked (times in ms)."""

    def __init__(self, rate, burst, now):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now):
        dt = now - self.at
        if dt > 0:
            self.tokens = min(self.burst, self.tokens + dt * self.rate / 1000)
            self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def ready_at(self):
        """Earliest time (ms) at which take() can succeed."""
        if self.tokens >= 1 or self.rate <= 0:
            return self.at
        return self.at + int((1 - self.tokens) * 1000 / self.rate) + 1


class ReplyCache:
    """The last few replies by request seq (RFC-style at-most-once execution for retries), kept
    as unsealed frames (type, seq, flags, body, session): a retry's answer is sealed afresh."""

    def __init__(self, size):
        self.size = size
        self.replies = {}
        self.order = []

    def get(self, seq, type):
        hit = self.replies.get(seq)
        if hit is not None and hit[0] == type:
            return hit[1]
        return None

    def put(self, seq, type, item):
        if seq not in self.replies:
            self.order.append(seq)
            if len(self.order) > self.size:
                del self.replies[self.order.pop(0)]
        self.replies[seq] = (type, item)

    def clear(self):
        self.replies = {}
        self.order = []


SMALL_FRAME = 600      # bytes of request body: a data frame of small packets, worked on first
SMALL_QUEUE = 4        # such frames queued beyond `data_queue`


class _DataJob:
    """An ENCRYPT or DECRYPT request being worked on: the packets, how far, the results."""

    def __init__(self, f, items, room):
        self.type = f.type
        self.seq = f.seq
        self.flags = f.flags
        self.items = items
        self.k = 0
        self.pend = None        # (SA, SPI) of items[k] while it is worked on in slices
        self.out = []
        self.room = room
        self.small = len(f.body) <= SMALL_FRAME


class Board:
    def __init__(self, profile=None, now=0, random_bytes=None, reset_cause=m.RESET_POWER_ON,
                 sa_factory=None, transforms=None, features=0):
        """profile: dict (board.json / boards/*.toml [board] table); now: ms; random_bytes(n)."""
        self.profile = profile or {}
        p = self.profile
        if random_bytes is None:
            from firmware.rand import urandom as random_bytes
        self.random_bytes = random_bytes
        self.boot_id = bytes(random_bytes(8))
        self.reset_cause = reset_cause
        self.boot_ms = now
        self.last_host_ms = now
        self.max_frame = profile_value(p, "max_frame")
        self.max_batch = profile_value(p, "max_batch")
        self.host_silence_ms = profile_value(p, "host_silence_ms")
        self.sad = Sad(profile_value(p, "max_sas"), sa_factory or SaRecord)
        key = p.get("link_key")
        self.auth = la.BoardAuth(key, random_bytes) if key else None
        self.overhead = fr.MIN_FRAME + (fr.AUTH_LEN if key else 0)   # decoded bytes a frame adds to its body
        self.decoder = fr.FrameDecoder(self.max_frame, auth=bool(key))
        if key:
            features |= m.FEAT_LINK_AUTH
            self._hello_bucket = TokenBucket(profile_value(p, "hello_rate"), profile_value(p, "hello_burst"), now)
            self._answer_bucket = TokenBucket(profile_value(p, "answer_rate"), profile_value(p, "answer_burst"), now)
        self._hello_sess = None        # the pending session a HELLO reply is sealed in
        self._hello_nonce = None
        self.cache = ReplyCache(profile_value(p, "reply_cache"))
        self.session = None
        self.transforms = transforms or []
        self.features = features
        self.event_seq = 0
        self.flushes = 0
        self.out = bytearray()         # control replies and events: they leave first
        self.data_out = []             # [(small, unsealed reply)]: data replies, small ones first
        self.hold_data = False         # True: tick() leaves data replies for next_data()
        self.data_queue = []           # _DataJob, oldest first
        self.max_data_queue = profile_value(p, "data_queue")
        self.work_budget = None        # packets feed() works off (None: all); ports set it
        self.on_packet = None          # on_packet(sa, nbytes) after each packet (the sim's CPU model)
        self.reset_requested = False
        self._raw = self._wire = None  # preallocate(): the buffers a data reply is sealed in
        self.counters = {"requests": 0, "replies_from_cache": 0, "bad_requests": 0,
                         "unknown_types": 0, "events": 0, "unknown_spi_packets": 0,
                         "unknown_spi_suppressed": 0, "host_silence_flushes": 0,
                         "nat_keepalives": 0, "non_esp": 0, "encap_mismatch": 0, "data_busy": 0,
                         "data_frames": 0, "data_packets": 0, "memory_errors": 0, "internal_errors": 0}
        self._unknown = {}       # (spi, src) -> packets, waiting for the next UNKNOWN_SPI event
        self._unknown_suppressed = 0
        # entries that fit one event frame (spi 4, IPv6 address 19, count 4)
        self._unknown_max = max(1, min(m.UnknownSpi.MAX_ENTRIES, (self.max_frame - self.overhead - 5) // 27))
        self._unknown_bucket = TokenBucket(profile_value(p, "unknown_spi_rate"),
                                           profile_value(p, "unknown_spi_burst"), now)
        self.out += b"\x00"  # flush whatever a half-sent frame left in the host's decoder
        self._hello_event(la.ZERO_ECHO)

    # ---- public verbs ---------------------------------------------------------------------
    def feed(self, data, now):
        """Bytes from the host; returns bytes to send back: control replies and events first,
        then the data replies that `work_budget` packets of work completed."""
        d = self.decoder
        for f in (d.frames(data) if d.views else d.feed(data)):
            if self.auth is not None:
                f = self._open(f, now)
                if f is None:
                    continue
            if not getattr(f, "boot", False):
                self.last_host_ms = now        # (a HELLO request may be a replay: not the host's sign of life)
            if f.type in m.DATA_TYPES and not f.flags & (fr.FLAG_REPLY | fr.FLAG_EVENT):
                self._queue_data(f, now)
            else:
                self._request(f, now)
        if self.data_queue:
            self._work(self.work_budget)
        return self.tick(now)

    def preallocate(self):
        """For a board's main loop: frames are decoded into buffers made now and handed on as
        views (fr.FrameDecoder `views`), and next_data() seals a data reply (CRC, COBS) into one
        made now and returns a memoryview of it, valid until the next call into the board: the
        port copies it. Nothing of a frame's size is allocated per frame then but the reply's
        body; on CPython the bytes-building versions are the faster ones (C COBS)."""
        d = self.decoder
        self.decoder = fr.FrameDecoder(self.max_frame, auth=d.auth, views=True)
        self.decoder.counters = d.counters
        # a data reply is built in the decoder's buffer: next_data() runs between feed()s, when
        # no decoded frame is in use (data requests keep copies of their packets)
        self._raw = self.decoder.raw_buffer()
        self._wire = bytearray(fr.max_wire_len(self.max_frame) + 2)

    def busy(self):
        """True while data requests wait for work()."""
        return bool(self.data_queue)

    def work(self, now, limit=1):
        """Work off up to `limit` packets of queued data requests (None: all); returns bytes to
        send (any control output first, then the data replies completed)."""
        self._work(limit)
        return self.tick(now)

    def tick(self, now):
        """Timers: host-silence flush, pending events. Returns bytes to send."""
        if self.host_silence_ms and now - self.last_host_ms > self.host_silence_ms and len(self.sad):
            removed = self.sad.flush()
            self.flushes += 1
            self.counters["host_silence_flushes"] += 1
            self._event(m.EV_FLUSHED, m.Flushed(m.FLUSH_HOST_SILENCE, removed, self.sad.gen).encode())
        if self._unknown and self._unknown_bucket.take(now):
            self._emit_unknown_spi()
        out = self.out
        if self.data_out and not self.hold_data:
            for _, item in self.data_out:
                wire = self._seal(item)
                if wire:
                    out += wire
            self.data_out = []
        if out:
            self.out = bytearray()
            return bytes(out)
        return b""

    def next_deadline(self):
        """Earliest ms at which tick() has work, or None: lets a port sleep."""
        t = None
        if self.host_silence_ms and len(self.sad):
            t = self.last_host_ms + self.host_silence_ms + 1
        if self._unknown:
            u = self._unknown_bucket.ready_at()
            t = u if t is None or u < t else t
        return t

    def hello(self):
        return m.Hello(self.boot_id, self.profile.get("board_id", "sim"), FW_VERSION, self.reset_cause,
                       self.sad.max_sas, self.max_frame, self.max_batch, self.host_silence_ms,
                       self.features, self.transforms, self.cache.size)

    def uptime(self, now):
        return now - self.boot_ms

    def note_unknown_spi(self, spi, src):
        """The ESP path saw a packet for an SPI we do not have (RFC 4303 §3.4.2; the host may
        answer INVALID_SPI, RFC 7296 §2.21.1). Aggregated per (SPI, source) until the token
        bucket lets the next UNKNOWN_SPI event out; beyond the entries one event can carry,
        packets are only counted (`suppressed`). Memory and link use stay bounded whatever
        the flood."""
        self.counters["unknown_spi_packets"] += 1
        key = (spi, src)
        n = self._unknown.get(key)
        if n is not None:
            self._unknown[key] = n + 1
        elif len(self._unknown) < self._unknown_max:
            self._unknown[key] = 1
        else:
            self._unknown_suppressed += 1
            self.counters["unknown_spi_suppressed"] += 1

    def link_errors(self):
        """Frames dropped by the link: broken, or (authenticated link) not authentic."""
        return self.decoder.dropped() + (self.auth.dropped() if self.auth is not None else 0)

    # ---- internals ------------------------------------------------------------------------
    def _seal(self, item):
        """Wire bytes of an unsealed frame (type, seq, flags, body, session) — None when the
        authenticated link has no session to seal it in (dropped, counted)."""
        type, seq, flags, body, sess = item
        if self.auth is None:
            return fr.encode(type, seq, flags, body)
        return self.auth.seal(type, seq, flags, body, sess)

    def _seal_into(self, item, dst, raw):
        """_seal() into dst from offset 0, the frame built in raw; the offset after the wire
        bytes, or None (no session: dropped, counted)."""
        type, seq, flags, body, sess = item
        if self.auth is None:
            return fr.encode_into(dst, 0, type, seq, flags, body, raw)
        return self.auth.seal_into(dst, 0, raw, type, seq, flags, body, sess)

    def _send(self, type, seq, flags, body, sess=None):
        wire = self._seal((type, seq, flags, body, sess))
        if wire:
            self.out += wire
        return wire

    def _event(self, type, body, sess=None):
        self.counters["events"] += 1
        self.event_seq = (self.event_seq + 1) & 0xFFFF
        self._send(type, self.event_seq, fr.FLAG_EVENT, body, sess)

    def _hello_event(self, echo):
        """The HELLO event: at boot (echo zeros), and on an authenticated link without a session
        the answer to a frame it could not verify (echo: that frame's tag), under the boot key."""
        if self.auth is None:
            self._event(m.HELLO, self.hello().encode())
        else:
            self._event(m.HELLO, echo + self.hello().encode(), la.BOOT)

    def _open(self, f, now):
        """An authenticated frame's checks (firmware/link/auth.py); None: dropped, counted."""
        a = self.auth
        g = a.open(f)
        if a.promoted:
            a.promoted = False
            self.cache.clear()             # a new host session: its seqs must not hit old replies
        if g is None:
            if a.answer is not None:
                echo, a.answer = a.answer, None
                if self._answer_bucket.take(now):
                    a.counters["auth_answers"] += 1
                    self._hello_event(echo)
                else:
                    a.counters["auth_answers_limited"] += 1
            return None
        if g.boot:
            if not self._hello_bucket.take(now):
                a.counters["auth_hello_limited"] += 1
                return None
            self._hello_nonce = g.nonce
        return g

    def _emit_unknown_spi(self):
        entries = [(k[0], k[1], n) for k, n in self._unknown.items()]
        ev = m.UnknownSpi(entries, self._unknown_suppressed)
        self._unknown = {}
        self._unknown_suppressed = 0
        self._event(m.EV_UNKNOWN_SPI, ev.encode())

    def _request(self, f, now):
        if f.flags & (fr.FLAG_REPLY | fr.FLAG_EVENT):
            self.counters["bad_requests"] += 1
            return
        self.counters["requests"] += 1
        nocache = f.flags & fr.FLAG_NOCACHE
        if not nocache:
            item = self.cache.get(f.seq, f.type)
            if item is not None:
                self.counters["replies_from_cache"] += 1
                self.out += self._seal(item) or b""
                return
        handler = HANDLERS.get(f.type)
        if handler is None:
            self.counters["unknown_types"] += 1
            body = bytes((m.UNSUPPORTED,))
        else:
            try:
                body = handler(self, f.body, now)
            except m.UnsupportedAttribute:
                self.counters["bad_requests"] += 1
                body = bytes((m.UNSUPPORTED,))
            except m.MessageError:
                self.counters["bad_requests"] += 1
                body = bytes((m.BAD_REQUEST,))
            except Exception as e:
                # MemoryError (a full heap: the garbage of the failed request is collectable
                # now) or a bug: the request fails, the board and its SAD stay. INTERNAL is not
                # cached, so a retry runs the request again. Should a request fail after it
                # changed the SAD (its reply could not be built), the next heartbeat shows the
                # host a SAD its books do not match, and the host flushes the board.
                self._failed(e)
                body = _INTERNAL
        self._reply(f, body, self.out)

    def _failed(self, e):
        self.counters["memory_errors" if isinstance(e, MemoryError) else "internal_errors"] += 1

    def _reply(self, f, body, out=None):
        """Answer request `f`: sealed onto `out`, or (out None) returned unsealed."""
        nocache = f.flags & fr.FLAG_NOCACHE
        if len(body) + self.overhead > self.max_frame:
            body = bytes((m.TOO_BIG,))
        sess = None
        if self.auth is not None and f.type == m.HELLO:
            # the HELLO reply: Nb first, under the session it starts; never cached (a retried
            # HELLO with the same nonce finds the same pending session)
            sess, self._hello_sess = self._hello_sess, None
            if sess is None:
                return None
            body = sess.nb + body
            nocache = fr.FLAG_NOCACHE
        item = (f.type, f.seq, fr.FLAG_REPLY | (f.flags & fr.FLAG_NOCACHE), body, sess)
        if not nocache and body is not _INTERNAL:
            self.cache.put(f.seq, f.type, item)
        if out is None:
            return item
        wire = self._seal(item)
        if wire:
            out += wire
        return item

    # ---- the data path: queued, worked on a packet at a time -------------------------------
    def _queue_data(self, f, now):
        self.counters["requests"] += 1
        if not f.flags & fr.FLAG_NOCACHE:
            item = self.cache.get(f.seq, f.type)
            if item is not None:
                self.counters["replies_from_cache"] += 1
                self.out += self._seal(item) or b""
                return
        q = self.data_queue
        small = len(f.body) <= SMALL_FRAME
        if len(q) >= self.max_data_queue + (SMALL_QUEUE if small else 0):
            self.counters["data_busy"] += 1
            self._reply(f, bytes((m.BUSY,)), self.out)
            return
        try:
            if f.type == m.ENCRYPT:
                items = m.decode_encrypt_request(f.body, self.max_batch)
            else:
                items = m.decode_decrypt_request(f.body, self.max_batch)
        except m.MessageError:
            self.counters["bad_requests"] += 1
            self._reply(f, bytes((m.BAD_REQUEST,)), self.out)
            return
        self.counters["data_frames"] += 1
        job = _DataJob(f, items, self._reply_room())
        if small:
            i = 0       # behind the started job and the small ones, ahead of waiting bulk
            while i < len(q) and (q[i].small or q[i].k or q[i].pend):
                i += 1
            q.insert(i, job)
        else:
            q.append(job)

    def _work(self, limit):
        """Up to `limit` units of data work (None: all): a unit is a packet, a slice of a packet
        (sliced SAs), or building and sealing the reply of a job whose packets are done — a unit
        of its own, so that a loop turn never pays for a frame's last packet and its reply (a
        few ms each on an RP2040, more when the heap is collected on the way)."""
        q = self.data_queue
        while q and (limit is None or limit > 0):
            job = q[0]
            if job.k >= len(job.items):
                try:
                    if job.type == m.ENCRYPT:
                        body = m.encode_encrypt_reply(job.out)
                    else:
                        body = m.encode_decrypt_reply(job.out)
                except Exception as e:
                    self._failed(e)
                    body = _INTERNAL
                self._finish(job, body)
                if limit is not None:
                    limit -= 1
                continue
            step = self._encrypt_step if job.type == m.ENCRYPT else self._decrypt_step
            try:
                n = step(job, limit)
            except Exception as e:
                # as for a control request: this data request fails (INTERNAL), the board stays
                self._failed(e)
                self._finish(job, _INTERNAL)
                n = 1
            if limit is not None:
                limit -= max(1, n)

    def _finish(self, job, body):
        self.data_queue.pop(0)
        job.out = None
        self.queue_data_reply(job.small, self._reply(job, body))

    def queue_data_reply(self, small, item):
        """A data reply to send (unsealed: it is sealed when it leaves): small ones go ahead of
        bulk ones not yet sent."""
        q = self.data_out
        i = len(q)
        if small:
            i = 0
            while i < len(q) and q[i][0]:
                i += 1
        q.insert(i, (small, item))

    def next_data(self):
        """The next data reply to put on the line (hold_data ports), sealed now, or None. After
        preallocate() a memoryview of the board's buffer (valid until the next call into it)."""
        while self.data_out:
            item = self.data_out.pop(0)[1]
            if self._wire is None:
                wire = self._seal(item)
                if wire:
                    return wire
                continue
            end = self._seal_into(item, self._wire, self._raw)
            if end is not None:
                return memoryview(self._wire)[0:end]
        return None

    def pending_data(self):
        """The data replies not yet on the line, as wire bytes (tests and status; seals them)."""
        out = bytearray()
        while True:
            w = self.next_data()
            if w is None:
                return bytes(out)
            out += w

    def _packet(self, rec, n):
        self.counters["data_packets"] += 1
        if self.on_packet is not None:
            self.on_packet(rec, n)

    def _hello(self, body, now):
        session = m.decode_hello_request(body)
        if self.auth is not None:
            # the session id means nothing here: a session starts when a frame verifies under
            # its keys (firmware/link/auth.py), which then empties the reply cache
            self._hello_sess = self.auth.start(self._hello_nonce)
            return bytes((m.OK,)) + self.hello().encode()
        if session != self.session:
            # A new host session: seqs from an earlier session must not hit old replies.
            self.session = session
            self.cache.clear()
        return bytes((m.OK,)) + self.hello().encode()

    def _heartbeat(self, body, now):
        if body:
            raise m.MessageError("heartbeat has no body")
        ack = m.HeartbeatAck(self.boot_id, self.uptime(now), len(self.sad), self.sad.gen,
                             self.flushes, self.link_errors())
        return bytes((m.OK,)) + ack.encode()

    def _sad_reply(self, status, removed=0):
        return m.SadReply(status, self.sad.gen, len(self.sad), removed).encode()

    def _sa_add(self, body, now):
        st = self.sad.add(m.SaSpec.decode(body))
        self._count_sad("sa_add", st)
        return self._sad_reply(st)

    def _sa_del(self, body, now):
        spi, direction = m.decode_sa_ref(body)
        st = self.sad.delete(spi, direction)
        self._count_sad("sa_del", st)
        return self._sad_reply(st)

    def _count_sad(self, what, status):
        # Lets a test prove that retried requests were applied once: a re-executed SA_ADD
        # would show as "exists", a re-executed SA_DEL as "not_found".
        key = what + "_" + m.STATUS_NAMES.get(status, "other").lower()
        self.counters[key] = self.counters.get(key, 0) + 1

    def _sa_flush(self, body, now):
        if body:
            raise m.MessageError("flush has no body")
        return self._sad_reply(m.OK, self.sad.flush())

    def _sa_stats(self, body, now):
        start, limit = m.decode_stats_request(body)
        recs = self.sad.records()
        room = (self.max_frame - self.overhead - 5) // m.SaStats.SIZE
        page = [r.stats() for r in recs[start:start + min(limit, room)]]
        return m.StatsReply(m.OK, len(recs), page).encode()

    # Worst-case ESP growth of one packet (SPI+seq, IV, padding, trailer, ICV) and per-item
    # reply overhead; a packet whose result would not fit the reply frame gets P_TOO_BIG and
    # uses no sequence number, instead of the whole batch failing.
    ESP_OVERHEAD = 80               # >= esp.MAX_OVERHEAD (73 with a 32-byte ICV)

    def _reply_room(self):
        return self.max_frame - self.overhead - 3

    def _resume(self, job, direction):
        """One more slice of the packet of `job` worked on in slices: its result when it is done,
        else None. An SA that left the SAD meanwhile (deleted, flushed) takes the packet with it:
        P_UNKNOWN_SPI, as for the packets after it."""
        rec, spi = job.pend
        if self.sad.get(spi, direction) is not rec:
            res = (m.P_UNKNOWN_SPI, b"")
        else:
            res = rec.resume()
            if res is None:
                return None
            self._expiry(rec)
            self._packet(rec, len(job.items[job.k][1]))
        job.pend = None
        return res

    def _encrypt_step(self, job, limit):
        """Encrypt up to `limit` packets of `job` (None: the rest); returns how many. A packet
        for a sliced SA (SaRecord.sliced) is worked on a slice per unit of `limit` (when `limit`
        is not None): a step that begins or resumes it ends with that slice."""
        items, out = job.items, job.out
        if job.pend is not None:
            res = self._resume(job, m.DIR_OUT)
            if res is not None:
                job.room -= 3 + len(res[1])
                out.append(res)
                job.k += 1
            return 1
        n = len(items)
        k = k0 = job.k
        end = n if limit is None else min(n, k + max(1, limit))
        while k < end:
            spi, pkt = items[k]
            rec = self.sad.get(spi, m.DIR_OUT)
            if (rec is not None and rec.sliced and limit is not None
                    and len(pkt) + self.ESP_OVERHEAD + 3 <= job.room):
                res = rec.begin_encrypt(pkt)
                if res is None:
                    job.pend = (rec, spi)
                    job.k = k
                    return k - k0 + 1
                self._expiry(rec)
                self._packet(rec, len(pkt))
                job.room -= 3 + len(res[1])
                out.append(res)
                k += 1
                continue
            # A run of items for one SA goes through rec.encrypt_batch: those that fit the
            # reply even if every packet before them grew by ESP_OVERHEAD (more than ESP adds,
            # esp.MAX_OVERHEAD), so the P_TOO_BIG decision is the one the exact per-packet
            # check below would take.
            j = k
            if rec is not None:
                worst = job.room
                while j < end:
                    s, p = items[j]
                    if s != spi or len(p) + self.ESP_OVERHEAD + 3 > worst:
                        break
                    worst -= len(p) + self.ESP_OVERHEAD + 3
                    j += 1
            if j > k + 1:
                batch = [p for _, p in items[k:j]]
                res = rec.encrypt_batch(batch)
                self._expiry(rec)
                for r in res:
                    job.room -= 3 + len(r[1])
                for p in batch:
                    self._packet(rec, len(p))
                out.extend(res)
                k = j
                continue
            if rec is None:
                res = (m.P_UNKNOWN_SPI, b"")
            elif len(pkt) + self.ESP_OVERHEAD + 3 > job.room:
                res = (m.P_TOO_BIG, b"")
            else:
                res = rec.encrypt(pkt)
                self._expiry(rec)
                self._packet(rec, len(pkt))
            job.room -= 3 + len(res[1])
            out.append(res)
            k += 1
        job.k = k
        return k - k0

    def _decrypt_step(self, job, limit):
        """Decrypt up to `limit` packets of `job` (None: the rest); returns how many. Sliced SAs
        as in _encrypt_step."""
        items, out = job.items, job.out
        if job.pend is not None:
            spi = job.pend[1]
            res = self._resume(job, m.DIR_IN)
            if res is not None:
                st, inner = res
                if len(inner) + 7 > job.room:
                    st, inner = m.P_TOO_BIG, b""
                job.room -= 7 + len(inner)
                out.append((st, spi, inner))
                job.k += 1
            return 1
        n = len(items)
        k = k0 = job.k
        end = n if limit is None else min(n, k + max(1, limit))
        while k < end:
            src, pkt = items[k]
            st, spi, inner = self._decrypt_one(src, pkt, True)
            if st is None and inner.sliced and limit is not None:
                rec = inner
                r = rec.begin_decrypt(pkt)
                if r is None:
                    job.pend = (rec, spi)
                    job.k = k
                    return k - k0 + 1
                self._expiry(rec)
                self._packet(rec, len(pkt))
                res = (r,)
                k += 1
            elif st is None:
                # `inner` is the SA: this item and the following ones that are ESP for the same
                # SPI with the same encapsulation (what _decrypt_one would check for each) form
                # one run through rec.decrypt_batch
                rec = inner
                udp = src is not None and src[1] != 0
                head = pkt[:4]
                j = k + 1
                while j < end:
                    s, p = items[j]
                    if (len(p) < 8 or p[:4] != head or (s is not None and s[1] != 0) != udp):
                        break
                    j += 1
                batch = [p for _, p in items[k:j]]
                res = rec.decrypt_batch(batch) if j > k + 1 else (rec.decrypt(pkt),)
                self._expiry(rec)
                for p in batch:
                    self._packet(rec, len(p))
                k = j
            else:
                res = ((st, inner),)
                k += 1
            for st, inner in res:
                if len(inner) + 7 > job.room:
                    st, inner = m.P_TOO_BIG, b""
                job.room -= 7 + len(inner)
                out.append((st, spi, inner))
        job.k = k
        return k - k0

    def _decrypt_one(self, src, pkt, classify_only=False):
        """RFC 3948 classification, SPI lookup, then the SA's RFC 4303 §3.4 processing.

        src = (ip, port): port != 0 means `pkt` is a UDP payload from port 4500; port 0 or
        src None means it is the payload of an IP protocol-50 packet (see firmware/esp.py).
        classify_only: for ESP that an SA takes, return (None, spi, the SA) instead of
        decrypting (the caller batches it)."""
        udp = src is not None and src[1] != 0
        n = len(pkt)
        if udp:
            if n == 1 and pkt[0] == 0xFF:
                self.counters["nat_keepalives"] += 1
                return m.P_KEEPALIVE, 0, b""     # RFC 3948 §2.3: ignored
            if n >= 4 and pkt[0] == 0 and pkt[1] == 0 and pkt[2] == 0 and pkt[3] == 0:
                self.counters["non_esp"] += 1
                return m.P_NOT_ESP, 0, b""       # RFC 3948 §2.2: IKE, not for the board
        if n < 8:
            return m.P_MALFORMED, 0, b""
        spi = int.from_bytes(pkt[0:4], "big")
        if spi < 256:
            return m.P_MALFORMED, spi, b""       # reserved SPIs (RFC 4303 §2.1): never an SA
        rec = self.sad.get(spi, m.DIR_IN)
        if rec is None:
            self.note_unknown_spi(spi, src)
            return m.P_UNKNOWN_SPI, spi, b""
        if getattr(rec, "udp", udp) != udp:
            self.counters["encap_mismatch"] += 1
            return m.P_POLICY, spi, b""
        if classify_only:
            return None, spi, rec
        st, inner = rec.decrypt(pkt)
        self._expiry(rec)
        return st, spi, inner

    def _expiry(self, rec):
        for hard, reason in rec.pop_expiry():
            s = rec.spec
            self._event(m.EV_SA_EXPIRE, m.SaExpire(s.spi, s.direction, hard, reason, s.reqid).encode())

    def _reset(self, body, now):
        self.reset_requested = True
        return bytes((m.OK,))

    def _counters(self, body, now):
        items = []
        for k in sorted(self.decoder.counters):
            items.append(("link_" + k, self.decoder.counters[k]))
        if self.auth is not None:
            for k in sorted(self.auth.counters):
                items.append(("link_" + k, self.auth.counters[k]))
        for k in sorted(self.counters):
            items.append((k, self.counters[k]))
        items.append(("sa_count", len(self.sad)))
        items.append(("sad_gen", self.sad.gen))
        return m.encode_counters_reply(items)


HANDLERS = {
    m.HELLO: Board._hello,
    m.HEARTBEAT: Board._heartbeat,
    m.SA_ADD: Board._sa_add,
    m.SA_DEL: Board._sa_del,
    m.SA_FLUSH: Board._sa_flush,
    m.SA_STATS: Board._sa_stats,
    m.RESET: Board._reset,
    m.COUNTERS: Board._counters,
}
