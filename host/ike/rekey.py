"""Rekeying (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.18, §2.25): Child SAs and IKE SAs in both roles,
lifetimes with jitter, expiry, and simultaneous rekeys (§2.8.1, §2.8.2).

Child SA (§1.3.3, §2.8): CREATE_CHILD_SA {N(REKEY_SA, SPI we receive on), SA, Ni, [KEi], TSi, TSr}
with the old SA's selectors. The new SA is installed next to the old one (``ChildSaInstall.rekey_of``)
and the initiator of the rekey deletes the old one only after that, so nothing is lost in
between. The responder of a rekey keeps sending on the old SA until the peer deletes it
(``defer_outbound``, then ``ChildSaOutbound``).

IKE SA (§1.3.2, §2.18): CREATE_CHILD_SA {SA (new SPI in the proposal), Ni, KEi}; SKEYSEED =
prf_old(SK_d old, g^ir new | Ni | Nr), keys per §2.14 with the new SPIs and PRF. The one who
initiated the rekey is the new IKE SA's original initiator; Message IDs start at 0; every Child SA
moves to the new IKE SA (``IkeSaRekeyed``); the rekey initiator deletes the old IKE SA with its
last request on it.

Collisions: a rekey request for an SA we are rekeying ourselves is answered as usual and noted;
when both exchanges are done, "the SA created with the lowest of the four nonces ... SHOULD be
closed by the endpoint that created it" and the other new SA inherits (§2.8.1, §2.8.2). A request
to rekey an SA we are closing or already replaced gets TEMPORARY_FAILURE; one for an SA we do not
have gets CHILD_SA_NOT_FOUND (§2.25). TEMPORARY_FAILURE is retried later, never at once.

Lifetimes (lifetimes.py arms the timers): the handlers here rekey a Child SA or IKE SA when its
rekey time comes, and delete it at its hard end (re-created if the connection is kept up).
"""
from __future__ import annotations

from . import followup_ke, liveness, natt
from .child_create import NONCE_LEN, CreateChildTask, ike_busy, proposes_ike
from .constants import ExchangeType, Notify, PayloadType, ProtocolId
from .crypto import CryptoError, dh_group, random_bytes
from .events import IkeSaRekeyed
from .ike_init import ZERO_SPI, select_ike
from .ike_sa import IkeSa, RekeyCollision
from .informational import DeleteChildTask, DeleteIkeTask, DeleteSpisTask, LivenessTask
from .keys import derive, skeyseed_rekey
from .lifetimes import CHILD_EXPIRE, CHILD_REKEY, IKE_REKEY, REAP, arm_ike, retry_child_rekey
from .payloads import KePayload, NoncePayload, NotifyPayload, SaPayload, notify_error_name
from .proposals import accept_response
from .states import ChildSaState, IkeSaState, RekeyState
from .task import Outcome, Task

REDUNDANT = "redundant (simultaneous rekey, RFC 7296 §2.8.1)"


def _lowest_is_ours(ours: tuple, theirs: tuple) -> bool:
    """§2.8.1: is the lowest of the four nonces in our exchange (then our new SA is redundant)?"""
    return min(ours + theirs) in ours


def responder_for(msg) -> Task:
    """The task that answers a CREATE_CHILD_SA request: a Child SA rekey (REKEY_SA), an IKE SA
    rekey (an IKE proposal, §1.3.2) or a new Child SA (§1.3.1)."""
    if msg.notify(Notify.REKEY_SA) is not None:
        return RekeyChildTask()
    if proposes_ike(msg):
        return RekeyIkeTask()
    return CreateChildTask()


# ---------------------------------------------------------------- timers

def on_child_rekey(sa, key, now):
    child = sa.children.get(key[1])
    if child is not None:
        start_child_rekey(sa, child, now)


def on_child_expire(sa, key, now):
    child = sa.children.get(key[1])
    if child is not None and child.state == ChildSaState.INSTALLED:
        sa.ctx.stats["child_hard_expiries"] += 1
        sa.ctx.recreate_child(sa, child, now, "hard lifetime expired")


def on_ike_rekey(sa, key, now):
    start_ike_rekey(sa, now)


def on_ike_expire(sa, key, now):
    """§2.8: an IKE SA past its hard lifetime is deleted (and re-created if the connection is
    kept up: ``dpd_action = restart`` or ``start_action = start``)."""
    if sa.state == IkeSaState.ESTABLISHED and sa.successor is None:
        sa.ctx.stats["ike_hard_expiries"] += 1
        sa.queue.clear()
        sa.add_task(DeleteIkeTask("IKE SA lifetime expired", down_cause="expired"), now, first=True)


