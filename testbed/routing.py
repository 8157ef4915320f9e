"""The routing test bed: ikeoffloadd with a simulated board on one side, a peer — strongSwan charon
or a second ikeoffloadd with its own board — on the other, configured as a router owner would
(full tunnels, IPv6 outside and inside, on-demand tunnels, transport mode), and a tap that shows
what crosses the wire between them. Needs root.

    netns <p>a: ikeoffloadd   veth 192.0.2.1/24, 2001:db8::1/64   lo 198.51.100.1, 2001:db8:a::1
    netns <p>b: the peer      veth 192.0.2.2/24, 2001:db8::2/64   lo 203.0.113.1, 2001:db8:b::1

Only documentation addresses (RFC 5737, RFC 3849). The daemon is the router: its namespace's own
traffic toward the remote networks is what "the router's own traffic" means here.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

from firmware import profiles
from host.config import DaemonConfig
from testbed import charon as charon_mod
from testbed import process
from testbed.demo import PSK, ROOT, DemoBed
from testbed.netns import VethPair, cleanup_stale, entered, run, unique_prefix

OUTER = {4: ("192.0.2.1", "192.0.2.2"), 6: ("2001:db8::1", "2001:db8::2")}
INNER_A = {4: "198.51.100.1", 6: "2001:db8:a::1"}
INNER_B = {4: "203.0.113.1", 6: "2001:db8:b::1"}
OUR_ID, PEER_ID = "gw-a.ikeoffload.test", "gw-b.ikeoffload.test"
IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"


def toml_list(items):
    return "[%s]" % ", ".join('"%s"' % i for i in items)


def daemon_config(*, control, listen, boards, conn, local_id, remote_id, log_level="info"):
    """An ikeoffloadd configuration: ``boards`` [(name, profile, port, link key or None)];
    ``conn``: local, remote (addresses), ike (dict of connection keys), children {name: dict}."""
    lines = ["[daemon]", 'control_socket = "%s"' % control, 'log_level = "%s"' % log_level,
             "listen = %s" % toml_list(listen), "", "[dataplane]", 'tun = "ikeo0"', "",
             "[ike.retransmit]", "timeout = 1.0", "base = 1.8", "tries = 3", ""]
    for name, profile, port, key in boards:
        lines += ["[[board]]", 'name = "%s"' % name, 'profile = "%s"' % profile, 'port = "%s"' % port]
        if key:
            lines.append('link_key = "%s"' % key)
        lines.append("")
    lines += ["[connections.gw]", 'local_addrs = ["%s"]' % conn["local"], 'remote_addrs = ["%s"]' % conn["remote"],
              'proposals = ["%s"]' % IKE_PROPOSAL, 'psk = "%s"' % PSK]
    for k, v in conn.get("ike", {}).items():
        lines.append("%s = %s" % (k, '"%s"' % v if isinstance(v, str) else v))
    lines += ["[connections.gw.local]", 'auth = "psk"', 'id = "%s"' % local_id,
              "[connections.gw.remote]", 'auth = "psk"', 'id = "%s"' % remote_id]
    for name, ch in conn["children"].items():
        lines.append("[connections.gw.children.%s]" % name)
        for k, v in ch.items():
            lines.append("%s = %s" % (k, toml_list(v) if isinstance(v, list) else '"%s"' % v if isinstance(v, str)
                                      else v))
    return "\n".join(lines) + "\n"


class Tap(threading.Thread):
    """Every IP packet on interface ``ifname`` of namespace ``ns``, either way: (time, version,
    protocol, src, dst, sport, dport, first 8 payload bytes, payload length) — what an observer
    on the wire sees (the payload: what follows the UDP header, or the IP header otherwise)."""

    def __init__(self, ns, ifname):
        super().__init__(daemon=True)
        with entered(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
            self.sock.bind((ifname, 0x0003))
        self.sock.settimeout(0.05)
        self.seen = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            rec = self._parse(data, addr[1])
            if rec is not None:
                self.seen.append(rec)

    @staticmethod
    def _parse(p, ethertype):
        if ethertype == 0x0800 and len(p) >= 20:
            proto, off, fam = p[9], (p[0] & 0x0F) * 4, socket.AF_INET
            src, dst = socket.inet_ntop(fam, p[12:16]), socket.inet_ntop(fam, p[16:20])
        elif ethertype == 0x86DD and len(p) >= 40:
            proto, off, fam = p[6], 40, socket.AF_INET6
            src, dst = socket.inet_ntop(fam, p[8:24]), socket.inet_ntop(fam, p[24:40])
        else:
            return None
        sport = dport = None
        body = p[off:]
        if proto in (6, 17) and len(body) >= 8:
            sport, dport = struct.unpack("!HH", body[:4])
            body = body[8:] if proto == 17 else body
        return (time.monotonic(), 4 if fam == socket.AF_INET else 6, proto, src, dst, sport, dport, bytes(body[:8]),
                len(body))

    def stop(self):
        self._halt.set()
        self.join(2)
        self.sock.close()


class RoutingBed(DemoBed):
    """One connection "gw", child "net", between ikeoffloadd in <p>a and the peer in <p>b.

    outer: the IKE/ESP address family (4 or 6); listen: our listen addresses (default: the outer
    one); ours / theirs: (local_ts, remote_ts) lists of each side; start_action: ours; mode:
    tunnel or transport; peer: "charon" or "ours" (a second ikeoffloadd with its own board);
    child_rekey / ike_rekey: our rekey times (s, 0: never); dpd, peer_dpd: our and the peer's
    dpd_delay (s; the peer's defaults to ours)."""

    def __init__(self, *, ours, theirs, outer=4, listen=None, start_action="start", mode="tunnel", peer="charon",
                 child_rekey=0, ike_rekey=0, dpd=0, peer_dpd=None, profile="sim", quiet=True, log_level="info"):
        super().__init__(quiet=quiet, profile=profile, log_level=log_level)
        self.outer = outer
        self.our_ip, self.peer_ip = OUTER[outer]
        self.listen = listen or [self.our_ip]
        self.ours, self.theirs = ours, theirs
        self.start_action, self.mode, self.peer = start_action, mode, peer
        self.child_rekey, self.ike_rekey, self.dpd = child_rekey, ike_rekey, dpd
        self.peer_dpd = dpd if peer_dpd is None else peer_dpd
        self.peer_daemon = None
        self.extra_charons = []
        self.peer_control = os.path.join(self.state, "peer.sock")
        self.peer_log = os.path.join(self.state, "peer.log")

    # ---- set up -------------------------------------------------------------------------------
    def start(self):
        cleanup_stale("ikr")
        self.net = VethPair(unique_prefix("ikr"), OUTER[4][0], OUTER[4][1],
                            lo_a=[INNER_A[4], INNER_A[6] + "/128"], lo_b=[INNER_B[4], INNER_B[6] + "/128"])
        for ns, ifn, a in ((self.net.ns_a, self.net.if_a, OUTER[6][0]), (self.net.ns_b, self.net.if_b, OUTER[6][1])):
            run("ip", "-n", ns, "addr", "add", a + "/64", "dev", ifn, "nodad")
        self.start_sim(0)
        if self.peer == "charon":
            level = int(os.environ.get("CHARON_LOGLEVEL", "1"))
            self.charon = charon_mod.Charon(self.net.ns_b, os.path.join(self.state, "c"), loglevel=level)
            self.charon.start()
            self.charon.load_psk(PSK, [OUR_ID, PEER_ID])
            self._charon_v6_default_route()
            self.charon.load_conn("gw", self._charon_conn())
        else:
            self.start_sim(1)
            self._start_peer_daemon()
        self.write_config()
        self.start_daemon()

    def _charon_v6_default_route(self):
        """charon 5.9.8's kernel-libipsec installs no route for a ::/0 remote selector (it logs
        "using host %any6" and stops), while it does for 0.0.0.0/0, with an exclude route for
        the peer: the bed adds both for it, as an operator of that charon would."""
        if "::/0" not in self.theirs[1]:
            return
        ns = self.net.ns_b
        if self.outer == 6:
            run("ip", "-n", ns, "-6", "route", "add", "throw", self.our_ip, "table", "220")
        run("ip", "-n", ns, "-6", "route", "add", "::/0", "dev", "ipsec0", "table", "220")

    def _esp(self):
        return list(self.esp_proposals)

    def _charon_conn(self):
        local_ts, remote_ts = self.theirs
        child = {"local_ts": local_ts, "remote_ts": remote_ts, "esp_proposals": self._esp(), "mode": self.mode,
                 "start_action": "none", "rekey_time": "0", "life_time": "0", "rand_time": "0"}
        return {"version": "2", "local_addrs": [self.peer_ip], "remote_addrs": [self.our_ip],
                "proposals": [IKE_PROPOSAL], "encap": "yes", "mobike": "no", "rekey_time": "0",
                "reauth_time": "0", "dpd_delay": "%ds" % self.peer_dpd, "unique": "no",
                "local": {"auth": "psk", "id": PEER_ID}, "remote": {"auth": "psk", "id": OUR_ID},
                "children": {"net": child}}

    def _board(self, i, name):
        key = os.path.join(self.state, "b%d.key" % i) if profiles.link_auth(profiles.load(self.profile)) else None
        return (name, self.profile, self.sims[i][1], key)

    def _our_conn(self, local, remote, ts, start_action, rekeys=True):
        ike = {"start_action": start_action, "dpd_delay": self.dpd}
        if rekeys and self.ike_rekey:
            ike.update(rekey_time=self.ike_rekey, over_time=self.ike_rekey, rand_time=0)
        child = {"local_ts": ts[0], "remote_ts": ts[1], "esp_proposals": self._esp(), "mode": self.mode,
                 "rekey_time": self.child_rekey if rekeys else 0}
        if rekeys and self.child_rekey:
            child["rand_time"] = 0
        return {"local": local, "remote": remote, "ike": ike, "children": {"net": child}}

    def write_config(self):
        self.config = os.path.join(self.state, "ikeoffloadd.toml")
        with open(self.config, "w") as f:
            f.write(daemon_config(control=self.control, listen=self.listen, boards=[self._board(0, "b0")],
                                  conn=self._our_conn(self.our_ip, self.peer_ip, self.ours, self.start_action),
                                  local_id=OUR_ID, remote_id=PEER_ID, log_level=self.log_level))

    def _start_peer_daemon(self):
        path = os.path.join(self.state, "peer.toml")
        with open(path, "w") as f:
            f.write(daemon_config(control=self.peer_control, listen=[self.peer_ip], boards=[self._board(1, "b1")],
                                  conn=self._our_conn(self.peer_ip, self.our_ip, self.theirs, "none", rekeys=False),
                                  local_id=PEER_ID, remote_id=OUR_ID, log_level=self.log_level))
        self.peer_daemon = spawn_daemon(self.net.ns_b, path, self.peer_log, self.peer_control)

    def stop(self):
        try:
            for c in self.extra_charons:
                c.stop()
            if self.peer_daemon is not None:
                process.stop(self.peer_daemon, 10)
        finally:
            super().stop()

    # ---- observe ----------------------------------------------------------------------------------
    def ip(self, *args, ns=None):
        """`ip ARGS` in our namespace (or ``ns``): its output."""
        return run("ip", "-n", ns or self.net.ns_a, *args).stdout

    def routes(self, version):
        """Our routing table's routes of IP ``version``, as `ip route` lists them."""
        return self.ip("-%d" % version, "route", "show", "table", str(DaemonConfig.routing_table))

    def wait_routes(self, nets, timeout=5.0):
        """Until our table has a route to each of ``nets`` ({IP version: [networks as `ip route`
        names them, "default" for /0]}): routes follow an installed Child SA by a netlink round trip."""
        deadline = time.monotonic() + timeout
        while True:
            have = {v: self.routes(v).split() for v in nets}
            missing = [(v, n) for v in nets for n in nets[v] if n not in have[v]]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("no route to %s in table %d:\n%s%s" % (
                    missing, DaemonConfig.routing_table, have, self.log_tail()))
            time.sleep(0.02)

    def peer_log_tail(self, n=30):
        try:
            with open(self.peer_log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def spawn_daemon(ns, config, log_path, control, timeout=20):
    """ikeoffloadd with ``config`` in namespace ``ns``; returns once its control socket is there."""
    log = open(log_path, "a")
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "host", "--config", config],
                         stdout=log, stderr=log, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    log.close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(control):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("ikeoffloadd in %s did not start:\n%s" % (ns, open(log_path).read()[-3000:]))
        time.sleep(0.05)
    return p
