"""Control socket of ikeoffloadd and the `ikeoffloadctl` command.

The daemon listens on a unix socket (mode 0600). One JSON object per line each way:
    -> {"cmd": "list-sas"}                 <- {"ok": true, "result": [...]}
    -> {"cmd": "initiate", "conn": "gw"}   <- {"ok": false, "error": "..."}
Commands: list-sas, list-boards, initiate, terminate, flush-board, stats, ha. A request is checked
against its command's fields and their types before the daemon sees it: anything else gets an
error reply, and the connection stays (so does the daemon, whatever the handler raises).
`ikeoffloadctl --json CMD` prints the result object; without --json a readable form in the
style of `swanctl --list-sas`.
"""
import asyncio
import json
import logging
import os
import socket
import stat
import sys
import time

from firmware import cli
from host import __version__

log = logging.getLogger("ikeoffloadd")
DEFAULT_SOCKET = "/run/ikeoffload/control.sock"
# command -> {field: type}; the fields each command needs
FIELDS = {"list-sas": {}, "list-boards": {}, "stats": {}, "initiate": {"conn": str},
          "terminate": {"conn": str, "ike_id": int}, "flush-board": {"board": str},
          "ha": {"state": str}}
NEEDS = {"initiate": ("conn",), "flush-board": ("board",)}
COMMANDS = tuple(FIELDS)
TYPE_NAMES = {str: "a string", int: "an integer"}
HA_VERBS = ("master", "backup", "fault", "stop", "status", "check")
HA_CHECK_TIMEOUT = 1.5


def check_request(req):
    """A request as the handler may take it; ValueError says what is wrong with it."""
    if not isinstance(req, dict):
        raise ValueError("a request is a JSON object, not %s" % type(req).__name__)
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in FIELDS:
        raise ValueError("unknown command %r (known: %s)" % (cmd, ", ".join(COMMANDS)))
    fields = FIELDS[cmd]
    for k, v in req.items():
        if k == "cmd":
            continue
        kind = fields.get(k)
        if kind is None:
            raise ValueError("%s takes no field %r (fields: %s)" % (cmd, k, ", ".join(sorted(fields)) or "none"))
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise ValueError("%s: %s must be %s, not %s" % (cmd, k, TYPE_NAMES[kind], type(v).__name__))
    for k in NEEDS.get(cmd, ()):
        if req.get(k) is None:
            raise ValueError("%s needs %s" % (cmd, k))
    if cmd == "terminate" and req.get("conn") is None and req.get("ike_id") is None:
        raise ValueError("terminate needs conn or ike_id")
    return req


class ControlSocketError(OSError):
    """The control socket cannot be served (daemon.control_socket)."""


def answers(path, timeout=1.0):
    """Does a server accept connections on the unix socket ``path``?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


class ControlServer:
    """Serves `handler(request dict) -> result` (a coroutine) on a unix socket."""

    def __init__(self, path, handler):
        self.path = path
        self.handler = handler
        self.server = None
        self._inode = None

    async def start(self):
        """Listen on the path; a stale socket file is replaced, a live one (a daemon answers) never."""
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            if os.path.lexists(self.path):
                if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    raise ControlSocketError("%s exists and is not a socket" % self.path)
                if answers(self.path):
                    raise ControlSocketError("%s: a daemon answers there already" % self.path)
                os.unlink(self.path)
            old = os.umask(0o177)        # the socket is born 0600: no window with wider access
            try:
                self.server = await asyncio.start_unix_server(self._client, path=self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            self._inode = os.stat(self.path).st_ino
        except ControlSocketError:
            raise
        except OSError as e:
            raise ControlSocketError("cannot serve %s: %s" % (e.filename or self.path, e.strerror or e)) from None

    async def _client(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = check_request(json.loads(line))
                    reply = {"ok": True, "result": await self.handler(req)}
                except (ValueError, KeyError, LookupError) as e:
                    reply = {"ok": False, "error": str(e)}
                except Exception as e:             # a bug: answered and logged, the daemon goes on
                    log.exception("control request %r failed", line[:200])
                    reply = {"ok": False, "error": "internal error: %s" % type(e).__name__}
                writer.write((json.dumps(reply, default=str) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self):
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            try:
                if os.stat(self.path).st_ino == self._inode:     # ours, not a successor's
                    os.unlink(self.path)
            except FileNotFoundError:
                pass


def call(path, request, timeout=30.0):
    """One request to the daemon; returns the reply dict."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionError("daemon closed the control connection")
            buf += chunk
    return json.loads(buf)


