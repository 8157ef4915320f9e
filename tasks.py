"""invoke tasks: setup, demo, daemon, sim, vboard, flash, flash-micropython, test, hil, bench, lint, install.

Run `inv --list`. Tasks that need root (network namespaces, strongSwan) say so.
"""
import os
import shlex
import sys
from pathlib import Path

from invoke import task

ROOT = Path(__file__).resolve().parent
PY = sys.executable


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # scapy writes a cache under $HOME/.cache on import
    env.setdefault("XDG_CACHE_HOME", str(ROOT / ".cache"))
    return env


@task(help={"socket": "serve on socket://HOST:PORT instead of a pseudo-terminal",
            "baud": "throttle to a UART rate (bytes/s = baud/10); default the profile's link rate, 0 none",
            "profile": "the board it stands in for: transforms, link rate, CPU (default sim)"})
def sim(c, socket=None, baud=None, profile="sim"):
    """Run the simulated board; prints `board: <device or URL>` first."""
    args = [PY, "-m", "firmware.sim", "--profile", profile]
    if socket:
        args += ["--socket", socket]
    if baud:
        args += ["--baud", str(baud)]
    os.execvpe(PY, args, _env())


@task(help={"k": "pytest -k expression", "x": "stop at first failure"})
def test(c, k=None, x=False):
    """Run everything CI runs (tests, HIL on the sim and on the virtual MicroPython board).

    tests/, hil_tests/ (simulated board) and firmware tests (CPython and MicroPython), then
    hil_tests/ again on the virtual MicroPython board, flashed with the real mpremote."""
    extra = (["-k", shlex.quote(k)] if k else []) + (["-x"] if x else [])
    # the busy-board tests also against the sim standing in for a UART board (921600 baud, its CPU)
    for suite in (["tests", "hil_tests", "firmware/tests"], ["hil_tests", "--board", "mpy-virtual"],
                  ["hil_tests/test_busy_board.py", "--board", "sim:esp32-devkitc"]):
        c.run(" ".join([PY, "-m", "pytest"] + suite + extra), env=_env(), pty=False)


# The fast tests: in process or on the simulated board, no root, no charon, no node. `inv coverage`
# measures host/ and firmware/ under these; the rest (interop, daemon, MicroPython, the virtual
# board) need root, strongSwan or node and run in `inv test`.
FAST_TESTS = ["tests", "firmware/tests", "hil_tests"]
NOT_FAST = ["tests/interop", "tests/test_daemon.py", "tests/test_testbed_ping.py", "tests/test_micropython.py",
            "tests/test_vboard.py", "tests/test_flash.py", "tests/test_noskip.py", "tests/test_lint.py",
            "tests/test_scale.py", "tests/test_routing.py", "tests/test_tun_routes.py",
            "tests/test_ha_failover.py"]
# Branch coverage floors (percent) of the fast tests, per package and for the daemon's modules
# one by one: the figure reached on 2026-12-03 (host 90.0, firmware 88.4; each file's in the
# comment) less one to three points for branches that depend on timing on a loaded machine.
COVERAGE_FLOOR = {
    "host": 88.5, "firmware": 87.0,
    # daemon.py, control.py and control_views.py: the reload, the waiting ikeoffloadctl verbs, the
    # metrics and HA verbs are held by the daemon tests with charon (root), not by the fast ones
    "host/daemon.py": 84.0,                 # 86.1
    "host/child_sas.py": 95.5,              # 97.8
    "host/board_loss.py": 85.0,             # 88.8: the sliced flush and the restart by room are
                                            # exercised by the scale tests (root), not here
    "host/control.py": 80.0,                # 82.1
    "host/control_views.py": 68.0,          # 70.0
    "host/ikeoffloadd.py": 92.0,            # 94.6
    "host/offload/session.py": 96.0,        # 98.8
    "host/offload/link.py": 93.0,           # 95.9
    "host/offload/client.py": 86.0,         # 89.9
    "host/dataplane/datapath.py": 92.0,     # 94.6
    "host/dataplane/aqm.py": 91.0,          # 93.7
    "host/ike/auth.py": 95.0,               # 97.4 (tests/test_auth.py, test_signatures.py, test_pki.py,
                                            # test_cert_chains.py alone)
}


