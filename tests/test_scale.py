"""Hub scale in CI: 60 connections to one strongSwan charon with its defaults (it answers at most
5 half-open IKE SAs per peer address and asks for COOKIEs beyond 3), one simulated board, an
ICMP echo stream through every tunnel (testbed/scale.py, testbed/probe.py).

All 60 must pass traffic within 1 s of the daemon starting its connections, and again within
1 s of a board reset, every tunnel. Measured on the 2-core development machine with other work
running: 0.23-0.42 s up, 0.18-0.47 s back (`inv bench --only scale`, this test), so the bound
leaves twice the worst seen. Without the initiation pacing it was 30 s, charon dropping what
went beyond its limit. The 500-peer case is the benchmark's (bench/scale.py). Needs root.
"""
import os

import pytest

pytestmark = [pytest.mark.strongswan,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500)")]

N = 60
BOUND = 1.0


@pytest.fixture(scope="module")
def bed():
    from testbed.scale import ScaleBed
    b = ScaleBed(N, peers=1, boards=(256,))
    probe = None
    try:
        b.start()
        probe = b.probe(interval=0.5, fast=0.05)
        b.up = b.watch_up(probe, timeout=30)
        b.the_probe = probe
        yield b
    finally:
        if probe is not None:
            probe.stop()
        b.stop()


def test_sixty_tunnels_to_one_charon_come_up_within_a_second(bed):
    missing = sorted(set(range(N)) - set(bed.up))
    assert not missing, "tunnels never passed traffic: %s\n%s" % (missing, bed.log_tail())
    slowest = max(bed.up.values())
    print("60 tunnels to one charon: all up %.2f s after the connections started" % slowest)
    assert slowest <= BOUND, sorted(bed.up.values())[-5:]
    assert bed.ctl("stats").get("engine_retransmits", 0) == 0, "an IKE_SA_INIT was dropped by the peer's limits"


def test_after_a_board_reset_every_tunnel_passes_traffic_within_a_second(bed):
    for _ in range(2):
        res = bed.reset_board(bed.the_probe, 0, timeout=15, settle=0.5)
        missing = sorted(set(res["mine"]) - set(res["back"]))
        assert len(res["mine"]) == N and not missing, (missing, bed.log_tail())
        slowest = max(res["back"].values())
        inc = res["incident"]
        print("board reset: %d IKE SAs flushed, all %d tunnels back in %.2f s" % (inc["ike_sas_flushed"], N, slowest))
        assert inc["ike_sas_flushed"] == N and inc["deletes_sent"] == N
        assert slowest <= BOUND, sorted(res["back"].values())[-5:]


def test_a_lost_boards_tunnels_wait_for_room_rather_than_fail_on_a_full_board():
    """Two boards of 6 SA slots, 3 tunnels on each: when one resets, the other has no room for
    its tunnels, so they are re-established when the reset board says HELLO again — on it — and
    not placed on the full board to fail there and wait out a retry."""
    from testbed.scale import ScaleBed
    b = ScaleBed(6, peers=6, boards=(6, 6))
    probe = None
    try:
        b.start()
        probe = b.probe(interval=0.5, fast=0.05)
        up = b.watch_up(probe, timeout=15)
        assert len(up) == 6, b.log_tail()
        assert sorted(len(ts) for ts in b.tunnels_by_board().values()) == [3, 3]
        res = b.reset_board(probe, 0, timeout=10, settle=0.3)
        assert sorted(res["back"]) == sorted(res["mine"]) and len(res["mine"]) == 3, b.log_tail()
        st = b.ctl("stats")
        assert st["child_install_failures"] == 0, b.log_tail()
        assert sorted(b.tunnels_by_board()["b0"]) == sorted(res["mine"])
        assert max(res["back"].values()) <= BOUND and res["other_lost"] == 0
    finally:
        if probe is not None:
            probe.stop()
        b.stop()
