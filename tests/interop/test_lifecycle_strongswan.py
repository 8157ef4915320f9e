"""IKE lifecycle against real strongSwan charon 5.9.8 (kernel-libipsec) in network namespaces:
rekeying both ways with traffic flowing, charon's DPD answered, our liveness check tearing down
and restarting when charon is killed and comes back, and the seed scenario with charon as the
side that keeps its state (RFC 7296 §1.5, §2.4, §2.8, §2.18).

Same topology as test_strongswan.py (its own namespaces and charon, so this module can kill
charon): our engine at 192.0.2.1 with scapy's ESP answering 198.51.100.1, charon at 192.0.2.2
protecting 203.0.113.1. Traffic is ping from charon's namespace through its TUN device.
"""
import asyncio
import contextlib
import os
import shutil
import signal
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

from host.ike_driver import IkeUdpEndpoint  # noqa: E402
from host.ike.config import RetransmitPolicy, parse_connections  # noqa: E402
from host.ike.engine import EngineSettings, IkeEngine  # noqa: E402
from host.ike.events import (  # noqa: E402
    ChildSaDelete, ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaRekeyed, IkeSaUp,
)
from testbed.scapy_esp import CAPABILITIES, ScapyEchoDataPath  # noqa: E402

OUR_IP, CHARON_IP = "192.0.2.1", "192.0.2.2"
OUR_INNER, CHARON_INNER = "198.51.100.1", "203.0.113.1"
OUR_ID, CHARON_ID = "ours.example", "charon.example"
PSK = "lifecycle-psk-0123456789abcdef-01"
IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
# our schedule: a request is given up 0.2 + 0.4 + 0.8 + 1.6 = 3.0 s after it was first sent
FAST = RetransmitPolicy(timeout=0.2, base=2.0, tries=3)
CHARON_RETRANSMIT = (0.5, 2)        # charon: 0.5 s x 1.8^n, 2 retransmissions -> gives up after 3.02 s


class Bed:
    def start_charon(self):
        self.charon = charon_mod.Charon(self.net.ns_b, os.path.join(self.state, "c"), loglevel=1,
                                        retransmit_timeout=CHARON_RETRANSMIT[0],
                                        retransmit_tries=CHARON_RETRANSMIT[1])
        self.charon.start()
        self.charon.load_psk(PSK, [OUR_ID, CHARON_ID])
        return self.charon


@pytest.fixture(scope="module")
def bed():
    cleanup_stale()
    b = Bed()
    b.state = tempfile.mkdtemp(prefix="ikl", dir="/tmp")
    b.net = VethPair(lo_b=[CHARON_INNER])
    b.charon = None
    try:
        b.start_charon()
        yield b
    finally:
        if b.charon is not None:
            b.charon.stop()
        b.net.destroy()
        shutil.rmtree(b.state, ignore_errors=True)


def charon_conn(child=None, **ike):
    c = {"local_ts": [f"{CHARON_INNER}/32"], "remote_ts": [f"{OUR_INNER}/32"], "esp_proposals": [ESP],
         "mode": "tunnel", "rekey_time": "0", "life_time": "0", "start_action": "none"}
    c.update(child or {})
    conn = {"version": "2", "local_addrs": [CHARON_IP], "remote_addrs": [OUR_IP], "proposals": [IKE],
            "encap": "yes", "mobike": "no", "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0",
            "unique": "no", "local": {"auth": "psk", "id": CHARON_ID},
            "remote": {"auth": "psk", "id": OUR_ID}, "children": {"net": c}}
    conn.update(ike)
    return conn


def our_conn(child=None, **extra):
    c = {"local_ts": [f"{OUR_INNER}/32"], "remote_ts": [f"{CHARON_INNER}/32"], "esp_proposals": [ESP],
         "rekey_time": 0}
    c.update(child or {})
    conn = {"local_addrs": [OUR_IP], "remote_addrs": [CHARON_IP], "proposals": [IKE], "psk": PSK,
            "local": {"auth": "psk", "id": OUR_ID}, "remote": {"auth": "psk", "id": CHARON_ID},
            "rekey_time": 0, "children": {"net": c}}
    conn.update(extra)
    return conn


