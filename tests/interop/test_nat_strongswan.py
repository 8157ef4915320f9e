"""NAT traversal through a real NAT (RFC 7296 §2.23, RFC 3948) against strongSwan charon 5.9.8.

A router namespace between our engine and charon (testbed/natrouter.py) masquerades the
inside host with nftables (`masquerade random`: every new mapping gets a random port), and taps
every UDP datagram it forwards. Three topologies, one charon each:

* we are behind the NAT (we initiate),
* charon is behind the NAT (it initiates; we answer, our connection names no peer address),
* no NAT at all (the router only forwards).

Neither side forces UDP encapsulation in its configuration: our connection has ``encap = false``
and charon's ``encap = no``. But charon's kernel-libipsec cannot run ESP without UDP
encapsulation, and charon then fakes its own NAT_DETECTION_SOURCE_IP (a random hash, as with
``encap = yes``). What that means here:

* charon's *detection* is real: ``nat-local`` (its address as it sent it differs from where our
  NAT_DETECTION_DESTINATION_IP says it came from) and ``nat-remote`` (our
  NAT_DETECTION_SOURCE_IP does not match the address and port it saw) are computed from our
  hashes, and both must be right in every topology; ``nat-fake`` says it forced encapsulation.
* our ``nat_remote`` is always true (charon's source hash is random), so both sides always move
  to port 4500 and ESP is always UDP-encapsulated, NAT or not. What is ours to get right is
  ``nat_local`` (from charon's NAT_DETECTION_DESTINATION_IP) and all that follows from it: NAT
  keepalives only when we are behind the NAT, following a NAT's new mapping.

So each test checks the NAT_DETECTION_* payloads on the wire against SHA-1 hashes computed
here (not by our codec), both sides' verdicts, the float to 4500 (IKE_AUTH and ESP on 4500, the
non-ESP marker), NAT keepalives and their spacing, and pings through; behind a NAT, the mapping
is flushed (`conntrack -D`) and the tunnel must carry pings again through the new one.
"""
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import tempfile
import time

import pytest

from testbed import charon as charon_mod
from testbed import natrouter
from testbed import ping as pinging
from testbed.netns import cleanup_stale, have_root, udp_socket

pytestmark = pytest.mark.strongswan

if not have_root():
    pytest.skip("interop tests need root (network namespaces, port 500)", allow_module_level=True)
if not charon_mod.available():
    pytest.fail("strongSwan charon with kernel-libipsec is not installed (tools/bootstrap.sh)", pytrace=False)
if not natrouter.available():
    pytest.fail("nft and conntrack are not installed (apt-get install nftables conntrack; tools/bootstrap.sh)",
                pytrace=False)

from host.ike_driver import IkeUdpEndpoint  # noqa: E402
from host.ike.config import RetransmitPolicy, parse_connections  # noqa: E402
from host.ike.constants import NON_ESP_MARKER, ExchangeType, Flag, Notify  # noqa: E402
from host.ike.engine import EngineSettings, IkeEngine  # noqa: E402
from host.ike.events import ChildSaDelete, ChildSaInstall, ChildSaUp, IkeSaMoved  # noqa: E402
from host.ike.message import parse_header, parse_plain  # noqa: E402
from testbed.natrouter import INSIDE, OUTSIDE, ROUTER_OUT  # noqa: E402
from testbed.scapy_esp import CAPABILITIES, ScapyEchoDataPath  # noqa: E402

OUR_INNER, CHARON_INNER = "198.51.100.1", "203.0.113.1"
OUR_ID, CHARON_ID = "ours.example", "charon.example"
PSK = "nat-psk-0123456789abcdef-0123456789"
IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
KEEPALIVE = 1.0         # both sides' NAT-keepalive interval here (s); charon's default and ours: 20
DPD = 1.0               # our liveness check after this much silence when we are behind the NAT (s)
CHARON_DPD = 3          # charon's when it is behind the NAT: longer than its keepalive interval, since
                        # charon sends a keepalive only after an interval without any packet out


def natd(spi_i: bytes, spi_r: bytes, ip: str, port: int) -> bytes:
    """RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | Port), computed here with hashlib."""
    return hashlib.sha1(spi_i + spi_r + socket.inet_aton(ip) + port.to_bytes(2, "big")).digest()


