"""The algorithms beyond the first set, against real strongSwan charon (kernel-libipsec ESP) in
network namespaces: every new IKE key exchange method (MODP-3072/4096, ECP-384/521, Curve448) and
IKE cipher (ChaCha20-Poly1305; HMAC-SHA-1 and PRF-SHA-1 for legacy peers), every new ESP transform
(ChaCha20-Poly1305, with the boards' small-int implementation too; AES-CBC with HMAC-SHA-384-192
and -512-256), each with us as initiator and as responder, and a Child SA rekey and an IKE SA
rekey in the middle of the traffic (the other side rekeys): not one ping may be lost.

The ESP side is the board's own ESP engine (firmware/esp.py in a Board core, with the case's crypto
backend) answering the echo requests charon's host sends through charon's tunnel: charon's
libipsec checks the board's packets and the board checks charon's.

ML-KEM (RFC 9370 with draft-ietf-ipsecme-ikev2-mlkem) needs strongSwan >= 6.0 (Debian 13). With
6.x the hybrid suite runs like the others; with 5.9 (Debian 12) hybrid interop is not applicable,
and the test says so and checks what 5.9 does instead: it refuses the ke1_ proposal, we fall back
to a classical one we also offer, fail cleanly when we offer none, and refuse a classical offer
when we require the hybrid.
"""
import asyncio
import contextlib
import itertools
import os
import shutil
import struct
import tempfile
import time

import pytest

from testbed import charon as charon_mod
from testbed import ping as pinging
from testbed.netns import VethPair, cleanup_stale, have_root, udp_socket

pytestmark = pytest.mark.strongswan

if not have_root():
    pytest.skip("interop tests need root (network namespaces, port 500)", allow_module_level=True)
if not charon_mod.available():
    pytest.fail("strongSwan charon with kernel-libipsec is not installed", pytrace=False)

from firmware import esp  # noqa: E402
from firmware.link import messages as m  # noqa: E402
from host.ike_driver import IkeUdpEndpoint  # noqa: E402
from host.ike.config import RetransmitPolicy, parse_connections  # noqa: E402
from host.ike.engine import IkeEngine  # noqa: E402
from host.ike.events import (  # noqa: E402
    ChildSaDelete, ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaMoved, IkeSaRekeyed, IkeSaUp,
)
from host.ike.proposals import OffloadCapabilities, describe, parse_proposal  # noqa: E402

OUR_IP, CHARON_IP = "192.0.2.1", "192.0.2.2"
OUR_INNER, CHARON_INNER = "198.51.100.1", "203.0.113.1"
OUR_ID, CHARON_ID = "ours.example", "charon.example"
PSK = "algorithms-psk-0123456789abcdef-0"
FAST = RetransmitPolicy(timeout=0.5, base=2.0, tries=3)

# (IKE proposal, ESP proposal, the board's crypto backend, charon's names: IKE encr, DH group, ESP encr / integ)
SUITES = [
    ("chacha20poly1305-prfsha256-x448", "chacha20poly1305", "pure",
     ("CHACHA20_POLY1305", "CURVE_448", "CHACHA20_POLY1305")),
    ("aes256-sha384-ecp384", "aes256-sha384", "cryptography", ("AES_CBC", "ECP_384", "HMAC_SHA2_384_192")),
    ("aes256gcm16-prfsha512-ecp521", "aes128-sha512", "cryptography", ("AES_GCM_16", "ECP_521", "HMAC_SHA2_512_256")),
    ("aes128-sha256-modp3072", "aes128-sha384", "cryptography", ("AES_CBC", "MODP_3072", "HMAC_SHA2_384_192")),
    ("aes256-sha512-modp4096", "aes256-sha512", "cryptography", ("AES_CBC", "MODP_4096", "HMAC_SHA2_512_256")),
    ("aes128-sha1-modp2048", "chacha20poly1305", "cryptography", ("AES_CBC", "MODP_2048", "CHACHA20_POLY1305")),
]
CASES = [(s, we) for s in SUITES for we in (True, False)]
_names = itertools.count(1)


