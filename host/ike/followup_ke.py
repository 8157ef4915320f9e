"""IKE_FOLLOWUP_KE (RFC 9370 §2.2.4): the additional key exchanges of a CREATE_CHILD_SA exchange
(an IKE SA rekey, or a Child SA created or rekeyed with PFS), both roles.

    HDR(CREATE_CHILD_SA), SK {SA, Ni, KEi, ...}  -->
                  <--  HDR(CREATE_CHILD_SA), SK {SA, Nr, KEr, N(ADDITIONAL_KEY_EXCHANGE)(link1), ...}
    HDR(IKE_FOLLOWUP_KE), SK {N(ADDITIONAL_KEY_EXCHANGE)(link1), KEi(1)}  -->
                  <--  HDR(IKE_FOLLOWUP_KE), SK {KEr(1), N(ADDITIONAL_KEY_EXCHANGE)(link2)}
    ...                (the last response has no notify)

The link data is the responder's: it finds the exchange waiting for more key exchanges by it,
and answers STATE_NOT_FOUND if it has none (dropped after FOLLOWUP_TIMEOUT, or never known).
The keys come once every key exchange is done, from all the secrets in order: SKEYSEED =
prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) for an IKE SA, KEYMAT = prf+(SK_d, SK(0) | Ni |
Nr | SK(1) | ... | SK(n)) for a Child SA (keys.py).

The exchange that started it (its *owner*: rekey.RekeyIkeTask, child_create.CreateChildTask)
keeps its own logic; this module moves the key exchanges and calls back:
    owner.followups                     a Followups
    owner.followups_done(sa, now)       initiator: all done -> Outcome (DONE, or PENDING for an install)
    owner.followups_failed(sa, why, now)        initiator: refused or unusable
    owner.followups_answer(sa, payloads, reply, now)   responder: all done; answer with
                                        ``payloads`` (KEr) -> Outcome
    owner.followups_dropped(sa)         responder: the state was given up
    owner.rekeys_ike, owner.down_cause  read while its follow-ups run
"""
from __future__ import annotations

import os

from .constants import ExchangeType, Notify, PayloadType
from .crypto import CryptoError, dh_group
from .payloads import KePayload, NotifyPayload, notify_error_name
from .task import Outcome, Task

FOLLOWUP_TIMEOUT = 30.0     # the responder drops an exchange still waiting for key exchanges
TIMER = "followup"          # IkeSa timer (TIMER, link): that drop
MAX_WAITING = 8             # exchanges an IKE SA keeps waiting (the peer has a window of one)


class Followups:
    """The additional key exchanges of one CREATE_CHILD_SA exchange: the (type, method) still to
    do, the secrets so far (SK(1) .. in order) and the responder's current link data."""
    __slots__ = ("link", "pending", "secrets")

    def __init__(self, ake, link: bytes = b""):
        self.pending = list(ake)
        self.secrets = []
        self.link = link

    def additional(self) -> bytes:
        """SK(1) | ... | SK(n) (RFC 9370 §2.2.4)."""
        return b"".join(self.secrets)

    def wipe(self):
        self.secrets = []


def link_notify(link: bytes) -> NotifyPayload:
    return NotifyPayload(Notify.ADDITIONAL_KEY_EXCHANGE, link)


def wait(sa, owner, now: float) -> NotifyPayload:
    """Responder: ``owner`` waits for the peer's next IKE_FOLLOWUP_KE; returns the notify that
    tells the peer how to name it."""
    if len(sa.followup_waiting) >= MAX_WAITING:
        oldest = next(iter(sa.followup_waiting))
        drop(sa, (TIMER, oldest), now)
    link = os.urandom(8)
    owner.followups.link = link
    sa.followup_waiting[link] = owner
    sa.set_timer((TIMER, link), now + FOLLOWUP_TIMEOUT)
    return link_notify(link)


def drop(sa, key, now: float):
    """Timer handler, and when too many wait: the peer never continued; give the state up."""
    owner = sa.followup_waiting.pop(key[1], None)
    sa.clear_timer(key)
    if owner is not None:
        sa.ctx.stats["followup_states_dropped"] += 1
        owner.followups.wipe()
        owner.followups_dropped(sa)


