"""The asyncio UDP driver on loopback: two engines over real sockets (unprivileged ports), the non-ESP
marker on the NAT-T port, keepalives, and ESP handed to the data-path callback."""
import asyncio
import socket

from host.ike_driver import IkeUdpEndpoint
from host.ike.config import parse_connections
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaUp
from host.ike.proposals import OffloadCapabilities

CAPS = OffloadCapabilities.from_proposals(["aes128gcm16"])


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _conn(lport, rport, rnatt, lid, rid, lts, rts):
    return parse_connections({"gw": {
        "local_addrs": ["127.0.0.1"], "remote_addrs": ["127.0.0.1"], "local_port": lport, "remote_port": rport,
        "remote_port_nat_t": rnatt, "psk": "udp-driver-psk-0123456789", "proposals": ["aes128gcm16-prfsha256-x25519"],
        "local": {"auth": "psk", "id": lid}, "remote": {"auth": "psk", "id": rid},
        "children": {"net": {"local_ts": [lts], "remote_ts": [rts], "esp_proposals": ["aes128gcm16"]}}}})


def test_two_endpoints_over_loopback():
    pa, na, pb, nb = _free_ports(4)

    async def run():
        ea = IkeEngine(_conn(pa, pb, nb, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24"), CAPS,
                       settings=EngineSettings(port=pa, natt_port=na))
        eb = IkeEngine(_conn(pb, pa, na, "b.example", "a.example", "203.0.113.0/24", "198.51.100.0/24"), CAPS,
                       settings=EngineSettings(port=pb, natt_port=nb))
        events = {"a": [], "b": []}
        esp = []
        eps = {}

        def handler(name):
            def on_event(ev):
                events[name].append(ev)
                if isinstance(ev, ChildSaInstall):
                    eps[name].child_sa_installed(ev.handle, True)
            return on_event
        eps["a"] = await IkeUdpEndpoint(ea, "127.0.0.1", pa, na, handler("a")).start()
        eps["b"] = await IkeUdpEndpoint(eb, "127.0.0.1", pb, nb, handler("b"),
                                        on_esp=lambda d, addr: esp.append((d, addr))).start()
        try:
            ike_id = eps["a"].initiate("gw")
            for _ in range(200):
                if any(isinstance(e, ChildSaUp) for e in events["a"]):
                    break
                await asyncio.sleep(0.01)
            up = [e for e in events["a"] if isinstance(e, IkeSaUp)][0]
            assert up.local_addr == ("127.0.0.1", na) and up.remote_addr == ("127.0.0.1", nb)    # floated
            inst = [e for e in events["a"] if isinstance(e, ChildSaInstall)][0]
            # ESP-in-UDP from a's NAT-T port reaches b's data path; a keepalive does not
            eps["a"].send_esp(inst.spi_out.to_bytes(4, "big") + b"\0\0\0\1payload", ("127.0.0.1", nb))
            eps["a"]._sockets[("127.0.0.1", na)].sendto(b"\xff", ("127.0.0.1", nb))
            for _ in range(100):
                if esp and eps["b"].stats["keepalives"]:
                    break
                await asyncio.sleep(0.01)
            assert esp and esp[0][0][:4] == inst.spi_out.to_bytes(4, "big") and esp[0][1] == ("127.0.0.1", na)
            assert eps["b"].stats["keepalives"] == 1
            eps["a"].call(ea.delete_ike, ike_id)
            for _ in range(200):
                if any(isinstance(e, IkeSaDown) for e in events["b"]):
                    break
                await asyncio.sleep(0.01)
            assert [e.reason for e in events["b"] if isinstance(e, IkeSaDown)] == ["deleted by peer"]
        finally:
            eps["a"].close()
            eps["b"].close()
    asyncio.run(run())


def test_marker_on_the_ike_port_is_tolerated():
    """strongSwan on non-standard ports prefixes every IKE packet with the marker."""
    pa, na, pb, nb = _free_ports(4)

    async def run():
        eb = IkeEngine(_conn(pb, pa, na, "b.example", "a.example", "203.0.113.0/24", "198.51.100.0/24"), CAPS,
                       settings=EngineSettings(port=pb, natt_port=nb))
        ep = await IkeUdpEndpoint(eb, "127.0.0.1", pb, nb).start()
        ea = IkeEngine(_conn(pa, pb, nb, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24"), CAPS,
                       settings=EngineSettings(port=pa, natt_port=na))
        ea.initiate("gw", 0.0)
        req = ea.datagrams_to_send()[0].data
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", pa))
        s.settimeout(2)
        try:
            s.sendto(b"\0\0\0\0" + req, ("127.0.0.1", pb))
            data = await asyncio.get_running_loop().run_in_executor(None, s.recv, 2000)
            assert data[:8] == req[:8] and eb.half_open_count() == 1
        finally:
            s.close()
            ep.close()
    asyncio.run(run())
