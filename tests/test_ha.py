"""The HA role (host/ha.py): what each keepalived state means, health for its track script, the
`ha` control request and the [ha] configuration. The failovers themselves, with real keepalived
and charon, are tests/test_ha_failover.py."""
import pytest

from host import config as cfgmod
from host.control import check_request, format_ha
from host.ha import Activate, Deactivate, HaState, Role


def test_standby_until_keepalived_speaks_and_unhealthy_if_the_address_is_here_meanwhile():
    ha = HaState(True, now=0.0)
    assert ha.role is Role.UNKNOWN and not ha.active
    ha.boards(True, 0.1)
    assert ha.health(0.2) == (True, "ok")     # keepalived (BACKUP or FAULT) says BACKUP when it can
    ok, why = ha.health(0.2, address_here=True)
    assert not ok and "keepalived" in why      # it is MASTER: fail, so that it says FAULT, then BACKUP
    assert ha.set("FAULT", 1.0) == [Deactivate("unknown -> fault", deletes=False)]
    assert ha.health(1.0, address_here=True) == (True, "ok")


def test_master_activates_and_leaving_it_owes_deletes():
    ha = HaState(True, now=0.0)
    ha.set("backup", 1.0)
    assert ha.set("master", 2.0) == [Activate("backup -> master")]
    assert ha.active
    assert ha.set("master", 2.5) == []          # a repeated notify changes nothing
    for leave in ("backup", "fault", "stop"):
        ha.set("master", 3.0)
        acts = ha.set(leave, 4.0)
        assert acts == [Deactivate("master -> %s" % leave, deletes=True)], leave
        assert not ha.active
    assert ha.set("fault", 5.0) == [Deactivate("stop -> fault", deletes=False)]   # nothing left to delete
    st = ha.status(5.0)
    assert st["state"] == "fault" and not st["active"] and st["history"][-1] == {"at": 5.0, "from": "stop",
                                                                                   "to": "fault"}


@pytest.mark.parametrize("bad", ["primary", "", "master ", None, 3])
def test_a_state_keepalived_never_sends_is_refused_and_changes_nothing(bad):
    ha = HaState(True, now=0.0)
    ha.set("backup", 1.0)
    with pytest.raises(ValueError):
        ha.set(bad, 2.0)
    assert ha.role is Role.BACKUP and ha.since == 1.0 and len(ha.history) == 1


def test_without_ha_the_router_is_always_active_and_refuses_roles():
    ha = HaState(False, now=0.0)
    assert ha.active
    with pytest.raises(ValueError, match="HA is off"):
        ha.set("backup", 1.0)
    assert ha.active


def test_no_board_makes_it_unhealthy_only_after_the_grace():
    ha = HaState(True, now=0.0, no_board_grace=0.5)
    ha.set("backup", 0.0)
    ha.boards(True, 0.0)
    ha.boards(False, 1.0)                      # a board reset: back within milliseconds
    assert ha.health(1.4)[0]
    ha.boards(True, 1.01)
    assert ha.health(3.0)[0]
    ha.boards(False, 4.0)                      # gone for good
    ha.boards(False, 4.2)                      # a second report does not restart the grace
    ok, why = ha.health(4.5)
    assert not ok and why.startswith("no board ready")


def test_control_request_for_ha():
    assert check_request({"cmd": "ha"}) == {"cmd": "ha"}
    assert check_request({"cmd": "ha", "state": "master"})["state"] == "master"
    with pytest.raises(ValueError, match="must be a string"):
        check_request({"cmd": "ha", "state": 1})
    with pytest.raises(ValueError, match="no field"):
        check_request({"cmd": "ha", "role": "master"})


BASE = """
[daemon]
control_socket = "/run/ikeoffload/t.sock"
listen = "%s"
[[board]]
name = "b0"
profile = "sim"
port = "/dev/pts/9"
link_key = "/etc/ikeoffload/private/b0.key"
"""


def test_ha_config():
    c = cfgmod.loads(BASE % "192.0.2.1" + "[ha]\nenabled = true\n")
    assert c.ha is True
    # a new active router tells the peers of the old one at once that their SAs are gone (§1.5) ...
    assert c.engine.unprotected_invalid_spi is True
    lone = cfgmod.loads(BASE % "192.0.2.1")
    assert lone.ha is False and lone.engine.unprotected_invalid_spi is False
    # ... unless told otherwise
    off = cfgmod.loads(BASE % "192.0.2.1" + "[ha]\nenabled = true\n[ike]\nunprotected_invalid_spi = false\n")
    assert off.engine.unprotected_invalid_spi is False
    with pytest.raises(cfgmod.ConfigError, match=r":11: ha.enabled: needs daemon.listen"):
        cfgmod.loads(BASE % "0.0.0.0" + "[ha]\nenabled = true\n")
    with pytest.raises(cfgmod.ConfigError, match=r"ha.enabled: must be bool"):
        cfgmod.loads(BASE % "192.0.2.1" + "[ha]\nenabled = 1\n")
    with pytest.raises(cfgmod.ConfigError, match=r"ha.vip: unknown setting"):
        cfgmod.loads(BASE % "192.0.2.1" + "[ha]\nvip = 1\n")


def test_ha_status_for_people():
    ha = HaState(True, now=0.0)
    ha.boards(True, 0.0)
    ha.set("backup", 1.0)
    ha.set("master", 5.0)
    text = format_ha(ha.status(6.0), now=7.5)
    assert text.splitlines() == ["MASTER (active) for 2.5 s; healthy", "       2.5 s ago  backup -> master",
                                 "       6.5 s ago  unknown -> backup"]
    assert format_ha(HaState(False, 0.0).status(1.0)).startswith("HA off")
