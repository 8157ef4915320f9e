"""`ikeoffloadd` in process (host/ikeoffloadd.py, host/daemon.py's run): the configuration check,
the refusals before anything changes, a whole run with a simulated board until SIGTERM, and
the log lines journald files by priority. No root: no TUN device (--no-tun), loopback only."""
import logging
import os
import signal
import socket
import threading
import time

import pytest

from host import config as cfgmod
from host import control, ikeoffloadd, preflight
from tests.daemon_pair import A_IP, CONFIG, free_udp_ports
from tests.simboard import SimBoard


@pytest.fixture(scope="module")
def sim():
    b = SimBoard()
    yield b
    b.close()


@pytest.fixture
def root_logging():
    """main() sets up the root logger for the daemon: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def config(tmp_path, sim, **over):
    ike, natt = free_udp_ports(A_IP, 2)
    fields = dict(ctl=tmp_path / "ctl.sock", ip=A_IP, flush="true", board="b0", port=sim.url,
                  key=sim.link_key_path, ike=ike, natt=natt, peer="127.0.0.2", peer_ike=500, peer_natt=4500,
                  start="none", me="a", other="b", lnet="10.1.0.0/24", rnet="10.2.0.0/24", esp="aes128gcm16")
    fields.update(over)
    path = tmp_path / "ikeoffloadd.toml"
    path.write_text(CONFIG.format(**fields))
    return path


def test_check_config_says_valid_or_names_file_line_and_key(tmp_path, sim, capsys):
    path = config(tmp_path, sim)
    assert ikeoffloadd.main(["--check-config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "%s: valid (1 board(s), 1 connection(s))" % path
    text = path.read_text().replace("tries = 3", "tries = -3")
    path.write_text(text)
    line = text.splitlines().index("tries = -3") + 1
    for argv in (["--check-config", str(path)], ["--config", str(path)]):
        assert ikeoffloadd.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("ikeoffloadd: %s:%d: " % (path, line)) and "tries" in err, err


def test_a_second_instance_is_refused_before_it_touches_anything(tmp_path, sim, capsys, root_logging):
    path = config(tmp_path, sim)
    first = preflight.check(cfgmod.load(path), tun=False)       # what a running daemon holds
    try:
        assert ikeoffloadd.main(["--config", str(path), "--no-tun", "--log-level", "debug"]) == 1
        err = capsys.readouterr().err
        assert "daemon.control_socket: ikeoffloadd (pid %d) already runs" % os.getpid() in err, err
        assert not (tmp_path / "ctl.sock").exists()
    finally:
        first.release()


def test_a_run_until_sigterm_serves_the_board_and_stops_cleanly(tmp_path, sim, capsys, root_logging):
    """What systemd does with the unit: start, ask it something, SIGTERM; exit status 0, the
    board flushed and the instance lock and control socket released."""
    path = config(tmp_path, sim)
    ctl = str(tmp_path / "ctl.sock")
    seen = {}

    def operator():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if control.answers(ctl):
                r = control.call(ctl, {"cmd": "list-boards"}, 5)
                if r["ok"] and r["result"][0]["state"] == "ready":
                    seen["boards"] = r["result"]
                    break
            time.sleep(0.05)
        seen["ctl"] = control.main(["--socket", ctl, "list-boards"])
        os.kill(os.getpid(), signal.SIGTERM)
    t = threading.Thread(target=operator)
    t.start()
    try:
        rc = ikeoffloadd.main(["--config", str(path), "--no-tun", "--log-level", "info"])
    finally:
        t.join(15)
    assert rc == 0
    out = capsys.readouterr()
    assert seen["boards"][0]["name"] == "b0" and seen["ctl"] == 0
    assert "b0: READY, %s, profile sim" % sim.url in out.out
    assert "started: 1 board(s) ready (b0), 1 connection(s)" in out.err
    assert "stopped: 0 IKE SA(s) deleted, boards flushed" in out.err
    assert not os.path.exists(ctl)
    again = preflight.check(cfgmod.load(path), tun=False)       # the lock was released
    again.release()


def test_a_port_taken_between_the_checks_and_the_start_is_named(tmp_path, sim, capsys, root_logging,
                                                                 monkeypatch):
    path = config(tmp_path, sim)
    cfg = cfgmod.load(path)
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    real_check = preflight.check

    def check_then_lose_the_port(c, tun=True):
        guard = real_check(c, tun)
        thief.bind((A_IP, c.ike_port))
        return guard
    monkeypatch.setattr(preflight, "check", check_then_lose_the_port)
    try:
        assert ikeoffloadd.main(["--config", str(path), "--no-tun"]) == 1
    finally:
        thief.close()
    err = capsys.readouterr().err
    line = path.read_text().splitlines().index("port = %d" % cfg.ike_port) + 1
    assert "%s:%d: ike.port: UDP %s port %d is in use" % (path, line, A_IP, cfg.ike_port) in err, err
    again = real_check(cfg, tun=False)                          # the guard was released
    again.release()


def test_log_lines_carry_journald_priorities_only_under_journald():
    rec = logging.LogRecord("ikeoffloadd", logging.WARNING, __file__, 1, "board %s lost", ("b0",), None)
    assert ikeoffloadd.JournalFormatter(True).format(rec) == "<4>board b0 lost"
    rec.levelno = logging.ERROR
    assert ikeoffloadd.JournalFormatter(True).format(rec) == "<3>board b0 lost"
    plain = ikeoffloadd.JournalFormatter(False).format(rec)
    assert not plain.startswith("<") and plain.endswith("WARNING ikeoffloadd: board b0 lost")
