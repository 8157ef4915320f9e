"""The router install path (tools/install.py, `inv install`): a venv from /usr/bin/python3 with the
wheel, the swanctl-like /etc/ikeoffload with 0600 secrets, and the systemd unit with an ExecStart
that exists, Type=notify, a watchdog, ExecReload and hardening — checked by `systemd-analyze
verify` (systemd's own parser: unknown keys, missing binaries). Directories are under tmp; the
dependencies come from PyPI, as in test_wheel.py."""
import configparser
import os
import re
import stat
import subprocess
import sys

import pytest

from host import __version__
from tools import install

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unit_of(path):
    """[Service] as a dict of lists (a key may repeat: DeviceAllow)."""
    out = {}
    section = None
    for line in open(path):
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return install.build_wheel(ROOT, str(tmp_path_factory.mktemp("dist")))


def installer(tmp, wheel, *extra):
    args = [sys.executable, os.path.join(ROOT, "tools", "install.py"), "--prefix", str(tmp / "opt" / "ikeoffload"),
            "--etc", str(tmp / "etc" / "ikeoffload"), "--unit-dir", str(tmp / "units"), "--wheel", wheel,
            "--no-systemctl"] + list(extra)
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_install_venv_etc_and_a_unit_systemd_accepts(tmp_path, wheel):
    out = installer(tmp_path, wheel)
    prefix, etc = tmp_path / "opt" / "ikeoffload", tmp_path / "etc" / "ikeoffload"
    daemon = prefix / "bin" / "ikeoffloadd"
    assert subprocess.run([str(daemon), "--version"], capture_output=True, text=True).stdout.strip() == \
        "ikeoffloadd " + __version__
    config = etc / "ikeoffloadd.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_text() == open(os.path.join(ROOT, "packaging", "ikeoffloadd.toml")).read()
    for d, mode in (("x509", 0o755), ("x509ca", 0o755), ("x509crl", 0o755), ("private", 0o700), ("boards", 0o755)):
        assert stat.S_IMODE((etc / d).stat().st_mode) == mode, d
    assert "valid (2 board(s), 1 connection(s))" in out

    unit_path = tmp_path / "units" / "ikeoffloadd.service"
    svc = unit_of(unit_path)
    assert svc["ExecStart"] == ["%s --config %s" % (daemon, config)]
    assert svc["ExecStartPre"] == ["%s --check-config %s" % (daemon, config)]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"] and svc["WatchdogSec"] == ["10"]
    assert svc["ExecReload"] == ["%s reload" % (prefix / "bin" / "ikeoffloadctl")] and svc["LimitCORE"] == ["0"]
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert svc["SystemCallFilter"] == ["@system-service"]
    assert "char-usb_device rw" not in svc["DeviceAllow"]          # no SPI adapter configured
    r = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # systemd's own measure of the hardening (0 safe .. 10 exposed; the unit before it had: 6.7)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_path)], capture_output=True,
                       text=True)
    m = re.search(r"Overall exposure level for ikeoffloadd.service: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= 3.0, r.stdout[-400:]
    # keepalived starts after the daemon, whose runtime directory holds an HA pair's track file
    dropin = configparser.ConfigParser(strict=False, interpolation=None)
    dropin.read(tmp_path / "units" / "keepalived.service.d" / "ikeoffload.conf")
    assert dropin["Unit"]["After"] == "ikeoffloadd.service"
    # the shipped unit names the default prefix; it is the same file apart from the paths
    shipped = configparser.ConfigParser(strict=False, interpolation=None)
    shipped.read(os.path.join(ROOT, "packaging", "ikeoffloadd.service"))
    assert shipped["Service"]["ExecStart"] == \
        "/opt/ikeoffload/bin/ikeoffloadd --config /etc/ikeoffload/ikeoffloadd.toml"


def test_reinstall_keeps_the_config_tightens_its_mode_and_sees_spi_boards(tmp_path, wheel):
    installer(tmp_path, wheel)
    etc = tmp_path / "etc" / "ikeoffload"
    config = etc / "ikeoffloadd.toml"
    pico = 'profile = "rp2040-pico"\nport = "/dev/serial/by-id/usb-MicroPython_Board_in_FS_mode_e6614c311b7e6f35-if00"'
    text = config.read_text().replace(pico, 'profile = "rp2040-pico-spi"\nport = "ftdi://ftdi:232h/1"')
    assert "rp2040-pico-spi" in text
    text = text.replace('control_socket = "/run/ikeoffload/control.sock"', 'control_socket = "/run/ikeoffload/gw.sock"')
    text = text.replace('# metrics = "127.0.0.1:9466"', 'metrics = "127.0.0.1:9466"')
    assert "gw.sock" in text and '\nmetrics = "127.0.0.1:9466"' in text
    config.write_text(text)
    os.chmod(config, 0o644)
    (etc / "private" / "gw.key").write_text("a key")
    os.chmod(etc / "private" / "gw.key", 0o640)
    out = installer(tmp_path, wheel)
    assert config.read_text() == text                                  # never overwritten
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and "mode 0600" in out
    assert stat.S_IMODE((etc / "private" / "gw.key").stat().st_mode) == 0o600
    assert "configures an SPI board" in out
    svc = unit_of(tmp_path / "units" / "ikeoffloadd.service")
    assert "char-usb_device rw" in svc["DeviceAllow"]
    py = str(tmp_path / "opt" / "ikeoffload" / "bin" / "python")
    assert subprocess.run([py, "-c", "import pyftdi"]).returncode == 0
    assert "sets daemon.metrics" in out
    assert subprocess.run([py, "-c", "import prometheus_client"]).returncode == 0
    ctl = tmp_path / "opt" / "ikeoffload" / "bin" / "ikeoffloadctl"
    assert svc["ExecReload"] == ["%s --socket /run/ikeoffload/gw.sock reload" % ctl]    # where the daemon listens
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "units" / "ikeoffloadd.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "install.py"), "--wheel", str(tmp_path / "no.whl")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--wheel" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