class Ours:
    """Our engine + UDP driver + scapy data path in namespace a. The data path reports unknown
    SPIs and decrypted packets to the engine, as the daemon does with the board's."""

    def __init__(self, bed, conn, settings=None):
        self.engine = IkeEngine(parse_connections({"gw": conn}), CAPABILITIES, settings=settings,
                                retransmit=FAST)
        self.events = []
        self.t0 = time.monotonic()
        socks = {500: udp_socket(bed.net.ns_a, OUR_IP, 500), 4500: udp_socket(bed.net.ns_a, OUR_IP, 4500)}
        self.ep = IkeUdpEndpoint(self.engine, OUR_IP, on_event=self.on_event, on_esp=self.on_esp,
                                 sockets=socks)
        self.dp = ScapyEchoDataPath(self.ep.send_esp, on_unknown=self.on_unknown, on_inbound=self.on_inbound)
        self.first_unknown = None

    def on_event(self, ev):
        self.events.append((time.monotonic(), ev))
        if isinstance(ev, ChildSaInstall):
            self.ep.child_sa_installed(ev.handle, self.dp.install(ev), None)
        elif isinstance(ev, ChildSaDelete):
            self.dp.remove(ev.handle)
        else:
            self.dp.follow(ev)

    def on_esp(self, data, addr):
        self.dp.esp_in(data, addr)

    def on_unknown(self, spi, addr):
        if self.first_unknown is None:
            self.first_unknown = time.monotonic()
        self.ep.call(self.engine.esp_unknown_spi, spi, addr, local=(OUR_IP, 4500))

    def on_inbound(self, handle):
        self.engine.esp_received(handle, self.ep.now())

    def data_path_counts(self) -> str:
        """Whether a lost ping died on our side (never answered) or on charon's (answered)."""
        dp = self.dp
        return (f"our data path: {dp.received} ESP in, {dp.answered} answered, {dp.unknown_spi} for "
                f"unknown SPIs, {dp.errors} errors\n")

    def timeline(self) -> str:
        """Our events on the pinger's clock (time.monotonic())."""
        return "".join(f"[{t:.6f}] {type(e).__name__} {getattr(e, 'handle', '')}\n" for t, e in self.events)

    def of(self, cls):
        return [e for _t, e in self.events if isinstance(e, cls)]

    def when(self, cls, pred=lambda e: True):
        return next((t for t, e in self.events if isinstance(e, cls) and pred(e)), None)

    async def until(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {[e for _t, e in self.events]}")
            await asyncio.sleep(0.01)

    def close(self):
        self.ep.close()


@contextlib.asynccontextmanager
async def connected(bed, charon_c, our_c, settings=None):
    """charon's side loaded as "gw" and ours running; afterwards ours closed and charon's side
    terminated and unloaded (if charon is still there: one test kills it)."""
    bed.charon.load_conn("gw", charon_c)
    ours = Ours(bed, our_c, settings)
    await ours.ep.start()
    try:
        yield ours
    finally:
        ours.close()
        if bed.charon is not None:
            await asyncio.to_thread(bed.charon.terminate, "gw")
            await asyncio.to_thread(bed.charon.unload_conn, "gw")


def start_ping(bed, count, interval):
    """Echo requests from charon's protected host through charon's tunnel to ours."""
    return pinging.start(bed.net.ns_b, CHARON_INNER, OUR_INNER, count, interval)


def ping(bed, count=3, interval=0.2):
    return pinging.ping(bed.net.ns_b, CHARON_INNER, OUR_INNER, count, interval)


def installed_spis(sa) -> set:
    """The inbound SPIs of charon's installed Child SAs (it lists closed ones as DELETED a while)."""
    return {int(c["spi-in"], 16) for c in sa["child-sas"].values() if c["state"] == b"INSTALLED"}


def charon_sas(bed):
    return [s for s in bed.charon.list_sas() if s["_name"] == "gw"]


def _run(bed, coro):
    try:
        asyncio.run(coro)
    except BaseException:
        if bed.charon is not None:
            print(bed.charon.log_tail(80))
        raise


# ---------------------------------------------------------------- rekeying with traffic

def test_charon_rekeys_child_and_ike_sa_against_us_traffic_keeps_flowing(bed):
    async def run():
        charon_c = charon_conn({"rekey_time": "2s", "life_time": "30s", "rand_time": "0"},
                               rekey_time="5s", over_time="30s", rand_time="0")
        async with connected(bed, charon_c, our_conn()) as ours:
            t0 = time.monotonic()
            task = asyncio.ensure_future(asyncio.to_thread(bed.charon.initiate, "net", "gw"))
            await ours.until(lambda: ours.of(ChildSaUp), what="first Child SA")
            await task
            pr = await ping(bed, count=70, interval=0.1)       # 7 s across the rekeys
            elapsed = time.monotonic() - t0
            rekeyed = [e for e in ours.of(ChildSaInstall) if e.rekey_of is not None]
            print(f"\ncharon rekeys: {len(rekeyed)} Child SA rekeys, {len(ours.of(IkeSaRekeyed))} IKE SA "
                  f"rekeys in {elapsed:.1f} s; ping {pr}; {ours.data_path_counts()}")
            assert len(rekeyed) >= 2 and all(e.defer_outbound for e in rekeyed)   # we answered them
            assert len(ours.of(IkeSaRekeyed)) >= 1 and not ours.of(IkeSaRekeyed)[0].initiator
            assert pr.ok, pr.summary() + ours.data_path_counts() + ours.timeline()
            assert not [e for e in ours.of(IkeSaDown) if e.replaced_by is None]
            sas = await asyncio.to_thread(charon_sas, bed)
            assert len(sas) == 1 and sas[0]["state"] == b"ESTABLISHED"
            (sa,) = ours.engine.ike_sas()
            assert sa.spi_i.hex() == sas[0]["initiator-spi"].decode()
            # charon installs a rekeyed SA only once we answered, i.e. once we installed it
            theirs = installed_spis(sas[0])
            assert theirs and theirs <= {c.spi_out for c in sa.children.values() if c.state == "installed"}
            # every SA charon rekeyed away is gone here too (make before break, then deleted)
            assert len(ours.of(ChildSaDelete)) >= len(rekeyed) - 1
    _run(bed, run())


def test_we_rekey_child_and_ike_sa_against_charon_traffic_keeps_flowing(bed):
    async def run():
        our_c = our_conn({"rekey_time": 2, "life_time": 30, "rand_time": 0.2},
                         rekey_time=5, over_time=30, rand_time=0.2)
        async with connected(bed, charon_conn(), our_c) as ours:
            t0 = time.monotonic()
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="first Child SA")
            pr = await ping(bed, count=70, interval=0.1)
            elapsed = time.monotonic() - t0
            st = ours.engine.stats
            print(f"\nwe rekey: {st['child_rekeys_done']} Child SA rekeys, {st['ike_rekeys_done']} IKE SA "
                  f"rekeys in {elapsed:.1f} s; ping {pr}; {ours.data_path_counts()}")
            assert st["child_rekeys_done"] >= 2 and st["ike_rekeys_done"] >= 1
            assert st["child_rekeys_failed"] == 0 and st["ike_rekeys_failed"] == 0
            assert ours.of(IkeSaRekeyed)[0].initiator
            assert pr.ok, pr.summary() + ours.data_path_counts() + ours.timeline()
            sas = await asyncio.to_thread(charon_sas, bed)
            assert len(sas) == 1
            (sa,) = ours.engine.ike_sas()
            assert (sa.spi_i.hex(), sa.spi_r.hex()) == (sas[0]["initiator-spi"].decode(),
                                                        sas[0]["responder-spi"].decode())
            # charon lists the closed ones as DELETED for a while; the installed ones are ours
            theirs = installed_spis(sas[0])
            assert theirs == {c.spi_out for c in sa.children.values()}       # the old ones are gone at both
    _run(bed, run())


