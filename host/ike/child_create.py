"""Child SA negotiation shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3.1, §2.9, §2.17), and
the CREATE_CHILD_SA exchange for additional Child SAs, both roles.

Installation is two-phase: once keys are agreed the task asks the board (ChildSaInstall) and the
exchange waits (``Outcome.PENDING``); ``IkeEngine.child_sa_installed`` hands the board's verdict
to the task's ``installed``, which answers the peer (responder) or completes the exchange
(initiator) — or fails it cleanly: NO_PROPOSAL_CHOSEN if the board cannot run the transform,
TEMPORARY_FAILURE otherwise.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

from . import followup_ke, lifetimes, reauth
from .config import ChildConfig, resolve_ts
from .constants import ExchangeType, Notify, PayloadType, ProtocolId
from .crypto import CryptoError, dh_group, random_bytes
from .events import ChildSaFailed, ChildSaInstall, ChildSaUp
from .ike_sa import ChildSa, IkeSa
from .informational import DeleteSpisTask
from .keys import child_keymat
from .payloads import KePayload, NoncePayload, NotifyPayload, SaPayload, TrafficSelector, TsPayload, notify_error_name
from .proposals import accept_response, filter_child_specs, select
from .states import ChildSaState, IkeSaState
from .task import Outcome, Task

NONCE_LEN = 32
NO_BOARD_PROPOSAL = "the board supports none of the ESP proposals"


def install_failure_notify(reason: str | None) -> int:
    """The error a refused install turns into: the board cannot run the transform ->
    NO_PROPOSAL_CHOSEN; full or anything else -> TEMPORARY_FAILURE."""
    return Notify.NO_PROPOSAL_CHOSEN if reason == "unsupported" else Notify.TEMPORARY_FAILURE


def narrow(proposed, configured):
    """§2.9: the responder's narrowed selectors = every non-empty intersection."""
    out = []
    for p in proposed:
        for c in configured:
            x = p.intersect(c)
            if x is not None and x not in out:
                out.append(x)
    return out


def covered(got, offered) -> bool:
    """Initiator check: each returned selector lies within one we proposed."""
    return bool(got) and all(any(o.contains(g) for o in offered) for g in got)


def fit_board(sa: IkeSa, selectors) -> list:
    """At most as many selectors as the board holds each way: a subset of what was proposed is
    a narrowing (§2.9), and the first ones stay (the first may name the triggering packet)."""
    n = sa.ctx.capabilities_for(sa).max_ts
    return list(selectors) if n is None or len(selectors) <= n else list(selectors[:n])


def acceptable_selectors(sa: IkeSa, tsi, tsr, local_ts, remote_ts) -> bool:
    """Initiator check of the responder's TSi/TSr: within what we proposed, and no more than the
    board holds (more would be a Child SA we cannot install as agreed)."""
    return covered(tsi, local_ts) and covered(tsr, remote_ts) and \
        len(fit_board(sa, tsi)) == len(tsi) and len(fit_board(sa, tsr)) == len(tsr)


def our_selectors(sa: IkeSa, cfg: ChildConfig, trigger: tuple | None = None):
    """(local, remote) selectors of ``cfg`` with ``dynamic`` resolved to the IKE addresses; with
    ``trigger`` = (source, destination) of the packet that asked for the Child SA (on demand),
    each list starts with a selector of just that packet's address (§2.9)."""
    local, remote = resolve_ts(cfg.local_ts, sa.local[0]), resolve_ts(cfg.remote_ts, sa.remote[0])
    if trigger is not None:
        local, remote = packet_first(local, trigger[0]), packet_first(remote, trigger[1])
    return local, remote


