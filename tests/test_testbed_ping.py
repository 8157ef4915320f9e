"""The interop tests' traffic check: iputils ping counted per echo request (host/testbed/ping.py)."""
import asyncio

import pytest

from host.testbed import ping as pinging
from host.testbed.netns import VethPair, have_root

SAMPLE = """PING 198.51.100.1 (198.51.100.1) from 203.0.113.1 : 56(84) bytes of data.
[1700000000.100000] 64 bytes from 198.51.100.1: icmp_seq=1 ttl=64 time=7.1 ms
[1700000000.200000] 64 bytes from 198.51.100.1: icmp_seq=2 ttl=64 time=7.3 ms
[1700000000.400000] 64 bytes from 198.51.100.1: icmp_seq=4 ttl=64 time=7.0 ms
[1700000000.610000] 64 bytes from 198.51.100.1: icmp_seq=5 ttl=64 time=160 ms
[1700000000.611000] 64 bytes from 198.51.100.1: icmp_seq=6 ttl=64 time=11 ms

--- 198.51.100.1 ping statistics ---
6 packets transmitted, 5 received, 16.6667% packet loss, time 503ms
"""


def test_a_request_unanswered_is_lost_a_slow_last_one_and_extra_probes_are_not():
    r = pinging.parse(SAMPLE, 5)
    assert r.lost == [3] and r.answered == 4 and not r.ok
    assert "unanswered icmp_seq [3]" in r.summary() and "1700000000.2" in r.summary()
    assert "6 packets transmitted" in r.summary() and "PING" not in r.summary()
    assert pinging.parse(SAMPLE, 2).ok and str(pinging.parse(SAMPLE, 2)) == "2/2 answered"


def test_the_deadline_is_the_sending_time_plus_the_grace():
    cmd = pinging.command("nsx", "203.0.113.1", "198.51.100.1", 70, 0.1, grace=2.0)
    assert cmd[cmd.index("-w") + 1] == "9" and cmd[cmd.index("-c") + 1] == "70" and "-D" in cmd


@pytest.mark.skipif(not have_root(), reason="needs root for network namespaces")
def test_real_ping_between_namespaces_answered_and_unanswered():
    with VethPair() as net:
        ok = asyncio.run(pinging.ping(net.ns_a, net.addr_a, net.addr_b, count=3, interval=0.2))
        assert ok.ok and len(ok.replies) >= 3, ok.text
        # nobody holds 192.0.2.77: every request goes unanswered until the deadline
        gone = asyncio.run(pinging.ping(net.ns_a, net.addr_a, "192.0.2.77", count=2, interval=0.2, grace=1.0))
        assert gone.lost == [1, 2] and not gone.ok, gone.text
