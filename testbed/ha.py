"""Two routers, active/standby with keepalived, and a strongSwan peer: the HA test bed. Needs root.

    netns <p>a: router A — ikeoffloadd (listen = the virtual address 192.0.2.1), its own sim
                board, keepalived (priority 150), 192.0.2.11 on the LAN, 198.51.100.1 behind it
    netns <p>b: router B — the same with priority 100, 192.0.2.12
    netns <p>p: charon (192.0.2.2), 203.0.113.1 behind it; its peer is 192.0.2.1
    netns <p>h: the LAN — a bridge joining the three

keepalived runs packaging/keepalived.conf (only interface, priority, preemption and paths are
substituted): VRRPv3 with 0.25 s adverts, the daemon's health file as its track file and
`ikeoffloadctl ha check` as its track script, the notify hooks calling `ikeoffloadctl ha <state>`.
A pinger in the peer's namespace sends an echo request every 20 ms to 198.51.100.1, which whichever
router is active answers through its tunnel.

Failure injections (``inject``): ``kill`` (ikeoffloadd of the active router, SIGKILL), ``link``
(its LAN link down), ``keepalived`` (its keepalived stopped), ``board`` (its board's process
killed: the board is gone, not reset).
"""
import argparse
import os
import signal
import subprocess
import sys
import time

from testbed import charon as charon_mod
from testbed import process
from testbed.demo import OUR_ID, OUR_INNER, OUR_IP, PEER_ID, PEER_INNER, PEER_IP, PSK, ROOT, DemoBed
from testbed.netns import Namespaces, cleanup_stale, run, unique_prefix
from testbed.ping import Pinger

KEEPALIVED = "/usr/sbin/keepalived"
EXAMPLE = os.path.join(ROOT, "packaging", "keepalived.conf")
ROUTER_IPS = {"a": "192.0.2.11", "b": "192.0.2.12"}
PRIORITIES = {"a": 150, "b": 100}
INJECTIONS = ("kill", "link", "keepalived", "board")
INJECTION_NAMES = {"kill": "ikeoffloadd killed (SIGKILL)", "link": "LAN link down",
                   "keepalived": "keepalived stopped", "board": "board gone (its process killed)"}


def available():
    return os.path.exists(KEEPALIVED) and charon_mod.available()