def drop_all(sa):
    """The IKE SA goes away (or moved on): nothing waits any more."""
    for link in list(sa.followup_waiting):
        owner = sa.followup_waiting.pop(link)
        sa.clear_timer((TIMER, link))
        sa.ctx.stats["followup_states_dropped"] += 1
        owner.followups.wipe()
        owner.followups_dropped(sa)


class FollowupKeTask(Task):
    """One IKE_FOLLOWUP_KE exchange. Initiator: the next key exchange of ``owner``'s exchange.
    Responder: a fresh task per request, which finds the owner by the link data."""
    exchange = ExchangeType.IKE_FOLLOWUP_KE

    def __init__(self, owner=None):
        self.owner = owner
        self.priv = None
        self.method = 0

    @property
    def rekeys_ike(self):
        return self.owner is not None and self.owner.rekeys_ike

    @property
    def down_cause(self):
        return self.owner.down_cause if self.owner is not None else "timeout"

    # -------------------------------------------------------------- initiator

    def build(self, sa, now):
        f = self.owner.followups
        _ttype, self.method = f.pending[0]
        self.priv, pub = dh_group(self.method).generate()
        return [link_notify(f.link), KePayload(self.method, pub)]

    def on_response(self, sa, msg, raw, now) -> Outcome:
        owner, f = self.owner, self.owner.followups
        err = msg.error_notify()
        if err is not None:
            f.wipe()
            owner.followups_failed(sa, notify_error_name(err.notify_type), now)
            return Outcome.DONE
        ke = msg.get(PayloadType.KE)
        try:
            if ke is None or ke.group != self.method:
                raise CryptoError("no KE payload of the agreed method")
            f.secrets.append(dh_group(self.method).shared(self.priv, ke.data))
        except CryptoError as e:
            f.wipe()
            owner.followups_failed(sa, f"unusable IKE_FOLLOWUP_KE response ({e})", now)
            return Outcome.DONE
        self.priv = None
        f.pending.pop(0)
        sa.ctx.stats["followup_exchanges"] += 1
        if not f.pending:
            return owner.followups_done(sa, now)
        n = msg.notify(Notify.ADDITIONAL_KEY_EXCHANGE)
        if n is None or not n.data:
            f.wipe()
            owner.followups_failed(sa, "IKE_FOLLOWUP_KE response without the next link", now)
            return Outcome.DONE
        f.link = n.data
        sa.add_task(FollowupKeTask(owner), now, first=True)
        return Outcome.DONE

    def abort(self, sa):
        self.priv = None
        if self.owner is not None:
            self.owner.followups.wipe()
            self.owner.abort(sa)

    # -------------------------------------------------------------- responder

    def on_request(self, sa, msg, reply, now) -> Outcome:
        n = msg.notify(Notify.ADDITIONAL_KEY_EXCHANGE)
        owner = sa.followup_waiting.pop(n.data, None) if n is not None else None
        if owner is None:
            sa.ctx.stats["followup_state_not_found"] += 1
            reply([NotifyPayload(Notify.STATE_NOT_FOUND)], now)
            return Outcome.DONE
        sa.clear_timer((TIMER, n.data))
        f = owner.followups
        ke = msg.get(PayloadType.KE)
        try:
            if ke is None or ke.group != f.pending[0][1]:
                raise CryptoError("no KE payload of the agreed method")
            pub, secret = dh_group(ke.group).respond(ke.data)
        except CryptoError:
            f.wipe()
            owner.followups_dropped(sa)
            reply([NotifyPayload(Notify.NO_PROPOSAL_CHOSEN if ke is not None else Notify.INVALID_SYNTAX)], now)
            return Outcome.DONE
        f.secrets.append(secret)
        f.pending.pop(0)
        sa.ctx.stats["followup_exchanges"] += 1
        payloads = [KePayload(ke.group, pub)]
        if f.pending:
            reply(payloads + [wait(sa, owner, now)], now)
            return Outcome.DONE
        return owner.followups_answer(sa, payloads, reply, now)
