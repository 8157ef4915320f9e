"""ikeoffloadctl and what it asks for, in process: the command line (--json anywhere, exit codes),
the control socket's following `log` stream, the waiting initiate / terminate / rekey between two
engines on the in-memory network, the loggers' levels per subsystem, the metrics address."""
import asyncio
import json
import logging
import threading
import time

import pytest

from host import control, logs
from host.config import metrics_address
from host.ike.config import parse_connections
from host.ike.engine import IkeEngine
from host.ike.loopback import Network
from host.operations import Failed, Operations, Waiters
from tests.test_engine import A_NET, ALL, B_NET, A, B, conn


# ---- the command line against a real control socket ----------------------------------------------

class Server:
    """A ControlServer on its own event loop thread, answering with ``handler``."""

    def __init__(self, path, handler):
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.srv = control.ControlServer(path, handler)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.srv.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.srv.close(), self.loop).result(5)
        asyncio.run_coroutine_threadsafe(self._end_clients(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @staticmethod
    async def _end_clients():
        """The connections still open end as the daemon's do when it stops (cancelled)."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def run_ctl(capsys, path, *args):
    code = control.main(["--socket", path] + list(args)) if args[:1] != ("--sock",) else control.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_anywhere_on_the_line_and_exit_codes(tmp_path, capsys):
    seen = []

    async def handler(req):
        seen.append(req)
        if req["cmd"] == "initiate":
            if req["conn"] == "slow":
                raise TimeoutError("no outcome within 0.5 s (the action goes on in the daemon)")
            raise LookupError("IKE SA #4 for %s failed: peer refused" % req["conn"])
        return {"board_losses": 0, "cmd": req["cmd"]}

    path = str(tmp_path / "ctl.sock")
    with Server(path, handler):
        for args in (["--json", "stats"], ["stats", "--json"]):
            code, out, _ = run_ctl(capsys, path, *args)
            assert code == 0 and json.loads(out) == {"board_losses": 0, "cmd": "stats"}
        code, out, _ = run_ctl(capsys, path, "stats")
        assert code == 0 and "board_losses  0" in out                    # not JSON without --json
        code, out, _ = control.main(["stats", "--socket", path, "--json"]), *capsys.readouterr()[:2]
        assert code == 0 and json.loads(out)["cmd"] == "stats"           # --socket after the verb too
        code, _, err = run_ctl(capsys, path, "initiate", "gw", "--timeout", "5")
        assert code == 1 and "peer refused" in err
        code, _, err = run_ctl(capsys, path, "initiate", "slow", "--timeout", "0.5")
        assert code == control.EXIT_TIMEOUT and "no outcome within" in err
        assert seen[-1] == {"cmd": "initiate", "conn": "slow", "timeout": 0.5}
    code, _, err = run_ctl(capsys, path, "stats")
    assert code == 2 and "cannot reach ikeoffloadd" in err


@pytest.mark.parametrize("req,says", [
    ({"cmd": "initiate", "conn": "gw", "timeout": -1}, "timeout must be within"),
    ({"cmd": "initiate", "conn": "gw", "timeout": float("nan")}, "timeout must be within"),
    ({"cmd": "initiate", "conn": "gw", "timeout": "5"}, "timeout must be a number"),
    ({"cmd": "rekey"}, "rekey needs one of conn, ike_id, child_id"),
    ({"cmd": "terminate", "conn": "gw", "ike_id": 3}, "terminate needs one of"),
    ({"cmd": "log", "level": "loud"}, "log: level must be one of"),
    ({"cmd": "reload", "path": "/etc/passwd"}, "reload takes no field 'path'"),
])
def test_requests_are_checked(req, says):
    with pytest.raises(ValueError) as e:
        control.check_request(req)
    assert says in str(e.value)


def test_log_follows_records_and_a_client_that_goes_is_forgotten(tmp_path):
    followers = logs.Followers(backlog=10)
    lg = logging.getLogger("ikeoffloadd.board")
    lg.addHandler(followers)
    lg.setLevel(logging.DEBUG)

    async def stream():
        q = followers.follow()
        try:
            while True:
                while q:
                    yield q.popleft()
                yield None
                await asyncio.sleep(0.02)
        finally:
            followers.unfollow(q)

    async def handler(req):
        return stream()

    path = str(tmp_path / "ctl.sock")
    try:
        with Server(path, handler):
            items = control.follow(path, {"cmd": "log"})
            deadline = time.monotonic() + 5
            while not followers.queues and time.monotonic() < deadline:
                time.sleep(0.01)
            lg.info("board %s: no heartbeat ack", "b0")
            first = next(items)
            assert first["subsystem"] == "board" and first["message"] == "board b0: no heartbeat ack"
            assert first["level"] == "info" and "board b0" in logs.format_record(first)
            items.close()                          # the client goes: the daemon stops following for it
            deadline = time.monotonic() + 5
            while followers.queues and time.monotonic() < deadline:
                lg.debug("tick")
                time.sleep(0.02)
            assert followers.queues == []
    finally:
        lg.removeHandler(followers)
        lg.setLevel(logging.NOTSET)


def test_levels_per_subsystem():
    try:
        logs.set_levels("warning", {"ike": "debug"})
        assert logging.getLogger("ikeoffloadd.ike").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("ikeoffloadd.board").isEnabledFor(logging.INFO)
        assert logging.getLogger("ikeoffloadd").getEffectiveLevel() == logging.WARNING
        assert logs.subsystem_of("ikeoffloadd.ike") == "ike" and logs.subsystem_of("ikeoffloadd") == "daemon"
        assert logs.subsystem_of("ikeoffloadd.datapath") == "dataplane"
    finally:
        logs.set_levels("warning", {s: "notset" for s in ()})
        for name in logs.SUBSYSTEMS.values():
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_metrics_address():
    assert metrics_address("127.0.0.1:9466") == ("127.0.0.1", 9466)
    assert metrics_address("[::1]:9466") == ("::1", 9466)
    for bad in ("9466", "localhost:9466", "127.0.0.1:0", "[::1]9466", "::1:9466"):
        with pytest.raises(ValueError):
            metrics_address(bad)


# ---- initiate, terminate, rekey: waiting for the outcome between two engines ---------------------

def ops_pair(b_accepts=True):
    a = IkeEngine(parse_connections({"gw": conn(A, B, "a.example", "b.example", A_NET, B_NET)}), ALL, strict=True)
    b = IkeEngine(parse_connections({"gw": conn(B, A, "b.example", "a.example", B_NET, A_NET)}), ALL, strict=True)
    net = Network()
    net.add(A, a)
    net.add(B, b, accept=b_accepts)
    waiters = Waiters()
    seen = [0]

    def call(fn, *args, **kw):
        """The driver: the command, then the network, then A's events to the waiters."""
        r = fn(*args, now=1.0, **kw)
        net.pump(1.0)
        for ev in net.events[A][seen[0]:]:
            waiters.feed(ev)
        seen[0] = len(net.events[A])
        return r
    return a, b, net, Operations(a, call, waiters)


def test_initiate_terminate_and_rekey_wait_for_their_outcome():
    a, b, net, ops = ops_pair()

    async def main():
        r = await ops.initiate("gw", timeout=5)
        assert r["established"] and r["child"] == "net" and a.ike_sa(r["ike_id"]) is not None
        handle = r["handle"]
        r2 = await ops.rekey(child_id=handle, timeout=5)
        assert r2["rekeyed_child"] == handle and r2["new_handle"] != handle
        r3 = await ops.rekey(ike_id=r["ike_id"], timeout=5)
        new_id = r3["rekeyed"][str(r["ike_id"])]
        assert a.ike_sa(new_id) is not None
        r4 = await ops.terminate(conn="gw", timeout=5)
        assert r4["terminated"] == [new_id] and a.ike_sas() == [] and b.ike_sas() == []
        with pytest.raises(LookupError, match="no IKE SA for gw"):
            await ops.terminate(conn="gw", timeout=5)
        with pytest.raises(LookupError, match="no connection 'nope'"):
            await ops.initiate("nope", timeout=5)
    asyncio.run(main())


def test_an_initiation_the_peer_cannot_complete_fails_and_silence_times_out():
    a, b, net, ops = ops_pair(b_accepts=False)        # B's board refuses the Child SA

    async def refused():
        with pytest.raises(Failed, match="Child SA net failed"):
            await ops.initiate("gw", timeout=5)
    asyncio.run(refused())
    net.loss = lambda d: True                          # B never answers

    async def silent():
        with pytest.raises(TimeoutError, match="no outcome within 0.2 s"):
            await ops.initiate("gw", timeout=0.2)
        assert (await ops.initiate("gw", timeout=0))["ike_id"]         # 0: at once
    asyncio.run(silent())
