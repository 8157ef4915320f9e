"""Install ikeoffloadd on a router: a virtual environment, the systemd unit, /etc/ikeoffload.

    sudo python3 tools/install.py [--prefix /opt/ikeoffload] [--etc /etc/ikeoffload]
                                  [--unit-dir /etc/systemd/system] [--wheel FILE] [--spi]

Runs with Debian's own python3 (standard library only; python3-venv from apt):
1. PREFIX becomes a venv made from /usr/bin/python3 with the package (built from this checkout,
   or --wheel) and the daemon's dependencies only — [spi] (pyftdi) where an SPI board is
   configured or --spi is given, [metrics] (prometheus_client) where daemon.metrics is set.
2. ETC gets the swanctl-like layout: x509/ (our certificates), x509ca/ (trust anchors), x509crl/
   (CRLs), private/ (keys and passphrase files, 0700), boards/ (the router's own board profiles),
   and ikeoffloadd.toml (the packaged example when none exists; never overwritten). The
   configuration holds PSKs: it and every file in private/ are made 0600.
3. UNIT_DIR/ikeoffloadd.service is the packaged unit with ExecStart in PREFIX and the config in
   ETC; USB devices are allowed where an SPI adapter is configured. systemd-analyze checks it.
4. UNIT_DIR/keepalived.service.d/ikeoffload.conf orders keepalived after the daemon: an HA pair's
   keepalived watches the daemon's track file in /run/ikeoffload (packaging/keepalived.conf), and
   a track file whose directory does not exist when keepalived starts is dropped for good.
5. `systemctl daemon-reload` when systemd runs; enabling the service is left to the owner.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)             # run as a script by Debian's python3: firmware.cli from the checkout
from firmware import cli  # noqa: E402  (standard library only)
UNIT = "ikeoffloadd.service"
KEEPALIVED_DROPIN = os.path.join("keepalived.service.d", "ikeoffload.conf")
KEEPALIVED_ORDER = ("# installed by ikeoffload's tools/install.py: keepalived watches ikeoffloadd's HA track\n"
                    "# file in /run/ikeoffload, which ikeoffloadd makes; keepalived must start after it\n"
                    "[Unit]\nAfter=ikeoffloadd.service\n")
CONFIG = "ikeoffloadd.toml"
PKI_DIRS = {"x509": 0o755, "x509ca": 0o755, "x509crl": 0o755, "private": 0o700, "boards": 0o755}
# what the packaged unit says, and what each becomes
SHIPPED_PREFIX, SHIPPED_ETC = "/opt/ikeoffload", "/etc/ikeoffload"
SHIPPED_SOCKET = "/run/ikeoffload/control.sock"
USB_LINE = "#DeviceAllow=char-usb_device rw"
BUILD_LEFTOVERS = (".git", ".venv", "venv", "node_modules", "build", "dist", "*.egg-info", ".cache", "__pycache__",
                   ".pytest_cache", ".hypothesis")


class InstallError(Exception):
    pass


def say(msg):
    print("install: " + msg, flush=True)


def run(args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    r = subprocess.run(args, capture_output=True, text=True, env=env, **kw)
    if r.returncode:
        raise InstallError("%s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr))
    return r.stdout


def build_wheel(checkout, outdir, python=sys.executable):
    """The wheel, built from a copy of the checkout without build products (setuptools would reuse a
    stale build/ in place and install files the tree no longer has)."""
    with tempfile.TemporaryDirectory(prefix="ikeoffload-build-") as tmp:
        src = os.path.join(tmp, "src")
        shutil.copytree(checkout, src, symlinks=True, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
        run([python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", outdir, src])
    wheels = sorted(f for f in os.listdir(outdir) if f.startswith("ikeoffload-") and f.endswith(".whl"))
    if not wheels:
        raise InstallError("pip built no wheel in %s" % outdir)
    return os.path.join(outdir, wheels[-1])


def make_venv(prefix, python):
    py = os.path.join(prefix, "bin", "python")
    if not os.path.exists(py):
        say("venv %s (from %s)" % (prefix, python))
        try:
            run([python, "-m", "venv", prefix])
        except InstallError as e:
            raise InstallError("%s\n(Debian: apt-get install python3-venv)" % e) from None
    return py


def pip_install(py, wheel, extras):
    """The dependencies (upgraded where the wheel asks), then the package itself, reinstalled even
    when its version did not change."""
    spec = wheel + ("[%s]" % ",".join(extras) if extras else "")
    say("pip install %s" % os.path.basename(spec))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + ["--upgrade", spec])
    run(pip + ["--force-reinstall", "--no-deps", wheel])


def package_file(py, name):
    """A file the installed package carries (host/packaging/NAME)."""
    where = run([py, "-c", "import host, os; print(os.path.dirname(host.__file__))"], cwd="/").strip()
    return os.path.join(where, "packaging", name)


def config_needs(py, config):
    """What the installed daemon's configuration needs: spi where it names a board on an SPI link
    (an FTDI adapter), metrics where it sets [daemon] metrics (prometheus_client), and its
    control_socket (where the unit's ExecReload finds the daemon)."""
    none = {"spi": False, "metrics": False, "control_socket": None}
    if not os.path.exists(config):
        return none
    code = ("import json, sys\nfrom host import config\n"
            "c = config.load(sys.argv[1])\n"
            "print(json.dumps({'spi': any(b.profile['link']['kind'] == 'spi-pio' for b in c.boards), "
            "'metrics': c.metrics is not None, 'control_socket': c.control_socket}))")
    try:
        return json.loads(run([py, "-c", code, config], cwd="/"))
    except InstallError:
        return none             # a bad config is reported by --check-config below


def install_etc(etc, example):
    os.makedirs(etc, mode=0o755, exist_ok=True)
    for d, mode in PKI_DIRS.items():
        path = os.path.join(etc, d)
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
    config = os.path.join(etc, CONFIG)
    if not os.path.exists(config):
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f, open(example) as src:
            f.write(src.read())
        say("%s: the packaged example; edit it (boards, addresses, PSK), then check it" % config)
    secrets = [config] + [os.path.join(etc, "private", f) for f in sorted(os.listdir(os.path.join(etc, "private")))]
    for path in secrets:
        if os.path.isfile(path) and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
            say("%s: mode 0600 (it holds secrets)" % path)
    return config


def render_unit(template, prefix, etc, spi, control_socket=None):
    """The packaged unit with this install's paths; ExecReload names the configured control socket
    where it is not the default one."""
    text = template.replace(SHIPPED_PREFIX + "/bin/", prefix.rstrip("/") + "/bin/")
    text = text.replace(SHIPPED_ETC + "/", etc.rstrip("/") + "/")
    if spi:
        text = text.replace(USB_LINE, USB_LINE[1:])
    if control_socket and control_socket != SHIPPED_SOCKET:
        text = text.replace("/bin/ikeoffloadctl reload", "/bin/ikeoffloadctl --socket %s reload" % control_socket)
    return text


def verify_unit(path):
    """systemd-analyze verify: errors fail it; its warnings (unknown keys, ...) are printed."""
    if shutil.which("systemd-analyze") is None:
        return None
    r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if r.returncode:
        raise InstallError("systemd-analyze verify %s:\n%s" % (path, out))
    return out


def install(prefix, etc, unit_dir, wheel=None, spi=False, python="/usr/bin/python3", systemctl=True):
    prefix, etc = os.path.abspath(prefix), os.path.abspath(etc)
    py = make_venv(prefix, python)
    with tempfile.TemporaryDirectory(prefix="ikeoffload-wheel-") as tmp:
        if wheel is None:
            say("building the wheel from %s" % ROOT)
            wheel = build_wheel(ROOT, tmp, py)
        pip_install(py, os.path.abspath(wheel), ["spi"] if spi else [])
        config = install_etc(etc, package_file(py, CONFIG))
        needs = config_needs(py, config)
        if not spi and needs["spi"]:
            say("%s configures an SPI board: adding pyftdi and USB device access" % config)
            spi = True
        if needs["metrics"]:
            say("%s sets daemon.metrics: adding prometheus_client" % config)
        if needs["spi"] or needs["metrics"]:
            pip_install(py, os.path.abspath(wheel), ["spi"] * spi + ["metrics"] * needs["metrics"])
    with open(package_file(py, UNIT)) as f:
        unit = render_unit(f.read(), prefix, etc, spi, needs["control_socket"])
    os.makedirs(unit_dir, exist_ok=True)
    unit_path = os.path.join(unit_dir, UNIT)
    with open(unit_path, "w") as f:
        f.write(unit)
    os.chmod(unit_path, 0o644)
    say("%s: ExecStart=%s/bin/ikeoffloadd --config %s" % (unit_path, prefix, config))
    dropin = os.path.join(unit_dir, KEEPALIVED_DROPIN)
    os.makedirs(os.path.dirname(dropin), exist_ok=True)
    with open(dropin, "w") as f:
        f.write(KEEPALIVED_ORDER)
    os.chmod(dropin, 0o644)
    say("%s: keepalived starts after ikeoffloadd (an HA pair's track file)" % dropin)
    warnings = verify_unit(unit_path)
    if warnings:
        say("systemd-analyze verify:\n" + warnings)
    if systemctl and os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        run(["systemctl", "daemon-reload"])
    check = subprocess.run([os.path.join(prefix, "bin", "ikeoffloadd"), "--check-config", config],
                           capture_output=True, text=True)
    say((check.stdout or check.stderr).strip())
    say("next: edit %s, `%s/bin/ikeoffloadd --check-config %s`, then `systemctl enable --now ikeoffloadd`"
        % (config, prefix, config))
    return unit_path


def main(argv=None):
    ap = cli.ArgumentParser(prog="tools/install.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default=SHIPPED_PREFIX, help="the venv (default %(default)s)")
    ap.add_argument("--etc", default=SHIPPED_ETC, help="configuration directory (default %(default)s)")
    ap.add_argument("--unit-dir", default="/etc/systemd/system", help="where the unit goes (default %(default)s)")
    ap.add_argument("--wheel", help="install this wheel instead of building one from the checkout")
    ap.add_argument("--spi", action="store_true", help="SPI boards: pyftdi, and USB devices allowed to the unit")
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter of the venv (default %(default)s)")
    ap.add_argument("--no-systemctl", action="store_true", help="do not run systemctl daemon-reload")
    args = ap.parse_args(argv)
    if args.wheel and not os.path.isfile(args.wheel):
        ap.error("--wheel %s: no such file" % args.wheel)
    if not os.path.isfile(args.python):
        ap.error("--python %s: no such interpreter" % args.python)
    try:
        install(args.prefix, args.etc, args.unit_dir, args.wheel, args.spi, args.python, not args.no_systemctl)
    except (InstallError, OSError) as e:
        print("install: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
