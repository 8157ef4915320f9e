"""IKE_INTERMEDIATE (RFC 9242) carrying RFC 9370's additional key exchanges between IKE_SA_INIT
and IKE_AUTH, both roles.

IKE_SA_INIT agrees on up to seven key exchanges after the first (Transform Types 6..12, e.g.
ML-KEM-768 after X25519: ``aes256gcm16-prfsha384-x25519-ke1_mlkem768``) and both ends send
N(INTERMEDIATE_EXCHANGE_SUPPORTED) (RFC 9242 §3.1). Then one IKE_INTERMEDIATE exchange per
additional key exchange, in type order (RFC 9370 §2.2.2):

    HDR, SK {KEi(n)}  -->
                      <--  HDR, SK {KEr(n)}

protected with the keys of the step before it. After it SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni |
Nr) and the seven keys are derived anew (§2.14 with the same PRF, nonces and SPIs); the next
message uses them. IKE_AUTH follows with the next Message ID.

IKE_AUTH authenticates these exchanges (RFC 9242 §3.3.2): each end chains

    IntAuth_i(n) = prf(SK_pi(n), IntAuth_i(n-1) | IntAuth_i(n)_A | IntAuth_i(n)_P)    requests
    IntAuth_r(n) = prf(SK_pr(n), IntAuth_r(n-1) | IntAuth_r(n)_A | IntAuth_r(n)_P)    responses

with the SK_p keys that protected exchange n (IntAuth(0) empty). _A is the IKE header and the
Encrypted payload header, their lengths counting the inner payloads but no IV, padding or ICV;
_P the inner payloads (encoded as this codec encodes them, which is how strongSwan computes it
too). The AUTH payloads then cover ... | IntAuth_iN | IntAuth_rN | IKE_AUTH's Message ID
(ike_auth.py, ``auth_octets``).
"""
from __future__ import annotations

import struct

from .constants import GENERIC_HEADER_LEN, IKE_HEADER_LEN, IKE_VERSION, ExchangeType, Flag, Notify, PayloadType
from .crypto import CryptoError, dh_group
from .keys import derive, skeyseed_intermediate
from .payloads import KePayload, NotifyPayload, encode_chain, notify_error_name
from .task import Outcome, Task

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")
_SK = int(PayloadType.SK)


def int_auth_data(spi_i: bytes, spi_r: bytes, exchange: int, flags: int, mid: int, payloads: list) -> bytes:
    """IntAuth_A | IntAuth_P of one IKE_INTERMEDIATE message (RFC 9242 §3.3.2)."""
    first, chain = encode_chain(payloads)
    sk_len = GENERIC_HEADER_LEN + len(chain)
    return _HDR.pack(spi_i, spi_r, _SK, IKE_VERSION, exchange, flags, mid, IKE_HEADER_LEN + sk_len) + \
        _GEN.pack(first, 0, sk_len) + chain


def _chain(sa, of_request: bool, flags: int, mid: int, payloads: list):
    """Fold one message of the running exchange into IntAuth_i (requests) or IntAuth_r."""
    data = int_auth_data(sa.spi_i, sa.spi_r, ExchangeType.IKE_INTERMEDIATE, flags, mid, payloads)
    if of_request:
        sa.int_auth_i = sa.prf(sa.keys.sk_pi, sa.int_auth_i + data)
    else:
        sa.int_auth_r = sa.prf(sa.keys.sk_pr, sa.int_auth_r + data)


def auth_octets(sa, mid: int) -> bytes:
    """What RFC 9242 §3.3.2 appends to both AUTH payloads' signed octets: IntAuth_iN | IntAuth_rN |
    the Message ID of IKE_AUTH; nothing if no IKE_INTERMEDIATE exchange took place."""
    if not sa.int_auth_i:
        return b""
    return sa.int_auth_i + sa.int_auth_r + mid.to_bytes(4, "big")


def _advance(sa, secret: bytes):
    """RFC 9370 §2.2.2: the keys after an additional key exchange."""
    derive(sa, None, skeyseed_intermediate(sa.prf, sa.keys.sk_d, secret, sa.ni, sa.nr))


def _flags(sa, response: bool) -> int:
    return (Flag.RESPONSE if response else 0) | (Flag.INITIATOR if sa.initiator else 0)


# ---------------------------------------------------------------- IKE_SA_INIT's part

def wanted(conns) -> bool:
    """Does any of these connections propose additional key exchanges?"""
    return any(s.ake for c in conns for s in c.proposals)


def init_request_payloads(conn) -> list:
    """Initiator, IKE_SA_INIT: N(INTERMEDIATE_EXCHANGE_SUPPORTED) if we propose additional key
    exchanges (RFC 9242 §3.1)."""
    return [NotifyPayload(Notify.INTERMEDIATE_EXCHANGE_SUPPORTED)] if wanted([conn]) else []


