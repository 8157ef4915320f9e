"""The one traffic check of the demo and the daemon and interop tests (testbed/ping.py):
echo requests counted one by one, between real network namespaces."""
import asyncio

from testbed import ping as pinging
from testbed.netns import VethPair

NOBODY = "192.0.2.77"       # on the veth's /24, held by no one: requests go unanswered


def test_every_request_answered_is_ok():
    with VethPair() as net:
        p = asyncio.run(pinging.ping(net.ns_a, net.addr_a, net.addr_b, count=5, interval=0.05))
        assert p.ok and sorted(p.replies) == [1, 2, 3, 4, 5] and str(p) == "5/5 answered", p.summary()


def test_unanswered_requests_are_named_and_two_pingers_do_not_share_replies():
    """Both pingers of one process use the same ICMP identifier and sequence numbers: only a reply
    from the pinged address counts."""
    with VethPair() as net:
        async def both():
            return await asyncio.gather(
                pinging.ping(net.ns_a, net.addr_a, net.addr_b, count=4, interval=0.05),
                pinging.ping(net.ns_a, net.addr_a, NOBODY, count=4, interval=0.05, grace=0.5))
        good, gone = asyncio.run(both())
        assert good.ok
        assert gone.lost == [1, 2, 3, 4] and not gone.ok and not gone.replies
        assert "icmp_seq 1 sent at" in gone.summary() and "0 of 4" in gone.summary()
