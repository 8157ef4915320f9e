# cpython-only: boards are configured from TOML on the host; a board reads the generated board.json
"""Board profiles (boards/<name>.toml): link, limits, heartbeat, crypto.

`load(name_or_path)` reads and checks a profile; `board_config(profile)` turns it into the flat
dict the board core takes (and that `inv flash` writes to the board as board.json).
"""
import os
import tomllib

BOARDS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "boards")

# key: (type, required)
_SCHEMA = {
    "board": {"name": (str, True), "description": (str, False), "max_sas": (int, True),
              "max_frame": (int, True), "max_batch": (int, True), "host_silence_ms": (int, True),
              "reply_cache": (int, False), "wdt_ms": (int, False)},
    "link": {"kind": (str, True), "baud": (int, False), "rtscts": (bool, False), "uart": (int, False),
             "tx_pin": (int, False), "rx_pin": (int, False), "rts_pin": (int, False), "cts_pin": (int, False)},
    "heartbeat": {"period_ms": (int, True), "misses": (int, True)},
}


class ProfileError(ValueError):
    pass


def path_of(name):
    if os.sep in name or name.endswith(".toml"):
        return name
    return os.path.join(BOARDS_DIR, name + ".toml")


def names():
    return sorted(f[:-5] for f in os.listdir(BOARDS_DIR) if f.endswith(".toml"))


def load(name):
    """Read and check a profile; errors name the file and the key."""
    path = path_of(name)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ProfileError("no board profile %r (known: %s)" % (name, ", ".join(names()))) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError("%s: %s" % (path, e)) from None
    for table, keys in _SCHEMA.items():
        t = data.get(table)
        if not isinstance(t, dict):
            raise ProfileError("%s: missing table [%s]" % (path, table))
        for key, (typ, required) in keys.items():
            if key not in t:
                if required:
                    raise ProfileError("%s: missing key %s.%s" % (path, table, key))
                continue
            v = t[key]
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise ProfileError("%s: %s.%s must be %s, not %r" % (path, table, key, typ.__name__, v))
    b, hb = data["board"], data["heartbeat"]
    if hb["period_ms"] <= 0 or hb["misses"] <= 0:
        raise ProfileError("%s: heartbeat.period_ms and heartbeat.misses must be positive" % path)
    if b["host_silence_ms"] and b["host_silence_ms"] <= hb["period_ms"] * (hb["misses"] + 1):
        raise ProfileError("%s: board.host_silence_ms must exceed heartbeat.period_ms x (misses + 1), "
                           "or a healthy host would be taken for a silent one" % path)
    if b.get("wdt_ms") and b["name"].startswith("rp2040") and b["wdt_ms"] > 8388:
        raise ProfileError("%s: board.wdt_ms above the RP2040 maximum of 8388 ms" % path)
    if not 64 <= b["max_frame"] <= 65535:
        raise ProfileError("%s: board.max_frame must be within 64..65535" % path)
    data["_path"] = path
    return data


def board_config(profile):
    """The flat dict the board core reads (board.json on a real board)."""
    b = profile["board"]
    cfg = {"board_id": b["name"], "max_sas": b["max_sas"], "max_frame": b["max_frame"],
           "max_batch": b["max_batch"], "host_silence_ms": b["host_silence_ms"]}
    for k in ("reply_cache", "wdt_ms"):
        if k in b:
            cfg[k] = b[k]
    cfg["link"] = dict(profile["link"])
    return cfg
