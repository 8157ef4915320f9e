# The virtual board's "ROM": runs inside the wasm MicroPython at every (re)boot, before boot.py.
# It supplies what the wasm port lacks and a real board has (tools/vboard/README.md):
#   - a flash filesystem at / that persists across resets (a host directory), with MicroPython's
#     errno numbers (the wasm port raises WASI's: ENOENT is 44 there, 2 on a board) and sizes
#     in ilistdir, so mpremote's fs commands work;
#   - `machine`: reset(), soft_reset(), reset_cause() and its constants, WDT, Timer, unique_id();
#   - `vboard`: the second UART of this board (its link pty), as `machine` is a real board's;
#   - time.sleep*/machine.idle that sleep for real and can be interrupted with Ctrl-C.
# `_vb` is the JS side (tools/vboard/worker.mjs); every call into it is wrapped there so that no
# JS exception can cross into the interpreter.
import sys
import io
import os
import vfs
import time as _time
import micropython
import uctypes
import _vb

micropython.kbd_intr(3)

# ---- errno: WASI (emscripten) -> MicroPython (as on a board) ----------------------------------
_LINUX = {"EPERM": 1, "ENOENT": 2, "EIO": 5, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12, "EACCES": 13,
          "EBUSY": 16, "EEXIST": 17, "EXDEV": 18, "ENODEV": 19, "ENOTDIR": 20, "EISDIR": 21,
          "EINVAL": 22, "EMFILE": 24, "EFBIG": 27, "ENOSPC": 28, "EROFS": 30, "ENAMETOOLONG": 36,
          "ENOTEMPTY": 39}
_WASI = {63: "EPERM", 44: "ENOENT", 29: "EIO", 8: "EBADF", 6: "EAGAIN", 48: "ENOMEM", 2: "EACCES",
         10: "EBUSY", 20: "EEXIST", 75: "EXDEV", 43: "ENODEV", 54: "ENOTDIR", 31: "EISDIR",
         28: "EINVAL", 33: "EMFILE", 22: "EFBIG", 51: "ENOSPC", 69: "EROFS", 37: "ENAMETOOLONG",
         55: "ENOTEMPTY"}


def _errno(e):
    n = e.args[0] if e.args else 0
    name = _WASI.get(n)
    return _LINUX[name] if name else n


def _norm(path):
    parts = []
    for p in path.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p and p != ".":
            parts.append(p)
    return "/" + "/".join(parts)


