"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, PSK or certificate authentication (RFC 7427), and
the first Child SA, which may fail on its own while the IKE SA comes up (§1.2, §2.21.2); then what
an established IKE SA starts with: its timers (liveness, rekey, reauthentication) and, as
responder, INITIAL_CONTACT (§2.4)."""
from __future__ import annotations

from secrets import compare_digest

from cryptography.hazmat.primitives import serialization

from . import child_create as cc
from . import ike_intermediate, lifetimes, liveness, natt, reauth
from .auth import (
    AuthError, Identity, cert_matches_identity, load_cert, psk_auth, sign, verify, verify_chain,
)
from .constants import AuthMethod, CertEncoding, ExchangeType, Notify, PayloadType, ProtocolId
from .events import ChildSaFailed, IkeSaUp
from .ike_init import initiator_certreq
from .informational import DeleteSpisTask
from .payloads import AuthPayload, CertPayload, IdPayload, NotifyPayload, SaPayload, TsPayload
from .payloads import notify_error_name
from .proposals import accept_response
from .states import IkeSaState
from .task import Outcome


def _octets(sa, of_initiator: bool, id_body: bytes, mid: int) -> bytes:
    """§2.15 signed octets: RealMessage1 | Nr | prf(SK_pi, IDi') for the initiator,
    RealMessage2 | Ni | prf(SK_pr, IDr') for the responder; after IKE_INTERMEDIATE exchanges
    IntAuth follows (RFC 9242 §3.3.2), with ``mid`` the Message ID of IKE_AUTH."""
    tail = ike_intermediate.auth_octets(sa, mid)
    if of_initiator:
        return sa.init_req + sa.nr + sa.prf(sa.keys.sk_pi, id_body) + tail
    return sa.init_resp + sa.ni + sa.prf(sa.keys.sk_pr, id_body) + tail


def _our_auth(sa, conn, id_payload, mid: int) -> list:
    """CERT (for pubkey) and AUTH for our side."""
    octets = _octets(sa, sa.initiator, id_payload.body(), mid)
    out = []
    if conn.local.auth == "psk":
        out.append(AuthPayload(AuthMethod.PSK, psk_auth(sa.prf, conn.psk, octets)))
    else:
        der = conn.local.cert.public_bytes(serialization.Encoding.DER)
        out.append(CertPayload(CertEncoding.X509_SIGNATURE, der))
        method, data = sign(conn.local.key, octets, sa.peer_hashes, sa.ctx.settings.rsa_pss)
        out.append(AuthPayload(method, data))
    return out


def _verify_peer(sa, conn, msg, id_payload, auth) -> Identity:
    """Check the peer's AUTH (and certificate) against ``conn``; returns its identity."""
    peer_id = Identity(id_payload.id_type, id_payload.data)
    if not conn.remote.id.matches(peer_id):
        raise AuthError(f"peer identity {peer_id} is not {conn.remote.id}")
    octets = _octets(sa, not sa.initiator, id_payload.body(), msg.mid)
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


# ---------------------------------------------------------------- the IKE SA is up

def wants_initial_contact(sa) -> bool:
    """Send INITIAL_CONTACT only when no other IKE SA exists between the same authenticated
    identities (§2.4: it asserts this is the only one; the peer deletes the others — so two
    connections with the same identities must not send it for each other)."""
    if not sa.conn.initial_contact:
        return False
    return not any(o is not sa and o.state != IkeSaState.DEAD
                   for o in sa.ctx.ike_sas_with_conn_ids(sa.conn.local.id, sa.conn.remote.id))


def honour_initial_contact(sa, now: float):
    """§2.4: INITIAL_CONTACT asserts the peer has no other IKE SA with us: every IKE SA between
    the same two authenticated identities that was up before this one began goes, without a
    Delete (the peer has no keys for it) and without a restart. SAs that came up while this
    one was being set up (both sides starting at once) stay: deleting them on one side only
    would leave the other side with a dead IKE SA."""
    for other in list(sa.ctx.by_id.values()):
        if other is sa or other.state not in (IkeSaState.ESTABLISHED, IkeSaState.DELETING) or \
                other.established_at is None or other.established_at >= sa.created:
            continue
        if other.remote_id == sa.remote_id and other.local_id == sa.local_id:
            sa.ctx.stats["initial_contact_replaced"] += 1
            sa.ctx.destroy(other, "replaced (INITIAL_CONTACT)", now)


def established(sa, now: float):
    """Both ends are authenticated (§1.2): IkeSaUp, and the IKE SA's timers start."""
    sa.state = IkeSaState.ESTABLISHED
    sa.established_at = now
    sa.last_heard = now
    sa.expire_at = None
    sa.attempt = None
    sa.ctx.leave_half_open(sa, now)
    sa.init_req = sa.init_resp = b""        # only the AUTH payloads needed them
    sa.int_auth_i = sa.int_auth_r = b""
    sa.prev_cipher = None
    sa.local_id = sa.conn.local.id
    sa.ctx.emit(IkeSaUp(sa.ike_id, sa.conn.name, sa.initiator, sa.local, sa.remote, str(sa.local_id),
                        str(sa.remote_id), sa.chosen.describe()))
    if not sa.initiator and sa.initial_contact:
        honour_initial_contact(sa, now)
    liveness.arm(sa, now)
    natt.arm(sa, now)
    lifetimes.arm_ike(sa, now)
    reauth.arm(sa, now)
    sa.reschedule()


# ---------------------------------------------------------------- both roles

class IkeAuthTask(cc.ChildSaExchange):
    """IKE_AUTH. Initiator: authenticate and (optionally) create the first Child SA with
    ``child_cfg``. Responder: check the peer's AUTH against the candidate connections; a Child SA
    failure only drops the Child SA, an authentication failure the IKE SA (§2.21.2)."""
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child_cfg=None, trigger=None):
        self.child_cfg = child_cfg
        self.trigger = trigger          # (src, dst) of the packet that asked for the Child SA (on demand)
        self.offered = None
        self.spi_in = 0
        self.local_ts = self.remote_ts = ()

    # -------------------------------------------------------------- initiator

    def build(self, sa, now):
        conn = sa.conn
        idi = IdPayload(conn.local.id.id_type, conn.local.id.data, PayloadType.IDi)
        payloads = [idi]
        auth = _our_auth(sa, conn, idi, sa.my_mid)
        payloads += [p for p in auth if p.ptype == PayloadType.CERT]
        if wants_initial_contact(sa):
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
                sa.ctx.emit(ChildSaFailed(sa.ike_id, cfg.name, cc.NO_BOARD_PROPOSAL))
            else:
                self.local_ts, self.remote_ts = (cc.fit_board(sa, ts) for ts in cc.our_selectors(sa, cfg, self.trigger))
                if cfg.mode == "transport":
                    payloads.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
                payloads += [SaPayload(self.offered), TsPayload(self.local_ts, PayloadType.TSi),
                             TsPayload(self.remote_ts, PayloadType.TSr)]
        return payloads

    def on_response(self, sa, msg, raw, now) -> Outcome:
        ctx = sa.ctx
        idr, auth = msg.get(PayloadType.IDr), msg.get(PayloadType.AUTH)
        if idr is None or auth is None:
            err = msg.error_notify()
            why = notify_error_name(err.notify_type) if err else "no AUTH"
            ctx.fail(sa, f"peer refused IKE_AUTH: {why}", now)
            return Outcome.FAILED
        try:
            peer_id = _verify_peer(sa, sa.conn, msg, idr, auth)
        except AuthError as e:
            ctx.fail(sa, f"authentication of the peer failed: {e}", now)
            return Outcome.FAILED
        sa.remote_id = peer_id
        established(sa, now)
        if self.offered is None:
            return Outcome.DONE
        cfg = self.child_cfg
        sap, tsi, tsr = msg.get(PayloadType.SA), msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
        if sap is None:
            ctx.release_child_spi(self.spi_in)
            err = msg.error_notify()
            ctx.emit(ChildSaFailed(sa.ike_id, cfg.name, "peer did not create the Child SA: " +
                                   (notify_error_name(err.notify_type) if err else "no SA payload")))
            return Outcome.DONE
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.ESP) \
            if len(sap.proposals) == 1 else None
        if chosen is None or tsi is None or tsr is None or \
                not cc.acceptable_selectors(sa, tsi.selectors, tsr.selectors, self.local_ts, self.remote_ts):
            ctx.release_child_spi(self.spi_in)
            ctx.emit(ChildSaFailed(sa.ike_id, cfg.name, "unacceptable Child SA in IKE_AUTH response"))
            sa.add_task(DeleteSpisTask([self.spi_in]), now)
            return Outcome.DONE
        child = cc.new_child(sa, cfg, cfg.name)
        child.chosen = chosen
        child.spi_in, child.spi_out = self.spi_in, int.from_bytes(chosen.spi, "big")
        child.mode = "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and cfg.mode == "transport" \
            else "tunnel"
        child.local_ts, child.remote_ts = tsi.selectors, tsr.selectors
        child.exchange_initiator = True
        cc.set_keys(sa, child, sa.ni, sa.nr)
        return self.install(sa, child)

    # -------------------------------------------------------------- responder

    def on_request(self, sa, msg, reply, now) -> Outcome:
        ctx = sa.ctx
        self.reply = reply
        idi, auth = msg.get(PayloadType.IDi), msg.get(PayloadType.AUTH)
        if sa.ake_pending:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)       # RFC 9370 §2.2.2: IKE_AUTH comes last
            ctx.destroy(sa, "IKE_AUTH before the additional key exchanges", now, established=False)
            return Outcome.DONE
        if idi is None or auth is None:
            reply([NotifyPayload(Notify.AUTHENTICATION_FAILED)], now)
            ctx.destroy(sa, "IKE_AUTH without IDi/AUTH", now, established=False)
            return Outcome.DONE
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
            ctx.warn(sa, f"IKE_AUTH from {sa.remote[0]} failed: {why}")
            ctx.destroy(sa, f"authentication failed: {why}", now, established=False)
            return Outcome.DONE
        sa.conn = conn
        sa.remote_id = peer_id
        idr = IdPayload(conn.local.id.id_type, conn.local.id.data, PayloadType.IDr)
        self.head = [idr] + _our_auth(sa, conn, idr, msg.mid)
        if msg.notify(Notify.INITIAL_CONTACT) is not None:
            sa.initial_contact = True
        if msg.get(PayloadType.SA) is None or not conn.children:
            # childless (RFC 6023) or nothing configured for the peer's request
            self.answer(sa, [] if msg.get(PayloadType.SA) is None else [NotifyPayload(Notify.TS_UNACCEPTABLE)],
                        now)
            return Outcome.DONE
        neg = cc.negotiate(sa, msg, ignore_dh=True)
        if neg.error is not None:
            self.answer(sa, [NotifyPayload(neg.error)], now)
            ctx.emit(ChildSaFailed(sa.ike_id, "", f"no Child SA for the peer: {notify_error_name(neg.error)}"))
            return Outcome.DONE
        return self.accept_child(sa, msg, neg, sa.ni, sa.nr, None)

    def answer(self, sa, payloads, now):
        """The response goes out, then the IKE SA is up (with or without the Child SA)."""
        self.reply(self.head + payloads, now)
        established(sa, now)
