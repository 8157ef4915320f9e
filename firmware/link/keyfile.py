# cpython-only: link key files on the host (a board reads its own with firmware/main.py)
"""The link key's file (docs/link-protocol.md, "Link security"): 64 hex digits and a newline, mode
0600. `inv flash` makes one per board (or keeps the one named) and writes it to the board's flash;
the daemon's [[board]] link_key names the host's copy; the simulator takes one with --link-key.
"""
import os
import stat

from firmware.link import auth


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, open to others or not a link key; says which."""


def read(path):
    """The key in `path`; refused when group or others may read or write it (as ssh refuses a
    private key others can read: the key is the link's whole security)."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(4096)
    except OSError as e:
        raise KeyFileError("%s: %s" % (path, e.strerror or e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError("%s: not a regular file" % path)
    if st.st_mode & 0o077:
        raise KeyFileError("%s: mode %03o lets others read the link key: chmod 600 %s"
                           % (path, st.st_mode & 0o777, path))
    try:
        return auth.parse_key(text)
    except auth.KeyError_ as e:
        raise KeyFileError("%s: %s" % (path, e)) from None


def create(path, random_bytes=os.urandom):
    """A new random key in `path` (which must not exist), mode 0600 from the start; its
    directory is made 0700 if missing. Returns the key."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        key = bytes(random_bytes(auth.KEY_LEN))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyFileError("%s: cannot create it: %s" % (path, e.strerror or e)) from None
    with os.fdopen(fd, "w") as f:
        f.write(auth.key_text(key))
    return key


def ensure(path):
    """The key in `path`, made first if the file does not exist. Returns (key, created)."""
    if os.path.lexists(path):
        return read(path), False
    return create(path), True