def ctl_command():
    """ikeoffloadctl as keepalived runs it (a full path; keepalived runs no shell)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ikeoffloadctl")
    return exe if os.path.exists(exe) else "%s -m host.control" % sys.executable


def format_timeline(tl, title, initiated=True):
    rows = [("failure injected", 0.0), ("standby told MASTER (keepalived notify)", tl["master"]),
            ("new IKE SA up, INITIAL_CONTACT sent" if initiated else "new IKE SA up (the peer initiated)",
             tl["ike_up"]), ("new Child SA on its board", tl["child_up"]),
            ("first ping reply through it", tl["first_reply"])]
    out = ["-- " + title]
    out += ["  %9s  %s" % ("-" if t is None else "%.0f ms" % t, what) for what, t in rows]
    out.append("  pings lost: %d (one every 20 ms)" % tl["lost"])
    return "\n".join(out)


class Router:
    def __init__(self, bed, name, board):
        self.bed, self.name, self.board = bed, name, board
        self.ns = bed.prefix + name
        self.ifname = bed.prefix + name + "0"
        self.control = os.path.join(bed.state, "%s.sock" % name)
        self.config = None
        self.daemon = self.keepalived = None
        self.log_path = os.path.join(bed.state, "ikeoffloadd-%s.log" % name)
        self.kalog_path = os.path.join(bed.state, "keepalived-%s.log" % name)
        self.health_path = os.path.join(bed.state, "ha-health-%s" % name)

    def start_daemon(self):
        if os.path.exists(self.control):
            os.unlink(self.control)
        log = open(self.log_path, "a")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "host", "--config", self.config],
            stdout=log, stderr=log, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        log.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(self.control):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ikeoffloadd %s did not start:\n%s" % (self.name, self.log_tail()))
            time.sleep(0.05)

    def keepalived_config(self, preempt=True):
        """packaging/keepalived.conf for this router."""
        text = open(EXAMPLE).read()
        ctl = ctl_command()
        subs = [("/opt/ikeoffload/bin/ikeoffloadctl", ctl), ("/run/ikeoffload/control.sock", self.control),
                ("/run/ikeoffload/ha-health", self.health_path),
                ("eth0", self.ifname), ("priority 150", "priority %d" % PRIORITIES[self.name])]
        if not preempt:
            subs.append(("# nopreempt", "nopreempt"))
        # keepalived refuses scripts under a directory others may write to; the checkout (and its
        # .venv) may be anywhere, unlike the root-owned /opt/ikeoffload/bin of an install
        subs.append(("    enable_script_security\n", ""))
        for old, new in subs:
            assert old in text, old
            text = text.replace(old, new)
        path = os.path.join(self.bed.state, "keepalived-%s.conf" % self.name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_keepalived(self, preempt=True):
        conf = self.keepalived_config(preempt)
        log = open(self.kalog_path, "a")
        d = self.bed.state
        self.keepalived = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, KEEPALIVED, "-n", "-l", "-D", "-G", "-P", "-f", conf,
             "-p", os.path.join(d, "ka-%s.pid" % self.name), "-r", os.path.join(d, "ka-%s-vrrp.pid" % self.name)],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def stop_keepalived(self):
        p, self.keepalived = self.keepalived, None
        if p is not None:
            process.stop(p)

    def stop_daemon(self, sig=signal.SIGTERM):
        if self.daemon is not None:
            process.stop(self.daemon, 10, sig)

    def ctl(self, cmd, **kw):
        from host.control import call
        reply = call(self.control, dict(cmd=cmd, **kw), timeout=5)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply["result"]

    def ha(self):
        try:
            return self.ctl("ha")
        except (OSError, RuntimeError, ValueError):
            return {}

    def has_vip(self):
        out = run("ip", "-n", self.ns, "-4", "-o", "addr", "show", "dev", self.ifname, check=False).stdout
        return (" %s/" % OUR_IP) in out

    def log_tail(self, n=40):
        out = []
        for p in (self.log_path, self.kalog_path):
            try:
                with open(p) as f:
                    out.append("== %s\n%s" % (p, "".join(f.readlines()[-n:])))
            except OSError:
                pass
        return "\n".join(out)


class HaBed(DemoBed):
    """``preempt``: the higher-priority router takes the address back when it returns. ``peer``:
    "charon", or "ikeoffloadd" (our own daemon with its own sim board in the peer's namespace).
    ``routers_start``: the routers initiate (start_action = start); else only the peer does (a hub
    that never dials out: after a failover the peer finds out by itself)."""

    def __init__(self, preempt=True, peer="charon", routers_start=True, peer_dpd=1, **kw):
        super().__init__(boards=3 if peer == "ikeoffloadd" else 2, quiet=True, **kw)
        self.preempt = preempt
        self.peer_kind, self.routers_start, self.peer_dpd = peer, routers_start, peer_dpd
        self.peer = None
        self.prefix = None
        self.routers = {}
        self.hub = None
        self.net = Namespaces()         # the hub's, the routers' and the peer's

    # ---- set up -----------------------------------------------------------------------------
    def start(self):
        cleanup_stale("ikh")
        self.prefix = unique_prefix("ikh")
        self.inner_a, self.inner_b = [OUR_INNER], [PEER_INNER]
        self._network()
        self.routers = {"a": Router(self, "a", 0), "b": Router(self, "b", 1)}
        for i in range(self.nboards):
            self.start_sim(i)
        if self.peer_kind == "charon":
            self.charon = charon_mod.Charon(self.peer_ns, os.path.join(self.state, "c"), loglevel=1)
            self.charon.start()
            self.charon.load_psk(PSK, [OUR_ID, PEER_ID])
            self.charon.load_conn("gw", self._charon_conn())
        else:
            self.peer = Router(self, "p", 2)
            self.peer.config = self.write_peer_config()
            self.peer.start_daemon()
        for r in self.routers.values():
            r.config = self.write_router_config(r)
            r.start_daemon()
        # a first, b once a is active: with nopreempt the first to time out would keep the address
        self.routers["a"].start_keepalived(self.preempt)
        deadline = time.monotonic() + 20
        while not self.routers["a"].ha().get("active"):
            if time.monotonic() > deadline:
                raise RuntimeError("router a did not become MASTER:\n" + self.logs())
            time.sleep(0.05)
        self.routers["b"].start_keepalived(self.preempt)
        while self.routers["b"].ha().get("state") != "backup":
            if time.monotonic() > deadline + 10:
                raise RuntimeError("router b did not become BACKUP:\n" + self.logs())
            time.sleep(0.05)

    def write_router_config(self, r):
        path = self.write_config(boards=[r.board], control=r.control, path=r.config or os.path.join(
            self.state, "ikeoffloadd-%s.toml" % r.name), extra=["[ha]", "enabled = true",
                                                                  'track_file = "%s"' % r.health_path, ""])
        if not self.routers_start:
            text = open(path).read()
            with open(path, "w") as f:
                f.write(text.replace('start_action = "start"', 'start_action = "none"'))
        return path

    def write_peer_config(self):
        """Our own daemon as the routers' peer: the mirror of their connection, initiating it when
        they do not, with a liveness check after ``peer_dpd`` seconds without inbound traffic; when
        they do not, it also opens the Child SA again when they delete it (``close_action``)."""
        _, dev, _ = self.sims[2]
        lines = ['[daemon]', 'control_socket = "%s"' % self.peer.control, 'log_level = "info"',
                 'listen = "%s"' % PEER_IP, '', '[dataplane]', 'tun = "ikeo0"', '',
                 '[ike.retransmit]', 'timeout = 1.0', 'base = 1.8', 'tries = 3', '',
                 '[[board]]', 'name = "p0"', 'profile = "%s"' % self.profile, 'port = "%s"' % dev]
        from firmware import profiles
        if profiles.link_auth(profiles.load(self.profile)):
            lines.append('link_key = "%s"' % os.path.join(self.state, "b2.key"))
        lines += ['', '[connections.gw]', 'local_addrs = ["%s"]' % PEER_IP, 'remote_addrs = ["%s"]' % OUR_IP,
                  'proposals = ["aes256gcm16-prfsha256-x25519"]', 'psk = "%s"' % PSK,
                  'start_action = "%s"' % ("none" if self.routers_start else "start"),
                  'dpd_delay = %d' % self.peer_dpd, 'dpd_action = "restart"',
                  '[connections.gw.local]', 'auth = "psk"', 'id = "%s"' % PEER_ID,
                  '[connections.gw.remote]', 'auth = "psk"', 'id = "%s"' % OUR_ID,
                  '[connections.gw.children.net0]', 'local_ts = ["%s/32"]' % PEER_INNER,
                  'remote_ts = ["%s/32"]' % OUR_INNER,
                  'esp_proposals = [%s]' % ", ".join('"%s"' % p for p in self.esp_proposals)]
        if not self.routers_start:
            # a router that leaves MASTER with its IKE SA still up Deletes it: only the peer can
            # bring the tunnel back, on the new active router (which initiates nothing)
            lines.append('close_action = "start"')
        lines.append('')
        path = os.path.join(self.state, "ikeoffloadd-p.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        return path

    def peer_sas(self):
        """(initiator SPI, responder SPI) in hex of every established IKE SA the peer holds."""
        if self.peer is not None:
            return [(s["spi_i"], s["spi_r"]) for s in self.peer.ctl("list-sas") if s["state"] == "ESTABLISHED"]
        return [(s["initiator-spi"].decode(), s["responder-spi"].decode()) for s in self.charon_sas()]

    def _network(self):
        p = self.prefix
        self.hub, self.peer_ns = p + "h", p + "p"
        for ns in (self.hub, p + "a", p + "b", self.peer_ns):
            self.net.add_netns(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for name, ns, addr, inner in (("a", p + "a", ROUTER_IPS["a"], OUR_INNER),
                                      ("b", p + "b", ROUTER_IPS["b"], OUR_INNER),
                                      ("p", self.peer_ns, PEER_IP, PEER_INNER)):
            inside, outside = p + name + "0", p + name.upper()
            run("ip", "link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside,
                "netns", self.hub)
            run("ip", "-n", self.hub, "link", "set", outside, "master", "br0")
            run("ip", "-n", self.hub, "link", "set", outside, "up")
            run("ip", "-n", ns, "addr", "add", addr + "/24", "dev", inside)
            run("ip", "-n", ns, "addr", "add", inner + "/32", "dev", "lo")
            run("ip", "-n", ns, "link", "set", inside, "up")

    def wait_active(self, name, timeout=20):
        """Router ``name`` is MASTER, its daemon active with a Child SA installed; returns its SAs."""
        r = self.routers[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sas = r.ctl("list-sas") if r.ha().get("active") else []
            except (OSError, RuntimeError):
                sas = []
            if any(c["state"] == "INSTALLED" for s in sas for c in s["children"]):
                return sas
            time.sleep(0.05)
        raise RuntimeError("router %s did not become active with a tunnel:\n%s" % (name, self.logs()))

    def active(self):
        return [n for n, r in self.routers.items() if r.ha().get("active")]

    def charon_sas(self):
        return [s for s in self.charon.list_sas() if s.get("state") == b"ESTABLISHED"]

    # ---- failure injections -----------------------------------------------------------------
    def inject(self, what, name="a"):
        """Break router ``name`` as ``what`` says (INJECTIONS); returns time.monotonic() of it."""
        r = self.routers[name]
        t = time.monotonic()
        if what == "kill":
            r.daemon.send_signal(signal.SIGKILL)
        elif what == "link":
            run("ip", "-n", r.ns, "link", "set", r.ifname, "down")
        elif what == "keepalived":
            r.keepalived.terminate()
        elif what == "board":
            self.sims[r.board][0].kill()
        else:
            raise ValueError(what)
        return t

    def repair(self, what, name="a"):
        """Undo ``inject``: the router can compete again."""
        r = self.routers[name]
        if what == "kill":
            r.daemon.wait()
            r.start_daemon()
        elif what == "link":
            run("ip", "-n", r.ns, "link", "set", r.ifname, "up")
        elif what == "keepalived":
            r.keepalived.wait()
            r.start_keepalived(self.preempt)
        elif what == "board":
            self.sims[r.board][0].wait()
            self.start_sim(r.board)      # a new pty: the daemon is restarted with its new port
            r.stop_daemon()
            r.config = self.write_router_config(r)
            r.start_daemon()

    # ---- the timeline of a failover --------------------------------------------------------
    def timeline(self, t0, pinger, new="b", settle=0.5):
        """Milliseconds from ``t0`` (the injection) to: the new router's daemon told MASTER, its IKE
        SA and Child SA up (from its list-sas), the first ping reply through it (the reply to the
        first echo sent after the last one lost: the first through the new path); pings lost."""
        hist = self.routers[new].ha().get("history", [])
        master = next((h["at"] for h in reversed(hist) if h["to"] == "master" and h["at"] >= t0), None)
        sas = self.routers[new].ctl("list-sas")
        wall = time.time() - time.monotonic()          # list-sas carries Unix times
        ike = min((s["established_at"] - wall for s in sas if s.get("established_at")), default=None)
        child = min((c["installed_at"] - wall for s in sas for c in s["children"] if c.get("installed_at")),
                    default=None)
        until = time.monotonic() - settle               # later echoes may still be on their way back
        lost = [st for seq, st in pinger.sent.items() if t0 < st < until and seq not in pinger.replies]
        rec = pinger.first_reply_sent_after(max(lost) if lost else t0)

        def ms(t):
            return None if t is None else (t - t0) * 1000
        return {"master": ms(master), "ike_up": ms(ike), "child_up": ms(child),
                "first_reply": ms(rec[1]) if rec else None, "lost": len(lost)}

    # ---- tear down --------------------------------------------------------------------------
    def stop_daemons(self):
        for r in self.routers.values():
            r.stop_keepalived()
        for r in list(self.routers.values()) + ([self.peer] if self.peer else []):
            r.stop_daemon()

    def logs(self):
        return "\n".join(r.log_tail() for r in self.routers.values()) + "\n== peer\n" + (
            self.charon.log_tail() if self.charon else self.peer.log_tail() if self.peer else "")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="inv demo --ha")
    ap.add_argument("--injection", choices=INJECTIONS, default="kill")
    ap.add_argument("--board", default="sim", help="the profile the simulated boards stand in for")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("inv demo --ha needs root (network namespaces, TUN, UDP port 500, keepalived)", file=sys.stderr)
        return 2
    if not available():
        print("inv demo --ha needs keepalived and strongSwan (./inv setup installs them)", file=sys.stderr)
        return 2
    print("== ikeoffload HA demo: two routers (ikeoffloadd + a simulated board, profile %s, + keepalived, "
          "VRRPv3 adverts every 0.25 s) sharing %s, strongSwan charon as their peer" % (args.board, OUR_IP))
    bed = HaBed(profile=args.board)
    ok = False
    try:
        bed.start()
        sas = bed.wait_active("a")
        print("router a is MASTER: IKE SA #%d (%s) to %s, Child SA %s on its board; router b is %s"
              % (sas[0]["ike_id"], sas[0]["proposal"], PEER_IP, sas[0]["children"][0]["name"],
                 bed.routers["b"].ha().get("state", "?").upper()))
        pinger = Pinger(bed.peer_ns, PEER_INNER, OUR_INNER)
        pinger.start()
        try:
            time.sleep(1.0)
            print("pinging %s -> %s every 20 ms from the peer: %d/%d echo replies"
                  % (PEER_INNER, OUR_INNER, len(pinger.replies), len(pinger.sent)))
            t0 = bed.inject(args.injection, "a")
            bed.wait_active("b", timeout=10)
            time.sleep(1.5)
            tl = bed.timeline(t0, pinger)
        finally:
            pinger.stop()
        print("\n" + format_timeline(tl, "failover: %s on router a" % INJECTION_NAMES[args.injection]))
        peer = bed.charon_sas()
        print("\ncharon now holds %d IKE SA(s) for the pair (the old one went with INITIAL_CONTACT); router b "
              "is %s, router a %s" % (len(peer), bed.routers["b"].ha().get("state", "?").upper(),
                                      (bed.routers["a"].ha().get("state") or "down").upper()))
        ok = tl["first_reply"] is not None and len(peer) == 1
    finally:
        bed.stop()
    print("\ntraffic back through the standby in %.0f ms" % tl["first_reply"] if ok else "\nNOT recovered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