class Ours:
    """Our engine, the asyncio UDP driver and the scapy data path, in namespace ``ns`` at ``ip``."""

    def __init__(self, ns, ip, conn):
        self.engine = IkeEngine(parse_connections({"gw": conn}), CAPABILITIES,
                                settings=EngineSettings(nat_keepalive=KEEPALIVE),
                                retransmit=RetransmitPolicy(timeout=1.0, base=1.8, tries=3))
        self.engine.strict = True
        self.events = []
        socks = {500: udp_socket(ns, ip, 500), 4500: udp_socket(ns, ip, 4500)}
        self.ep = IkeUdpEndpoint(self.engine, ip, on_event=self.on_event, on_esp=self.dp_in, sockets=socks)
        # decrypted ESP proves liveness (§2.4), as the board's counters do in the daemon, so the
        # liveness check runs only when the peer's traffic stops arriving
        self.dp = ScapyEchoDataPath(self.ep.send_esp,
                                    on_inbound=lambda handle: self.engine.esp_received(handle, self.ep.now()))

    def on_event(self, ev):
        self.events.append(ev)
        if isinstance(ev, ChildSaInstall):
            self.ep.child_sa_installed(ev.handle, self.dp.install(ev), None)
        elif isinstance(ev, ChildSaDelete):
            self.dp.remove(ev.handle)
        else:
            self.dp.follow(ev)

    def dp_in(self, data, addr):
        self.dp.esp_in(data, addr)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]

    def sa(self):
        (sa,) = self.engine.ike_sas()
        return sa

    async def until(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events}")
            await asyncio.sleep(0.01)


def our_conn(local, remote, dpd=DPD):
    return {"local_addrs": [local], "remote_addrs": [remote], "proposals": [IKE], "encap": False,
            "dpd_delay": dpd, "psk": PSK, "local": {"auth": "psk", "id": OUR_ID},
            "remote": {"auth": "psk", "id": CHARON_ID},
            "children": {"net": {"local_ts": [f"{OUR_INNER}/32"], "remote_ts": [f"{CHARON_INNER}/32"],
                                 "esp_proposals": [ESP]}}}


def charon_conn(local, remote, dpd):
    child = {"local_ts": [f"{CHARON_INNER}/32"], "remote_ts": [f"{OUR_INNER}/32"], "esp_proposals": [ESP],
             "mode": "tunnel", "rekey_time": "0", "start_action": "none"}
    return {"version": "2", "local_addrs": [local], "remote_addrs": [remote], "proposals": [IKE],
            "encap": "no", "mobike": "no", "rekey_time": "0", "reauth_time": "0",
            "dpd_delay": f"{int(dpd)}s" if dpd else "0", "unique": "no",
            "local": {"auth": "psk", "id": CHARON_ID}, "remote": {"auth": "psk", "id": OUR_ID},
            "children": {"net": child}}


class Bed:
    """A NatRouter, charon on one side of it, our engine on the other."""

    def __init__(self, nat: bool, charon_inside: bool):
        cleanup_stale()
        self.state = tempfile.mkdtemp(prefix="ikn", dir="/tmp")
        self.charon_inside = charon_inside
        lo_ours, lo_charon = [OUR_INNER], [CHARON_INNER]
        self.net = natrouter.NatRouter(nat, lo_a=lo_charon if charon_inside else lo_ours,
                                       lo_b=lo_ours if charon_inside else lo_charon)
        try:
            self.charon_ns, self.our_ns = (self.net.ns_a, self.net.ns_b) if charon_inside else \
                (self.net.ns_b, self.net.ns_a)
            self.charon_ip, self.our_ip = (INSIDE, OUTSIDE) if charon_inside else (OUTSIDE, INSIDE)
            self.charon = charon_mod.Charon(self.charon_ns, os.path.join(self.state, "c"), loglevel=1,
                                            keep_alive=int(KEEPALIVE))
            self.charon.start()
            self.charon.load_psk(PSK, [OUR_ID, CHARON_ID])
        except BaseException:
            self.close()
            raise

    def close(self):
        if getattr(self, "charon", None) is not None:
            self.charon.stop()
        self.net.destroy()
        shutil.rmtree(self.state, ignore_errors=True)

    def ike(self, side, src=None):
        """IKE messages the router forwarded on link ``side``: (Udp, header, payloads or None)."""
        out = []
        for u in self.net.udp(side=side, src=src):
            data = u.payload
            if 4500 in (u.src[1], u.dst[1]) and data[:4] == NON_ESP_MARKER:
                data = data[4:]
            elif 500 not in (u.src[1], u.dst[1]):
                continue
            hdr = parse_header(data)
            payloads = parse_plain(hdr, data)[0] if hdr.exchange == ExchangeType.IKE_SA_INIT else None
            out.append((u, hdr, payloads))
        return out

    def keepalives(self, side, src, since=0.0):
        return [u.at for u in self.net.udp(side=side, src=src, since=since) if u.payload == b"\xff"]

    def charon_sa(self):
        (sa,) = self.charon.list_sas()
        return sa


