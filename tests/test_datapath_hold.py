"""ESP that arrives for a Child SA the peer installed before the board here has it (the peer
installs when it answers, RFC 7296 §1.2/§2.8) waits for the install instead of being dropped and
answered with INVALID_SPI; bounded, and reported as unknown if the SA never comes."""
import asyncio
import ipaddress

from host.dataplane import datapath as dp_mod
from host.dataplane.datapath import ChildRoute, DataPath
from host.ike.events import ChildSaInstall
from tests.test_engine import A, pair


def test_the_engine_names_the_inbound_spis_of_child_sas_being_set_up():
    a, b, net = pair()
    net.accept[A] = None                         # installs left to us: the board has not answered
    a.initiate("gw", 0.0)
    net.pump(0.0)
    (inst,) = [e for e in net.events[A] if isinstance(e, ChildSaInstall)]
    assert a.spi_pending(inst.spi_in)
    assert not a.spi_pending(inst.spi_out) and not a.spi_pending(0x12345678)
    a.child_sa_installed(inst.handle, True, 0.0)
    assert not a.spi_pending(inst.spi_in)           # installed: no longer pending, simply known


def esp(spi, seq=1):
    return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes(40)


def route(spi_in, handle=1):
    net = [ipaddress.ip_network("10.0.0.0/24")]
    return ChildRoute(handle, "nowhere", spi_in, 0x99, ("192.0.2.2", 4500), net, net)


def run(coro):
    return asyncio.run(coro)


def test_held_packets_go_to_the_board_once_the_sa_is_installed():
    async def go():
        unknown = []
        dp = DataPath({}, None, None, on_unknown_spi=lambda spi, addr: unknown.append(spi),
                      pending=lambda spi: spi == 0x1000)
        for i in range(3):
            dp.esp_in(esp(0x1000, i + 1), ("192.0.2.2", 4500))
        dp.esp_in(esp(0x2000), ("192.0.2.2", 4500))             # nobody's: unknown at once
        assert dp.stats["in_held"] == 3 and unknown == [0x2000]
        dp.add(route(0x1000))
        await asyncio.sleep(0)
        assert dp.stats["in_held_delivered"] == 3
        # on to the board's batch ("nowhere" is no board here, so they are counted there)
        assert dp.stats["dropped_board_not_ready"] == 3
        await asyncio.sleep(dp_mod.HOLD_SECONDS + 0.1)
        assert unknown == [0x2000] and dp.stats["in_held_expired"] == 0
    run(go())


def test_held_packets_are_bounded_and_reported_unknown_if_the_sa_never_comes(monkeypatch):
    monkeypatch.setattr(dp_mod, "HOLD_SECONDS", 0.05)

    async def go():
        unknown = []
        dp = DataPath({}, None, None, on_unknown_spi=lambda spi, addr: unknown.append(spi),
                      pending=lambda spi: True)
        for i in range(dp_mod.HOLD_PER_SPI + 10):
            dp.esp_in(esp(0x1000, i + 1), ("192.0.2.2", 4500))
        assert dp.stats["in_held"] == dp_mod.HOLD_PER_SPI and dp.stats["in_held_overflow"] == 10
        for spi in range(0x2000, 0x2000 + dp_mod.HOLD_SPIS + 5):
            dp.esp_in(esp(spi), ("192.0.2.2", 4500))
        assert len(dp._held) == dp_mod.HOLD_SPIS and len(unknown) == 6       # beyond the SPI bound
        await asyncio.sleep(0.2)
        assert not dp._held and dp.stats["in_held_expired"] == dp_mod.HOLD_PER_SPI + dp_mod.HOLD_SPIS - 1
        assert unknown.count(0x1000) == 1                                      # once, not per packet
    run(go())


def test_esp_from_another_source_is_dropped_until_the_ike_sa_moves_there():
    """RFC 3948 / RFC 7296 §2.23: ESP on a known SPI from another address or port costs no link
    time and is reported (the daemon may check whether a NAT moved the peer); once the IKE SA
    moved (IkeSaMoved), the Child SA's ESP is accepted from, and sent to, the new mapping."""
    async def go():
        seen = []
        dp = DataPath({}, None, None, on_wrong_peer=lambda r, addr: seen.append((r.handle, addr)))
        r = route(0x1000)
        dp.add(r)
        dp.esp_in(esp(0x1000), ("192.0.2.2", 40000))            # the peer's address, another port
        dp.esp_in(esp(0x1000), ("192.0.2.9", 4500))             # another address
        assert dp.stats["in_wrong_peer"] == 2 and dp.stats["dropped_board_not_ready"] == 0
        assert seen == [(1, ("192.0.2.2", 40000)), (1, ("192.0.2.9", 4500))]
        dp.moved([r.handle], ("192.0.2.2", 40000))
        assert r.peer == ("192.0.2.2", 40000)
        dp.esp_in(esp(0x1000), ("192.0.2.2", 40000))
        assert dp.stats["in_wrong_peer"] == 2 and dp.stats["dropped_board_not_ready"] == 1   # on to the board
        dp.esp_in(esp(0x1000), ("192.0.2.2", 4500))             # the old mapping is the wrong one now
        assert dp.stats["in_wrong_peer"] == 3
    run(go())
