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