class Bed:
    pass


@pytest.fixture(scope="module")
def bed():
    cleanup_stale()
    b = Bed()
    b.state = tempfile.mkdtemp(prefix="ika", dir="/tmp")
    b.net = VethPair(lo_b=[CHARON_INNER])
    b.charon = None
    try:
        b.charon = charon_mod.Charon(b.net.ns_b, os.path.join(b.state, "c"), loglevel=1,
                                     retransmit_timeout=0.5, retransmit_tries=3)
        b.charon.start()
        b.charon.load_psk(PSK, [OUR_ID, CHARON_ID])
        b.version = b.charon.session().version()["version"].decode()
        yield b
    finally:
        if b.charon is not None:
            b.charon.stop()
        b.net.destroy()
        shutil.rmtree(b.state, ignore_errors=True)


def charon_conn(ike, esp_, **child):
    c = {"local_ts": [f"{CHARON_INNER}/32"], "remote_ts": [f"{OUR_INNER}/32"], "esp_proposals": [esp_],
         "mode": "tunnel", "rekey_time": "0", "life_time": "0", "start_action": "none"}
    c.update(child)
    return {"version": "2", "local_addrs": [CHARON_IP], "remote_addrs": [OUR_IP],
            "proposals": ike if isinstance(ike, list) else [ike], "encap": "yes", "mobike": "no",
            "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0", "unique": "no",
            "local": {"auth": "psk", "id": CHARON_ID}, "remote": {"auth": "psk", "id": OUR_ID},
            "children": {"net": c}}


def our_conn(ike, esp_):
    return {"local_addrs": [OUR_IP], "remote_addrs": [CHARON_IP], "proposals": ike if isinstance(ike, list) else [ike],
            "psk": PSK, "local": {"auth": "psk", "id": OUR_ID}, "remote": {"auth": "psk", "id": CHARON_ID},
            "rekey_time": 0, "keyingtries": 1,
            "children": {"net": {"local_ts": [f"{OUR_INNER}/32"], "remote_ts": [f"{CHARON_INNER}/32"],
                                 "esp_proposals": [esp_], "rekey_time": 0}}}


# ---------------------------------------------------------------- the board's ESP, answering pings

def echo_reply(pkt: bytes):
    """The ICMP echo reply to an IPv4 echo request, or None."""
    ihl = (pkt[0] & 15) * 4
    if pkt[0] >> 4 != 4 or pkt[9] != 1 or len(pkt) < ihl + 8 or pkt[ihl] != 8:
        return None
    icmp = bytearray(pkt[ihl:])
    icmp[0], icmp[2:4] = 0, b"\0\0"
    icmp[2:4] = struct.pack("!H", pinging.checksum(bytes(icmp)))
    hdr = bytearray(pkt[:20])
    hdr[12:16], hdr[16:20] = pkt[16:20], pkt[12:16]
    hdr[8], hdr[10:12] = 64, b"\0\0"
    hdr[0], hdr[2:4] = 0x45, struct.pack("!H", 20 + len(icmp))
    hdr[10:12] = struct.pack("!H", pinging.checksum(bytes(hdr)))
    return bytes(hdr) + bytes(icmp)


