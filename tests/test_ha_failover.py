"""Two routers, active/standby with real keepalived (VRRPv3, packaging/keepalived.conf), each with
its own simulated board, and a real strongSwan charon as the peer (testbed/ha.py). Each failure of
the active router — its daemon killed, its link down, its keepalived stopped, its board gone — must
bring traffic back through the standby within 3 s from the injection to the first ping reply, and
leave charon with exactly one IKE SA: the standby's, which it initiated with INITIAL_CONTACT.
Needs root; CI runs it (keepalived is in tools/bootstrap.sh's apt list)."""
import os
import time

import pytest

from testbed import ha as habed
from testbed.ping import Pinger

pytestmark = [pytest.mark.strongswan,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500, keepalived)")]

FAILOVER_BOUND = 3.0


@pytest.fixture
def bed():
    b = habed.HaBed()
    try:
        b.start()
        b.wait_active("a")
        yield b
    finally:
        b.stop()


def wait_one_sa_at_charon(bed, spis, timeout=5.0):
    deadline = time.monotonic() + timeout
    sas = []
    while time.monotonic() < deadline:
        sas = bed.charon_sas()
        if len(sas) == 1 and (sas[0]["initiator-spi"].decode(), sas[0]["responder-spi"].decode()) in spis:
            return sas
        time.sleep(0.1)
    return sas


@pytest.mark.parametrize("what", habed.INJECTIONS)
def test_failover_to_the_standby_within_3s_and_one_ike_sa_at_the_peer(bed, what):
    pinger = Pinger(bed.peer_ns, habed.PEER_INNER, habed.OUR_INNER)
    pinger.start()
    try:
        deadline = time.monotonic() + 5
        while not pinger.replies and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pinger.replies, "no traffic through router a:\n" + bed.logs()
        time.sleep(0.5)
        t0 = bed.inject(what, "a")
        sas_b = bed.wait_active("b", timeout=10)
        time.sleep(1.5)
        tl = bed.timeline(t0, pinger)
    finally:
        pinger.stop()
    print("\n" + habed.format_timeline(tl, "%s (router a)" % habed.INJECTION_NAMES[what]))
    took = tl["first_reply"]
    assert took is not None and took < FAILOVER_BOUND * 1000, "%s: %s\n%s" % (what, tl, bed.logs())
    spis = {(s["spi_i"], s["spi_r"]) for s in sas_b}
    sas = wait_one_sa_at_charon(bed, spis)
    assert len(sas) == 1, "charon holds %d IKE SAs after %s:\n%s" % (len(sas), what, bed.logs())
    assert (sas[0]["initiator-spi"].decode(), sas[0]["responder-spi"].decode()) in spis
    assert bed.active() == ["b"]


@pytest.mark.parametrize("preempt", [True, False], ids=["preempt", "nopreempt"])
def test_failback_without_duplicate_ike_sas_or_flapping(preempt):
    """Router a (priority 150) dies, b takes over; a returns. With preempt a takes the address
    back (b sends its Deletes, a initiates with INITIAL_CONTACT); with nopreempt b keeps it and
    its IKE SA. Either way: one role change each, charon never holds two IKE SAs for the pair."""
    bed = habed.HaBed(preempt=preempt)
    try:
        bed.start()
        bed.wait_active("a")
        bed.inject("kill", "a")
        sas_b = bed.wait_active("b", timeout=10)
        t_back = time.monotonic()
        bed.repair("kill", "a")
        winner = "a" if preempt else "b"
        counts = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:          # a's keepalived: rise 2 s, then BACKUP (and MASTER)
            counts.append(len(bed.charon_sas()))
            time.sleep(0.05)
        sas = bed.wait_active(winner, timeout=5)
        hist = {n: [h["to"] for h in r.ha()["history"] if h["at"] >= t_back] for n, r in bed.routers.items()}
        spis = {(s["spi_i"], s["spi_r"]) for s in sas}
        final = wait_one_sa_at_charon(bed, spis)
    finally:
        bed.stop()
    print("\nfailback (%s): roles after a returned %s; charon's IKE SA count %d..%d over 8 s"
          % ("preempt" if preempt else "nopreempt", hist, min(counts), max(counts)))
    assert max(counts) == 1, "charon held %d IKE SAs at once" % max(counts)
    assert len(final) == 1
    if preempt:
        assert hist == {"a": ["backup", "master"], "b": ["backup"]}, hist
    else:
        assert hist == {"a": ["backup"], "b": []}, hist
        assert spis == {(s["spi_i"], s["spi_r"]) for s in sas_b}      # b's tunnel was not touched


def test_inv_demo_ha_prints_one_failover_with_its_timeline(capsys):
    assert habed.main(["--injection", "keepalived"]) == 0
    out = capsys.readouterr().out
    for line in ("router a is MASTER", "router b is BACKUP", "failover: keepalived stopped on router a",
                 "standby told MASTER", "new IKE SA up, INITIAL_CONTACT sent", "first ping reply through it",
                 "charon now holds 1 IKE SA(s)", "traffic back through the standby in"):
        assert line in out, out
