"""ikeoffloadd's event loop in process: two real daemons (host/daemon.py) with a simulated board
each, IKE and ESP-in-UDP between them over loopback (tests/daemon_pair.py). What the root-only
end-to-end tests (tests/test_daemon.py, against charon) show with pings through TUN devices,
checked here in a second, without root: packets through both boards, a board lost and the IKE SA
flushed and re-established (RFC 7296 §2.4), the control socket's commands, shutdown, INVALID_SPI,
ESP from the wrong peer, rekeys, a board's lifetime event."""
import asyncio
import logging
import os
import socket
import time

import pytest

from firmware.link import messages as m
from host import child_sas as child_sas_mod
from host import control
from host.offload.events import UnknownSpiReport
from tests.daemon_pair import A_IP, B_IP, DaemonPair, packet, run_pair, sim_pair, until


@pytest.fixture(scope="module")
def sim_boards():
    yield from sim_pair()


def spis_on_board(side):
    """(spi, direction) of every SA on the side's simulated board, as the board itself says."""
    dirs = {"in": m.DIR_IN, "out": m.DIR_OUT}
    return {(s["spi"], dirs[s["dir"]]) for s in side.sim_ctl("sad")["sas"]}


def route(side):
    (r,) = side.children()
    return r


def replaced(side, old):
    """The side has exactly one Child SA on its board, and not ``old``."""
    rs = side.children()
    return len(rs) == 1 and rs[0] is not old


def test_packets_cross_both_boards_and_the_views_count_them(tmp_path, sim_boards):
    async def body(p):
        ra, rb = route(p.a), route(p.b)
        assert (ra.spi_in, ra.spi_out) == (rb.spi_out, rb.spi_in)       # the two halves of one pair
        assert spis_on_board(p.a) == {(ra.spi_in, m.DIR_IN), (ra.spi_out, m.DIR_OUT)}
        for i in range(3):
            await p.ping(seq=i, size=84 + 100 * i)
        back = packet(src=bytes((10, 2, 0, 7)), dst=bytes((10, 1, 0, 5)), seq=9)
        p.b.send([back])
        await until(lambda: back in p.a.tun, 3, "the answer back through the tunnel")

        (sa,) = (await p.a.ctl("list-sas"))["result"]
        assert sa["state"] == "ESTABLISHED" and sa["initiator"] and sa["board"] == "a0"
        assert sa["local_id"] == "a.example" and sa["remote_id"] == "b.example"
        assert sa["proposal"] == "aes128gcm16-prfsha256-x25519"
        (child,) = sa["children"]
        assert child["spi_out"] == ra.spi_out and child["state"] == "INSTALLED"
        assert child["proposal"] == "AES_GCM_16-128" and child["remote_ts"] == ["10.2.0.0/24"]
        # counted by a's board: three packets out (84 + 184 + 284 bytes), one in
        assert (child["packets_out"], child["bytes_out"]) == (3, 552)
        assert (child["packets_in"], child["bytes_in"]) == (1, 84)
        (board,) = (await p.a.ctl("list-boards"))["result"]
        assert board["state"] == "ready" and board["sa_count"] == 2 and board["ike_sas"] == 1
        assert board["boot_id"] == p.a.sim_ctl("status")["boot_id"] and board["last_loss"] is None
        st = (await p.b.ctl("stats"))["result"]
        assert st["child_installs"] == 1 and st["ike_sas"] == 1 and st["child_sas"] == 1
        assert st["udp_esp_in"] == 3 and st["board_losses"] == 0 and st["incidents"] == []
    run_pair(tmp_path, sim_boards, body)


