"""The demo (`inv demo`): ikeoffloadd + a simulated board + a strongSwan peer, a board reset mid-
traffic, and the recovery timeline. Needs root (network namespaces, TUN, port 500).

    netns <p>a: ikeoffloadd (192.0.2.1), protected host 198.51.100.1, TUN ikeo0
    netns <p>b: charon (192.0.2.2, kernel-libipsec), protected host 203.0.113.1
    simulated board(s): python -m firmware.sim on ptys (the daemon opens them from its netns)

A pinger in namespace a sends ICMP echo requests every 20 ms from 198.51.100.1 to 203.0.113.1
through the tunnel and timestamps every reply, so "recovered" means a reply came back through a
new Child SA. `DemoBed` is also what the daemon's integration tests use.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from firmware import profiles
from firmware.sim import control
from testbed import charon as charon_mod
from testbed import process
from testbed.netns import VethPair, cleanup_stale
from testbed.ping import Pinger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_IP, PEER_IP = "192.0.2.1", "192.0.2.2"
OUR_INNER, PEER_INNER = "198.51.100.1", "203.0.113.1"
OUR_ID, PEER_ID = "gw-a.ikeoffload.test", "gw-b.ikeoffload.test"
PSK = "demo-psk-7f3a9c2e5b8d1f4a6c0e9b2d"


# a profile's transform names (boards/*.toml [crypto] fast) as strongSwan ESP proposal keywords
SWAN_ESP = {"aes-gcm-16-128": "aes128gcm16", "aes-gcm-16-256": "aes256gcm16",
            "aes-cbc-128+hmac-sha2-256-128": "aes128-sha256", "aes-cbc-256+hmac-sha2-256-128": "aes256-sha256",
            "chacha20-poly1305": "chacha20poly1305",
            "aes-cbc-128+hmac-sha2-384-192": "aes128-sha384", "aes-cbc-256+hmac-sha2-384-192": "aes256-sha384",
            "aes-cbc-128+hmac-sha2-512-256": "aes128-sha512", "aes-cbc-256+hmac-sha2-512-256": "aes256-sha512"}


def esp_proposals_for(profile):
    """The ESP proposals a router owner would configure for a board: its fastest transform first."""
    from firmware import profiles
    fast = profiles.load(profile).get("crypto", {}).get("fast", [])
    names = [SWAN_ESP[n] for n in fast if n in SWAN_ESP]
    best = [n for n in names if n == "aes256gcm16"] + [n for n in names if n == "aes256-sha256"]
    return (best or names or ["aes256gcm16"])[:1]


class DemoBed:
    def __init__(self, boards=1, flush=True, log_level="info", conns=1, state=None, quiet=False, profile="sim",
                 peer_child_rekey=0, child_rekey=0, reauth=0, baud=None, esp_proposals=None, config=None,
                 charon_log_groups=None):
        """profile: the board profile the sims stand in for and the daemon's config names;
        baud: the sims' link rate (None: the profile's own); esp_proposals: both sides' ESP
        proposals (default: the profile's fast transforms, as a router owner would configure);
        config: config_text()'s arguments for the daemon's first configuration (default: every
        board and connection); charon_log_groups: charon's log levels by group (e.g. {"ike": 4})."""
        self.config_args = config or {}
        self.charon_log_groups = charon_log_groups
        self.nboards, self.flush, self.log_level, self.nconns = boards, flush, log_level, conns
        self.profile = profile
        self.baud = baud
        self.esp_proposals = esp_proposals or esp_proposals_for(profile)
        self.peer_child_rekey, self.child_rekey = peer_child_rekey, child_rekey   # seconds, 0: never
        self.reauth = reauth                    # our reauth_time, seconds, 0: never
        self.state = state or tempfile.mkdtemp(prefix="ikod", dir="/tmp")
        self.quiet = quiet
        self.net = self.charon = self.daemon = None
        self.sims = []
        self.daemon_log = os.path.join(self.state, "ikeoffloadd.log")
        self.control = os.path.join(self.state, "ctl.sock")

    def say(self, *a):
        if not self.quiet:
            print(*a, flush=True)

    # ---- set up -----------------------------------------------------------------------------
    def start(self):
        cleanup_stale("ikd")
        from testbed.netns import unique_prefix
        inner_a = [OUR_INNER] + ["198.51.100.%d" % (10 + i) for i in range(1, self.nconns)]
        inner_b = [PEER_INNER] + ["203.0.113.%d" % (10 + i) for i in range(1, self.nconns)]
        self.inner_a, self.inner_b = inner_a, inner_b
        self.net = VethPair(unique_prefix("ikd"), OUR_IP, PEER_IP, lo_a=inner_a, lo_b=inner_b)
        for i in range(self.nboards):
            self.start_sim(i)
        self.charon = charon_mod.Charon(self.net.ns_b, os.path.join(self.state, "c"), loglevel=0,
                                        log_groups=self.charon_log_groups)
        self.charon.start()
        self.charon.load_psk(PSK, [OUR_ID, PEER_ID])
        self.charon.load_conn("gw", self._charon_conn())
        self.write_config()
        self.start_daemon()

    def start_sim(self, i):
        ctl = os.path.join(self.state, "sim%d.ctl" % i)
        extra = ["--baud", str(self.baud)] if self.baud is not None else []
        key = os.path.join(self.state, "b%d.key" % i)       # the board's link key: kept across its restarts
        cmd = [sys.executable, "-m", "firmware.sim", "--profile", self.profile, "--control", ctl] + extra
        cmd += self.sim_args(i)
        if profiles.link_auth(profiles.load(self.profile)):
            cmd += ["--link-key", key]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT))
        dev = p.stdout.readline().split()[1]
        p.stdout.readline()
        p.stdout.readline()                                  # link-key: the path we gave
        if i < len(self.sims):
            self.sims[i] = (p, dev, ctl)
        else:
            self.sims.append((p, dev, ctl))

    def sim_args(self, i):
        """More command-line arguments for board i's simulator."""
        return []

    def _charon_conn(self):
        """One charon connection with a child per tunnel (charon picks a connection by address and
        identity, so several with the same ones would shadow each other)."""
        children = {"net%d" % i: {"local_ts": ["%s/32" % self.inner_b[i]], "remote_ts": ["%s/32" % self.inner_a[i]],
                                  "esp_proposals": list(self.esp_proposals), "mode": "tunnel", "start_action": "none",
                                  "rekey_time": "%ds" % self.peer_child_rekey,
                                  "life_time": "%ds" % (3 * self.peer_child_rekey), "rand_time": "0"}
                    for i in range(self.nconns)}
        return {"version": "2", "local_addrs": [PEER_IP], "remote_addrs": [OUR_IP],
                "proposals": ["aes256gcm16-prfsha256-x25519"], "encap": "yes", "mobike": "no",
                "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0", "unique": "no",
                "local": {"auth": "psk", "id": PEER_ID}, "remote": {"auth": "psk", "id": OUR_ID},
                "children": children}

    def config_text(self, conns=None, boards=None, daemon=(), conn_extra=None, control=None, extra=()):
        """The daemon's configuration: connections gw<i> for ``conns`` (default all), boards b<i>
        for ``boards`` (default every sim), more [daemon] lines, more lines for connection i, its
        control socket (default the bed's own), ``extra`` lines (e.g. an [ha] table)."""
        conns = range(self.nconns) if conns is None else conns
        boards = range(len(self.sims)) if boards is None else boards
        conn_extra = conn_extra or {}
        lines = ['[daemon]', 'control_socket = "%s"' % (control or self.control), 'log_level = "%s"' % self.log_level,
                 'listen = "%s"' % OUR_IP, 'flush_on_board_loss = %s' % ("true" if self.flush else "false")]
        lines += list(daemon) + ['', '[dataplane]', 'tun = "ikeo0"', '', '[ike.retransmit]', 'timeout = 1.0',
                                 'base = 1.8', 'tries = 3', ''] + list(extra)
        for i in boards:
            lines += ['[[board]]', 'name = "b%d"' % i, 'profile = "%s"' % self.profile, 'port = "%s"' % self.sims[i][1]]
            if profiles.link_auth(profiles.load(self.profile)):
                lines.append('link_key = "%s"' % os.path.join(self.state, "b%d.key" % i))
            lines.append('')
        for i in conns:
            lines += ['[connections.gw%d]' % i, 'local_addrs = ["%s"]' % OUR_IP, 'remote_addrs = ["%s"]' % PEER_IP,
                      'proposals = ["aes256gcm16-prfsha256-x25519"]', 'psk = "%s"' % PSK, 'start_action = "start"',
                      'reauth_time = %d' % self.reauth, 'rekey_time = %d' % (0 if self.reauth else 14400),
                      *conn_extra.get(i, ()),
                      '[connections.gw%d.local]' % i, 'auth = "psk"', 'id = "%s"' % OUR_ID,
                      '[connections.gw%d.remote]' % i, 'auth = "psk"', 'id = "%s"' % PEER_ID,
                      '[connections.gw%d.children.net%d]' % (i, i), 'local_ts = ["%s/32"]' % self.inner_a[i],
                      'remote_ts = ["%s/32"]' % self.inner_b[i],
                      'esp_proposals = [%s]' % ", ".join('"%s"' % p for p in self.esp_proposals),
                      'rekey_time = %d' % self.child_rekey, '']
        return "\n".join(lines)

    def write_config(self, path=None, control=None, **kw):
        """Write config_text(**kw) (default: the bed's first configuration) to ``path`` (default
        the daemon's file, which becomes the bed's when ``control`` is the bed's socket)."""
        kw = dict(kw or self.config_args)
        if control is not None:
            kw["control"] = control
        path = path or os.path.join(self.state, "ikeoffloadd.toml")
        with open(path, "w") as f:
            f.write(self.config_text(**kw))
        if (control or self.control) == self.control:
            self.config = path
        return path

    def start_daemon(self):
        self._log = open(self.daemon_log, "a")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns_a, sys.executable, "-m", "host", "--config", self.config],
            stdout=self._log, stderr=self._log, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        deadline = time.monotonic() + 20
        while not os.path.exists(self.control):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ikeoffloadd did not start:\n" + self.log_tail())
            time.sleep(0.05)

    def stop_daemon(self, sig=signal.SIGTERM):
        if self.daemon:
            process.stop(self.daemon, 10, sig)
        if os.path.exists(self.control) and sig == signal.SIGKILL:
            os.unlink(self.control)

    def stop_daemons(self):
        """Our side's daemons end (here the one ikeoffloadd; a bed with more ends them all)."""
        self.stop_daemon()

    def stop(self):
        """Everything the bed started ends and goes: the daemons, the sims, charon, the namespaces
        and the state directory."""
        try:
            self.stop_daemons()
        finally:
            for p, _, _ in self.sims:
                process.stop(p)
            if self.charon:
                self.charon.stop()
            if self.net:
                self.net.destroy()
            shutil.rmtree(self.state, ignore_errors=True)

    # ---- observe and act --------------------------------------------------------------------
    def ctl(self, cmd, **kw):
        from host.control import call
        reply = call(self.control, dict(cmd=cmd, **kw))
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply["result"]

    def start_pinger(self, i=0, **kw):
        """A started Pinger through tunnel ``i``: from its inner address on our side to the peer's
        (``kw``: Pinger's interval and count)."""
        p = Pinger(self.net.ns_a, self.inner_a[i], self.inner_b[i], **kw)
        p.start()
        return p

    def sim(self, i, cmd):
        return control(self.sims[i][2], cmd)

    def wait_tunnels(self, n=None, timeout=20):
        n = self.nconns if n is None else n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sas = self.ctl("list-sas")
            except (OSError, RuntimeError):
                sas = []
            up = [s for s in sas if any(c["state"] == "INSTALLED" for c in s["children"])]
            if len(up) >= n and self.routed(up):
                return sas
            time.sleep(0.05)
        raise RuntimeError("tunnels did not come up:\n" + self.log_tail())

    def routed(self, sas) -> bool:
        """Every remote selector of the installed Child SAs of ``sas`` has its route into the TUN
        device (they follow the install by a netlink round trip: traffic sent before is refused
        with "Network is unreachable")."""
        import ipaddress
        import json
        from host.config import DaemonConfig
        want = {ipaddress.ip_network(ts) for sa in sas for c in sa["children"] if c["state"] == "INSTALLED"
                for ts in c["remote_ts"]}
        have = set()
        for fam, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
            r = subprocess.run(["ip", "-j", "-n", self.net.ns_a, fam, "route", "show", "table",
                                str(DaemonConfig.routing_table)], capture_output=True, text=True)
            try:
                routes = json.loads(r.stdout or "[]")
            except ValueError:
                # a dump that the daemon's route changes interrupted ends after "[": look again
                return False
            have |= {ipaddress.ip_network(default if x["dst"] == "default" else x["dst"]) for x in routes}
        return want <= have

    def log_tail(self, n=30):
        try:
            with open(self.daemon_log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def reset_and_recover(self, pinger, board=0, wait=5.0, quiet=False):
        """Reset a board mid-traffic; returns the timeline (ms from the reset) or None."""
        before = len(self.ctl("stats")["incidents"])
        t_reset = time.monotonic()
        self.sim(board, "reset quiet" if quiet else "reset")
        deadline = t_reset + wait
        rec = None
        while time.monotonic() < deadline:
            rec = pinger.first_reply_sent_after(t_reset)
            if rec:
                break
            time.sleep(0.01)
        stats = self.ctl("stats")
        incs = stats["incidents"][before:]
        inc = incs[0] if incs else {}

        def ms(t):
            return None if t is None else (t - t_reset) * 1000
        tl = {"reset": 0.0, "detected": ms(inc.get("detected_at")), "flushed": ms(inc.get("flushed_at")),
              "deletes_sent": inc.get("deletes_sent"), "ike_sas_flushed": inc.get("ike_sas_flushed"),
              "board_ready": ms(inc.get("board_ready_at")), "new_ike_sa": ms(inc.get("ike_up_at")),
              "new_child_sa": ms(inc.get("child_up_at")), "reason": inc.get("reason"),
              "first_reply": ms(rec[1]) if rec else None,
              "lost_pings": pinger.lost_between(t_reset - 0.5, rec[0] if rec else time.monotonic()) if rec else None,
              "recovered": rec is not None}
        return tl


def print_timeline(tl, title):
    print("\n" + title)
    rows = [("board reset", tl["reset"]), ("loss detected (%s)" % tl["reason"], tl["detected"]),
            ("IKE SAs flushed: %s, Deletes sent: %s" % (tl["ike_sas_flushed"], tl["deletes_sent"]), tl["flushed"]),
            ("board ready again (HELLO, flushed)", tl["board_ready"]), ("new IKE SA established", tl["new_ike_sa"]),
            ("new Child SA installed on the board", tl["new_child_sa"]),
            ("first ping reply through the tunnel", tl["first_reply"])]
    for what, t in rows:
        print("  %8s  %s" % ("-" if t is None else "%.1f ms" % t, what))
    if tl["recovered"]:
        print("  pings lost: %d" % tl["lost_pings"])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="inv demo")
    ap.add_argument("--resets", type=int, default=3)
    ap.add_argument("--contrast-seconds", type=float, default=8.0)
    ap.add_argument("--no-contrast", action="store_true")
    ap.add_argument("--board", default="sim", help="the profile the simulated board stands in for: its "
                    "transforms, link rate and CPU (e.g. esp32-devkitc: a UART at 921600 baud)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("inv demo needs root (network namespaces, TUN, UDP port 500)", file=sys.stderr)
        return 2
    print("== ikeoffload demo: ikeoffloadd + simulated board (%s) + strongSwan charon in network namespaces"
          % args.board)
    bed = DemoBed(flush=True, profile=args.board)
    results = []
    try:
        bed.start()
        sas = bed.wait_tunnels()
        s = sas[0]
        print("tunnel up: IKE SA %s #%d (%s) on board %s, Child SA %s; pinging %s -> %s every 20 ms"
              % (s["conn"], s["ike_id"], s["proposal"], s["board"], s["children"][0]["name"], OUR_INNER, PEER_INNER))
        pinger = bed.start_pinger()
        time.sleep(1.0)
        assert pinger.replies, "no ping replies through the tunnel:\n" + bed.log_tail()
        print("traffic flowing: %d/%d echo replies" % (len(pinger.replies), len(pinger.sent)))
        for i in range(args.resets):
            tl = bed.reset_and_recover(pinger)
            results.append(tl)
            print_timeline(tl, "-- board reset %d of %d (flush_on_board_loss = true)" % (i + 1, args.resets))
            if not tl["recovered"]:
                break
            time.sleep(1.0)
        pinger.stop()
        print("\n-- ikeoffloadctl list-boards")
        from host.control import format_boards, format_sas
        print(format_boards(bed.ctl("list-boards")))
        print("\n-- ikeoffloadctl list-sas")
        print(format_sas(bed.ctl("list-sas")))
    finally:
        bed.stop()
    if not args.no_contrast and results and results[-1]["recovered"]:
        bed2 = DemoBed(flush=False, profile=args.board)
        try:
            bed2.start()
            bed2.wait_tunnels()
            pinger = bed2.start_pinger()
            time.sleep(1.0)
            tl = bed2.reset_and_recover(pinger, wait=args.contrast_seconds)
            pinger.stop()
            print("\n-- contrast: flush_on_board_loss = false, same reset")
            if tl["recovered"]:
                print("  recovered after %.0f ms" % tl["first_reply"])
            else:
                print("  NOT recovered within %.0f s: %d pings lost so far. The IKE SA lives on without its Child SAs;"
                      % (args.contrast_seconds, pinger.lost_between(0, time.monotonic())))
                print("  the peer keeps sending into SAs that no longer exist until its dead-peer detection gives up")
                print("  (strongSwan's defaults: ~165 s of retransmissions).")
        finally:
            bed2.stop()
    ok = bool(results) and all(t["recovered"] for t in results)
    if ok:
        med = statistics.median(t["first_reply"] for t in results)
        print("\nrecovered in %.0f ms" % med)
    else:
        print("\nNOT recovered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
