"""A stand-in ESP data path made of scapy's independent ESP implementation (RFC 4303/4106, ESP-in-UDP
RFC 3948), used until the offload board's data path exists: it installs the Child SAs the engine
hands out and answers ICMP echo requests that arrive through them. If the peer's ping gets
answers, both directions' keys, SPIs, salts and algorithms agree with the peer's.
"""
from __future__ import annotations

import os

# scapy writes a cache under $HOME/.cache on import; keep it out of the home directory
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(os.environ.get("TMPDIR", "/tmp"), "ikeoffload-scapy"))

from scapy.layers.inet import ICMP, IP, UDP  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402

from host.ike.constants import Encr, Integ  # noqa: E402
from host.ike.events import IkeSaMoved, IkeSaRekeyed  # noqa: E402
from host.ike.proposals import OffloadCapabilities  # noqa: E402

# what scapy's ESP can do, reported like a board would
CAPABILITIES = OffloadCapabilities(frozenset({
    (Encr.AES_GCM_16, 128, Integ.NONE), (Encr.AES_GCM_16, 256, Integ.NONE),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128), (Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128),
    (Encr.CHACHA20_POLY1305, 256, Integ.NONE),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_384_192), (Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_512_256), (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
}), esn=False)
_AUTH = {Integ.HMAC_SHA2_256_128: "SHA2-256-128", Integ.HMAC_SHA2_384_192: "SHA2-384-192",
         Integ.HMAC_SHA2_512_256: "SHA2-512-256"}


def _sa(spi, ev, key, salt, integ_key, src, dst, sport, dport):
    kw = dict(spi=spi, tunnel_header=IP(src=src, dst=dst), nat_t_header=UDP(sport=sport, dport=dport))
    if ev.encr == Encr.AES_GCM_16:
        kw.update(crypt_algo="AES-GCM", crypt_key=key + salt)
    elif ev.encr == Encr.CHACHA20_POLY1305:
        kw.update(crypt_algo="CHACHA20-POLY1305", crypt_key=key + salt)
    elif ev.encr == Encr.AES_CBC and ev.integ in _AUTH:
        kw.update(crypt_algo="AES-CBC", crypt_key=key, auth_algo=_AUTH[ev.integ], auth_key=integ_key)
    else:
        raise ValueError(f"scapy data path cannot run encr {ev.encr} / integ {ev.integ}")
    return SecurityAssociation(ESP, **kw)


class ScapyEchoDataPath:
    """Holds the installed Child SAs; ``esp_in`` decrypts, answers echo requests via ``send``.
    Like the board it stands in for, it reports ESP for an unknown SPI (``on_unknown(spi, addr)``)
    and inbound packets that decrypted (``on_inbound(handle)``, liveness proof). Like the board,
    it sends each Child SA's ESP to the peer address and port the SA was installed with (not
    wherever a packet came from), until the engine moves the IKE SA (``move``, IkeSaMoved)."""

    def __init__(self, send, on_unknown=None, on_inbound=None):
        self.send = send                # send(esp_bytes, (ip, port))
        self.on_unknown = on_unknown
        self.on_inbound = on_inbound
        self.inbound = {}               # spi_in -> (SecurityAssociation, event)
        self.outbound = {}              # handle -> (SecurityAssociation, event)
        self.by_handle = {}
        self.received = 0
        self.answered = 0
        self.errors = 0
        self.unknown_spi = 0
        self.decrypted = {}             # spi_in -> packets that decrypted
        self.dest = {}                  # handle -> (peer ip, port) its ESP goes to
        self.ike_of = {}                # handle -> the IKE SA it belongs to

    def install(self, ev) -> bool:
        try:
            sa_in = _sa(ev.spi_in, ev, ev.key_in, ev.salt_in, ev.integ_key_in, ev.remote_addr, ev.local_addr,
                        ev.remote_port, ev.local_port)
            sa_out = _sa(ev.spi_out, ev, ev.key_out, ev.salt_out, ev.integ_key_out, ev.local_addr,
                         ev.remote_addr, ev.local_port, ev.remote_port)
        except ValueError:
            return False
        self.inbound[ev.spi_in] = (sa_in, ev)
        self.outbound[ev.handle] = (sa_out, ev)
        self.by_handle[ev.handle] = ev.spi_in
        self.dest[ev.handle] = (ev.remote_addr, ev.remote_port)
        self.ike_of[ev.handle] = ev.ike_id
        return True

    def move(self, ike_id, remote):
        """The peer of IKE SA ``ike_id`` moved (a NAT remapped it, RFC 7296 §2.23)."""
        for handle, owner in self.ike_of.items():
            if owner == ike_id:
                self.dest[handle] = tuple(remote)

    def follow(self, ev):
        """Apply an engine event that moves installed Child SAs: IkeSaMoved, IkeSaRekeyed."""
        if isinstance(ev, IkeSaMoved):
            self.move(ev.ike_id, ev.remote)
        elif isinstance(ev, IkeSaRekeyed):
            self.rekeyed(ev.old_ike_id, ev.new_ike_id)

    def rekeyed(self, old_ike_id, new_ike_id):
        """IkeSaRekeyed: the Child SAs of ``old_ike_id`` belong to ``new_ike_id`` now."""
        for handle, owner in self.ike_of.items():
            if owner == old_ike_id:
                self.ike_of[handle] = new_ike_id

    def remove(self, handle):
        spi = self.by_handle.pop(handle, None)
        self.inbound.pop(spi, None)
        self.outbound.pop(handle, None)
        self.dest.pop(handle, None)
        self.ike_of.pop(handle, None)

    def esp_in(self, data: bytes, addr):
        if len(data) < 8:
            self.errors += 1
            return
        spi = int.from_bytes(data[:4], "big")
        hit = self.inbound.get(spi)
        if hit is None:
            self.unknown_spi += 1
            if self.on_unknown is not None:
                self.on_unknown(spi, addr)
            return
        sa_in, ev = hit
        self.received += 1
        try:
            outer = IP(bytes(IP(src=addr[0], dst=ev.local_addr) / UDP(sport=addr[1], dport=4500) / data))
            inner = sa_in.decrypt(outer)
        except Exception:
            self.errors += 1
            return
        self.decrypted[spi] = self.decrypted.get(spi, 0) + 1
        if self.on_inbound is not None:
            self.on_inbound(ev.handle)
        if ICMP in inner and inner[ICMP].type == 8:
            echo = inner[ICMP]
            reply = IP(src=inner[IP].dst, dst=inner[IP].src) / ICMP(type=0, id=echo.id, seq=echo.seq) / \
                bytes(echo.payload)
            sa_out, oev = self.outbound[ev.handle]
            pkt = sa_out.encrypt(reply)
            self.send(bytes(pkt[UDP].payload), self.dest[ev.handle])
            self.answered += 1