def test_a_board_reset_flushes_its_ike_sa_tells_the_peer_and_comes_back(tmp_path, sim_boards):
    """RFC 7296 §2.4: the IKE SA whose Child SAs died with the board goes too, with a Delete to the
    peer, and the connection (start_action = start) is set up again on the board once it is back."""
    async def body(p):
        old_a, old_b = p.a.engine.ike_sas()[0].ike_id, p.b.engine.ike_sas()[0].ike_id
        old_spis = spis_on_board(p.a)
        p.a.sim_ctl("reset")
        await until(lambda: p.a.daemon.stats["board_losses"] == 1, 3, "the loss")
        # the peer heard of it: its IKE SA is gone (not left to its DPD) and a new one is up
        await until(lambda: old_b not in [s.ike_id for s in p.b.engine.ike_sas()], 3, "the Delete at b")
        await p.up()
        assert old_a not in [s.ike_id for s in p.a.engine.ike_sas()]
        await p.ping()
        assert spis_on_board(p.a).isdisjoint(old_spis) and len(spis_on_board(p.a)) == 2
        st = (await p.a.ctl("stats"))["result"]
        assert (st["ike_sas_flushed"], st["deletes_sent"]) == (1, 1)
        (inc,) = st["incidents"]
        assert inc["reason"] == "unsolicited-hello" and inc["reinitiated"] == ["gw"]
        assert inc["detected_at"] <= inc["flushed_at"] <= inc["ike_up_at"] <= inc["child_up_at"]
        assert inc["board_ready_at"] is not None and inc["board_ready_at"] <= inc["ike_up_at"]
        (board,) = (await p.a.ctl("list-boards"))["result"]
        assert board["losses"] == 1 and board["last_loss"]["reason"] == "unsolicited-hello"
        assert board["last_loss"]["ike_sas_flushed"] == 1 and board["reset_cause"] == "simulator"
    run_pair(tmp_path, sim_boards, body)


def test_without_flush_the_ike_sa_outlives_its_board_and_carries_nothing(tmp_path, sim_boards):
    """flush_on_board_loss = false: the IKE SA stays (the peer is not told), and nothing is sent
    on the dead Child SA either way."""
    async def body(p):
        ike = p.a.engine.ike_sas()[0].ike_id
        p.a.sim_ctl("reset")
        await until(lambda: p.a.daemon.stats["board_losses"] == 1, 3, "the loss")
        await until(lambda: p.a.daemon.clients["a0"].ready, 3, "the board back")
        await asyncio.sleep(0.1)
        assert [s.ike_id for s in p.a.engine.ike_sas()] == [ike] and len(p.b.engine.ike_sas()) == 1
        assert p.a.daemon.stats["ike_sas_flushed"] == 0 and p.a.daemon.stats["deletes_sent"] == 0
        p.a.send([packet()])
        p.b.send([packet(src=bytes((10, 2, 0, 7)), dst=bytes((10, 1, 0, 5)))])
        dp = p.a.daemon.datapath
        await until(lambda: dp.stats["in_dropped_board_lost"] == 1, 3, "b's ESP dropped at a")
        assert dp.stats["out_dropped_board_lost"] == 1 and not p.b.tun and not p.a.tun
        assert spis_on_board(p.a) == set()
    run_pair(tmp_path, sim_boards, body, flush=False)


def test_flush_board_from_the_control_socket(tmp_path, sim_boards):
    """`ikeoffloadctl flush-board`: the board stays up, its IKE SAs go as if it had been lost,
    their Child SAs leave it, and the connection comes back."""
    async def body(p):
        old = route(p.a)
        r = await p.a.ctl("flush-board", board="a0")
        assert r["ok"] and r["result"]["reason"] == "operator" and r["result"]["ike_sas_flushed"] == 1
        assert r["result"]["deletes_sent"] == 1
        await until(lambda: replaced(p.a, old), 3, "a new Child SA")
        await p.up()
        await p.ping()
        await until(lambda: (old.spi_in, m.DIR_IN) not in spis_on_board(p.a), 3, "the old SAs off the board")
        assert len(spis_on_board(p.a)) == 2
        assert p.a.daemon.clients["a0"].session.losses == 0            # never lost: flushed
        r = await p.a.ctl("flush-board", board="nope")
        assert not r["ok"] and "no board 'nope'" in r["error"]
    run_pair(tmp_path, sim_boards, body)