class BoardEcho:
    """The board's ESP engine (a Board core with crypto backend ``backend``) holding the Child SAs
    the engine installs, answering echo requests through the SA pair they came in on."""

    def __init__(self, send, backend):
        self.board = esp.make_board({}, 0, backend=backend)
        self.send = send
        self.pairs = {}             # handle -> [spi_in, spi_out, (peer ip, port), ike_id]
        self.by_spi_in = {}
        self.received = self.answered = self.errors = 0

    def install(self, ev) -> bool:
        flags = (m.SAF_ESN if ev.esn else 0) | (m.SAF_UDP_ENCAP if ev.encap else 0)
        ip = lambda a: bytes(int(x) for x in a.split("."))          # noqa: E731
        common = dict(flags=flags, src=(ip(ev.local_addr), ev.local_port), dst=(ip(ev.remote_addr), ev.remote_port))
        spec_in = m.SaSpec(ev.spi_in, m.DIR_IN, ev.encr, ev.key_in + ev.salt_in, ev.integ, ev.integ_key_in, **common)
        spec_out = m.SaSpec(ev.spi_out, m.DIR_OUT, ev.encr, ev.key_out + ev.salt_out, ev.integ, ev.integ_key_out,
                            **common)
        if self.board.sad.add(spec_in) != m.OK:
            return False
        if self.board.sad.add(spec_out) != m.OK:
            self.board.sad.delete(ev.spi_in, m.DIR_IN)
            return False
        self.pairs[ev.handle] = [ev.spi_in, ev.spi_out, (ev.remote_addr, ev.remote_port), ev.ike_id]
        self.by_spi_in[ev.spi_in] = ev.handle
        return True

    def remove(self, handle):
        p = self.pairs.pop(handle, None)
        if p is not None:
            self.by_spi_in.pop(p[0], None)
            self.board.sad.delete(p[0], m.DIR_IN)
            self.board.sad.delete(p[1], m.DIR_OUT)

    def follow(self, ev):
        if isinstance(ev, IkeSaMoved):
            for p in self.pairs.values():
                if p[3] == ev.ike_id:
                    p[2] = tuple(ev.remote)
        elif isinstance(ev, IkeSaRekeyed):
            for p in self.pairs.values():
                if p[3] == ev.old_ike_id:
                    p[3] = ev.new_ike_id

    def esp_in(self, data: bytes, addr):
        self.received += 1
        src = (bytes(int(x) for x in addr[0].split(".")), addr[1])
        st, spi, pkt = self.board._decrypt_one(src, data)
        handle = self.by_spi_in.get(spi)
        if st != m.P_OK or handle is None:
            self.errors += 1
            return
        reply = echo_reply(bytes(pkt))
        if reply is None:
            return
        _spi_in, spi_out, dest, _ike = self.pairs[handle]
        st, wire = self.board.sad.get(spi_out, m.DIR_OUT).encrypt(reply)
        if st != m.P_OK:
            self.errors += 1
            return
        self.send(bytes(wire), dest)
        self.answered += 1


class Ours:
    """Our engine + UDP driver + the board's ESP in namespace a."""

    def __init__(self, bed, conn, backend, caps):
        self.engine = IkeEngine(parse_connections({"gw": conn}), caps, retransmit=FAST)
        self.events = []
        socks = {500: udp_socket(bed.net.ns_a, OUR_IP, 500), 4500: udp_socket(bed.net.ns_a, OUR_IP, 4500)}
        self.ep = IkeUdpEndpoint(self.engine, OUR_IP, on_event=self.on_event, on_esp=self.on_esp, sockets=socks)
        self.dp = BoardEcho(self.ep.send_esp, backend)

    def on_event(self, ev):
        self.events.append(ev)
        if isinstance(ev, ChildSaInstall):
            self.ep.child_sa_installed(ev.handle, self.dp.install(ev), None)
        elif isinstance(ev, ChildSaDelete):
            self.dp.remove(ev.handle)
        else:
            self.dp.follow(ev)

    def on_esp(self, data, addr):
        self.dp.esp_in(data, addr)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]

    async def until(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events}")
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def loaded(bed, charon_c, our_c, backend, caps=None):
    name = f"a{next(_names)}"
    bed.charon.load_conn(name, charon_c)
    if caps is None:
        caps = OffloadCapabilities(frozenset(esp_transforms(backend)))
    ours = Ours(bed, our_c, backend, caps)
    await ours.ep.start()
    try:
        yield name, ours
    finally:
        ours.ep.close()
        if await asyncio.to_thread(charon_sas, bed, name):
            await asyncio.to_thread(bed.charon.terminate, name)
        await asyncio.to_thread(bed.charon.unload_conn, name)


