"""systemd's notification protocol: the Notifier on real unix datagram sockets, then the real daemon
(a simulated board on a pty, no TUN) as systemd would run it with Type=notify and WatchdogSec:
READY=1 once it serves, WATCHDOG=1 pings from its event loop, SIGHUP (ExecReload) logged and
survived, STOPPING=1 at SIGTERM."""
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

from host import sdnotify
from tests.simboard import SimBoard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def receiver(path=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s


def test_notifier_speaks_to_a_path_and_an_abstract_socket(tmp_path):
    for name in (str(tmp_path / "notify"), "\0ikeoffload-test-%d" % os.getpid()):
        with receiver(name) as r:
            env = {"NOTIFY_SOCKET": "@" + name[1:] if name[0] == "\0" else name}
            n = sdnotify.Notifier(env)
            assert n.send("READY=1", "STATUS=2 boards")
            assert r.recv(4096) == b"READY=1\nSTATUS=2 boards"
            n.stopping()
            assert r.recv(4096) == b"STOPPING=1"
            n.close()


def test_no_socket_no_messages_and_the_watchdog_belongs_to_its_pid():
    assert not sdnotify.Notifier({}).send("READY=1")
    assert not sdnotify.Notifier({"NOTIFY_SOCKET": "relative"}).send("READY=1")
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_watchdog_pings_come_from_the_event_loop(tmp_path):
    path = str(tmp_path / "n")
    with receiver(path) as r:
        r.setblocking(False)
        n = sdnotify.Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})

        async def main():
            n.ready(asyncio.get_running_loop())
            await asyncio.sleep(0.2)
            time.sleep(0.2)              # the loop is blocked: no pings meanwhile
            got = []
            while True:
                try:
                    got.append(r.recv(100))
                except BlockingIOError:
                    return got
        got = asyncio.run(main())
        n.close()
    assert got[0] == b"READY=1" and 5 <= got.count(b"WATCHDOG=1") <= 12, got


def free_udp_ports(n):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def daemon_config(tmp_path, board_url, link_key):
    ike, natt = free_udp_ports(2)
    cfg = tmp_path / "ikeoffloadd.toml"
    cfg.write_text('[daemon]\ncontrol_socket = "%s"\nlisten = "127.0.0.1"\n\n[ike]\nport = %d\nnatt_port = %d\n\n'
                   '[[board]]\nname = "b0"\nprofile = "sim"\nport = "%s"\nlink_key = "%s"\n'
                   % (tmp_path / "ctl.sock", ike, natt, board_url, link_key))
    return cfg


def test_daemon_under_a_notify_socket(tmp_path):
    board = SimBoard()
    path = str(tmp_path / "notify")
    log = open(tmp_path / "daemon.log", "w+")
    with receiver(path) as r:
        cfg = daemon_config(tmp_path, board.url, board.link_key_path)
        env = dict(os.environ, PYTHONPATH=ROOT, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
        d = subprocess.Popen([sys.executable, "-m", "host", "--config", str(cfg), "--no-tun"], cwd=ROOT, env=env,
                             stdout=log, stderr=log)
        try:
            first = r.recv(4096).decode()
            assert first.startswith("READY=1\nSTATUS=1 board(s), 0 connection(s)"), first
            log.seek(0)
            assert "board b0 ready" in log.read()        # READY comes once the daemon serves
            t0 = time.monotonic()
            pings = [r.recv(100) for _ in range(5)]
            assert pings == [b"WATCHDOG=1"] * 5 and time.monotonic() - t0 < 1.5
            d.send_signal(signal.SIGHUP)                 # a reload: RELOADING=1, then READY=1
            said = []
            while not said or said[-1] != b"READY=1\nSTATUS=1 board(s), 0 connection(s)":
                said.append(r.recv(100))
            reloading = [m for m in said if m != b"WATCHDOG=1"][0]
            assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", reloading), said
            usec = int(reloading.split(b"=")[-1])
            assert abs(usec / 1e6 - time.monotonic()) < 5             # CLOCK_MONOTONIC, in microseconds
            assert d.poll() is None
            assert r.recv(100) == b"WATCHDOG=1"
            log.seek(0)
            assert "configuration reloaded from %s" % cfg in log.read()
            d.send_signal(signal.SIGTERM)
            while (msg := r.recv(100)) == b"WATCHDOG=1":
                pass
            assert msg == b"STOPPING=1"
            assert d.wait(10) == 0
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
            board.close()
            log.close()