# ---- human output ------------------------------------------------------------------------------
def _ago(t, now):
    if t is None:
        return "never"
    d = max(0, now - t)
    return "%ds ago" % d if d < 120 else "%dm ago" % (d // 60) if d < 7200 else "%dh ago" % (d // 3600)


def format_sas(sas, now=None):
    now = time.time() if now is None else now
    out = []
    for s in sas:
        out.append("%s: #%d, %s, IKEv2, %s_i%s %s_r%s" % (
            s["conn"], s["ike_id"], s["state"], s["spi_i"], "*" if s["initiator"] else "",
            s["spi_r"], "" if s["initiator"] else "*"))
        out.append("  local  '%s' @ %s" % (s["local_id"], s["local"]))
        out.append("  remote '%s' @ %s" % (s["remote_id"], s["remote"]))
        if s.get("proposal"):
            out.append("  %s" % s["proposal"])
        out.append("  established %s, board %s" % (_ago(s.get("established_at"), now), s.get("board") or "-"))
        for c in s.get("children", []):
            out.append("  %s: #%d, %s, %s%s, ESP:%s" % (
                c["name"], c["handle"], c["state"], c["mode"].upper(), "-in-UDP" if c.get("encap") else "",
                c.get("proposal", "")))
            out.append("    installed %s" % _ago(c.get("installed_at"), now))
            for way, spi in (("in ", "spi_in"), ("out", "spi_out")):
                d = way.strip()
                out.append("    %s %08x, %9d bytes, %7d packets"
                           % (way, c[spi], c.get("bytes_" + d, 0), c.get("packets_" + d, 0)))
            out.append("    local  %s" % " ".join(c.get("local_ts", [])))
            out.append("    remote %s" % " ".join(c.get("remote_ts", [])))
    return "\n".join(out) if out else "no IKE SAs"


def format_boards(boards, now=None):
    now = time.time() if now is None else now
    out = []
    for b in boards:
        out.append("%s: %s, %s, profile %s" % (b["name"], b["state"].upper(), b["port"], b.get("profile", "-")))
        if b.get("boot_id"):
            out.append("  boot id %s, up %.1f s, reset cause %s, firmware %s" % (
                b["boot_id"], (b.get("uptime_ms") or 0) / 1000, b.get("reset_cause", "-"), b.get("firmware", "-")))
        out.append("  SAs %d/%s, IKE SAs %d, heartbeat RTT %s" % (
            b.get("sa_count", 0), b.get("max_sas", "-"), b.get("ike_sas", 0),
            "%.2f ms" % (b["rtt_ms"]) if b.get("rtt_ms") is not None else "-"))
        if b.get("transforms"):
            out.append("  transforms %s" % ", ".join(b["transforms"]))
        loss = b.get("last_loss")
        if loss:
            out.append("  last loss %s: %s (%s), %d IKE SAs flushed" % (
                _ago(loss.get("at"), now), loss["reason"], loss.get("detail", ""), loss.get("ike_sas_flushed", 0)))
        out.append("  losses %d" % b.get("losses", 0))
    return "\n".join(out) if out else "no boards"


def format_ha(st, now=None):
    """`ikeoffloadctl ha`: the role, health and the last changes (their times are the daemon's
    time.monotonic(), the same clock on the same host)."""
    now = time.monotonic() if now is None else now
    if not st.get("enabled"):
        return "HA off ([ha] enabled = false): always active"
    out = ["%s (%s) for %.1f s; %s" % (st["state"].upper(), "active" if st["active"] else "standby",
                                       now - st["since"], "healthy" if st["healthy"] else
                                       "UNHEALTHY: " + st["reason"])]
    for h in reversed(st.get("history", [])):
        out.append("  %8.1f s ago  %s -> %s" % (now - h["at"], h["from"], h["to"]))
    return "\n".join(out)


def format_generic(result):
    if isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        return "\n".join("%-*s  %s" % (width, k, v) for k, v in sorted(result.items()))
    return str(result)


def main(argv=None):
    ap = cli.ArgumentParser(prog="ikeoffloadctl", description="Control a running ikeoffloadd.")
    ap.add_argument("--socket", default=os.environ.get("IKEOFFLOAD_SOCKET", DEFAULT_SOCKET),
                    help="control socket (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the raw JSON result")
    ap.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list-sas", help="IKE and Child SAs with their board and counters")
    sub.add_parser("list-boards", help="boards: boot id, uptime, SAs, heartbeat RTT, last loss")
    p = sub.add_parser("initiate", help="bring up a connection")
    p.add_argument("conn")
    p = sub.add_parser("terminate", help="delete a connection's IKE SAs (or one by --ike-id)")
    p.add_argument("conn", nargs="?")
    p.add_argument("--ike-id", type=int)
    p = sub.add_parser("flush-board", help="treat a board as lost: flush its IKE SAs, re-establish")
    p.add_argument("board")
    sub.add_parser("stats", help="daemon counters")
    p = sub.add_parser("ha", help="active/standby: keepalived's notify (master, backup, fault, stop), "
                       "its track script (check: exit 1 unless this router can be active), or the status")
    p.add_argument("state", nargs="?", choices=HA_VERBS)
    args = ap.parse_args(argv)

    req = {"cmd": args.cmd}
    if args.cmd == "ha" and args.state not in (None, "check", "status"):
        req["state"] = args.state
    for k in ("conn", "board", "ike_id"):
        if getattr(args, k, None) is not None:
            req[k] = getattr(args, k)
    if args.cmd == "terminate" and not args.conn and args.ike_id is None:
        ap.error("terminate needs a connection name or --ike-id")
    # keepalived's track script: a daemon that does not answer within HA_CHECK_TIMEOUT is hung
    timeout = HA_CHECK_TIMEOUT if args.cmd == "ha" and args.state == "check" else 30.0
    try:
        reply = call(args.socket, req, timeout)
    except (OSError, ValueError) as e:
        print("ikeoffloadctl: cannot reach ikeoffloadd at %s: %s" % (args.socket, e), file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print("ikeoffloadctl: %s" % reply.get("error"), file=sys.stderr)
        return 1
    result = reply["result"]
    if args.cmd == "ha" and args.state == "check":
        if not result.get("healthy"):      # keepalived's track script: non-zero puts it in FAULT
            print("ikeoffloadctl: cannot be active: %s" % result.get("reason"), file=sys.stderr)
            return 1
        return 0
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.cmd == "list-sas":
        print(format_sas(result))
    elif args.cmd == "list-boards":
        print(format_boards(result))
    elif args.cmd == "ha":
        print(format_ha(result))
    else:
        print(format_generic(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
