"""An HA router's daemon in process (tests/daemon_pair.py: real daemons, simulated boards on ptys,
IKE over loopback): daemon a with [ha] enabled is the router, daemon b its peer. Standby until
keepalived's `ha master`; then it initiates with INITIAL_CONTACT and carries traffic; `ha backup`
sends the Delete, drops the IKE SA, flushes the board and takes no more IKE; the operator cannot
initiate on a standby; a board gone makes `ha check` fail, and no IKE_SA_INIT is answered
without a board. The real thing, with keepalived,
charon and two routers, is tests/test_ha_failover.py (root)."""
import asyncio
import time

import pytest

from host import config as cfgmod
from host import control
from host.ike.states import IkeSaState
from tests.daemon_pair import DaemonPair, sim_pair, until


@pytest.fixture(scope="module")
def sim_boards():
    yield from sim_pair()


def ha_pair(tmp_path, sims):
    pair = DaemonPair(tmp_path, sims)
    path = tmp_path / "a.toml"
    path.write_text(path.read_text() + "\n[ha]\nenabled = true\n")
    pair.a.cfg = cfgmod.load(path)
    return pair


def test_standby_master_backup_through_the_control_socket(tmp_path, sim_boards, capsys):
    async def ctl(*args):       # ikeoffloadctl, as keepalived runs it
        return await asyncio.to_thread(control.main, ["--socket", str(pair.a.cfg.control_socket)] + list(args))

    pair = None

    async def go():
        nonlocal pair
        pair = ha_pair(tmp_path, sim_boards)
        try:
            await pair.b.start()
            await pair.a.start()
            a, b = pair.a, pair.b
            await asyncio.sleep(0.3)
            st = (await a.ctl("ha"))["result"]
            assert st["state"] == "unknown" and not st["active"]
            # its address (loopback) is here although keepalived said nothing: the check fails
            assert not st["healthy"] and st["reason"].startswith("the virtual address is here")
            assert a.engine.ike_sas() == [] and b.engine.ike_sas() == []      # a standby initiates nothing
            refused = await a.ctl("initiate", conn="gw")
            assert not refused["ok"] and "standby" in refused["error"]
            # a request from the peer is not answered either
            b.daemon.udp.call(b.engine.initiate, "gw")
            await asyncio.sleep(0.3)
            assert a.daemon.udp.stats["standby_dropped"] >= 1 and a.engine.ike_sas() == []
            for sa in b.engine.ike_sas():
                b.daemon.udp.call(b.engine.drop_ike, sa.ike_id, reason="test", send_delete=False)

            assert await ctl("ha", "check") == 1
            assert await ctl("ha", "master") == 0
            assert capsys.readouterr().out.startswith("MASTER (active) for ")
            assert await ctl("ha", "check") == 0
            await pair.up()
            assert a.engine.ike_sas()[0].initial_contact                  # RFC 7296 §2.4
            await pair.ping(seq=1)

            assert await ctl("--json", "ha", "backup") == 0
            assert '"state": "backup"' in capsys.readouterr().out
            assert a.engine.ike_sas() == [] and a.children() == []
            await until(lambda: b.engine.ike_sas() == [], 3, "the peer got the Delete")
            await until(lambda: a.sim_ctl("sad")["sas"] == [], 3, "a's board flushed")
            await asyncio.sleep(1.0)
            assert a.engine.ike_sas() == []                                 # nothing re-initiated

            a.sim.proc.kill()                                               # the board is gone
            await until(lambda: not a.daemon.pool.ready_boards(), 5, "a's board lost")
            await asyncio.sleep(0.6)
            st = (await a.ctl("ha"))["result"]
            assert not st["healthy"] and st["reason"].startswith("no board ready")
            assert await ctl("ha", "check") == 1
            assert "cannot be active: no board ready" in capsys.readouterr().err
            # MASTER before keepalived asked again: a new IKE SA could carry no Child SA here, so
            # the peer's IKE_SA_INIT goes unanswered (its retransmission reaches the other router)
            assert await ctl("ha", "master") == 0
            b.daemon.udp.call(b.engine.initiate, "gw")
            await until(lambda: a.engine.stats["init_not_answered"] >= 1, 3, "a saw the IKE_SA_INIT")
            await asyncio.sleep(0.3)
            assert a.engine.ike_sas() == [] and all(sa.state == IkeSaState.CONNECTING for sa in b.engine.ike_sas())
        finally:
            await pair.stop()
    asyncio.run(go())


