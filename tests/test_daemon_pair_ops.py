"""Operations on two in-process daemons (tests/daemon_pair.py: sim boards on ptys, IKE over
loopback, no root): a reload over the control socket that keeps, changes and removes the
connection and refuses a bad file; the OpenMetrics endpoint scraped over HTTP and parsed with
prometheus_client's parser, before and after a board reset. tests/test_daemon_ops.py does the
same against charon with real traffic."""
import asyncio
import socket
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from host import config as cfgmod
from host.dataplane.datapath import DROP_REASONS
from tests.daemon_pair import DaemonPair, sim_pair, until
from tests.simboard import SimBoard


@pytest.fixture(scope="module")
def sim_boards():
    yield from sim_pair()


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pair_with(tmp_path, sims, edit_a):
    """A DaemonPair whose a-side configuration file is first rewritten by ``edit_a(text)``."""
    pair = DaemonPair(tmp_path, sims)
    path = tmp_path / "a.toml"
    path.write_text(edit_a(path.read_text()))
    pair.a.cfg = cfgmod.load(str(path))
    return pair, path


def run(pair, body):
    async def go():
        try:
            await pair.start()
            await body(pair)
        finally:
            await pair.stop()
    asyncio.run(go())


def test_reload_keeps_changes_and_removes_and_a_bad_file_changes_nothing(tmp_path, sim_boards):
    pair, path = pair_with(tmp_path, sim_boards, lambda t: t)
    good = path.read_text()

    async def body(p):
        (first,) = [sa.ike_id for sa in p.a.engine.ike_sas()]
        r = await p.a.ctl("reload")                                   # the same file: nothing moves
        assert r["ok"] and r["result"]["connections"]["unchanged"] == ["gw"], r
        assert [sa.ike_id for sa in p.a.engine.ike_sas()] == [first]
        await p.ping(seq=1)
        bad = good.replace('port = "%s"' % p.a.sim.url, 'port = "%s"\nmisses = "three"' % p.a.sim.url)
        path.write_text(bad)
        r = await p.a.ctl("reload")
        line = bad.splitlines().index('misses = "three"') + 1
        assert not r["ok"] and r["error"].startswith("%s:%d: board[0].misses: must be int" % (path, line)), r
        assert [sa.ike_id for sa in p.a.engine.ike_sas()] == [first]
        path.write_text(good.replace('start_action = "start"', 'start_action = "start"\ndpd_delay = 30'))
        r = await p.a.ctl("reload")                                   # changed: established anew
        assert r["ok"] and r["result"]["connections"]["changed"] == ["gw"] and r["result"]["ike_sas_deleted"] == [first]
        await until(lambda: [sa for sa in p.a.engine.ike_sas() if sa.ike_id != first and sa.established_at]
                    and not p.a.engine.ike_sa(first), 5, "gw established anew")
        await p.up()
        await p.ping(seq=2)
        path.write_text(good.split("[connections.gw]")[0])            # removed: deleted at the peer
        r = await p.a.ctl("reload")
        assert r["ok"] and r["result"]["connections"]["removed"] == ["gw"], r
        await until(lambda: not p.a.engine.ike_sas() and not p.b.engine.ike_sas(), 5, "the IKE SAs gone on both")
        s = await p.a.ctl("stats")
        assert s["result"]["reloads"] == 3 and s["result"]["reload_failures"] == 1
    run(pair, body)


def scrape(port):
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % port,
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        body = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_metrics_before_and_after_a_board_reset(tmp_path, sim_boards):
    port = free_tcp_port()
    pair, _ = pair_with(tmp_path, sim_boards, lambda t: t.replace(
        'flush_on_board_loss = true', 'flush_on_board_loss = true\nmetrics = "127.0.0.1:%d"' % port))

    async def body(p):
        await p.ping()
        before = await asyncio.to_thread(scrape, port)
        a0 = (("board", "a0"),)
        assert before[("ikeoffload_board_up", a0)] == 1 and before[("ikeoffload_child_sas", a0)] == 1
        assert before[("ikeoffload_ike_sas", (("conn", "gw"), ("state", "established")))] == 1
        assert before[("ikeoffload_board_heartbeats_sent_total", a0)] > 0
        assert ("ikeoffload_link_frames_dropped_total", (("board", "a0"), ("reason", "bad_crc"))) in before
        assert {lab[0][1] for n, lab in before if n == "ikeoffload_host_drops_total"} == set(DROP_REASONS)
        assert before[("ikeoffload_board_losses_total", a0)] == 0
        (old,) = [sa.ike_id for sa in p.a.engine.ike_sas()]
        p.a.sim_ctl("reset")
        await until(lambda: [sa for sa in p.a.engine.ike_sas() if sa.ike_id != old] and p.a.children(), 5,
                    "a's tunnel back after the reset")
        after = await asyncio.to_thread(scrape, port)
        assert after[("ikeoffload_board_losses_total", a0)] == 1
        assert after[("ikeoffload_board_incidents_total", (("board", "a0"), ("reason", "unsolicited-hello")))] == 1
        assert after[("ikeoffload_board_flush_seconds_count", ())] == 1
        assert after[("ikeoffload_board_recovery_seconds_count", ())] == 1
        assert after[("ikeoffload_ike_sas_flushed_total", ())] == 1
        assert after[("ikeoffload_deletes_sent_total", ())] == 1
    run(pair, body)


def test_reload_adds_a_board_and_removes_the_one_that_carried_the_tunnel(tmp_path, sim_boards):
    """A board added is opened and used; the board removed has its IKE SA flushed as on a loss
    (a Delete to the peer) and the connection comes back on the board that stays."""
    extra = SimBoard()
    pair, path = pair_with(tmp_path, sim_boards, lambda t: t)
    good = path.read_text()
    a1 = '[[board]]\nname = "a1"\nprofile = "sim"\nport = "%s"\nlink_key = "%s"\n\n[ike]' % (
        extra.url, extra.link_key_path)

    async def body(p):
        (first,) = [sa.ike_id for sa in p.a.engine.ike_sas()]
        path.write_text(good.replace("[ike]", a1, 1))
        r = await p.a.ctl("reload")
        assert r["ok"] and r["result"]["boards"]["added"] == ["a1"] and r["result"]["boards"]["unchanged"] == ["a0"]
        await until(lambda: p.a.daemon.clients["a1"].ready, 5, "a1 ready")
        assert [sa.ike_id for sa in p.a.engine.ike_sas()] == [first]
        a0 = good.split("[[board]]")[1].split("[ike]")[0]
        path.write_text(good.replace("[[board]]" + a0, "").replace("[ike]", a1, 1))
        r = await p.a.ctl("reload")
        assert r["ok"] and r["result"]["boards"]["removed"] == ["a0"] and r["result"]["ike_sas_flushed"] == [first]
        await until(lambda: [sa for sa in p.a.engine.ike_sas() if sa.established_at] and p.a.children(), 5,
                    "the tunnel back on a1")
        assert p.a.daemon.pool.owner_of(p.a.engine.ike_sas()[0].ike_id).name == "a1"
        assert sorted(p.a.daemon.clients) == ["a1"] and p.a.sim_ctl("sad")["sas"] == []     # a0 flushed, let go
        await p.up()
        await p.ping()
        inc = (await p.a.ctl("stats"))["result"]["incidents"][-1]
        assert inc["board"] == "a0" and inc["reason"] == "removed" and inc["deletes_sent"] == 1
    try:
        run(pair, body)
    finally:
        extra.close()