def packet_first(selectors: list, addr: str) -> list:
    """§2.9: "if the initiator has requested the SA due to a data packet, the initiator SHOULD
    include as the first Traffic Selector in each of TSi and TSr a very specific Traffic Selector
    including the addresses in the packet triggering the request" — so a responder that narrows
    keeps the packet's flow. The first of our selectors that covers ``addr`` gives its protocol
    and ports; none covers it: nothing is added."""
    a = ipaddress.ip_address(addr).packed
    for t in selectors:
        if len(t.start) == len(a) and t.start <= a <= t.end:
            host = TrafficSelector(t.ts_type, t.ip_proto, t.start_port, t.end_port, a, a)
            return [host] + [x for x in selectors if x != host]
    return list(selectors)


def offer(sa: IkeSa, cfg: ChildConfig, with_dh: bool):
    """Our ESP proposals for ``cfg``, restricted to the board's capabilities. Returns
    (proposals, spi_in) or (None, 0) if the board can run none of them."""
    specs = filter_child_specs(cfg.esp_proposals, sa.ctx.capabilities_for(sa))
    if not specs:
        return None, 0
    spi = sa.ctx.alloc_child_spi()
    sb = spi.to_bytes(4, "big")
    return [s.to_proposal(i + 1, sb, with_dh) for i, s in enumerate(specs)], spi


def new_child(sa: IkeSa, cfg: ChildConfig, name: str) -> ChildSa:
    return ChildSa(sa.ctx.new_child_handle(), sa, name, cfg)


def ike_busy(sa: IkeSa):
    """§2.25.2: while the IKE SA is being rekeyed or deleted, Child SA requests get
    TEMPORARY_FAILURE (also while the peer's own exchange still awaits key exchanges, RFC 9370).
    Returns that error or None."""
    if sa.state == IkeSaState.DELETING or sa.successor is not None or sa.rekey_collision is not None or \
            (sa.active is not None and sa.active.rekeys_ike) or sa.followup_waiting:
        return Notify.TEMPORARY_FAILURE
    return None


def set_keys(sa: IkeSa, child: ChildSa, ni: bytes, nr: bytes, g_ir: bytes | None = None,
             additional: bytes = b""):
    c = child.chosen
    child.keys = child_keymat(sa.prf, sa.keys.sk_d, ni, nr, c.encr, c.encr_bits, c.integ, g_ir, additional)


def request_install(sa: IkeSa, child: ChildSa, task):
    """Phase one: ask the driver to install; ``task.installed(sa, child, ok, reason, now)`` gets
    its answer."""
    ctx = sa.ctx
    k = child.keys
    c = child.chosen
    if child.exchange_initiator:      # §2.17: the first keys protect exchange initiator -> responder
        ko, so, io, ki, si, ii = k.encr_i, k.salt_i, k.integ_i, k.encr_r, k.salt_r, k.integ_r
    else:
        ko, so, io, ki, si, ii = k.encr_r, k.salt_r, k.integ_r, k.encr_i, k.salt_i, k.integ_i
    child.installer = task
    sa.children[child.handle] = child
    ctx.register_child(child, installing=True)
    ctx.emit(ChildSaInstall(
        handle=child.handle, ike_id=sa.ike_id, name=child.name, protocol=ProtocolId.ESP, mode=child.mode,
        spi_in=child.spi_in, spi_out=child.spi_out, encr=c.encr, encr_key_bits=c.encr_bits, integ=c.integ,
        key_in=ki, salt_in=si, integ_key_in=ii, key_out=ko, salt_out=so, integ_key_out=io,
        esn=bool(c.esn), local_ts=list(child.local_ts), remote_ts=list(child.remote_ts),
        local_addr=sa.local[0], remote_addr=sa.remote[0], encap=sa.nat,
        local_port=ctx.settings.natt_port if sa.nat else sa.local[1],
        remote_port=sa.remote[1], initiator=child.exchange_initiator,
        lifetime=child.cfg.life_time if child.cfg else 0.0, rekey_of=child.rekey_of,
        defer_outbound=child.defer_outbound))
    child.keys = None           # the keys live on the board from here on, not in the engine


