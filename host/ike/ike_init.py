"""IKE_SA_INIT (RFC 7296 §1.2): proposals, Diffie-Hellman, nonces, NAT detection (§2.23), the
initiator's handling of COOKIE (§2.6) and INVALID_KE_PAYLOAD (§1.2, §2.7), and key derivation
(§2.14) once both halves are known.

The initiator's half is :class:`IkeInitTask`; the responder's is :func:`respond`, which has no
IKE SA to run on yet: it makes one (half-open) from a request that passed the engine's checks."""
from __future__ import annotations

import functools
import socket
import struct
from dataclasses import replace

from . import ike_intermediate
from .auth import hash_algorithms_notify_data, parse_hash_algorithms, spki_sha1
from .constants import CertEncoding, ExchangeType, Notify, PayloadType, ProtocolId
from .crypto import CryptoError, dh_group, nat_hash, random_bytes
from .ike_sa import IkeSa
from .keys import derive
from .payloads import CertPayload, KePayload, NoncePayload, NotifyPayload, SaPayload, notify_error_name
from .proposals import accept_response, select
from .states import IkeSaState
from .task import Outcome, Task

NONCE_LEN = 32          # §2.10: >= 128 bits and >= half the PRF key size (SHA-512: 32 bytes)
MAX_INIT_RETRIES = 3    # COOKIE / INVALID_KE restarts before giving up (bounds unprotected actions)
ZERO_SPI = b"\0" * 8


def pack_ip(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def nat_payloads(spi_i, spi_r, local, remote, fake_local: bool):
    """NAT_DETECTION_SOURCE_IP / _DESTINATION_IP. With ``fake_local`` the source hash is random,
    so the peer believes we are behind a NAT and UDP-encapsulates ESP (as strongSwan's encap=yes;
    our offload data path is ESP-in-UDP only)."""
    src = random_bytes(20) if fake_local else nat_hash(spi_i, spi_r, pack_ip(local[0]), local[1])
    dst = nat_hash(spi_i, spi_r, pack_ip(remote[0]), remote[1])
    return [NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, src),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP, dst)]


_SRC, _DST = int(Notify.NAT_DETECTION_SOURCE_IP), int(Notify.NAT_DETECTION_DESTINATION_IP)


def check_nat(msg, spi_i, spi_r, local, remote):
    """Returns (local behind NAT, remote behind NAT) or None if the peer sent no NAT-D (§2.23)."""
    srcs, dsts = [], []
    for p in msg.notifies():
        if p.notify_type == _SRC:
            srcs.append(p.data)
        elif p.notify_type == _DST:
            dsts.append(p.data)
    if not srcs or not dsts:
        return None
    remote_ok = nat_hash(spi_i, spi_r, pack_ip(remote[0]), remote[1]) in srcs
    local_ok = nat_hash(spi_i, spi_r, pack_ip(local[0]), local[1]) in dsts
    return (not local_ok, not remote_ok)


def _certreq(conns) -> list:
    """CERTREQ with the SHA-1 hashes of our trust anchors (§3.7), if any connection wants them."""
    hashes = []
    for c in conns:
        for ca in c.remote.cacerts:
            h = spki_sha1(ca)
            if h not in hashes:
                hashes.append(h)
    if not hashes:
        return []
    return [CertPayload(CertEncoding.X509_SIGNATURE, b"".join(hashes), PayloadType.CERTREQ)]


# ---------------------------------------------------------------- initiator

_OFFERS: dict = {}


def _offer(conn) -> SaPayload:
    """Our IKE_SA_INIT SA payload for ``conn`` (built once; it carries no SPI)."""
    key = tuple(conn.proposals)
    sap = _OFFERS.get(key)
    if sap is None:
        if len(_OFFERS) >= 256:
            _OFFERS.clear()
        sap = _OFFERS[key] = SaPayload([s.to_proposal(i + 1) for i, s in enumerate(conn.proposals)])
    return sap


def move_to_natt_ports(sa: IkeSa, natt_port: int):
    """§2.23: once a NAT is detected the initiator continues on the NAT-T ports (4500)."""
    if sa.local[1] != natt_port:
        sa.local = (sa.local[0], natt_port)
        sa.remote = (sa.remote[0], sa.conn.remote_port_nat_t)