def test_initiate_and_terminate_from_the_control_socket(tmp_path, sim_boards):
    async def body(p):
        (ike,) = [s.ike_id for s in p.a.engine.ike_sas()]
        for req, error in (({"cmd": "initiate", "conn": "nope"}, "no connection 'nope' (known: gw)"),
                           ({"cmd": "terminate", "ike_id": 999}, "no IKE SA #999"),
                           ({"cmd": "terminate", "conn": "nope"}, "no connection 'nope' (known: gw)")):
            r = await p.a.ctl(**req)
            assert not r["ok"] and error in r["error"], r
        r = await p.a.ctl("terminate", conn="gw")
        assert r == {"ok": True, "result": {"terminated": [ike]}}
        await until(lambda: not p.a.engine.ike_sas() and not p.b.engine.ike_sas(), 3, "both IKE SAs gone")
        await until(lambda: not spis_on_board(p.a) and not spis_on_board(p.b), 3, "the SAs off the boards")
        assert not p.a.children() and not p.b.children()
        r = await p.a.ctl("initiate", conn="gw")
        assert r["ok"] and r["result"]["ike_id"] not in (None, ike)
        await p.up()
        await p.ping()
        r = await p.a.ctl("terminate", ike_id=r["result"]["ike_id"])
        assert r["ok"]
        await until(lambda: not p.b.engine.ike_sas(), 3, "b's IKE SA gone")
    run_pair(tmp_path, sim_boards, body)


def test_shutdown_tells_the_peer_and_flushes_the_board(tmp_path, sim_boards):
    async def body(p):
        assert len(spis_on_board(p.a)) == 2
        await p.a.daemon.shutdown()
        p.a.daemon.udp = None                                   # stopped: the pair leaves it alone
        await until(lambda: not p.b.engine.ike_sas(), 3, "b told")
        assert spis_on_board(p.a) == set()
        assert not (tmp_path / "a.sock").exists()
        await until(lambda: not spis_on_board(p.b), 3, "b's board emptied by the Delete")
    run_pair(tmp_path, sim_boards, body)


def udp_from(ip, data, to):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        s.sendto(data, to)
        return s.getsockname()


def esp(spi, seq=1):
    return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes(48)


def test_esp_for_an_unknown_spi_is_answered_inside_the_ike_sa(tmp_path, sim_boards):
    """RFC 7296 §2.21.1: ESP from the peer's address for an SPI we do not have gets INVALID_SPI in
    the IKE SA with that peer. It names no Child SA of the peer, which deletes nothing."""
    async def body(p):
        natt = (A_IP, p.a.cfg.natt_port)
        udp_from(B_IP, esp(0x0BADC0DE), natt)
        await until(lambda: p.b.engine.stats["invalid_spi_protected_unmatched"] == 1, 3, "INVALID_SPI at b")
        assert p.a.daemon.stats["unknown_spi_reports"] == 1
        assert p.a.daemon.datapath.stats["in_unknown_spi"] == 1
        assert len(p.b.engine.ike_sas()) == 1 and len(p.b.children()) == 1
        await p.ping()
    run_pair(tmp_path, sim_boards, body)


def test_esp_the_board_lost_is_reported_and_the_peer_recreates_the_child(tmp_path, sim_boards):
    """The board no longer has an inbound SA the host routes to (it dropped it): the board says
    UNKNOWN_SPI for the peer's ESP, the host tells the peer with a protected INVALID_SPI (RFC
    7296 §2.21.1), and the peer deletes that Child SA and creates a new one (§1.5)."""
    async def body(p):
        ra = route(p.a)
        client = p.a.daemon.clients["a0"]
        reports = []
        client.on_event = lambda ev, inner=client.on_event: (
            reports.append(ev) if isinstance(ev, UnknownSpiReport) else None, inner(ev))
        await client.sa_del(ra.spi_in, m.DIR_IN)                # behind the daemon's back
        p.b.send([packet(src=bytes((10, 2, 0, 7)), dst=bytes((10, 1, 0, 5)))])
        await until(lambda: p.b.engine.stats["invalid_spi_protected_honoured"] >= 1, 3, "INVALID_SPI at b")
        await until(lambda: p.a.daemon.datapath.stats["in_unknown_spi_board"] == 1, 3, "the packet's status")
        await until(lambda: reports, 3, "the board's UNKNOWN_SPI event")
        assert reports[0].entries[0][0] == ra.spi_in
        await until(lambda: replaced(p.a, ra), 3, "a new Child SA")
        await p.up()
        await p.ping()
        assert p.a.daemon.stats["unknown_spi_reports"] >= 2        # the packet's status, the board's event
    run_pair(tmp_path, sim_boards, body)