def init_response_usable(msg, chosen) -> bool:
    """Initiator: an IKE_SA_INIT answer that chose additional key exchanges must also say it
    supports IKE_INTERMEDIATE (RFC 9370 §2.2.1)."""
    return not chosen.ake or msg.notify(Notify.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None


def start(sa, chosen, now: float):
    """Initiator, after IKE_SA_INIT: queue the first IKE_INTERMEDIATE before the IKE_AUTH."""
    if chosen.ake:
        sa.ake_pending = list(chosen.ake)
        sa.add_task(IntermediateTask(), now, first=True)


def init_request_refused(msg, chosen) -> bool:
    """Responder: additional key exchanges chosen from an offer whose sender does not support
    IKE_INTERMEDIATE (it must say so, RFC 9370 §2.2.1): NO_PROPOSAL_CHOSEN."""
    return bool(chosen.ake) and msg.notify(Notify.INTERMEDIATE_EXCHANGE_SUPPORTED) is None


def init_response_payloads(sa, msg, chosen) -> list:
    """Responder, IKE_SA_INIT: we support IKE_INTERMEDIATE, say so to a peer that does; note the
    key exchanges to come."""
    sa.ake_pending = list(chosen.ake)
    if msg.notify(Notify.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
        return []
    return [NotifyPayload(Notify.INTERMEDIATE_EXCHANGE_SUPPORTED)]


# ---------------------------------------------------------------- the exchange, both roles

class IntermediateTask(Task):
    """One IKE_INTERMEDIATE exchange: the next additional key exchange (RFC 9370 §2.2.2)."""
    exchange = ExchangeType.IKE_INTERMEDIATE

    def __init__(self):
        self.priv = None
        self.method = 0

    # -------------------------------------------------------------- initiator

    def build(self, sa, now):
        _ttype, self.method = sa.ake_pending[0]
        self.priv, pub = dh_group(self.method).generate()
        payloads = [KePayload(self.method, pub)]
        _chain(sa, True, _flags(sa, False), sa.my_mid, payloads)
        return payloads

    def on_response(self, sa, msg, raw, now) -> Outcome:
        ctx = sa.ctx
        err = msg.error_notify()
        if err is not None:
            ctx.fail(sa, f"IKE_INTERMEDIATE refused: {notify_error_name(err.notify_type)}", now)
            return Outcome.FAILED
        _chain(sa, False, msg.flags, msg.mid, msg.payloads)
        ke = msg.get(PayloadType.KE)
        try:
            if ke is None or ke.group != self.method:
                raise CryptoError("no KE payload of the agreed method")
            secret = dh_group(self.method).shared(self.priv, ke.data)
        except CryptoError as e:
            ctx.fail(sa, f"unusable IKE_INTERMEDIATE response: {e}", now)
            return Outcome.FAILED
        self.priv = None
        _advance(sa, secret)
        sa.ake_pending.pop(0)
        ctx.stats["intermediate_exchanges"] += 1
        if sa.ake_pending:
            sa.add_task(IntermediateTask(), now, first=True)
        return Outcome.DONE

    def abort(self, sa):
        self.priv = None

    # -------------------------------------------------------------- responder

    def on_request(self, sa, msg, reply, now) -> Outcome:
        ctx = sa.ctx
        _chain(sa, True, msg.flags, msg.mid, msg.payloads)
        ke = msg.get(PayloadType.KE)
        if ke is None and not sa.ake_pending:
            # RFC 9242 leaves IKE_INTERMEDIATE to other extensions too: nothing of ours in it
            _chain(sa, False, _flags(sa, True), msg.mid, [])
            reply([], now)
            return Outcome.DONE
        error = None
        if not sa.ake_pending or ke is None:
            error = Notify.INVALID_SYNTAX
        elif ke.group != sa.ake_pending[0][1]:
            error = Notify.NO_PROPOSAL_CHOSEN
        else:
            try:
                pub, secret = dh_group(ke.group).respond(ke.data)
            except CryptoError:
                error = Notify.INVALID_SYNTAX
        if error is not None:
            reply([NotifyPayload(error)], now)
            ctx.destroy(sa, f"unusable IKE_INTERMEDIATE request ({notify_error_name(error)})", now,
                        established=False)
            return Outcome.DONE
        payloads = [KePayload(ke.group, pub)]
        _chain(sa, False, _flags(sa, True), msg.mid, payloads)
        reply(payloads, now)            # still under the old keys
        sa.prev_cipher = sa.cipher      # a resent fragmented request still opens (fragments.py)
        _advance(sa, secret)
        sa.ake_pending.pop(0)
        ctx.stats["intermediate_exchanges"] += 1
        return Outcome.DONE
