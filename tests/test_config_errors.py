"""Broken configurations, each as a router owner might write it: every one is refused with
`file:line: key: message` by `ikeoffloadd --check-config` (one line on stderr, exit 1, no traceback),
and none that cannot work is accepted. Doubtful but workable ones are accepted with warnings that
name file, line and key."""
import os

import pytest

from host import config
from host.ikeoffloadd import main

# GOOD's [dataplane] table and its boards, which some cases remove or replace whole
DATAPLANE = '''\
[dataplane]
tun = "ikeo0"
mtu = 1400
routing_table = 220
replay_window = 64
'''
BOARDS = '''\
[[board]]
name = "b0"
link_key = "private/b0.key"
profile = "sim"
port = "/dev/ttyS0"

[[board]]
name = "b1"
link_key = "private/b1.key"
profile = "sim"
port = "socket://127.0.0.1:7000"
'''
GOOD = '''\
[daemon]
control_socket = "/run/ikeoffload/control.sock"
log_level = "info"
listen = "192.0.2.1"
flush_on_board_loss = true

''' + DATAPLANE + "\n" + BOARDS + '''
[ike]
port = 500
natt_port = 4500

[ike.retransmit]
timeout = 4.0
base = 1.8
tries = 5

[connections.gw]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
proposals = ["aes256gcm16-prfsha256-x25519"]
psk = "a long enough secret for the tests"
start_action = "start"
dpd_delay = 30
keyingtries = 0

[connections.gw.local]
auth = "psk"
id = "a.test"

[connections.gw.remote]
auth = "psk"
id = "b.test"

[connections.gw.children.lan]
local_ts = ["198.51.100.0/24"]
remote_ts = ["203.0.113.0/24"]
esp_proposals = ["aes128gcm16", "aes128-sha256"]
rekey_time = 3600
'''

SECOND_CONN = '''
[connections.gw2]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.3"]
psk = "another long enough secret"
[connections.gw2.local]
auth = "psk"
id = "a.test"
[connections.gw2.remote]
auth = "psk"
id = "c.test"
[connections.gw2.children.lan]
local_ts = LOCAL
remote_ts = REMOTE
'''

LONG_SOCKET = "/run/" + "x" * 110 + ".sock"

