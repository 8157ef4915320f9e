"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, PSK or certificate authentication (RFC 7427), and
the first Child SA, which may fail on its own while the IKE SA comes up (§1.2, §2.21.2)."""
from __future__ import annotations

from secrets import compare_digest

from cryptography.hazmat.primitives import serialization

from . import child_create as cc
from .auth import (
    AuthError, Identity, cert_matches_identity, load_cert, psk_auth, sign, verify, verify_chain,
)
from .constants import AuthMethod, CertEncoding, ExchangeType, Notify, PayloadType, ProtocolId
from .events import ChildSaFailed
from .ike_init import initiator_certreq
from .informational import DeleteSpisTask
from .payloads import AuthPayload, CertPayload, IdPayload, NotifyPayload, SaPayload, TsPayload
from .payloads import notify_error_name
from .proposals import accept_response


def _octets(sa, of_initiator: bool, id_body: bytes) -> bytes:
    """§2.15 signed octets: RealMessage1 | Nr | prf(SK_pi, IDi') for the initiator,
    RealMessage2 | Ni | prf(SK_pr, IDr') for the responder."""
    if of_initiator:
        return sa.init_req + sa.nr + sa.prf(sa.keys.sk_pi, id_body)
    return sa.init_resp + sa.ni + sa.prf(sa.keys.sk_pr, id_body)


def _our_auth(sa, conn, id_payload) -> list:
    """CERT (for pubkey) and AUTH for our side."""
    octets = _octets(sa, sa.initiator, id_payload.body())
    out = []
    if conn.local.auth == "psk":
        out.append(AuthPayload(AuthMethod.PSK, psk_auth(sa.prf, conn.psk, octets)))
    else:
        der = conn.local.cert.public_bytes(serialization.Encoding.DER)
        out.append(CertPayload(CertEncoding.X509_SIGNATURE, der))
        method, data = sign(conn.local.key, octets, sa.peer_hashes, sa.engine.settings.rsa_pss)
        out.append(AuthPayload(method, data))
    return out


def _verify_peer(sa, conn, msg, id_payload, auth) -> Identity:
    """Check the peer's AUTH (and certificate) against ``conn``; returns its identity."""
    peer_id = Identity(id_payload.id_type, id_payload.data)
    if not conn.remote.id.matches(peer_id):
        raise AuthError(f"peer identity {peer_id} is not {conn.remote.id}")
    octets = _octets(sa, not sa.initiator, id_payload.body())
    if auth.method == AuthMethod.PSK:
        if conn.remote.auth != "psk":
            raise AuthError("peer used a PSK where a signature is required")
        if not compare_digest(auth.data, psk_auth(sa.prf, conn.psk, octets)):
            raise AuthError("PSK AUTH does not verify")
        return peer_id
    if conn.remote.auth != "pubkey":
        raise AuthError("peer used a signature where a PSK is configured")
    certs = [c for c in msg.all(PayloadType.CERT) if c.encoding == CertEncoding.X509_SIGNATURE]
    if not certs:
        raise AuthError("no certificate from the peer")
    try:
        ee = load_cert(certs[0].data)
        inter = [load_cert(c.data) for c in certs[1:5]]
    except ValueError as e:
        raise AuthError(f"unparsable certificate: {e}") from None
    verify_chain(ee, inter, conn.remote.cacerts)
    if not cert_matches_identity(ee, peer_id):
        raise AuthError(f"certificate does not vouch for identity {peer_id}")
    verify(ee.public_key(), auth.method, auth.data, octets)
    return peer_id


# ---------------------------------------------------------------- initiator

class IkeAuthTask:
    """Initiator: authenticate and (optionally) create the first Child SA."""
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child_cfg=None):
        self.child_cfg = child_cfg
        self.offered = None
        self.spi_in = 0
        self.local_ts = self.remote_ts = ()

    def build(self, sa, now):
        conn = sa.conn
        idi = IdPayload(conn.local.id.id_type, conn.local.id.data, PayloadType.IDi)
        payloads = [idi]
        auth = _our_auth(sa, conn, idi)
        payloads += [p for p in auth if p.ptype == PayloadType.CERT]
        if sa.engine._wants_initial_contact(sa):
            payloads.append(NotifyPayload(Notify.INITIAL_CONTACT))
            sa.initial_contact = True
        payloads += initiator_certreq(conn)
        if not conn.remote.id.any:
            payloads.append(IdPayload(conn.remote.id.id_type, conn.remote.id.data, PayloadType.IDr))
        payloads += [p for p in auth if p.ptype == PayloadType.AUTH]
        cfg = self.child_cfg
        if cfg is not None:
            self.offered, self.spi_in = cc.offer(sa, cfg, with_dh=False)     # §1.2: no KE here
            if self.offered is None:
                sa.engine._event(ChildSaFailed(sa.ike_id, cfg.name, cc.NO_BOARD_PROPOSAL))
            else:
                self.local_ts, self.remote_ts = cc.our_selectors(sa, cfg)
                if cfg.mode == "transport":
                    payloads.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
                payloads += [SaPayload(self.offered), TsPayload(self.local_ts, PayloadType.TSi),
                             TsPayload(self.remote_ts, PayloadType.TSr)]
        return payloads

    def on_response(self, sa, msg, raw, now) -> bool:
        eng = sa.engine
        idr, auth = msg.get(PayloadType.IDr), msg.get(PayloadType.AUTH)
        if idr is None or auth is None:
            err = msg.error_notify()
            why = notify_error_name(err.notify_type) if err else "no AUTH"
            eng._fail(sa, f"peer refused IKE_AUTH: {why}")
            return True
        try:
            peer_id = _verify_peer(sa, sa.conn, msg, idr, auth)
        except AuthError as e:
            eng._fail(sa, f"authentication of the peer failed: {e}")
            return True
        sa.remote_id = peer_id
        eng._established(sa, now)
        if self.offered is None:
            return True
        cfg = self.child_cfg
        sap, tsi, tsr = msg.get(PayloadType.SA), msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
        if sap is None:
            eng._child_spis.pop(self.spi_in, None)
            err = msg.error_notify()
            eng._event(ChildSaFailed(sa.ike_id, cfg.name, "peer did not create the Child SA: " +
                                     (notify_error_name(err.notify_type) if err else "no SA payload")))
            return True
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.ESP) \
            if len(sap.proposals) == 1 else None
        if chosen is None or tsi is None or tsr is None or not cc.covered(tsi.selectors, self.local_ts) \
                or not cc.covered(tsr.selectors, self.remote_ts):
            eng._child_spis.pop(self.spi_in, None)
            eng._event(ChildSaFailed(sa.ike_id, cfg.name, "unacceptable Child SA in IKE_AUTH response"))
            sa.add_task(DeleteSpisTask([self.spi_in]), now)
            return True
        child = cc.new_child(sa, cfg, cfg.name)
        child.chosen = chosen
        child.spi_in, child.spi_out = self.spi_in, int.from_bytes(chosen.spi, "big")
        child.mode = "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and cfg.mode == "transport" \
            else "tunnel"
        child.local_ts, child.remote_ts = tsi.selectors, tsr.selectors
        child.exchange_initiator = True
        cc.set_keys(sa, child, sa.ni, sa.nr)
        cc.initiator_install(sa, child, now)
        return False            # finished by the install continuation


