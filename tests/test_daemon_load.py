"""Traffic never costs a tunnel: iperf3 through ikeoffloadd, the sim standing in for esp32-devkitc
(its UART at 921600 baud, its CPU) and a real charon — a short version of `inv bench --only load`.

- TCP both ways: no board loss, goodput a fair share of the link's payload capacity, pings
  answered meanwhile;
- UDP at 3x the capacity: no board loss, the tunnel stays up, the excess dropped on the host and
  counted (never queued into the link);
- 10,000 ESP packets/s with the tunnel's valid SPI from an address that is not the peer's, or from
  the peer's address but another port: none reach the board's link, no board loss.
Needs root (namespaces, TUN, port 500) and iperf3; CI runs it.
"""
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from bench.load import capacity, iperf, packets, tcp_capacity
from testbed.demo import DemoBed
from testbed.netns import entered, run

pytestmark = [pytest.mark.strongswan, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN, port 500)")]

PROFILE = "esp32-devkitc"
SPOOF = "192.0.2.3"      # an address in the peers' subnet that is not the peer


@pytest.fixture(scope="module")
def bed():
    b = DemoBed(quiet=True, profile=PROFILE)
    server = None
    try:
        b.start()
        b.wait_tunnels()
        run("ip", "-n", b.net.ns_b, "addr", "add", SPOOF + "/24", "dev", b.net.if_b)
        server = subprocess.Popen(["ip", "netns", "exec", b.net.ns_b, "iperf3", "-s", "-B", b.inner_b[0]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        yield b
    finally:
        if server:
            server.terminate()
            server.wait()
        b.stop()


@pytest.fixture
def pinger(bed):
    p = bed.start_pinger(interval=0.05)
    yield p
    p.stop()


def losses(bed):
    return bed.ctl("stats")["board_losses"]


@pytest.mark.parametrize("direction", ["down", "up"])
def test_tcp_through_the_uart_link_keeps_the_board_and_fills_the_link(bed, pinger, direction):
    cap = capacity(PROFILE)
    before, p0 = losses(bed), packets(bed)
    res = iperf(bed, ["-R"] if direction == "down" else [], 8)
    p1 = packets(bed)
    out, inn = p1[0] - p0[0], p1[1] - p0[1]
    data, acks = (inn, out) if direction == "down" else (out, inn)
    bps = res["end"]["sum_received"]["bits_per_second"]
    limit = tcp_capacity(cap, acks / data)
    print("\nTCP %s through the %s link: %.3f Mbit/s of %.3f (%.0f%%), %d of %d pings answered"
          % (direction, PROFILE, bps / 1e6, limit / 1e6, 100 * bps / limit, len(pinger.replies), len(pinger.sent)))
    assert losses(bed) == before, bed.log_tail()
    # the bench holds >= 80% over 60 s; 8 s with slow start on a shared CI machine: >= 60%
    # (before the link was scheduled: 10% down, 43% up, and a board loss every 2 s)
    assert bps >= 0.6 * limit, (bps, limit)
    assert len(pinger.replies) >= 0.95 * (len(pinger.sent) - 5), pinger.summary()


def test_udp_at_three_times_capacity_is_dropped_on_the_host(bed, pinger):
    cap = capacity(PROFILE)
    stats0 = bed.ctl("stats")
    res = iperf(bed, ["-u", "-b", str(int(3 * cap["ip_Bps"] * 8)), "-l", "1372"], 6)
    stats1 = bed.ctl("stats")
    assert "end" in res, res
    assert stats1["board_losses"] == stats0["board_losses"], bed.log_tail()
    drops = {k: v - stats0["host_drops"].get(k, 0) for k, v in stats1["host_drops"].items()}
    dropped = drops.get("queue_full", 0) + drops.get("queue_delay", 0)
    sent = res["end"]["sum"]["packets"]
    print("\nUDP at 3x capacity: %d packets sent, %d dropped on the host (%s), %d of %d pings answered"
          % (sent, dropped, drops, len(pinger.replies), len(pinger.sent)))
    assert dropped >= sent / 2, (dropped, sent)              # two thirds of it cannot pass
    assert bed.wait_tunnels(timeout=5)
    assert len(pinger.replies) >= 0.9 * (len(pinger.sent) - 5), pinger.summary()


def test_esp_with_a_valid_spi_from_the_wrong_peer_costs_no_link_time(bed, pinger):
    spi = bed.ctl("list-sas")[0]["children"][0]["spi_in"]
    before = bed.ctl("stats")
    board0 = bed.sim(0, "status")["counters"]["data_packets"]
    ours = packets(bed)
    sent = 0

    def flood():
        nonlocal sent
        socks = []
        for src in (SPOOF, bed.net.addr_b):          # another address; the peer's, another port
            with entered(bed.net.ns_b):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            socks.append(s)
        pkt = struct.pack(">II", spi, 1) + os.urandom(120)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            for i in range(100):                      # 10,000 packets a second
                socks[i & 1].sendto(pkt, (bed.net.addr_a, 4500))
                sent += 1
            time.sleep(max(0.0, t0 + sent / 10000 - time.monotonic()))
        for s in socks:
            s.close()

    th = threading.Thread(target=flood)
    th.start()
    th.join()
    time.sleep(0.3)
    after = bed.ctl("stats")
    wrong = after["datapath_in_wrong_peer"] - before.get("datapath_in_wrong_peer", 0)
    board = bed.sim(0, "status")["counters"]["data_packets"] - board0
    legit = sum(packets(bed)) - sum(ours)
    print("\n%d spoofed ESP packets in 3 s: %d refused before the link; the board worked on %d packets, "
          "the tunnel's own %d" % (sent, wrong, board, legit))
    assert sent >= 25000
    assert wrong >= 0.95 * sent, (wrong, sent)               # the socket may drop a few under load
    assert board <= legit + 5, (board, legit)                 # only the tunnel's own traffic reached it
    assert after["board_losses"] == before["board_losses"]
    assert len(pinger.replies) >= 0.95 * (len(pinger.sent) - 5), pinger.summary()
