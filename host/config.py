"""ikeoffloadd configuration (TOML). Every error names the key and the line it is on; settings that
cannot work are errors, doubtful ones that can (two Child SAs for the same traffic) warnings.

    [daemon]
    control_socket = "/run/ikeoffload/control.sock"
    log_level = "info"                 # debug | info | warning | error
    log_levels = { ike = "debug" }     # per subsystem: daemon ike board dataplane control (host/logs.py)
    listen = "192.0.2.1"               # address(es) the IKE ports bind to: ["192.0.2.1", "2001:db8::1"]
    metrics = "127.0.0.1:9466"         # OpenMetrics over HTTP (host/metrics.py; needs prometheus_client)
    flush_on_board_loss = true         # RFC 7296 §2.4: IKE SAs die with their board (see README)

    [dataplane]
    tun = "ikeo0"                      # plaintext side
    mtu = 1400
    routing_table = 210                # routes to remote selectors live here (strongSwan's is 220) ...
    rule_priority = 210                # ... looked up by a rule "not fwmark FWMARK" at this priority
    fwmark = 0x494b4f                  # on the daemon's own sockets: IKE and ESP never enter the tunnel
    route_protocol = 149               # tags the daemon's routes and rules ("proto 149"): only those are touched
    replay_window = 64                 # ESP anti-replay window on the board (RFC 4303 §3.4.3)

    [[board]]                          # one per board; each is its own failure domain
    name = "b0"
    profile = "sim"                    # boards/<profile>.toml
    port = "/dev/ttyUSB0"              # pyserial URL: device, pty path or socket://host:port
    link_key = "private/b0.key"        # the board's link key (`inv flash --link-key`): private/ beside this file
    # heartbeat_ms = 100               # override the profile's heartbeat period and misses
    # misses = 3

    [ha]                               # active/standby with keepalived (host/ha.py, README "HA")
    enabled = false                    # true: standby until `ikeoffloadctl ha master`
    track_file = "/run/ikeoffload/ha-health"   # keepalived's track_file: 0 healthy, 1 not (host/ha_track_file.py);
                                       # default: ha-health beside daemon.control_socket

    [ike]                              # engine settings (host/ike/README.md): ports, cookies,
    port = 500                         # INVALID_SPI, rate limits, ...
    natt_port = 4500
    unprotected_invalid_spi = false    # RFC 7296 §1.5 unprotected INVALID_SPI (a DoS magnet: off; on with [ha])
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
from host.ike import pki
from host.ike.config import ConfigError as IkeConfigError
from host.ike.config import EngineSettings, RetransmitPolicy, parse_connections, parse_settings
from host.ike.constants import Integ, Prf, TsType
from host.ike.proposals import OffloadCapabilities, esp_keyword, filter_child_specs
from host.logs import LEVELS as LOG_LEVELS
from host.logs import SUBSYSTEMS
from host.offload import port_names
from host.tomlpos import key_lines, line_of


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
    link_key: str | None = None    # the key file's path (read at start: host/preflight.py, daemon)


@dataclass
class DaemonConfig:
    path: str
    control_socket: str = "/run/ikeoffload/control.sock"
    log_level: str = "info"
    log_levels: dict = field(default_factory=dict)   # subsystem -> level (host/logs.py)
    listen_addrs: list = field(default_factory=lambda: ["0.0.0.0"])     # daemon.listen
    metrics: str | None = None                       # "HOST:PORT" of the OpenMetrics endpoint, None: off
    flush_on_board_loss: bool = True
    ha: bool = False                   # [ha] enabled: keepalived decides when IKE runs here
    ha_track_file: str | None = None   # [ha] track_file: the health keepalived watches (set whenever ha is)
    tun: str = "ikeo0"
    mtu: int = 1400
    routing_table: int = 210
    rule_priority: int = 210
    fwmark: int = 0x494B4F
    route_protocol: int = 149
    replay_window: int = 64
    boards: list = field(default_factory=list)
    connections: dict = field(default_factory=dict)
    engine: EngineSettings | None = None        # from [ike]
    retransmit: RetransmitPolicy | None = None  # from [ike.retransmit]
    warnings: list = field(default_factory=list)            # "file:line: key: message": legal, but doubtful
    lines: dict = field(default_factory=dict, repr=False)   # key -> line, for errors met at run time

    @property
    def listen(self):
        """The first address IKE is bound to (what a connection without local_addrs uses)."""
        return self.listen_addrs[0]

    @listen.setter
    def listen(self, value):
        self.listen_addrs = [value] if isinstance(value, str) else list(value)

    def error(self, key, message):
        """A ConfigError naming this file, the line of ``key`` and ``key`` (for run-time failures)."""
        return ConfigError(self.path, key, message, line_of(self.lines, key))

    @property
    def ike_port(self):
        return self.engine.port

    @property
    def natt_port(self):
        return self.engine.natt_port


# Liveness checks started or hastened by an unprotected INVALID_SPI or INVALID_IKE_SPI (RFC 7296
# §1.5, §2.21.4) need not wait out the full IKE schedule: a live peer answers within one round
# trip, and whoever can forge such a hint sits on the path and could as well drop the genuine
# answers, so a short schedule gives a forger nothing new (host/ike/invalid_spi.py). 0.15 s x 2^n,
# 2 retransmissions: a peer that lost its state is known 1.05 s after the hint (an HA failover
# then costs the VRRP takeover + ~1.1 s); three sends keep a live peer whose round trip is under
# a second. [ike.hint_retransmit] overrides it.
HINT_RETRANSMIT = RetransmitPolicy(timeout=0.15, base=2.0, tries=2)

_DAEMON_KEYS = {"control_socket": str, "log_level": str, "listen": (str, list), "flush_on_board_loss": bool,
                "log_levels": dict, "metrics": str}
_DATAPLANE_KEYS = {"tun": str, "mtu": int, "routing_table": int, "rule_priority": int, "fwmark": int,
                   "route_protocol": int, "replay_window": int}
# rtnetlink protocol numbers that name other programs' routes (iproute2's rt_protos, linux/rtnetlink.h)
RESERVED_ROUTE_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
                            10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
                            17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis",
                            188: "ospf", 189: "rip", 192: "eigrp"}
_BOARD_KEYS = {"name": str, "profile": str, "port": str, "heartbeat_ms": int, "misses": int, "link_key": str}
_HA_KEYS = {"enabled": bool, "track_file": str}
_TOP = {"daemon", "dataplane", "board", "ike", "connections", "ha"}
_TABLES = ("daemon", "dataplane", "ike", "connections", "ha")
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL (unix(7))
UNIX_PATH_MAX = 107
# pyserial URL handlers a board port may name; ftdi:// is an SPI adapter (pyftdi), for spi-pio boards
SERIAL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep", "cp2110")
# Every board firmware runs these (firmware/esp.py transforms(); its HELLO confirms them at run time):
# a Child SA whose ESP proposals hold none of them can never be installed.
BOARD_CAPABILITIES = OffloadCapabilities(frozenset(profiles.TRANSFORMS.values()), esn=True)
BOARD_PROPOSALS = ", ".join(esp_keyword(*t) for t in profiles.TRANSFORMS.values())


def _kind(v):
    return "an array" if isinstance(v, list) else "a table" if isinstance(v, dict) else "%s %r" % (
        type(v).__name__, v)


def _typed(err, table, key_path, kinds, out):
    for k, v in table.items():
        kind = kinds.get(k)
        if kind is None:
            err("%s.%s" % (key_path, k), "unknown setting (known: %s)" % ", ".join(sorted(kinds)))
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            names = " or ".join(("an array" if t is list else t.__name__) for t in (kind if isinstance(kind, tuple)
                                                                                    else (kind,)))
            err("%s.%s" % (key_path, k), "must be %s, not %r" % (names, v))
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
    for k in _TABLES:
        if k in data and not isinstance(data[k], dict):
            err(k, "must be a table [%s], not %s" % (k, _kind(data[k])))
    cfg = DaemonConfig(path=str(path), lines=lines)

    def warn(key, message):
        where = "%s:%d" % (path, line_of(lines, key)) if line_of(lines, key) else str(path)
        cfg.warnings.append("%s: %s: %s" % (where, key, message))
    d = {}
    _typed(err, data.get("daemon", {}), "daemon", _DAEMON_KEYS, d)
    _typed(err, data.get("dataplane", {}), "dataplane", _DATAPLANE_KEYS, d)
    for k, v in d.items():
        setattr(cfg, k, v)
    ha = {}
    _typed(err, data.get("ha", {}), "ha", _HA_KEYS, ha)
    cfg.ha = ha.get("enabled", False)
    if cfg.ha and any(a in ("0.0.0.0", "::") for a in cfg.listen_addrs):
        err("ha.enabled", "needs daemon.listen = the virtual address(es) keepalived moves (not a wildcard)")
    if "track_file" in ha:
        tf = ha["track_file"]
        if not cfg.ha:
            err("ha.track_file", "only with [ha] enabled = true: keepalived reads it to judge this router")
        if not os.path.isabs(tf) or tf.endswith("/") or os.path.basename(tf) in (".", ".."):
            err("ha.track_file", "must be the absolute path of a file (keepalived's track_file), not %r" % tf)
        cfg.ha_track_file = os.path.normpath(tf)
    ha_track_file_default = cfg.ha and "track_file" not in ha
    if cfg.log_level not in LOG_LEVELS:
        err("daemon.log_level", "must be one of %s" % ", ".join(LOG_LEVELS))
    for sub, level in cfg.log_levels.items():
        if sub not in SUBSYSTEMS:
            err("daemon.log_levels.%s" % sub, "unknown subsystem (known: %s)" % ", ".join(SUBSYSTEMS))
        if level not in LOG_LEVELS:
            err("daemon.log_levels.%s" % sub, "must be one of %s, not %r" % (", ".join(LOG_LEVELS), level))
    if cfg.metrics is not None:
        try:
            metrics_address(cfg.metrics)
        except ValueError as e:
            err("daemon.metrics", str(e))
    if not os.path.isabs(cfg.control_socket):
        err("daemon.control_socket", "must be an absolute path, not %r" % cfg.control_socket)
    if len(os.fsencode(cfg.control_socket)) > UNIX_PATH_MAX:
        err("daemon.control_socket", "%d bytes long: a unix socket path holds at most %d"
            % (len(os.fsencode(cfg.control_socket)), UNIX_PATH_MAX))
    if ha_track_file_default:       # beside the control socket, where packaging/keepalived.conf looks
        cfg.ha_track_file = os.path.join(os.path.dirname(cfg.control_socket), "ha-health")
    raw = d.get("listen", cfg.listen_addrs)
    addrs = [raw] if isinstance(raw, str) else raw
    if not addrs:
        err("daemon.listen", "needs at least one address")
    for i, a in enumerate(addrs):
        key = "daemon.listen" if isinstance(raw, str) else "daemon.listen[%d]" % i
        try:
            if not isinstance(a, str):
                raise ValueError
            ipaddress.ip_address(a)
        except ValueError:
            err(key, "%r is not an IP address" % (a,))
        if a in addrs[:i]:
            err(key, "%s is listed twice" % a)
    cfg.listen_addrs = list(addrs)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", cfg.tun):
        err("dataplane.tun", "must be a valid interface name (1-15 letters, digits, _ . -)")
    if not 576 <= cfg.mtu <= 9000:
        err("dataplane.mtu", "must be within 576..9000")
    if not 0 <= cfg.replay_window <= 1024:
        err("dataplane.replay_window", "must be within 0..1024 (RFC 4303 §3.4.3; the board's limit)")
    if not 1 <= cfg.routing_table <= 0xFFFFFFF0 or cfg.routing_table in (253, 254, 255):
        err("dataplane.routing_table", "must be a table id other than default/main/local")
    if not 1 <= cfg.rule_priority <= 32765:
        err("dataplane.rule_priority", "must be within 1..32765 (0 is the local table's, 32766 main's)")
    if not 1 <= cfg.fwmark <= 0xFFFFFFFF:
        err("dataplane.fwmark", "must be within 1..0xFFFFFFFF (the mark on the daemon's own packets)")
    if not 0 <= cfg.route_protocol <= 255 or cfg.route_protocol in RESERVED_ROUTE_PROTOCOLS:
        err("dataplane.route_protocol", "must be a number within 0..255 that no other routing program uses "
            "(not %s)" % ("%d: %s" % (cfg.route_protocol, RESERVED_ROUTE_PROTOCOLS[cfg.route_protocol])
                          if cfg.route_protocol in RESERVED_ROUTE_PROTOCOLS else cfg.route_protocol))

    boards = data.get("board", [])
    if not isinstance(boards, list):
        err("board", "must be an array of tables: [[board]]")
    if not boards:
        err("board", "at least one [[board]] is needed: the ESP processor")
    names = set()
    ports = {}
    base = Path(base) if base is not None else (Path(path).parent if path != "<config>" else None)
    for i, b in enumerate(boards):
        kp = "board[%d]" % i
        if not isinstance(b, dict):
            err(kp, "must be a table [[board]] with name, profile and port, not %s" % _kind(b))
        bd = {}
        _typed(err, b, kp, _BOARD_KEYS, bd)
        for need in ("name", "profile", "port"):
            if need not in bd:
                err("%s.%s" % (kp, need), "is required")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", bd["name"]):
            err(kp + ".name", "must be 1-32 letters, digits, _ . : -, not %r" % bd["name"])
        if bd["name"] in names:
            err(kp + ".name", "duplicate board name %r" % bd["name"])
        names.add(bd["name"])
        try:
            prof = profiles.load(bd["profile"])
        except (profiles.ProfileError, OSError, ValueError) as e:
            err(kp + ".profile", str(e))
        _check_port(err, kp + ".port", bd["port"], prof)
        if port_names.renumbered(bd["port"]):
            warn(kp + ".port", "%s is numbered in plug order: after a replug or a reboot it may name another "
                 "device, and the daemon would speak its link protocol to it; name the board by its %s/ "
                 "link (`ls -l %s/`)" % (bd["port"], port_names.BY_ID, port_names.BY_ID))
        same = ports.get(_port_identity(bd["port"]))
        if same is not None:
            err(kp + ".port", "%s is board[%d]'s port already: one board, one port" % (bd["port"], same))
        ports[_port_identity(bd["port"])] = i
        period = bd.get("heartbeat_ms", prof["heartbeat"]["period_ms"]) / 1000
        misses = bd.get("misses", prof["heartbeat"]["misses"])
        if not 0.001 <= period <= 600:
            err(kp + ".heartbeat_ms", "must be within 1..600000")
        if not 1 <= misses <= 100:
            err(kp + ".misses", "must be within 1..100")
        silence = prof["board"]["host_silence_ms"] / 1000
        if silence and period * (misses + 1) >= silence:
            err(kp + ".heartbeat_ms", "heartbeat period x (misses + 1) = %.0f ms must stay below the board's "
                "host-silence limit of %.0f ms, or the board flushes a healthy host's SAs"
                % (period * (misses + 1) * 1000, silence * 1000))
        key = None
        if profiles.link_auth(prof):
            if not bd.get("link_key", "").strip():
                err(kp + ".link_key", "is required: profile %s authenticates its link with the board's key; name "
                    "the file `inv flash --link-key FILE` wrote (e.g. private/%s.key)" % (prof["_name"], bd["name"]))
            key = str(pki.locate(base, "link_key", bd["link_key"]))
        elif "link_key" in bd:
            err(kp + ".link_key", "profile %s has an open link (link.auth = false): it uses no key" % prof["_name"])
        cfg.boards.append(BoardConfig(bd["name"], bd["profile"], prof, bd["port"], period, misses, key))

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
    if cfg.ha and "unprotected_invalid_spi" not in (data.get("ike") or {}):
        # after a failover the peers' ESP reaches a router that has none of their SAs: telling
        # them at once (rate-limited) makes them check now instead of after their dpd_delay
        cfg.engine.unprotected_invalid_spi = True
    if cfg.engine.local_addr is None and cfg.listen not in ("0.0.0.0", "::"):
        cfg.engine.local_addr = cfg.listen
    _check_connections(cfg, err, warn)
    return cfg


def metrics_address(text):
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> (host, port); ValueError says what is wrong."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        raise ValueError("must be HOST:PORT (e.g. 127.0.0.1:9466, [::1]:9466), not %r" % text)
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("%r is not an IP address (the endpoint binds one address)" % host) from None
    if not 1 <= int(port) <= 65535:
        raise ValueError("port %s is not within 1..65535" % port)
    return host, int(port)


def _check_port(err, key, port, profile):
    """A board port that can name a link of the profile's kind (whether it exists is the daemon's
    business at run time: a board may be plugged in later)."""
    if not port.strip():
        err(key, "must not be empty: a device (best a /dev/serial/by-id/ name), a pty, socket://HOST:PORT")
    scheme = port.split("://", 1)[0] if "://" in port else None
    if profile["link"]["kind"] == "spi-pio":
        # an ftdi:// adapter; or the simulator standing in for the board, on a pty or socket://
        # (the link's byte stream at the SPI link's rate: host/offload/transport.py for_profile)
        if scheme != "ftdi" and scheme != "socket" and not port.startswith("/dev/pts/"):
            err(key, "an SPI board (profile %s) needs an ftdi:// URL (or, for the simulator standing in "
                "for it, a /dev/pts/N pty or socket://), not %r" % (profile["_name"], port))
        if scheme != "socket":
            return
    if scheme == "ftdi":
        err(key, "ftdi:// is an SPI adapter; profile %s's link is %s" % (profile["_name"], profile["link"]["kind"]))
    if scheme is None:
        if not os.path.isabs(port):
            err(key, "must be an absolute device path or a URL (socket://HOST:PORT), not %r" % port)
    elif scheme not in SERIAL_SCHEMES:
        err(key, "unknown URL scheme %s:// (known: %s)" % (scheme, ", ".join(SERIAL_SCHEMES)))
    elif scheme == "socket":
        m = re.fullmatch(r"socket://([^:/?#]+|\[[0-9A-Fa-f:.]+\]):(\d+)([/?].*)?", port)
        if not m or not 1 <= int(m.group(2)) <= 65535:
            err(key, "must be socket://HOST:PORT with a port 1..65535, not %r" % port)


def _port_identity(port):
    return os.path.realpath(port) if os.path.isabs(port) else port


def _family(addr):
    try:
        return ipaddress.ip_network(addr, strict=False).version
    except ValueError:
        return None


def _ts_families(items):
    """IP versions of a list of traffic selectors; "dynamic" (the IKE address) counts as None."""
    return {(4 if t.ts_type == TsType.IPV4_ADDR_RANGE else 6) if not isinstance(t, str) else None for t in items}


def _check_connections(cfg, err, warn):
    """What no peer can fix: IKE addresses the socket cannot use, ESP nothing runs on a board,
    selectors that carry nothing; and, as warnings, two Child SAs for the same traffic and SHA-1
    in IKE proposals."""
    families = {ipaddress.ip_address(a).version for a in cfg.listen_addrs}
    wildcard = any(a in ("0.0.0.0", "::") for a in cfg.listen_addrs)
    seen = {}
    for name, conn in cfg.connections.items():
        kp = "connections.%s" % name
        for k in ("local_addrs", "remote_addrs"):
            for i, a in enumerate(getattr(conn, k)):
                if a != "%any" and _family(a) not in families:
                    err("%s.%s[%d]" % (kp, k, i), "IPv%d, but IKE is bound to daemon.listen = %s (IPv%s)"
                        % (_family(a), ", ".join(cfg.listen_addrs), "/".join(map(str, sorted(families)))))
        if conn.remote_host and not conn.local_host and _family(conn.remote_host) != _family(cfg.listen) \
                and not wildcard:
            err(kp + ".local_addrs", "connections to the IPv%d address %s need our address of that family here "
                "(IKE would leave from %s, the first of daemon.listen)" % (_family(conn.remote_host),
                                                                            conn.remote_host, cfg.listen))
        legacy = [i for i, s in enumerate(conn.proposals) if Integ.HMAC_SHA1_96 in s.integ or Prf.HMAC_SHA1 in s.prf]
        if legacy:
            warn("%s.proposals[%d]" % (kp, legacy[0]), "HMAC-SHA-1 / PRF-SHA-1: for legacy peers only (RFC 8247 "
                 "§3.2, §3.3: MUST-); put a SHA-2 proposal first")
        if not wildcard and "%any" not in conn.local_addrs and not any(
                ipaddress.ip_address(x) in ipaddress.ip_network(a, strict=False)
                for a in conn.local_addrs for x in cfg.listen_addrs):
            err(kp + ".local_addrs", "none of them is an address of daemon.listen = %s, where IKE is bound"
                % ", ".join(cfg.listen_addrs))
        for cname, child in conn.children.items():
            ck = "%s.children.%s" % (kp, cname)
            if not filter_child_specs(child.esp_proposals, BOARD_CAPABILITIES):
                err(ck + ".esp_proposals", "no board runs any of these; boards run %s (ESP is negotiated only "
                    "from what the board runs)" % BOARD_PROPOSALS)
            fl, fr = _ts_families(child.local_ts), _ts_families(child.remote_ts)
            fl.discard(None)
            fr.discard(None)
            if fl and fr and not fl & fr:
                err(ck + ".remote_ts", "IPv%s only, local_ts IPv%s only: no packet matches both"
                    % ("/".join(map(str, sorted(fr))), "/".join(map(str, sorted(fl)))))
            if fl and fr and fl != fr:
                warn(ck + ".remote_ts", "local_ts and remote_ts mix address families (IPv%s and IPv%s): only "
                     "the common one carries traffic" % ("/".join(map(str, sorted(fl))),
                                                         "/".join(map(str, sorted(fr)))))
            if any(isinstance(t, str) for t in child.local_ts + child.remote_ts):
                continue
            key = (frozenset(child.local_ts), frozenset(child.remote_ts))
            if key in seen:
                warn(ck + ".local_ts", "the same traffic selectors as %s: packets go to one of the two Child SAs, "
                     "whichever was installed last" % seen[key])
            else:
                seen[key] = ck


def load(path):
    path = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(path, "<file>", e.strerror or str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(path, "<file>", "not UTF-8 text (byte 0x%02x at offset %d); TOML files are UTF-8"
                          % (raw[e.start], e.start), line) from None
    return loads(text, path)
