"""Connections from TOML data (swanctl.conf-like names). Errors name the offending key.

Example::

    [connections.gw]
    local_addrs = ["192.0.2.1"]
    remote_addrs = ["192.0.2.2"]
    proposals = ["aes256gcm16-prfsha256-x25519"]
    psk = "a long random secret"
    start_action = "start"            # none | start | trap (on demand: the first packet initiates)
    dpd_delay = 30                    # liveness check after 30 s without inbound IKE or ESP (0 = off)
    dpd_action = "restart"            # clear (= none) | restart | trap: after a failed liveness check
    keyingtries = 0                   # initiation attempts for start/restart (0 = until it works)
    rekey_time = 14400                # IKE SA rekey (RFC 7296 §2.18), minus up to rand_time
    # over_time = 1440; rand_time = 1440   (hard end = rekey_time + over_time)
    # reauth_time = 86400             # reauthenticate (§2.8.3): new IKE SA first, then the old one goes
    [connections.gw.local]
    auth = "psk"                      # psk | pubkey
    id = "a.example"
    # cert = "a.pem"; key = "a.key"   (pubkey; paths relative to the config file)
    [connections.gw.remote]
    auth = "psk"
    id = "b.example"
    # cacerts = ["ca.pem"]
    [connections.gw.children.net]
    local_ts = ["198.51.100.0/24"]
    remote_ts = ["203.0.113.0/24"]
    esp_proposals = ["aes128gcm16", "aes128-sha256"]
    mode = "tunnel"
    close_action = "start"            # none | start | trap: the peer closed it (or its IKE SA): set it
                                      # up again now (start) or on the next packet for it (trap)
    rekey_time = 3600                 # Child SA rekey (§2.8), minus up to rand_time
    # life_time = 3960; rand_time = 360   (hard end; jitter)

The daemon's config loader embeds :func:`parse_connections`; :func:`load` reads a whole file.
"""
from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from . import pki
from .auth import Identity, load_cert, load_private_key
from .constants import ProtocolId
from .payloads import TrafficSelector
from .proposals import ProposalError, ProposalSpec, parse_proposals


class ConfigError(ValueError):
    """Invalid configuration; ``key`` is the dotted path of the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class RetransmitPolicy:
    """§2.1 / §2.4: retransmit a request after timeout * base^n, n = 0..tries-1, give up after
    ``tries`` retransmissions and a last wait. strongSwan's defaults: 4 s, 1.8, 5 tries."""
    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5
    limit: float = 0.0          # cap on a single wait, 0 = none

    def delay(self, n: int) -> float:
        d = self.timeout * self.base ** n
        return min(d, self.limit) if self.limit else d


