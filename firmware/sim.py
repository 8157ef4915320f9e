# cpython-only: the simulator port (pseudo-terminal / TCP, signals, control socket)
"""Simulated board: the firmware's board core under CPython, on a real pseudo-terminal.

    python -m firmware.sim [--profile sim] [--link-key FILE] [--socket HOST:PORT] [--baud N] [--reset-every S]

It stands in for the board its profile names: the same transforms in HELLO (a cryptolib board's
backend runs on a cryptolib made of the `cryptography` library, firmware/sim_cryptolib.py), the
link's rate (a UART's baud, an SPI link's clock: `--baud` overrides, 0 is unthrottled) and the
CPU's speed ([crypto.cost_us]: the board is busy for that long per packet; the line keeps
filling the UART's receive buffer meanwhile — `rxbuf` bytes, then flow control holds the host —
and the main loop reads it all between packets). Like the firmware's main loop it answers control
frames before it takes the next data packet, and sends control replies before data replies (a
data reply once started is finished: a frame cannot be cut).

Prints `board: <device path or socket:// URL>` on its first line, `control: <path>` on its
second and `link-key: <path>` on its third (`link-key: none` for a profile with link.auth =
false), then serves until killed. The link key is the board's secret, as `inv flash` writes it to
a board's flash: `--link-key FILE` names it (made, mode 0600, if it does not exist yet); without
it a new one is made beside the control socket. The host needs the same file (the daemon's
[[board]] link_key). Any serial tool (pyserial, miniterm, mpremote-style tools)
can open the device. Like hardware, the board can be reset without the device path changing:
a new boot id, an empty SAD and a HELLO. Reset by SIGUSR1, by `--reset-every`, or through the
control socket (a unix socket speaking one command per line):

    reset [quiet]   reset now; `quiet` loses the boot HELLO (as a host that was not reading would)
    hang            stop answering (a hung MCU); with the profile's wdt_ms the watchdog resets it
    resume          answer again, state kept
    status          one JSON line: boot id, uptime, SA count, SAD generation, counters
    sad             one JSON line: the SAs (SPI, direction, counters — never keys)

`--baud` throttles both directions to baud/10 bytes per second so UART limits show.
"""
import binascii
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
import tty

from firmware import cli
from firmware import profiles
from firmware.link import keyfile
from firmware.link import messages as m


def now_ms():
    return int(time.monotonic() * 1000)


