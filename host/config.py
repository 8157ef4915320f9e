"""ikeoffloadd configuration (TOML). Every error names the key and the line it is on.

    [daemon]
    control_socket = "/run/ikeoffload/control.sock"
    log_level = "info"                 # debug | info | warning | error
    listen = "192.0.2.1"               # address the IKE ports bind to
    flush_on_board_loss = true         # RFC 7296 §2.4: IKE SAs die with their board (see README)

    [dataplane]
    tun = "ikeo0"                      # plaintext side
    mtu = 1400
    routing_table = 220                # routes to remote selectors live here, with an ip rule
    replay_window = 64                 # ESP anti-replay window on the board (RFC 4303 §3.4.3)

    [[board]]                          # one per board; each is its own failure domain
    name = "b0"
    profile = "sim"                    # boards/<profile>.toml
    port = "/dev/ttyUSB0"              # pyserial URL: device, pty path or socket://host:port
    # heartbeat_ms = 100               # override the profile's heartbeat period and misses
    # misses = 3

    [ike]                              # engine settings (host/ike/README.md): ports, cookies,
    port = 500                         # INVALID_SPI, rate limits, ...
    natt_port = 4500
    unprotected_invalid_spi = false    # RFC 7296 §1.5 unprotected INVALID_SPI (a DoS magnet: off)
    [ike.retransmit]                   # IKE request retransmission (RFC 7296 §2.1, §2.4)
    timeout = 4.0
    base = 1.8
    tries = 5

    [connections.gw]                   # host/ike/config.py: swanctl.conf-like connections
    ...
"""
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from firmware import profiles
from host.ike.config import ConfigError as IkeConfigError
from host.ike.config import EngineSettings, RetransmitPolicy, parse_connections, parse_settings
from host.tomlpos import key_lines, line_of

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A bad setting: `key` is its dotted path, `line` where it is (or its table is) written."""

    def __init__(self, path, key, message, line=None):
        self.path, self.key, self.line, self.message = path, key, line, message
        where = "%s:%d" % (path, line) if line else str(path)
        super().__init__("%s: %s: %s" % (where, key, message))


@dataclass
class BoardConfig:
    name: str
    profile_name: str
    profile: dict
    port: str
    period: float
    misses: int


@dataclass
class DaemonConfig:
    path: str
    control_socket: str = "/run/ikeoffload/control.sock"
    log_level: str = "info"
    listen: str = "0.0.0.0"
    flush_on_board_loss: bool = True
    tun: str = "ikeo0"
    mtu: int = 1400
    routing_table: int = 220
    replay_window: int = 64
    boards: list = field(default_factory=list)
    connections: dict = field(default_factory=dict)
    engine: EngineSettings | None = None        # from [ike]
    retransmit: RetransmitPolicy | None = None  # from [ike.retransmit]

    @property
    def ike_port(self):
        return self.engine.port

    @property
    def natt_port(self):
        return self.engine.natt_port


# Liveness checks started by an unprotected INVALID_SPI (RFC 7296 §1.5) need not wait out the full
# IKE schedule: a live peer answers within one round trip. 0.5 s x 2^n, 3 retransmissions: a peer
# that lost its state is known in 7.5 s. [ike.hint_retransmit] overrides it.
HINT_RETRANSMIT = RetransmitPolicy(timeout=0.5, base=2.0, tries=3)

_DAEMON_KEYS = {"control_socket": str, "log_level": str, "listen": str, "flush_on_board_loss": bool}
_DATAPLANE_KEYS = {"tun": str, "mtu": int, "routing_table": int, "replay_window": int}
_BOARD_KEYS = {"name": str, "profile": str, "port": str, "heartbeat_ms": int, "misses": int}
_TOP = {"daemon", "dataplane", "board", "ike", "connections"}


def _typed(err, table, key_path, kinds, out):
    for k, v in table.items():
        kind = kinds.get(k)
        if kind is None:
            err("%s.%s" % (key_path, k), "unknown setting (known: %s)" % ", ".join(sorted(kinds)))
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            err("%s.%s" % (key_path, k), "must be %s, not %r" % (kind.__name__, v))
        out[k] = v


def loads(text, path="<config>", base=None):
    """Parse and check a whole configuration; raises ConfigError."""
    lines = key_lines(text)

    def err(key, message):
        raise ConfigError(path, key, message, line_of(lines, key))

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(path, "<toml>", str(e), int(m.group(1)) if m else None) from None
    for k in data:
        if k not in _TOP:
            err(k, "unknown table (known: %s)" % ", ".join(sorted(_TOP)))
    cfg = DaemonConfig(path=str(path))
    d = {}
    _typed(err, data.get("daemon", {}), "daemon", _DAEMON_KEYS, d)
    _typed(err, data.get("dataplane", {}), "dataplane", _DATAPLANE_KEYS, d)
    for k, v in d.items():
        setattr(cfg, k, v)
    if cfg.log_level not in LOG_LEVELS:
        err("daemon.log_level", "must be one of %s" % ", ".join(LOG_LEVELS))
    try:
        ipaddress.ip_address(cfg.listen)
    except ValueError:
        err("daemon.listen", "%r is not an IP address" % cfg.listen)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", cfg.tun):
        err("dataplane.tun", "must be a valid interface name (1-15 letters, digits, _ . -)")
    if not 576 <= cfg.mtu <= 9000:
        err("dataplane.mtu", "must be within 576..9000")
    if not 0 <= cfg.replay_window <= 1024:
        err("dataplane.replay_window", "must be within 0..1024 (RFC 4303 §3.4.3; the board's limit)")
    if not 1 <= cfg.routing_table <= 0xFFFFFFF0 or cfg.routing_table in (253, 254, 255):
        err("dataplane.routing_table", "must be a table id other than default/main/local")

    boards = data.get("board", [])
    if not isinstance(boards, list):
        err("board", "must be an array of tables: [[board]]")
    if not boards:
        err("board", "at least one [[board]] is needed: the ESP processor")
    names = set()
    for i, b in enumerate(boards):
        kp = "board[%d]" % i
        bd = {}
        _typed(err, b, kp, _BOARD_KEYS, bd)
        for need in ("name", "profile", "port"):
            if need not in bd:
                err("%s.%s" % (kp, need), "is required")
        if bd["name"] in names:
            err(kp + ".name", "duplicate board name %r" % bd["name"])
        names.add(bd["name"])
        try:
            prof = profiles.load(bd["profile"])
        except profiles.ProfileError as e:
            err(kp + ".profile", str(e))
        period = bd.get("heartbeat_ms", prof["heartbeat"]["period_ms"]) / 1000
        misses = bd.get("misses", prof["heartbeat"]["misses"])
        if period <= 0 or misses <= 0:
            err(kp + (".heartbeat_ms" if period <= 0 else ".misses"), "must be positive")
        silence = prof["board"]["host_silence_ms"] / 1000
        if silence and period * (misses + 1) >= silence:
            err(kp + ".heartbeat_ms", "heartbeat period x (misses + 1) = %.0f ms must stay below the board's "
                "host-silence limit of %.0f ms, or the board flushes a healthy host's SAs"
                % (period * (misses + 1) * 1000, silence * 1000))
        cfg.boards.append(BoardConfig(bd["name"], bd["profile"], prof, bd["port"], period, misses))

    base = Path(base) if base is not None else (Path(path).parent if path != "<config>" else None)
    try:
        cfg.connections = parse_connections(data.get("connections", {}), base)
        cfg.engine, cfg.retransmit = parse_settings(data.get("ike"))
    except IkeConfigError as e:
        msg = str(e)
        prefix = e.key + ": "
        err(e.key, msg[len(prefix):] if msg.startswith(prefix) else msg)
    if cfg.engine.port == cfg.engine.natt_port:
        err("ike.natt_port", "must differ from ike.port")
    if cfg.engine.hint_retransmit is None:
        cfg.engine.hint_retransmit = HINT_RETRANSMIT
    if cfg.engine.local_addr is None and cfg.listen not in ("0.0.0.0", "::"):
        cfg.engine.local_addr = cfg.listen
    return cfg


def load(path):
    path = os.fspath(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, "<file>", e.strerror or str(e)) from None
    return loads(text, path)
