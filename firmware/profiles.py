# cpython-only: boards are configured from TOML on the host; a board reads the generated board.json
"""Board profiles (boards/<name>.toml): MCU, link, pins, limits, watchdog, reset, heartbeat, crypto.

`load(name_or_path)` reads and checks a profile; every error names the file, the line and the key
(`boards/x.toml:14: link.tx_pin: ...`). `board_config(profile)` turns it into the flat dict the
board core and firmware/main.py take — what `inv flash` writes to the board as board.json.

Checks beyond types and ranges are the ones hardware imposes: RP2040 UART pin functions, the
RP2040 watchdog maximum (8388 ms), ESP32 input-only and flash pins, the PIO SPI program's pin
order, distinct pins, and host_silence_ms above one heartbeat period x (misses + 1).
"""
import os
import re
import tomllib

from firmware.link import messages as m

# A profile name is looked up in the shipped profiles (firmware/boards: a link to boards/ in a
# checkout, package data in an installed wheel), then in the router's own directory; a name with a
# path separator or ending in .toml is a path.
BOARDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boards")
LOCAL_BOARDS_DIR = "/etc/ikeoffload/boards"
BOARDS_DIRS = [BOARDS_DIR, LOCAL_BOARDS_DIR]

MCUS = ("esp32", "rp2040", "virtual", "sim")
LINK_KINDS = ("uart", "spi-pio", "vboard", "sim")
RESET_METHODS = ("rts-en", "rts", "dtr", "ftdi-gpio", "vboard", "emulator", "sim")
CRYPTO_BACKENDS = ("cryptolib", "pure", "cryptography")
RP2040_WDT_MAX_MS = 8388
ESP32_CPU_HZ = (80_000_000, 160_000_000, 240_000_000)   # what machine.freq() takes on an ESP32
PIO_SPI_MAX_HZ = 12_000_000   # the PIO program needs ~10 system clocks (125 MHz) per SPI bit

# transform name -> (ENCR id, key bits, INTEG id), as HELLO announces them (IKEv2 ids)
TRANSFORMS = {
    "aes-gcm-16-128": (m.ENCR_AES_GCM_16, 128, m.AUTH_NONE),
    "aes-gcm-16-256": (m.ENCR_AES_GCM_16, 256, m.AUTH_NONE),
    "aes-cbc-128+hmac-sha2-256-128": (m.ENCR_AES_CBC, 128, m.AUTH_HMAC_SHA2_256_128),
    "aes-cbc-256+hmac-sha2-256-128": (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_256_128),
    "chacha20-poly1305": (m.ENCR_CHACHA20_POLY1305, 256, m.AUTH_NONE),
    # only where hashlib has SHA-384/512: the CPython sim, no stock MicroPython board
    "aes-cbc-128+hmac-sha2-384-192": (m.ENCR_AES_CBC, 128, m.AUTH_HMAC_SHA2_384_192),
    "aes-cbc-256+hmac-sha2-384-192": (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_384_192),
    "aes-cbc-128+hmac-sha2-512-256": (m.ENCR_AES_CBC, 128, m.AUTH_HMAC_SHA2_512_256),
    "aes-cbc-256+hmac-sha2-512-256": (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_512_256),
}


class ProfileError(ValueError):
    pass


class _Int:
    def __init__(self, lo, hi, required=False):
        self.lo, self.hi, self.required = lo, hi, required

    def check(self, v):
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be an integer, not %r" % (v,)
        if not self.lo <= v <= self.hi:
            return "must be within %d..%d, not %d" % (self.lo, self.hi, v)
        return None


class _Float(_Int):
    def check(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "must be a number, not %r" % (v,)
        if not self.lo <= v <= self.hi:
            return "must be within %g..%g, not %g" % (self.lo, self.hi, v)
        return None


class _Bool:
    required = False

    def check(self, v):
        return None if isinstance(v, bool) else "must be true or false, not %r" % (v,)


class _Str:
    def __init__(self, required=False, choices=None):
        self.required, self.choices = required, choices

    def check(self, v):
        if not isinstance(v, str):
            return "must be a string, not %r" % (v,)
        if self.choices and v not in self.choices:
            return "must be one of %s, not %r" % (", ".join(self.choices), v)
        return None


class _Cost:
    """[µs per packet, µs per 1000 bytes of packet]: a transform's time on the board's CPU."""
    required = False

    def check(self, v):
        if (not isinstance(v, list) or len(v) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 10_000_000 for x in v)):
            return "must be [microseconds per packet, microseconds per 1000 bytes], not %r" % (v,)
        return None


