"""Running ikeoffloadd as a router owner does, end to end (the daemon in a network namespace,
simulated boards on ptys, a real strongSwan charon as the peer, real pings): a configuration
reload with swanctl --load-all semantics (connections and boards kept, removed, changed, added;
a bad file changes nothing), ikeoffloadctl at swanctl's level, the OpenMetrics endpoint after a
board reset, and the log of the whole run (every subsystem at debug) searched for key material.
Needs root; CI runs it.

The tests share one bed and run in order: each leaves the configuration the next one starts from.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from host.dataplane.datapath import DROP_REASONS
from testbed.demo import PSK, DemoBed

pytestmark = [pytest.mark.strongswan,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = "127.0.0.1:9466"           # inside the daemon's namespace
DAEMON = ['metrics = "%s"' % METRICS, 'log_levels = { ike = "debug", board = "debug", dataplane = "debug", '
          'control = "debug" }']
FIRST = dict(conns=[0, 1, 2], boards=[0], daemon=DAEMON)


@pytest.fixture(scope="module")
def bed():
    # charon logs the keys it derives (IKE: ike 4; Child SAs: chd 4): the last test looks for them in our log
    b = DemoBed(boards=2, conns=4, quiet=True, log_level="debug", config=FIRST,
                charon_log_groups={"ike": 4, "chd": 4})
    try:
        b.start()
        b.wait_tunnels(3)
        yield b
    finally:
        b.stop()


def ctl(bed, *args, code=0):
    r = subprocess.run([sys.executable, "-m", "host.control", "--socket", bed.control] + list(args),
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
    return r


def up(bed):
    """conn -> (IKE SA id, board) of the IKE SAs with an installed Child SA."""
    return {s["conn"]: (s["ike_id"], s["board"]) for s in bed.ctl("list-sas")
            if any(c["state"] == "INSTALLED" for c in s["children"])}


def wait(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        time.sleep(0.05)
    raise AssertionError("no %s within %.0f s" % (what, timeout))


def charon_children(bed):
    out = []
    for sa in bed.charon.list_sas():
        for child in sa.get("child-sas", {}).values():
            name = child["name"]
            out.append(name.decode() if isinstance(name, bytes) else name)
    return sorted(out)


def pinger(bed, i):
    p = bed.start_pinger(i)
    wait(lambda: p.replies, 5, "reply through gw%d" % i)
    return p


def test_reload_keeps_unchanged_tunnels_deletes_removed_reestablishes_changed_starts_added(bed):
    before = up(bed)
    assert sorted(before) == ["gw0", "gw1", "gw2"]
    p0, p2 = pinger(bed, 0), pinger(bed, 2)
    time.sleep(0.3)
    t0 = time.monotonic()
    # gw0 as it was, gw1 gone, gw2 with another dpd_delay, gw3 new
    bed.write_config(conns=[0, 2, 3], boards=[0], daemon=DAEMON, conn_extra={2: ["dpd_delay = 30"]})
    r = json.loads(ctl(bed, "reload", "--json").stdout)       # --json after the verb
    assert r["connections"] == {"unchanged": ["gw0"], "changed": ["gw2"], "added": ["gw3"], "removed": ["gw1"]}, r
    assert r["boards"]["unchanged"] == ["b0"] and r["restart_needed"] == []
    assert sorted(r["ike_sas_deleted"]) == sorted([before["gw1"][0], before["gw2"][0]])
    after = wait(lambda: (lambda u: u if sorted(u) == ["gw0", "gw2", "gw3"] and u["gw2"] != before["gw2"]
                          else None)(up(bed)), 10, "gw0, a new gw2 and gw3")
    assert after["gw0"] == before["gw0"]                                    # untouched
    wait(lambda: "net1" not in charon_children(bed), 5, "gw1's Child SA gone at charon")
    assert sorted(charon_children(bed)) == ["net0", "net2", "net3"]
    wait(lambda: p2.first_reply_sent_after(t0 + 0.05), 5, "traffic through the new gw2")
    p3 = pinger(bed, 3)
    time.sleep(0.6)
    for p in (p0, p2, p3):
        p.stop()
    lost = p0.lost_between(t0 - 0.3, p0.stopped_at - 0.5)
    print("\nreload: gw0 untouched lost %d of %d pings; gw2 back %.0f ms after the reload" % (
        lost, len(p0.sent), (p2.first_reply_sent_after(t0 + 0.05)[1] - t0) * 1000))
    assert lost == 0, "the untouched tunnel lost %d pings" % lost
    conns = {c["name"]: c for c in bed.ctl("list-conns")}
    assert sorted(conns) == ["gw0", "gw2", "gw3"] and conns["gw2"]["dpd_delay"] == 30
    assert "reloaded from" in bed.log_tail(400)


def test_a_bad_file_changes_nothing_and_says_where(bed):
    before, conns = up(bed), bed.ctl("list-conns")
    good = bed.config_text(conns=[0, 2, 3], boards=[0], daemon=DAEMON, conn_extra={2: ["dpd_delay = 30"]})
    bad = good.replace('name = "b0"', 'name = "b0"\nmisses = "three"').replace("[connections.gw0]", "")
    with open(bed.config, "w") as f:
        f.write(bad)
    line = bad.splitlines().index('misses = "three"') + 1
    r = ctl(bed, "reload", code=1)
    assert "%s:%d: board[0].misses: must be int" % (bed.config, line) in r.stderr, r.stderr
    with open(bed.config, "w") as f:            # not TOML at all, by SIGHUP (systemctl reload)
        f.write(good.replace("[dataplane]", "[dataplane"))
    bed.daemon.send_signal(signal.SIGHUP)
    wait(lambda: "reload refused" in bed.log_tail(50), 5, "the refusal in the log")
    assert re.search(r"reload refused, still running as before: %s:\d+: <toml>: " % re.escape(bed.config),
                     bed.log_tail(50)), bed.log_tail(50)
    time.sleep(0.5)
    # a board added on a port that cannot be a serial port: found before anything changes
    regular = os.path.join(bed.state, "not-a-tty")
    with open(regular, "w"):
        pass
    added = good.replace("[connections.gw0]", '[[board]]\nname = "b9"\nprofile = "%s"\nport = "%s"\nlink_key = "%s"\n\n'
                         '[connections.gw0]' % (bed.profile, regular, os.path.join(bed.state, "b0.key")), 1)
    assert 'name = "b9"' in added
    with open(bed.config, "w") as f:
        f.write(added)
    r = ctl(bed, "reload", code=1)
    where = added.splitlines().index('port = "%s"' % regular) + 1
    assert "%s:%d: board[1].port: %s is not a serial device" % (bed.config, where, regular) in r.stderr, r.stderr
    time.sleep(0.5)
    assert up(bed) == before and bed.ctl("list-conns") == conns
    assert [b["name"] for b in bed.ctl("list-boards")] == ["b0"]
    s = bed.ctl("stats")
    assert s["reload_failures"] == 3 and s["last_reload"]["ok"] is False
    with open(bed.config, "w") as f:
        f.write(good)


def test_reload_adds_and_removes_boards(bed):
    before = up(bed)
    assert {b for _, b in before.values()} == {"b0"}
    bed.write_config(conns=[0, 2, 3], boards=[0, 1], daemon=DAEMON, conn_extra={2: ["dpd_delay = 30"]})
    r = bed.ctl("reload")
    assert r["boards"]["added"] == ["b1"] and r["connections"]["unchanged"] == ["gw0", "gw2", "gw3"]
    wait(lambda: [b for b in bed.ctl("list-boards") if b["name"] == "b1" and b["state"] == "ready"], 10, "b1 ready")
    assert up(bed) == before
    # b0 goes (by SIGHUP): its IKE SAs are flushed as on a loss, peers told, tunnels back on b1
    bed.write_config(conns=[0, 2, 3], boards=[1], daemon=DAEMON, conn_extra={2: ["dpd_delay = 30"]})
    t0 = time.monotonic()
    bed.daemon.send_signal(signal.SIGHUP)
    after = wait(lambda: (lambda u: u if len(u) == 3 and {b for _, b in u.values()} == {"b1"} else None)(up(bed)),
                 10, "the tunnels on b1")
    print("\nboard b0 removed by a reload: 3 tunnels back on b1 in %.0f ms" % ((time.monotonic() - t0) * 1000))
    assert not set(i for i, _ in after.values()) & set(i for i, _ in before.values())
    assert [b["name"] for b in bed.ctl("list-boards")] == ["b1"]
    assert bed.sim(0, "sad")["sas"] == []                       # flushed on its way out
    wait(lambda: len(bed.charon.list_sas()) == 3, 5, "charon down to the 3 new IKE SAs")   # Deletes reached it
    inc = bed.ctl("stats")["incidents"][-1]
    assert inc["board"] == "b0" and inc["reason"] == "removed" and inc["ike_sas_flushed"] == 3
    assert inc["deletes_sent"] == 3


def test_ikeoffloadctl_at_swanctls_level(bed):
    sas = {s["conn"]: s for s in bed.ctl("list-sas")}
    human = ctl(bed, "list-conns").stdout
    assert "gw2: IKEv2" in human and "dpd delay 30s" in human and "203.0.113.12/32" in human
    conns = json.loads(ctl(bed, "list-conns", "--json").stdout)
    assert PSK not in json.dumps(conns)
    # follow the log while the rest happens
    follower = subprocess.Popen([sys.executable, "-m", "host.control", "--socket", bed.control, "log", "--json",
                                 "--level", "info"], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        time.sleep(0.3)
        # rekey waits for the successor
        old = sas["gw0"]["ike_id"]
        r = json.loads(ctl(bed, "--json", "rekey", "--ike-id", str(old)).stdout)
        new = r["rekeyed"][str(old)]
        assert new != old and up(bed)["gw0"][0] == new
        child = sas["gw3"]["children"][0]["handle"]
        assert "rekeyed: now #" in ctl(bed, "rekey", "--child-id", str(child)).stdout
        # terminate and initiate wait for the outcome
        assert "deleted" in ctl(bed, "terminate", "gw3", "--timeout", "10").stdout
        assert "gw3" not in up(bed) and "net3" not in charon_children(bed)
        r = ctl(bed, "initiate", "gw3", "--timeout", "10")
        assert "established" in r.stdout and "Child SA net3" in r.stdout and "gw3" in up(bed)
        r = ctl(bed, "initiate", "gw3", "--timeout", "0.001", code=3)       # no outcome yet: exit 3
        assert "no outcome within" in r.stderr
        wait(lambda: len([s for s in bed.ctl("list-sas") if s["conn"] == "gw3"]) == 2, 10, "the second gw3")
        assert "no IKE SA #999" in ctl(bed, "rekey", "--ike-id", "999", code=1).stderr
        assert "no Child SA #999" in ctl(bed, "terminate", "--child-id", "999", code=1).stderr
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("rekeyed as" in e["message"] for e in events):
            events.append(json.loads(follower.stdout.readline()))
        assert any("rekeyed as" in e["message"] and e["subsystem"] == "daemon" for e in events), events
        assert all(e["level"] != "debug" for e in events)
    finally:
        follower.terminate()
        follower.wait(5)
    boards = json.loads(ctl(bed, "list-boards", "--json").stdout)
    b1 = boards[0]
    assert b1["heartbeats"]["sent"] > 0 and b1["heartbeats"]["rtt_ms"] > 0
    assert set(b1["link"]["frames_dropped"]) >= {"bad_crc", "bad_cobs", "bad_version", "auth_bad_tag"}
    human = ctl(bed, "list-boards").stdout
    assert re.search(r"\n  link: [1-9]\d* frames in, \d+ requests sent, \d+ retried, \d+ failed; dropped: ",
                     human), human
    assert re.search(r"\n  heartbeats: [1-9]\d* sent, \d+ probes, \d+ periods missed, smoothed RTT \d+\.\d\d ms",
                     human), human
    assert "b1" in bed.ctl("stats")["boards"]


def scrape(bed):
    """The endpoint's answer in OpenMetrics form, parsed by prometheus_client's parser."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    code = ("import urllib.request; r = urllib.request.urlopen(urllib.request.Request('http://%s/metrics', "
            "headers={'Accept': 'application/openmetrics-text; version=1.0.0'}), timeout=10); "
            "print(r.headers['Content-Type']); print(r.read().decode(), end='')" % METRICS)
    r = subprocess.run(["ip", "netns", "exec", bed.net.ns_a, sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=30, check=True)
    ctype, body = r.stdout.split("\n", 1)
    assert ctype.startswith("application/openmetrics-text"), ctype
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_show_a_board_loss_after_a_sim_reset(bed):
    before = scrape(bed)
    board = (("board", "b1"),)
    assert before[("ikeoffload_board_up", board)] == 1
    assert before[("ikeoffload_board_heartbeats_sent_total", board)] > 0
    assert ("ikeoffload_link_frames_dropped_total", (("board", "b1"), ("reason", "bad_crc"))) in before
    losses = before[("ikeoffload_board_losses_total", board)]
    flushes = before.get(("ikeoffload_board_flush_seconds_count", ()), 0)
    for reason in DROP_REASONS:                      # every drop reason is there, 0 until it happens
        assert ("ikeoffload_host_drops_total", (("reason", reason),)) in before, reason
    ids = {i for i, _ in up(bed).values()}
    # the board subsystem down to warnings for the reset (a reload: the tunnels stay as they are)
    quiet_board = [DAEMON[0], DAEMON[1].replace('board = "debug"', 'board = "warning"')]
    bed.write_config(conns=[0, 2, 3], boards=[1], daemon=quiet_board, conn_extra={2: ["dpd_delay = 30"]})
    assert bed.ctl("reload")["connections"]["unchanged"] == ["gw0", "gw2", "gw3"]
    assert {i for i, _ in up(bed).values()} == ids
    with open(bed.daemon_log) as f:
        mark = len(f.read())
    p0 = pinger(bed, 0)                             # traffic through the reset: the host drops some of it
    bed.sim(1, "reset")
    wait(lambda: (lambda u: len(u) == 3 and not {i for i, _ in u.values()} & ids)(up(bed)), 10, "recovery")
    time.sleep(0.3)
    p0.stop()
    with open(bed.daemon_log) as f:
        during = f.read()[mark:]
    bed.write_config(conns=[0, 2, 3], boards=[1], daemon=DAEMON, conn_extra={2: ["dpd_delay = 30"]})
    bed.ctl("reload")
    assert re.search(r" DEBUG +ikeoffloadd\.ike: ", during)
    assert re.search(r" WARNING +ikeoffloadd: board b1 lost \(", during)
    assert not re.search(r" (DEBUG|INFO) +ikeoffloadd\.board: ", during), during   # the HELLO of the new boot
    after = scrape(bed)
    drops = {lab[0][1]: after[(n, lab)] - before[(n, lab)] for n, lab in after if n == "ikeoffload_host_drops_total"}
    print("\nhost drops during the reset: %s; pings lost %d of %d" % (
        {k: v for k, v in drops.items() if v}, len(p0.lost), len(p0.sent)))
    assert after[("ikeoffload_board_losses_total", board)] == losses + 1
    assert after[("ikeoffload_board_incidents_total", (("board", "b1"), ("reason", "unsolicited-hello")))] >= 1
    assert after[("ikeoffload_board_flush_seconds_count", ())] == flushes + 1
    assert after[("ikeoffload_board_recovery_seconds_count", ())] >= 1
    assert after[("ikeoffload_ike_sas_flushed_total", ())] >= 3
    assert sum(v for (n, lab), v in after.items() if n == "ikeoffload_ike_sas") >= 3
    assert after[("ikeoffload_child_sas", board)] >= 3


def test_no_key_material_in_the_log_of_the_whole_run(bed):
    """Every subsystem logged at debug through reloads, rekeys, a board loss and a shutdown: none
    of the keys charon derived for the IKE SAs and the Child SAs (in hex), nor the PSK, is in it."""
    bed.stop_daemon()
    with open(bed.daemon_log) as f:
        ours = f.read()
    assert "received IKE_AUTH" in ours and "board b1: HELLO" in ours      # debug lines of both layers
    keys = charon_keys(bed.charon.log())
    assert len(keys) >= 20, "charon logged too few keys to look for: %d" % len(keys)
    low = ours.lower()
    found = [k for k in keys if k.hex() in low or k[:16].hex() in low]
    assert not found, "key material in the daemon's log: %s" % [k.hex()[:16] for k in found]
    assert PSK not in ours and PSK.encode().hex() not in low


def charon_keys(text):
    """The secrets charon logs at ike/chd level 4: each `... => N bytes @ ADDR` line followed by
    its hex dump lines, for the IKE SA keys (Sk_*) and the Child SA keys (encryption/integrity)."""
    keys = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"(Sk_\w+ secret|key) => (\d+) bytes @", line)
        if not m or "nonce" in line:
            continue
        n, data = int(m.group(2)), b""
        for nxt in lines[i + 1:]:
            h = re.search(r"\d+: ((?:[0-9A-F]{2} )*[0-9A-F]{2})", nxt)
            if not h:
                break
            data += bytes.fromhex(h.group(1))
            if len(data) >= n:
                break
        if len(data) == n and n >= 16:
            keys.append(data)
    return keys
