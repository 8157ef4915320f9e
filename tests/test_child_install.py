"""A Child SA install always ends: the engine gets its answer and the board's slots come back,
whatever fails on the way (the real BoardClient and BoardPool against the simulated board on a
pty, host/child_sas.py between them and an answer log standing in for the engine)."""
import asyncio
import ipaddress
import os

import pytest

from firmware import profiles
from firmware.link import messages as m
from host.child_sas import ChildSas
from host.dataplane.datapath import DataPath
from host.ike.events import ChildSaInstall
from host.ike.payloads import TrafficSelector
from host.offload.client import BoardClient
from host.offload.pool import BoardPool
from tests.simboard import SimBoard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS = 8


@pytest.fixture
def small_board(tmp_path):
    """A simulated board with 8 SA slots: four Child SAs fill it."""
    prof = tmp_path / "small.toml"
    text = open(os.path.join(ROOT, "boards", "sim.toml")).read()
    assert "max_sas = 256" in text
    prof.write_text(text.replace("max_sas = 256", "max_sas = %d" % SLOTS))
    s = SimBoard("--profile", str(prof))
    yield str(prof), s
    s.close()


def selectors(n, first="10.0.0.0"):
    """n one-address selectors from `first` on."""
    base = int.from_bytes(bytes(int(x) for x in first.split(".")), "big")
    out = []
    for i in range(n):
        a = ".".join(str(b) for b in (base + i).to_bytes(4, "big"))
        out.append(TrafficSelector.from_range(a, a))
    return out


def install(handle, local_ts=None, remote_ts=None):
    return ChildSaInstall(
        handle=handle, ike_id=1, name="net", protocol=3, mode="tunnel", spi_in=0xC0000000 + handle,
        spi_out=0xD0000000 + handle, encr=m.ENCR_AES_GCM_16, encr_key_bits=256, integ=0,
        key_in=bytes(32), salt_in=bytes(4), integ_key_in=b"", key_out=bytes(range(32)), salt_out=bytes(4),
        integ_key_out=b"", esn=False, local_ts=local_ts or selectors(1, "198.51.100.1"),
        remote_ts=remote_ts or selectors(1, "203.0.113.1"), local_addr="192.0.2.1", remote_addr="192.0.2.2",
        encap=True, local_port=4500, remote_port=4500, initiator=True)


async def rig(prof, board):
    pool = BoardPool()
    client = BoardClient("b0", board.url, profile=profiles.load(prof), period=0.1, misses=5,
                         on_event=pool.on_event, link_key=board.link_key)
    pool.add("b0", client)
    await client.start()
    await client.wait_ready(5)
    answers = []
    datapath = DataPath({"b0": client}, lambda esp, addr: None, lambda pkt: None)
    sas = ChildSas(pool, datapath, lambda handle, ok, reason: answers.append((handle, ok, reason)))
    return pool, client, sas, answers


def test_installs_the_board_refuses_are_answered_and_release_their_slots(small_board):
    """Selector lists longer than the board holds (MAX_TS each way): the board refuses each (a
    malformed request) and the board's 8 slots stay free for the next Child SA."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            for h in range(1, 5):
                await asyncio.wait_for(sas.install(install(h, selectors(m.MAX_TS + 1, "10.0.0.1"),
                                                           selectors(m.MAX_TS + 1, "10.1.0.1"))), 5)
            assert [(h, ok) for h, ok, _ in answers] == [(h, False) for h in range(1, 5)], answers
            assert pool.boards["b0"].reserved == 0 and client.sa_count() == 0
            await asyncio.wait_for(sas.install(install(5)), 5)
            assert answers[-1] == (5, True, None), answers
            assert client.sa_count() == 2 and sas.installed(5) is not None
            assert sas.stats["child_install_failures"] == 4 and sas.stats["child_installs"] == 1
        finally:
            await client.close()
    asyncio.run(go())


def test_a_selector_that_ends_before_it_starts_leaves_nothing_on_the_board(small_board):
    prof, board = small_board
    backwards = TrafficSelector.from_range("10.0.0.9", "10.0.0.1")

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            await asyncio.wait_for(sas.install(install(1, remote_ts=[backwards])), 5)
            assert [(h, ok) for h, ok, _ in answers] == [(1, False)], answers
            assert client.sa_count() == 0 and pool.boards["b0"].reserved == 0 and sas.installed(1) is None
        finally:
            await client.close()
    asyncio.run(go())


def test_a_board_lost_half_way_is_answered_and_rolled_back(small_board):
    """The board resets between the two halves (the two SA_ADDs go out together, the reset
    comes between them): the install fails, the engine hears of it."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            add = client.sa_add

            async def reset_then_add(spec):
                if spec.direction == m.DIR_OUT:
                    await client.reset()
                return await add(spec)
            client.sa_add = reset_then_add
            await asyncio.wait_for(sas.install(install(1)), 10)
            assert [(h, ok) for h, ok, _ in answers] == [(1, False)], answers
            assert pool.boards["b0"].reserved == 0 and sas.installed(1) is None
        finally:
            await client.close()
    asyncio.run(go())