class _PersistFile(io.IOBase):
    """A file opened for writing: written through to the host directory when closed."""

    def __init__(self, f, path):
        self.f = f
        self.path = path

    def write(self, b):
        return self.f.write(b)

    def readinto(self, b):
        return self.f.readinto(b)

    def read(self, *a):
        return self.f.read(*a)

    def readline(self, *a):
        return self.f.readline(*a)

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def flush(self):
        return self.f.flush()

    def ioctl(self, op, arg):
        return 0

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
            _vb.persist(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class FlashVfs:
    """VfsPosix over the in-memory copy of the flash, with board errnos and write-through."""

    def __init__(self, root):
        self.inner = vfs.VfsPosix(root)
        self.cwd = "/"

    def _abs(self, path):
        return _norm(path if path.startswith("/") else self.cwd + "/" + path)

    def _call(self, fn, *a):
        try:
            return fn(*a)
        except OSError as e:
            raise OSError(_errno(e))

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        p = self._abs(path)
        f = self._call(self.inner.open, p, mode)
        if "w" in mode or "a" in mode or "+" in mode or "x" in mode:
            _vb.persist(p)                   # it exists now (open for writing creates it)
            return _PersistFile(f, p)
        return f

    def ilistdir(self, path):
        p = self._abs(path)
        out = []
        for ent in self._call(self.inner.ilistdir, p):
            name, typ, ino = ent[0], ent[1], ent[2]
            size = 0
            if typ == 0x8000:
                try:
                    size = self.inner.stat(p.rstrip("/") + "/" + name)[6]
                except OSError:
                    pass
            out.append((name, typ, ino, size))
        return iter(out)

    def stat(self, path):
        return self._call(self.inner.stat, self._abs(path))

    def statvfs(self, path):
        # a 2 MB flash of 4 KB blocks, as an RP2040's MicroPython filesystem roughly is
        used = _vb.flash_used() // 4096 + 1
        return (4096, 4096, 512, max(0, 512 - used), max(0, 512 - used), 0, 0, 0, 0, 255)

    def mkdir(self, path):
        p = self._abs(path)
        self._call(self.inner.mkdir, p)
        _vb.persist_dir(p)

    def rmdir(self, path):
        p = self._abs(path)
        self._call(self.inner.rmdir, p)
        _vb.unpersist(p)

    def remove(self, path):
        p = self._abs(path)
        self._call(self.inner.remove, p)
        _vb.unpersist(p)

    def rename(self, old, new):
        a, b = self._abs(old), self._abs(new)
        self._call(self.inner.rename, a, b)
        _vb.rename(a, b)

    def chdir(self, path):
        p = self._abs(path)
        st = self._call(self.inner.stat, p)
        if not st[0] & 0x4000:
            raise OSError(_LINUX["ENOTDIR"])
        self._call(self.inner.chdir, p)
        self.cwd = p

    def getcwd(self):
        return self.cwd


# ---- timers (machine.Timer) -------------------------------------------------------------------
_timers = []


def run_timers():
    """Run due timer callbacks (from idle REPL waits and from every sleep/wait)."""
    if not _timers:
        return
    now = _time.ticks_ms()
    for t in list(_timers):
        if t.due is not None and _time.ticks_diff(now, t.due) >= 0:
            if t.mode == Timer.PERIODIC:
                t.due = _time.ticks_add(now, t.period)
            else:
                t.deinit()
            try:
                t.callback(t)
            except Exception as e:
                sys.print_exception(e)


def next_timer_ms():
    """ms until the next timer is due (-1: none): the JS side's REPL wait uses it."""
    best = -1
    now = _time.ticks_ms()
    for t in _timers:
        if t.due is not None:
            d = max(0, _time.ticks_diff(t.due, now))
            if best < 0 or d < best:
                best = d
    return best


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, **kw):
        self.id = id
        self.due = None
        if kw:
            self.init(**kw)

    def init(self, mode=PERIODIC, period=-1, freq=-1, callback=None):
        if freq > 0:
            period = max(1, 1000 // freq)
        self.mode, self.period, self.callback = mode, max(1, period), callback
        self.due = _time.ticks_add(_time.ticks_ms(), self.period)
        if self not in _timers:
            _timers.append(self)

    def deinit(self):
        self.due = None
        if self in _timers:
            _timers.remove(self)


# ---- sleeping (interruptible, runs timers) -----------------------------------------------------
def sleep_ms(ms):
    deadline = _time.ticks_add(_time.ticks_ms(), int(ms))
    while True:
        left = _time.ticks_diff(deadline, _time.ticks_ms())
        if left <= 0:
            break
        nt = next_timer_ms()
        _vb.sleep(left if nt < 0 else min(left, nt))   # Ctrl-C schedules KeyboardInterrupt
        run_timers()


def sleep(s):
    sleep_ms(s * 1000)


def sleep_us(us):
    if us >= 1000:
        sleep_ms(us // 1000)


class _Module:
    pass


_t = _Module()
for _k in dir(_time):
    if not _k.startswith("__"):
        setattr(_t, _k, getattr(_time, _k))
_t.sleep = sleep
_t.sleep_ms = sleep_ms
_t.sleep_us = sleep_us
sys.modules["time"] = _t
sys.modules["utime"] = _t


# ---- machine ----------------------------------------------------------------------------------
class WDT:
    """Starts the bridge's watchdog: not fed within `timeout` ms, the board is reset (WDT_RESET).
    feed() tells the bridge at most every timeout/8 ms (a JS call costs ~30 us here)."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = max(1, timeout)
        self.last = _time.ticks_ms()
        _vb.wdt_start(self.timeout)

    def feed(self):
        now = _time.ticks_ms()
        if _time.ticks_diff(now, self.last) >= self.timeout >> 3:
            self.last = now
            _vb.wdt_feed()


def _reset():
    _vb.reset("hard")


def _soft_reset():
    _vb.reset("soft")


machine = _Module()
machine.PWRON_RESET = 1
machine.HARD_RESET = 2
machine.WDT_RESET = 3
machine.DEEPSLEEP_RESET = 4
machine.SOFT_RESET = 5
machine.WDT = WDT
machine.Timer = Timer
machine.reset = _reset
machine.soft_reset = _soft_reset
machine.reset_cause = lambda: _vb.reset_cause()
machine.unique_id = lambda: b"vboard01"
machine.freq = lambda *a: 125000000
machine.idle = lambda: sleep_ms(1)
sys.modules["machine"] = machine


# ---- vboard: the link UART ----------------------------------------------------------------------
def link_read(buf):
    """Bytes from the link pty into buf (a bytearray), without blocking; returns the count."""
    return _vb.link_read(uctypes.addressof(buf), len(buf))


def link_write(data):
    if isinstance(data, memoryview):
        data = bytes(data)
    if data:
        _vb.link_write(uctypes.addressof(data), len(data))


def link_wait(ms):
    """Sleep until link bytes arrive or ms pass (Ctrl-C on the REPL interrupts it)."""
    nt = next_timer_ms()
    _vb.link_wait(ms if nt < 0 else min(ms, nt))
    run_timers()


vboard = _Module()
vboard.link_open = lambda: _vb.link_open()
vboard.link_read = link_read
vboard.link_write = link_write
vboard.link_wait = link_wait
vboard.info = lambda: {"link": _vb.link_path(), "boot": _vb.boot_count()}
sys.modules["vboard"] = vboard


# ---- input(): the port's readline spins on a stub; read the REPL through sys.stdin instead ------
def _input(prompt=""):
    sys.stdout.write(prompt)
    line = b""
    while True:
        c = sys.stdin.buffer.read(1)
        if not c or c in (b"\r", b"\n"):
            sys.stdout.write("\r\n")
            return line.decode()
        if c == b"\x03":
            raise KeyboardInterrupt
        if c in (b"\x08", b"\x7f"):
            if line:
                line = line[:-1]
                sys.stdout.write("\x08 \x08")
            continue
        line += c
        sys.stdout.write(c.decode())


import builtins  # noqa: E402

builtins.input = _input


# ---- the flash ---------------------------------------------------------------------------------
def mount_flash(root):
    vfs.umount("/")
    vfs.mount(FlashVfs(root), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]


def run_script(name):
    """Run /boot.py or /main.py as a board does: 0 done, 1 SystemExit (soft reset), -1 missing."""
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return -1
    g = {"__name__": "__main__", "__file__": name}
    try:
        exec(compile(src, name, "exec"), g)
    except SystemExit:
        return 1
    except BaseException as e:
        sys.print_exception(e)
    return 0
