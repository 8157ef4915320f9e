"""The namespace test bed cleans up after itself, even after the creating process was killed."""
import os
import signal
import subprocess
import sys

import pytest

from testbed.netns import VethPair, cleanup_stale, have_root, ns_exec, run, udp_socket

pytestmark = pytest.mark.skipif(not have_root(), reason="needs root for network namespaces")


def _namespaces():
    return set(run("ip", "netns", "list", check=False).stdout.split())


def test_veth_pair_and_sockets_inside():
    with VethPair(lo_b=["203.0.113.1"]) as bed:
        assert {bed.ns_a, bed.ns_b} <= _namespaces()
        s = udp_socket(bed.ns_a, "192.0.2.1", 0)          # bound inside namespace a
        try:
            port = s.getsockname()[1]
            ns_exec(bed.ns_b, sys.executable, "-c",
                    f"import socket; socket.socket(2, 2).sendto(b'hi', ('192.0.2.1', {port}))")
            s.settimeout(2)
            data, addr = s.recvfrom(100)
            assert data == b"hi" and addr[0] == "192.0.2.2"
        finally:
            s.close()
        # the root namespace never sees these addresses
        assert "192.0.2.1" not in run("ip", "-4", "addr").stdout
    assert not {bed.ns_a, bed.ns_b} & _namespaces()


def test_stale_namespaces_of_a_killed_run_are_removed():
    code = ("from testbed.netns import VethPair; import time, subprocess, sys; "
            "b = VethPair(); print(b.ns_a, b.ns_b, flush=True); "
            "subprocess.Popen(['ip', 'netns', 'exec', b.ns_b, 'sleep', '60']); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    names = p.stdout.readline().split()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert set(names) <= _namespaces()
    removed = cleanup_stale()
    assert set(names) <= set(removed)
    assert not set(names) & _namespaces()