def test_a_request_the_board_cannot_parse_is_refused_with_its_status(small_board):
    """The board answers a request it cannot parse with the status byte alone: the client says
    so as a refusal (LinkError with the status), not as a reply it failed to decode."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            from host.child_sas import sa_specs
            from host.offload.client import LinkError
            spec_in, _ = sa_specs(install(1, selectors(m.MAX_TS + 1)), 64)
            with pytest.raises(LinkError) as e:
                await asyncio.wait_for(client.sa_add(spec_in), 5)
            assert e.value.status == m.BAD_REQUEST, e.value
            assert client.sa_count() == 0
        finally:
            await client.close()
    asyncio.run(go())


def test_a_full_board_refuses_the_next_child_sa_before_it_is_asked(small_board):
    """Four Child SAs fill 8 slots; the fifth is answered "full" without an SA_ADD."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            for h in range(1, 6):
                await asyncio.wait_for(sas.install(install(h)), 5)
            assert answers == [(h, True, None) for h in range(1, 5)] + [(5, False, "full")], answers
            sent = client.session.link.counters["sent"]
            await asyncio.wait_for(sas.install(install(6)), 5)
            assert answers[-1] == (6, False, "full") and client.session.link.counters["sent"] == sent
            assert client.sa_count() == SLOTS and pool.boards["b0"].reserved == 0
        finally:
            await client.close()
    asyncio.run(go())


def test_a_half_the_board_acked_counts_once_while_its_install_finishes(small_board):
    """Three Child SAs on a board with room for four: the third asks while the first two are
    half on the board (an SA_ADD acked, its install not resumed yet) and still fits — a slot
    in the board's books and promised to an install in flight is one slot, not two."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        try:
            first = [asyncio.ensure_future(sas.install(install(h))) for h in (1, 2)]
            b0 = pool.boards["b0"]
            while not client.has_sa(0xC0000001, m.DIR_IN) and not client.has_sa(0xD0000001, m.DIR_OUT):
                await asyncio.sleep(0)                  # until the board acked a half of the first
            assert b0.reserved < 4                      # the acked half is in the books only
            await asyncio.wait_for(sas.install(install(3)), 5)
            await asyncio.wait_for(asyncio.gather(*first), 5)
            await asyncio.wait_for(sas.install(install(4)), 5)
            assert sorted(answers) == [(h, True, None) for h in range(1, 5)], answers
            assert client.sa_count() == SLOTS and b0.reserved == 0 and not b0.promised
        finally:
            await client.close()
    asyncio.run(go())


def test_without_a_ready_board_the_install_is_refused(small_board):
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        await client.close()
        await asyncio.wait_for(sas.install(install(1)), 5)
        assert answers == [(1, False, "board b0 is closed")]      # the client says so at once
        empty = ChildSas(BoardPool(), sas.datapath, lambda *a: answers.append(a))
        await asyncio.wait_for(empty.install(install(2)), 5)
        assert answers[-1] == (2, False, "no ready board")
        assert empty.stats == {"child_installs": 0, "child_install_failures": 1}
    asyncio.run(go())


class Rtnl:
    """The rtnetlink calls TunRoutes makes (the real ones need root and a namespace:
    tests/test_tun_routes.py): a log of the route changes, this host's addresses."""

    def __init__(self, addresses=("192.0.2.1", "198.51.100.1")):
        self.calls = []
        self.proto = 149
        self._addresses = [ipaddress.ip_address(a) for a in addresses]

    async def open(self):
        return self

    def close(self):
        pass

    async def link_up(self, ifname, mtu, txqlen):
        return 7

    async def flush_ours(self):
        return 0, 0

    async def add_bypass_rule(self, family, priority, table, fwmark):
        pass

    async def addresses(self):
        return self._addresses

    async def replace_route(self, net, ifindex, table, src=None):
        self.calls.append(("add", str(net), str(src)))

    async def delete_route(self, net, ifindex, table):
        self.calls.append(("del", str(net)))