@pytest.fixture
def run():
    def go(bed, coro):
        try:
            asyncio.run(coro)
        except BaseException:
            print(bed.charon.log_tail(80))
            raise
    return go


def yes(v) -> bool:
    return v in (b"yes", "yes")


def check_natd(bed, init_src, resp_src, init_public, resp_public):
    """The NAT_DETECTION_* payloads of IKE_SA_INIT, as they crossed the router, against hashes
    computed here: the initiator's of the addresses it sent from and to; the responder's
    DESTINATION hash of the address and port it saw the initiator at (after the NAT).
    ``*_src``: (ip, port) as each side itself sent from; ``*_public``: as the other side saw it."""
    link = "in" if bed.charon_inside == (init_src[0] == bed.charon_ip) else "out"
    msgs = [m for m in bed.ike(link) if m[1].exchange == ExchangeType.IKE_SA_INIT]
    req = next(m for m in msgs if not m[1].flags & Flag.RESPONSE)
    resp = next(m for m in msgs if m[1].flags & Flag.RESPONSE)
    spi_i, spi_r = req[1].spi_i, resp[1].spi_r

    def notify(payloads, kind):
        return [p.data for p in payloads if getattr(p, "notify_type", None) == kind]
    zero = bytes(8)
    # the initiator hashes what it sends from and to (§2.23); its SPIr is still zero
    assert notify(req[2], Notify.NAT_DETECTION_DESTINATION_IP) == [natd(spi_i, zero, *resp_public)]
    src_i = notify(req[2], Notify.NAT_DETECTION_SOURCE_IP)
    # the responder's DESTINATION hash is of the initiator's address and port as it arrived
    assert notify(resp[2], Notify.NAT_DETECTION_DESTINATION_IP) == [natd(spi_i, spi_r, *init_public)]
    src_r = notify(resp[2], Notify.NAT_DETECTION_SOURCE_IP)
    return src_i == [natd(spi_i, zero, *init_src)], src_r == [natd(spi_i, spi_r, *resp_src)]


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


async def ping_through(bed, count=5):
    pr = await pinging.ping(bed.charon_ns, CHARON_INNER, OUR_INNER, count, interval=0.1)
    assert pr.ok, pr.summary()


async def survive_remap(bed):
    """Flush the inside host's NAT-T mapping while charon pings every 50 ms; the tunnel must
    carry pings again through a new mapping (a new random port), found by the side not behind
    the NAT from the next authentic IKE message (the liveness check of whichever side hears
    nothing). Returns (seconds from the flush to the first reply, pings lost, old port, new port)."""
    def public_ports():
        return {u.src[1] for u in bed.net.udp(side="out", src=ROUTER_OUT) if u.dst[1] == 4500}
    old = public_ports()
    assert len(old) == 1, old
    p = pinging.Pinger(bed.charon_ns, CHARON_INNER, OUR_INNER, interval=0.05)
    p.start()
    try:
        await asyncio.sleep(0.5)
        assert p.replies, "no replies before the flush"
        assert await asyncio.to_thread(bed.net.flush_mapping, 4500) >= 1
        t_flush = time.monotonic()
        deadline = t_flush + 2 * max(DPD, CHARON_DPD) + 6
        while True:
            recent = [at for at in p.replies.values() if at > t_flush + 0.3]
            if len(recent) >= 10:
                break
            assert time.monotonic() < deadline, f"no pings through after the remap: {p.summary()[:400]}"
            await asyncio.sleep(0.05)
    finally:
        p.stop()
    new = public_ports() - old
    assert len(new) == 1, (old, new)
    first = p.first_reply_sent_after(t_flush)
    lost = p.lost_between(t_flush, first[0])
    return first[1] - t_flush, lost, old.pop(), new.pop()


