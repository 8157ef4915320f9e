"""The control socket (host/control.py) in process: where the server may listen and what it
never replaces, the client's view of a server that goes away, and `ikeoffloadctl`'s exit
statuses and human output (what it prints of a real daemon's answers: tests/test_daemon_pair.py)."""
import asyncio
import json
import os
import socket
import stat
import threading

import pytest

from host import control


def serve(path, handler=None):
    """A ControlServer on ``path`` in a thread of its own; returns (server, stop())."""
    async def echo(req):
        return {"asked": req}
    loop = asyncio.new_event_loop()
    srv = control.ControlServer(str(path), handler or echo)
    loop.run_until_complete(srv.start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    def stop():
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()
    return srv, stop


def test_the_socket_is_born_private_and_a_stale_one_is_replaced(tmp_path):
    path = tmp_path / "run" / "ctl.sock"            # its directory is made
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.parent.mkdir()
    stale.bind(str(path))                            # a socket file nobody listens on: a dead daemon's
    stale.close()
    os.chmod(path, 0o777)
    _, stop = serve(path)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert control.call(str(path), {"cmd": "list-sas"}, 5) == {"ok": True, "result": {"asked": {"cmd": "list-sas"}}}
    finally:
        stop()
    assert not path.exists()                         # its own socket goes with it


def test_a_live_socket_or_another_file_is_never_replaced(tmp_path):
    path = tmp_path / "ctl.sock"
    _, stop = serve(path)
    try:
        with pytest.raises(control.ControlSocketError, match="a daemon answers there already"):
            asyncio.run(control.ControlServer(str(path), None).start())
        assert control.call(str(path), {"cmd": "stats"}, 5)["ok"]      # the first one still serves
    finally:
        stop()
    other = tmp_path / "notes"
    other.write_text("keep me")
    with pytest.raises(control.ControlSocketError, match="exists and is not a socket"):
        asyncio.run(control.ControlServer(str(other), None).start())
    assert other.read_text() == "keep me"
    with pytest.raises(control.ControlSocketError, match="cannot serve .*notes"):
        asyncio.run(control.ControlServer(str(other / "ctl.sock"), None).start())   # under a file


def test_closing_leaves_a_successors_socket_alone(tmp_path):
    path = tmp_path / "ctl.sock"
    srv, stop = serve(path)
    os.unlink(path)                                  # a successor took the path over meanwhile
    succ, stop2 = serve(path)
    stop()
    try:
        assert control.answers(str(path)) and control.call(str(path), {"cmd": "stats"}, 5)["ok"]
    finally:
        stop2()
    assert not path.exists()


def test_a_server_that_closes_without_answering_is_an_error_for_the_client(tmp_path):
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen(1)

        def hang_up():
            conn, _ = s.accept()
            conn.recv(100)
            conn.close()
        t = threading.Thread(target=hang_up)
        t.start()
        with pytest.raises(ConnectionError, match="closed the control connection"):
            control.call(path, {"cmd": "stats"}, 5)
        t.join(5)


def test_terminate_needs_a_connection_or_an_ike_id():
    with pytest.raises(ValueError, match="terminate needs one of conn, ike_id, child_id"):
        control.check_request({"cmd": "terminate"})
    assert control.check_request({"cmd": "terminate", "ike_id": 3}) == {"cmd": "terminate", "ike_id": 3}
    with pytest.raises(ValueError, match="not list"):
        control.check_request([])


def test_ikeoffloadctl_exit_statuses_and_requests(tmp_path, capsys):
    asked = []

    async def handler(req):
        asked.append(req)
        if req["cmd"] == "initiate":
            raise KeyError("no connection 'nope' (known: gw)")
        if req["cmd"] == "terminate":
            return {"terminated": [req["ike_id"]]}
        return {"ike_sas": 2, "board_losses": 0}
    path = tmp_path / "ctl.sock"
    _, stop = serve(path, handler)
    try:
        assert control.main(["--socket", str(path), "stats"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == ["board_losses  0", "ike_sas       2"]
        assert control.main(["--socket", str(path), "--json", "stats"]) == 0
        assert json.loads(capsys.readouterr().out) == {"ike_sas": 2, "board_losses": 0}
        assert control.main(["--socket", str(path), "initiate", "nope"]) == 1
        assert capsys.readouterr().err == "ikeoffloadctl: no connection 'nope' (known: gw)\n"     # not its repr
        assert control.main(["--socket", str(path), "terminate", "--ike-id", "7"]) == 0
        assert capsys.readouterr().out == "IKE SA(s) #7 deleted\n"
        assert control.main(["--socket", str(path), "flush-board", "b0"]) == 0
        with pytest.raises(SystemExit) as e:
            control.main(["--socket", str(path), "terminate"])
        assert e.value.code == 2 and "needs a connection name or --ike-id" in capsys.readouterr().err
    finally:
        stop()
    assert asked == [{"cmd": "stats"}, {"cmd": "stats"}, {"cmd": "initiate", "conn": "nope", "timeout": 30.0},
                     {"cmd": "terminate", "ike_id": 7, "timeout": 30.0}, {"cmd": "flush-board", "board": "b0"}]
    assert control.main(["--socket", str(path), "stats"]) == 2
    assert "cannot reach ikeoffloadd at %s" % path in capsys.readouterr().err


def test_ages_read_like_swanctls():
    now = 100000.0
    assert [control._ago(t, now) for t in (None, now - 5, now - 119, now - 600, now - 7300, now + 3)] == [
        "never", "5s ago", "119s ago", "10m ago", "2h ago", "0s ago"]


def test_board_and_generic_output_without_a_session():
    """A configured board that never opened: no boot id, no RTT, no transforms, no loss."""
    out = control.format_boards([{"name": "b1", "state": "closed", "port": "/dev/ttyUSB1", "profile": "esp32",
                                  "boot_id": None, "sa_count": 0, "max_sas": None, "ike_sas": 0,
                                  "rtt_ms": None, "transforms": [], "losses": 0, "last_loss": None}])
    assert out.splitlines() == ["b1: CLOSED, /dev/ttyUSB1, profile esp32", "  SAs 0/None, IKE SAs 0, heartbeat RTT -",
                                "  losses 0"]
    assert control.format_boards([]) == "no boards" and control.format_sas([]) == "no IKE SAs"
    assert control.format_generic([1, 2]) == "[1, 2]" and control.format_generic({}) == ""
