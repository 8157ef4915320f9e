"""HIL fixtures: --board sim (default) | <profile> with --port DEV."""
import asyncio

import pytest

from hil_tests.bench import open_bench
from hil_tests.faults import FaultyTransport
from host.offload.client import BoardClient


def pytest_addoption(parser):
    parser.addoption("--board", default="sim", help="sim (default) or a profile in boards/")
    parser.addoption("--port", default=None, help="serial device or URL of a real board")


@pytest.fixture(scope="session")
def bench(request):
    b = open_bench(request.config.getoption("--board"), request.config.getoption("--port"))
    yield b
    b.close()


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
        factory = None
        if fault:
            def factory():
                return FaultyTransport(bench.url, baudrate=bench.baudrate, rtscts=bench.rtscts,
                                       on_data=c._on_data, on_error=c._on_transport_error,
                                       fault=fault, seed=seed)
        kw.setdefault("link_options", bench.link_options)
        c = BoardClient("hil", bench.url, baudrate=bench.baudrate, rtscts=bench.rtscts,
                        transport_factory=factory, **kw)
        made.append(c)
        await c.start()
        if wait:
            await c.wait_ready(10)
            ev = await c.events.get()
            assert type(ev).__name__ == "BoardReady", ev
        return c

    yield make
    for c in made:
        if not c._closed:
            loop.run_until_complete(c.close())


def needs(bench, what):
    if not getattr(bench, what):
        pytest.skip("this bench cannot %s" % what.replace("can_", "").replace("_", " "))