def test_esp_from_a_wrong_peer_starts_one_liveness_check(tmp_path, sim_boards):
    """ESP on a valid SPI from another address costs no board time; behind a NAT it may mean the
    peer's mapping changed, so one liveness check goes out per WRONG_PEER_CHECK seconds (an
    action on an unprotected packet, rate-limited: RFC 7296 §2.4, §2.23)."""
    async def body(p):
        ra = route(p.a)
        natt = (A_IP, p.a.cfg.natt_port)
        sent = p.b.engine.stats["retransmits_answered"]
        for i in range(5):
            udp_from("127.0.0.3", esp(ra.spi_in, i + 1), natt)
        dp = p.a.daemon.datapath
        await until(lambda: dp.stats["in_wrong_peer"] == 5, 3, "the spoofed ESP dropped")
        assert p.a.daemon.stats["wrong_peer_checks"] == 1
        sa = p.a.engine.ike_sas()[0]
        await until(lambda: not sa.queue and sa.state.name == "ESTABLISHED", 3, "the check answered")
        assert p.b.engine.stats["retransmits_answered"] == sent
        assert sa.remote[0] == B_IP                       # the answer came from where it always did
        assert p.a.daemon.clients["a0"].session.link.counters["data_sent"] == 0   # none went to the board
        await p.ping()
    run_pair(tmp_path, sim_boards, body)


def test_a_child_sa_rekey_moves_the_traffic_and_retires_the_old_sa(tmp_path, sim_boards, monkeypatch):
    """RFC 7296 §2.8: the new SA is installed, traffic moves to it, the old one goes; its inbound
    half stays on the board a little longer (REPLACED_INBOUND_LINGER) for the packets in flight."""
    monkeypatch.setattr(child_sas_mod, "REPLACED_INBOUND_LINGER", 0.2)

    async def body(p):
        old = route(p.a)
        assert p.a.daemon.udp.call(p.a.engine.rekey_child, old.handle)
        await until(lambda: replaced(p.a, old), 3, "the old SA out of the data path")
        new = route(p.a)
        await p.up()
        await p.ping()
        assert p.b.children()[0].spi_in == new.spi_out
        # the old outbound half goes at once, the inbound half after the linger
        await until(lambda: (old.spi_out, m.DIR_OUT) not in spis_on_board(p.a), 3, "old outbound SA gone")
        await until(lambda: spis_on_board(p.a) == {(new.spi_in, m.DIR_IN), (new.spi_out, m.DIR_OUT)}, 3,
                    "the old inbound SA gone after its linger")
        assert old.spi_in not in p.a.daemon.datapath.by_spi_in
        assert old.packets_out == 0 and new.packets_out == 1
    run_pair(tmp_path, sim_boards, body)


def test_an_ike_sa_rekey_keeps_its_board(tmp_path, sim_boards):
    async def body(p):
        (old,) = [s.ike_id for s in p.a.engine.ike_sas()]
        assert p.a.daemon.udp.call(p.a.engine.rekey_ike, old)
        await until(lambda: len(p.a.engine.ike_sas()) == 1 and p.a.engine.ike_sas()[0].ike_id != old, 3,
                    "the new IKE SA alone (the old one deleted)")
        (new,) = [s.ike_id for s in p.a.engine.ike_sas()]
        assert p.a.daemon.pool.owner_of(new).name == "a0" and p.a.daemon.pool.owner_of(old) is None
        (board,) = (await p.a.ctl("list-boards"))["result"]
        assert board["ike_sas"] == 1
        await p.ping()
    run_pair(tmp_path, sim_boards, body)


def test_a_soft_lifetime_the_board_reports_rekeys_the_child(tmp_path, sim_boards):
    """The board counts an SA's packets against its lifetime and says SA_EXPIRE (soft) with the
    Child SA's handle as reqid: the engine rekeys that Child SA (RFC 4301 §4.4.2.1, RFC 7296 §2.8)."""
    async def body(p):
        r = route(p.a)
        client = p.a.daemon.clients["a0"]
        # a second outbound SA for the same Child SA (its reqid), with a one-packet soft limit
        spec = m.SaSpec(0x51000001, m.DIR_OUT, m.ENCR_AES_GCM_16, bytes(20), reqid=r.handle, soft_packets=1,
                        flags=m.SAF_UDP_ENCAP, src=(bytes((127, 0, 0, 1)), 4500), dst=(bytes((127, 0, 0, 2)), 4500))
        await client.sa_add(spec)
        await client.encrypt([(0x51000001, packet())])
        await until(lambda: p.a.daemon.stats["sa_expired"] == 1, 3, "the expiry event")
        assert p.a.engine.stats["child_soft_expiries"] == 1
        await until(lambda: replaced(p.a, r), 3, "the rekeyed Child SA")
        await client.sa_del(0x51000001, m.DIR_OUT)
        await p.ping()
    run_pair(tmp_path, sim_boards, body)