def test_charon_dpd_is_answered(bed):
    async def run():
        async with connected(bed, charon_conn(dpd_delay="1s"), our_conn()) as ours:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="Child SA")
            await ours.until(lambda: ours.engine.stats["liveness_answered"] >= 2, timeout=6.0,
                             what="two DPD requests from charon")
            sas = await asyncio.to_thread(charon_sas, bed)
            assert len(sas) == 1 and sas[0]["state"] == b"ESTABLISHED"
            assert not ours.of(IkeSaDown)
    _run(bed, run())


def test_close_action_start_brings_back_what_charon_closes(bed):
    """charon's operator terminates our Child SA, then the IKE SA; with close_action = start we
    negotiate the Child SA again in the same IKE SA, then the whole connection anew."""
    async def run():
        async with connected(bed, charon_conn(), our_conn({"close_action": "start"})) as ours:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="Child SA")
            (sa,) = ours.engine.ike_sas()
            t0 = time.monotonic()
            await asyncio.to_thread(bed.charon.terminate, None, "net")
            await ours.until(lambda: len(ours.of(ChildSaUp)) >= 2, what="Child SA reopened")
            t_child = time.monotonic() - t0
            assert ours.engine.ike_sas() == [sa] and ours.engine.stats["child_sas_reopened"] == 1
            pr = await ping(bed, count=3)
            assert pr.ok, pr.summary()
            t0 = time.monotonic()
            await asyncio.to_thread(bed.charon.terminate, "gw")
            await ours.until(lambda: len(ours.of(IkeSaUp)) >= 2 and len(ours.of(ChildSaUp)) >= 3,
                             what="connection initiated anew")
            t_ike = time.monotonic() - t0
            down = ours.of(IkeSaDown)[0]
            assert down.reason == "deleted by peer" and down.restart_ike_id == ours.of(IkeSaUp)[1].ike_id
            pr = await ping(bed, count=3)
            assert pr.ok, pr.summary()
            print(f"\nclose_action = start: Child SA closed by charon -> new one {t_child * 1000:.0f} ms; "
                  f"IKE SA deleted by charon -> new IKE + Child SA {t_ike * 1000:.0f} ms")
    _run(bed, run())