# (replace this, with this, the key the error names, a text on the line it must name[, a top-level
# key written first])
BROKEN = [
    ("[daemon]", "[[daemon]]", "daemon", "[[daemon]]"),
    (DATAPLANE, "", "dataplane", "dataplane = 5", "dataplane = 5\n"),
    ("[dataplane]", "[dataplan]", "dataplan", "[dataplan]"),
    ('listen = "192.0.2.1"', 'listen = "192.0.2.1.7"', "daemon.listen", "listen ="),
    ('log_level = "info"', 'log_level = "loud"', "daemon.log_level", "log_level"),
    ('flush_on_board_loss = true', 'flush_on_board_loss = "yes"', "daemon.flush_on_board_loss", "flush_on"),
    ('control_socket = "/run/ikeoffload/control.sock"', 'control_socket = "control.sock"', "daemon.control_socket",
     "control_socket"),
    ('control_socket = "/run/ikeoffload/control.sock"', 'control_socket = "%s"' % LONG_SOCKET,
     "daemon.control_socket", "control_socket"),
    ('tun = "ikeo0"', 'tun = "a-name-too-long-for-linux"', "dataplane.tun", "tun ="),
    ("mtu = 1400", "mtu = 100", "dataplane.mtu", "mtu ="),
    ("routing_table = 220", "routing_table = 254", "dataplane.routing_table", "routing_table"),
    ("replay_window = 64", "replay_window = 5000", "dataplane.replay_window", "replay_window"),
    (BOARDS, "", "board", "board =", 'board = "b0"\n'),
    (BOARDS, "", "board[0]", "board =", 'board = ["b0"]\n'),
    (BOARDS, '[board]\nname = "b0"\nprofile = "sim"\nport = "/dev/ttyS0"\n', "board", "[board]"),
    ('name = "b0"', 'name = ""', "board[0].name", 'name = ""'),
    ('name = "b1"', 'name = "b0"', "board[1].name", 'name = "b0"\nlink_key = "private/b1.key"'),
    ('port = "/dev/ttyS0"', 'port = ""', "board[0].port", 'port = ""'),
    ('port = "/dev/ttyS0"', 'port = "ttyUSB0"', "board[0].port", 'port = "ttyUSB0"'),
    ('port = "/dev/ttyS0"', 'port = "ftdi://ftdi:232h/1"', "board[0].port", "ftdi://"),
    # an SPI board on a serial device: an adapter's ftdi:// URL, or the sim's pty, but not that
    ('profile = "sim"\nport = "/dev/ttyS0"', 'profile = "rp2040-pico-spi"\nport = "/dev/ttyS0"', "board[0].port",
     'port = "/dev/ttyS0"'),
    ('port = "socket://127.0.0.1:7000"', 'port = "socket://127.0.0.1"', "board[1].port", "socket://"),
    ('port = "socket://127.0.0.1:7000"', 'port = "/dev/ttyS0"', "board[1].port",
     'port = "/dev/ttyS0"\n\n[ike]'),
    ('profile = "sim"\nport = "/dev/ttyS0"', 'profile = "nosuch"\nport = "/dev/ttyS0"', "board[0].profile",
     'profile = "nosuch"'),
    ('profile = "sim"\nport = "/dev/ttyS0"', 'profile = "/etc/"\nport = "/dev/ttyS0"', "board[0].profile",
     'profile = "/etc/"'),
    ('port = "/dev/ttyS0"', 'port = "/dev/ttyS0"\nmisses = 1000', "board[0].misses", "misses"),
    ('link_key = "private/b0.key"\n', '', "board[0].link_key", '[[board]]\nname = "b0"'),
    ('link_key = "private/b1.key"', 'link_key = 7', "board[1].link_key", "link_key = 7"),
    ('port = "/dev/ttyS0"', 'port = "/dev/ttyS0"\nheartbeat_ms = 0', "board[0].heartbeat_ms", "heartbeat_ms"),
    ('port = "/dev/ttyS0"', 'port = "/dev/ttyS0"\nbaud = 9600', "board[0].baud", "baud"),
    ("natt_port = 4500", "natt_port = 500", "ike.natt_port", "natt_port"),
    ("port = 500\n", "port = 0\n", "ike.port", "port = 0"),
    ("timeout = 4.0", "timeout = nan", "ike.retransmit.timeout", "timeout"),
    ("base = 1.8", "base = inf", "ike.retransmit.base", "base ="),
    ("dpd_delay = 30", "dpd_delay = inf", "connections.gw.dpd_delay", "dpd_delay"),
    ("rekey_time = 3600", "rekey_time = nan", "connections.gw.children.lan.rekey_time", "rekey_time"),
    ("keyingtries = 0", "keyingtries = -1", "connections.gw.keyingtries", "keyingtries"),
    ('psk = "a long enough secret for the tests"', 'psk = "short"', "connections.gw.psk", "psk ="),
    ('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.9"]', "connections.gw.local_addrs", "local_addrs"),
    ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["2001:db8::2"]', "connections.gw.remote_addrs[0]",
     "remote_addrs"),
    ('esp_proposals = ["aes128gcm16", "aes128-sha256"]', 'esp_proposals = ["aes192gcm16", "aes192-sha512"]',
     "connections.gw.children.lan.esp_proposals", "esp_proposals"),
    ('esp_proposals = ["aes128gcm16", "aes128-sha256"]', 'esp_proposals = ["camellia256-sha256"]',
     "connections.gw.children.lan.esp_proposals[0]", "esp_proposals"),
    ('esp_proposals = ["aes128gcm16", "aes128-sha256"]', 'esp_proposals = ["aes128-sha1"]',
     "connections.gw.children.lan.esp_proposals", "esp_proposals"),
    ('remote_ts = ["203.0.113.0/24"]', 'remote_ts = ["2001:db8:1::/64"]', "connections.gw.children.lan.remote_ts",
     "remote_ts"),
    ('remote_ts = ["203.0.113.0/24"]', 'remote_ts = ["203.0.113.0/24[tcp/99999]"]',
     "connections.gw.children.lan.remote_ts[0]", "remote_ts"),
    ("[connections.gw.local]", "[connections.gw.lokal]", "connections.gw.local", "[connections.gw]"),
    ('id = "b.test"', 'id = "b.test"\nidd = "x"', "connections.gw.remote.idd", "idd"),
    ('start_action = "start"', 'start_action = "always"', "connections.gw.start_action", "start_action"),
    ("[connections.gw.children.lan]", "[[connections.gw.children.lan]]", "connections.gw.children.lan",
     "[[connections.gw.children.lan]]"),
    ("rekey_time = 3600", "rekey_time = 3600\n[broken", "<toml>", "[broken"),
    ('log_level = "info"', 'log_level = "info"\nlog_levels = { iek = "debug" }', "daemon.log_levels.iek",
     "log_levels"),
    ('log_level = "info"', 'log_level = "info"\nlog_levels = { ike = "loud" }', "daemon.log_levels.ike",
     "log_levels"),
    ('log_level = "info"', 'log_level = "info"\nlog_levels = "debug"', "daemon.log_levels", "log_levels"),
    ('listen = "192.0.2.1"', 'listen = "192.0.2.1"\nmetrics = "9466"', "daemon.metrics", "metrics ="),
    ('listen = "192.0.2.1"', 'listen = "192.0.2.1"\nmetrics = "localhost:9466"', "daemon.metrics", "metrics ="),
    ('listen = "192.0.2.1"', 'listen = "192.0.2.1"\nmetrics = "127.0.0.1:70000"', "daemon.metrics", "metrics ="),
    ("[dataplane]", '[ha]\nenabled = true\ntrack_file = "ha-health"\n\n[dataplane]', "ha.track_file", "track_file"),
    ("[dataplane]", '[ha]\nenabled = true\ntrack_file = "/run/ikeoffload/"\n\n[dataplane]', "ha.track_file",
     "track_file"),
    ("[dataplane]", '[ha]\nenabled = true\ntrack_file = 1\n\n[dataplane]', "ha.track_file", "track_file"),
    ("[dataplane]", '[ha]\ntrack_file = "/run/ikeoffload/ha-health"\n\n[dataplane]', "ha.track_file",
     "track_file"),
]


