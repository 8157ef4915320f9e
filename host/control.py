"""Control socket of ikeoffloadd and the `ikeoffloadctl` command.

The daemon listens on a unix socket (mode 0600). One JSON object per line each way:
    -> {"cmd": "list-sas"}                                 <- {"ok": true, "result": [...]}
    -> {"cmd": "initiate", "conn": "gw", "timeout": 10}    <- {"ok": false, "error": "...", "timeout": true}
    -> {"cmd": "log"}                                      <- {"ok": true, "stream": true}, then
                                                              {"event": {...}} lines until the client goes
Commands: list-sas, list-conns, list-boards, stats, initiate, terminate, rekey, flush-board,
reload, log, ha. A request is checked against its command's fields and their types before the daemon
sees it: anything else gets an error reply, and the connection stays (so does the daemon,
whatever the handler raises). `ikeoffloadctl CMD [--json]` prints the result object as JSON, or
a readable form in the style of swanctl's; initiate, terminate and rekey wait for the outcome
(`--timeout`). Exit codes: 0 done, 1 refused or failed, 2 bad usage or no daemon, 3 no outcome
within the timeout (the action goes on in the daemon).
"""
import argparse
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
from host.logs import LEVELS as LOG_LEVELS
from host.logs import format_record

log = logging.getLogger("ikeoffloadd.control")
DEFAULT_SOCKET = "/run/ikeoffload/control.sock"
NUMBER = (int, float)
# command -> {field: type}; the fields each command needs
FIELDS = {"list-sas": {}, "list-conns": {}, "list-boards": {}, "stats": {}, "reload": {},
          "initiate": {"conn": str, "child": str, "timeout": NUMBER},
          "terminate": {"conn": str, "ike_id": int, "child_id": int, "timeout": NUMBER},
          "rekey": {"conn": str, "ike_id": int, "child_id": int, "timeout": NUMBER},
          "flush-board": {"board": str}, "log": {"level": str}, "ha": {"state": str}}
NEEDS = {"initiate": ("conn",), "flush-board": ("board",)}
COMMANDS = tuple(FIELDS)
TYPE_NAMES = {str: "a string", int: "an integer", NUMBER: "a number"}
EXIT_TIMEOUT = 3
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
    if cmd in ("terminate", "rekey") and sum(req.get(k) is not None for k in ("conn", "ike_id", "child_id")) != 1:
        raise ValueError("%s needs one of conn, ike_id, child_id" % cmd)
    t = req.get("timeout")
    if t is not None and not 0 <= t <= 3600:
        raise ValueError("%s: timeout must be within 0..3600 seconds" % cmd)
    if cmd == "log" and req.get("level") not in (None,) + LOG_LEVELS:
        raise ValueError("log: level must be one of %s" % ", ".join(LOG_LEVELS))
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
                    result = await self.handler(req)
                    if hasattr(result, "__aiter__"):
                        await self._stream(reader, writer, result)
                        break
                    reply = {"ok": True, "result": result}
                except TimeoutError as e:
                    reply = {"ok": False, "error": str(e), "timeout": True}
                except KeyError as e:
                    reply = {"ok": False, "error": e.args[0] if e.args else str(e)}
                except (ValueError, LookupError) as e:
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

    async def _stream(self, reader, writer, items):
        """A following command (`log`): its items, one line each, until the client goes. The
        source yields None now and then so that a client that went is noticed in quiet times."""
        gone = asyncio.ensure_future(reader.read())
        try:
            writer.write(b'{"ok": true, "stream": true}\n')
            await writer.drain()
            async for item in items:
                if gone.done():
                    break
                if item is not None:
                    writer.write((json.dumps({"event": item}, default=str) + "\n").encode())
                    await writer.drain()
        finally:
            gone.cancel()
            await items.aclose()

    async def close(self):
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            try:
                if os.stat(self.path).st_ino == self._inode:     # ours, not a successor's
                    os.unlink(self.path)
            except FileNotFoundError:
                pass


