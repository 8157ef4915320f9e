"""The daemon's checks before it changes anything (host/preflight.py), on real files, ptys, unix and
UDP sockets: each refusal names file, line and key; a missing or forbidden board port does not stop
the daemon (its client says why and retries it); a port's problem in words; /dev/serial/by-id/."""
import errno
import os
import socket
import subprocess
import sys

import pytest

from firmware.link import keyfile
from host import config, preflight
from host.offload import port_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_udp_ports(n):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_config(tmp_path, port, ike=None, key=True):
    """A configuration with one board; key: make its link key file (private/b0.key)."""
    ike, natt = ike or free_udp_ports(2)
    text = ('[daemon]\ncontrol_socket = "%s"\nlisten = "127.0.0.1"\n\n[ike]\nport = %d\nnatt_port = %d\n\n'
            '[[board]]\nname = "b0"\nprofile = "sim"\nport = "%s"\nlink_key = "private/b0.key"\n'
            % (tmp_path / "run" / "ctl.sock", ike, natt, port))
    os.makedirs(tmp_path, exist_ok=True)
    if key:
        keyfile.ensure(str(tmp_path / "private" / "b0.key"))
    path = tmp_path / "ikeoffloadd.toml"
    path.write_text(text)
    return config.load(str(path)), text


def line(text, marker):
    return text[:text.index(marker)].count("\n") + 1


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_one_instance_per_control_socket(tmp_path, pty):
    cfg, text = make_config(tmp_path, pty)
    guard = preflight.check(cfg, tun=False)
    try:
        with pytest.raises(config.ConfigError) as e:
            preflight.check(cfg, tun=False)
        assert str(e.value).startswith("%s:%d: daemon.control_socket: ikeoffloadd (pid %d) already runs"
                                       % (cfg.path, line(text, "control_socket"), os.getpid())), str(e.value)
    finally:
        guard.release()
    preflight.check(cfg, tun=False).release()          # the lock goes with its holder


def test_a_live_control_socket_is_not_taken_over(tmp_path, pty):
    cfg, _ = make_config(tmp_path, pty)
    os.makedirs(os.path.dirname(cfg.control_socket))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(cfg.control_socket)
        srv.listen()
        with pytest.raises(config.ConfigError, match="daemon.control_socket: a daemon answers on"):
            preflight.check(cfg, tun=False)
    preflight.check(cfg, tun=False).release()          # now a stale file: fine
    os.unlink(cfg.control_socket)
    with open(cfg.control_socket, "w") as f:
        f.write("a file the owner wants to keep")
    with pytest.raises(config.ConfigError, match="exists and is not a socket"):
        preflight.check(cfg, tun=False)
    assert open(cfg.control_socket).read() == "a file the owner wants to keep"


def test_ports_in_use_and_foreign_addresses(tmp_path, pty):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        cfg, text = make_config(tmp_path, pty, ike=(free_udp_ports(1)[0], busy))
        with pytest.raises(config.ConfigError) as e:
            preflight.check(cfg, tun=False)
        assert "%s:%d: ike.natt_port: UDP 127.0.0.1 port %d is in use" % (cfg.path, line(text, "natt_port"), busy) \
            in str(e.value)
    cfg.listen = "192.0.2.123"
    with pytest.raises(config.ConfigError, match=r"daemon\.listen: 192\.0\.2\.123 is not an address of this host"):
        preflight.check(cfg, tun=False)


def test_board_ports_that_cannot_be_serial_are_refused(tmp_path):
    regular = tmp_path / "not-a-tty"
    regular.write_text("")
    for port, says in ((str(regular), "is not a serial device but a regular file"),
                       (str(tmp_path), "is not a serial device but a directory"),
                       ("/dev/null", "is a character device but not a tty")):
        cfg, text = make_config(tmp_path, port)
        with pytest.raises(config.ConfigError) as e:
            preflight.check(cfg, tun=False)
        assert str(e.value).startswith("%s:%d: board[0].port: " % (cfg.path, line(text, 'port = "/'))), str(e.value)
        assert says in str(e.value)


def test_a_board_port_held_by_another_daemon_is_refused(tmp_path, pty):
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    a, _ = make_config(tmp_path / "a", pty)
    b, _ = make_config(tmp_path / "b", pty)
    guard = preflight.check(a, tun=False)
    try:
        with pytest.raises(config.ConfigError, match=r"board\[0\]\.port: %s is held by another" % pty):
            preflight.check(b, tun=False)
    finally:
        guard.release()


def test_a_missing_port_is_left_to_the_client_and_a_renumbered_one_named_by_id(tmp_path, pty, monkeypatch):
    """A missing device does not stop the daemon (the board's client says why and retries it:
    tests/test_board_client.py); a /dev/ttyUSBn name is a warning of the validator, and where the
    device has a /dev/serial/by-id/ link the daemon names it."""
    cfg, text = make_config(tmp_path, "/dev/ttyUSB97")
    preflight.check(cfg, tun=False).release()
    assert cfg.warnings == ["%s:%d: board[0].port: /dev/ttyUSB97 is numbered in plug order: after a replug or a "
                            "reboot it may name another device, and the daemon would speak its link protocol to it; "
                            "name the board by its /dev/serial/by-id/ link (`ls -l /dev/serial/by-id/`)"
                            % (cfg.path, line(text, 'port = "/dev/ttyUSB97"'))]
    # a by-id directory as udev makes it (a symlink to the device), here for a pty
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-Silicon_Labs_CP2102_0001-if00-port0").symlink_to(pty)
    monkeypatch.setattr(port_names, "BY_ID", str(by_id))
    assert port_names.by_id_name(pty) == str(by_id / "usb-Silicon_Labs_CP2102_0001-if00-port0")
    assert port_names.by_id_name("/dev/null") is None
    assert port_names.by_id_advice(pty) is None                    # a pty is not numbered in plug order
    assert "configure the board's name under %s/" % by_id in port_names.by_id_advice("/dev/ttyACM3")
    assert port_names.by_id_advice("socket://127.0.0.1:7000") is None
    cfg, _ = make_config(tmp_path / "b", str(by_id / "usb-Silicon_Labs_CP2102_0001-if00-port0"))
    assert cfg.warnings == []