class Pacer:
    """Token bucket in bytes: at most `rate` bytes per second (None: unlimited).

    A line that was idle gives at most ~2 ms of line time at once (a UART has no burst; this only
    spares the loop a wake-up per byte). A line that had bytes waiting all along, since the last
    call left some, was busy all that time: it gets that time back, up to CATCH_UP seconds, so
    that this process waking up late does not take the line's rate."""

    CATCH_UP = 0.05

    def __init__(self, rate):
        self.rate = rate
        self.tokens = 0.0
        self.at = time.monotonic()
        self.burst = max(64, int(rate // 500)) if rate else 0
        self.backlog = False

    def allow(self, want):
        if not self.rate:
            return want
        t = time.monotonic()
        cap = max(self.burst, self.CATCH_UP * self.rate) if self.backlog else self.burst
        self.tokens = min(cap, self.tokens + (t - self.at) * self.rate)
        self.at = t
        n = min(want, int(self.tokens))
        self.tokens -= n
        self.backlog = n < want
        return n

    def unused(self, n):
        """Of what allow() gave, `n` bytes found nothing to carry: the line went idle."""
        if n > 0:
            self.tokens += n
            self.backlog = False

    def wait(self):
        """Seconds until at least one byte may pass."""
        if not self.rate or self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate


class Simulator:
    MAX_OUT = 1 << 20  # like a UART without flow control, beyond this the board drops output

    def __init__(self, profile, baud=None, reset_every=None, make_board=None, rate=None, costs=None):
        """profile: the board config (profiles.board_config); rate: link bytes per second each
        way (None: unthrottled; `baud` sets it to baud/10); costs: the CPU model
        (profiles.cpu_costs): with one, data is worked on a packet at a time at that speed."""
        self.profile = profile
        self.costs = costs or {}
        self.make_board = make_board or self._default_board
        self.hung_since = None
        self.reset_every = reset_every
        self.next_reset = time.monotonic() + reset_every if reset_every else None
        self.resets = 0
        if rate is None and baud:
            rate = baud / 10
        self.tx_pacer = Pacer(rate)
        self.rx_pacer = Pacer(rate)
        self.dropped_out = 0
        self.ctl_out = bytearray()     # control replies and events: sent first
        self.sending = bytearray()     # what the line is sending now: a frame is never cut
        self.rx = bytearray()          # the UART's receive buffer: the line fills it, the CPU empties it
        self.rxbuf = (profile.get("link") or {}).get("rxbuf", 4096)
        self.busy_until = None         # the CPU model: working on a packet until then
        self._busy_out = []            # ... and the data replies that work completes, released then
        self._busy_s = 0.0
        self.cpu_busy_s = 0.0
        self.cpu_late_s = 0.0          # the simulating machine's wake-up delays, not charged to the board
        self._new_board(m.RESET_POWER_ON)

    @staticmethod
    def _default_board(profile, now, cause):
        from firmware import esp
        if profile.get("crypto") == "cryptolib":
            from firmware import sim_cryptolib
            sim_cryptolib.install()
            from firmware.crypto import cryptolib_backend
            # a stock MicroPython's hashlib: sha256 (sha1, md5), not CPython's sha384/sha512
            cryptolib_backend.HASHES = ("sha256",)
        return esp.make_board(profile, now, cause)

    def _new_board(self, cause):
        self.board = self.make_board(self.profile, now_ms(), cause)
        self.board.hold_data = True             # the line takes data replies a frame at a time
        if self.costs:
            self.board.work_budget = 0          # feed() answers control; data waits for work()
            self.board.on_packet = self._cost
        return self.board.tick(now_ms())

    def _cost(self, rec, nbytes):
        spec = rec.spec
        key = len(spec.encr_key) - (4 if spec.encr in (m.ENCR_AES_GCM_16, m.ENCR_CHACHA20_POLY1305) else 0)
        c = self.costs.get((spec.encr, key * 8, spec.integ))
        if c:
            self._busy_s += c[0] + c[1] * nbytes

    # ---- board life -------------------------------------------------------------------------
    def reset(self, cause=m.RESET_SIM, quiet=False, keep_output=False):
        self.resets += 1
        hello = self._new_board(cause)
        self.busy_until = None
        self._busy_out = []
        self.rx = bytearray()                   # unread input dies with the chip
        if not keep_output:
            # bytes in flight die with the chip
            self.ctl_out, self.sending = bytearray(), bytearray()
        if not quiet:
            self.ctl_out += hello
        self.hung_since = None

    def readable(self):
        """Whether the line may deliver bytes now: the receive buffer has room (else flow
        control holds the host, as RTS/CTS would)."""
        return len(self.rx) < self.rxbuf

    def on_input(self, data):
        """Bytes off the line: into the receive buffer; the CPU reads them when it is free."""
        if self.hung_since is not None:
            return  # a hung MCU does not read its UART: the bytes are lost
        self.rx += data
        if self.busy_until is None:
            self._read()

    def _read(self):
        data, self.rx = self.rx, bytearray()
        self._queue(self.board.feed(data, now_ms()))
        if self.board.reset_requested:
            # like firmware/main.py: the reply is flushed out of the UART before the reset
            self.reset(m.RESET_COMMAND, keep_output=True)

    def on_tick(self):
        t = time.monotonic()
        if self.next_reset is not None and t >= self.next_reset:
            self.next_reset = t + self.reset_every
            self.reset()
        if self.hung_since is not None:
            wdt = self.profile.get("wdt_ms")
            if wdt and (t - self.hung_since) * 1000 >= wdt:
                self.reset(m.RESET_WDT)
            return
        free_at = None
        if self.busy_until is not None:
            if t < self.busy_until:
                return
            free_at, self.busy_until = self.busy_until, None
            for small, wire in self._busy_out:
                self.board.queue_data_reply(small, wire)
            self._busy_out = []
        if self.rx:
            self._read()                        # what arrived while the CPU was busy
        self._queue(self.board.tick(now_ms()))
        if self.costs and self.board.busy():
            self._work(t, free_at)

    def _work(self, t, free_at):
        """One packet of the next data request, after any units that cost no modelled CPU time (a
        frame's reply is built in a unit of its own). A reply the packet completes leaves when the
        CPU is done with it; the replies already done keep their place on the line meanwhile (the
        firmware writes each reply to its port as it completes)."""
        for _ in range(8):
            self._busy_s = 0.0
            done, self.board.data_out = self.board.data_out, []
            self._queue(self.board.work(now_ms(), 1))
            made, self.board.data_out = self.board.data_out, done
            self.cpu_busy_s += self._busy_s
            if self._busy_s > 0:
                # A chip goes straight from one packet to the next: the next starts when the last one
                # ended, however late this process woke up to notice (it catches up, never runs ahead).
                start = t if free_at is None else free_at
                self.cpu_late_s += t - start
                self.busy_until = start + self._busy_s
                self._busy_out = made
                return
            for small, wire in made:
                self.board.queue_data_reply(small, wire)
            if not self.board.busy():
                return

    def timeout(self):
        """Seconds until on_tick() has work."""
        waits = [0.05]
        t = time.monotonic()
        d = self.board.next_deadline()
        if d is not None:
            waits.append(max(0.0, (d - now_ms()) / 1000))
        if self.next_reset is not None:
            waits.append(max(0.0, self.next_reset - t))
        if self.busy_until is not None:
            waits.append(max(0.0, self.busy_until - t))
        elif self.costs and self.board.busy():
            waits.append(0.0)
        if self.pending_output() and self.tx_pacer.rate:
            waits.append(self.tx_pacer.wait())
        return min(waits)

    def _queue(self, data):
        if data:
            room = self.MAX_OUT - len(self.ctl_out)
            if len(data) > room:
                self.dropped_out += len(data) - room
                data = data[:max(0, room)]
            self.ctl_out += data

    def pending_output(self):
        return bool(self.sending or self.ctl_out or self.board.data_out)

    def next_output(self, n):
        """Up to n bytes for the line: the frame being sent, then control, then the next data
        reply (small ones first: firmware/board.py)."""
        if not self.sending:
            if self.ctl_out:
                self.sending, self.ctl_out = self.ctl_out, bytearray()
            elif self.board.data_out:
                self.sending = bytearray(self.board.next_data())
        return bytes(self.sending[:n])

    def sent(self, n):
        del self.sending[:n]

    # ---- control ----------------------------------------------------------------------------
    def command(self, line):
        words = line.split()
        if not words:
            return {"ok": False, "error": "empty command"}
        cmd = words[0]
        if cmd == "reset":
            self.reset(quiet="quiet" in words[1:])
            return {"ok": True, "boot_id": binascii.hexlify(self.board.boot_id).decode()}
        if cmd == "hang":
            self.hung_since = time.monotonic()
            return {"ok": True}
        if cmd == "resume":
            self.hung_since = None
            return {"ok": True}
        if cmd == "status":
            b = self.board
            counters = dict(b.counters)
            counters.update(("link_" + k, v) for k, v in b.decoder.counters.items())
            return {"ok": True, "boot_id": binascii.hexlify(b.boot_id).decode(),
                    "uptime_ms": b.uptime(now_ms()), "sa_count": len(b.sad), "sad_gen": b.sad.gen,
                    "resets": self.resets, "hung": self.hung_since is not None,
                    "counters": counters, "dropped_out": self.dropped_out,
                    "cpu_busy_s": round(self.cpu_busy_s, 4), "cpu_late_s": round(self.cpu_late_s, 4),
                    "data_queue": len(b.data_queue)}
        if cmd == "sad":
            sas = []
            for rec in self.board.sad.records():
                s = rec.stats()
                sas.append({"spi": s.spi, "dir": "out" if s.direction == m.DIR_OUT else "in",
                            "reqid": s.reqid, "packets": s.packets, "bytes": s.octets,
                            "state": s.state})
            return {"ok": True, "gen": self.board.sad.gen, "sas": sas}
        return {"ok": False, "error": "unknown command %r" % cmd}


def control(path, cmd, timeout=10):
    """One command to a control socket (this simulator's, or the virtual MicroPython board's,
    which speaks the same one-JSON-line protocol); returns the decoded answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(cmd.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def open_pty():
    """A pseudo-terminal in raw mode; returns (master fd, slave fd, slave path).

    The slave fd stays open here so the master never sees EIO while no host has it open.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def serve(sim, master_fd=None, listen_sock=None, control_path=None, ready=None):
    """Main loop: move bytes between the link and the board core, run timers and control."""
    sel = selectors.DefaultSelector()
    conn = None
    if listen_sock is not None:
        sel.register(listen_sock, selectors.EVENT_READ, "accept")
    ctl = None
    if control_path:
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(control_path)
        os.chmod(control_path, 0o600)
        ctl.listen(4)
        ctl.setblocking(False)
        sel.register(ctl, selectors.EVENT_READ, "ctl-accept")
    sig_r, sig_w = socket.socketpair()
    sig_r.setblocking(False)
    sig_w.setblocking(False)
    signal.set_wakeup_fd(sig_w.fileno())
    signal.signal(signal.SIGUSR1, lambda *a: None)
    sel.register(sig_r, selectors.EVENT_READ, "signal")
    clients = {}
    if ready:
        ready()

    def link_write(data):
        if master_fd is not None:
            return os.write(master_fd, data)
        if conn is not None:
            return conn.send(data)
        return len(data)  # no host connected: the bytes go nowhere, as on an unplugged UART

    events = None
    while True:
        want = ((selectors.EVENT_READ if sim.readable() else 0)
                | (selectors.EVENT_WRITE if sim.pending_output() else 0))
        target = master_fd if master_fd is not None else conn
        if target is not None and want != events:
            if events:
                sel.unregister(target)
            if want:
                sel.register(target, want, "link")
            events = want
        for key, ev in sel.select(sim.timeout()):
            what = key.data
            if what == "link":
                if ev & selectors.EVENT_READ:
                    n = sim.rx_pacer.allow(max(1, sim.rxbuf - len(sim.rx)))
                    if n:
                        try:
                            data = os.read(master_fd, n) if master_fd is not None else conn.recv(n)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError:
                            data = b""
                        sim.rx_pacer.unused(n - len(data or b""))
                        if data:
                            sim.on_input(data)
                        elif data == b"" and conn is not None:
                            sel.unregister(conn)
                            conn.close()
                            conn = None
                            events = None
                            continue
                if ev & selectors.EVENT_WRITE and sim.pending_output():
                    chunk = sim.next_output(1 << 16)
                    n = sim.tx_pacer.allow(len(chunk))
                    if n:
                        try:
                            sent = link_write(chunk[:n])
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError:
                            sent = n          # nobody reads the line: the bytes go nowhere
                        sim.tx_pacer.tokens += n - sent
                        sim.sent(sent)
            elif what == "accept":
                new, _ = listen_sock.accept()
                new.setblocking(False)
                new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if conn is not None:
                    if events:
                        sel.unregister(conn)
                    conn.close()
                conn = new
                events = None
            elif what == "ctl-accept":
                c, _ = ctl.accept()
                c.setblocking(False)
                clients[c] = bytearray()
                sel.register(c, selectors.EVENT_READ, "ctl")
            elif what == "ctl":
                c = key.fileobj
                try:
                    data = c.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(c)
                    c.close()
                    del clients[c]
                    continue
                clients[c] += data
                while b"\n" in clients[c]:
                    line, _, rest = bytes(clients[c]).partition(b"\n")
                    clients[c] = bytearray(rest)
                    reply = sim.command(line.decode(errors="replace"))
                    c.setblocking(True)
                    c.sendall((json.dumps(reply) + "\n").encode())
                    c.setblocking(False)
            elif what == "signal":
                try:
                    sigs = sig_r.recv(64)
                except (BlockingIOError, InterruptedError):
                    sigs = b""
                for s in sigs:
                    if s == signal.SIGUSR1:
                        sim.reset()
                    elif s in (signal.SIGTERM, signal.SIGINT):
                        return
        sim.on_tick()


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m firmware.sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="sim", help="board profile name (boards/NAME.toml) or a path")
    ap.add_argument("--socket", metavar="HOST:PORT", help="serve socket://HOST:PORT instead of a pty")
    ap.add_argument("--baud", type=int, help="throttle both directions to baud/10 bytes per second "
                    "(default: the profile's link rate; 0: unthrottled)")
    ap.add_argument("--reset-every", type=float, metavar="S", help="reset the board every S seconds")
    ap.add_argument("--control", metavar="PATH", help="control socket path (default: a temp path)")
    ap.add_argument("--host-silence-ms", type=int, help="override the profile's host-silence limit")
    ap.add_argument("--max-sas", type=int, help="override the profile's SA slots (1-4096)")
    ap.add_argument("--link-key", metavar="FILE", help="the board's link key (made, mode 0600, if the file "
                    "does not exist; default: a new one in a temporary directory)")
    args = ap.parse_args(argv)
    try:
        full = profiles.load(args.profile)
        profile = profiles.board_config(full)
    except (profiles.ProfileError, OSError) as e:
        ap.error("--profile: %s" % e)
    if args.baud is not None and args.baud < 0:
        ap.error("--baud must be positive (or 0: unthrottled), not %s" % args.baud)
    if args.reset_every is not None and not args.reset_every > 0:
        ap.error("--reset-every must be positive, not %s" % args.reset_every)
    if args.host_silence_ms is not None and args.host_silence_ms < 0:
        ap.error("--host-silence-ms must not be negative")
    if args.control and (os.path.exists(args.control) or not os.path.isdir(os.path.dirname(args.control) or ".")):
        ap.error("--control %s: the path must be new, in an existing directory" % args.control)
    if args.max_sas is not None and not 1 <= args.max_sas <= 4096:
        ap.error("--max-sas must be between 1 and 4096, not %s" % args.max_sas)
    if args.host_silence_ms is not None:
        profile["host_silence_ms"] = args.host_silence_ms
    if args.max_sas is not None:
        profile["max_sas"] = args.max_sas
    key_path = None
    if profiles.link_auth(full):
        key_path = args.link_key or os.path.join(tempfile.mkdtemp(prefix="ikeoffload-sim-key-"), "link.key")
        try:
            profile["link_key"], _ = keyfile.ensure(key_path)
        except keyfile.KeyFileError as e:
            ap.error("--link-key: %s" % e)
    elif args.link_key:
        ap.error("--link-key: profile %s has an open link (link.auth = false)" % full["_name"])
    rate = profiles.link_rate(full) if args.baud is None else (args.baud / 10 or None)
    sim = Simulator(profile, reset_every=args.reset_every, rate=rate, costs=profiles.cpu_costs(full))
    control = args.control or os.path.join(tempfile.mkdtemp(prefix="ikeoffload-sim-"), "control")
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGINT, lambda *a: None)
    master = listen = None
    if args.socket:
        host, _, port = args.socket.rpartition(":")
        try:
            listen = socket.create_server((host or "127.0.0.1", int(port)))
        except (OSError, ValueError, OverflowError) as e:
            ap.error("--socket %s: %s" % (args.socket, getattr(e, "strerror", None) or e))
        listen.setblocking(False)
        host, port = listen.getsockname()[:2]
        where = "socket://%s:%d" % (host, port)
    else:
        master, _slave, where = open_pty()

    def ready():
        print("board: %s" % where, flush=True)
        print("control: %s" % control, flush=True)
        print("link-key: %s" % (key_path or "none"), flush=True)

    try:
        serve(sim, master, listen, control, ready)
    finally:
        try:
            os.unlink(control)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
