"""The data path (host/dataplane/datapath.py) against the simulated board on a pty: batching
within the board's frame and batch limits, packets queued on an SA that a rekey stopped, and
what is counted when packets cannot go (malformed, no SA, the board refusing or lost).

The Child SA here loops back: the same SPI and keys each way and selectors that cover both
ends, so what the board encrypts decrypts again on it (the ESP it hands out comes back in as
the peer's)."""
import asyncio

import pytest

from firmware import profiles
from firmware.link import messages as m
from firmware.tests.espdata import icmp_echo, ipv4
from host.child_sas import ChildSas
from host.dataplane.datapath import DataPath
from host.ike.events import ChildSaInstall
from host.ike.payloads import TrafficSelector
from host.offload.client import BoardClient
from host.offload.pool import BoardPool
from tests.simboard import SimBoard

PEER = ("192.0.2.2", 4500)
HERE, THERE = bytes((10, 0, 0, 1)), bytes((10, 0, 9, 9))


@pytest.fixture(scope="module")
def board():
    b = SimBoard()
    yield b
    b.close()


def loop_sa(handle, spi):
    net = [TrafficSelector.from_range("10.0.0.0", "10.0.255.255")]
    key = bytes(range(handle, handle + 32))
    return ChildSaInstall(
        handle=handle, ike_id=1, name="net", protocol=3, mode="tunnel", spi_in=spi, spi_out=spi,
        encr=m.ENCR_AES_GCM_16, encr_key_bits=256, integ=0, key_in=key, salt_in=bytes(4), integ_key_in=b"",
        key_out=key, salt_out=bytes(4), integ_key_out=b"", esn=False, local_ts=net, remote_ts=net,
        local_addr="192.0.2.1", remote_addr=PEER[0], encap=True, local_port=4500, remote_port=PEER[1],
        initiator=True)


def pkt(seq, size=100, src=HERE, dst=THERE):
    return ipv4(src, dst, 1, icmp_echo(7, seq, bytes(size - 28)))


class Rig:
    async def start(self, board):
        self.pool = BoardPool()
        self.client = BoardClient("b0", board.url, profile=profiles.load("sim"), period=0.1, misses=5,
                                  on_event=self.pool.on_event, link_key=board.link_key)
        self.pool.add("b0", self.client)
        await self.client.start()
        await self.client.wait_ready(5)
        self.esp, self.tun, self.unknown = [], [], []
        self.dp = DataPath({"b0": self.client}, lambda esp, addr: self.esp.append((esp, addr)), self.tun.append,
                           on_unknown_spi=lambda spi, addr: self.unknown.append(spi))
        self.sas = ChildSas(self.pool, self.dp, lambda h, ok, why: None)
        return self

    async def install(self, handle, spi):
        await asyncio.wait_for(self.sas.install(loop_sa(handle, spi)), 5)
        return self.sas.installed(handle)

    def requests(self):
        return self.client.session.link.counters["data_sent"]


def rig(board, body):
    async def go():
        r = await Rig().start(board)
        try:
            await body(r)
        finally:
            await r.client.close()
    asyncio.run(go())