def test_we_reauthenticate_make_before_break_against_charon(bed):
    """reauth_time on our side (RFC 7296 §2.8.3): a new IKE SA with the Child SA, then the old
    one deleted; charon ends with only the new one and pings cross the switch."""
    async def run():
        async with connected(bed, charon_conn(), our_conn(reauth_time=2.0, rekey_time=0)) as ours:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="Child SA")
            first = ours.engine.ike_sas()[0]
            pinger = start_ping(bed, 40, 0.1)             # 4 s across the reauthentication
            await ours.until(lambda: ours.engine.stats["reauths_done"] >= 1, timeout=6.0, what="reauth")
            pr = await pinging.finish(pinger)
            await ours.until(lambda: len(ours.engine.ike_sas()) == 1, what="the old IKE SA gone")
            (sa,) = ours.engine.ike_sas()
            sas = await asyncio.to_thread(charon_sas, bed)
            print(f"\nwe reauthenticate: ping {pr}")
            assert sa is not first and len(sas) == 1
            assert sas[0]["initiator-spi"].decode() == sa.spi_i.hex()
            assert pr.ok, pr.summary() + ours.data_path_counts() + ours.timeline()
            down = [e for e in ours.of(IkeSaDown) if e.ike_id == first.ike_id]
            assert down and down[0].reason == "reauthenticated"
    _run(bed, run())


def test_charon_reauthenticates_and_close_action_adds_no_duplicate(bed):
    """charon 5.9 reauthenticates break-before-make (reauth_time): it deletes the IKE SA, then sets
    up a new one. Our close_action = start waits and, finding the tunnel back, initiates nothing."""
    async def run():
        charon_c = charon_conn(reauth_time="3s", rand_time="0", over_time="30s")
        async with connected(bed, charon_c, our_conn({"close_action": "start"})) as ours:
            task = asyncio.ensure_future(asyncio.to_thread(bed.charon.initiate, "net", "gw"))
            await ours.until(lambda: ours.of(ChildSaUp), what="Child SA")
            await task
            pinger = start_ping(bed, 50, 0.1)             # 5 s across the reauthentication
            await ours.until(lambda: len(ours.of(IkeSaUp)) >= 2, timeout=8.0, what="charon's reauth")
            pr = await pinging.finish(pinger)
            await asyncio.sleep(1.0)                            # past our CLOSE_DELAY
            st = ours.engine.stats
            sas = await asyncio.to_thread(charon_sas, bed)
            print(f"\ncharon reauth: {len(ours.of(IkeSaUp))} IKE SAs seen, now {len(ours.engine.ike_sas())} "
                  f"here / {len(sas)} at charon; reopen not needed {st['reopen_not_needed']}, "
                  f"restarts {st['restarts']}; ping across charon's break-before-make {pr}")
            assert len(ours.engine.ike_sas()) == 1 and len(sas) == 1
            assert not [e for e in ours.of(IkeSaUp) if e.initiator]        # we initiated nothing
            pr = await ping(bed, count=3)
            assert pr.ok, pr.summary()
    _run(bed, run())


# ---------------------------------------------------------------- seed scenario, charon keeps state