class _AnyOf:
    """A table whose keys are any of `choices`, each checked by `checker`."""

    def __init__(self, choices, checker):
        self.choices, self.checker = choices, checker


class _List:
    required = False

    def __init__(self, choices):
        self.choices = choices

    def check(self, v):
        if not isinstance(v, list):
            return "must be a list, not %r" % (v,)
        for x in v:
            if x not in self.choices:
                return "unknown entry %r (known: %s)" % (x, ", ".join(sorted(self.choices)))
        return None


_PIN = _Int(0, 48)

# table -> key -> checker; a table not marked required may be absent
SCHEMA = {
    "board": {
        "name": _Str(True), "description": _Str(), "mcu": _Str(True, MCUS),
        "max_sas": _Int(1, 4096, True), "max_frame": _Int(64, 65535, True), "max_batch": _Int(1, 1024, True),
        "host_silence_ms": _Int(0, 3_600_000, True), "reply_cache": _Int(2, 1024),
        "wdt_ms": _Int(0, 600_000), "wdt_keeper_timer": _Int(-1, 3),
        "cpu_hz": _Int(1_000_000, 400_000_000),
    },
    "link": {
        "kind": _Str(True, LINK_KINDS), "baud": _Int(0, 12_000_000), "rtscts": _Bool(),
        "uart": _Int(0, 2), "tx_pin": _PIN, "rx_pin": _PIN, "rts_pin": _PIN, "cts_pin": _PIN,
        "rxbuf": _Int(64, 65536), "txbuf": _Int(64, 65536), "same_port_as_repl": _Bool(),
        "data_budget_ms": _Int(1, 10_000), "auth": _Bool(),
    },
    "spi": {
        "sck_pin": _PIN, "mosi_pin": _PIN, "miso_pin": _PIN, "cs_pin": _PIN, "data_ready_pin": _PIN,
        "pio": _Int(0, 1), "sm": _Int(0, 3), "clock_hz": _Int(1000, 30_000_000), "mode": _Int(0, 3),
        "block_size": _Int(64, 4096), "gap_us": _Int(0, 1_000_000), "poll_ms": _Int(1, 60_000),
        "host": None,  # sub-table, below
    },
    "spi.host": {
        "ftdi_url": _Str(), "cs": _Int(0, 4), "data_ready_gpio": _Int(4, 15), "reset_gpio": _Int(4, 15),
        "data_ready_poll_us": _Int(50, 100_000),
    },
    "reset": {"method": _Str(True, RESET_METHODS), "pulse_ms": _Int(1, 10_000), "boot_ms": _Int(0, 60_000)},
    "heartbeat": {"period_ms": _Int(1, 600_000, True), "misses": _Int(1, 100, True)},
    "crypto": {"backend": _Str(False, CRYPTO_BACKENDS), "fast": _List(TRANSFORMS), "cost_us": None},
    "crypto.cost_us": _AnyOf(TRANSFORMS, _Cost()),
    "bench": {"scale": _Float(0.001, 1.0), "rto_min_ms": _Int(1, 10_000), "fast_period_ms": _Int(1, 10_000)},
}
REQUIRED_TABLES = ("board", "link", "heartbeat", "reset")


def path_of(name):
    if os.sep in name or name.endswith(".toml"):
        return name
    for d in BOARDS_DIRS:
        path = os.path.join(d, name + ".toml")
        if os.path.exists(path):
            return path
    return os.path.join(BOARDS_DIR, name + ".toml")


def names():
    found = set()
    for d in BOARDS_DIRS:
        if os.path.isdir(d):
            found.update(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))
    return sorted(found)


_TABLE_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _line_of(text, dotted):
    """1-based line of `table.key` (or of `[table]`) in a profile, 0 if not found."""
    table, _, key = dotted.rpartition(".")
    current = None
    for no, line in enumerate(text.splitlines(), 1):
        t = _TABLE_RE.match(line)
        if t:
            current = t.group(1)
            if current == dotted:
                return no
            continue
        k = _KEY_RE.match(line)
        if k and current == table and k.group(1) == key:
            return no
    return 0