def on_reap(sa, key, now):
    """A replaced or redundant IKE SA the peer should have deleted by now."""
    if sa.state != IkeSaState.DEAD:
        sa.ctx.destroy(sa, "rekeyed" if sa.successor is not None else REDUNDANT, now, send_delete=True)


# ---------------------------------------------------------------- Child SA, both roles

def start_child_rekey(sa: IkeSa, child, now: float) -> bool:
    """Queue a rekey of ``child`` unless one runs, it was replaced, or it is not installed."""
    if child.state != ChildSaState.INSTALLED or child.rekey_state is not None or \
            sa.state != IkeSaState.ESTABLISHED or sa.successor is not None:
        return False
    if any(isinstance(t, RekeyChildTask) and t.old is child for t in sa.queue) or \
            (isinstance(sa.active, RekeyChildTask) and sa.active.old is child):
        return False
    sa.clear_timer((CHILD_REKEY, child.handle))
    sa.add_task(RekeyChildTask(child), now)
    return True


class RekeyChildTask(CreateChildTask):
    """Rekey of a Child SA (§1.3.3, §2.25.1). Initiator (``child`` given): same configuration and
    selectors, new SPIs and keys (PFS if the proposal has a DH group). Responder: the peer's
    REKEY_SA names the SA it replaces."""

    def __init__(self, child=None):
        super().__init__(child.cfg if child is not None else None, child.name if child is not None else None)
        self.old = child
        self.nr = b""

    # -------------------------------------------------------------- initiator

    def selectors(self, sa):
        return list(self.old.local_ts), list(self.old.remote_ts)

    def request_head(self, sa):
        out = [NotifyPayload(Notify.REKEY_SA, b"", ProtocolId.ESP, self.old.spi_in.to_bytes(4, "big"))]
        if self.old.mode == "transport":
            out.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
        return out

    def build(self, sa, now):
        old = self.old
        if old.ike is not sa or old.state != ChildSaState.INSTALLED or old.rekey_state is not None:
            return None
        payloads = super().build(sa, now)
        if payloads is None:                    # the board can run none of the proposals now
            retry_child_rekey(sa, old, now)
            return None
        old.rekey_state = RekeyState.REKEYING
        old.collisions = []
        sa.ctx.stats["child_rekeys_started"] += 1
        return payloads

    def _live_collision(self) -> RekeyCollision | None:
        """The peer's rekey of the same SA that we answered while ours ran (one whose install
        failed here was taken off the list: the peer got an error, so ours stands)."""
        return self.old.collisions[0] if self.old.collisions else None

    def _failed(self, sa, now, why):
        """Our rekey did not produce a new SA."""
        old = self.old
        ctx = sa.ctx
        if self._live_collision() is not None:
            old.rekey_state = RekeyState.REKEYED    # the peer's rekey of it went through: that one stands
            return
        if old.rekey_state == RekeyState.RECREATE:  # dropped meanwhile for a reason that wants it back
            old.rekey_state = None
            if old.cfg is not None and old.cfg.name in sa.conn.children and sa.state == IkeSaState.ESTABLISHED:
                sa.add_task(CreateChildTask(old.cfg), now)
            return
        old.rekey_state = None
        if why == "not found":
            # §2.25: the peer has no such Child SA: drop ours silently and create it anew
            if old.state == ChildSaState.INSTALLED:
                ctx.recreate_child(sa, old, now, "peer does not have it (CHILD_SA_NOT_FOUND)", tell_peer=False)
            return
        ctx.stats["child_rekeys_failed"] += 1
        ctx.warn(sa, f"rekey of Child SA {old.handle} failed ({why}); retrying")
        retry_child_rekey(sa, old, now)

    def refused(self, sa, err, now):
        sa.ctx.release_child_spi(self.spi_in)
        self._failed(sa, now, "not found" if err.notify_type == Notify.CHILD_SA_NOT_FOUND
                     else notify_error_name(err.notify_type))

    def unacceptable(self, sa, chosen, now):
        super().unacceptable(sa, chosen, now)
        self._failed(sa, now, "unacceptable response")

    def on_response(self, sa, msg, raw, now) -> Outcome:
        ans = self.accepted(sa, msg, now)
        if ans is None:
            return Outcome.DONE
        self.nr = ans.nonce.data
        if ans.chosen.ake:
            return self.follow_up(sa, msg, ans, now)
        return self.created_child(sa, self.make_child(sa, self.answer_mode(msg), ans), now)

    def created_child(self, sa, child, now) -> Outcome:
        child.rekey_of = self.old.handle
        child.defer_outbound = self._live_collision() is not None    # undecided until both are done
        return self.install(sa, child)

    def followups_failed(self, sa, why, now):
        self.answered = None
        sa.ctx.release_child_spi(self.spi_in)
        self._failed(sa, now, f"additional key exchange failed: {why}")

    def after_install(self, sa, new, ok, now):
        if new.exchange_initiator:
            self._decide(sa, new, ok, now)
        elif ok:
            old = sa.children.get(new.rekey_of)
            if old is None or old.state == ChildSaState.DEAD:
                sa.ctx.switch_outbound(sa, new)         # the peer deleted the old one already
        else:
            self._answered_install_failed(sa, new, now)

    def _decide(self, sa, new, ok, now):
        """Our rekey's new SA is installed (or refused): keep it and delete the old one, or, after a
        simultaneous rekey, close whichever of the two new SAs has the lowest nonce (§2.8.1)."""
        old = self.old
        ctx = sa.ctx
        if not ok:
            self._failed(sa, now, "board refused the new SA")
            return
        ctx.stats["child_rekeys_done"] += 1
        col = self._live_collision()
        if col is not None:
            if _lowest_is_ours((self.ni, self.nr), (col.ni, col.nr)):
                # ours is redundant: close it; the peer, whose SA survives, deletes the old one
                ctx.stats["child_rekey_collisions_lost"] += 1
                new.rekey_state = RekeyState.REDUNDANT
                old.rekey_state = RekeyState.REKEYED
                sa.add_task(DeleteChildTask([new.handle], REDUNDANT), now, first=True)
                return
            ctx.stats["child_rekey_collisions_won"] += 1
            col.new.rekey_state = RekeyState.REDUNDANT      # the peer closes it
            if new.defer_outbound:
                ctx.switch_outbound(sa, new)
        if old.state == ChildSaState.INSTALLED:
            old.rekey_state = RekeyState.REKEYED
            sa.add_task(DeleteChildTask([old.handle], "rekeyed"), now, first=True)

    # -------------------------------------------------------------- responder

    def on_request(self, sa, msg, reply, now) -> Outcome:
        """Answer the peer's REKEY_SA (§1.3.3, §2.25.1)."""
        ctx = sa.ctx
        self.reply = reply
        n = msg.notify(Notify.REKEY_SA)
        busy = ike_busy(sa)
        if busy is not None:
            reply([NotifyPayload(busy)], now)
            return Outcome.DONE
        spi = int.from_bytes(n.spi, "big") if len(n.spi) == 4 else None
        old = None
        if spi is not None and n.protocol == ProtocolId.ESP:
            old = next((c for c in sa.children.values() if c.spi_out == spi and c.state != ChildSaState.DEAD),
                       None) or \
                next((c for c in sa.children.values() if c.spi_in == spi and c.state != ChildSaState.DEAD), None)
        if old is None:
            if isinstance(sa.active, CreateChildTask) and sa.outstanding is not None:
                # the SPI may belong to the Child SA our own exchange in flight creates (its response,
                # with the peer's SPI, has not reached us): not "not found" yet (§2.25)
                ctx.stats["rekey_child_unknown_while_creating"] += 1
                reply([NotifyPayload(Notify.TEMPORARY_FAILURE)], now)
                return Outcome.DONE
            ctx.stats["rekey_child_not_found"] += 1
            reply([NotifyPayload(Notify.CHILD_SA_NOT_FOUND, b"", n.protocol, n.spi)], now)
            return Outcome.DONE
        if old.state != ChildSaState.INSTALLED or \
                old.rekey_state in (RekeyState.REKEYED, RekeyState.REDUNDANT, RekeyState.RECREATE):
            reply([NotifyPayload(Notify.TEMPORARY_FAILURE)], now)         # closing or replaced
            return Outcome.DONE
        self.old = old
        self.collides = old.rekey_state == RekeyState.REKEYING
        return self.respond_child(sa, msg, now, rekey_of=old)

    def created(self, sa, child, ni, nr):
        old = self.old
        if self.collides:
            old.collisions.append(RekeyCollision(ni, nr, child))
            sa.ctx.stats["child_rekey_collisions"] += 1
        else:
            old.rekey_state = RekeyState.REKEYED
            sa.clear_timer((CHILD_REKEY, old.handle))

    def _answered_install_failed(self, sa, child, now):
        """The board refused the SA that was to replace ``child.rekey_of``: the old one stays."""
        old = sa.children.get(child.rekey_of)
        if old is None:
            return
        old.collisions = [c for c in old.collisions if c.new is not child]
        if old.rekey_state == RekeyState.REKEYED:
            old.rekey_state = None
            retry_child_rekey(sa, old, now)


