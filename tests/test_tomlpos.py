"""Config errors must name the key and its line: the TOML position scanner."""
import tomllib

from host.tomlpos import key_lines, line_of

TEXT = '''# ikeoffloadd.toml
[daemon]
log_level = "info"   # a comment with = and [brackets]

[[board]]
name = "b0"
port = "/dev/pts/1"

[[board]]
name = "b1"
ports = [
  "x",   # [not a table]
  "y",
]
misses = 3

[board.spi]
clock_hz = 1

[connections.gw]
psk = """multi
[fake]
line = 3
"""
"quoted.key" = 5
[connections.gw.children.net]
local_ts = ["198.51.100.0/24"]
'''


def test_every_key_has_the_line_it_was_written_on():
    tomllib.loads(TEXT)       # the sample is valid TOML
    lines = key_lines(TEXT)
    text_lines = TEXT.splitlines()
    want = {"daemon.log_level": "log_level", "board[0].name": 'name = "b0"', "board[0].port": "port",
            "board[1].name": 'name = "b1"', "board[1].ports": "ports", "board[1].misses": "misses",
            "board[1].spi.clock_hz": "clock_hz", "connections.gw.psk": "psk",
            "connections.gw.quoted.key": '"quoted.key"',
            "connections.gw.children.net.local_ts": "local_ts"}
    for key, starts in want.items():
        assert key in lines, key
        assert text_lines[lines[key] - 1].startswith(starts), (key, lines[key])
    assert "fake" not in lines and "line" not in lines and "connections.gw.line" not in lines


def test_missing_keys_fall_back_to_their_table():
    lines = key_lines(TEXT)
    assert line_of(lines, "connections.gw.children.net.mode") == lines["connections.gw.children.net"]
    assert line_of(lines, "board[1].heartbeat_ms") == lines["board[1]"]
    assert line_of(lines, "nothing.here") is None