@dataclass
class EngineSettings:
    """The engine's own settings (the daemon's ``[ike]`` table, :func:`parse_settings`; every key is
    described in host/ike/README.md)."""
    port: int = 500                     # our IKE port
    natt_port: int = 4500               # our NAT-T port (ESP-in-UDP too)
    local_addr: str | None = None       # default source address when a connection names none
    max_packet: int = 10000             # a bigger datagram is dropped before it is parsed (charon's max_packet)
    half_open_timeout: float = 30.0     # responder: IKE_AUTH must follow within this time
    max_half_open: int = 4096           # responder: half-open IKE SAs in total ...
    max_half_open_per_ip: int = 512     # ... and per initiator address
    # initiator (pacing.py): our IKE SAs half-open at once per peer address (one below charon's
    # block_threshold of 5, whose count ends a moment after it answers IKE_AUTH) and in all; 0 = no limit
    max_initiating_per_peer: int = 4
    max_initiating: int = 64
    reply_rate: float = 20.0            # unprotected error answers per source per second
    reply_burst: float = 40.0
    reply_global_rate: float = 500.0
    reply_global_burst: float = 1000.0
    # cookies (§2.6): demanded from this many half-open SAs on (0 = never)
    cookie_threshold: int = 30          # in total (strongSwan's default)
    cookie_threshold_ip: int = 3        # from one address
    cookie_secret_lifetime: float = 60.0
    cookie_rate: float = 20.0           # COOKIE answers per source per second ...
    cookie_burst: float = 40.0
    cookie_global_rate: float = 10000.0     # ... and in total (small, never amplifying)
    cookie_global_burst: float = 10000.0
    # INVALID_SPI (§1.5): outgoing, for ESP with an unknown SPI reported by the board
    unprotected_invalid_spi: bool = False   # answer outside any IKE SA when none exists (DoS magnet)
    invalid_spi_rate: float = 1.0       # per source address per second
    invalid_spi_burst: float = 3.0
    invalid_spi_global_rate: float = 20.0
    invalid_spi_global_burst: float = 40.0
    # liveness checks started by unprotected INVALID_SPI hints (plus: one in flight per IKE SA)
    hint_rate: float = 1.0              # per source address per second
    hint_burst: float = 2.0
    hint_global_rate: float = 10.0
    hint_global_burst: float = 20.0
    hint_retransmit: RetransmitPolicy | None = None     # schedule of those checks (None: the engine's)
    # INVALID_IKE_SPI (§2.21.4): answer a protected request for an IKE SA we do not have (we lost
    # it), unprotected, on the invalid_spi_* rates; an answer to one of ours is a hint (hint_*)
    invalid_ike_spi: bool = True
    # IKE fragmentation (RFC 7383): offered/accepted in IKE_SA_INIT; fragments fit this IP size
    fragmentation: bool = True
    fragment_size: int = 1280
    rsa_pss: bool = False               # sign RFC 7427 AUTH with RSASSA-PSS (RSA keys; verified always)
    # lifecycle
    restart_delay_max: float = 60.0     # cap on the pause between re-initiation attempts
    retry_delay: float = 10.0           # a refused rekey / TEMPORARY_FAILURE is retried after 0.5..1 x this
    rekey_reap_time: float = 30.0       # a replaced IKE SA the peer did not delete goes after this
    nat_keepalive: float = 20.0         # behind a NAT: a NAT-keepalive this often (RFC 3948 §4; 0 = off)


@dataclass
class AuthConfig:
    auth: str                       # "psk" | "pubkey"
    id: Identity
    cert: object = None             # our certificate (cryptography x509.Certificate)
    key: object = None              # our private key
    cacerts: list = field(default_factory=list)     # trust anchors for the peer's certificate


@dataclass
class ChildConfig:
    """Lifetimes follow swanctl.conf: rekey after ``rekey_time`` minus a random part of
    ``rand_time``; ``life_time`` is the hard end (defaults 3600 s, 1.1 x rekey_time, the difference).
    ``rekey_time = 0`` turns rekeying off."""
    name: str
    local_ts: list                  # list[TrafficSelector | "dynamic"]
    remote_ts: list
    esp_proposals: list[ProposalSpec]
    mode: str = "tunnel"
    start_action: str = "none"      # start: with the connection; trap: on the first packet for it
    close_action: str = "none"      # start: create it again when the peer closes it (or its IKE SA);
                                    # trap: on the next packet for it
    rekey_time: float = 3600.0
    life_time: float = 3960.0
    rand_time: float = 360.0