async def until(cond, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "not within %.1f s" % timeout
        await asyncio.sleep(0.005)


def test_a_burst_goes_in_batches_the_board_takes_and_comes_back_intact(board):
    """200 packets handed over at once leave in a few ENCRYPT requests, none over the board's
    max_batch (64) packets, each ESP to the SA's peer; back in, they decrypt to what went out."""
    async def body(r):
        route = await r.install(1, 0x0A000001)
        burst = [pkt(i, 200 + i) for i in range(200)]
        r.dp.tun_packets(burst)
        await until(lambda: len(r.esp) == 200)
        sent = r.requests()
        assert 200 / r.client.session.hello.max_batch <= sent < 50, sent
        assert all(addr == PEER and esp[:4] == (0x0A000001).to_bytes(4, "big") for esp, addr in r.esp)
        assert (route.packets_out, route.bytes_out) == (200, sum(len(p) for p in burst))
        for esp, addr in r.esp:
            r.dp.esp_in(esp, addr)
        await until(lambda: len(r.tun) == 200)
        assert sorted(r.tun) == sorted(burst) and route.packets_in == 200
        assert route.out_in_flight == 0 and r.dp.queue_state()["b0"]["in_flight"] == 0
        assert not r.dp.drops()
    rig(board, body)


def test_packets_queued_on_an_sa_a_rekey_stopped_leave_on_its_successor(board):
    async def body(r):
        old = await r.install(1, 0x0B000001)
        new = await r.install(2, 0x0B000002)
        new.sending = False                          # installed, waiting for ChildSaOutbound
        r.dp.routes.reverse()                        # the old one first, as before the rekey
        r.dp.tun_packets([pkt(i) for i in range(5)])  # queued on the old SA...
        r.dp.send_on(2, replaces=1)                  # ... when traffic moves (before the pump runs)
        await until(lambda: len(r.esp) == 5)
        assert {esp[:4] for esp, _ in r.esp} == {(0x0B000002).to_bytes(4, "big")}
        assert (old.packets_out, new.packets_out) == (0, 5)
        r.dp.send_on(1, replaces=2)                  # and back: nothing for the old one, ...
        old.sending = False
        r.dp.tun_packets([pkt(9)])
        await asyncio.sleep(0.05)
        assert r.dp.stats["out_no_sa"] == 1 and len(r.esp) == 5      # ... no SA carries it now
    rig(board, body)


def test_what_cannot_go_is_counted_by_reason(board):
    async def body(r):
        route = await r.install(1, 0x0C000001)
        r.dp.tun_packets([b"\x45\x00", b"\x60" + bytes(10), bytes(30)])      # no IPv4 or IPv6 header
        six = b"\x60" + bytes(7) + bytes(16) + bytes(15) + b"\x01"
        r.dp.tun_packets([six, pkt(1, dst=bytes((192, 0, 2, 99)))])                        # no SA for them
        r.dp.esp_in(b"\x0c\x00\x00", PEER)                                                  # shorter than SPI+seq
        assert (r.dp.stats["tun_malformed"], r.dp.stats["out_no_sa"], r.dp.stats["in_malformed"]) == (3, 2, 1)
        # ESP the board cannot open: its ICV fails, or its SPI is gone from the board
        r.dp.tun_packets([pkt(2)])
        await until(lambda: len(r.esp) == 1)
        forged = bytearray(r.esp[0][0])
        forged[-1] ^= 1
        r.dp.esp_in(bytes(forged), PEER)
        await until(lambda: r.dp.stats["decrypt_status_%d" % m.P_AUTH_FAIL] == 1)
        await r.client.sa_del(route.spi_in, m.DIR_IN)                  # behind the data path's back
        r.dp.esp_in(r.esp[0][0], PEER)
        await until(lambda: r.dp.stats["in_unknown_spi_board"] == 1)
        assert r.unknown == [route.spi_in] and not r.tun
        await r.client.sa_del(route.spi_out, m.DIR_OUT)
        r.dp.tun_packets([pkt(3)])
        await until(lambda: r.dp.stats["encrypt_status_%d" % m.P_UNKNOWN_SPI] == 1)
        assert len(r.esp) == 1 and route.packets_out == 1
        drops = r.dp.drops()
        assert drops["out_no_sa"] == 2 and "in_wrong_peer" not in drops
    rig(board, body)


def test_a_board_lost_with_packets_in_flight_and_queued(board):
    """The board resets: the batch in flight fails (counted, never retried: ESP has its own
    sequence numbers), and nothing more goes on the lost board's SAs."""
    async def body(r):
        route = await r.install(1, 0x0D000001)
        r.dp.tun_packets([pkt(i, 1400) for i in range(100)])
        await asyncio.sleep(0)                        # the first batches are handed to the link
        await r.client.request(m.RESET, b"")          # the board answers, then reboots
        await until(lambda: r.dp.stats["encrypt_failed"] > 0)
        r.dp.set_usable("b0", False)                  # what the daemon does on BoardLost
        await asyncio.sleep(0.05)
        # every packet accounted for: encrypted before the reset, failed with the batch it was
        # in, refused one by one by the rebooted board (its SAs are gone) before the host saw
        # the loss, or dropped from the queue
        dropped = r.dp.queues["b0"].drops
        refused = sum(n for k, n in r.dp.stats.items() if k.startswith("encrypt_status_"))
        assert len(r.esp) + r.dp.stats["encrypt_failed"] + refused + sum(dropped.values()) == 100, (
            dropped, r.dp.stats)
        assert route.out_in_flight == 0
        r.dp.tun_packets([pkt(200)])
        r.dp.esp_in((route.spi_in).to_bytes(4, "big") + bytes(40), PEER)
        assert r.dp.stats["out_dropped_board_lost"] == 1 and r.dp.stats["in_dropped_board_lost"] == 1
        await until(lambda: r.client.ready)
        r.dp.set_usable("b0", True)                   # (the daemon makes new SAs instead)
        unknown = "encrypt_status_%d" % m.P_UNKNOWN_SPI
        before = r.dp.stats[unknown]                  # the burst's own refusals, if any reached the new boot
        r.dp.tun_packets([pkt(201)])
        await until(lambda: r.dp.stats[unknown] == before + 1)     # the SA went with it
    rig(board, body)