# ---------------------------------------------------------------- responder

def respond(sa, msg, reply, now):
    """Answer IKE_AUTH. On authentication failure answer AUTHENTICATION_FAILED and drop the SA
    (§2.21.2); a Child SA failure only drops the Child SA."""
    eng = sa.engine
    idi, auth = msg.get(PayloadType.IDi), msg.get(PayloadType.AUTH)
    if idi is None or auth is None:
        reply([NotifyPayload(Notify.AUTHENTICATION_FAILED)], now)
        eng._destroy(sa, "IKE_AUTH without IDi/AUTH", send_delete=False, established=False)
        return None
    idr_req = msg.get(PayloadType.IDr)
    conn, peer_id, why = None, None, "no matching connection"
    for c in sa.candidates:
        if idr_req is not None and not c.local.id.matches(Identity(idr_req.id_type, idr_req.data)):
            why = "IDr names an identity we do not have"
            continue
        try:
            peer_id = _verify_peer(sa, c, msg, idi, auth)
        except AuthError as e:
            why = str(e)
            continue
        conn = c
        break
    if conn is None:
        reply([NotifyPayload(Notify.AUTHENTICATION_FAILED)], now)
        eng._warn(sa, f"IKE_AUTH from {sa.remote[0]} failed: {why}")
        eng._destroy(sa, f"authentication failed: {why}", send_delete=False, established=False)
        return None
    sa.conn = conn
    sa.remote_id = peer_id
    idr = IdPayload(conn.local.id.id_type, conn.local.id.data, PayloadType.IDr)
    head = [idr] + _our_auth(sa, conn, idr)
    if msg.notify(Notify.INITIAL_CONTACT) is not None:
        sa.initial_contact = True

    def send(payloads, now2):
        reply(payloads, now2)
        eng._established(sa, now2)

    if msg.get(PayloadType.SA) is None or not conn.children:
        # childless (RFC 6023) or nothing configured for the peer's request
        tail = [] if msg.get(PayloadType.SA) is None else [NotifyPayload(Notify.TS_UNACCEPTABLE)]
        send(head + tail, now)
        return None
    res = cc.negotiate(sa, msg, ignore_dh=True)
    if isinstance(res, int):
        send(head + [NotifyPayload(res)], now)
        eng._event(ChildSaFailed(sa.ike_id, "", f"no Child SA for the peer: {notify_error_name(res)}"))
        return None

    def finish(payloads, child, tsi, tsr, now2):
        if child is None:
            send(head + payloads, now2)
            return
        send(head + payloads + [TsPayload(tsi, PayloadType.TSi), TsPayload(tsr, PayloadType.TSr)], now2)
        cc.installed_ok(sa, child, now2)

    return cc.responder_child(sa, msg, res, sa.ni, sa.nr, None, finish)