# ---------------------------------------------------------------- IKE SA, both roles

def start_ike_rekey(sa: IkeSa, now: float) -> bool:
    if sa.state != IkeSaState.ESTABLISHED or sa.successor is not None:
        return False
    if any(isinstance(t, RekeyIkeTask) for t in sa.queue) or isinstance(sa.active, RekeyIkeTask):
        return False
    sa.clear_timer(IKE_REKEY)
    sa.add_task(RekeyIkeTask(), now)
    return True


def _child_exchange_running(sa: IkeSa) -> bool:
    """§2.25.1: a Child SA of this IKE SA is being created, rekeyed or closed (also: its
    additional key exchanges still run, RFC 9370, or the peer's wait for theirs)."""
    if isinstance(sa.active, (CreateChildTask, DeleteChildTask, DeleteSpisTask)):
        return True
    if isinstance(sa.active, followup_ke.FollowupKeTask) and not sa.active.rekeys_ike:
        return True
    if any(not o.rekeys_ike for o in sa.followup_waiting.values()):
        return True
    return any(c.state in (ChildSaState.INSTALLING, ChildSaState.DELETING) or c.rekey_state == RekeyState.REKEYING
               for c in sa.children.values())


class RekeyIkeTask(Task):
    """Rekey of the IKE SA (§1.3.2, §2.18), both roles."""
    exchange = ExchangeType.CREATE_CHILD_SA
    rekeys_ike = True

    def __init__(self, group: int = 0, ke_retried: bool = False):
        self.group = group
        self.ke_retried = ke_retried
        self.new = None
        self.spi = b""
        self.ni = self.nr = b""
        self.dh_priv = None
        self.offered = []
        self.chosen = None
        self.shared = None              # SK(0), kept while RFC 9370's follow-up exchanges run
        self.followups = None

    # -------------------------------------------------------------- initiator

    def build(self, sa, now):
        ctx = sa.ctx
        if sa.state != IkeSaState.ESTABLISHED or sa.successor is not None or sa.rekey_collision is not None:
            return None
        if _child_exchange_running(sa) or sa.followup_waiting:
            sa.set_timer(IKE_REKEY, now + 1.0)      # not in the middle of a Child SA exchange
            return None
        conn = sa.conn
        groups = [g for s in conn.proposals for g in s.dh if g]
        if not groups:
            return None
        if not self.group:
            self.group = sa.dh_group if sa.dh_group in groups else groups[0]
        # the new IKE SA exists from here on, but dead: messages for its SPI are dropped until
        # the exchange completes
        self.new = ctx.new_ike_sa(True, sa.local, sa.remote, now, register=False)
        self.new.state = IkeSaState.DEAD
        self.spi = ctx.alloc_ike_spi(self.new)
        self.ni = random_bytes(NONCE_LEN)
        self.dh_priv, pub = dh_group(self.group).generate()
        specs = sorted(conn.proposals, key=lambda s: self.group not in s.dh)    # KE group first
        self.offered = [s.to_proposal(i + 1, self.spi) for i, s in enumerate(specs)]
        ctx.stats["ike_rekeys_started"] += 1
        return [SaPayload(self.offered), NoncePayload(self.ni), KePayload(self.group, pub)]

    def _close_redundant(self, sa, msg, now) -> bool:
        """Our exchange completed but lost: bring its IKE SA up only to delete it (§2.8.2)."""
        sap = msg.get(PayloadType.SA)
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.IKE) \
            if sap is not None and len(sap.proposals) == 1 else None
        if not self._up_only_to_delete(sa, chosen, msg.get(PayloadType.NONCE), msg.get(PayloadType.KE),
                                       REDUNDANT, now):
            return False
        sa.ctx.stats["ike_rekey_collisions_lost"] += 1
        return True

    def _up_only_to_delete(self, sa, chosen, nonce, ke, reason, now) -> bool:
        """Make the new IKE SA's keys from the peer's answer (``chosen`` proposal, nonce, KE) and
        delete it there at once (§1.4.1), never announced. False if the keys cannot be made."""
        if chosen is None or nonce is None or ke is None or ke.group != self.group or \
                chosen.dh != self.group or chosen.ake or len(chosen.spi) != 8 or chosen.spi == ZERO_SPI:
            return False
        new = self.new
        try:
            shared = dh_group(self.group).shared(self.dh_priv, ke.data)
            new.spi_i, new.spi_r = self.spi, chosen.spi
            setup(sa, new, chosen, skeyseed_rekey(sa.prf, sa.keys.sk_d, shared, self.ni, nonce.data),
                  self.ni, nonce.data, now)
        except CryptoError:                     # an answer with algorithms we do not have
            new.state = IkeSaState.DEAD
            return False
        self.dh_priv = None
        new.add_task(DeleteIkeTask(reason), now)
        return True

    def _reject_answer(self, sa, sap, nonce, ke, now):
        """The responder made its new IKE SA with an answer we cannot accept (§1.3.2, §2.18), and
        took the Child SAs over to it: it must learn that we keep the old one. No error
        notification (§2.21.3: errors in a response are not reported). If the new SA's keys can
        still be made from the answer (say, from a proposal we did not offer), we delete it there;
        otherwise an empty INFORMATIONAL on the old IKE SA at once (§1.4) shows the responder we
        did not take the new one, which it then drops (``peer_request``)."""
        prop = sap.proposals[0] if sap is not None and len(sap.proposals) == 1 else None
        chosen = accept_response(prop, self.offered, ProtocolId.IKE) if prop is not None else None
        if chosen is None and prop is not None:
            chosen = accept_response(prop, [prop], ProtocolId.IKE)     # well-formed, but not offered
        if self._up_only_to_delete(sa, chosen, nonce, ke, "unacceptable rekey answer", now):
            sa.ctx.stats["ike_rekeys_refused_deleted"] += 1
            return
        self.abort(sa)
        sa.add_task(LivenessTask(), now, first=True)

    def abort(self, sa):
        """Release the new SPI (the exchange failed, or the old IKE SA went away)."""
        if self.new is not None:
            sa.ctx.release_ike_spi(self.spi, self.new)
        self.dh_priv = self.shared = None

    def on_response(self, sa, msg, raw, now) -> Outcome:
        ctx = sa.ctx
        err = msg.error_notify()
        if sa.successor is not None:
            # the peer already used its new IKE SA from our collision: it won (peer_resolved)
            if err is None and self.new is not None and self._close_redundant(sa, msg, now):
                return Outcome.DONE
            self.abort(sa)
            return Outcome.DONE
        if err is not None:
            self.abort(sa)
            col, sa.rekey_collision = sa.rekey_collision, None
            if col is not None and col.new.state == IkeSaState.ESTABLISHED:
                adopt(sa, col.new, now, delete_old=False)     # the peer's rekey went through: it stands
                return Outcome.DONE
            if err.notify_type == Notify.INVALID_KE_PAYLOAD and not self.ke_retried and len(err.data) >= 2:
                group = int.from_bytes(err.data[:2], "big")
                if group != self.group and any(group in s.dh for s in sa.conn.proposals):
                    sa.add_task(RekeyIkeTask(group, ke_retried=True), now, first=True)
                    return Outcome.DONE
            ctx.stats["ike_rekeys_failed"] += 1
            ctx.warn(sa, f"IKE SA rekey refused: {notify_error_name(err.notify_type)}; retrying")
            sa.set_timer(IKE_REKEY, now + ctx.retry_delay())
            return Outcome.DONE
        sap, nonce, ke = msg.get(PayloadType.SA), msg.get(PayloadType.NONCE), msg.get(PayloadType.KE)
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.IKE) \
            if sap is not None and len(sap.proposals) == 1 else None
        shared = None
        if chosen is not None and nonce is not None and ke is not None and chosen.dh == self.group and \
                ke.group == self.group and len(chosen.spi) == 8 and chosen.spi != ZERO_SPI:
            try:
                shared = dh_group(self.group).shared(self.dh_priv, ke.data)
            except CryptoError:
                shared = None
        if shared is None:
            ctx.stats["ike_rekeys_failed"] += 1
            ctx.warn(sa, "unacceptable IKE SA rekey response; retrying")
            self._reject_answer(sa, sap, nonce, ke, now)
            sa.set_timer(IKE_REKEY, now + ctx.retry_delay())
            return Outcome.DONE
        self.nr = nonce.data
        self.dh_priv = None
        if chosen.ake:
            return self._follow_up(sa, msg, chosen, shared, now)
        return self._complete(sa, chosen, shared, b"", now)

    def _follow_up(self, sa, msg, chosen, shared, now) -> Outcome:
        """RFC 9370 §2.2.4: more key exchanges follow in IKE_FOLLOWUP_KE before the new IKE SA
        exists (FollowupKeTask runs them and calls followups_done)."""
        ctx = sa.ctx
        col = sa.rekey_collision
        if col is not None:
            # the peer's rekey of this SA went through while ours waits for key exchanges: it
            # stands (ours is left unfinished, the peer drops its state)
            sa.rekey_collision = None
            self.abort(sa)
            if col.new.state == IkeSaState.ESTABLISHED:
                adopt(sa, col.new, now, delete_old=False)
            return Outcome.DONE
        link = msg.notify(Notify.ADDITIONAL_KEY_EXCHANGE)
        if link is None or not link.data:
            self.abort(sa)
            ctx.stats["ike_rekeys_failed"] += 1
            ctx.warn(sa, "IKE SA rekey response without ADDITIONAL_KEY_EXCHANGE; retrying")
            sa.set_timer(IKE_REKEY, now + ctx.retry_delay())
            return Outcome.DONE
        self.chosen, self.shared = chosen, shared
        self.followups = followup_ke.Followups(chosen.ake, link.data)
        sa.add_task(followup_ke.FollowupKeTask(self), now, first=True)
        return Outcome.DONE

    def followups_done(self, sa, now) -> Outcome:
        additional = self.followups.additional()
        self.followups.wipe()
        return self._complete(sa, self.chosen, self.shared, additional, now)

    def followups_failed(self, sa, why, now):
        ctx = sa.ctx
        self.abort(sa)
        ctx.stats["ike_rekeys_failed"] += 1
        ctx.warn(sa, f"IKE SA rekey: additional key exchange failed ({why}); retrying")
        sa.set_timer(IKE_REKEY, now + ctx.retry_delay())
        # the responder makes the new IKE SA answering the last IKE_FOLLOWUP_KE: a request on the
        # old one shows it we did not take it (see _reject_answer)
        sa.add_task(LivenessTask(), now, first=True)

    def _complete(self, sa, chosen, shared, additional: bytes, now) -> Outcome:
        """Initiator: every key exchange is done; the new IKE SA takes over (§2.18)."""
        ctx = sa.ctx
        new = self.new
        new.spi_i, new.spi_r = self.spi, chosen.spi
        seed = skeyseed_rekey(sa.prf, sa.keys.sk_d, shared, self.ni, self.nr, additional)
        setup(sa, new, chosen, seed, self.ni, self.nr, now)
        self.shared = None
        ctx.stats["ike_rekeys_done"] += 1
        col, sa.rekey_collision = sa.rekey_collision, None
        if col is not None and col.new.state == IkeSaState.ESTABLISHED:
            peer_new = col.new
            if _lowest_is_ours((self.ni, self.nr), (col.ni, col.nr)):
                ctx.stats["ike_rekey_collisions_lost"] += 1
                new.announced = False
                new.add_task(DeleteIkeTask(REDUNDANT), now)
                adopt(sa, peer_new, now, delete_old=False)
                return Outcome.DONE
            ctx.stats["ike_rekey_collisions_won"] += 1
            peer_new.set_timer(REAP, now + ctx.settings.rekey_reap_time)    # the peer closes it
        adopt(sa, new, now, delete_old=True)
        return Outcome.DONE

    # -------------------------------------------------------------- responder

    def on_request(self, sa, msg, reply, now) -> Outcome:
        """Answer the peer's IKE SA rekey (§1.3.2, §2.18, §2.25.2)."""
        ctx = sa.ctx
        if sa.state == IkeSaState.DELETING or sa.successor is not None or sa.rekey_collision is not None or \
                _child_exchange_running(sa):
            reply([NotifyPayload(Notify.TEMPORARY_FAILURE)], now)
            return Outcome.DONE
        sap, nonce, ke = msg.get(PayloadType.SA), msg.get(PayloadType.NONCE), msg.get(PayloadType.KE)
        if sap is None or nonce is None or ke is None:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return Outcome.DONE
        chosen = select_ike(sap, tuple(sa.conn.proposals), ke.group)
        if chosen is None or not chosen.dh:
            reply([NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], now)     # §2.18: a DH exchange is a must
            return Outcome.DONE
        if len(chosen.spi) != 8 or chosen.spi == ZERO_SPI:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return Outcome.DONE
        if chosen.dh != ke.group:
            reply([NotifyPayload(Notify.INVALID_KE_PAYLOAD, chosen.dh.to_bytes(2, "big"))], now)
            return Outcome.DONE
        if chosen.ake and sa.active is not None and sa.active.rekeys_ike:
            # simultaneous rekeys with follow-up key exchanges are not resolved: ours goes on, the
            # peer retries later (§2.25.2)
            reply([NotifyPayload(Notify.TEMPORARY_FAILURE)], now)
            return Outcome.DONE
        try:
            pub, shared = dh_group(chosen.dh).respond(ke.data)
        except CryptoError:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return Outcome.DONE
        new = ctx.new_ike_sa(False, sa.local, sa.remote, now, register=False)
        new.spi_i = chosen.spi
        new.spi_r = ctx.alloc_ike_spi(new)
        nr = random_bytes(NONCE_LEN)
        answer = [SaPayload([chosen.to_proposal(new.spi_r)]), NoncePayload(nr), KePayload(chosen.dh, pub)]
        if chosen.ake:
            # RFC 9370 §2.2.4: the new IKE SA comes after the follow-up key exchanges
            new.state = IkeSaState.DEAD
            self.new, self.chosen, self.shared, self.ni, self.nr = new, chosen, shared, nonce.data, nr
            self.followups = followup_ke.Followups(chosen.ake)
            reply(answer + [followup_ke.wait(sa, self, now)], now)
            return Outcome.DONE
        seed = skeyseed_rekey(sa.prf, sa.keys.sk_d, shared, nonce.data, nr)
        setup(sa, new, chosen, seed, nonce.data, nr, now)
        reply(answer, now)
        self._answered(sa, new, nonce.data, nr, now)
        return Outcome.DONE

    def _answered(self, sa, new, ni, nr, now):
        """Responder: the new IKE SA exists and the peer has our answer."""
        ctx = sa.ctx
        ctx.stats["ike_rekeys_answered"] += 1
        if sa.active is not None and sa.active.rekeys_ike and sa.outstanding is not None:
            sa.rekey_collision = RekeyCollision(ni, nr, new)   # decided when our own exchange is done
            new.collision_of = sa
            new.announced = False
            ctx.stats["ike_rekey_collisions"] += 1
        else:
            adopt(sa, new, now, delete_old=False, confirmed=False)

    def followups_answer(self, sa, payloads, reply, now) -> Outcome:
        additional = self.followups.additional()
        self.followups.wipe()
        seed = skeyseed_rekey(sa.prf, sa.keys.sk_d, self.shared, self.ni, self.nr, additional)
        self.shared = None
        setup(sa, self.new, self.chosen, seed, self.ni, self.nr, now)
        reply(payloads, now)
        self._answered(sa, self.new, self.ni, self.nr, now)
        return Outcome.DONE

    def followups_dropped(self, sa):
        if self.new is not None:
            sa.ctx.release_ike_spi(self.new.spi_r, self.new)
        self.shared = None