def esp_transforms(backend):
    """What a board with this backend advertises (its HELLO): the engine negotiates only these."""
    from firmware import crypto
    return {t.key() for t in esp.transforms(crypto.load(backend))}


def _run(bed, coro):
    try:
        asyncio.run(coro)
    except BaseException:
        print(bed.charon.log_tail(80))
        raise


def charon_sas(bed, name):
    return [s for s in bed.charon.list_sas() if s["_name"] == name]


async def bring_up(bed, ours, name, we_initiate):
    if we_initiate:
        ours.ep.initiate("gw")
    else:
        res = asyncio.ensure_future(asyncio.to_thread(bed.charon.initiate, "net", name))
    await ours.until(lambda: ours.of(ChildSaUp), what="ChildSaUp")
    if not we_initiate:
        await res


# ---------------------------------------------------------------- the classical suites

@pytest.mark.parametrize("suite,we_initiate", CASES,
                         ids=[f"{'we' if w else 'charon'}-init-{s[0].split('-')[-1]}-{s[0].split('-')[0]}-esp-{s[1]}"
                              f"{'-pure' if s[2] == 'pure' else ''}" for s, w in CASES])
def test_suite_both_roles_rekeys_during_traffic_no_ping_lost(bed, suite, we_initiate):
    """Up, then 3 s of pings every 50 ms during which the side that did not initiate rekeys the
    Child SA and then the IKE SA; charon names the algorithms we negotiated."""
    ike, esp_, backend, (c_encr, c_dh, c_esp) = suite

    async def run():
        async with loaded(bed, charon_conn(ike, esp_), our_conn(ike, esp_), backend) as (name, ours):
            await bring_up(bed, ours, name, we_initiate)
            up = ours.of(IkeSaUp)[0]
            assert up.initiator == we_initiate and up.proposal == describe(parse_proposal(ike))
            inst = ours.of(ChildSaInstall)[0]
            sas = await asyncio.to_thread(charon_sas, bed, name)
            assert len(sas) == 1 and sas[0]["state"] == b"ESTABLISHED", sas
            assert sas[0]["encr-alg"].decode() == c_encr and sas[0]["dh-group"].decode() == c_dh, sas[0]
            child = next(iter(sas[0]["child-sas"].values()))
            assert c_esp in (child["encr-alg"].decode(), child.get("integ-alg", b"").decode()), child
            assert int(child["spi-in"], 16) == inst.spi_out
            pinger = pinging.start(bed.net.ns_b, CHARON_INNER, OUR_INNER, 60, 0.05)
            await asyncio.sleep(0.6)
            n_child = len(ours.of(ChildSaUp))
            if we_initiate:         # charon, the responder, rekeys
                await asyncio.to_thread(lambda: bed.charon.session().rekey({"child": "net"}))
            else:
                ours.ep.call(ours.engine.rekey_child, inst.handle)
            await ours.until(lambda: len(ours.of(ChildSaUp)) > n_child and ours.of(ChildSaDelete),
                             what="the Child SA rekey")
            await asyncio.sleep(0.5)
            if we_initiate:
                await asyncio.to_thread(lambda: bed.charon.session().rekey({"ike": name}))
            else:
                ours.ep.call(ours.engine.rekey_ike, up.ike_id)
            await ours.until(lambda: ours.of(IkeSaRekeyed), what="the IKE SA rekey")
            pr = await pinging.finish(pinger)
            rk = ours.of(IkeSaRekeyed)[0]
            print(f"\n{ike} / {esp_} ({backend}), {'we' if we_initiate else 'charon'} initiated: ping {pr}; "
                  f"board answered {ours.dp.answered} of {ours.dp.received}")
            assert pr.ok, pr.summary()
            assert ours.dp.errors == 0
            assert rk.initiator == (not we_initiate) and rk.proposal == up.proposal
            assert ours.of(ChildSaInstall)[1].rekey_of == inst.handle
            assert not [d for d in ours.of(IkeSaDown) if d.replaced_by is None]
            sas = await asyncio.to_thread(charon_sas, bed, name)
            (sa,) = ours.engine.ike_sas()
            assert len(sas) == 1 and sas[0]["initiator-spi"].decode() == sa.spi_i.hex()
    _run(bed, run())