def test_we_are_behind_the_nat(run):
    bed = Bed(nat=True, charon_inside=False)

    async def main():
        bed.charon.load_conn("gw", charon_conn(OUTSIDE, "%any", dpd=0))
        ours = Ours(bed.our_ns, INSIDE, our_conn(INSIDE, OUTSIDE))
        await ours.ep.start()
        try:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="ChildSaUp")
            # IKE_SA_INIT from 192.0.2.1:500 reached charon from the NAT's port P1
            p1 = next(u.src[1] for u in bed.net.udp(side="out", src=ROUTER_OUT) if u.dst[1] == 500)
            assert p1 != 500
            our_src_ok, charon_src_ok = check_natd(bed, (INSIDE, 500), (OUTSIDE, 500), (ROUTER_OUT, p1),
                                                   (OUTSIDE, 500))
            assert our_src_ok and not charon_src_ok      # ours is the real hash, charon's the libipsec fake
            sa = ours.sa()
            assert sa.nat_local and sa.nat_remote        # our own NAT: detected from charon's hash
            c = await asyncio.to_thread(bed.charon_sa)
            assert yes(c.get("nat-remote")) and not yes(c.get("nat-local")), c
            # the float (§2.23): IKE_AUTH from our 4500 with the non-ESP marker, a new mapping P2
            auth = [m for m in bed.ike("in", src=INSIDE) if m[1].exchange == ExchangeType.IKE_AUTH]
            assert auth and auth[0][0].src == (INSIDE, 4500) and auth[0][0].dst == (OUTSIDE, 4500)
            p2 = int(c["remote-port"])
            assert p2 not in (500, 4500, p1) and c["remote-host"] == ROUTER_OUT.encode()
            inst = ours.of(ChildSaInstall)[0]
            assert inst.encap and (inst.local_port, inst.remote_port) == (4500, 4500)
            await ping_through(bed)
            esp = [u for u in bed.net.udp(side="out", src=ROUTER_OUT) if u.src[1] == p2 and
                   u.payload[:4] == inst.spi_out.to_bytes(4, "big")]
            assert esp, "our ESP did not leave through the NAT-T mapping"
            # NAT keepalives from our 4500 (RFC 3948 §2.3), on time, through the NAT to charon's 4500
            t0 = time.monotonic()
            await asyncio.sleep(4.5 * KEEPALIVE)
            ka = bed.keepalives("in", INSIDE, since=t0)
            assert len(ka) >= 3, ka
            g = gaps(ka)
            assert all(0.7 * KEEPALIVE < x < 2.0 * KEEPALIVE for x in g), g
            out = [u for u in bed.net.udp(side="out", src=ROUTER_OUT, since=t0) if u.payload == b"\xff"]
            assert out and {u.src[1] for u in out} == {p2} and {u.dst for u in out} == {(OUTSIDE, 4500)}
            assert ours.engine.stats["nat_keepalives"] >= len(ka)
            # the NAT loses our mapping: charon learns the new one from our next liveness check
            took, lost, old, new = await survive_remap(bed)
            assert old == p2 and new not in (p2, 4500)
            c = await asyncio.to_thread(bed.charon_sa)
            assert int(c["remote-port"]) == new, c
            print(f"\nwe behind the NAT: NAT-D ok, floated {p1} -> {p2}, keepalive gaps "
                  f"{statistics.median(g):.2f} s; mapping {old} -> {new}: first reply {took:.2f} s after "
                  f"the flush, {lost} pings lost")
        finally:
            ours.ep.close()
    try:
        run(bed, main())
    finally:
        bed.close()


