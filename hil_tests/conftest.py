"""HIL fixtures: --board sim (default) | mpy-virtual | <profile> with --port DEV [--reset DEV]."""
import asyncio

import pytest

from hil_tests.bench import open_bench
from hil_tests.faults import FaultyTransport
from host.offload.client import BoardClient


def pytest_addoption(parser):
    parser.addoption("--board", default="sim", help="sim (default), sim:PROFILE (the sim standing in for that "
                     "board: its transforms, link rate and CPU), mpy-virtual, or a profile in boards/")
    parser.addoption("--port", default=None, help="the board's link: serial device, URL, ftdi:// URL "
                     "(mpy-virtual: a running virtual board's REPL or link pty)")
    parser.addoption("--reset", default=None, help="device whose RTS/DTR (or ftdi:// URL whose GPIO) resets "
                     "the board, as its profile's [reset] says (default: --port)")
    parser.addoption("--link-key", default=None, help="a real board's link key file (as `inv flash --link-key` "
                     "wrote it); the sim and a virtual board started here make their own")
    parser.addoption("--throttle", default=None, help="sim only: pace the link like a UART at this baud "
                     "rate, or at a profile's link.baud (e.g. esp32-devkitc)")


@pytest.fixture(scope="session")
def bench(request):
    o = request.config.getoption
    b = open_bench(o("--board"), o("--port"), o("--reset"), o("--throttle"), o("--link-key"))
    yield b
    b.close()


@pytest.fixture
def reset(bench):
    """Reset the board as its bench can: the sim's or virtual board's control socket, the
    adapter's RTS/DTR line, or an FTDI GPIO on RUN/EN. reset(quiet=True) loses the boot HELLO."""
    return bench.reset


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def run(loop):
    """Run a coroutine to completion on the test's event loop."""
    return loop.run_until_complete


@pytest.fixture
def make_client(bench, loop):
    """Factory: an opened BoardClient on the bench (optionally through byte faults)."""
    made = []

    async def make(fault=0.0, seed=1, wait=True, **kw):
        kw.setdefault("period", bench.period)
        kw.setdefault("misses", bench.misses)
        kw.setdefault("link_options", bench.link_options)
        kw.setdefault("link_key", bench.link_key)

        def factory(on_data, on_error):
            t = bench.make_transport(on_data, on_error)   # serial, pty, socket:// or SPI, as the bench says
            return FaultyTransport(t, fault=fault, seed=seed) if fault else t

        c = BoardClient("hil", bench.url, profile=bench.profile, transport_factory=factory, **kw)
        made.append(c)
        await c.start()
        if wait:
            await c.wait_ready(10 + bench.boot_s)
            ev = await c.events.get()
            assert type(ev).__name__ == "BoardReady", ev
        return c

    yield make
    for c in made:
        if not c._closed:
            loop.run_until_complete(c.close())


async def heartbeats_acked(c, n=2, timeout=10.0):
    """Wait (instead of sleeping a fixed time) until the board acked ``n`` heartbeats sent from
    now on: each ack was compared with the host's books."""
    loop = asyncio.get_running_loop()
    start, since = c.session.counters["heartbeats"], loop.time()
    deadline = since + timeout
    while not (c.session.counters["heartbeats"] - start >= n and (c.session.last_ack_at or 0) > since):
        if loop.time() > deadline:
            raise AssertionError("no heartbeat acks within %.1f s" % timeout)
        await asyncio.sleep(0.01)


def needs(bench, what):
    if not getattr(bench, what):
        pytest.skip("this bench cannot %s" % what.replace("can_", "").replace("_", " "))
