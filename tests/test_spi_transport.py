"""The host's SPI transport (host/offload/spi.py) with the real BoardClient, against an emulated SPI
peripheral that keeps the PIO port's transaction contract (tests/spi_peripheral.py): clean, with
CRC errors both ways, with data-ready glitches, with a slow (unarmed) board, and across resets."""
import asyncio
import random
import time

import pytest

from firmware import profiles
from firmware.link import messages as m
from host.offload.client import BoardClient
from host.offload.events import BoardLost, BoardReady
from host.offload.spi import PyftdiBus, SpiTransport, pyftdi_bus
from host.offload.transport import TransportError
from hil_tests.conftest import heartbeats_acked
from tests.spi_peripheral import EmulatedBus, EmulatedPeripheral

PROFILE = profiles.load("rp2040-pico-spi")
SPI = dict(PROFILE["spi"], gap_us=200, poll_ms=10)


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_GCM_16, b"k" * 20, reqid=spi & 0xFFFF)


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def rig(loop):
    """rig(process_s=..., **bus_faults) -> (client, peripheral, bus); everything closed after."""
    made = []

    def make(process_s=0.0002, block_size=512, spi=None, **faults):
        p = EmulatedPeripheral(profiles.board_config(PROFILE), block_size, process_s=process_s)
        bus = EmulatedBus(p, **faults)
        cfg = dict(spi or SPI, block_size=block_size)
        holder = {}

        def factory(on_data, on_error):
            t = SpiTransport(bus, cfg, on_data=on_data, on_error=on_error)
            holder["transport"] = t
            return t

        # the profile's heartbeat (200 ms x 3): a shorter one is a false loss on a loaded machine
        hb = PROFILE["heartbeat"]
        c = BoardClient("spi", "ftdi://emulated", period=hb["period_ms"] / 1000, misses=hb["misses"],
                        transport_factory=factory,
                        link_options={"rto_min": 0.01})
        holder["client"] = c
        made.append((c, p))
        return c, p, bus

    yield make
    for c, p in made:
        if not c._closed:
            loop.run_until_complete(c.close())
        p.close()


async def ready(c, timeout=5):
    await c.start()
    await c.wait_ready(timeout)


