"""Network namespaces joined by a veth pair, for tests that need real UDP between two stacks.

Only documentation addresses are used (RFC 5737: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), and
the namespaces have no route anywhere else. Needs root. Sockets can be opened *inside* a namespace
from this (root-namespace) process with :func:`udp_socket`, which switches only the calling thread
there (setns) and back.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()
_setns_lock = threading.Lock()


def have_root() -> bool:
    return os.geteuid() == 0


def unique_prefix(tag: str = "ik") -> str:
    """A prefix unique to this process and call: ``<tag><pid>x<n>`` (interface names derived from it,
    ``<prefix>a0``, stay within 15 bytes)."""
    return f"{tag}{os.getpid()}x{next(_counter) % 1000}"


def cleanup_stale(tag: str = "ik") -> list[str]:
    """Remove namespaces named by :func:`unique_prefix` whose creating process is gone (a test run
    that was killed), after stopping the processes still running inside them (charon started there
    by that run). Returns the namespaces removed."""
    import re
    import signal
    pat = re.compile(rf"^{re.escape(tag)}(\d+)x\d+[abhpr]$")     # natrouter.py adds r, ha.py h and p
    out = run("ip", "netns", "list", check=False).stdout.split()
    removed = []
    for ns in out:
        m = pat.match(ns)
        if not m or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", ns, check=False)
        removed.append(ns)
    return removed


def run(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def ns_exec(ns: str, *args, check=True, **kw):
    return run("ip", "netns", "exec", ns, *args, check=check, **kw)


@contextlib.contextmanager
def entered(ns: str):
    """Run the body with this thread in network namespace ``ns``."""
    with _setns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)


def udp_socket(ns: str, ip: str, port: int) -> socket.socket:
    """A UDP socket bound to (ip, port) inside namespace ``ns``."""
    with entered(ns):
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
    return s


class Namespaces:
    """Network namespaces made with :meth:`add_netns`; ``destroy()`` (or leaving a ``with`` block)
    deletes every one made, newest first, and can be called again."""

    def __init__(self):
        self._made = []

    def add_netns(self, ns: str) -> str:
        run("ip", "netns", "add", ns)
        self._made.append(ns)
        return ns

    def destroy(self):
        for ns in reversed(self._made):
            run("ip", "netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


class VethPair(Namespaces):
    """Two namespaces ``<prefix>a`` and ``<prefix>b`` joined by veth; ``addr_a``/``addr_b`` on the
    veth ends (a /24), extra addresses on each namespace's loopback (the inner, protected hosts).
    Use as a context manager or call ``destroy()``: it always removes what it created."""

    def __init__(self, prefix: str | None = None, addr_a="192.0.2.1", addr_b="192.0.2.2",
                 lo_a=(), lo_b=()):
        super().__init__()
        self.prefix = prefix or unique_prefix()
        self.ns_a, self.ns_b = self.prefix + "a", self.prefix + "b"
        self.if_a, self.if_b = self.prefix + "a0", self.prefix + "b0"
        self.addr_a, self.addr_b = addr_a, addr_b
        try:
            for ns in (self.ns_a, self.ns_b):
                self.add_netns(ns)
            run("ip", "link", "add", self.if_a, "netns", self.ns_a, "type", "veth", "peer", "name", self.if_b,
                "netns", self.ns_b)
            for ns, ifn, addr, los in ((self.ns_a, self.if_a, addr_a, lo_a),
                                       (self.ns_b, self.if_b, addr_b, lo_b)):
                run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifn)
                for lo in los:
                    run("ip", "-n", ns, "addr", "add", lo if "/" in lo else f"{lo}/32", "dev", "lo")
                run("ip", "-n", ns, "link", "set", "lo", "up")
                run("ip", "-n", ns, "link", "set", ifn, "up")
        except BaseException:
            self.destroy()
            raise
