"""End to end: the real BoardClient drives the simulated board (python -m firmware.sim, ESP
engine with the cryptography backend) over its pseudo-terminal with pyserial."""
import asyncio

import pytest

from firmware.link import frame as fr
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, det, ipv4
from host.offload.client import BoardClient
from host.offload.events import SaExpired, UnknownSpiReport
from tests.simboard import SimBoard


@pytest.fixture
def sim():
    s = SimBoard()
    yield s
    s.close()


async def _client(sim):
    c = BoardClient("sim0", sim.url, period=0.1, misses=5, link_key=sim.link_key)
    await c.start()
    await c.wait_ready(5)
    return c


async def _next(events, kind, timeout=3.0):
    async def wait():
        while True:
            ev = await events.get()
            if isinstance(ev, kind):
                return ev
    return await asyncio.wait_for(wait(), timeout)


def test_encrypt_decrypt_batches_through_the_simulated_board(sim):
    async def run():
        c = await _client(sim)
        try:
            hello = c.session.hello
            assert {t.backend for t in hello.transforms} == {"cryptography"}
            assert all(t.speed == m.SPEED_FAST for t in hello.transforms)
            for encr in (m.ENCR_AES_GCM_16, m.ENCR_AES_CBC):
                spi = 0x7000 + encr
                kw = dict(flags=m.SAF_UDP_ENCAP, reqid=5)
                await c.sa_add(d.spec(spi, m.DIR_OUT, encr, src=(A1, 4500), dst=(A2, 4500), **kw))
                await c.sa_add(d.spec(spi, m.DIR_IN, encr, src=(A2, 4500), dst=(A1, 4500), **kw))
                pkts = [ipv4(A1, A2, 17, d.udp(1, 2, det(n, n))) for n in (0, 64, 512, 1400)]
                out = await c.encrypt([(spi, p) for p in pkts])
                assert [st for st, _ in out] == [m.P_OK] * 4
                back = await c.decrypt([((A1, 4500), w) for _, w in out] + [((A1, 4500), b"\xff")])
                assert back[:4] == [(m.P_OK, spi, p) for p in pkts]
                assert back[4][0] == m.P_KEEPALIVE
                again = await c.decrypt([((A1, 4500), out[0][1])])
                assert again == [(m.P_REPLAY, spi, b"")]
            stats = {(s.spi, s.direction): s for s in await c.stats()}
            s_in = stats[(0x7000 + m.ENCR_AES_GCM_16, m.DIR_IN)]
            assert (s_in.packets, s_in.replay, s_in.seq, s_in.reqid) == (4, 1, 4, 5)
        finally:
            await c.close()
    asyncio.run(run())


def test_unknown_spi_and_expiry_events_reach_the_host(sim):
    async def run():
        c = await _client(sim)
        try:
            junk = [((A1, 4500), (0xBAD00 + i).to_bytes(4, "big") + det(40)) for i in range(20)]
            out = await c.decrypt(junk)
            assert {st for st, _, _ in out} == {m.P_UNKNOWN_SPI}
            rep = await _next(c.events, UnknownSpiReport)
            assert sum(n for _, _, n in rep.entries) + rep.suppressed >= 1
            assert all(src == (A1, 4500) for _, src, _ in rep.entries)
            await c.sa_add(d.spec(0x7100, m.DIR_OUT, src=(A1, 0), dst=(A2, 0), hard_packets=2, reqid=9))
            out = await c.encrypt([(0x7100, ipv4())] * 3)
            assert [st for st, _ in out] == [m.P_OK, m.P_OK, m.P_EXPIRED]
            ev = await _next(c.events, SaExpired)
            assert (ev.spi, ev.hard, ev.reason, ev.reqid) == (0x7100, True, m.EXP_PACKETS, 9)
            assert c.ready   # an expired SA is the host's to delete: the books still agree
            await c.sa_del(0x7100, m.DIR_OUT)
        finally:
            await c.close()
    asyncio.run(run())


def test_batches_larger_than_the_default_frame_limit(sim):
    """Replies of a full batch are as large as the board's max_frame (16384 for the sim): the
    host adopts the HELLO's max_frame instead of dropping them as oversize."""
    async def run():
        c = await _client(sim)
        try:
            assert c.session.hello.max_frame > fr.DEFAULT_MAX_FRAME
            await c.sa_add(d.spec(0x7200, m.DIR_OUT, src=(A1, 0), dst=(A2, 0)))
            await c.sa_add(d.spec(0x7200, m.DIR_IN, src=(A2, 0), dst=(A1, 0)))
            pkts = [ipv4(A1, A2, 17, d.udp(1, 2, det(1372, k))) for k in range(10)]
            out = await c.encrypt([(0x7200, p) for p in pkts])
            assert sum(len(e) for _, e in out) > fr.DEFAULT_MAX_FRAME
            back = await c.decrypt([((A1, 0), e) for _, e in out])
            assert [p for _, _, p in back] == pkts
        finally:
            await c.close()
    asyncio.run(run())