@dataclass
class Connection:
    name: str
    local_addrs: list[str]
    remote_addrs: list[str]
    local: AuthConfig
    remote: AuthConfig
    proposals: list[ProposalSpec]
    children: dict[str, ChildConfig]
    local_port: int = 500
    remote_port: int = 500
    remote_port_nat_t: int = 4500
    psk: bytes | None = field(default=None, repr=False)
    encap: bool = True
    start_action: str = "none"      # start | trap (its Child SAs on demand) | none
    dpd_action: str = "clear"       # after a failed liveness check: clear (= none) | restart | trap
    dpd_delay: float = 0.0          # liveness check after this long without inbound IKE/ESP; 0 = off
    rekey_time: float = 14400.0     # IKE SA rekey (§2.18); 0 = off
    over_time: float = 1440.0       # hard end of the IKE SA = rekey_time + over_time
    rand_time: float = 1440.0       # rekey up to this much earlier (jitter)
    reauth_time: float = 0.0        # reauthenticate (§2.8.3, make-before-break) after this; 0 = off
    keyingtries: int = 0            # start/restart attempts; 0 = keep trying (with back-off)
    initial_contact: bool = True

    def matches_addrs(self, local_ip: str, remote_ip: str) -> bool:
        return _addr_ok(self.local_addrs, local_ip) and _addr_ok(self.remote_addrs, remote_ip)

    @property
    def remote_host(self) -> str | None:
        """The address we initiate to (the first specific remote address)."""
        for a in self.remote_addrs:
            if a != "%any" and "/" not in a:
                return a
        return None

    def trapped_children(self) -> list[str]:
        """The Child SAs set up on demand from the start (``start_action = "trap"``): those that
        say so, and, when the connection says so, every child that names no start_action."""
        return [n for n, c in self.children.items()
                if c.start_action == "trap" or (self.start_action == "trap" and c.start_action == "none")]

    @property
    def local_host(self) -> str | None:
        for a in self.local_addrs:
            if a != "%any" and "/" not in a:
                return a
        return None


def config_form(value):
    """A comparable form of a configuration value (a Connection and everything in it), for
    telling an unchanged connection from a changed one on reload: certificates and CRLs by their
    DER bytes, a private key by its public key (which identifies it; no secret is copied),
    dataclasses field by field, a TrustStore with its CRLs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as ser

    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__,) + tuple((f.name, config_form(getattr(value, f.name))) for f in fields(value))
    if isinstance(value, pki.TrustStore):
        return ("TrustStore", tuple(config_form(c) for c in value), tuple(config_form(c) for c in value.crls))
    if isinstance(value, (list, tuple)):
        return tuple(config_form(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, config_form(v)) for k, v in value.items())
    if isinstance(value, (x509.Certificate, x509.CertificateRevocationList)):
        return ("DER", value.public_bytes(ser.Encoding.DER))
    if hasattr(value, "public_key") and hasattr(value, "private_bytes"):
        return ("key", value.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo))
    return value


def same_connection(a: Connection, b: Connection) -> bool:
    """Does ``b`` configure exactly what ``a`` does (swanctl --load-all keeps such a connection's SAs)?"""
    return config_form(a) == config_form(b)


def _addr_ok(allowed: list[str], ip: str) -> bool:
    if not allowed:
        return True
    for a in allowed:
        if a == "%any":
            return True
        try:
            if ipaddress.ip_address(ip) in ipaddress.ip_network(a, strict=False):
                return True
        except ValueError:
            continue
    return False


_TS_RE = re.compile(r"^(?P<addr>[^\[\]]*?)\s*(\[(?P<sel>[^\]]*)\])?$")
_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "gre": 47, "any": 0, "%any": 0}


def parse_ts(text: str) -> TrafficSelector | str:
    """``10.0.0.0/24``, ``10.0.0.1``, ``10.0.0.1-10.0.0.9``, ``dynamic``, optionally followed by
    ``[proto]``, ``[proto/port]`` or ``[proto/port1-port2]``."""
    m = _TS_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad traffic selector {text!r}")
    addr, sel = m.group("addr").strip(), m.group("sel")
    proto, ports = 0, (0, 65535)
    if sel:
        p, _, port = sel.partition("/")
        p = p.strip().lower()
        if p:
            proto = _PROTOS.get(p, None)
            if proto is None:
                proto = int(p)
                if not 0 <= proto <= 255:
                    raise ValueError(f"bad protocol in {text!r}")
        if port.strip() and port.strip() != "%any":
            lo, _, hi = port.partition("-")
            ports = (int(lo), int(hi or lo))
            if not 0 <= ports[0] <= ports[1] <= 65535:
                raise ValueError(f"bad port range in {text!r}")
    if addr == "dynamic":
        return f"dynamic/{proto}/{ports[0]}/{ports[1]}"
    if "-" in addr:
        first, last = addr.split("-", 1)
        ts = TrafficSelector.from_range(first.strip(), last.strip(), proto, ports)
        if ts.start > ts.end:
            raise ValueError(f"empty range {text!r}")
        return ts
    return TrafficSelector.from_network(addr, proto, ports)


