"""BoardClient over real transports: a board that is not there yet, and one that goes away; a port
that cannot be opened, said with its cause."""
import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from firmware.link import keyfile
from host.offload import client as client_mod
from host.offload.client import BoardClient
from host.offload.events import BoardLost, BoardReady
from host.offload.session import CLOSED
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


def test_flush_says_whether_the_board_confirmed_and_raises_nothing(tmp_path):
    """What a shutdown, a reload and a fall to standby rely on: a flush that cannot be done (no
    board yet, a board that stopped answering) is False, never an exception or a wait without end."""
    key_path = str(tmp_path / "b.key")
    key, _ = keyfile.ensure(key_path)

    async def main():
        port = free_port()
        c = BoardClient("b", "socket://127.0.0.1:%d" % port, reopen_interval=0.1, link_key=key, period=1.0)
        await c.start(retry=True)
        assert await c.flush() is False                      # not there yet
        p = sim(port, key_path)
        try:
            await c.wait_ready(5)
            assert await c.flush() is True
            p.send_signal(signal.SIGSTOP)                    # the board stops answering (lost only in 3 s)
            t0 = asyncio.get_running_loop().time()
            assert await c.flush(0.5) is False
            assert asyncio.get_running_loop().time() - t0 < 1.5
            t0 = asyncio.get_running_loop().time()
            await c.flush_and_close(0.5)                     # and still closes
            assert asyncio.get_running_loop().time() - t0 < 1.5 and c.session.state == CLOSED
        finally:
            p.kill()
            p.wait()
    asyncio.run(main())


def open_warnings(caplog, name):
    return [r.getMessage() for r in caplog.records
            if r.name == "ikeoffloadd.board" and r.getMessage().startswith("board %s: " % name)]


def test_a_port_that_cannot_be_opened_is_said_once_per_cause_with_the_cause_in_words(tmp_path, caplog, monkeypatch):
    """A missing device, a file, a directory, then a tty: one line for each cause (not one per
    retry), a reminder while one cause lasts, and a line when the port opens."""
    monkeypatch.setattr(client_mod, "OPEN_REMINDER", 0.4)
    path = tmp_path / "port"
    master, slave = os.openpty()

    async def until(pred, timeout=3.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            assert asyncio.get_running_loop().time() < deadline, open_warnings(caplog, "b")
            await asyncio.sleep(0.02)

    async def main():
        c = BoardClient("b", str(path), reopen_interval=0.05)
        await c.start(retry=True)
        try:
            await until(lambda: c.open_failures >= 4)
            path.write_text("")                                  # a regular file: no tty
            await until(lambda: c.open_problem and "not a tty" in c.open_problem)
            await until(lambda: any("still cannot open" in m for m in open_warnings(caplog, "b")))
            path.unlink()
            path.mkdir()
            await until(lambda: c.open_problem and "directory" in c.open_problem)
            path.rmdir()
            path.symlink_to(os.ttyname(slave))                   # the device appears
            await until(lambda: c.transport is not None and c.transport.is_open)
        finally:
            await c.close()

    with caplog.at_level(logging.INFO, logger="ikeoffloadd.board"):
        asyncio.run(main())
    os.close(master)
    os.close(slave)
    said = open_warnings(caplog, "b")
    first = [m for m in said if m.startswith("board b: cannot open ")]            # one a cause, not one a retry
    assert [("no such device" in m, "not a tty" in m, "a directory" in m) for m in first] == \
        [(True, False, False), (False, True, False), (False, False, True)], said
    assert first[0].startswith("board b: cannot open %s: no such device (not plugged in, or renumbered: name it "
                               "by /dev/serial/by-id/" % path), first[0]
    assert "retrying every 0.05 s" in first[0] and "may name another device" not in first[0]
    assert "not a tty: no serial device" in first[1] and "a directory, not a serial device" in first[2]
    assert any(m.startswith("board b: still cannot open %s after " % path) and m.endswith("not a tty: no serial device")
               for m in said), said
    assert re.fullmatch(r"board b: %s open again after \d+ failed tries" % re.escape(str(path)), said[-1]), said


def test_a_missing_renumbered_port_is_one_line_naming_by_id(caplog):
    async def main():
        c = BoardClient("b", "/dev/ttyUSB97", reopen_interval=0.05)
        await c.start(retry=True)
        await asyncio.sleep(0.3)
        await c.close()
        return c.open_failures

    with caplog.at_level(logging.INFO, logger="ikeoffloadd.board"):
        tries = asyncio.run(main())
    said = open_warnings(caplog, "b")
    assert tries >= 3 and len(said) == 1, said
    assert said[0].startswith("board b: cannot open /dev/ttyUSB97: no such device (not plugged in, or renumbered: "
                              "name it by /dev/serial/by-id/..."), said[0]