def write(tmp_path, text):
    path = tmp_path / "ikeoffloadd.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def line_with(text, marker):
    return text[:text.index(marker)].count("\n") + 1


def check_refused(capsys, path, key, line):
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert (e.value.key, e.value.line) == (key, line), str(e.value)
    assert main(["--check-config", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ikeoffloadd: %s:%d: %s: " % (path, line, key)), err


def test_the_base_is_valid(tmp_path):
    c = config.load(write(tmp_path, GOOD))
    assert len(c.boards) == 2 and "gw" in c.connections and c.warnings == []


def test_the_ha_track_file_defaults_to_beside_the_control_socket(tmp_path):
    """Where packaging/keepalived.conf looks for it; none without [ha]."""
    assert config.load(write(tmp_path, GOOD)).ha_track_file is None
    text = GOOD.replace("[dataplane]", "[ha]\nenabled = true\n\n[dataplane]", 1)
    assert config.load(write(tmp_path, text)).ha_track_file == "/run/ikeoffload/ha-health"
    text = GOOD.replace("[dataplane]", '[ha]\nenabled = true\ntrack_file = "/run/ka//h"\n\n[dataplane]', 1)
    assert config.load(write(tmp_path, text)).ha_track_file == "/run/ka/h"


def test_an_spi_board_takes_an_adapter_or_the_sim_standing_in_for_it(tmp_path):
    for port in ("ftdi://ftdi:232h/1", "/dev/pts/7", "socket://127.0.0.1:7001"):
        text = GOOD.replace('profile = "sim"\nport = "/dev/ttyS0"', 'profile = "rp2040-pico-spi"\nport = "%s"' % port)
        assert config.load(write(tmp_path, text)).boards[0].port == port


def test_there_are_at_least_30_shapes():
    assert len(BROKEN) + 2 >= 30


@pytest.mark.parametrize("case", BROKEN, ids=["%02d-%s" % (i, b[2]) for i, b in enumerate(BROKEN)])
def test_broken_config_is_refused_with_file_line_key(tmp_path, capsys, case):
    old, new, key, marker = case[:4]
    assert old in GOOD
    text = (case[4] if len(case) > 4 else "") + GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    check_refused(capsys, path, key, line_with(text, marker or new))


def test_not_utf8(tmp_path, capsys):
    raw = GOOD.encode().replace(b'id = "b.test"', b'id = "b\xe9.test"')
    path = write(tmp_path, raw)
    check_refused(capsys, path, "<file>", line_with(GOOD, 'id = "b.test"'))


def test_unreadable_file(tmp_path, capsys):
    assert main(["--check-config", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "<file>" in err and "Traceback" not in err


@pytest.mark.parametrize("local,remote,key,says", [
    ('["198.51.100.0/24"]', '["203.0.113.0/24"]', "connections.gw2.children.lan.local_ts",
     "the same traffic selectors as connections.gw.children.lan"),
    ('["198.51.100.0/24", "2001:db8:a::/64"]', '["203.0.113.0/24"]', "connections.gw2.children.lan.remote_ts",
     "mix address families"),
])
def test_doubtful_selectors_are_accepted_with_a_warning(tmp_path, capsys, local, remote, key, says):
    text = GOOD + SECOND_CONN.replace("LOCAL", local).replace("REMOTE", remote)
    path = write(tmp_path, text)
    c = config.load(path)
    assert len(c.warnings) == 1, c.warnings
    line = line_with(text, "[connections.gw2]") + line_with(
        SECOND_CONN, key.rsplit(".", 1)[1] + " = ") - line_with(SECOND_CONN, "[connections.gw2]")
    assert c.warnings[0].startswith("%s:%d: %s: " % (path, line, key)) and says in c.warnings[0], c.warnings
    assert main(["--check-config", path]) == 0
    out = capsys.readouterr()
    assert "warning: " + c.warnings[0] in out.err and "valid" in out.out


def test_shipped_example_has_no_warnings():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert config.load(os.path.join(root, "packaging", "ikeoffloadd.toml")).warnings == []


def test_sha1_ike_proposals_are_accepted_with_a_warning(tmp_path, capsys):
    """HMAC-SHA-1 and PRF-SHA-1 are there for legacy peers only: accepted, named in a warning."""
    text = GOOD.replace('proposals = ["aes256gcm16-prfsha256-x25519"]',
                        'proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha1-modp2048"]')
    assert text != GOOD
    c = config.load(write(tmp_path, text))
    assert len(c.warnings) == 1 and "connections.gw.proposals[1]: HMAC-SHA-1" in c.warnings[0], c.warnings
    assert config.load(write(tmp_path, GOOD)).warnings == []