def installed_ok(sa: IkeSa, child: ChildSa, now: float):
    """The Child SA is installed and its exchange done: ChildSaUp, its lifetimes start."""
    child.state = ChildSaState.INSTALLED
    child.installed_at = now
    sa.ctx.emit(ChildSaUp(child.handle, sa.ike_id, child.name, child.spi_in, child.spi_out, child.rekey_of))
    lifetimes.arm_child(sa, child, now)
    if sa.reauth_of is not None:
        reauth.progress(sa, now)


def install_failed(sa: IkeSa, child: ChildSa, reason: str):
    child.state = ChildSaState.DEAD
    sa.children.pop(child.handle, None)
    sa.ctx.forget_child(child)
    sa.ctx.emit(ChildSaFailed(sa.ike_id, child.name, reason))


def _refusal(reason: str | None) -> str:
    return f"board refused the Child SA ({reason or 'no reason given'})"


def mode_for(cfg: ChildConfig, msg) -> str:
    """Transport mode only if the peer asked for it (USE_TRANSPORT_MODE, §1.3.1) and we allow it."""
    wants = msg.notify(Notify.USE_TRANSPORT_MODE) is not None
    return "transport" if wants and cfg.mode == "transport" else "tunnel"


# ---------------------------------------------------------------- responder negotiation

class Negotiated(NamedTuple):
    """The responder's choice for the peer's Child SA request, or ``error`` (a Notify type)."""
    cfg: ChildConfig | None
    chosen: object
    tsi: list
    tsr: list
    error: int | None = None


def negotiate(sa: IkeSa, msg, ignore_dh: bool, prefer: ChildConfig | None = None) -> Negotiated:
    """Pick a child config (``prefer`` first: a rekey keeps its config), proposal and narrowed
    selectors for the peer's request."""
    sap, tsi_p, tsr_p = msg.get(PayloadType.SA), msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
    if sap is None or tsi_p is None or tsr_p is None:
        return Negotiated(None, None, [], [], Notify.INVALID_SYNTAX)
    caps = sa.ctx.capabilities_for(sa)
    ts_ok = False
    cfgs = list(sa.conn.children.values())
    if prefer is not None:
        cfgs = [prefer] + [c for c in cfgs if c is not prefer]
    for cfg in cfgs:
        local_ts, remote_ts = our_selectors(sa, cfg)
        tsi = narrow(tsi_p.selectors, remote_ts)      # TSi describes the initiator's (peer's) side
        tsr = narrow(tsr_p.selectors, local_ts)
        if not tsi or not tsr:
            continue
        fit_i, fit_r = fit_board(sa, tsi), fit_board(sa, tsr)
        if (len(fit_i), len(fit_r)) != (len(tsi), len(tsr)):
            sa.ctx.warn(sa, f"traffic selectors {len(tsi)}/{len(tsr)} narrowed to {len(fit_i)}/{len(fit_r)}: "
                            f"what the board holds each way")
            tsi, tsr = fit_i, fit_r
        ts_ok = True
        specs = filter_child_specs(cfg.esp_proposals, caps)
        chosen = select(sap.proposals, specs, ProtocolId.ESP, ignore_dh=ignore_dh, caps=caps)
        if chosen is not None:
            return Negotiated(cfg, chosen, tsi, tsr)
    return Negotiated(None, None, [], [], Notify.NO_PROPOSAL_CHOSEN if ts_ok else Notify.TS_UNACCEPTABLE)


