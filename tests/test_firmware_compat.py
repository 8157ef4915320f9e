"""Static MicroPython-compatibility checks of firmware/ (tools/fwcheck.py), and tests that the checker
itself flags what it claims to flag and leaves portable code alone."""
import ast

import pytest

from tools import fwcheck


def rules(source, **kw):
    return [f.rule for f in fwcheck.check_source(source, **kw)]


def test_firmware_passes_the_static_checks():
    files = fwcheck.firmware_files(include_tests=True)
    assert fwcheck.FIRMWARE / "__init__.py" in files
    findings = fwcheck.check_files(files)
    assert not findings, "constructs MicroPython 1.27 cannot run:\n" + "\n".join(map(repr, findings))


@pytest.mark.parametrize("rule,source", fwcheck.PROOFS,
                         ids=["%s-%d" % (r, i) for i, (r, _) in enumerate(fwcheck.PROOFS)])
def test_checker_flags_each_proven_incompatibility(rule, source):
    assert rule in rules(source), (rule, source, fwcheck.check_source(source))


@pytest.mark.parametrize("source,rule", [
    ("import hmac", "wasm-only-module"),
    ("import logging", "wasm-only-module"),
    ("from functools import partial", "wasm-only-module"),
    ("import os.path", "wasm-only-module"),
    ("from os import path", "wasm-only-module"),
    ("import os\nos.path.join('a', 'b')", "wasm-only-module"),
    ("from collections import defaultdict", "wasm-only-module"),
    ("import ustruct", "module"),
    ("import serial", "module"),
    ("from typing import TYPE_CHECKING", "module"),
    ("import dataclasses\n@dataclasses.dataclass(frozen=True)\nclass P:\n    x: int = 0", "dataclass"),
    ("from time import monotonic", "missing-attr"),
    ("x = vars()", "missing-builtin"),
    ("def f(b):\n    return b[::2]", "slice-step"),
    ("import firmware.sim", "cpython-only-import"),
    ("from firmware import sim", "cpython-only-import"),
    ("from firmware.sim import run", "cpython-only-import"),
    ("if True:\n    try:\n        pass\n    finally:\n        import typing", "module"),
    ("try:\n    import typing\nexcept KeyError:\n    pass", "module"),
])
def test_checker_flags(source, rule):
    assert rule in rules(source, cpython_only_modules={"firmware.sim"}), fwcheck.check_source(source)


@pytest.mark.parametrize("source", [
    "import struct, binascii, hashlib, os, sys, time, random, gc, errno, json, asyncio, select",
    "from micropython import const\nX = const(3)",
    "import machine\nimport cryptolib",  # board-only: fine on a board
    "try:\n    import cryptolib\nexcept ImportError:\n    cryptolib = None",
    "try:\n    from cryptography.hazmat.primitives.ciphers import Cipher\nexcept Exception:\n    Cipher = None",
    "if False:\n    from typing import Optional",
    "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    import typing",
    "import sys\nif sys.implementation.name == 'cpython':\n    import typing\n    time.monotonic()",
    "import sys\nif sys.implementation.name != 'micropython':\n    import logging",
    "import sys\nif sys.implementation.name == 'micropython':\n    import time\nelse:\n    import logging",
    "from . import link\nfrom .link import cobs\nimport firmware.link",
    "import time\nt = time.ticks_ms()",
    "import os\nos.urandom",  # missing in wasm only; boards have it (the wasm tests catch a use)
    "x = (5).to_bytes(4, 'big')\ny = int.from_bytes(b'\\x01', 'big')\nz = 'a b'.split(' ', 1)",
    "from collections import deque\nq = deque((), 8)",
    "TimeoutError = OSError\ntry:\n    pass\nexcept TimeoutError:\n    pass",  # a local fallback definition
    "try:\n    1 // 0\nexcept ZeroDivisionError:\n    raise ValueError('x') from None",
    "b = b'abc'[1:]\nl = [1, 2, 3][::2]  # mpy-ok: a list",
    "import hashlib\nd = hashlib.sha256(b'x').digest()",
    "def f(a: int, *, b: bytes = b'') -> int:\n    return a",
])
def test_checker_accepts_portable_code(source):
    assert fwcheck.check_source(source) == [], fwcheck.check_source(source)


def test_syntax_error_is_a_finding():
    assert rules("def f(:\n    pass") == ["syntax"]


def test_cpython_only_marker_is_recognised_on_the_first_lines_only(tmp_path):
    fw = tmp_path / "firmware"
    (fw / "tests").mkdir(parents=True)
    (fw / "__init__.py").write_text("")
    (fw / "sim.py").write_text('#!/usr/bin/env python3\n# cpython-only: pty simulator driver\nimport pty\n')
    (fw / "board.py").write_text("import struct\n" + "\n" * 10 + "# cpython-only\n")
    (fw / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    assert fwcheck.is_cpython_only(fw / "sim.py")
    assert not fwcheck.is_cpython_only(fw / "board.py")
    assert fwcheck.cpython_only_files(fw) == [fw / "sim.py"]
    assert fwcheck.firmware_files(root=fw) == [fw / "__init__.py", fw / "board.py"]
    assert fw / "tests" / "test_x.py" in fwcheck.firmware_files(include_tests=True, root=fw)
    # board code importing the simulator driver is caught
    (fw / "board.py").write_text("from firmware import sim\n")
    found = fwcheck.check_files(fwcheck.firmware_files(root=fw), root=tmp_path)
    assert [(f.path, f.rule) for f in found] == [("firmware/board.py", "cpython-only-import")]


def _test_modules():
    return sorted(fwcheck.TESTS_DIR.glob("test_*.py"))


def test_firmware_test_modules_follow_the_runner_conventions():
    """firmware/tests/runner.py calls top-level test_* functions with no arguments: no fixtures, no
    classes, no pytest; a test name defined twice silently hides the first test on both runners."""
    mods = _test_modules()
    assert mods, "no firmware/tests/test_*.py"
    problems = []
    for path in mods:
        tree = ast.parse(path.read_text(), str(path))
        seen = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] == "pytest" for n in names):
                    problems.append("%s:%d imports pytest" % (path.name, node.lineno))
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                problems.append("%s:%d class %s: use top-level functions" % (path.name, node.lineno, node.name))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                if isinstance(node, ast.AsyncFunctionDef):
                    problems.append("%s:%d async test %s" % (path.name, node.lineno, node.name))
                a = node.args
                if a.posonlyargs or a.args or a.vararg or a.kwonlyargs or a.kwarg:
                    problems.append("%s:%d %s takes arguments (fixtures are not supported)"
                                    % (path.name, node.lineno, node.name))
                if node.name in seen:
                    problems.append("%s:%d %s defined twice" % (path.name, node.lineno, node.name))
                seen.add(node.name)
    assert not problems, "\n".join(problems)