@task(help={"k": "pytest -k expression", "html": "also write an HTML report to build/coverage"})
def coverage(c, k=None, html=False):
    """Branch coverage of host/ and firmware/ by the fast tests (no root, charon or node); prints the
    report and fails below the floors (COVERAGE_FLOOR: per package and per file)."""
    env = _env()
    env.pop("HIL_HEARTBEATS", None)     # CI's long heartbeat run is inv test's; coverage needs the short one
    env["COVERAGE_FILE"] = str(ROOT / "build" / ".coverage")
    (ROOT / "build").mkdir(exist_ok=True)
    args = [PY, "-m", "coverage", "run", "-m", "pytest", "-q", "-p", "no:cacheprovider"] + FAST_TESTS
    args += ["--ignore=" + p for p in NOT_FAST] + (["-k", shlex.quote(k)] if k else [])
    c.run(" ".join(args), env=env, pty=False)
    c.run(f"{PY} -m coverage report", env=env, pty=False)
    if html:
        c.run(f"{PY} -m coverage html -d {ROOT / 'build' / 'coverage'}", env=env, pty=False)
    failed = []
    for part, floor in COVERAGE_FLOOR.items():
        what, include = (part, part) if part.endswith(".py") else (part + "/", part + "/*")
        r = c.run(f"{PY} -m coverage report --include='{include}' --format=total", env=env, hide=True, pty=False)
        total = float(r.stdout.strip())
        print(f"{what}: {total:.1f}% branch coverage (floor {floor}%)")
        if total < floor:
            failed.append(f"{what} {total:.1f}% < {floor}%")
    if failed:
        raise SystemExit("coverage below the floor: " + ", ".join(failed))


@task(help={"board": "sim (default) | sim:PROFILE (the sim standing in for that board) | mpy-virtual | a profile",
            "port": "the board's link: device, URL, ftdi:// URL (mpy-virtual: a running one's REPL pty)",
            "reset": "device (RTS/DTR) or ftdi:// URL (GPIO) that resets the board (default: --port)",
            "throttle": "sim only: pace the link like a UART at this baud, or a profile's (esp32-devkitc)",
            "link_key": "a real board's link key file (as inv flash --link-key wrote it)",
            "k": "pytest -k expression"})
def hil(c, board="sim", port=None, reset=None, throttle=None, k=None, link_key=None):
    """Run the HIL suite (hil_tests/) on the sim, the virtual MicroPython board or a real board.

    mpy-virtual is started and flashed with mpremote unless --port names a running one."""
    args = [PY, "-m", "pytest", "hil_tests", "--board", shlex.quote(board)]
    for opt, val in (("--port", port), ("--reset", reset), ("--throttle", throttle), ("--link-key", link_key),
                     ("-k", k)):
        if val:
            args += [opt, shlex.quote(str(val))]
    c.run(" ".join(args), env=_env())


@task(help={"board": "profile (boards/NAME.toml)",
            "port": "the board's REPL device (mpremote connects there)",
            "link_port": "the board's link device when it is not the REPL (mpy-virtual: looked up)",
            "source": "copy .py sources instead of mpy-cross output", "no_wait": "do not wait for HELLO",
            "link_key": "the board's link key file: kept if it exists, else made (0600); the daemon's "
                        "[[board]] link_key names it"})
def flash(c, board, port, link_port=None, source=False, no_wait=False, link_key=None):
    """Flash the firmware with mpremote, verify it on the board, reset, wait for HELLO.

    Compiles with mpy-cross for the board's .mpy version, generates board.json from the profile,
    copies with mpremote, verifies by SHA-256 on the board, soft-resets, waits for HELLO."""
    args = [PY, "-m", "tools.flash", "--board", shlex.quote(board), "--port", shlex.quote(port)]
    if link_port:
        args += ["--link-port", shlex.quote(link_port)]
    if link_key:
        args += ["--link-key", shlex.quote(link_key)]
    if source:
        args.append("--source")
    if no_wait:
        args.append("--no-wait")
    c.run(" ".join(args), env=_env(), pty=False)


@task(name="flash-micropython",
      help={"board": "an ESP32 profile", "port": "the board's serial device", "image": "MicroPython .bin",
            "baud": "esptool's baud rate", "dry_run": "print the esptool commands instead of running them",
            "read_back": "read the written range back into this file and compare"})
def flash_micropython(c, board, port, image, baud=460800, dry_run=False, read_back=None):
    """Write a MicroPython image to an ESP32 with esptool (erase, write at 0x1000, verify)."""
    args = [PY, "-m", "tools.flash_micropython", "--board", shlex.quote(board), "--port", shlex.quote(port),
            "--image", shlex.quote(image), "--baud", str(baud)]
    if read_back:
        args += ["--read-back", shlex.quote(read_back)]
    if dry_run:
        args.append("--dry-run")
    c.run(" ".join(args), env=_env(), pty=False)


@task(help={"flash": "the board's flash directory (default: a new temporary one)"})
def vboard(c, flash=None):
    """Run the virtual MicroPython board; prints `repl: <pty>` and `link: <pty>` (then control, flash)."""
    args = [PY, "-m", "tools.vboard"]
    if flash:
        args += ["--flash", flash]
    os.execvpe(PY, args, _env())


