"""BoardClient over real transports: a board that is not there yet, and one that goes away."""
import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from firmware.link import keyfile
from host.offload.client import BoardClient
from host.offload.events import BoardLost, BoardReady
from host.offload.transport import TransportError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim(port, key):
    p = subprocess.Popen([sys.executable, "-m", "firmware.sim", "--socket", "127.0.0.1:%d" % port,
                          "--link-key", key],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.stdout.readline().startswith("board: socket://")
    return p


async def next_of(c, kind, timeout):
    while True:
        ev = await asyncio.wait_for(c.events.get(), timeout)
        if isinstance(ev, kind):
            return ev


def test_a_board_that_appears_later_and_one_that_goes_away(tmp_path):
    key_path = str(tmp_path / "b.key")
    key, _ = keyfile.ensure(key_path)                       # the board's link key, as inv flash makes it

    async def main():
        port = free_port()
        url = "socket://127.0.0.1:%d" % port
        with pytest.raises(TransportError):
            await BoardClient("b", url).start()              # default: say so at once
        c = BoardClient("b", url, reopen_interval=0.1, link_key=key)
        await c.start(retry=True)                            # the daemon's way: keep trying
        assert c.transport is None and not c.ready
        await asyncio.sleep(0.3)
        p = sim(port, key_path)
        try:
            await c.wait_ready(5)
            first = (await next_of(c, BoardReady, 1)).boot_id
            p.send_signal(signal.SIGKILL)                    # the board vanishes (USB unplugged)
            p.wait()
            lost = await next_of(c, BoardLost, 5)
            assert lost.reason in ("transport-error", "missed-heartbeats")
            p = sim(port, key_path)                          # and comes back: a new boot
            ready = await next_of(c, BoardReady, 5)
            assert ready.boot_id != first
        finally:
            await c.close()
            p.kill()
            p.wait()
    asyncio.run(main())
