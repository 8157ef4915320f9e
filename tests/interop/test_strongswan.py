"""Interop against real strongSwan charon 5.9.8 (kernel-libipsec) in a network namespace.

Topology (one per module, unique names, always removed):

    netns <p>a: 192.0.2.1 (our engine, ports 500/4500)  <--veth-->  netns <p>b: 192.0.2.2 (charon),
    inner host 198.51.100.1 (answered by scapy ESP)                 inner host 203.0.113.1 on lo

libipsec always UDP-encapsulates ESP, so every case exercises NAT-T: NAT-D, port floating to 4500
and the non-ESP marker. Keys are proven to agree by pinging 198.51.100.1 from charon's namespace
through its TUN device: our scapy data path decrypts with our KEYMAT and answers.
"""
import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time

import pytest

from testbed import charon as charon_mod
from testbed import ping as pinging
from testbed.netns import VethPair, cleanup_stale, have_root, ns_exec, udp_socket

pytestmark = pytest.mark.strongswan

if not have_root():
    pytest.skip("interop tests need root (network namespaces, port 500)", allow_module_level=True)
if not charon_mod.available():
    pytest.fail("strongSwan charon with kernel-libipsec is not installed (apt-get install strongswan-charon "
                "libcharon-extra-plugins)", pytrace=False)

from host.ike_driver import IkeUdpEndpoint  # noqa: E402
from host.ike.config import RetransmitPolicy, parse_connections  # noqa: E402
from host.ike.engine import EngineSettings, IkeEngine  # noqa: E402
from host.ike.events import ChildSaDelete, ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaUp  # noqa: E402
from host.ike.proposals import describe, parse_proposal  # noqa: E402
from testbed.pki import TestCa  # noqa: E402
from testbed.scapy_esp import CAPABILITIES, ScapyEchoDataPath  # noqa: E402