@task(help={"only": "comma-separated benchmark names (bench/<name>.py), default all",
            "check": "exit non-zero if a goal of a benchmark run (its GOALS) is not met"})
def bench(c, only=None, check=False):
    """Run benchmarks; each prints a table and writes bench/results/<name>.json (with its goals)."""
    names = only.split(",") if only else sorted(
        p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))
    failed = []
    for name in names:
        c.run(f"{PY} -m bench.{name}", env=_env())
        if check and c.run(f"{PY} -m bench._util check {name}", env=_env(), warn=True).exited != 0:
            failed.append(name)
    if failed:
        raise SystemExit("benchmark goals not met: " + ", ".join(failed))


@task(help={"resets": "board resets to time (default 3)", "no_contrast": "skip the flush_on_board_loss=false run",
            "board": "the profile the simulated board stands in for (default sim; e.g. esp32-devkitc)",
            "ha": "two routers with keepalived instead: the active one's daemon is killed, the standby "
                  "takes over (timeline); --injection picks another failure",
            "injection": "with --ha: kill | link | keepalived | board (default kill)"})
def demo(c, resets=3, no_contrast=False, board="sim", ha=False, injection="kill"):
    """Daemon + simulated board + strongSwan peer: tunnel, traffic, board reset, flush, recovery timeline (root)."""
    if ha:
        args = [PY, "-m", "testbed.ha", "--injection", shlex.quote(injection), "--board", shlex.quote(board)]
    else:
        args = [PY, "-m", "testbed.demo", "--resets", str(resets), "--board", shlex.quote(board)]
    if no_contrast and not ha:
        args.append("--no-contrast")
    c.run(" ".join(args), env=_env(), pty=False)


@task(help={"force": "reinstall everything, even what looks current"})
def setup(c, force=False):
    """Install what the project needs (apt: strongSwan, iproute2, ping, node; pip; npm): tools/bootstrap.sh."""
    c.run(" ".join([str(ROOT / "tools" / "bootstrap.sh")] + (["--force"] if force else [])), pty=False)


@task(help={"config": "the daemon's TOML file (packaging/ikeoffloadd.toml is a commented example)",
            "log_level": "debug | info | warning | error", "check": "only validate the file"})
def daemon(c, config="/etc/ikeoffload/ikeoffloadd.toml", log_level=None, check=False):
    """Run ikeoffloadd in the foreground (root: TUN, ports 500/4500), or check its config."""
    args = [PY, "-m", "host"] + (["--check-config", config] if check else ["--config", config])
    if log_level and not check:
        args += ["--log-level", log_level]
    os.execvpe(PY, args, _env())


@task
def lint(c):
    """ruff (pyflakes, pycodestyle, bugbear; pyproject.toml) on the tree, then the firmware's
    MicroPython checks (tools/fwcheck.py: constructs MicroPython lacks, every file through mpy-cross)."""
    c.run(f"{PY} -m ruff check .", env=_env(), pty=False)
    c.run(f"{PY} -m tools.fwcheck", env=_env(), pty=False)


@task(help={"prefix": "the venv the daemon runs from (default /opt/ikeoffload)",
            "etc": "configuration directory (default /etc/ikeoffload)",
            "unit_dir": "where ikeoffloadd.service goes (default /etc/systemd/system)",
            "wheel": "install this wheel instead of building one", "spi": "SPI boards: pyftdi and USB access"})
def install(c, prefix="/opt/ikeoffload", etc="/etc/ikeoffload", unit_dir="/etc/systemd/system", wheel=None,
            spi=False):
    """Install ikeoffloadd for systemd (root): venv, unit, /etc/ikeoffload (tools/install.py)."""
    args = [PY, str(ROOT / "tools" / "install.py"), "--prefix", shlex.quote(prefix), "--etc", shlex.quote(etc),
            "--unit-dir", shlex.quote(unit_dir)]
    if wheel:
        args += ["--wheel", shlex.quote(wheel)]
    if spi:
        args.append("--spi")
    c.run(" ".join(args), pty=False)


@task(name="rp2040-emu",
      help={"image": "MicroPython rp2 image (default: $IKEOFFLOAD_RP2040_IMAGE or build/rp2040/...)",
            "flash": "the flash chip's file (default: a new one; survives resets and restarts)",
            "timing": "realtime (default: the chip's clock is the wall clock) | cycles (benchmarks)"})
def rp2040_emu(c, image=None, flash=None, timing=None):
    """Run the emulated RP2040 (rp2040js + MicroPython's rp2 port); prints `repl: <pty>` and
    `link: <pty>` (then control, flash). tools/rp2040/README.md says what image it needs."""
    args = [PY, "-m", "tools.rp2040"]
    for opt, val in (("--image", image), ("--flash", flash), ("--timing", timing)):
        if val:
            args += [opt, str(val)]
    os.execvpe(PY, args, _env())