def resolve_ts(items: list, dynamic_addr: str) -> list[TrafficSelector]:
    """Replace ``dynamic`` by the given address (§2.9: the host's own IKE address)."""
    out = []
    for t in items:
        if isinstance(t, str):
            _d, proto, p0, p1 = t.split("/")
            out.append(TrafficSelector.from_network(dynamic_addr, int(proto), (int(p0), int(p1))))
        else:
            out.append(t)
    return out


# ---------------------------------------------------------------- parsing

class _Section:
    """Reads a TOML table, tracking which keys were used so typos are reported by name."""

    def __init__(self, data, path: str):
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table")
        self.data, self.path, self.used = data, path, set()

    def key(self, k):
        return f"{self.path}.{k}" if self.path else k

    def get(self, k, kind, default=None, required=False):
        self.used.add(k)
        if k not in self.data:
            if required:
                raise ConfigError(self.key(k), "is required")
            return default
        v = self.data[k]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if kind is list and isinstance(v, str):
            v = [v]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ConfigError(self.key(k), f"must be {kind.__name__}")
        if kind is float and not math.isfinite(v):
            raise ConfigError(self.key(k), f"must be a finite number, not {v}")
        return v

    def choice(self, k, choices, default):
        v = self.get(k, str, default)
        if v not in choices:
            raise ConfigError(self.key(k), f"must be one of {', '.join(choices)}")
        return v

    def sub(self, k, required=False):
        self.used.add(k)
        if k not in self.data:
            if required:
                raise ConfigError(self.key(k), "is required")
            return None
        return _Section(self.data[k], self.key(k))

    def done(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown setting")


def _read_file(sec: _Section, k: str, base: Path | None):
    path = sec.get(k, str)
    if path is None:
        return None
    p = pki.locate(base, k, path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise ConfigError(sec.key(k), f"cannot read {p}: {e.strerror}") from None


def _port(sec, k, default):
    v = sec.get(k, int, default)
    if not 1 <= v <= 65535:
        raise ConfigError(sec.key(k), "must be a port number 1..65535")
    return v


def _addrs(sec, k):
    out = sec.get(k, list, ["%any"])
    for i, a in enumerate(out):
        if not isinstance(a, str):
            raise ConfigError(f"{sec.key(k)}[{i}]", "must be a string")
        if a != "%any":
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ConfigError(f"{sec.key(k)}[{i}]", f"not an IP address or prefix: {a!r}") from None
    return out


def _proposals(sec, k, protocol, default):
    texts = sec.get(k, list, default)
    if not texts:
        raise ConfigError(sec.key(k), "needs at least one proposal")
    out = []
    for i, t in enumerate(texts):
        try:
            out += parse_proposals([t], protocol)
        except ProposalError as e:
            raise ConfigError(f"{sec.key(k)}[{i}]", str(e)) from None
    return out


def _auth(sec: _Section, base, local: bool, local_addr: str | None) -> AuthConfig:
    method = sec.choice("auth", ("psk", "pubkey"), None) if "auth" in sec.data else None
    if method is None:
        raise ConfigError(sec.key("auth"), "is required (psk or pubkey)")
    cert = key = None
    cacerts = []
    if local:
        cert_data = _read_file(sec, "cert", base)
        key_data = _read_file(sec, "key", base)
        passphrase = _read_file(sec, "key_passphrase_file", base)
        if method == "pubkey":
            if cert_data is None:
                raise ConfigError(sec.key("cert"), "is required for pubkey authentication")
            if key_data is None:
                raise ConfigError(sec.key("key"), "is required for pubkey authentication")
            try:
                cert = load_cert(cert_data)
            except ValueError as e:
                raise ConfigError(sec.key("cert"), f"not a certificate: {e}") from None
            key = _private_key(sec, key_data, passphrase)
    else:
        cacerts = pki.TrustStore(_read_list(sec, "cacerts", base, load_cert, "a certificate"),
                                 _read_list(sec, "crls", base, pki.load_crl, "a CRL"))
        if method == "pubkey" and not cacerts:
            raise ConfigError(sec.key("cacerts"), "is required for pubkey authentication of the peer")
    id_text = sec.get("id", str)
    try:
        if id_text is not None:
            ident = Identity.parse(id_text)
        elif local and cert is not None:
            ident = Identity.from_cert(cert)
        elif local and local_addr:
            ident = Identity.parse(local_addr)
        elif local:
            raise ConfigError(sec.key("id"), "is required when local_addrs has no single address")
        else:
            ident = Identity.parse("%any")
    except ValueError as e:
        raise ConfigError(sec.key("id"), str(e)) from None
    if local and ident.any:
        raise ConfigError(sec.key("id"), "our own identity cannot be %any")
    sec.done()
    return AuthConfig(method, ident, cert, key, cacerts)


def _read_list(sec: _Section, k: str, base, parse, what: str) -> list:
    """Files named by the list ``k`` (swanctl layout: host/ike/pki.py), each parsed by ``parse``."""
    out = []
    for i, name in enumerate(sec.get(k, list, [])):
        if not isinstance(name, str):
            raise ConfigError(f"{sec.key(k)}[{i}]", "must be a file name")
        p = pki.locate(base, k, name)
        try:
            out.append(parse(p.read_bytes()))
        except OSError as e:
            raise ConfigError(f"{sec.key(k)}[{i}]", f"cannot read {p}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{sec.key(k)}[{i}]", f"{p} is not {what}: {e}") from None
    return out


def _private_key(sec: _Section, data: bytes, passphrase: bytes | None):
    """Our key; an encrypted one with the passphrase from ``key_passphrase_file``."""
    try:
        return load_private_key(data, pki.read_passphrase(passphrase) if passphrase is not None else None)
    except TypeError:
        if passphrase is None:
            raise ConfigError(sec.key("key"), "is encrypted: name the file with its passphrase in "
                              "key_passphrase_file") from None
        raise ConfigError(sec.key("key_passphrase_file"), "given, but the key is not encrypted") from None
    except ValueError as e:
        if passphrase is not None:
            raise ConfigError(sec.key("key_passphrase_file"), "does not decrypt the key (wrong passphrase?)") from None
        raise ConfigError(sec.key("key"), f"not a usable private key: {e}") from None
    except UnsupportedAlgorithm as e:
        raise ConfigError(sec.key("key"), f"not a usable private key: {e}") from None


def _child(sec: _Section, name: str) -> ChildConfig:
    ts = {}
    for k in ("local_ts", "remote_ts"):
        items = sec.get(k, list, ["dynamic"])
        out = []
        for i, t in enumerate(items):
            try:
                out.append(parse_ts(t))
            except (ValueError, TypeError, AttributeError) as e:
                raise ConfigError(f"{sec.key(k)}[{i}]", str(e)) from None
        ts[k] = out
    rekey, life, rand = _lifetimes(sec, "life_time", 3600.0, 1.1)
    c = ChildConfig(
        name=name, local_ts=ts["local_ts"], remote_ts=ts["remote_ts"],
        esp_proposals=_proposals(sec, "esp_proposals", ProtocolId.ESP, ["aes128gcm16", "aes128-sha256"]),
        mode=sec.choice("mode", ("tunnel", "transport"), "tunnel"),
        start_action=sec.choice("start_action", ("none", "start", "trap"), "none"),
        close_action=sec.choice("close_action", ("none", "start", "trap"), "none"),
        rekey_time=rekey, life_time=life, rand_time=rand,
    )
    sec.done()
    return c


def _seconds(sec, k, default):
    v = sec.get(k, float, default)
    if v < 0:
        raise ConfigError(sec.key(k), "must not be negative")
    return v


def _lifetimes(sec, hard_key: str, rekey_default: float, factor: float):
    """swanctl.conf lifetimes: (rekey_time, hard, rand_time). Children: hard = ``life_time``
    (default 1.1 x rekey_time), rand_time defaults to hard - rekey_time. IKE: hard = ``over_time``
    past rekey_time (default 10 %), rand_time defaults to over_time."""
    rekey = _seconds(sec, "rekey_time", rekey_default)
    if hard_key == "life_time":
        life = _seconds(sec, "life_time", round(rekey * factor, 6))
        if rekey and life and life <= rekey:
            raise ConfigError(sec.key("life_time"), "must be longer than rekey_time")
        rand = _seconds(sec, "rand_time", round(max(life - rekey, 0.0), 6) if life else 0.0)
        hard_margin = life - rekey if life else None
    else:
        over = _seconds(sec, "over_time", round(rekey * (factor - 1.0), 6))
        life = over
        rand = _seconds(sec, "rand_time", over)
        hard_margin = over if over else None
    if rekey and rand >= rekey:
        raise ConfigError(sec.key("rand_time"), "must be shorter than rekey_time")
    if rekey and hard_margin is not None and rand > hard_margin:
        raise ConfigError(sec.key("rand_time"), f"must not exceed the time between rekey_time and {hard_key}")
    return rekey, life, rand


def parse_connection(name: str, data: dict, base: Path | None = None, path: str | None = None) -> Connection:
    sec = _Section(data, path or f"connections.{name}")
    version = sec.get("version", int, 2)
    if version != 2:
        raise ConfigError(sec.key("version"), "only IKEv2 (2) is supported")
    local_addrs = _addrs(sec, "local_addrs")
    remote_addrs = _addrs(sec, "remote_addrs")
    single_local = next((a for a in local_addrs if a != "%any" and "/" not in a), None)
    local_sec = sec.sub("local", required=True)
    remote_sec = sec.sub("remote", required=True)
    local = _auth(local_sec, base, True, single_local)
    remote = _auth(remote_sec, base, False, None)
    psk = sec.get("psk", str)
    if (local.auth == "psk" or remote.auth == "psk") and not psk:
        raise ConfigError(sec.key("psk"), "is required for psk authentication")
    if psk is not None and len(psk) < 8:
        raise ConfigError(sec.key("psk"), "too short (use at least 8 characters, better 32 random ones)")
    children = {}
    ch = sec.sub("children")
    if ch is not None:
        for cname in list(ch.data):
            children[cname] = _child(ch.sub(cname), cname)
        ch.done()
    ike_rekey, ike_over, ike_rand = _lifetimes(sec, "over_time", 14400.0, 1.1)
    keyingtries = sec.get("keyingtries", int, 0)
    if keyingtries < 0:
        raise ConfigError(sec.key("keyingtries"), "must be 0 (keep trying) or a positive count")
    conn = Connection(
        name=name, local_addrs=local_addrs, remote_addrs=remote_addrs, local=local, remote=remote,
        proposals=_proposals(sec, "proposals", ProtocolId.IKE, ["aes128gcm16-prfsha256-x25519"]),
        children=children,
        local_port=_port(sec, "local_port", 500), remote_port=_port(sec, "remote_port", 500),
        remote_port_nat_t=_port(sec, "remote_port_nat_t", 4500),
        psk=psk.encode() if psk else None,
        encap=sec.get("encap", bool, True),
        start_action=sec.choice("start_action", ("none", "start", "trap"), "none"),
        dpd_action=sec.choice("dpd_action", ("none", "clear", "restart", "trap"), "clear"),
        dpd_delay=_seconds(sec, "dpd_delay", 0.0),
        rekey_time=ike_rekey, over_time=ike_over, rand_time=ike_rand,
        reauth_time=_seconds(sec, "reauth_time", 0.0),
        keyingtries=keyingtries,
        initial_contact=sec.get("initial_contact", bool, True),
    )
    if conn.start_action != "none" and conn.remote_host is None:
        raise ConfigError(sec.key("remote_addrs"),
                          f"start_action = {conn.start_action} needs a specific remote address")
    for cname, child in children.items():
        on_demand = "trap" in (child.start_action, child.close_action) or conn.dpd_action == "trap"
        if on_demand and conn.remote_host is None:
            key = "dpd_action" if conn.dpd_action == "trap" else f"children.{cname}." + (
                "start_action" if child.start_action == "trap" else "close_action")
            raise ConfigError(sec.key(key), "trap (on demand) needs a specific remote address to initiate to")
    if conn.reauth_time and conn.remote_host is None:
        raise ConfigError(sec.key("reauth_time"), "reauthentication needs a specific remote address")
    sec.done()
    return conn


def parse_connections(data: dict, base: Path | None = None,
                      path: str = "connections") -> dict[str, Connection]:
    """Parse the ``[connections]`` table (a dict of name -> table)."""
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a table")
    return {name: parse_connection(name, body, base, f"{path}.{name}") for name, body in data.items()}


def parse_retransmit(data: dict | None, path: str = "retransmit") -> RetransmitPolicy:
    if data is None:
        return RetransmitPolicy()
    sec = _Section(data, path)
    r = RetransmitPolicy(timeout=sec.get("timeout", float, 4.0), base=sec.get("base", float, 1.8),
                         tries=sec.get("tries", int, 5), limit=sec.get("limit", float, 0.0))
    if r.timeout <= 0:
        raise ConfigError(sec.key("timeout"), "must be positive")
    if r.base < 1:
        raise ConfigError(sec.key("base"), "must be >= 1 (exponential back-off, RFC 7296 §2.4)")
    if not 0 <= r.tries <= 20:
        raise ConfigError(sec.key("tries"), "must be 0..20")
    sec.done()
    return r


def parse_settings(data: dict | None, path: str = "ike"):
    """The daemon's ``[ike]`` table -> (EngineSettings, RetransmitPolicy). Keys are the field names
    of ``EngineSettings`` (documented in host/ike/README.md) plus ``[ike.retransmit]`` and
    ``[ike.hint_retransmit]`` tables (timeout, base, tries, limit)."""
    settings = EngineSettings()
    if data is None:
        return settings, RetransmitPolicy()
    sec = _Section(data, path)
    retransmit = parse_retransmit(data.get("retransmit"), sec.key("retransmit"))
    sec.used.add("retransmit")
    for f in fields(EngineSettings):
        if f.name == "hint_retransmit":
            if "hint_retransmit" in data:
                sec.used.add(f.name)
                settings.hint_retransmit = parse_retransmit(data[f.name], sec.key(f.name))
            continue
        default = getattr(settings, f.name)
        kind = type(default) if default is not None else str
        v = sec.get(f.name, kind, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(sec.key(f.name), "must not be negative")
        if f.name in ("port", "natt_port") and not 1 <= v <= 65535:
            raise ConfigError(sec.key(f.name), "must be a port number 1..65535")
        setattr(settings, f.name, v)
    sec.done()
    return settings, retransmit


def loads(text: str, base: Path | None = None) -> dict[str, Connection]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("<toml>", str(e)) from None
    return parse_connections(data.get("connections", {}), base)


def load(path) -> dict[str, Connection]:
    p = Path(path)
    return loads(p.read_text(), p.parent)
