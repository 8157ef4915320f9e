"""Which boards a reload keeps, re-opens, adds and removes (host/reload.py board_changes): a board
is unchanged only if its name, profile, port, heartbeat timers and link key (the key itself, not
only its file name) are; any other difference removes it and adds it anew."""
from firmware.link import keyfile
from host import config
from host.reload import board_changes

BOARD = '[[board]]\nname = "%s"\nlink_key = "%s"\nprofile = "%s"\nport = "%s"\n%s\n'
REST = '[daemon]\nlisten = "192.0.2.1"\n\n%s\n[connections.gw]\nremote_addrs = ["192.0.2.2"]\n' \
       'psk = "a long enough secret for tests"\n[connections.gw.local]\nauth = "psk"\nid = "a.test"\n' \
       '[connections.gw.remote]\nauth = "psk"\nid = "b.test"\n'


def boards(tmp_path, *specs):
    """A configuration's boards from (name, profile, port, extra lines) tuples; keys in tmp_path."""
    text = "".join(BOARD % (name, tmp_path / ("%s.key" % name), prof, port, extra) for name, prof, port, extra in specs)
    return config.loads(REST % text, path=str(tmp_path / "ikeoffloadd.toml")).boards


def test_boards_kept_changed_added_and_removed(tmp_path):
    for name in ("b0", "b1", "b2", "b3", "b4"):
        keyfile.ensure(str(tmp_path / ("%s.key" % name)))
    running = {}

    def key_of(b):
        return running[b.name]

    old = boards(tmp_path, ("b0", "sim", "/dev/pts/10", ""), ("b1", "sim", "/dev/pts/11", ""),
                 ("b2", "sim", "/dev/pts/12", ""), ("b3", "sim", "/dev/pts/13", ""),
                 ("b4", "sim", "/dev/pts/14", ""))
    for b in old:
        running[b.name] = keyfile.read(b.link_key)
    assert board_changes(old, old, key_of) == (["b0", "b1", "b2", "b3", "b4"], [], [], [])
    new = boards(tmp_path, ("b0", "sim", "/dev/pts/10", ""),                  # as it was
                 ("b1", "sim", "/dev/pts/21", ""),                            # another port
                 ("b2", "sim", "/dev/pts/12", "heartbeat_ms = 150"),          # other timers
                 ("b3", "esp32-devkitc", "/dev/pts/13", ""),                  # another profile
                 ("b5", "sim", "/dev/pts/15", ""))                            # b4 goes, b5 comes
    assert board_changes(old, new, key_of) == (["b0"], ["b1", "b2", "b3"], ["b5"], ["b4"])
    # the same file name with another key in it: the board must be opened with the new key
    (tmp_path / "b0.key").unlink()
    keyfile.ensure(str(tmp_path / "b0.key"))
    assert keyfile.read(str(tmp_path / "b0.key")) != running["b0"]
    assert board_changes(old, old, key_of)[1] == ["b0"]