def test_the_cause_of_a_port_in_words(tmp_path):
    import serial
    words = {errno.ENOENT: "no such device", errno.EACCES: "permission denied", errno.ENOTTY: "not a tty",
             errno.EISDIR: "a directory", errno.EBUSY: "busy: another program holds it",
             errno.EIO: "Input/output error"}
    for code, says in words.items():
        assert says in port_names.port_problem("/dev/x", OSError(code, os.strerror(code))), code
    assert "group dialout" in port_names.port_problem("/dev/x", errno.EACCES, root=False)
    assert "dialout" not in port_names.port_problem("/dev/x", errno.EACCES, root=True)
    assert "not plugged in?" in port_names.port_problem("/dev/serial/by-id/usb-x", errno.ENOENT)
    # pyserial's errors, as it raises them: termios.error wrapped without an errno, and OSError's
    for path, code in ((tmp_path, errno.EISDIR), (tmp_path / "nosuch", errno.ENOENT)):
        with pytest.raises(serial.SerialException) as e:
            serial.serial_for_url(str(path))
        assert port_names.os_errno(e.value) == code
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(serial.SerialException) as e:
        serial.serial_for_url(str(regular))
    assert e.value.errno is None and port_names.os_errno(e.value) == errno.ENOTTY


def test_the_daemon_refuses_a_bad_board_port_in_one_line(tmp_path):
    regular = tmp_path / "board"
    regular.write_text("")
    cfg, text = make_config(tmp_path, str(regular))
    r = subprocess.run([sys.executable, "-m", "host", "--config", cfg.path, "--no-tun"], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=30)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert "%s:%d: board[0].port: %s is not a serial device" % (cfg.path, line(text, 'port = "/'), regular) in lines[0]
    assert not os.path.exists(cfg.control_socket)


def test_a_board_link_key_must_be_there_ours_alone_and_a_key(tmp_path, pty):
    """The key is the link's whole security: a missing one, one others can read, or a file that
    holds no key stops the daemon before it touches anything, naming the setting."""
    cfg, text = make_config(tmp_path, pty, key=False)
    where = "%s:%d: board[0].link_key: " % (cfg.path, line(text, "link_key = "))
    key = tmp_path / "private" / "b0.key"
    with pytest.raises(config.ConfigError) as e:
        preflight.check(cfg, tun=False)
    assert str(e.value).startswith(where) and "No such file" in str(e.value), e.value
    keyfile.create(str(key))
    os.chmod(key, 0o644)
    with pytest.raises(config.ConfigError) as e:
        preflight.check(cfg, tun=False)
    assert str(e.value).startswith(where) and "chmod 600" in str(e.value), e.value
    os.chmod(key, 0o600)
    key.write_text("not a key\n")
    with pytest.raises(config.ConfigError) as e:
        preflight.check(cfg, tun=False)
    assert str(e.value).startswith(where) and "64 hex digits" in str(e.value), e.value
    key.unlink()
    keyfile.create(str(key))
    preflight.check(cfg, tun=False).release()


def test_the_metrics_endpoint_needs_its_port_and_prometheus_client(tmp_path, pty, monkeypatch):
    cfg, text = make_config(tmp_path, pty)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "ikeoffloadd.toml"
        text = text.replace('listen = "127.0.0.1"\n', 'listen = "127.0.0.1"\nmetrics = "127.0.0.1:%d"\n' % port)
        path.write_text(text)
        cfg = config.load(str(path))
        with pytest.raises(config.ConfigError) as e:
            preflight.check(cfg, tun=False)
        assert str(e.value).startswith("%s:%d: daemon.metrics: TCP 127.0.0.1 port %d: Address already in use"
                                       % (path, line(text, "metrics ="), port)), str(e.value)
    preflight.check(cfg, tun=False).release()                      # the port is free again
    monkeypatch.setitem(sys.modules, "prometheus_client", None)     # as where the extra is not installed
    with pytest.raises(config.ConfigError, match=r"daemon.metrics: needs the prometheus_client package: pip install "
                       r"'ikeoffload\[metrics\]'"):
        preflight.check(cfg, tun=False)


def test_the_ha_track_file_needs_its_directory(tmp_path, pty):
    """keepalived drops a track file whose directory is missing: refused before anything starts."""
    cfg, text = make_config(tmp_path, pty)
    path = tmp_path / "ikeoffloadd.toml"
    health = tmp_path / "ka" / "ha-health"
    text += '\n[ha]\nenabled = true\ntrack_file = "%s"\n' % health
    path.write_text(text)
    cfg = config.load(str(path))
    with pytest.raises(config.ConfigError) as e:
        preflight.check(cfg, tun=False)
    assert str(e.value).startswith("%s:%d: ha.track_file: %s: no such directory"
                                   % (path, line(text, "track_file ="), health.parent)), str(e.value)
    health.mkdir(parents=True)           # the path names a directory, not a file
    with pytest.raises(config.ConfigError, match="ha.track_file: .* is a directory"):
        preflight.check(cfg, tun=False)
    health.rmdir()
    preflight.check(cfg, tun=False).release()