OUR_IP, CHARON_IP = "192.0.2.1", "192.0.2.2"
OUR_INNER, CHARON_INNER = "198.51.100.1", "203.0.113.1"
OUR_ID, CHARON_ID = "ours.example", "charon.example"
PSK = "interop-psk-0123456789abcdef-0123"
SUITES = [("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
          ("aes128-sha256-modp2048", "aes128-sha256"),
          ("aes128gcm16-prfsha256-ecp256", "aes128gcm16")]
_names = itertools.count(1)


class Bed:
    pass


@pytest.fixture(scope="module")
def bed():
    cleanup_stale()             # namespaces left by a killed earlier run, if any
    b = Bed()
    b.state = tempfile.mkdtemp(prefix="iko", dir="/tmp")
    b.net = VethPair(lo_b=[CHARON_INNER])
    try:
        b.ca = TestCa("ecdsa")
        b.ca_pem = b.ca.cert_pem()
        ours = b.ca.issue(OUR_ID)
        theirs = b.ca.issue(CHARON_ID)
        b.our_cert, b.our_key = ours.write(b.state, "ours")
        b.ca_path = os.path.join(b.state, "ca.crt")
        with open(b.ca_path, "wb") as f:
            f.write(b.ca_pem)
        b.charon_cert_pem = theirs.cert_pem()
        # RSA end entities under the same CA; charon picks the key that matches the cert it sends
        rsa_ours = b.ca.issue(OUR_ID, "rsa")
        rsa_theirs = b.ca.issue(CHARON_ID, "rsa")
        b.our_rsa_cert, b.our_rsa_key = rsa_ours.write(b.state, "ours-rsa")
        b.charon_rsa_cert_pem = rsa_theirs.cert_pem()
        # cookie_threshold 1: a second concurrent half-open IKE_SA from us gets a COOKIE (§2.6)
        b.charon = charon_mod.Charon(b.net.ns_b, os.path.join(b.state, "c"), loglevel=1, cookie_threshold=1)
        b.charon.start()
        b.charon.load_psk(PSK, [OUR_ID, CHARON_ID])
        b.charon.load_ca(b.ca_pem)
        b.charon.load_key(theirs.key_pem(), "ecdsa")
        b.charon.load_key(rsa_theirs.key_pem(), "rsa")
        yield b
    finally:
        if getattr(b, "charon", None) is not None:
            b.charon.stop()
        b.net.destroy()
        shutil.rmtree(b.state, ignore_errors=True)


def charon_conn(bed, ike, esp, auth, more=False):
    side = {"psk": ({"auth": "psk", "id": CHARON_ID}, {"auth": "psk", "id": OUR_ID}),
            "ecdsa": ({"auth": "pubkey", "id": CHARON_ID, "certs": [bed.charon_cert_pem]},
                      {"auth": "pubkey", "id": OUR_ID, "cacerts": [bed.ca_pem]}),
            "rsa": ({"auth": "pubkey", "id": CHARON_ID, "certs": [bed.charon_rsa_cert_pem]},
                    {"auth": "pubkey", "id": OUR_ID, "cacerts": [bed.ca_pem]})}[auth]
    child = {"local_ts": [f"{CHARON_INNER}/32"], "remote_ts": [f"{OUR_INNER}/32"], "esp_proposals": [esp],
             "mode": "tunnel", "rekey_time": "0", "start_action": "none"}
    c = {"version": "2", "local_addrs": [CHARON_IP], "remote_addrs": [OUR_IP], "proposals": [ike],
         "encap": "yes", "mobike": "no", "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0",
         "unique": "no", "local": side[0], "remote": side[1], "children": {"net": child}}
    if more:        # a second child with narrower selectors (charon refuses duplicates), with PFS
        c["children"]["udp"] = dict(child, local_ts=[f"{CHARON_INNER}/32[udp]"],
                                    remote_ts=[f"{OUR_INNER}/32[udp]"], esp_proposals=["aes128gcm16-ecp256"])
    return c


def our_conn(bed, ike, esp, auth, pfs=False):
    esps = [esp, "aes128gcm16-ecp256"] if pfs else [esp]
    c = {"local_addrs": [OUR_IP], "remote_addrs": [CHARON_IP], "proposals": [ike],
         "children": {"net": {"local_ts": [f"{OUR_INNER}/32"], "remote_ts": [f"{CHARON_INNER}/32"],
                              "esp_proposals": esps}}}
    if auth == "psk":
        c.update(psk=PSK, local={"auth": "psk", "id": OUR_ID}, remote={"auth": "psk", "id": CHARON_ID})
    else:
        cert, key = (bed.our_rsa_cert, bed.our_rsa_key) if auth == "rsa" else (bed.our_cert, bed.our_key)
        c.update(local={"auth": "pubkey", "id": OUR_ID, "cert": str(cert), "key": str(key)},
                 remote={"auth": "pubkey", "id": CHARON_ID, "cacerts": [bed.ca_path]})
    return c


class Ours:
    """Our engine + UDP driver + scapy data path inside the bed's namespace a."""

    def __init__(self, bed, conn, settings=None):
        self.engine = IkeEngine(parse_connections({"gw": conn}), CAPABILITIES, settings=settings,
                                retransmit=RetransmitPolicy(timeout=1.0, base=1.8, tries=3))
        self.events = []
        socks = {500: udp_socket(bed.net.ns_a, OUR_IP, 500), 4500: udp_socket(bed.net.ns_a, OUR_IP, 4500)}
        self.ep = IkeUdpEndpoint(self.engine, OUR_IP, on_event=self.on_event, on_esp=self.on_esp, sockets=socks)
        self.dp = ScapyEchoDataPath(self.ep.send_esp)

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


def ping(bed, count=3):
    return pinging.ping(bed.net.ns_b, CHARON_INNER, OUR_INNER, count)


@contextlib.asynccontextmanager
async def loaded(bed, charon_c, our_c, settings=None):
    """charon's side loaded under a fresh connection name and ours started; yields (name, ours).
    Afterwards ours is closed and charon's side unloaded."""
    name = f"t{next(_names)}"
    bed.charon.load_conn(name, charon_c)
    ours = Ours(bed, our_c, settings)
    await ours.ep.start()
    try:
        yield name, ours
    finally:
        ours.ep.close()
        await asyncio.to_thread(bed.charon.unload_conn, name)


def _run(bed, coro, tail=60):
    """Run one test's coroutine; if it fails, charon's log tail goes into the report."""
    try:
        asyncio.run(coro)
    except BaseException:
        print(bed.charon.log_tail(tail))
        raise


async def bring_up(bed, ours, name, we_initiate):
    """Initiate connection ``name`` from our side or charon's; return once our Child SA is up
    (and charon's initiate call has returned)."""
    if we_initiate:
        ours.ep.initiate("gw")
    else:
        res = asyncio.ensure_future(asyncio.to_thread(bed.charon.initiate, "net", name))
    await ours.until(lambda: ours.of(ChildSaUp), what="ChildSaUp")
    if not we_initiate:
        await res


def charon_sas(bed, name):
    return [s for s in bed.charon.list_sas() if s["_name"] == name]


async def _case(bed, ike, esp, auth, we_initiate, we_delete):
    async with loaded(bed, charon_conn(bed, ike, esp, auth), our_conn(bed, ike, esp, auth)) as (name, ours):
        await bring_up(bed, ours, name, we_initiate)
        up = ours.of(IkeSaUp)[0]
        assert up.initiator == we_initiate
        assert up.remote_id == CHARON_ID
        assert up.proposal == describe(parse_proposal(ike))
        inst = ours.of(ChildSaInstall)[0]
        sas = await asyncio.to_thread(charon_sas, bed, name)
        assert len(sas) == 1 and sas[0]["state"] == b"ESTABLISHED", sas
        child = next(iter(sas[0]["child-sas"].values()))
        assert child["state"] == b"INSTALLED" and child["encap"] == b"yes"
        assert int(child["spi-in"], 16) == inst.spi_out and int(child["spi-out"], 16) == inst.spi_in
        assert sas[0]["local-port"] == b"4500" and sas[0]["remote-port"] == b"4500"     # floated
        pr = await ping(bed)
        assert pr.ok, pr.summary()
        assert ours.dp.answered >= 3 and ours.dp.errors == 0
        if we_delete:
            ours.ep.call(ours.engine.delete_ike, up.ike_id)
            await ours.until(lambda: ours.of(IkeSaDown), what="IkeSaDown")
            deadline = time.monotonic() + 5
            while await asyncio.to_thread(charon_sas, bed, name):
                assert time.monotonic() < deadline, "charon kept the IKE SA after our Delete"
                await asyncio.sleep(0.05)
            assert ours.of(IkeSaDown)[0].reason == "deleted locally"
        else:
            await asyncio.to_thread(bed.charon.terminate, name)
            await ours.until(lambda: ours.of(IkeSaDown), what="IkeSaDown")
            assert ours.of(IkeSaDown)[0].reason == "deleted by peer"
        assert [e.handle for e in ours.of(ChildSaDelete)] == [inst.handle]
        assert ours.engine.ike_sas() == []


CASES = [(ike, esp, auth, we_init) for ike, esp in SUITES for auth in ("psk", "ecdsa") for we_init in (True, False)]
CASES += [(SUITES[0][0], SUITES[0][1], "rsa", True), (SUITES[1][0], SUITES[1][1], "rsa", False)]


@pytest.mark.parametrize("ike,esp,auth,we_initiate", CASES,
                         ids=[f"{'we' if w else 'charon'}-init-{a}-{i.split('-')[0]}-{i.split('-')[-1]}"
                              for i, e, a, w in CASES])
def test_establish_ping_delete(bed, ike, esp, auth, we_initiate):
    # alternate who deletes so both directions of Delete are covered for every suite
    we_delete = (CASES.index((ike, esp, auth, we_initiate)) % 2) == 0
    _run(bed, _case(bed, ike, esp, auth, we_initiate, we_delete))


def _tunnel_case(bed, charon_c, our_c, we_initiate, check, settings=None):
    """Load charon's side, bring the tunnel up from either side, run ``check(ours, charon_log)``
    on what happened, ping through it, and let charon delete it (we answer its Delete)."""
    async def run():
        async with loaded(bed, charon_c, our_c, settings) as (name, ours):
            log_before = len(bed.charon.log())
            await bring_up(bed, ours, name, we_initiate)
            check(ours, bed.charon.log()[log_before:])
            pr = await ping(bed)
            assert pr.ok, pr.summary()
            await asyncio.to_thread(bed.charon.terminate, name)
            await ours.until(lambda: not ours.engine.ike_sas(), what="the Delete")
    _run(bed, run())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-init", "charon-init"])
def test_large_ike_auth_is_fragmented_both_ways(bed, we_initiate):
    """RFC 7383 with RSA-4096 certificates: each IKE_AUTH is ~2 KB, more than charon's and our
    1280-byte fragment_size, so both sides send SKF fragments and reassemble the other's."""
    if not hasattr(bed, "big"):
        ours_big, theirs_big = bed.ca.issue(OUR_ID, "rsa4096"), bed.ca.issue(CHARON_ID, "rsa4096")
        bed.big = ours_big.write(bed.state, "ours-rsa4096") + (theirs_big.cert_pem(),)
        bed.charon.load_key(theirs_big.key_pem(), "rsa")
    cert, key, charon_cert = bed.big
    ike, esp = SUITES[0]
    c = charon_conn(bed, ike, esp, "rsa")
    c["local"]["certs"] = [charon_cert]
    conn = our_conn(bed, ike, esp, "rsa")
    conn["local"].update(cert=str(cert), key=str(key))

    def check(ours, log):
        st = ours.engine.stats
        (sa,) = ours.engine.ike_sas()
        assert sa.fragmentation
        assert st["fragmented_messages_sent"] == 1 and st["fragments_sent"] >= 2
        assert st["fragmented_messages_received"] == 1 and st["fragments_received"] >= 2
        assert "reassembled fragmented IKE message" in log, log[-3000:]
        print(f"\nIKE fragmentation ({'we' if we_initiate else 'charon'} initiate, RSA-4096): sent "
              f"{st['fragments_sent']} fragments, received {st['fragments_received']}")
    _tunnel_case(bed, c, conn, we_initiate, check)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-init", "charon-init"])
def test_rsassa_pss_signatures_both_ways(bed, we_initiate):
    """charon with rsa_pss = yes and we with EngineSettings.rsa_pss sign AUTH with RSASSA-PSS
    (RFC 7427 A.4); each side verifies the other's."""
    ike, esp = SUITES[0]

    def check(ours, log):
        assert "(myself) with RSA_EMSA_PSS" in log, log[-3000:]
        assert f"authentication of '{OUR_ID}' with RSA_EMSA_PSS" in log, log[-3000:]
    bed.charon.set_rsa_pss(True)
    try:
        _tunnel_case(bed, charon_conn(bed, ike, esp, "rsa"), our_conn(bed, ike, esp, "rsa"), we_initiate, check,
                     EngineSettings(rsa_pss=True))
    finally:
        bed.charon.set_rsa_pss(False)


def test_child_delete_and_create_child_sa_both_ways(bed):
    """Charon deletes the Child SA (we keep the IKE SA); we CREATE_CHILD_SA a new one and traffic
    flows; charon creates one more on our IKE SA; we delete a Child SA and charon drops it."""
    async def run():
        ike, esp = SUITES[0]
        charon_c, our_c = charon_conn(bed, ike, esp, "psk", more=True), our_conn(bed, ike, esp, "psk", pfs=True)
        async with loaded(bed, charon_c, our_c) as (name, ours):
            ike_id = ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="first ChildSaUp")
            await asyncio.to_thread(bed.charon.terminate, None, "net")
            await ours.until(lambda: ours.of(ChildSaDelete), what="ChildSaDelete")
            assert not ours.of(IkeSaDown)
            ours.ep.call(ours.engine.create_child, ike_id, "net")           # CREATE_CHILD_SA, we initiate
            await ours.until(lambda: len(ours.of(ChildSaUp)) == 2, what="second ChildSaUp")
            pr = await ping(bed)
            assert pr.ok, pr.summary()
            await asyncio.to_thread(bed.charon.initiate, "udp", name)        # CREATE_CHILD_SA, charon initiates
            await ours.until(lambda: len(ours.of(ChildSaUp)) == 3, what="third ChildSaUp")
            third_ts = ours.of(ChildSaInstall)[2]
            assert [t.ip_proto for t in third_ts.local_ts] == [17]            # narrowed to charon's [udp]
            assert (third_ts.encr, third_ts.encr_key_bits) == (20, 128)        # the PFS proposal (ecp256)
            # UDP from charon's inner host goes through the PFS Child SA and decrypts with our keys
            await asyncio.to_thread(ns_exec, bed.net.ns_b, sys.executable, "-c",
                                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                    f"s.bind(('{CHARON_INNER}', 0)); s.sendto(b'pfs', ('{OUR_INNER}', 9))")
            await ours.until(lambda: ours.dp.decrypted.get(third_ts.spi_in), what="UDP via the PFS child")
            sas = await asyncio.to_thread(charon_sas, bed, name)
            assert len(sas) == 1 and len(sas[0]["child-sas"]) == 2
            third = ours.of(ChildSaUp)[2]
            ours.ep.call(ours.engine.delete_child, third.handle)
            await ours.until(lambda: len(ours.of(ChildSaDelete)) == 2, what="our child delete")
            sas = await asyncio.to_thread(charon_sas, bed, name)
            left = [int(c["spi-in"], 16) for c in sas[0]["child-sas"].values()]
            assert third.spi_out not in left and len(left) == 1
            ours.ep.call(ours.engine.delete_ike, ike_id)
            await ours.until(lambda: ours.of(IkeSaDown), what="IkeSaDown")
    _run(bed, run(), tail=80)