@pytest.fixture
def own_sims():
    yield from sim_pair()


def test_the_track_file_tells_keepalived_at_once_when_the_last_board_goes_and_comes_back(tmp_path, own_sims):
    """keepalived's track_file ([ha] track_file): 1 while the daemon starts, 0 once it has a board
    and a role, 1 within a few ms of the grace for a missing board running out (not on the next
    track script run, each whole second), 0 the moment the board is ready again, 1 when the daemon
    stops. Each value is renamed into place: no temporary file is left beside it."""
    health = tmp_path / "run" / "ha-health"
    health.parent.mkdir()
    seen = []                                   # (monotonic time, value) whenever the file changes

    async def watch():
        last = None
        while True:
            try:
                v = health.read_text()
            except FileNotFoundError:
                v = None
            if v != last:
                seen.append((time.monotonic(), v))
                last = v
            await asyncio.sleep(0.002)

    async def go():
        pair = DaemonPair(tmp_path, own_sims)
        path = tmp_path / "a.toml"
        path.write_text(path.read_text() + '\n[ha]\nenabled = true\ntrack_file = "%s"\n' % health)
        pair.a.cfg = cfgmod.load(path)
        a = pair.a
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await pair.b.start()
            await a.start()
            await asyncio.sleep(0.05)
            # its address (loopback) is here and keepalived has said nothing: unhealthy
            assert health.read_text() == "1\n"
            assert seen[0][1] == "1\n"
            assert (await a.ctl("ha", state="backup"))["ok"]
            assert health.read_text() == "0\n"            # written before the answer

            a.sim_ctl("hang")                             # the board stops answering
            await until(lambda: not a.daemon.pool.ready_boards(), 5, "a's board lost")
            lost = time.monotonic()
            await until(lambda: health.read_text() == "1\n", 2, "unhealthy written")
            took = time.monotonic() - lost
            assert 0.45 <= took <= 0.5 + 0.1, "unhealthy %.3f s after the loss (grace 0.5 s)" % took
            st = (await a.ctl("ha"))["result"]
            assert not st["healthy"] and st["reason"].startswith("no board ready")

            a.sim_ctl("resume")
            await until(lambda: a.daemon.pool.ready_boards(), 5, "a's board back")
            back = time.monotonic()
            await until(lambda: health.read_text() == "0\n", 1, "healthy written")
            assert time.monotonic() - back < 0.05
            assert sorted(p.name for p in health.parent.iterdir()) == ["ha-health"]
            await asyncio.sleep(0.05)                     # the watcher's turn before the stop
        finally:
            await pair.stop()
            await asyncio.sleep(0.02)
            watcher.cancel()
        assert health.read_text() == "1\n"                # stopped: not a router to make active
        assert [v for _, v in seen] == ["1\n", "0\n", "1\n", "0\n", "1\n"], seen
    asyncio.run(go())


def test_an_unwritable_track_file_is_logged_and_tried_again(tmp_path, caplog):
    """The file is keepalived's fast path; the track script still judges the router. A failed
    write leaves no temporary file and is tried again on the next change."""
    from host.ha_track_file import HealthFile
    where = tmp_path / "gone"
    hf = HealthFile(str(where / "ha-health"))
    assert not hf.publish(False, "starting")
    assert "cannot write the health keepalived tracks" in caplog.text
    where.mkdir()
    assert hf.publish(False, "starting") and (where / "ha-health").read_text() == "1\n"
    assert not hf.publish(False, "again")                 # unchanged: not rewritten
    assert hf.publish(True) and (where / "ha-health").read_text() == "0\n"
    assert [p.name for p in where.iterdir()] == ["ha-health"] and hf.writes == 2