# ---------------------------------------------------------------- ML-KEM (RFC 9370)

HYBRID, CLASSICAL = "aes256gcm16-prfsha384-x25519-ke1_mlkem768", "aes256gcm16-prfsha384-x25519"


def _major(version: str) -> int:
    return int(version.split(".")[0])


def test_mlkem_hybrid_interop_needs_strongswan_6_on_5_9_it_is_refused_and_we_fall_back(bed):
    """strongSwan >= 6.0: the hybrid suite both ways with rekeys, as the classical ones.
    strongSwan 5.9: NOT APPLICABLE (it has no ML-KEM and no RFC 9370); what is checked instead:
    charon refuses the ke1_ proposal, we fall back to the classical one we also offer (no
    IKE_INTERMEDIATE), fail cleanly when we offer only the hybrid, and refuse charon's classical
    offer when we require the hybrid."""
    if _major(bed.version) >= 6:
        for we_initiate in (True, False):
            test_suite_both_roles_rekeys_during_traffic_no_ping_lost(
                bed, (HYBRID, "aes256gcm16", "cryptography", ("AES_GCM_16", "CURVE_25519", "AES_GCM_16")),
                we_initiate)
        return
    assert bed.version.startswith("5.9."), bed.version
    print(f"\nstrongSwan {bed.version}: ML-KEM hybrid interop NOT APPLICABLE (needs strongSwan >= 6.0); "
          "checking refusal and fallback instead")

    async def run():
        # we offer hybrid then classical: charon takes the classical one
        async with loaded(bed, charon_conn(CLASSICAL, "aes256gcm16"), our_conn([HYBRID, CLASSICAL], "aes256gcm16"),
                          "cryptography") as (name, ours):
            await bring_up(bed, ours, name, True)
            assert ours.of(IkeSaUp)[0].proposal == CLASSICAL
            assert ours.engine.stats["intermediate_exchanges"] == 0
            pr = await pinging.ping(bed.net.ns_b, CHARON_INNER, OUR_INNER, 3)
            assert pr.ok, pr.summary()
        # we offer only the hybrid: charon answers NO_PROPOSAL_CHOSEN, the attempt ends cleanly
        async with loaded(bed, charon_conn(CLASSICAL, "aes256gcm16"), our_conn(HYBRID, "aes256gcm16"),
                          "cryptography") as (name, ours):
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(IkeSaDown), what="the refused attempt")
            down = ours.of(IkeSaDown)[0]
            assert "NO_PROPOSAL_CHOSEN" in down.reason and not down.established, down
            assert not ours.of(IkeSaUp) and ours.engine.stats["internal_errors"] == 0
        # charon offers classical, we require the hybrid: we answer NO_PROPOSAL_CHOSEN
        async with loaded(bed, charon_conn(CLASSICAL, "aes256gcm16"), our_conn(HYBRID, "aes256gcm16"),
                          "cryptography") as (name, ours):
            ok, why = await asyncio.to_thread(_initiate_result, bed, name)
            assert not ok and "failed" in why, why
            assert ours.engine.stats["error_replies"] >= 1 and not ours.of(IkeSaUp)
            assert "NO_PROPOSAL_CHOSEN" in bed.charon.log()[-20000:]
    _run(bed, run())


def _initiate_result(bed, name):
    """(whether charon's initiate of ``name`` succeeded, vici's error: it raises when it fails)."""
    try:
        bed.charon.initiate("net", name, timeout_ms=3000)
        return True, ""
    except Exception as e:          # vici's CommandException: "establishing CHILD_SA 'net' failed"
        return False, str(e)