class ChildSaExchange(Task):
    """What the exchanges that create a Child SA share (IKE_AUTH, CREATE_CHILD_SA): the two-phase
    install in both roles. A responder's answer is ``head`` + the Child SA's payloads, with
    ``tail`` between its SA and TS payloads (a CREATE_CHILD_SA's nonce and KE)."""
    reply = None                # responder: how to answer once the board decided
    head: list = []
    tail: list = []
    last: list | None = None    # responder after follow-up key exchanges: the answer instead (KEr)

    # -------------------------------------------------------------- initiator

    def install(self, sa: IkeSa, child: ChildSa) -> Outcome:
        """Phase one for an initiator: the exchange is complete only after the board's verdict."""
        request_install(sa, child, self)
        return Outcome.PENDING

    # -------------------------------------------------------------- responder

    def accept_child(self, sa: IkeSa, msg, neg: Negotiated, ni: bytes, nr: bytes, g_ir: bytes | None,
                     rekey_of: ChildSa | None = None, mode: str | None = None, spi_in: int = 0,
                     additional: bytes = b"") -> Outcome:
        """Create the Child SA negotiation ``neg`` agreed on and ask the board to install it; the
        answer goes out with its verdict. ``rekey_of``: the Child SA the peer rekeys (§1.3.3); we
        keep sending on it until the peer deletes it. After follow-up key exchanges the mode and
        our SPI were settled in the CREATE_CHILD_SA answer, and ``additional`` holds their secrets."""
        child = new_child(sa, neg.cfg, rekey_of.name if rekey_of is not None else neg.cfg.name)
        if rekey_of is not None:
            child.rekey_of = rekey_of.handle
            child.defer_outbound = True
        child.chosen = neg.chosen
        child.spi_out = int.from_bytes(neg.chosen.spi, "big")
        child.spi_in = spi_in or sa.ctx.alloc_child_spi()
        child.mode = mode or mode_for(neg.cfg, msg)
        child.local_ts, child.remote_ts = neg.tsr, neg.tsi
        child.exchange_initiator = False
        set_keys(sa, child, ni, nr, g_ir, additional)
        self.created(sa, child, ni, nr)
        request_install(sa, child, self)
        return Outcome.PENDING

    def created(self, sa: IkeSa, child: ChildSa, ni: bytes, nr: bytes):
        """Responder: ``child`` exists, its install is about to be requested."""

    def answer(self, sa: IkeSa, payloads: list, now: float):
        self.reply(self.head + payloads, now)

    # -------------------------------------------------------------- the board's verdict

    def installed(self, sa: IkeSa, child: ChildSa, ok: bool, reason: str | None, now: float):
        if self.reply is not None:
            self._answer_installed(sa, child, ok, reason, now)
            return
        if ok:
            installed_ok(sa, child, now)
        else:
            install_failed(sa, child, _refusal(reason))
            sa.add_task(DeleteSpisTask([child.spi_in]), now, first=True)   # the peer has it: delete
        self.after_install(sa, child, ok, now)
        sa.finish_task(now)

    def _answer_installed(self, sa, child, ok, reason, now):
        if not ok:
            install_failed(sa, child, _refusal(reason))
            self.after_install(sa, child, False, now)
            self.answer(sa, [NotifyPayload(install_failure_notify(reason))], now)
            return
        if self.last is not None:
            self.answer(sa, self.last, now)
            installed_ok(sa, child, now)
            self.after_install(sa, child, True, now)
            return
        payloads = [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if child.mode == "transport" else []
        payloads.append(SaPayload([child.chosen.to_proposal(child.spi_in.to_bytes(4, "big"))]))
        self.answer(sa, payloads + self.tail + [TsPayload(child.remote_ts, PayloadType.TSi),
                                                TsPayload(child.local_ts, PayloadType.TSr)], now)
        installed_ok(sa, child, now)
        self.after_install(sa, child, True, now)

    def after_install(self, sa: IkeSa, child: ChildSa, ok: bool, now: float):
        """Both roles: the board's verdict on ``child`` was dealt with (a rekey decides here)."""


# ---------------------------------------------------------------- CREATE_CHILD_SA

class Answer(NamedTuple):
    """The initiator's reading of a CREATE_CHILD_SA response (§1.3.1, §2.9)."""
    usable: bool
    chosen: object              # the proposal the peer picked (even when the answer is unusable)
    nonce: object = None
    g_ir: bytes | None = None
    tsi: object = None
    tsr: object = None


class CreateChildTask(ChildSaExchange):
    """CREATE_CHILD_SA for an additional Child SA (§1.3.1), PFS if the ESP proposal names a DH
    group. Initiator (``cfg`` given): a TEMPORARY_FAILURE answer is retried later, never at once
    (§2.25). Responder (no ``cfg``): negotiate, install, answer."""
    exchange = ExchangeType.CREATE_CHILD_SA
    MAX_TEMPORARY_FAILURES = 5

    def __init__(self, cfg: ChildConfig | None = None, name: str | None = None, trigger: tuple | None = None):
        self.cfg = cfg
        self.name = name or (cfg.name if cfg is not None else "")
        self.trigger = trigger          # (src, dst) of the packet that asked for it (on demand)
        self.offered = None
        self.spi_in = 0
        self.ni = b""
        self.dh_priv = None
        self.group = 0
        self.local_ts = self.remote_ts = ()
        self.temporary_failures = 0
        self.followups = None           # RFC 9370 §2.2.4: the additional key exchanges under way
        self.answered = None            # ... and what waits for them (initiator: the Answer, mode;
                                        # responder: Negotiated, nonces, SK(0), rekey_of, SPI, mode)

    # -------------------------------------------------------------- initiator

    def selectors(self, sa: IkeSa):
        return our_selectors(sa, self.cfg, self.trigger)

    def request_head(self, sa: IkeSa) -> list:
        """Payloads before SA (REKEY_SA for a rekey, §1.3.3)."""
        return [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if self.cfg.mode == "transport" else []

    def build(self, sa: IkeSa, now):
        self.offered, self.spi_in = offer(sa, self.cfg, with_dh=True)
        if self.offered is None:
            sa.ctx.emit(ChildSaFailed(sa.ike_id, self.name, NO_BOARD_PROPOSAL))
            return None
        self.ni = random_bytes(NONCE_LEN)
        self.local_ts, self.remote_ts = (fit_board(sa, ts) for ts in self.selectors(sa))
        payloads = self.request_head(sa) + [SaPayload(self.offered), NoncePayload(self.ni)]
        groups = [t.tid for t in self.offered[0].transforms if t.ttype == 4 and t.tid]
        if groups:
            self.group = groups[0]
            self.dh_priv, pub = dh_group(self.group).generate()
            payloads.append(KePayload(self.group, pub))
        payloads += [TsPayload(self.local_ts, PayloadType.TSi), TsPayload(self.remote_ts, PayloadType.TSr)]
        return payloads

    def refused(self, sa, err, now):
        """The peer answered with error ``err`` (a Notify payload)."""
        sa.ctx.release_child_spi(self.spi_in)
        if err.notify_type == Notify.TEMPORARY_FAILURE and \
                self.temporary_failures < self.MAX_TEMPORARY_FAILURES:
            self.temporary_failures += 1
            sa.ctx.delay_task(sa, self, now + sa.ctx.retry_delay())
            return
        sa.ctx.emit(ChildSaFailed(sa.ike_id, self.name, f"peer refused: {notify_error_name(err.notify_type)}"))

    def accept(self, sa: IkeSa, msg) -> Answer:
        """Check the peer's answer against what we offered."""
        sap, nonce = msg.get(PayloadType.SA), msg.get(PayloadType.NONCE)
        tsi, tsr = msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
        chosen = accept_response(sap.proposals[0], self.offered, ProtocolId.ESP) \
            if sap is not None and len(sap.proposals) == 1 else None
        g_ir = None
        ok = chosen is not None and nonce is not None and tsi is not None and tsr is not None
        if ok and chosen.dh:
            ke = msg.get(PayloadType.KE)
            if chosen.dh != self.group or ke is None or ke.group != self.group:
                ok = False
            else:
                try:
                    g_ir = dh_group(self.group).shared(self.dh_priv, ke.data)
                except CryptoError:
                    ok = False
        if ok and not acceptable_selectors(sa, tsi.selectors, tsr.selectors, self.local_ts, self.remote_ts):
            ok = False
        if ok and chosen.ake:
            link = msg.notify(Notify.ADDITIONAL_KEY_EXCHANGE)      # RFC 9370 §2.2.4
            ok = link is not None and bool(link.data)
        self.dh_priv = None
        return Answer(True, chosen, nonce, g_ir, tsi, tsr) if ok else Answer(False, chosen)

    def unacceptable(self, sa, chosen, now):
        """A response without an error notification means the peer made the Child SA (§1.3): we
        cannot use it, so the peer must delete its half (§1.4.1, as §1.3.1 asks of an initiator
        that finds the mode unacceptable). Our SPI, which names it, stays ours until then."""
        sa.ctx.emit(ChildSaFailed(sa.ike_id, self.name, "unacceptable CREATE_CHILD_SA response"))
        sa.add_task(DeleteSpisTask([self.spi_in], release=True), now, first=True)

    def make_child(self, sa, mode: str, ans: Answer, additional: bytes = b"") -> ChildSa:
        child = new_child(sa, self.cfg, self.name)
        child.chosen = ans.chosen
        child.spi_in, child.spi_out = self.spi_in, int.from_bytes(ans.chosen.spi, "big")
        child.mode = mode
        child.local_ts, child.remote_ts = ans.tsi.selectors, ans.tsr.selectors
        child.exchange_initiator = True
        set_keys(sa, child, self.ni, ans.nonce.data, ans.g_ir, additional)
        return child

    def answer_mode(self, msg) -> str:
        return "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and self.cfg.mode == "transport" else "tunnel"

    def on_response(self, sa: IkeSa, msg, raw, now) -> Outcome:
        ans = self.accepted(sa, msg, now)
        if ans is None:
            return Outcome.DONE
        if ans.chosen.ake:
            return self.follow_up(sa, msg, ans, now)
        return self.created_child(sa, self.make_child(sa, self.answer_mode(msg), ans), now)

    def created_child(self, sa: IkeSa, child: ChildSa, now) -> Outcome:
        """Initiator: every key exchange is done; ``child`` goes to the board."""
        return self.install(sa, child)

    # -------------------------------------------------------------- RFC 9370 follow-ups, initiator

    def follow_up(self, sa: IkeSa, msg, ans: Answer, now) -> Outcome:
        """The answer chose additional key exchanges: IKE_FOLLOWUP_KE exchanges come first
        (followup_ke.py), the Child SA after them."""
        self.answered = (ans, self.answer_mode(msg))
        self.followups = followup_ke.Followups(ans.chosen.ake, msg.notify(Notify.ADDITIONAL_KEY_EXCHANGE).data)
        sa.add_task(followup_ke.FollowupKeTask(self), now, first=True)
        return Outcome.DONE

    def followups_done(self, sa: IkeSa, now) -> Outcome:
        (ans, mode), self.answered = self.answered, None
        additional = self.followups.additional()
        self.followups.wipe()
        return self.created_child(sa, self.make_child(sa, mode, ans, additional), now)

    def followups_failed(self, sa: IkeSa, why: str, now):
        self.answered = None
        sa.ctx.release_child_spi(self.spi_in)
        sa.ctx.emit(ChildSaFailed(sa.ike_id, self.name, f"additional key exchange failed: {why}"))

    def accepted(self, sa: IkeSa, msg, now) -> Answer | None:
        """The response's accepted proposal, nonce and selectors, or None once an error notify
        (refused) or an unacceptable answer (RFC 7296 §1.3, §2.9) has been dealt with."""
        err = msg.error_notify()
        if err is not None:
            self.refused(sa, err, now)
            return None
        ans = self.accept(sa, msg)
        if not ans.usable:
            self.unacceptable(sa, ans.chosen, now)
            return None
        return ans

    # -------------------------------------------------------------- responder

    def on_request(self, sa: IkeSa, msg, reply, now) -> Outcome:
        """Answer a CREATE_CHILD_SA request for a new Child SA."""
        self.reply = reply
        busy = ike_busy(sa)
        if busy is not None:
            reply([NotifyPayload(busy)], now)
            return Outcome.DONE
        return self.respond_child(sa, msg, now)

    def respond_child(self, sa: IkeSa, msg, now, rekey_of: ChildSa | None = None) -> Outcome:
        """Negotiate, install and answer one Child SA (new, or replacing ``rekey_of``)."""
        reply = self.reply
        nonce = msg.get(PayloadType.NONCE)
        if nonce is None:
            reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
            return Outcome.DONE
        neg = negotiate(sa, msg, ignore_dh=False, prefer=rekey_of.cfg if rekey_of is not None else None)
        if neg.error is not None:
            reply([NotifyPayload(neg.error)], now)
            return Outcome.DONE
        chosen = neg.chosen
        nr = random_bytes(NONCE_LEN)
        self.tail = [NoncePayload(nr)]
        g_ir = None
        if chosen.dh:
            ke = msg.get(PayloadType.KE)
            if ke is None or ke.group != chosen.dh:
                reply([NotifyPayload(Notify.INVALID_KE_PAYLOAD, chosen.dh.to_bytes(2, "big"))], now)
                return Outcome.DONE
            try:
                pub, g_ir = dh_group(chosen.dh).respond(ke.data)
            except CryptoError:
                reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
                return Outcome.DONE
            self.tail.append(KePayload(chosen.dh, pub))
        if chosen.ake:
            return self.await_followups(sa, msg, neg, nonce.data, nr, g_ir, rekey_of, now)
        return self.accept_child(sa, msg, neg, nonce.data, nr, g_ir, rekey_of=rekey_of)

    # -------------------------------------------------------------- RFC 9370 follow-ups, responder

    def await_followups(self, sa: IkeSa, msg, neg: Negotiated, ni, nr, g_ir, rekey_of, now) -> Outcome:
        """Answer the CREATE_CHILD_SA now, with our SPI and N(ADDITIONAL_KEY_EXCHANGE); the Child SA
        is made and installed once the last IKE_FOLLOWUP_KE arrives (followups_answer)."""
        spi_in = sa.ctx.alloc_child_spi()
        mode = mode_for(neg.cfg, msg)
        self.followups = followup_ke.Followups(neg.chosen.ake)
        self.answered = (neg, ni, nr, g_ir, rekey_of, spi_in, mode)
        payloads = [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if mode == "transport" else []
        payloads.append(SaPayload([neg.chosen.to_proposal(spi_in.to_bytes(4, "big"))]))
        payloads += self.tail + [followup_ke.wait(sa, self, now), TsPayload(neg.tsi, PayloadType.TSi),
                                 TsPayload(neg.tsr, PayloadType.TSr)]
        self.reply(payloads, now)
        return Outcome.DONE

    def followups_answer(self, sa: IkeSa, payloads: list, reply, now) -> Outcome:
        (neg, ni, nr, g_ir, rekey_of, spi_in, mode), self.answered = self.answered, None
        additional = self.followups.additional()
        self.followups.wipe()
        self.reply, self.head, self.last = reply, [], payloads
        if rekey_of is not None and rekey_of.state != ChildSaState.INSTALLED:
            sa.ctx.release_child_spi(spi_in)
            reply([NotifyPayload(Notify.TEMPORARY_FAILURE)], now)       # it went meanwhile
            return Outcome.DONE
        return self.accept_child(sa, None, neg, ni, nr, g_ir, rekey_of=rekey_of, mode=mode, spi_in=spi_in,
                                 additional=additional)

    def followups_dropped(self, sa: IkeSa):
        if self.answered is not None:
            sa.ctx.release_child_spi(self.answered[5])
            self.answered = None


def proposes_ike(msg) -> bool:
    """A CREATE_CHILD_SA request with an IKE proposal rekeys the IKE SA (§1.3.2)."""
    sap = msg.get(PayloadType.SA)
    return sap is not None and any(p.protocol == ProtocolId.IKE for p in sap.proposals)
