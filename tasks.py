"""invoke tasks: setup, sim, test, hil, bench (more land with their issues).

Run `inv --list`. Tasks that need root (network namespaces, strongSwan) say so.
"""
import os
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
            "baud": "throttle to a real UART rate (bytes/s = baud/10)"})
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
    """Run everything the README's test command runs: tests/, hil_tests/, firmware tests (CPython and MicroPython)."""
    args = [PY, "-m", "pytest", "tests", "hil_tests", "firmware/tests"]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    c.run(" ".join(args), env=_env(), pty=False)


@task(help={"board": "sim (default) | mpy-virtual | a profile in boards/", "port": "device or URL of a real board"})
def hil(c, board="sim", port=None, k=None):
    """Run the HIL suite (hil_tests/) against the simulated board or a real one."""
    args = [PY, "-m", "pytest", "hil_tests", "--board", board]
    if port:
        args += ["--port", port]
    if k:
        args += ["-k", k]
    c.run(" ".join(args), env=_env())


@task(help={"only": "comma-separated benchmark names (bench/<name>.py), default all"})
def bench(c, only=None):
    """Run benchmarks; each prints a table and writes bench/results/<name>.json."""
    names = only.split(",") if only else sorted(
        p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))
    for name in names:
        c.run(f"{PY} -m bench.{name}", env=_env())


@task(help={"resets": "board resets to time (default 3)", "no_contrast": "skip the flush_on_board_loss=false run"})
def demo(c, resets=3, no_contrast=False):
    """Daemon + simulated board + strongSwan peer: tunnel, traffic, board reset, flush, recovery timeline (root)."""
    args = [PY, "-m", "host.demo", "--resets", str(resets)]
    if no_contrast:
        args.append("--no-contrast")
    c.run(" ".join(args), env=_env(), pty=False)
