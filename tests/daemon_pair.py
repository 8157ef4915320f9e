"""Two ikeoffloadd daemons in this process, talking IKE and ESP-in-UDP to each other over
loopback — no root, no charon, no node.

Each `Daemon` (host/daemon.py, the real one) has its own simulated board (`python -m firmware.sim`
on a real pty, authenticated link), its own control socket, and IKE on unprivileged UDP ports of
its own loopback address (127.0.0.1 is "a", the initiator; 127.0.0.2 is "b", the responder).
Only the TUN device, which needs root, is left out (`tun=False`): the test hands plaintext
packets to the daemon's data path where the TUN device would (`DataPath.tun_packets`) and
collects what the data path would write to it (`Side.tun`).
"""
import asyncio
import socket
import time

from firmware.tests.espdata import icmp_echo, ipv4
from host import config as cfgmod
from host import control
from host.daemon import Daemon
from tests.simboard import SimBoard

A_IP, B_IP = "127.0.0.1", "127.0.0.2"
A_NET, B_NET = "10.1.0.0/24", "10.2.0.0/24"
A_HOST, B_HOST = bytes((10, 1, 0, 5)), bytes((10, 2, 0, 7))


def free_udp_ports(ip, n):
    """n UDP ports free on ``ip`` (bound once, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


CONFIG = """
[daemon]
control_socket = "{ctl}"
listen = "{ip}"
flush_on_board_loss = {flush}

[[board]]
name = "{board}"
profile = "sim"
port = "{port}"
link_key = "{key}"

[ike]
port = {ike}
natt_port = {natt}

[ike.retransmit]
timeout = 0.5
base = 2.0
tries = 3

[connections.gw]
local_addrs = ["{ip}"]
remote_addrs = ["{peer}"]
local_port = {ike}
remote_port = {peer_ike}
remote_port_nat_t = {peer_natt}
proposals = ["aes128gcm16-prfsha256-x25519"]
psk = "in-process daemon pair psk 0123456789"
start_action = "{start}"

[connections.gw.local]
auth = "psk"
id = "{me}.example"

[connections.gw.remote]
auth = "psk"
id = "{other}.example"

[connections.gw.children.net]
local_ts = ["{lnet}"]
remote_ts = ["{rnet}"]
esp_proposals = ["{esp}"]
"""


def packet(src=A_HOST, dst=B_HOST, seq=1, size=84):
    """An ICMP echo request of ``size`` bytes from ``src`` to ``dst`` (IPv4 addresses as bytes)."""
    return ipv4(src, dst, 1, icmp_echo(1, seq, bytes(size - 28)))


class Side:
    """One daemon with its board: ``tun`` collects what its data path writes to the TUN device."""

    def __init__(self, name, cfg, sim):
        self.name = name
        self.cfg = cfg
        self.sim = sim
        self.daemon = None
        self.tun = []

    async def start(self):
        self.daemon = Daemon(self.cfg, tun=False)
        await self.daemon.start()
        self.daemon.datapath.write_tun = self.tun.append        # where the TUN device would get them

    async def ctl(self, cmd, **fields):
        """One request over the daemon's real control socket; returns the reply dict."""
        return await asyncio.to_thread(control.call, self.cfg.control_socket, dict(cmd=cmd, **fields), 5.0)

    def sim_ctl(self, cmd):
        """A command to the simulated board's control socket (reset, hang, resume, status, sad)."""
        from firmware.sim import control as sim_control
        return sim_control(self.sim.control, cmd)

    @property
    def engine(self):
        return self.daemon.engine

    def children(self):
        """The Child SAs of this daemon's IKE SAs that are installed on its board (their routes)."""
        return [r for r in self.daemon.datapath.by_handle.values()]

    def send(self, pkts):
        """Plaintext packets into the data path, as the TUN device hands them over."""
        self.daemon.datapath.tun_packets(pkts)


class DaemonPair:
    def __init__(self, tmp_path, sims, *, flush=True, esp="aes128gcm16", b_start="none"):
        a_ike, a_natt = free_udp_ports(A_IP, 2)
        b_ike, b_natt = free_udp_ports(B_IP, 2)
        sides = []
        for name, ip, ike, natt, peer, peer_ike, peer_natt, lnet, rnet, start, sim, other in (
                ("a", A_IP, a_ike, a_natt, B_IP, b_ike, b_natt, A_NET, B_NET, "start", sims[0], "b"),
                ("b", B_IP, b_ike, b_natt, A_IP, a_ike, a_natt, B_NET, A_NET, b_start, sims[1], "a")):
            text = CONFIG.format(ctl=tmp_path / ("%s.sock" % name), ip=ip, flush=str(flush).lower(),
                                 board=name + "0", port=sim.url, key=sim.link_key_path, ike=ike, natt=natt,
                                 peer=peer, peer_ike=peer_ike, peer_natt=peer_natt, start=start, me=name,
                                 other=other, lnet=lnet, rnet=rnet, esp=esp)
            path = tmp_path / ("%s.toml" % name)
            path.write_text(text)
            sides.append(Side(name, cfgmod.load(path), sim))
        self.a, self.b = sides

    async def start(self):
        """b (the responder) first, then a, which initiates at start; returns once both have
        the Child SA on their boards."""
        await self.b.start()
        await self.a.start()
        await self.up()
        return self

    async def up(self, n=1, timeout=5.0):
        """Wait for n installed Child SAs on each side, established IKE SAs on both."""
        await until(lambda: len(self.a.children()) >= n and len(self.b.children()) >= n
                    and all(sa.established_at is not None for s in (self.a, self.b) for sa in s.engine.ike_sas())
                    and self.a.engine.ike_sas() and self.b.engine.ike_sas(), timeout,
                    "Child SAs up on both sides")

    async def stop(self):
        for s in (self.a, self.b):
            if s.daemon is not None and s.daemon.udp is not None:
                await s.daemon.shutdown()

    async def ping(self, seq=1, size=84, timeout=3.0):
        """One packet a -> b through both boards; returns what b's TUN side got."""
        n = len(self.b.tun)
        pkt = packet(seq=seq, size=size)
        self.a.send([pkt])
        await until(lambda: len(self.b.tun) > n, timeout, "the packet through the tunnel")
        assert self.b.tun[-1] == pkt
        return self.b.tun[-1]


async def until(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("%s not met within %.1f s" % (what, timeout))
        await asyncio.sleep(0.005)


def sim_pair():
    """Two simulated boards on ptys (a generator for a module-scoped fixture: a module's tests
    share them; each daemon flushes its board when it starts, as ikeoffloadd does)."""
    boards = [SimBoard(), SimBoard()]
    try:
        yield boards
    finally:
        for b in boards:
            b.close()


def run_pair(tmp_path, sims, body, **options):
    """asyncio.run(body(pair)) with a started DaemonPair, stopped afterwards whatever happens."""
    async def go():
        pair = DaemonPair(tmp_path, sims, **options)
        try:
            await pair.start()
            return await body(pair)
        finally:
            await pair.stop()
    return asyncio.run(go())
