"""The scale testbed: a hub ikeoffloadd with hundreds of tunnels to peers at distinct addresses,
over several simulated boards with their own SA slot counts. Needs root.

    netns <p>a: ikeoffloadd at HUB (198.18.0.1), the hub's protected hosts 198.19.0.1 + i
    netns <p>b: one strongSwan charon standing in for every peer: peer k at 198.18.1.1 + k on the
                veth, with a connection of its own (its address, its identity); tunnel i's
                protected host 198.19.128.1 + i
    simulated boards: python -m firmware.sim --max-sas S, one per entry of ``boards``

Tunnel i is the daemon's connection ``t<i>``: one IKE SA with one Child SA from 198.19.0.1+i/32
to 198.19.128.1+i/32, to peer ``i % peers``. Addresses are RFC 2544's benchmarking range
(198.18.0.0/15), which nothing routes. The traffic check is testbed/probe.py: one ICMP echo
stream per tunnel, from one raw socket in namespace a.

One charon plays all the peers, so every IKE_SA_INIT it sees comes from the hub's one address;
each real branch would see one or a few half-open IKE SAs from the hub. With more than one peer
the bed raises charon's per-address half-open limits (block_threshold, cookie_threshold) to what
the hub may have in flight in all; with one peer charon keeps its defaults (5 half-open per
address), which the hub's pacing (host/ike/pacing.py) must respect.
"""
import ipaddress
import os
import subprocess
import time

from testbed import charon as charon_mod
from testbed.demo import PSK, ROOT, DemoBed
from testbed.netns import VethPair, cleanup_stale, unique_prefix

HUB = "198.18.0.1"
HUB_ID = "hub.scale.test"
FIRST_PEER = ipaddress.ip_address("198.18.1.1")
FIRST_INNER_A = ipaddress.ip_address("198.19.0.1")
FIRST_INNER_B = ipaddress.ip_address("198.19.128.1")
MAX_TUNNELS = 30000
# charon's half-open limits when it stands in for many peers (see the module's docstring): above
# the hub's 64 half-open IKE SAs in all (host/ike/pacing.py)
MANY_PEERS_HALF_OPEN = 256


def hosts(first, n):
    """n addresses from ``first`` on, skipping those ending in .0 or .255 (a /24's network and
    broadcast addresses: a peer there is unreachable once a /24 on the same link covers it)."""
    out, a = [], first
    while len(out) < n:
        if int(a) & 0xFF not in (0, 255):
            out.append(str(a))
        a += 1
    return out


def ip_batch(ns, lines):
    """Run many `ip` commands in namespace ``ns`` in one process (`ip -batch`)."""
    if lines:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                       capture_output=True)