def test_invalid_ke_both_ways(bed):
    """Each side guesses a DH group the other does not take first: INVALID_KE_PAYLOAD, then retry."""
    async def run(we_initiate):
        both, only = "aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16-prfsha256-ecp256"
        charon_c = charon_conn(bed, only if we_initiate else both, "aes128gcm16", "psk")
        async with loaded(bed, charon_c, our_conn(bed, both if we_initiate else only, "aes128gcm16", "psk")) \
                as (name, ours):
            await bring_up(bed, ours, name, we_initiate)
            if not we_initiate:
                assert ours.engine.stats["error_replies"] == 1          # our INVALID_KE_PAYLOAD
            else:
                assert ours.engine.stats["invalid_ke_retries"] == 1
            assert ours.of(IkeSaUp)[0].proposal.endswith("ecp256")
            pr = await ping(bed, 1)
            assert pr.ok, pr.summary()
            ours.ep.call(ours.engine.delete_ike, ours.of(IkeSaUp)[0].ike_id)
            await ours.until(lambda: ours.of(IkeSaDown), what="IkeSaDown")
    for we_initiate in (True, False):
        _run(bed, run(we_initiate))


def test_cookie_from_charon(bed):
    """charon demands a COOKIE once we have another half-open IKE_SA with it; we return it."""
    async def run():
        ike, esp = SUITES[0]
        conn = our_conn(bed, ike, esp, "psk")
        conn["initial_contact"] = False
        async with loaded(bed, charon_conn(bed, ike, esp, "psk"), conn) as (name, ours):
            for _ in range(3):
                ours.ep.initiate("gw")
            await ours.until(lambda: len(ours.of(ChildSaUp)) == 3, what="three Child SAs")
            assert ours.engine.stats["cookies_returned"] >= 1
            sas = await asyncio.to_thread(charon_sas, bed, name)
            assert len(sas) == 3
            for up in ours.of(IkeSaUp):
                ours.ep.call(ours.engine.delete_ike, up.ike_id)
            await ours.until(lambda: len(ours.of(IkeSaDown)) == 3, what="IkeSaDown x3")
    _run(bed, run())
