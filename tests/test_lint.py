"""The tree stays lint-clean: `inv lint` (ruff with pyproject.toml's rules, then tools/fwcheck.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inv_lint_passes():
    p = subprocess.run([sys.executable, "-m", "invoke", "lint"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "All checks passed" in p.stdout and "0 findings, 0 mpy-cross rejections" in p.stdout


def test_ruff_would_catch_an_undefined_name(tmp_path):
    """The rule set is live: a file with a real bug fails it (the config is not silently empty)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return undefined_name\n")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", os.path.join(ROOT, "pyproject.toml"),
                        str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "F821" in p.stdout


def _ruff_stdin(path, source):
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "TID251", "--stdin-filename", path, "-"],
                          input=source, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_daemon_may_not_block_its_event_loop_on_a_child_process_or_synchronous_netlink():
    """host/ is the daemon: one asyncio loop carries its heartbeats and ESP, so `subprocess`,
    os.system/popen and pyroute2's synchronous IPRoute are banned there (ruff TID251,
    pyproject.toml); the tests, tools and test beds may use them."""
    for line in ("import subprocess", "from subprocess import run", "import os\nos.system('ip rule')",
                 "import os\nos.popen('ip route')", "from pyroute2 import IPRoute",
                 "import asyncio\nasyncio.create_subprocess_exec('ip')",
                 "import os\nos.posix_spawn('/sbin/ip', [], {})", "import multiprocessing"):
        p = _ruff_stdin("host/dataplane/example.py", line + "\n")
        assert p.returncode == 1 and "TID251" in p.stdout, (line, p.stdout)
    for path in ("tests/example.py", "testbed/example.py", "tools/example.py", "tasks.py"):
        p = _ruff_stdin(path, "import subprocess\nsubprocess.run(['true'])\n")
        assert p.returncode == 0, (path, p.stdout)
    assert _ruff_stdin("host/dataplane/example.py", "from pyroute2 import AsyncIPRoute\nAsyncIPRoute\n").returncode == 0
