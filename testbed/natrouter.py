"""Two hosts with a router namespace between them, optionally a NAT (nftables masquerade), and a
tap on the router that records every UDP datagram it forwards: the NAT-T tests' bench.

    <p>a (inside host)  --veth--  <p>r (router)  --veth--  <p>b (outside host)
    192.0.2.1/26                  192.0.2.2/26 | 192.0.2.65/26                192.0.2.66/26

With ``nat=True`` the router masquerades what the inside host sends out (``masquerade random``:
every new mapping gets a random source port, as carrier-grade NATs do, so a flushed mapping
really comes back different); the outside host then sees only 192.0.2.65 and has no route
inside. Without it the router only forwards, and the outside host routes 192.0.2.0/26 through
it. Only RFC 5737 addresses; needs root, nftables and conntrack (tools/bootstrap.sh).
"""
from __future__ import annotations

import re
import shutil
import socket
import struct
import threading
import time
from typing import NamedTuple

from testbed.netns import Namespaces, entered, run, unique_prefix

INSIDE, ROUTER_IN = "192.0.2.1", "192.0.2.2"
ROUTER_OUT, OUTSIDE = "192.0.2.65", "192.0.2.66"
INSIDE_NET = "192.0.2.0/26"
ETH_P_IP, ETH_P_ALL = 0x0800, 0x0003


def available() -> bool:
    return shutil.which("nft") is not None and shutil.which("conntrack") is not None


class Udp(NamedTuple):
    """One UDP datagram seen by the router's tap on the link ``side``: "in" (to the inside host;
    addresses as the inside host sees them) or "out" (to the outside host: after the NAT)."""
    at: float
    side: str
    src: tuple
    dst: tuple
    payload: bytes


class NatRouter(Namespaces):
    """Namespaces ``ns_a`` (inside), ``ns_r`` (router), ``ns_b`` (outside); see the module doc.
    A context manager; ``destroy()`` removes all it made."""

    def __init__(self, nat: bool, prefix: str | None = None, lo_a=(), lo_b=()):
        super().__init__()
        self.nat = nat
        self.prefix = prefix or unique_prefix()
        self.ns_a, self.ns_r, self.ns_b = self.prefix + "a", self.prefix + "r", self.prefix + "b"
        self.if_a, self.if_ra = self.prefix + "a0", self.prefix + "ra"
        self.if_b, self.if_rb = self.prefix + "b0", self.prefix + "rb"
        self.public_a = ROUTER_OUT if nat else INSIDE      # the inside host as the outside sees it
        self.seen: list[Udp] = []
        self._tap = None
        self._halt = threading.Event()
        try:
            for ns in (self.ns_a, self.ns_r, self.ns_b):
                self.add_netns(ns)
            run("ip", "link", "add", self.if_a, "netns", self.ns_a, "type", "veth", "peer", "name", self.if_ra,
                "netns", self.ns_r)
            run("ip", "link", "add", self.if_b, "netns", self.ns_b, "type", "veth", "peer", "name", self.if_rb,
                "netns", self.ns_r)
            for ns, ifn, addr in ((self.ns_a, self.if_a, INSIDE), (self.ns_r, self.if_ra, ROUTER_IN),
                                  (self.ns_r, self.if_rb, ROUTER_OUT), (self.ns_b, self.if_b, OUTSIDE)):
                run("ip", "-n", ns, "addr", "add", f"{addr}/26", "dev", ifn)
                run("ip", "-n", ns, "link", "set", ifn, "up")
            for ns, los in ((self.ns_a, lo_a), (self.ns_r, ()), (self.ns_b, lo_b)):
                for lo in los:
                    run("ip", "-n", ns, "addr", "add", lo if "/" in lo else f"{lo}/32", "dev", "lo")
                run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", self.ns_a, "route", "add", "default", "via", ROUTER_IN)
            if not nat:
                run("ip", "-n", self.ns_b, "route", "add", INSIDE_NET, "via", ROUTER_OUT)
            run("ip", "netns", "exec", self.ns_r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if nat:
                rules = ("table ip nat {\n chain post {\n"
                         "  type nat hook postrouting priority srcnat; policy accept;\n"
                         f"  oifname \"{self.if_rb}\" ip saddr {INSIDE_NET} masquerade random\n }}\n}}\n")
                run("ip", "netns", "exec", self.ns_r, "nft", "-f", "-", input=rules)
            self._start_tap()
        except BaseException:
            self.destroy()
            raise

    # ------------------------------------------------------------------ the NAT's state

    def mappings(self) -> list[str]:
        """conntrack's UDP entries on the router, one line each."""
        r = run("ip", "netns", "exec", self.ns_r, "conntrack", "-L", "-p", "udp", check=False)
        return [line for line in r.stdout.splitlines() if line.startswith("udp")]

    def flush_mapping(self, inside_port: int) -> int:
        """Delete the NAT mapping(s) of the inside host's UDP ``inside_port`` (`conntrack -D`), as a
        NAT that reboots or times the mapping out does. Returns how many entries went."""
        r = run("ip", "netns", "exec", self.ns_r, "conntrack", "-D", "-p", "udp", "--orig-src", INSIDE,
                "--sport", str(inside_port), check=False)
        m = re.search(r"(\d+) flow entries have been deleted", r.stdout + r.stderr)
        return int(m.group(1)) if m else 0

    # ------------------------------------------------------------------ the tap

    def _start_tap(self):
        socks = []
        with entered(self.ns_r):
            for ifn, side in ((self.if_ra, "in"), (self.if_rb, "out")):
                # ETH_P_ALL: a socket bound to one protocol does not see what the link sends
                s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
                s.bind((ifn, ETH_P_ALL))
                s.settimeout(0.05)
                socks.append((s, side))
        self._socks = socks
        self._tap = threading.Thread(target=self._read, daemon=True)
        self._tap.start()

    def _read(self):
        import select
        by_fd = {s.fileno(): (s, side) for s, side in self._socks}
        while not self._halt.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.05)
            for fd in ready:
                s, side = by_fd[fd]
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:
                    continue
                if addr[1] == ETH_P_IP:
                    self._record(data, side)    # once per link it crosses, either way

    def _record(self, ip: bytes, side: str):
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            return
        ihl = (ip[0] & 0x0F) * 4
        sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        self.seen.append(Udp(time.monotonic(), side, (src, sport), (dst, dport), bytes(ip[ihl + 8:ihl + length])))

    def udp(self, side: str | None = None, src: str | None = None, dst: str | None = None,
            port: int | None = None, since: float = 0.0) -> list[Udp]:
        """The datagrams seen, filtered: ``port`` matches either end's port."""
        return [u for u in list(self.seen) if (side is None or u.side == side) and u.at >= since and
                (src is None or u.src[0] == src) and (dst is None or u.dst[0] == dst) and
                (port is None or port in (u.src[1], u.dst[1]))]

    # ------------------------------------------------------------------ teardown

    def destroy(self):
        self._halt.set()
        if self._tap is not None:
            self._tap.join(2)
            for s, _ in self._socks:
                s.close()
            self._tap = None
        super().destroy()