async def next_of(c, kind, timeout):
    deadline = time.monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(c.events.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(ev, kind):
            return ev


async def sa_churn(c, n, seed):
    """n SA_ADD/SA_DEL commands, 4 in flight; returns the SPIs left installed."""
    rng = random.Random(seed)
    live, adding, state = [], 0, {"done": 0, "next": 0x10000}

    async def worker():
        nonlocal adding
        while state["done"] < n:
            state["done"] += 1
            if len(live) + adding < 24 and (len(live) < 4 or rng.random() < 0.5):
                state["next"] += 1
                spi = state["next"]
                adding += 1
                await c.sa_add(spec(spi))
                adding -= 1
                live.append(spi)
            else:
                await c.sa_del(live.pop(rng.randrange(len(live))), m.DIR_IN)

    await asyncio.gather(*[worker() for _ in range(4)])
    return live


def test_hello_heartbeats_and_sa_commands_over_a_clean_spi_link(rig, loop):
    c, p, bus = rig()

    async def main():
        await ready(c)
        h = c.session.hello
        assert h.board_id == "rp2040-pico-spi" and h.max_sas == PROFILE["board"]["max_sas"]
        for i in range(10):
            assert (await c.sa_add(spec(0x2000 + i))).sa_count == i + 1
        stats = await c.stats()
        assert sorted(s.spi for s in stats) == [0x2000 + i for i in range(10)]
        await heartbeats_acked(c, 3)             # heartbeats every 100 ms agree with the books
        assert c.ready and not c.lost
        t = c.transport
        assert t.counters["bad_crc"] == 0 and t.counters["go_back"] == 0, t.counters
        # each SA_ADD applied once. (Not "no reply from the cache": on a loaded machine a late
        # reply makes the host retry a request the board already answered, which the cache is for.)
        b = p.board.counters
        assert (b.get("sa_add_ok", 0), b.get("sa_add_exists", 0)) == (10, 0), b
        return t

    t = loop.run_until_complete(main())
    # an idle link is polled (poll_ms), not clocked flat out
    n0 = t.transactions
    loop.run_until_complete(asyncio.sleep(0.5))
    assert (t.transactions - n0) < 0.5 / (SPI["poll_ms"] / 1000) + 30, t.transactions - n0


def test_crc_errors_both_ways_lose_nothing_and_apply_nothing_twice(rig, loop):
    c, p, bus = rig(flip=0.2)         # a fifth of the blocks corrupted, each way

    async def main():
        await ready(c)
        live = await sa_churn(c, 400, seed=3)
        stats = await c.stats()
        assert sorted(s.spi for s in stats) == sorted(live)
        assert sorted(c.session.books.sas) == sorted((s, 0) for s in live)
        assert not c.lost, c.lost[:1]
        counters = await c.counters()
        assert counters.get("sa_add_exists", 0) == 0 and counters.get("sa_del_not_found", 0) == 0
        assert counters.get("link_bad_crc", 0) == 0     # the SPI layer caught every corrupted block
        return c.transport

    t = loop.run_until_complete(main())
    assert bus.flipped["mosi"] > 10 and bus.flipped["miso"] > 10, bus.flipped
    assert t.counters["bad_crc"] + t.counters["bad_magic"] > 10, t.counters      # host side
    assert p.ep.counters["bad_crc"] + p.ep.counters["bad_magic"] > 10, p.ep.counters  # board side
    assert t.counters["resent"] > 0 and p.ep.counters["resent"] > 0      # lost blocks were sent again


@pytest.mark.parametrize("glitch", [
    {"dr_stuck_low": True},                   # the line never rises: the poll interval carries the link
    {"dr_spurious": 0.5},                     # it rises at random: extra idle transactions, nothing more
    {"dr_missed": 0.7},                       # most rises are missed
])
def test_data_ready_glitches_cost_latency_not_correctness(rig, loop, glitch):
    c, p, bus = rig(**glitch)

    async def main():
        await ready(c)
        live = await sa_churn(c, 100, seed=5)
        assert sorted(s.spi for s in await c.stats()) == sorted(live)
        assert not c.lost
        # traffic the board starts (its boot HELLO after a reset) still gets out
        p.reset()
        lost = await next_of(c, BoardLost, 2)
        assert lost.reason in ("unsolicited-hello", "boot-id-changed"), lost
        await next_of(c, BoardReady, 3)
        await asyncio.sleep(0.3)             # an idle link: the host watches data-ready

    loop.run_until_complete(main())
    assert bus.dr_reads > 0
    if glitch.get("dr_spurious"):
        assert bus.dr_glitches > 0, bus.__dict__


def test_a_board_that_is_not_armed_yet_reads_idle_and_the_host_backs_off(rig, loop):
    c, p, bus = rig(process_s=0.004)          # 4 ms to process a block and re-arm

    async def main():
        await ready(c)
        live = await sa_churn(c, 100, seed=7)
        assert sorted(s.spi for s in await c.stats()) == sorted(live)
        return c.transport

    t = loop.run_until_complete(main())
    assert p.idle_answers > 0 and t.counters["idle"] == p.idle_answers, (p.idle_answers, t.counters)
    assert p.board.counters.get("sa_add_exists", 0) == 0 and not c.lost


def test_board_reset_is_seen_and_the_link_restarts(rig, loop):
    c, p, bus = rig()

    async def main():
        await ready(c)
        await c.sa_add(spec(0x7000))
        old = c.session.boot_id
        p.reset()
        lost = await next_of(c, BoardLost, 2)
        assert lost.reason in ("unsolicited-hello", "boot-id-changed") and lost.sas == ((0x7000, 0),)
        rd = await next_of(c, BoardReady, 3)
        assert rd.boot_id != old
        assert (await c.sa_add(spec(0x7001))).sa_count == 1
        # RESET over the link: the reply is flushed, then the board boots and says why
        await c.reset()
        await next_of(c, BoardLost, 2)
        rd = await next_of(c, BoardReady, 3)
        assert rd.hello.reset_cause == m.RESET_COMMAND
        return c.transport

    t = loop.run_until_complete(main())
    assert t.counters["peer_restarts"] >= 2, t.counters


def test_small_blocks_carry_large_frames(rig, loop):
    """A 64-byte transaction carries 50 payload bytes: a 4 KB SA_STATS reply spans ~80 blocks."""
    c, p, bus = rig(block_size=64, flip=0.02)

    async def main():
        await ready(c)
        for i in range(24):
            await c.sa_add(spec(0x9000 + i))
        assert len(await c.stats()) == 24

    loop.run_until_complete(main())


def test_adapter_errors_are_transport_errors(loop):
    class DeadBus:
        def exchange(self, block):
            raise OSError("USB device gone")

        def data_ready(self):
            return True

        def close(self):
            pass

    errors = []

    async def main():
        t = SpiTransport(DeadBus(), SPI, on_data=lambda d: None, on_error=errors.append)
        t.open()
        t.write(b"\x00hello\x00")
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.01)
        assert not t.is_open

    loop.run_until_complete(main())
    assert len(errors) == 1 and isinstance(errors[0], TransportError) and "USB device gone" in str(errors[0])


def test_pyftdi_binding_reports_a_missing_adapter_by_url():
    with pytest.raises(TransportError, match=r"ftdi://ftdi:232h/9"):
        PyftdiBus("ftdi://ftdi:232h/9")
    with pytest.raises(TransportError, match="ftdi_url"):
        pyftdi_bus({"spi": {"clock_hz": 1000000, "host": {}}})


def test_transport_for_a_profile():
    from host.offload.serial_port import SerialTransport
    from host.offload.transport import for_profile

    t = for_profile(profiles.load("esp32-devkitc"), "/dev/ttyUSB1")
    assert isinstance(t, SerialTransport) and (t.baudrate, t.rtscts) == (921600, True)
    with pytest.raises(TransportError, match=r"ftdi://ftdi:232h/9"):
        for_profile(PROFILE, "ftdi://ftdi:232h/9")