def test_ikeoffloadctl_prints_the_daemons_sas_and_boards(tmp_path, sim_boards, capsys):
    """`ikeoffloadctl list-sas` and `list-boards` over the real control socket, as people read them."""
    async def body(p):
        await p.ping(size=184)
        ra = route(p.a)
        sock = str(p.a.cfg.control_socket)
        assert await asyncio.to_thread(control.main, ["--socket", sock, "list-sas"]) == 0
        out = capsys.readouterr().out.splitlines()
        (ike,) = p.a.engine.ike_sas()
        assert out[0] == "gw: #%d, ESTABLISHED, IKEv2, %s_i* %s_r" % (ike.ike_id, ike.spi_i.hex(), ike.spi_r.hex())
        assert out[1:4] == ["  local  'a.example' @ %s[%d]" % (A_IP, p.a.cfg.natt_port),     # floated to
                            "  remote 'b.example' @ %s[%d]" % (B_IP, p.b.cfg.natt_port),    # NAT-T's ports
                            "  aes128gcm16-prfsha256-x25519"]
        assert out[4].startswith("  established ") and out[4].endswith("s ago, board a0")
        assert out[5] == "  net: #%d, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" % ra.handle
        assert out[7] == "    in  %08x, %9d bytes, %7d packets" % (ra.spi_in, 0, 0)
        assert out[8] == "    out %08x, %9d bytes, %7d packets" % (ra.spi_out, 184, 1)
        assert out[9:] == ["    local  10.1.0.0/24", "    remote 10.2.0.0/24"]
        assert await asyncio.to_thread(control.main, ["--socket", sock, "list-boards"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "a0: READY, %s, profile sim" % p.a.sim.url
        assert out[1].startswith("  boot id %s, up " % p.a.sim_ctl("status")["boot_id"])
        hello = p.a.daemon.clients["a0"].session.hello
        cause = {m.RESET_POWER_ON: "power-on", m.RESET_SIM: "simulator"}[hello.reset_cause]
        assert out[1].endswith("reset cause %s, firmware %s" % (cause, hello.fw_version))
        assert out[2].startswith("  SAs 2/") and ", IKE SAs 1, heartbeat RTT " in out[2] and out[2].endswith(" ms")
        assert out[3].startswith("  transforms AES_GCM_16-128/") and out[-1] == "  losses 0"
    run_pair(tmp_path, sim_boards, body)


def test_list_sas_answers_when_the_board_does_not(tmp_path, sim_boards):
    """A hung board's counters are left out of list-sas (after at most 2 s), not waited for."""
    async def body(p):
        await p.ping()
        p.a.sim_ctl("hang")
        try:
            r = await p.a.ctl("list-sas")
            (sa,) = r["result"]
            (child,) = sa["children"]
            assert child["packets_out"] == 0 and child["state"] == "INSTALLED"   # no counters to show
        finally:
            p.a.sim_ctl("resume")
        await until(lambda: p.a.daemon.stats["board_losses"] == 1, 3, "the hung board declared lost")
    run_pair(tmp_path, sim_boards, body, flush=False)


def test_a_board_that_hangs_as_the_daemon_stops_does_not_hold_the_stop_up(tmp_path, sim_boards):
    async def body(p):
        p.a.sim_ctl("hang")
        try:
            t0 = time.monotonic()
            await p.a.daemon.shutdown()          # the Delete is answered; the board's SA_FLUSH is not
            took = time.monotonic() - t0
            p.a.daemon.udp = None
        finally:
            p.a.sim_ctl("resume")
        assert took < 3.0 and not p.a.engine.ike_sas()      # the flush waits 2 s at most
        await until(lambda: not p.b.engine.ike_sas(), 3, "b told")
        assert len(spis_on_board(p.a)) == 2      # never flushed: the next start flushes it
    run_pair(tmp_path, sim_boards, body)


def test_an_ike_sa_whose_peer_does_not_answer_the_delete_is_dropped_at_shutdown(tmp_path, sim_boards):
    async def body(p):
        p.b.daemon.udp.close()                   # b hears nothing more
        t0 = time.monotonic()
        await p.a.daemon.shutdown()
        took = time.monotonic() - t0
        p.a.daemon.udp = None
        # two seconds for the Delete's answer, then dropped; the board's flush waits 2 s at most
        assert 1.9 < took < 5.0, took
        assert not p.a.engine.ike_sas() and spis_on_board(p.a) == set()
    run_pair(tmp_path, sim_boards, body)


def test_the_responders_board_gone_refuses_the_child_sa_and_its_return_brings_it(tmp_path, sim_boards, caplog):
    """A Child SA needs a board (RFC 7296 §2.4): b's board hung (its IKE SA flushed, a told), a
    new initiation from a gets its IKE SA but the Child SA is refused (b's board runs no
    transform); once b's board is back, a new initiation carries traffic again."""
    caplog.set_level(logging.WARNING, logger="ikeoffloadd")

    async def body(p):
        p.b.sim_ctl("hang")
        try:
            await until(lambda: p.b.daemon.stats["board_losses"] == 1, 3, "b's board lost")
            await until(lambda: not p.a.engine.ike_sas(), 3, "a told")
            r = await p.a.ctl("initiate", conn="gw")              # waits for the outcome: refused
            assert not r["ok"] and "NO_PROPOSAL_CHOSEN" in r["error"], r
            await until(lambda: p.a.engine.ike_sas() and p.a.engine.ike_sas()[0].established_at is not None
                        and not p.a.children(), 5, "a's new IKE SA, without a Child SA")
            (ike,) = [sa.ike_id for sa in p.a.engine.ike_sas()]
            await until(lambda: "Child SA net of IKE SA #%d failed: peer did not create the Child SA: "
                        "NO_PROPOSAL_CHOSEN" % ike in caplog.text, 3, "the Child SA failure logged")
            assert not p.b.children() and spis_on_board(p.a) == set()
        finally:
            p.b.sim_ctl("resume")
        await until(lambda: p.b.daemon.clients["b0"].ready, 3, "b's board back")
        for s in p.a.engine.ike_sas():
            await p.a.ctl("terminate", ike_id=s.ike_id)
        await until(lambda: not p.a.engine.ike_sas(), 3, "a's IKE SA gone")
        assert (await p.a.ctl("initiate", conn="gw"))["ok"]
        await p.up()
        await p.ping()
    run_pair(tmp_path, sim_boards, body)


class LateBoard:
    """A board whose device appears only later (plugged in after the daemon started): a path
    that becomes a link to the simulated board's pty."""

    def __init__(self, sim, path):
        self.sim, self.url, self.link_key_path = sim, str(path), sim.link_key_path

    def plug_in(self):
        os.symlink(self.sim.url, self.url)


def test_a_board_plugged_in_after_the_start_starts_the_connections(tmp_path, sim_boards, caplog):
    """No board at start: the daemon waits for one (5 s), logs it, and the connections
    (start_action = start) start when the board comes, not before."""
    late = LateBoard(sim_boards[0], tmp_path / "ttyLATE")

    async def go():
        pair = DaemonPair(tmp_path, [late, sim_boards[1]])
        try:
            await pair.b.start()
            loop = asyncio.get_running_loop()
            loop.call_later(5.5, late.plug_in)
            t0 = time.monotonic()
            await pair.a.start()
            assert 4.5 < time.monotonic() - t0 < 5.5            # waited for it, then went on
            assert not pair.a.daemon.clients["a0"].ready and not pair.a.engine.ike_sas()
            assert (await pair.a.ctl("list-boards"))["result"][0]["state"] == "opening"
            assert "board a0: cannot open %s: no such device (not plugged in" % late.url in caplog.text
            assert "retrying every 1 s" in caplog.text
            assert "no board ready yet: connections start when one is" in caplog.text
            await pair.up(timeout=5)
            await pair.ping()
        finally:
            await pair.stop()
    asyncio.run(go())
