"""BoardClient: asyncio driver that joins a transport with the sans-I/O BoardSession.

    client = BoardClient("b0", "/dev/pts/3", period=0.1, misses=3)
    await client.start(); await client.wait_ready()
    reply = await client.sa_add(spec)            # SadReply; raises on failure
    ev = await client.events.get()               # BoardLost / BoardReady / UnknownSpiReport / ...

Every coroutine's request has a deadline; nothing waits forever.
"""
import asyncio
import errno
import logging
import time

from firmware import profiles
from firmware.board import DEFAULT_PROFILE as BOARD_DEFAULTS
from firmware.link import messages as m
from host.offload.events import BoardLost, BoardReady, Reply, RequestFailed
from host.offload.link import LinkClient
from host.offload.session import READY, BoardSession, NotReady
from host.offload.errors import TransportError
from host.offload.port_names import by_id_advice, port_problem
from host.offload.transport import for_profile

log = logging.getLogger("ikeoffloadd.board")
OPEN_REMINDER = 300.0    # seconds between the log lines of a port that stays unopenable for one cause


class LinkError(RuntimeError):
    """A request got no reply (timeout, board lost) or the board refused it."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class BoardClient:
    def __init__(self, name, url, *, profile=None, period=0.1, misses=3, flush_on_open=True,
                 reopen_interval=1.0, link_options=None, on_event=None, transport_factory=None, link_key=None):
        """profile: the board profile (firmware/profiles.py) — its link kind picks the transport
        (host/offload/transport.py: serial at its baud rate and flow control, or SPI; a serial
        port without a profile) and the link's rate. link_key: the board's link key (bytes;
        firmware/link/keyfile.py reads its file), which a profile with an authenticated link
        (link.auth) needs. transport_factory(on_data, on_error) -> Transport overrides that
        (tests, fault injection)."""
        self.name = name
        self.url = url
        self.profile = profile
        self.period = period
        self.misses = misses
        self.flush_on_open = flush_on_open
        self.reopen_interval = reopen_interval
        self.link_options = dict(link_options or {})
        # The board's capacity, from its profile: the link's rate (a UART's baud, an SPI link's
        # clock) and its CPU's time per packet. The link client bounds data in flight with them;
        # the data path admits traffic at this rate; heartbeats allow for what is in flight.
        self.costs = profiles.cpu_costs(profile) if profile else {}
        self.step = profiles.longest_step(profile) if profile else 0.0   # the board's longest step
        rate = profiles.link_rate(profile) if profile else None
        if rate and "byte_time" not in self.link_options:
            self.link_options["byte_time"] = 1.0 / rate
        if profile and "data_budget" not in self.link_options:
            self.link_options["data_budget"] = profiles.data_budget(profile)
        if profile and "data_frames" not in self.link_options:
            # the board queues this many data frames and answers more with BUSY (their packets
            # lost): a fast board on a pty drains its budget in seconds slower than frames arrive
            self.link_options["data_frames"] = BOARD_DEFAULTS["data_queue"]
            self.link_options.setdefault("urgent_frames", max(1, BOARD_DEFAULTS["data_queue"] - 1))
        if profile is not None and profiles.link_auth(profile) and not link_key:
            raise ValueError("board %s: profile %s has an authenticated link: give its link key"
                             % (name, profile.get("_name", "?")))
        self.link_options["link_key"] = link_key
        self.on_event = on_event
        self.events = asyncio.Queue()
        self.session = None
        self.transport = None
        self._transport_factory = transport_factory
        self._futures = {}
        self._timer = None
        self._loop = None
        self._ready = asyncio.Event()
        self._reopen_task = None
        self._closed = False
        self.open_problem = None     # why the port cannot be opened now (None: it is open, or not tried)
        self.open_failures = 0
        self._open_said_at = 0.0
        self.ready_at = None
        self.lost = []  # BoardLost history (most recent last)

    def _make_transport(self):
        if self._transport_factory is not None:
            return self._transport_factory(self._on_data, self._on_transport_error)
        return for_profile(self.profile, self.url, on_data=self._on_data, on_error=self._on_transport_error)

    # ---- life -------------------------------------------------------------------------------
    async def start(self, retry=False):
        """Open the port and say HELLO. retry=True: a port that cannot be opened yet (a board not
        plugged in) is retried every reopen_interval instead of raising TransportError."""
        self._loop = asyncio.get_running_loop()
        transport = self._make_transport()
        try:
            transport.open()
        except TransportError as e:
            if not retry:
                raise
            transport = None
            self._cannot_open(e, self._now())
        self.transport = transport
        self.session = BoardSession(self.name, self._now(), period=self.period, misses=self.misses,
                                    flush_on_open=self.flush_on_open,
                                    link=LinkClient(name="board " + self.name, **self.link_options))
        if transport is None:
            self._reopen_task = self._loop.create_task(self._reopen())
        self._after()

    async def wait_ready(self, timeout=5.0):
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def ready(self):
        return self.session is not None and self.session.state == READY

    async def close(self):
        self._closed = True
        if self._reopen_task:
            self._reopen_task.cancel()
        if self._timer:
            self._timer.cancel()
        if self.session:
            self.session.close(self._now())
            self._dispatch()
        if self.transport:
            self.transport.close()

    async def flush(self, timeout=2.0):
        """Flush a ready board's SAs; True if the board confirmed within ``timeout`` seconds, False
        if it refused, did not answer or is not ready (nothing is raised: the callers go on)."""
        if not self.ready:
            return False
        try:
            await asyncio.wait_for(self.sa_flush(), timeout)
        except (LinkError, asyncio.TimeoutError):
            return False
        return True

    async def flush_and_close(self, timeout=2.0):
        """Flush the board's SAs (if it is ready, as best it can within ``timeout``), then close."""
        await self.flush(timeout)
        await self.close()

    # ---- requests ---------------------------------------------------------------------------
    async def _call(self, seq):
        fut = self._loop.create_future()
        self._futures[seq] = fut
        self._after()
        ev = await fut
        if isinstance(ev, RequestFailed):
            raise LinkError("%s %s: %s" % (self.name, m.NAMES.get(ev.type, ev.type), ev.reason))
        return ev

    def _start(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except NotReady as e:
            raise LinkError(str(e)) from None

    async def sa_add(self, spec):
        """Install an SA; returns the SadReply. Raises LinkError unless the board said OK."""
        ev = await self._call(self._start(self.session.sa_add, spec, self._now()))
        return self._sad_ok(ev, "SA_ADD 0x%08x" % spec.spi)

    async def sa_del(self, spi, direction):
        ev = await self._call(self._start(self.session.sa_del, spi, direction, self._now()))
        return self._sad_ok(ev, "SA_DEL 0x%08x" % spi)

    async def sa_flush(self):
        ev = await self._call(self._start(self.session.sa_flush, self._now()))
        return self._sad_ok(ev, "SA_FLUSH")

    def _sad_ok(self, ev, what):
        """The SadReply of an SA command the board carried out; LinkError for a refusal (a board
        refuses a request it cannot parse with the status byte alone) or a reply that does not
        decode."""
        status = ev.body[0] if ev.body else None
        if status != m.OK:
            raise LinkError("%s %s: %s" % (self.name, what, m.STATUS_NAMES.get(status, status)), status)
        try:
            return m.SadReply.decode(ev.body)
        except m.MessageError as e:
            raise LinkError("%s %s: bad reply: %s" % (self.name, what, e)) from None

    async def request(self, type, body=b"", **kw):
        """A raw request; returns the reply body (status byte first)."""
        ev = await self._call(self._start(self.session.request, type, body, self._now(), **kw))
        return ev.body

    async def stats(self):
        """Every SA's counters (paged SA_STATS)."""
        out, start = [], 0
        while True:
            body = await self.request(m.SA_STATS, m.encode_stats_request(start), idempotent=True)
            r = m.StatsReply.decode(body)
            if r.status != m.OK:
                raise LinkError("%s SA_STATS: %s" % (self.name, m.STATUS_NAMES.get(r.status)), r.status)
            out += r.records
            start += len(r.records)
            if not r.records or start >= r.total:
                return out

    async def counters(self):
        status, d = m.decode_counters_reply(await self.request(m.COUNTERS, b"", idempotent=True))
        if status != m.OK:
            raise LinkError("%s COUNTERS: %s" % (self.name, m.STATUS_NAMES.get(status)), status)
        return d

    # ---- what the board holds, as the host's books say ---------------------------------------
    def sas(self):
        """(spi, direction) of every SA the board confirmed and still holds, sorted."""
        return tuple(sorted(self.session.books.sas)) if self.session is not None else ()

    def has_sa(self, spi, direction):
        return self.session is not None and (spi, direction) in self.session.books.sas

    def sa_count(self):
        return len(self.session.books.sas) if self.session is not None else 0

    def loss_bound(self):
        """Seconds from the board hanging to BoardLost, at the worst: `misses` heartbeats late
        beyond period + slack (docs/link-protocol.md, "Control before data"; for a profile's own
        link and CPU this is firmware/profiles.py loss_bound)."""
        s = self.session
        return (self.misses + 1) * self.period + s.slack_base + s.link.data_budget + self.step

    # ---- the data path ------------------------------------------------------------------------
    def packet_work(self, transform, nbytes):
        """Seconds of the board's CPU for one packet (profile [crypto.cost_us]; 0 if unstated)."""
        return profiles.packet_time(self.costs, transform, nbytes)

    @property
    def byte_time(self):
        return self.session.link.byte_time if self.session else self.link_options.get("byte_time", 0.0)

    def data_room(self):
        """Seconds of data budget left on the link (<= 0: hold data back)."""
        if not self.ready:
            return 0.0
        return self.session.link.data_room()

    def urgent_room(self):
        """Whether a frame of small packets may go now (outside the data budget)."""
        return self.ready and self.session.link.urgent_room()

    def submit_encrypt(self, items, work=0.0, step=None, timeout=2.0, urgent=False):
        """Queue an ENCRYPT now (the link counts it in flight at once); returns a future whose
        result is [(packet status, ESP bytes)] or a LinkError. items: [(spi, packet)]."""
        return self._submit(m.ENCRYPT, m.encode_encrypt_request(items), m.decode_encrypt_reply,
                            sum(len(p) for _, p in items) + 70 * len(items), work, step, timeout, urgent)

    def submit_decrypt(self, items, work=0.0, step=None, timeout=2.0, urgent=False):
        """Like submit_encrypt for DECRYPT: items [(source (ip, port) or None, UDP payload)] ->
        [(packet status, spi, inner packet)]."""
        return self._submit(m.DECRYPT, m.encode_decrypt_request(items), m.decode_decrypt_reply,
                            sum(len(p) for _, p in items) + 8 * len(items), work, step, timeout, urgent)

    def _submit(self, type, body, decode, reply_len, work, step, timeout, urgent=False):
        out = self._loop.create_future()
        try:
            seq = self.session.request(type, body, self._now(), retry=False, deadline=self._now() + timeout,
                                       reply_len=reply_len, work=work, step=step, urgent=urgent)
        except NotReady as e:
            out.set_exception(LinkError(str(e)))
            return out
        fut = self._loop.create_future()
        self._futures[seq] = fut

        def done(f):
            if out.cancelled():
                return
            ev = f.result()
            if isinstance(ev, RequestFailed):
                out.set_exception(LinkError("%s %s: %s" % (self.name, m.NAMES.get(type), ev.reason)))
                return
            try:
                status, items = decode(ev.body)
            except m.MessageError as e:
                out.set_exception(LinkError("%s %s: bad reply: %s" % (self.name, m.NAMES.get(type), e)))
                return
            if status != m.OK:
                out.set_exception(LinkError("%s %s: %s" % (self.name, m.NAMES.get(type),
                                                           m.STATUS_NAMES.get(status, status)), status))
            else:
                out.set_result(items)

        fut.add_done_callback(done)
        self._after()
        return out

    async def encrypt(self, items, timeout=2.0):
        """[(spi, packet)] -> [(packet status, ESP bytes)]; sent once, never retried."""
        return await self.submit_encrypt(items, timeout=timeout)

    async def decrypt(self, items, timeout=2.0):
        """[(source (ip, port) or None, UDP payload)] -> [(packet status, spi, inner packet)]."""
        return await self.submit_decrypt(items, timeout=timeout)

    async def reset(self):
        """Ask the board to reset (it answers, then reboots: expect BoardLost + BoardReady)."""
        await self.request(m.RESET, b"")

    # ---- plumbing ---------------------------------------------------------------------------
    def _now(self):
        return time.monotonic()

    def _on_data(self, data):
        self.session.receive(data, self._now())
        self._after()

    def _on_timer(self):
        self._timer = None
        if self.session is not None:
            self.session.handle_timer(self._now())
            self._after()

    def _on_transport_error(self, exc):
        if self._closed:
            return
        log.warning("board %s: %s failed: %s; reopening it every %g s", self.name, self.url,
                    port_problem(self.url, exc) if getattr(exc, "errno", None) is not None else exc,
                    self.reopen_interval)
        self.session.transport_error(str(exc), self._now())
        self._after()
        if self._reopen_task is None or self._reopen_task.done():
            self._reopen_task = self._loop.create_task(self._reopen())

    async def _reopen(self):
        while not self._closed:
            await asyncio.sleep(self.reopen_interval)
            try:
                self.transport = self._make_transport()
                self.transport.open()
            except TransportError as e:
                self._cannot_open(e, self._now())
                continue
            log.info("board %s: %s open again%s", self.name, self.url,
                     " after %d failed tries" % self.open_failures if self.open_failures else "")
            self.open_problem, self.open_failures = None, 0
            self.session.reopen(self._now())
            self._after()
            return

    def _cannot_open(self, exc, now):
        """A failed open of the port, logged with its cause in words: when the cause is new or
        changed, and then every OPEN_REMINDER seconds while it lasts (not every retry)."""
        problem = port_problem(self.url, exc) if exc.errno is not None else str(exc)
        self.open_failures += 1
        if problem != self.open_problem:
            # a missing device's cause names /dev/serial/by-id/ already
            advice = by_id_advice(self.url) if exc.errno != errno.ENOENT else None
            log.warning("board %s: cannot open %s: %s; retrying every %g s%s", self.name, self.url, problem,
                        self.reopen_interval, "; " + advice if advice else "")
            self.open_problem, self._open_said_at = problem, now
        elif now - self._open_said_at >= OPEN_REMINDER:
            log.warning("board %s: still cannot open %s after %d tries: %s", self.name, self.url,
                        self.open_failures, problem)
            self._open_said_at = now

    def _after(self):
        """Flush output, deliver events, re-arm the timer: called after every input."""
        if self.session is None:
            return
        data = self.session.data_to_send()
        if data and self.transport is not None and self.transport.is_open:
            self.transport.write(data)
        self._dispatch()
        t = self.session.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if t is not None:
            # asyncio's loop.time() is time.monotonic() on Linux, the clock the session uses
            self._timer = self._loop.call_at(max(t, self._loop.time()), self._on_timer)

    def _dispatch(self):
        while True:
            ev = self.session.next_event()
            if ev is None:
                return
            if isinstance(ev, (Reply, RequestFailed)):
                fut = self._futures.pop(ev.seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
                continue
            if isinstance(ev, BoardReady):
                self.ready_at = ev.at
                self._ready.set()
            elif isinstance(ev, BoardLost):
                self._ready.clear()
                self.lost.append(ev)
            self.events.put_nowait(ev)
            if self.on_event:
                self.on_event(ev)