def test_charon_is_behind_the_nat(run):
    bed = Bed(nat=True, charon_inside=True)

    async def main():
        bed.charon.load_conn("gw", charon_conn(INSIDE, OUTSIDE, dpd=CHARON_DPD))
        # the side behind the NAT keeps it alive and notices when it breaks; we stay silent
        ours = Ours(bed.our_ns, OUTSIDE, our_conn(OUTSIDE, "%any", dpd=0))
        await ours.ep.start()
        try:
            res = asyncio.ensure_future(asyncio.to_thread(bed.charon.initiate, "net", "gw"))
            await ours.until(lambda: ours.of(ChildSaUp), what="ChildSaUp")
            await res
            p1 = next(u.src[1] for u in bed.net.udp(side="out", src=ROUTER_OUT) if u.dst[1] == 500)
            charon_src_ok, our_src_ok = check_natd(bed, (INSIDE, 500), (OUTSIDE, 500), (ROUTER_OUT, p1),
                                                   (OUTSIDE, 500))
            assert our_src_ok and not charon_src_ok
            sa = ours.sa()
            assert not sa.nat_local and sa.nat_remote        # we are not behind a NAT; charon is
            c = await asyncio.to_thread(bed.charon_sa)
            assert yes(c.get("nat-local")) and not yes(c.get("nat-remote")), c
            p2 = sa.remote[1]
            assert sa.remote[0] == ROUTER_OUT and p2 not in (500, 4500, p1) and sa.local[1] == 4500
            inst = ours.of(ChildSaInstall)[0]
            assert (inst.remote_addr, inst.remote_port) == (ROUTER_OUT, p2)
            await ping_through(bed)
            # charon's keepalives reach us through the NAT; we, not behind one, send none
            t0 = time.monotonic()
            k0 = ours.ep.stats["keepalives"]
            await asyncio.sleep(4.5 * KEEPALIVE)
            ka = bed.keepalives("in", INSIDE, since=t0)
            assert len(ka) >= 3 and ours.ep.stats["keepalives"] - k0 >= 3, (ka, ours.ep.stats)
            g = gaps(ka)
            # a liveness check of charon's may stand in for one keepalive: at most two intervals
            assert all(0.7 * KEEPALIVE < x < 2.5 * KEEPALIVE for x in g), g
            assert not bed.keepalives("out", OUTSIDE) and ours.engine.stats["nat_keepalives"] == 0
            # charon's mapping changes: we follow its next authentic IKE message (its liveness
            # check) and move the Child SA's ESP there (IkeSaMoved)
            took, lost, old, new = await survive_remap(bed)
            assert old == p2
            moved = ours.of(IkeSaMoved)
            assert moved and moved[-1].remote == (ROUTER_OUT, new), moved
            assert ours.dp.dest[inst.handle] == (ROUTER_OUT, new) and ours.sa().remote == (ROUTER_OUT, new)
            print(f"\ncharon behind the NAT: NAT-D ok, floated {p1} -> {p2}, charon's keepalive gaps "
                  f"{statistics.median(g):.2f} s; mapping {old} -> {new}: first reply {took:.2f} s after "
                  f"the flush, {lost} pings lost")
        finally:
            ours.ep.close()
    try:
        run(bed, main())
    finally:
        bed.close()


def test_no_nat_no_false_detection(run):
    bed = Bed(nat=False, charon_inside=False)

    async def main():
        bed.charon.load_conn("gw", charon_conn(OUTSIDE, INSIDE, dpd=0))
        ours = Ours(bed.our_ns, INSIDE, our_conn(INSIDE, OUTSIDE))
        await ours.ep.start()
        try:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="ChildSaUp")
            our_src_ok, charon_src_ok = check_natd(bed, (INSIDE, 500), (OUTSIDE, 500), (INSIDE, 500),
                                                   (OUTSIDE, 500))
            assert our_src_ok and not charon_src_ok
            sa = ours.sa()
            assert not sa.nat_local and sa.nat_remote        # nat_remote: charon's libipsec fake
            c = await asyncio.to_thread(bed.charon_sa)
            assert not yes(c.get("nat-local")) and not yes(c.get("nat-remote")), c
            assert yes(c.get("nat-fake")), c
            assert (c["remote-host"], int(c["remote-port"])) == (INSIDE.encode(), 4500)   # floated, no NAT
            await ping_through(bed)
            t0 = time.monotonic()
            await asyncio.sleep(3.5 * KEEPALIVE)
            assert not bed.keepalives("in", INSIDE, since=t0) and ours.engine.stats["nat_keepalives"] == 0
            assert not ours.of(IkeSaMoved)
            assert {u.src for u in bed.net.udp(side="out")} <= {(INSIDE, 500), (INSIDE, 4500),
                                                                 (OUTSIDE, 500), (OUTSIDE, 4500)}
        finally:
            ours.ep.close()
    try:
        run(bed, main())
    finally:
        bed.close()
