"""ikeoffloadd's configuration: the shipped example validates, and every error names key and line."""
import configparser
import os

import pytest

from host import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = '''[daemon]
listen = "192.0.2.1"

[[board]]
name = "b0"
link_key = "private/b0.key"
profile = "sim"
port = "/dev/pts/9"

[connections.gw]
remote_addrs = ["192.0.2.2"]
psk = "a long enough secret for tests"
[connections.gw.local]
auth = "psk"
id = "a.test"
[connections.gw.remote]
auth = "psk"
id = "b.test"
'''


def test_the_shipped_example_is_valid():
    c = config.load(os.path.join(ROOT, "packaging", "ikeoffloadd.toml"))
    assert [b.name for b in c.boards] == ["b0", "b1"] and "branch" in c.connections
    assert c.flush_on_board_loss is True and c.engine.unprotected_invalid_spi is False
    assert c.engine.hint_retransmit == config.HINT_RETRANSMIT and c.retransmit.tries == 5
    assert c.boards[0].period == 0.2 and c.boards[0].profile["link"]["baud"] == 921600


def test_defaults():
    c = config.loads(GOOD)
    assert (c.ike_port, c.natt_port, c.tun, c.routing_table, c.replay_window) == (500, 4500, "ikeo0", 210, 64)
    # none of strongSwan's defaults (table 220, rule priority 220): the two run side by side
    assert (c.rule_priority, c.fwmark, c.route_protocol) == (210, 0x494B4F, 149)
    assert c.listen_addrs == ["192.0.2.1"] and c.listen == "192.0.2.1"
    assert c.boards[0].period == 0.1 and c.boards[0].misses == 3


@pytest.mark.parametrize("change,key,line", [
    (('listen = "192.0.2.1"', 'listen = "not-an-ip"'), "daemon.listen", 2),
    (('listen = "192.0.2.1"', 'listen = ["192.0.2.1", "2001:db8::x"]'), "daemon.listen[1]", 2),
    (('listen = "192.0.2.1"', 'listen = ["192.0.2.1", "192.0.2.1"]'), "daemon.listen[1]", 2),
    (('listen = "192.0.2.1"', 'listen = []'), "daemon.listen", 2),
    (('listen = "192.0.2.1"', 'listen = 5'), "daemon.listen", 2),
    (('listen = "192.0.2.1"', 'listen = "192.0.2.1"\nlog_lvl = "x"'), "daemon.log_lvl", 3),
    (('port = "/dev/pts/9"', 'port = "/dev/pts/9"\nmisses = 0'), "board[0].misses", 9),
    (('port = "/dev/pts/9"', 'port = "/dev/pts/9"\nheartbeat_ms = 900'), "board[0].heartbeat_ms", 9),
    (('profile = "sim"', 'profile = "nosuchboard"'), "board[0].profile", 7),
    (('psk = "a long enough secret for tests"', 'psk = "short"'), "connections.gw.psk", 12),
    (('id = "b.test"', 'id = "b.test"\nfoo = 1'), "connections.gw.remote.foo", 19),
    (('[daemon]', '[deamon]'), "deamon", 1),
])
def test_errors_name_the_key_and_line(change, key, line):
    text = GOOD.replace(*change)
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, "x.toml")
    assert e.value.key == key and e.value.line == line, str(e.value)
    assert str(e.value).startswith("x.toml:%d: %s: " % (line, key))


def test_duplicate_and_missing_boards():
    two = GOOD.replace('[connections.gw]',
                       '[[board]]\nname = "b0"\nlink_key = "k"\nprofile = "sim"\nport = "/dev/x"\n\n[connections.gw]')
    with pytest.raises(config.ConfigError, match="board\\[1\\].name: duplicate"):
        config.loads(two)
    with pytest.raises(config.ConfigError, match="at least one"):
        config.loads('[daemon]\nlisten = "0.0.0.0"\n')


def test_toml_syntax_error_has_a_line():
    with pytest.raises(config.ConfigError) as e:
        config.loads(GOOD + "\n[broken\n", "y.toml")
    assert e.value.line == 20


def test_systemd_unit_runs_the_console_script_with_the_config():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(os.path.join(ROOT, "packaging", "ikeoffloadd.service"))
    svc = unit["Service"]
    assert svc["ExecStart"] == "/opt/ikeoffload/bin/ikeoffloadd --config /etc/ikeoffload/ikeoffloadd.toml"
    assert "--check-config" in svc["ExecStartPre"] and svc["KillSignal"] == "SIGTERM"
    assert "CAP_NET_ADMIN" in svc["AmbientCapabilities"] and unit["Install"]["WantedBy"] == "multi-user.target"


def test_readme_shows_the_full_example_verbatim():
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = open(os.path.join(ROOT, "packaging", "ikeoffloadd.toml")).read()
    assert "```toml\n" + example + "```" in readme