def setup(old: IkeSa, new: IkeSa, chosen, seed: bytes, ni: bytes, nr: bytes, now: float):
    """Fill in the new IKE SA from the old one and the rekey exchange (§2.18)."""
    new.conn = old.conn
    new.chosen = chosen
    new.ni, new.nr = ni, nr
    new.dh_group = chosen.dh
    derive(new, None, seed)
    new.nat_local, new.nat_remote = old.nat_local, old.nat_remote
    new.peer_hashes = old.peer_hashes
    new.fragmentation = old.fragmentation       # RFC 7383 §2.3: a rekeyed IKE SA keeps it
    new.local_id, new.remote_id = old.local_id, old.remote_id
    new.placement = old.placement
    new.state = IkeSaState.ESTABLISHED
    new.established_at = now
    new.last_heard = now
    new.announced = False
    old.ctx.register_sa(new)


def adopt(old: IkeSa, new: IkeSa, now: float, delete_old: bool, confirmed: bool = True):
    """Move everything the old IKE SA carried to ``new`` (§2.8: "the new IKE SA ... inherits all
    the Child SAs") and let the old one go. Not ``confirmed`` (we answered the peer's rekey): the
    peer may yet refuse our answer, so the old IKE SA's own timers are kept for ``take_back`` and
    ``new`` starts no exchange of its own until the peer shows it has it (``confirm``)."""
    ctx = old.ctx
    for h, c in list(old.children.items()):
        c.ike = new
        new.children[h] = c
        for kind in (CHILD_REKEY, CHILD_EXPIRE):
            t = old.timers.pop((kind, h), None)
            if t is not None:
                new.timers[(kind, h)] = t
    old.children.clear()
    ctx.move_delayed_tasks(old, new)
    new.queue.extend(old.queue)
    old.queue.clear()
    new.invalid_spi_task, old.invalid_spi_task = old.invalid_spi_task, None
    if not confirmed:
        new.unconfirmed = (old, dict(old.timers))
    old.timers.clear()
    old.successor = new
    new.last_heard = max(new.last_heard, old.last_heard)
    new.announced = True
    ctx.emit(IkeSaRekeyed(old.ike_id, new.ike_id, new.conn.name, new.initiator, new.chosen.describe()))
    arm_ike(new, now)
    liveness.arm(new, now)
    natt.arm(new, now)
    if delete_old:
        old.add_task(DeleteIkeTask("rekeyed"), now)     # the last request on the old IKE SA (§2.8)
    else:
        old.set_timer(REAP, now + ctx.settings.rekey_reap_time)
    new.reschedule()
    new.kick(now)


