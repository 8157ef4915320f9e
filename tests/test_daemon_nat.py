"""Two in-process daemons (tests/daemon_pair.py) with a NAT between them: a UDP relay on
loopback that, like a NAT's port-restricted mapping, gives each flow from a its own source port
on the outside address — so a reaches b at the NAT's address and b sees a at another address
and port than a's own. Nothing forces UDP encapsulation's detection: both ends find the NAT
from the NAT_DETECTION hashes (RFC 7296 §2.23), and when the NAT forgets its mappings (a
conntrack flush) and gives a's flows new ports, b follows a's IKE SA and its ESP there."""
import asyncio

import pytest

from host import config as cfgmod
from tests.daemon_pair import (A_IP, A_NET, B_IP, B_NET, CONFIG, DaemonPair, Side, free_udp_ports, packet,
                               sim_pair, until)

NAT_IN, NAT_OUT = "127.0.0.3", "127.0.0.4"     # the NAT's address a sends to, and a's address as b sees it


class _Listen(asyncio.DatagramProtocol):
    def __init__(self, nat, target):
        self.nat, self.target = nat, target

    def datagram_received(self, data, src):
        self.nat.forward(self, data, src)


class _Outside(asyncio.DatagramProtocol):
    def __init__(self, back, src):
        self.back, self.src = back, src

    def datagram_received(self, data, addr):
        self.back.transport.sendto(data, self.src)


class Nat:
    """Forwards datagrams a sends to NAT_IN:port to b's target, from a port of NAT_OUT of its
    own per (listening port, a's address and port) — and b's answers back."""

    def __init__(self):
        self.listen = {}       # b's port -> _Listen
        self.mappings = {}     # (_Listen, a's (ip, port)) -> the outside transport
        self.forwarded = 0

    async def start(self, targets):
        loop = asyncio.get_running_loop()
        for port, target in targets.items():
            transport, proto = await loop.create_datagram_endpoint(lambda t=target: _Listen(self, t),
                                                                   local_addr=(NAT_IN, 0))
            proto.transport = transport
            self.listen[port] = proto
        return {port: p.transport.get_extra_info("sockname")[1] for port, p in self.listen.items()}

    def forward(self, listen, data, src):
        out = self.mappings.get((listen, src))
        if out is None:
            out = self.mappings[(listen, src)] = asyncio.get_running_loop().create_task(
                asyncio.get_running_loop().create_datagram_endpoint(lambda: _Outside(listen, src),
                                                                    local_addr=(NAT_OUT, 0)))
        self.forwarded += 1
        out.add_done_callback(lambda t: t.result()[0].sendto(data, listen.target))

    def outside_ports(self):
        return sorted(t.result()[0].get_extra_info("sockname")[1] for t in self.mappings.values() if t.done())

    def flush(self):
        """The NAT forgets every mapping: a's next datagrams leave from new ports."""
        for t in self.mappings.values():
            if t.done():
                t.result()[0].close()
        self.mappings = {}

    def close(self):
        self.flush()
        for p in self.listen.values():
            p.transport.close()


@pytest.fixture(scope="module")
def sim_boards():
    yield from sim_pair()


def run_nat_pair(tmp_path, sims, body):
    async def go():
        nat = Nat()
        a_ike, a_natt = free_udp_ports(A_IP, 2)
        b_ike, b_natt = free_udp_ports(B_IP, 2)
        front = await nat.start({b_ike: (B_IP, b_ike), b_natt: (B_IP, b_natt)})
        sides = []
        for name, ip, ike, natt, peer, peer_ike, peer_natt, lnet, rnet, start, sim, other in (
                ("a", A_IP, a_ike, a_natt, NAT_IN, front[b_ike], front[b_natt], A_NET, B_NET, "start", sims[0], "b"),
                ("b", B_IP, b_ike, b_natt, "%any", 500, 4500, B_NET, A_NET, "none", sims[1], "a")):
            path = tmp_path / ("%s.toml" % name)
            path.write_text(CONFIG.format(ctl=tmp_path / ("%s.sock" % name), ip=ip, flush="true", board=name + "0",
                                          port=sim.url, key=sim.link_key_path, ike=ike, natt=natt, peer=peer,
                                          peer_ike=peer_ike, peer_natt=peer_natt, start=start, me=name, other=other,
                                          lnet=lnet, rnet=rnet, esp="aes128gcm16"))
            sides.append(Side(name, cfgmod.load(path), sim))
        pair = DaemonPair.__new__(DaemonPair)
        pair.a, pair.b = sides
        try:
            await pair.start()
            return await body(pair, nat)
        finally:
            await pair.stop()
            nat.close()
    return asyncio.run(go())


def test_both_ends_detect_the_nat_and_b_follows_a_new_mapping(tmp_path, sim_boards):
    async def body(p, nat):
        (sa_a,), (sa_b,) = p.a.engine.ike_sas(), p.b.engine.ike_sas()
        assert sa_a.nat and sa_b.nat                              # found from the hashes, not forced
        assert sa_b.remote[0] == NAT_OUT and sa_b.remote[1] in nat.outside_ports()
        assert sa_a.remote == (NAT_IN, p.a.cfg.connections["gw"].remote_port_nat_t)    # floated to NAT-T
        await p.ping()
        back = packet(src=bytes((10, 2, 0, 7)), dst=bytes((10, 1, 0, 5)), seq=2)
        p.b.send([back])
        await until(lambda: back in p.a.tun, 3, "b's answer through the NAT")
        old = sa_b.remote

        nat.flush()                                               # conntrack forgets a's flows
        n = len(p.b.tun)
        p.a.send([packet(seq=3)])                                 # a's ESP arrives from a new port:
        dp = p.b.daemon.datapath                                  # unauthenticated, it moves nothing
        await until(lambda: dp.stats["in_wrong_peer"] == 1, 3, "a's ESP from the new mapping dropped")
        assert len(p.b.tun) == n and sa_b.remote == old
        assert p.b.daemon.stats["wrong_peer_checks"] == 1         # but b checks a's liveness
        p.a.daemon.udp.call(p.a.engine.check_liveness, sa_a.ike_id)   # a's next IKE request (its DPD)
        await until(lambda: sa_b.remote != old, 3, "b's IKE SA moved to the new mapping")
        assert sa_b.remote[0] == NAT_OUT and sa_b.remote[1] in nat.outside_ports()
        assert p.b.engine.stats["nat_moves"] == 1
        assert p.b.children()[0].peer == sa_b.remote              # its ESP follows
        n = len(p.a.tun)
        back = packet(src=bytes((10, 2, 0, 7)), dst=bytes((10, 1, 0, 5)), seq=4)
        p.b.send([back])
        await until(lambda: len(p.a.tun) > n, 3, "b's ESP to a's new mapping")
        assert p.a.tun[-1] == back
        await p.ping(seq=5)
        assert (await p.b.ctl("stats"))["result"]["wrong_peer_checks"] == 1
    run_nat_pair(tmp_path, sim_boards, body)