class ScaleBed(DemoBed):
    def __init__(self, tunnels, peers=None, boards=(256,), *, log_level="info", quiet=True, charon_log=0, **kw):
        """tunnels: how many (connections, each one IKE SA with one Child SA); peers: how many
        distinct peer addresses they go to (default: one each); boards: each simulated board's
        SA slots (a Child SA takes two)."""
        if not 1 <= tunnels <= MAX_TUNNELS:
            raise ValueError("tunnels: 1..%d" % MAX_TUNNELS)
        super().__init__(boards=len(boards), log_level=log_level, conns=tunnels, quiet=quiet, **kw)
        self.npeers = tunnels if peers is None else peers
        self.charon_log = charon_log
        self.board_slots = list(boards)
        self.peer_ips = hosts(FIRST_PEER, self.npeers)
        self.inner_a = hosts(FIRST_INNER_A, tunnels)
        self.inner_b = hosts(FIRST_INNER_B, tunnels)

    def peer_of(self, i):
        return i % self.npeers

    def peer_id(self, k):
        return "p%d.scale.test" % k

    def sim_args(self, i):
        return ["--max-sas", str(self.board_slots[i])]

    def start(self, baseline=False):
        """Namespaces, boards, charon and the daemon; with ``baseline`` the boards stay silent
        until the daemon's RSS was read (``rss_baseline_kb``: configuration loaded, boards
        opened, no IKE SA yet — the connections start when a board is ready)."""
        cleanup_stale("iks")
        self.net = VethPair(unique_prefix("iks"), HUB, self.peer_ips[0])
        a, b = self.net.ns_a, self.net.ns_b
        ip_batch(b, ["route add 198.18.0.0/16 dev %s" % self.net.if_b]
                 + ["addr add %s/32 dev %s" % (p, self.net.if_b) for p in self.peer_ips[1:]]
                 + ["addr add %s/32 dev lo" % x for x in self.inner_b])
        ip_batch(a, ["route add 198.18.0.0/16 dev %s" % self.net.if_a]
                 + ["addr add %s/32 dev lo" % x for x in self.inner_a])
        for i in range(self.nboards):
            self.start_sim(i)
        many = self.npeers > 1
        self.charon = charon_mod.Charon(b, os.path.join(self.state, "c"), loglevel=self.charon_log, threads=16,
                                        half_open=MANY_PEERS_HALF_OPEN if many else None,
                                        ikesa_table=(1024, 16) if many else None)
        self.charon.start()
        self.charon.load_psk(PSK, [HUB_ID] + [self.peer_id(k) for k in range(self.npeers)])
        sess = self.charon.session()
        for k in range(self.npeers):
            sess.load_conn({"p%d" % k: self._peer_conn(k)})
        self.write_config()
        if baseline:        # the boards answer nothing until the daemon's RSS was read
            for i in range(self.nboards):
                self.sim(i, "hang")
        self.start_daemon()
        if baseline:
            time.sleep(0.3)
            self.rss_baseline_kb = self.daemon_rss_kb()
            for i in range(self.nboards):
                self.sim(i, "resume")

    def _peer_conn(self, k):
        children = {"t%d" % i: {"local_ts": ["%s/32" % self.inner_b[i]], "remote_ts": ["%s/32" % self.inner_a[i]],
                                "esp_proposals": list(self.esp_proposals), "mode": "tunnel", "start_action": "none",
                                "rekey_time": "0", "life_time": "0", "rand_time": "0"}
                    for i in range(k, self.nconns, self.npeers)}
        return {"version": "2", "local_addrs": [self.peer_ips[k]], "remote_addrs": [HUB],
                "proposals": ["aes256gcm16-prfsha256-x25519"], "encap": "yes", "mobike": "no",
                "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0", "unique": "no",
                "local": {"auth": "psk", "id": self.peer_id(k)}, "remote": {"auth": "psk", "id": HUB_ID},
                "children": children}

    def start_daemon(self):
        """The daemon, under cProfile if $IKEO_PROFILE names the output file."""
        prof = os.environ.get("IKEO_PROFILE")
        if not prof:
            return super().start_daemon()
        import sys
        self._log = open(self.daemon_log, "a")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns_a, sys.executable, "-m", "cProfile", "-o", prof, "-m", "host",
             "--config", self.config], stdout=self._log, stderr=self._log, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT))
        while not os.path.exists(self.control):
            time.sleep(0.05)

    def write_config(self):
        from firmware import profiles
        lines = ['[daemon]', 'control_socket = "%s"' % self.control, 'log_level = "%s"' % self.log_level,
                 'listen = "%s"' % HUB, 'flush_on_board_loss = true', '', '[dataplane]', 'tun = "ikeo0"', '',
                 '[ike.retransmit]', 'timeout = 1.0', 'base = 1.8', 'tries = 3', '']
        for i, (_, dev, _) in enumerate(self.sims):
            lines += ['[[board]]', 'name = "b%d"' % i, 'profile = "%s"' % self.profile, 'port = "%s"' % dev]
            if profiles.link_auth(profiles.load(self.profile)):
                lines.append('link_key = "%s"' % os.path.join(self.state, "b%d.key" % i))
            lines.append('')
        esp = ", ".join('"%s"' % p for p in self.esp_proposals)
        for i in range(self.nconns):
            k = self.peer_of(i)
            lines += ['[connections.t%d]' % i, 'local_addrs = ["%s"]' % HUB,
                      'remote_addrs = ["%s"]' % self.peer_ips[k],
                      'proposals = ["aes256gcm16-prfsha256-x25519"]', 'psk = "%s"' % PSK, 'start_action = "start"',
                      '[connections.t%d.local]' % i, 'auth = "psk"', 'id = "%s"' % HUB_ID,
                      '[connections.t%d.remote]' % i, 'auth = "psk"', 'id = "%s"' % self.peer_id(k),
                      '[connections.t%d.children.t%d]' % (i, i), 'local_ts = ["%s/32"]' % self.inner_a[i],
                      'remote_ts = ["%s/32"]' % self.inner_b[i], 'esp_proposals = [%s]' % esp, '']
        self.config = os.path.join(self.state, "ikeoffloadd.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    # ---- observe ------------------------------------------------------------------------------
    def probe(self, interval=0.5, fast=0.05):
        from testbed.probe import TunnelProbe
        return TunnelProbe(self.net.ns_a, list(zip(self.inner_a, self.inner_b)), interval=interval, fast=fast)

    def watch_up(self, probe, timeout=60.0):
        """Watch every tunnel (the probe started here) until each answered an echo; returns
        {tunnel: seconds from the daemon starting its connections to its first answer}."""
        t = time.monotonic()
        everything = range(self.nconns)
        probe.watch(everything, t)
        if not probe.is_alive():
            probe.start()
        deadline = t + timeout
        while time.monotonic() < deadline and len(probe.up_after(everything, t)) < self.nconns:
            time.sleep(0.05)
        t0 = self.ctl("stats").get("connections_started_at") or t
        return {i: at - t0 for i, at in probe.up_after(everything, t).items()}

    def reset_board(self, probe, board, timeout=30.0, settle=1.5):
        """Reset simulated board ``board`` (its control socket) and watch its tunnels until each
        answered an echo sent after the reset. Returns a dict: ``mine`` / ``other`` (the
        tunnels on that board / the others), ``back`` {tunnel: seconds from the reset to its
        answer}, ``other_sent`` / ``other_lost`` (echoes on the other tunnels meanwhile, given
        ``settle`` seconds to be answered) and ``incident`` (the daemon's timeline of the loss)."""
        by_board = self.tunnels_by_board()
        name = "b%d" % board
        mine = by_board.get(name, [])
        other = [i for b, ts in by_board.items() if b != name for i in ts]
        before = len(self.ctl("stats")["incidents"])
        t_reset = time.monotonic()
        probe.watch(mine, t_reset)
        self.sim(board, "reset")
        deadline = t_reset + timeout
        while time.monotonic() < deadline and len(probe.up_after(mine, t_reset)) < len(mine):
            time.sleep(0.02)
        t_end = time.monotonic()
        back = {i: at - t_reset for i, at in probe.up_after(mine, t_reset).items()}
        time.sleep(settle)
        incs = self.ctl("stats")["incidents"]
        return {"board": name, "mine": mine, "other": other, "back": back, "t_reset": t_reset, "t_end": t_end,
                "incident": incs[before] if len(incs) > before else {},
                "other_sent": probe.sent_between(other, t_reset, t_end),
                "other_lost": probe.lost(other, t_reset, t_end)}

    def tunnels_by_board(self):
        """board name -> the tunnels (indexes) whose Child SA is installed there."""
        out = {}
        for s in self.ctl("list-sas"):
            if s.get("conn", "").startswith("t") and any(c["state"] == "INSTALLED" for c in s["children"]):
                out.setdefault(s["board"], []).append(int(s["conn"][1:]))
        return out

    def daemon_pid(self):
        """The daemon's own pid (``ip netns exec`` execs it, so it is the Popen's)."""
        return self.daemon.pid

    def daemon_rss_kb(self):
        with open("/proc/%d/status" % self.daemon_pid()) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def daemon_cpu(self):
        with open("/proc/%d/stat" % self.daemon_pid()) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