def peer_resolved(new: IkeSa, payloads, now: float):
    """An authentic request arrived on the peer's new IKE SA from a simultaneous rekey we have not
    decided yet: the peer decided, and it only uses its new IKE SA if that one survived (a
    redundant one it only deletes). So it won; take the Child SAs over to it now, before the
    request needs them (§2.8.2)."""
    old = new.collision_of
    new.collision_of = None
    if old is None or old.state == IkeSaState.DEAD or old.rekey_collision is None or \
            old.rekey_collision.new is not new:
        return
    if any(p.protocol == ProtocolId.IKE for p in payloads if p.ptype == PayloadType.DELETE):
        return                                  # it deletes this one: ours survives
    old.rekey_collision = None
    old.ctx.stats["ike_rekey_collisions_peer_won"] += 1
    adopt(old, new, now, delete_old=False)


# ---------------------------------------------------------------- the responder's new IKE SA, until the peer took it

def confirm(new: IkeSa, now: float):
    """The peer has the new IKE SA of its rekey (it used it, deleted the old one, or the old one
    is gone): ``new`` may start its own exchanges."""
    if new.unconfirmed is not None:
        new.unconfirmed = None
        new.kick(now)


def take_back(new: IkeSa, now: float) -> IkeSa:
    """The peer did not take the new IKE SA we made answering its rekey (its response check
    failed, §1.3.2, §2.18): the Child SAs, queued tasks and the old IKE SA's own timers go back to
    the old one, which stays; ``new`` is left empty, replaced by the old one (``IkeSaRekeyed`` from
    new to old: the driver moves its books back). Returns the old IKE SA."""
    ctx = new.ctx
    old, timers = new.unconfirmed
    new.unconfirmed = None
    for h, c in list(new.children.items()):
        c.ike = old
        old.children[h] = c
        for kind in (CHILD_REKEY, CHILD_EXPIRE):
            t = new.timers.pop((kind, h), None)
            if t is not None:
                old.timers[(kind, h)] = t
    new.children.clear()
    ctx.move_delayed_tasks(new, old)
    old.queue.extend(new.queue)
    new.queue.clear()
    old.invalid_spi_task, new.invalid_spi_task = new.invalid_spi_task, None
    old.successor = None
    old.timers.pop(REAP, None)
    old.timers.update(timers)
    old.last_heard = max(old.last_heard, new.last_heard)
    new.successor = old
    ctx.emit(IkeSaRekeyed(new.ike_id, old.ike_id, old.conn.name, old.initiator, old.chosen.describe()))
    old.reschedule()
    old.kick(now)
    return old


def peer_request(sa: IkeSa, payloads, now: float):
    """An authentic request on either IKE SA of a rekey we answered, before the peer showed which
    one it keeps (§2.18): on the new one, it has it — unless the request deletes it, the peer
    refusing our answer; on the old one, the peer's last request there deletes it — any other
    means the peer never took the new one (§2.21.3: the two ends' states differ), which we drop
    without a word (the peer has no such SA)."""
    ctx = sa.ctx
    deletes_ike = any(p.ptype == PayloadType.DELETE and p.protocol == ProtocolId.IKE for p in payloads)
    if sa.unconfirmed is not None:
        if deletes_ike:
            ctx.stats["ike_rekeys_refused_by_peer"] += 1
            take_back(sa, now)              # the Delete itself then removes the empty new SA
        else:
            confirm(sa, now)
        return
    new = sa.successor
    if new is None or new.unconfirmed is None or new.unconfirmed[0] is not sa:
        return
    if deletes_ike:
        confirm(new, now)
        return
    ctx.stats["ike_rekeys_unused_by_peer"] += 1
    take_back(new, now)
    ctx.destroy(new, "the peer did not take it (its rekey failed at its end)", now)