async def tun_routes(rtnl):
    from host.dataplane.tun_routes import TunRoutes
    routes = TunRoutes(rtnl, "ikeo0", mtu=1400, table=210, priority=210, fwmark=0x494B4F)
    await routes.start()
    return routes


class BrokenRoutes:
    """Route bookkeeping with a bug in it."""

    def add(self, route):
        raise RuntimeError("a bug in the route books")


def test_a_failure_after_the_board_took_both_halves_takes_them_off_again(small_board):
    """Whatever fails once the SAs are on the board (here the TUN routes' books) is answered as a
    failed install, and both halves leave the board and the data path."""
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        sas.routes = BrokenRoutes()
        try:
            await asyncio.wait_for(sas.install(install(1)), 5)
            assert answers == [(1, False, "install failed: a bug in the route books")], answers
            assert client.sa_count() == 0 and sas.installed(1) is None and pool.boards["b0"].reserved == 0
            assert not sas.datapath.by_spi_in
        finally:
            await client.close()
    asyncio.run(go())


def test_a_bug_in_the_second_half_rolls_the_first_back(small_board):
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        add = client.sa_add

        async def add_in_only(spec):
            if spec.direction == m.DIR_OUT:
                raise AttributeError("a bug")
            return await add(spec)
        client.sa_add = add_in_only
        try:
            await asyncio.wait_for(sas.install(install(1)), 5)
            assert answers == [(1, False, "install failed: a bug")], answers
            assert client.sa_count() == 0 and pool.boards["b0"].reserved == 0
        finally:
            await client.close()
    asyncio.run(go())


def test_routes_follow_the_child_sas_and_a_replaced_sa_lingers_inbound(small_board, monkeypatch):
    """The TUN routes come and go with the Child SAs; a replaced SA's outbound half leaves the
    board once its packets in flight are back, its inbound half after the linger, unless the
    board lost it meanwhile."""
    from host import child_sas as mod
    from host.ike.events import ChildSaDelete
    monkeypatch.setattr(mod, "REPLACED_INBOUND_LINGER", 0.3)
    prof, board = small_board

    async def go():
        pool, client, sas, answers = await rig(prof, board)
        tun = Rtnl()
        sas.routes = await tun_routes(tun)
        try:
            for h in (1, 2):
                await asyncio.wait_for(sas.install(install(h, remote_ts=selectors(1, "203.0.113.%d" % h))), 5)
            await sas.routes.settle()
            # each with a source inside its local selectors (not the first address, 192.0.2.1)
            assert tun.calls == [("add", "203.0.113.%d/32" % h, "198.51.100.1") for h in (1, 2)]
            r1 = sas.installed(1)
            r1.out_in_flight = 1                          # a packet of it still with the board
            sas.remove(ChildSaDelete(1, 1, r1.spi_in, r1.spi_out, "rekeyed", replaced=True))
            assert sas.installed(1) is None and sas.datapath.by_spi_in[r1.spi_in] is r1   # still decrypts
            await sas.routes.settle()
            assert tun.calls[-1] == ("del", "203.0.113.1/32")
            await asyncio.sleep(0.1)
            assert client.has_sa(r1.spi_out, m.DIR_OUT)    # waits for its packet
            r1.out_in_flight = 0
            await until(lambda: not client.has_sa(r1.spi_out, m.DIR_OUT), 2)
            assert client.has_sa(r1.spi_in, m.DIR_IN)      # the linger
            await until(lambda: not client.has_sa(r1.spi_in, m.DIR_IN), 2)
            assert r1.spi_in not in sas.datapath.by_spi_in

            r2 = sas.installed(2)
            sas.remove(ChildSaDelete(2, 1, r2.spi_in, r2.spi_out, "rekeyed", replaced=True))
            await until(lambda: not client.has_sa(r2.spi_out, m.DIR_OUT), 2)
            await client.sa_del(r2.spi_in, m.DIR_IN)      # gone from the board before its linger ends
            await asyncio.sleep(0.4)
            assert r2.spi_in not in sas.datapath.by_spi_in and client.sa_count() == 0
            assert not sas._tasks
            sas.remove(ChildSaDelete(2, 1, r2.spi_in, r2.spi_out, "again"))    # unknown now: nothing
        finally:
            await sas.routes.close()
            await client.close()
    asyncio.run(go())


async def until(cond, timeout):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "not within %.1f s" % timeout
        await asyncio.sleep(0.01)