@pytest.mark.seed
def test_seed_we_lose_state_charon_keeps_it(bed):
    """We restart with no SAs; charon keeps sending ESP. We answer with an unprotected INVALID_SPI
    (charon ignores it: it does not act on INVALID_SPI); charon's DPD (1 s, then 3.02 s of
    retransmissions) gives up and, with dpd_action = restart, re-establishes with us."""
    async def run():
        bed.charon.load_conn("gw", charon_conn({"dpd_action": "restart"}, dpd_delay="1s"))
        first = Ours(bed, our_conn())
        await first.ep.start()
        first.ep.initiate("gw")
        await first.until(lambda: first.of(ChildSaUp), what="first Child SA")
        first.close()                              # our daemon and board restart: all state lost
        ours = Ours(bed, our_conn(), EngineSettings(unprotected_invalid_spi=True))
        await ours.ep.start()
        try:
            pinger = start_ping(bed, 150, 0.1)      # ESP from charon into our empty board
            await ours.until(lambda: ours.of(ChildSaUp), timeout=15.0, what="charon re-establishing")
            recovered = ours.when(ChildSaUp) - ours.first_unknown
            st = ours.engine.stats
            print(f"\nseed vs charon: first unknown-SPI packet -> new Child SA {recovered:.2f} s "
                  f"(charon dpd_delay 1 s, retransmit {CHARON_RETRANSMIT[0]} s x 1.8^n, "
                  f"{CHARON_RETRANSMIT[1]} retransmissions); {st['invalid_spi_sent_unprotected']} "
                  f"unprotected INVALID_SPI sent, {st['invalid_spi_rate_limited']} rate-limited, "
                  f"{st['unknown_spi']} charon DPD requests for the lost IKE SA, "
                  f"{st['invalid_ike_spi_sent']} answered with INVALID_IKE_SPI")
            # charon got them and, as expected, does not act on INVALID_SPI (it logs and drops them),
            # nor on the INVALID_IKE_SPI answers to its DPD requests (§2.21.4: a hint it may ignore)
            log = bed.charon.log()
            seen = log.count(f"received unencrypted informational: from {OUR_IP}[4500]")
            assert seen == st["invalid_spi_sent_unprotected"] + st["invalid_ike_spi_sent"]
            assert st["invalid_spi_sent_unprotected"] >= 1 and st["invalid_ike_spi_sent"] >= 1
            assert st["invalid_spi_sent_unprotected"] <= 3 + recovered + 1         # burst 3, 1/s per source
            assert st["unknown_spi"] >= 1                 # charon's liveness check found no IKE SA here
            # at least charon's 3.02 s of retransmissions (its dpd_delay clock may start before our
            # first unknown-SPI packet, so the 1 s delay is not a lower bound), at most both + slack
            assert 3.0 <= recovered <= 1.0 + 3.02 + 2.0
            up = ours.of(IkeSaUp)[0]
            assert not up.initiator                        # charon re-initiated (its dpd_action)
            pinger.stop()
            pr = await ping(bed, count=3)
            assert pr.ok, pr.summary()
        finally:
            ours.close()
            await asyncio.to_thread(bed.charon.terminate, "gw")
            await asyncio.to_thread(bed.charon.unload_conn, "gw")
    _run(bed, run())


# ---------------------------------------------------------------- charon killed (last: restarts charon)

def test_charon_killed_our_liveness_check_tears_down_and_restart_brings_it_back(bed):
    async def run():
        async with connected(bed, charon_conn(), our_conn(dpd_delay=1.0, dpd_action="restart")) as ours:
            ours.ep.initiate("gw")
            await ours.until(lambda: ours.of(ChildSaUp), what="Child SA")
            pid = bed.charon.proc.pid
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            bed.charon.proc.wait(5)
            bed.charon = None
            await ours.until(lambda: [e for e in ours.of(IkeSaDown) if e.established], timeout=8.0,
                             what="our liveness check giving up")
            down = ours.when(IkeSaDown, lambda e: e.established)
            detect = down - t_kill
            ev = [e for e in ours.of(IkeSaDown) if e.established][0]
            assert ev.restart_ike_id is not None and "retransmit" in ev.reason
            # dpd_delay 1 s, then the check gives up 3.0 s after it was sent
            assert 3.0 <= detect <= 1.0 + 3.0 + 0.5, detect
            await asyncio.sleep(3.5)          # the first restart attempt fails (3.0 s) while charon is away
            t_back = time.monotonic()
            bed.start_charon()
            await asyncio.to_thread(bed.charon.load_conn, "gw", charon_conn())
            t_loaded = time.monotonic()
            await ours.until(lambda: len(ours.of(ChildSaUp)) >= 2, timeout=15.0, what="re-established")
            back = ours.when(ChildSaUp, lambda e: e.handle != ours.of(ChildSaUp)[0].handle) - t_loaded
            failed = [e for e in ours.of(IkeSaDown) if not e.established]
            print(f"\ncharon killed: torn down {detect:.2f} s after the kill (dpd_delay 1 s, schedule "
                  f"0.2 s x 2^n, 3 retransmissions); {len(failed)} restart attempts failed while it was "
                  f"away; charon back (started in {t_loaded - t_back:.2f} s) -> Child SA {back:.2f} s "
                  f"after its config was loaded")
            assert len(failed) >= 1 and all(e.restart_ike_id for e in failed)
            pr = await ping(bed, count=3)
            assert pr.ok, pr.summary()
    _run(bed, run())