def follow(path, request):
    """A following request (`log`): connects and checks the daemon's first answer at once (so an
    unreachable daemon or a refused request raises here), then returns an iterator of the events
    until the daemon closes the connection; closing the iterator closes the connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        f = s.makefile("rb")
        first = json.loads(f.readline() or b"{}")
        if not first.get("ok"):
            raise LookupError(first.get("error", "the daemon closed the connection"))
    except BaseException:
        s.close()
        raise
    return _events(s, f)


def _events(s, f):
    try:
        for line in f:
            msg = json.loads(line)
            if "event" not in msg:
                raise LookupError(msg.get("error", "the daemon ended the stream"))
            yield msg["event"]
    finally:
        f.close()
        s.close()


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
        link, hb = b.get("link"), b.get("heartbeats")
        if link:
            dropped = ", ".join("%s %d" % kv for kv in sorted(link["frames_dropped"].items()) if kv[1])
            out.append("  link: %d frames in, %d requests sent, %d retried, %d failed; dropped: %s" % (
                link["frames"], link.get("sent", 0), link["retries"], link["failed"], dropped or "none"))
        if hb:
            srtt = "%.2f ms" % hb["srtt_ms"] if hb["srtt_ms"] is not None else "-"
            out.append("  heartbeats: %d sent, %d probes, %d periods missed, smoothed RTT %s" % (
                hb["sent"], hb["probes"], hb["missed"], srtt))
        loss = b.get("last_loss")
        if loss:
            out.append("  last loss %s: %s (%s), %d IKE SAs flushed" % (
                _ago(loss.get("at"), now), loss["reason"], loss.get("detail", ""), loss.get("ike_sas_flushed", 0)))
        out.append("  losses %d" % b.get("losses", 0))
    return "\n".join(out) if out else "no boards"


def _secs(v):
    return ("%gs" % v) if v else "off"


def format_conns(conns):
    """`swanctl --list-conns` style."""
    out = []
    for c in conns:
        out.append("%s: IKEv2, %s, rekeying every %s, reauthentication %s, dpd delay %s (%s), start %s%s" % (
            c["name"], "UDP-encapsulated ESP" if c["encap"] else "ESP", _secs(c["rekey_time"]),
            _secs(c["reauth_time"]), _secs(c["dpd_delay"]), c["dpd_action"], c["start_action"],
            ", IKE SAs " + " ".join("#%d" % i for i in c["ike_sas"]) if c["ike_sas"] else ""))
        out.append("  local:  %s[%d]" % (",".join(c["local_addrs"]) or "%any", c["local_port"]))
        out.append("  remote: %s[%d]" % (",".join(c["remote_addrs"]) or "%any", c["remote_port"]))
        out.append("  proposals: %s" % ", ".join(c["proposals"]))
        for side in ("local", "remote"):
            a = c[side]
            out.append("  %s %s authentication: id %s%s" % (
                side, "pre-shared key" if a["auth"] == "psk" else "public key", a["id"],
                ", cert %s" % a["cert"] if a.get("cert") else "",
            ) + (", CAs %s" % "; ".join(a["cacerts"]) if a.get("cacerts") else ""))
        for ch in c["children"]:
            out.append("  %s: %s, rekeying every %s, start %s, close %s" % (
                ch["name"], ch["mode"].upper(), _secs(ch["rekey_time"]), ch["start_action"], ch["close_action"]))
            out.append("    local:  %s" % " ".join(ch["local_ts"]))
            out.append("    remote: %s" % " ".join(ch["remote_ts"]))
            out.append("    esp: %s" % ", ".join(ch["esp_proposals"]))
    return "\n".join(out) if out else "no connections"


def format_reload(r):
    out = []
    for what in ("connections", "boards"):
        parts = ["%d %s%s" % (len(r[what][k]), k, " (%s)" % ", ".join(r[what][k]) if r[what][k] else "")
                 for k in ("unchanged", "changed", "added", "removed")]
        out.append("%s: %s" % (what, ", ".join(parts)))
    out.append("IKE SAs: %d deleted, %d flushed with their board, %d initiated" % (
        len(r["ike_sas_deleted"]), len(r["ike_sas_flushed"]), len(r["ike_sas_initiated"])))
    if r["restart_needed"]:
        out.append("kept as running until the next start: %s" % ", ".join(r["restart_needed"]))
    return "\n".join(out)


def format_outcome(cmd, r):
    if cmd == "initiate":
        if not r.get("established"):
            return "initiating %s as IKE SA #%d" % (r["conn"], r["ike_id"])
        return "IKE SA %s #%d established%s" % (
            r["conn"], r["ike_id"], ", Child SA %s #%d installed" % (r["child"], r["handle"]) if "child" in r else "")
    if cmd == "terminate":
        if "terminated_child" in r:
            return "Child SA #%d of IKE SA #%d deleted" % (r["terminated_child"], r["ike_id"])
        return "IKE SA(s) %s deleted" % ", ".join("#%d" % i for i in r["terminated"])
    if "rekeyed_child" in r:
        return "Child SA #%d rekeyed: now #%d" % (r["rekeyed_child"], r["new_handle"])
    if "rekeyed" in r:
        return "\n".join("IKE SA #%s rekeyed: now #%d" % kv for kv in r["rekeyed"].items())
    return "rekeying %s" % (r.get("rekeying_child") or ", ".join("#%d" % i for i in r.get("rekeying", [])))


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


def _parser():
    # --json and --socket are taken before or after the command: no default on either parser (the
    # parsers share these actions, and a subcommand's default would reset what came before it)
    common = cli.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON (log: one object a line)")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="control socket (default %s)" % DEFAULT_SOCKET)
    ap = cli.ArgumentParser(prog="ikeoffloadctl", description="Control a running ikeoffloadd.", parents=[common])
    ap.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def cmd(name, help_):
        return sub.add_parser(name, help=help_, parents=[common])

    def wait(p):
        p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="wait at most S seconds for the outcome (0: do not wait; default %(default)s); "
                            "exit code 3 if none came")
    cmd("list-sas", "IKE and Child SAs with their board and counters")
    cmd("list-conns", "the loaded connections, as configured")
    cmd("list-boards", "boards: boot id, uptime, SAs, link and heartbeat counters, last loss")
    cmd("stats", "daemon counters")
    p = cmd("initiate", "bring up a connection; waits until its Child SA is installed")
    p.add_argument("conn")
    p.add_argument("--child", help="the Child SA to negotiate (default: the connection's first)")
    wait(p)
    for name, help_ in (("terminate", "delete a connection's IKE SAs, one IKE SA or one Child SA; waits until gone"),
                        ("rekey", "rekey a connection's IKE SAs, one IKE SA or one Child SA; waits for the new one")):
        p = cmd(name, help_)
        p.add_argument("conn", nargs="?")
        p.add_argument("--ike-id", type=int)
        p.add_argument("--child-id", type=int, help="a Child SA's handle (list-sas shows it after #)")
        wait(p)
    p = cmd("flush-board", "treat a board as lost: flush its IKE SAs, re-establish")
    p.add_argument("board")
    cmd("reload", "load the configuration file again (as SIGHUP): unchanged tunnels keep running")
    p = cmd("log", "follow the daemon's log (Ctrl-C ends)")
    p.add_argument("--level", choices=LOG_LEVELS, help="only records at this level or above")
    p = cmd("ha", "active/standby: keepalived's notify (master, backup, fault, stop), its track script "
            "(check: exit 1 unless this router can be active), or the status")
    p.add_argument("state", nargs="?", choices=HA_VERBS)
    return ap


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None) or os.environ.get("IKEOFFLOAD_SOCKET", DEFAULT_SOCKET)
    req = {"cmd": args.cmd}
    if args.cmd == "ha" and args.state not in (None, "check", "status"):
        req["state"] = args.state
    for k in ("conn", "board", "ike_id", "child_id", "child", "timeout", "level"):
        if getattr(args, k, None) is not None:
            req[k] = getattr(args, k)
    if args.cmd in ("terminate", "rekey"):
        given = [k for k in ("conn", "ike_id", "child_id") if req.get(k) is not None]
        if len(given) != 1:
            ap.error("%s needs a connection name or --ike-id or --child-id (one of them)" % args.cmd)
    if args.cmd == "log":
        return _follow(args, req)
    try:
        # keepalived's track script: a daemon that does not answer within HA_CHECK_TIMEOUT is hung
        timeout = HA_CHECK_TIMEOUT if args.cmd == "ha" and args.state == "check" else req.get("timeout", 30.0) + 30.0
        reply = call(args.socket, req, timeout=timeout)
    except (OSError, ValueError) as e:
        print("ikeoffloadctl: cannot reach ikeoffloadd at %s: %s" % (args.socket, e), file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print("ikeoffloadctl: %s" % reply.get("error"), file=sys.stderr)
        return EXIT_TIMEOUT if reply.get("timeout") else 1
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
    elif args.cmd == "list-conns":
        print(format_conns(result))
    elif args.cmd == "list-boards":
        print(format_boards(result))
    elif args.cmd == "reload":
        print(format_reload(result))
    elif args.cmd in ("initiate", "terminate", "rekey"):
        print(format_outcome(args.cmd, result))
    elif args.cmd == "ha":
        print(format_ha(result))
    else:
        print(format_generic(result))
    return 0


def _follow(args, req):
    try:
        for item in follow(args.socket, req):
            print(json.dumps(item, sort_keys=True) if args.json else format_record(item), flush=True)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as e:
        print("ikeoffloadctl: cannot reach ikeoffloadd at %s: %s" % (args.socket, e), file=sys.stderr)
        return 2
    except LookupError as e:
        print("ikeoffloadctl: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
