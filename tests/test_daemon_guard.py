"""A second ikeoffloadd must not disturb the first. The first runs for real (its namespace, a
simulated board on a pty, strongSwan charon as the peer, pings through the tunnel); then second
daemons are started beside it — with the same configuration; with another control socket (same IKE
ports); with other socket and ports (same TUN device); with other socket, ports and TUN (same
board) — and each must stop at once with one line naming file, line and key, while the first keeps
its control socket, ports, board SAs and tunnel (no ping lost, the same SAs at charon and on the
board). Then start-up errors of a daemon: a listen address not on the host, a control socket path
that cannot be created, a TUN name another interface has: each names its setting, does not ask
root for root, and leaves no TUN device or rule behind. Needs root; CI runs it."""
import os
import re
import subprocess
import sys
import time

import pytest

from testbed.demo import DemoBed

pytestmark = [pytest.mark.strongswan,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bed():
    b = DemoBed(quiet=True)
    try:
        b.start()
        b.wait_tunnels()
        yield b
    finally:
        b.stop()


def run_daemon(bed, config, timeout=20):
    """Another ikeoffloadd in the first one's namespace; returns (exit code, its output lines)."""
    r = subprocess.run(["ip", "netns", "exec", bed.net.ns_a, sys.executable, "-m", "host", "--config", config],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                       timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip().splitlines()


def variant(bed, name, **replace):
    text = open(bed.config).read()
    for old, new in replace.items():
        old = old.replace("__", " = ")
        assert old in text, old
        text = text.replace(old, new)
    path = os.path.join(bed.state, name)
    with open(path, "w") as f:
        f.write(text)
    return path, text


def first_daemon_state(bed):
    sas = bed.ctl("list-sas")
    return {"control_inode": os.stat(bed.control).st_ino,
            "ike": sorted((s["ike_id"], s["spi_i"], s["spi_r"]) for s in sas),
            "children": sorted((c["spi_in"], c["spi_out"]) for s in sas for c in s["children"]),
            "board": sorted((s["spi"], s["dir"]) for s in bed.sim(0, "sad")["sas"]),
            "charon": sorted(s["_name"] for s in bed.charon.list_sas()),
            "boards_ready": [b["state"] for b in bed.ctl("list-boards")],
            "pid": bed.daemon.pid}


def line_of(text, marker):
    return text[:text.index(marker)].count("\n") + 1


def test_second_daemons_are_refused_and_the_first_keeps_everything(bed):
    bed.wait_tunnels()
    pinger = bed.start_pinger()
    try:
        deadline = time.monotonic() + 5
        while not pinger.replies and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pinger.replies, bed.log_tail()
        before = first_daemon_state(bed)
        t0 = time.monotonic()
        text = open(bed.config).read()

        # the same configuration: the instance lock
        code, out = run_daemon(bed, bed.config)
        assert code == 1 and len(out) == 1, out
        want = "%s:%d: daemon.control_socket: ikeoffloadd (pid %d) already runs with control socket %s" % (
            bed.config, line_of(text, "control_socket ="), bed.daemon.pid, bed.control)
        assert want in out[0], out

        # another control socket, the same IKE ports: refused at the port, before the TUN or a board
        other, text2 = variant(bed, "other-socket.toml", **{'control_socket__"%s"' % bed.control:
                                                           'control_socket = "%s"' % (bed.control + "2")})
        code, out = run_daemon(bed, other)
        assert code == 1 and len(out) == 1, out
        assert re.search(r"%s: ike\.port: UDP 192\.0\.2\.1 port 500 is in use" % re.escape(other), out[0]), out
        assert not os.path.exists(bed.control + "2")

        # other socket and ports, the same TUN device: it is the first daemon's
        other, text4 = variant(bed, "other-ports.toml", **{
            'control_socket__"%s"' % bed.control: 'control_socket = "%s"' % (bed.control + "4"),
            "[ike.retransmit]": "[ike]\nport = 1500\nnatt_port = 1501\n[ike.retransmit]"})
        code, out = run_daemon(bed, other)
        assert code == 1 and len(out) == 1, out
        assert "%s:%d: dataplane.tun: TUN device ikeo0 is in use" % (other, line_of(text4, 'tun = "ikeo0"')) \
            in out[0], out

        # other socket, ports and TUN, the same board: the board's port is locked
        other, text3 = variant(bed, "other-all.toml", **{
            'control_socket__"%s"' % bed.control: 'control_socket = "%s"' % (bed.control + "3"),
            'tun__"ikeo0"': 'tun = "ikeo9"\n', "[ike.retransmit]": "[ike]\nport = 1500\nnatt_port = 1501\n"
                                                                    "[ike.retransmit]"})
        code, out = run_daemon(bed, other)
        assert code == 1 and len(out) == 1, out
        assert "%s:%d: board[0].port: %s is held by another ikeoffloadd" % (
            other, line_of(text3, 'port = "%s"' % bed.sims[0][1]), bed.sims[0][1]) in out[0], out
        assert not os.path.exists("/sys/class/net/ikeo9")

        time.sleep(1.0)
        after = first_daemon_state(bed)
        assert after == before
        assert bed.daemon.poll() is None
        assert pinger.lost_between(t0, time.monotonic() - 0.5) == 0, pinger.summary()
        incidents = bed.ctl("stats")["incidents"]
        assert not [i for i in incidents if i["detected_at"] > t0], incidents
    finally:
        pinger.stop()


def test_runtime_errors_name_the_setting_and_change_nothing(bed):
    """Errors met when the daemon starts (not in the file's syntax) name file, line and key; as root
    they do not ask for root."""
    bed.wait_tunnels()
    bed.stop_daemon()
    try:
        sock = os.path.join(bed.state, "no", "such")
        open(os.path.join(bed.state, "no"), "w").close()          # a file where a directory must be
        cases = [
            ({'listen__"192.0.2.1"': 'listen = "192.0.2.77"', '["192.0.2.1"]': '["192.0.2.77"]'},
             "daemon.listen", 'listen = "192.0.2.77"', "192.0.2.77 is not an address of this host"),
            ({'control_socket__"%s"' % bed.control: 'control_socket = "%s"' % sock}, "daemon.control_socket",
             "control_socket =", "cannot create"),
            ({'tun__"ikeo0"': 'tun = "lo"'}, "dataplane.tun", 'tun = "lo"', "exists and is not a TUN device"),
        ]
        for i, (edits, key, marker, says) in enumerate(cases):
            path, text = variant(bed, "bad%d.toml" % i, **edits)
            code, out = run_daemon(bed, path)
            assert code == 1 and len(out) == 1, out
            assert "%s:%d: %s: " % (path, line_of(text, marker), key) in out[0] and says in out[0], out
            assert "root" not in out[0] and "Traceback" not in out[0], out
            # nothing was set up: no TUN device, no rule to its table
            links = subprocess.run(["ip", "-n", bed.net.ns_a, "-o", "link"], capture_output=True, text=True).stdout
            rules = subprocess.run(["ip", "-n", bed.net.ns_a, "rule"], capture_output=True, text=True).stdout
            assert "ikeo0" not in links and "lookup 220" not in rules, links + rules
    finally:
        bed.start_daemon()
        bed.wait_tunnels()


def test_ikeoffloadctl_refuses_unknown_ids_and_names(bed):
    sas = bed.wait_tunnels()
    env = dict(os.environ, PYTHONPATH=ROOT)
    for args, says in ((["terminate", "--ike-id", "999"], "no IKE SA #999"),
                       (["terminate", "--ike-id", "0"], "no IKE SA #0"),
                       (["terminate", "nosuchconn"], "no connection 'nosuchconn'"),
                       (["initiate", "nosuchconn"], "no connection"),
                       (["flush-board", "nosuchboard"], "no board")):
        r = subprocess.run([sys.executable, "-m", "host.control", "--socket", bed.control] + args,
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 1 and says in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    after = bed.ctl("list-sas")
    assert [s["ike_id"] for s in after] == [s["ike_id"] for s in sas]