class _Checker:
    def __init__(self, path, text):
        self.path, self.text = path, text

    def fail(self, key, msg):
        line = _line_of(self.text, key) if key else 0
        where = "%s:%d" % (self.path, line) if line else self.path
        raise ProfileError("%s: %s: %s" % (where, key, msg) if key else "%s: %s" % (where, msg))


def load(name):
    """Read and check a profile; errors name the file, the line and the key."""
    path = path_of(name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProfileError("no board profile %r (known: %s)" % (name, ", ".join(names()))) from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError("%s: %s" % (path, e)) from None
    c = _Checker(path, text)
    _check_schema(c, data)
    _check_semantics(c, data)
    data["_path"] = path
    data["_name"] = os.path.basename(path)[:-5]
    return data


def _check_schema(c, data):
    for table in data:
        if table not in SCHEMA:
            known = ", ".join(k for k in SCHEMA if "." not in k)
            c.fail(table, "unknown table [%s] (known: %s)" % (table, known))
    for table in REQUIRED_TABLES:
        if not isinstance(data.get(table), dict):
            c.fail(table, "missing table [%s]" % table)
    for table, keys in SCHEMA.items():
        parent, _, sub = table.partition(".")
        t = data.get(parent)
        if sub:
            t = t.get(sub) if isinstance(t, dict) else None
        if t is None:
            continue
        if not isinstance(t, dict):
            c.fail(table, "must be a table")
        if isinstance(keys, _AnyOf):
            for key, v in t.items():
                if key not in keys.choices:
                    c.fail("%s.%s" % (table, key), "unknown transform (known: %s)" % ", ".join(sorted(keys.choices)))
                err = keys.checker.check(v)
                if err:
                    c.fail("%s.%s" % (table, key), err)
            continue
        for key, v in t.items():
            if key not in keys:
                c.fail("%s.%s" % (table, key), "unknown key (known: %s)" % ", ".join(sorted(keys)))
            chk = keys[key]
            if chk is None:
                continue      # a sub-table, checked on its own
            err = chk.check(v)
            if err:
                c.fail("%s.%s" % (table, key), err)
        for key, chk in keys.items():
            if chk is not None and chk.required and key not in t:
                c.fail("%s.%s" % (table, key), "missing (required)")


# RP2040 GPIO n carries UART((n + 4) >> 3 & 1) signal TX/RX/CTS/RTS by n & 3 (datasheet 1.4.3)
_RP2_UART_SIGNAL = ("tx_pin", "rx_pin", "cts_pin", "rts_pin")


def _check_semantics(c, data):
    b, link, hb, rst = data["board"], data["link"], data["heartbeat"], data["reset"]
    mcu, kind = b["mcu"], link["kind"]
    if b["host_silence_ms"] and b["host_silence_ms"] <= hb["period_ms"] * (hb["misses"] + 1):
        c.fail("board.host_silence_ms", "must exceed heartbeat.period_ms x (misses + 1) = %d, or a healthy "
               "host would be taken for a silent one" % (hb["period_ms"] * (hb["misses"] + 1)))
    wdt = b.get("wdt_ms", 0)
    cpu = b.get("cpu_hz")
    if cpu is not None and mcu == "esp32" and cpu not in ESP32_CPU_HZ:
        c.fail("board.cpu_hz", "an ESP32 runs at %s Hz, not %d" % (", ".join(str(f) for f in ESP32_CPU_HZ), cpu))
    if mcu == "rp2040" and wdt > RP2040_WDT_MAX_MS:
        c.fail("board.wdt_ms", "above the RP2040 watchdog maximum of %d ms" % RP2040_WDT_MAX_MS)
    if mcu in ("esp32", "rp2040", "virtual") and not wdt:
        c.fail("board.wdt_ms", "a board must run its watchdog (machine.WDT): set a timeout")
    if wdt and wdt <= hb["period_ms"] * (hb["misses"] + 1) and mcu != "sim":
        c.fail("board.wdt_ms", "must exceed heartbeat.period_ms x (misses + 1): a hung board must be seen "
               "missing heartbeats before its watchdog resets it")
    allowed_links = {"esp32": ("uart",), "rp2040": ("uart", "spi-pio"), "virtual": ("vboard",),
                     "sim": ("sim",)}
    if kind not in allowed_links[mcu]:
        c.fail("link.kind", "%r is not a link a %s board has (possible: %s)"
               % (kind, mcu, ", ".join(allowed_links[mcu])))
    if kind == "uart":
        for key in ("uart", "tx_pin", "rx_pin", "baud"):
            if key not in link:
                c.fail("link." + key, "missing (required for a UART link)")
        if link["baud"] <= 0:
            c.fail("link.baud", "must be positive for a UART link")
        if link.get("rtscts"):
            for key in ("rts_pin", "cts_pin"):
                if key not in link:
                    c.fail("link." + key, "missing (link.rtscts = true needs both flow-control pins)")
    if kind == "spi-pio":
        spi = data.get("spi")
        if not isinstance(spi, dict):
            c.fail("spi", "missing table [spi] (required for an spi-pio link)")
        for key in ("sck_pin", "mosi_pin", "miso_pin", "cs_pin", "data_ready_pin", "clock_hz", "block_size"):
            if key not in spi:
                c.fail("spi." + key, "missing (required for an spi-pio link)")
        if spi["sck_pin"] != spi["mosi_pin"] + 1 or spi["cs_pin"] != spi["mosi_pin"] + 2:
            c.fail("spi.sck_pin", "the PIO program reads MOSI, SCK and CS as consecutive pins: need "
                   "sck_pin = mosi_pin + 1 and cs_pin = mosi_pin + 2 (mosi_pin = %d)" % spi["mosi_pin"])
        if spi.get("mode", 0) != 0:
            c.fail("spi.mode", "the PIO peripheral program implements SPI mode 0 only")
        if spi["clock_hz"] > PIO_SPI_MAX_HZ:
            c.fail("spi.clock_hz", "above %d Hz, the most the PIO peripheral program samples reliably"
                   % PIO_SPI_MAX_HZ)
        if spi["block_size"] % 4:
            c.fail("spi.block_size", "must be a multiple of 4")
    _check_pins(c, data)
    method = rst["method"]
    # "emulator": the emulated RP2040's control socket (tools/rp2040)
    allowed_resets = {"esp32": ("rts-en", "rts", "dtr", "ftdi-gpio"), "rp2040": ("ftdi-gpio", "rts", "dtr", "emulator"),
                      "virtual": ("vboard",), "sim": ("sim",)}
    if method not in allowed_resets[mcu]:
        c.fail("reset.method", "%r cannot reset a %s board (possible: %s)"
               % (method, mcu, ", ".join(allowed_resets[mcu])))
    if method == "ftdi-gpio" and "reset_gpio" not in data.get("spi", {}).get("host", {}):
        c.fail("reset.method", "ftdi-gpio needs spi.host.reset_gpio (the adapter pin wired to RUN/EN)")


def _check_pins(c, data):
    mcu, link = data["board"]["mcu"], data["link"]
    pins = {}
    if link["kind"] == "uart":
        for key in ("tx_pin", "rx_pin", "rts_pin", "cts_pin"):
            if key in link and (key in ("tx_pin", "rx_pin") or link.get("rtscts")):
                pins["link." + key] = link[key]
    if link["kind"] == "spi-pio":
        for key in ("mosi_pin", "sck_pin", "cs_pin", "miso_pin", "data_ready_pin"):
            pins["spi." + key] = data["spi"][key]
    seen = {}
    for key, pin in pins.items():
        if pin in seen:
            c.fail(key, "GPIO %d is already %s" % (pin, seen[pin]))
        seen[pin] = key
        if mcu == "rp2040" and pin > 29:
            c.fail(key, "the RP2040 has GPIO 0..29, not %d" % pin)
        if mcu == "esp32":
            if pin > 39:
                c.fail(key, "the ESP32 has GPIO 0..39, not %d" % pin)
            if 6 <= pin <= 11:
                c.fail(key, "GPIO 6..11 are wired to the module's SPI flash")
            if pin >= 34 and key.split(".")[1] in ("tx_pin", "rts_pin"):
                c.fail(key, "GPIO 34..39 are input-only on the ESP32")
    if mcu == "rp2040" and link["kind"] == "uart":
        for key in _RP2_UART_SIGNAL:
            if "link." + key not in pins:
                continue
            pin = link[key]
            unit, signal = (pin + 4) >> 3 & 1, _RP2_UART_SIGNAL[pin & 3]
            if unit != link["uart"] or signal != key:
                c.fail("link." + key, "GPIO %d is UART%d %s on the RP2040, not UART%d %s"
                       % (pin, unit, signal[:-4].upper(), link["uart"], key[:-4].upper()))
    if mcu == "esp32" and link["kind"] == "uart" and link["uart"] == 0 and not link.get("same_port_as_repl"):
        c.fail("link.uart", "UART0 carries the REPL on the ESP32: use UART1/2, or set "
               "link.same_port_as_repl = true")


def fast_transforms(profile):
    """The (encr, key bits, integ) triples the profile says its crypto backend makes fast."""
    return {TRANSFORMS[n] for n in profile.get("crypto", {}).get("fast", [])}


def board_config(profile):
    """The flat dict the board core and firmware/main.py read (board.json on a real board)."""
    b = profile["board"]
    cfg = {"board_id": b["name"], "mcu": b["mcu"], "max_sas": b["max_sas"], "max_frame": b["max_frame"],
           "max_batch": b["max_batch"], "host_silence_ms": b["host_silence_ms"]}
    for k in ("reply_cache", "wdt_ms", "wdt_keeper_timer", "cpu_hz"):
        if k in b:
            cfg[k] = b[k]
    cfg["link"] = dict(profile["link"])
    cfg["link_auth"] = link_auth(profile)    # firmware/main.py: serve no link without the key
    if profile["link"]["kind"] == "spi-pio":
        cfg["spi"] = {k: v for k, v in profile["spi"].items() if k != "host"}
    backend = profile.get("crypto", {}).get("backend")
    if backend:
        cfg["crypto"] = backend      # firmware/esp.py make_board: the backend to load
    return cfg


def link_auth(profile):
    """Whether the board's link is authenticated (link.auth, on unless a profile says false):
    the board and its host then need the board's link key (docs/link-protocol.md)."""
    return profile["link"].get("auth", True)


# ---- what the board can carry: the host's admission and liveness, the sim's speed ----------------

DEFAULT_DATA_BUDGET = 0.25       # of a heartbeat period, when the profile states no data_budget_ms


def link_rate(profile):
    """Payload bytes per second the link carries each way (None: no limit, a pty or socket).

    UART: baud / 10 (8N1). SPI (full duplex): one block each way per transaction of
    block_size x 8 / clock_hz seconds plus the host's gap, minus the block's header and CRC."""
    link = profile["link"]
    if link["kind"] == "spi-pio":
        spi = profile["spi"]
        size = spi["block_size"]
        t = size * 8 / spi["clock_hz"] + spi.get("gap_us", 0) / 1e6
        return (size - 14) / t
    baud = link.get("baud") or 0
    return baud / 10 if baud else None


def cpu_costs(profile):
    """(encr, key bits, integ) -> (seconds per packet, seconds per byte) on the board's CPU, from
    [crypto.cost_us]; transforms not listed cost nothing (the sim, whose CPU is the host's)."""
    out = {}
    for name, (per_packet, per_kb) in profile.get("crypto", {}).get("cost_us", {}).items():
        out[TRANSFORMS[name]] = (per_packet / 1e6, per_kb / 1e9)
    return out


def packet_time(costs, transform, nbytes):
    """Seconds the board's CPU spends on one packet of `nbytes` with `transform`."""
    c = costs.get(transform)
    return c[0] + c[1] * nbytes if c else 0.0


def data_budget(profile):
    """Seconds of link-or-board time the host keeps in flight as data (docs/link-protocol.md):
    what a heartbeat may have to wait behind, in either direction."""
    ms = profile["link"].get("data_budget_ms")
    if ms:
        return ms / 1000
    return DEFAULT_DATA_BUDGET * profile["heartbeat"]["period_ms"] / 1000


def loss_bound(profile, period=None, misses=None):
    """Seconds from a board hanging to the host declaring it lost, at the worst: `misses`
    heartbeats unanswered each within period + slack, the slack being the data in flight ahead
    of a heartbeat and of its ack (data_budget), one data reply frame already on the wire, and
    the longest single packet the board may be working on when it arrives."""
    hb = profile["heartbeat"]
    period = hb["period_ms"] / 1000 if period is None else period
    misses = hb["misses"] if misses is None else misses
    return (misses + 1) * period + heartbeat_slack(profile)


def heartbeat_slack(profile, budget=None):
    """The most a healthy board's heartbeat ack can be late: data in flight, one frame, one step."""
    rate = link_rate(profile)
    frame = profile["board"]["max_frame"] / rate if rate else 0.0
    costs = cpu_costs(profile)
    mtu = 1500
    step = max((packet_time(costs, t, mtu) for t in costs), default=0.0)
    return (data_budget(profile) if budget is None else budget) + frame + step