class IkeInitTask(Task):
    """Initiator: send IKE_SA_INIT, process the answer."""
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, group: int):
        self.group = group
        self.offered = []

    def build(self, sa: IkeSa, now):
        conn = sa.conn
        if sa.dh_priv is None or sa.dh_group != self.group:
            sa.dh_group = self.group
            sa.dh_priv, sa.dh_pub = dh_group(self.group).generate()
        if not sa.ni:
            sa.ni = random_bytes(NONCE_LEN)
        payloads = []
        if sa.cookie:
            payloads.append(NotifyPayload(Notify.COOKIE, sa.cookie))    # §2.6: first payload
        sap = _offer(conn)
        self.offered = sap.proposals
        payloads += [sap, KePayload(self.group, sa.dh_pub), NoncePayload(sa.ni)]
        payloads += nat_payloads(sa.spi_i, ZERO_SPI, sa.local, sa.remote, conn.encap)
        payloads.append(NotifyPayload(Notify.SIGNATURE_HASH_ALGORITHMS, hash_algorithms_notify_data()))
        if sa.ctx.settings.fragmentation:
            payloads.append(NotifyPayload(Notify.IKEV2_FRAGMENTATION_SUPPORTED, b""))   # RFC 7383 §2.3
        payloads += ike_intermediate.init_request_payloads(conn)
        return payloads

    def on_response(self, sa: IkeSa, msg, raw: bytes, now) -> Outcome:
        ctx = sa.ctx
        cookie = msg.notify(Notify.COOKIE)
        if cookie is not None:
            if sa.retries >= MAX_INIT_RETRIES or not 1 <= len(cookie.data) <= 64:
                ctx.fail(sa, "too many COOKIE requests", now)
                return Outcome.FAILED
            sa.retries += 1
            sa.cookie = cookie.data
            ctx.stats["cookies_returned"] += 1
            sa.restart_init(self, now)
            return Outcome.RESENT
        ike = msg.notify(Notify.INVALID_KE_PAYLOAD)
        if ike is not None:
            group = struct.unpack("!H", ike.data[:2])[0] if len(ike.data) >= 2 else 0
            allowed = {g for s in sa.conn.proposals for g in s.dh}
            if sa.retries >= MAX_INIT_RETRIES or group not in allowed or group == self.group:
                ctx.fail(sa, f"peer wants DH group {group}, which we cannot use", now)
                return Outcome.FAILED
            sa.retries += 1
            self.group = group
            ctx.stats["invalid_ke_retries"] += 1
            sa.restart_init(self, now)
            return Outcome.RESENT
        err = msg.error_notify()
        if err is not None:
            ctx.fail(sa, f"IKE_SA_INIT refused: {notify_error_name(err.notify_type)}", now)
            return Outcome.FAILED
        # Anything below that does not fit is ignored rather than acted on: the message is not
        # authenticated, and a forged or damaged answer must not end our attempt (§2.21.1).
        sap, ke, nonce = msg.get(PayloadType.SA), msg.get(PayloadType.KE), msg.get(PayloadType.NONCE)
        if sap is None or ke is None or nonce is None or len(sap.proposals) != 1 or msg.spi_r == ZERO_SPI:
            return Outcome.IGNORED
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.IKE)
        if chosen is None or chosen.dh != self.group or ke.group != self.group or \
                not ike_intermediate.init_response_usable(msg, chosen):
            return Outcome.IGNORED
        try:
            shared = dh_group(self.group).shared(sa.dh_priv, ke.data)
        except CryptoError:
            return Outcome.IGNORED
        sa.chosen = chosen
        sa.spi_r = msg.spi_r
        sa.nr = nonce.data
        sa.init_resp = raw
        derive(sa, shared)
        sa.dh_priv = None
        nat = check_nat(msg, sa.spi_i, sa.spi_r, sa.local, sa.remote)
        if nat is not None:
            sa.nat_local = nat[0] or sa.conn.encap
            sa.nat_remote = nat[1]
            if sa.nat:
                move_to_natt_ports(sa, ctx.settings.natt_port)
        sh = msg.notify(Notify.SIGNATURE_HASH_ALGORITHMS)
        if sh is not None:
            sa.peer_hashes = parse_hash_algorithms(sh.data)
        sa.peer_certreq = msg.get(PayloadType.CERTREQ) is not None
        sa.fragmentation = ctx.settings.fragmentation and \
            msg.notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        ike_intermediate.start(sa, chosen, now)
        return Outcome.DONE


# ---------------------------------------------------------------- responder

def respond(ctx, hdr, msg, raw: bytes, remote: tuple, local: tuple, conns, now: float):
    """Responder: answer a well-formed IKE_SA_INIT request. Returns the new half-open IkeSa, or
    None if we answered with an error (rate-limited; no state is kept then)."""
    saps = msg.all(PayloadType.SA)
    kes = msg.all(PayloadType.KE)
    nonces = msg.all(PayloadType.NONCE)
    if len(saps) != 1 or len(kes) != 1 or len(nonces) != 1:
        ctx.reply_error(hdr, Notify.INVALID_SYNTAX, b"", remote, local, now)
        return None
    ke = kes[0]
    chosen = select_ike(saps[0], tuple(p for c in conns for p in c.proposals), ke.group)
    if chosen is None:
        ctx.reply_error(hdr, Notify.NO_PROPOSAL_CHOSEN, b"", remote, local, now)
        return None
    if chosen.dh != ke.group:
        ctx.reply_error(hdr, Notify.INVALID_KE_PAYLOAD, struct.pack("!H", chosen.dh), remote, local, now)
        return None
    if ike_intermediate.init_request_refused(msg, chosen):
        ctx.reply_error(hdr, Notify.NO_PROPOSAL_CHOSEN, b"", remote, local, now)
        return None
    try:
        pub, shared = dh_group(chosen.dh).respond(ke.data)
    except CryptoError:
        ctx.reply_error(hdr, Notify.INVALID_SYNTAX, b"", remote, local, now)
        return None
    sa = ctx.new_ike_sa(False, local, remote, now)
    sa.candidates = [c for c in conns if chosen_fits(c, chosen)]
    sa.conn = sa.candidates[0]
    sa.spi_i = hdr.spi_i
    sa.spi_r = ctx.alloc_ike_spi(sa)
    sa.chosen = chosen
    sa.dh_group = chosen.dh
    sa.ni = nonces[0].data
    sa.nr = random_bytes(NONCE_LEN)
    sa.init_req = raw
    derive(sa, shared)
    fake = any(c.encap for c in sa.candidates)
    nat = check_nat(msg, sa.spi_i, ZERO_SPI, local, remote)
    if nat is not None:
        sa.nat_local = nat[0] or fake
        sa.nat_remote = nat[1]
    sh = msg.notify(Notify.SIGNATURE_HASH_ALGORITHMS)
    if sh is not None:
        sa.peer_hashes = parse_hash_algorithms(sh.data)
    payloads = [_answer(chosen), KePayload(chosen.dh, pub), NoncePayload(sa.nr)]
    if nat is not None:
        payloads += nat_payloads(sa.spi_i, sa.spi_r, local, remote, fake)
    payloads += _certreq(sa.candidates)
    payloads.append(NotifyPayload(Notify.SIGNATURE_HASH_ALGORITHMS, hash_algorithms_notify_data()))
    if ctx.settings.fragmentation and msg.notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED) is not None:
        sa.fragmentation = True
        payloads.append(NotifyPayload(Notify.IKEV2_FRAGMENTATION_SUPPORTED, b""))
    payloads += ike_intermediate.init_response_payloads(sa, msg, chosen)
    sa.peer_mid = 1
    sa.last_request = raw
    sa.send_response(0, ExchangeType.IKE_SA_INIT, payloads, remote, local)
    sa.state = IkeSaState.CONNECTING
    sa.expire_at = now + ctx.settings.half_open_timeout
    sa.reschedule()
    return sa


@functools.lru_cache(maxsize=256)
def _answer(chosen) -> SaPayload:
    """The responder's SA payload for an IKE proposal choice (no SPI: the same every time)."""
    return SaPayload([chosen.to_proposal(b"")])


_SELECTED: dict = {}


def select_ike(sap, specs: tuple, ke_group: int):
    """Choose from the peer's IKE offer, preferring the DH group its KE already uses if any of our
    proposals allows it (§1.2). Cached: the same offer arrives again and again."""
    key = (sap.raw, specs, ke_group)
    if key in _SELECTED:
        return _SELECTED[key]
    chosen = select(sap.proposals, list(specs), ProtocolId.IKE)
    if chosen is not None and chosen.dh != ke_group:
        alt = [replace(s, dh=(ke_group,)) for s in specs if ke_group in s.dh]
        c2 = select(sap.proposals, alt, ProtocolId.IKE) if alt else None
        if c2 is not None:
            chosen = c2
    if len(_SELECTED) >= 1024:
        _SELECTED.clear()
    _SELECTED[key] = chosen
    return chosen


def chosen_fits(conn, chosen) -> bool:
    """Would ``conn``'s IKE proposals have accepted ``chosen``?"""
    for s in conn.proposals:
        if (chosen.encr, chosen.encr_bits) in s.encr and chosen.prf in s.prf and chosen.dh in s.dh and \
                (chosen.integ in s.integ or (not s.integ and not chosen.integ)) and ake_fits(s, chosen):
            return True
    return False


def ake_fits(spec, chosen) -> bool:
    """RFC 9370: the additional key exchanges of ``chosen`` are among ``spec``'s, and every one
    ``spec`` requires was chosen."""
    got = dict(chosen.ake)
    return all(got.get(t, 0) in methods for t, methods in spec.ake) and all(t in dict(spec.ake) for t in got)


def initiator_certreq(conn):
    return _certreq([conn])
