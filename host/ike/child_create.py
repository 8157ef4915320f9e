"""Child SA negotiation shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3.1, §2.9, §2.17), and
the CREATE_CHILD_SA exchange for additional Child SAs.

Installation is two-phase: once keys are agreed the engine emits ChildSaInstall and parks the
exchange; ``IkeEngine.child_sa_installed`` resumes it (answer sent / exchange finished) or fails it
cleanly (NO_PROPOSAL_CHOSEN if the board cannot run the transform, TEMPORARY_FAILURE otherwise).
"""
from __future__ import annotations

from .config import ChildConfig, resolve_ts
from .constants import ExchangeType, Notify, PayloadType, ProtocolId
from .crypto import CryptoError, dh_group, random_bytes
from .events import ChildSaFailed, ChildSaInstall, ChildSaUp
from .ike_sa import ChildSa, IkeSa
from .informational import DeleteSpisTask
from .keys import child_keymat
from .payloads import KePayload, NoncePayload, NotifyPayload, SaPayload, TsPayload, notify_error_name
from .proposals import accept_response, filter_child_specs, select

NONCE_LEN = 32
NO_BOARD_PROPOSAL = "the board supports none of the ESP proposals"
PENDING = object()      # a responder handler's answer: "the response follows the board's verdict"


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


def our_selectors(sa: IkeSa, cfg: ChildConfig):
    """(local, remote) selectors of ``cfg`` with ``dynamic`` resolved to the IKE addresses."""
    return resolve_ts(cfg.local_ts, sa.local[0]), resolve_ts(cfg.remote_ts, sa.remote[0])


def offer(sa: IkeSa, cfg: ChildConfig, with_dh: bool):
    """Our ESP proposals for ``cfg``, restricted to the board's capabilities. Returns
    (proposals, spi_in) or (None, 0) if the board can run none of them."""
    specs = filter_child_specs(cfg.esp_proposals, sa.engine.capabilities_for(sa))
    if not specs:
        return None, 0
    spi = sa.engine._alloc_child_spi()
    sb = spi.to_bytes(4, "big")
    return [s.to_proposal(i + 1, sb, with_dh) for i, s in enumerate(specs)], spi


def new_child(sa: IkeSa, cfg: ChildConfig, name: str) -> ChildSa:
    return ChildSa(sa.engine._next_handle(), sa, name, cfg)


def ike_busy(sa: IkeSa):
    """§2.25.2: while the IKE SA is being rekeyed or deleted, Child SA requests get
    TEMPORARY_FAILURE. Returns that error or None."""
    if sa.state == "deleting" or sa.successor is not None or sa.rekey_collision is not None or \
            getattr(sa.active, "rekeys_ike", False):
        return Notify.TEMPORARY_FAILURE
    return None


def set_keys(sa: IkeSa, child: ChildSa, ni: bytes, nr: bytes, g_ir: bytes | None = None):
    c = child.chosen
    child.keys = child_keymat(sa.prf, sa.keys.sk_d, ni, nr, c.encr, c.encr_bits, c.integ, g_ir)


def request_install(sa: IkeSa, child: ChildSa, continuation):
    """Phase one: ask the driver to install; ``continuation(ok, reason, now)`` runs on its answer."""
    eng = sa.engine
    k = child.keys
    c = child.chosen
    if child.exchange_initiator:      # §2.17: the first keys protect exchange initiator -> responder
        ko, so, io, ki, si, ii = k.encr_i, k.salt_i, k.integ_i, k.encr_r, k.salt_r, k.integ_r
    else:
        ko, so, io, ki, si, ii = k.encr_r, k.salt_r, k.integ_r, k.encr_i, k.salt_i, k.integ_i
    child.on_installed = continuation
    sa.children[child.handle] = child
    eng._installing[child.handle] = child
    eng._register_child(child)
    eng._event(ChildSaInstall(
        handle=child.handle, ike_id=sa.ike_id, name=child.name, protocol=ProtocolId.ESP, mode=child.mode,
        spi_in=child.spi_in, spi_out=child.spi_out, encr=c.encr, encr_key_bits=c.encr_bits, integ=c.integ,
        key_in=ki, salt_in=si, integ_key_in=ii, key_out=ko, salt_out=so, integ_key_out=io,
        esn=bool(c.esn), local_ts=list(child.local_ts), remote_ts=list(child.remote_ts),
        local_addr=sa.local[0], remote_addr=sa.remote[0], encap=sa.nat,
        local_port=eng.settings.natt_port if sa.nat else sa.local[1],
        remote_port=sa.remote[1], initiator=child.exchange_initiator,
        lifetime=child.cfg.life_time if child.cfg else 0.0, rekey_of=child.rekey_of,
        defer_outbound=child.defer_outbound))
    child.keys = None           # the keys live on the board from here on, not in the engine


def installed_ok(sa: IkeSa, child: ChildSa, now: float):
    child.state = "installed"
    child.installed_at = now
    sa.engine._event(ChildSaUp(child.handle, sa.ike_id, child.name, child.spi_in, child.spi_out,
                               child.rekey_of))
    sa.engine._child_up(sa, child, now)


def install_failed(sa: IkeSa, child: ChildSa, reason: str, event: bool = True):
    child.state = "dead"
    sa.children.pop(child.handle, None)
    sa.engine._forget_child(child)
    sa.engine._install_failed(sa, child)
    if event:
        sa.engine._event(ChildSaFailed(sa.ike_id, child.name, reason))


# ---------------------------------------------------------------- responder negotiation

def negotiate(sa: IkeSa, msg, ignore_dh: bool, prefer: ChildConfig | None = None):
    """Pick a child config (``prefer`` first: a rekey keeps its config), proposal and narrowed
    selectors for the peer's request. Returns (cfg, chosen, tsi, tsr) or an error Notify type."""
    sap, tsi_p, tsr_p = msg.get(PayloadType.SA), msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
    if sap is None or tsi_p is None or tsr_p is None:
        return Notify.INVALID_SYNTAX
    caps = sa.engine.capabilities_for(sa)
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
        ts_ok = True
        specs = filter_child_specs(cfg.esp_proposals, caps)
        chosen = select(sap.proposals, specs, ProtocolId.ESP, ignore_dh=ignore_dh, caps=caps)
        if chosen is not None:
            return cfg, chosen, tsi, tsr
    return Notify.NO_PROPOSAL_CHOSEN if ts_ok else Notify.TS_UNACCEPTABLE


def mode_for(cfg: ChildConfig, msg) -> str:
    """Transport mode only if the peer asked for it (USE_TRANSPORT_MODE, §1.3.1) and we allow it."""
    wants = msg.notify(Notify.USE_TRANSPORT_MODE) is not None
    return "transport" if wants and cfg.mode == "transport" else "tunnel"


def responder_child(sa: IkeSa, msg, res, ni: bytes, nr: bytes, g_ir: bytes | None, finish,
                    rekey_of: ChildSa | None = None, on_created=None):
    """Install the Child SA that negotiation ``res`` = (cfg, chosen, tsi, tsr) agreed on, then call
    ``finish(payloads, child, tsi, tsr, now)`` once the board answered: on success ``payloads`` are
    [N(USE_TRANSPORT_MODE)], SA; on refusal the error notify and ``child`` None. ``rekey_of``: the
    Child SA the peer rekeys (§1.3.3); we keep sending on it until the peer deletes it.
    ``on_created(child, ni, nr)`` runs before the install is requested."""
    cfg, chosen, tsi, tsr = res
    child = new_child(sa, cfg, rekey_of.name if rekey_of is not None else cfg.name)
    if rekey_of is not None:
        child.rekey_of = rekey_of.handle
        child.defer_outbound = True
    child.chosen = chosen
    child.spi_out = int.from_bytes(chosen.spi, "big")
    child.spi_in = sa.engine._alloc_child_spi()
    child.mode = mode_for(cfg, msg)
    child.local_ts, child.remote_ts = tsr, tsi
    child.exchange_initiator = False
    set_keys(sa, child, ni, nr, g_ir)
    spi_bytes = child.spi_in.to_bytes(4, "big")

    def done(ok, reason, now):
        if ok:
            payloads = [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if child.mode == "transport" else []
            payloads.append(SaPayload([chosen.to_proposal(spi_bytes)]))
            finish(payloads, child, tsi, tsr, now)
        else:
            install_failed(sa, child, f"board refused the Child SA ({reason or 'no reason given'})")
            finish([NotifyPayload(install_failure_notify(reason))], None, None, None, now)

    if on_created is not None:
        on_created(child, ni, nr)
    request_install(sa, child, done)
    return PENDING


# ---------------------------------------------------------------- CREATE_CHILD_SA, initiator

class CreateChildTask:
    """Initiator of CREATE_CHILD_SA for an additional Child SA (§1.3.1), PFS if the ESP proposal
    names a DH group. A TEMPORARY_FAILURE answer is retried later, never at once (§2.25)."""
    exchange = ExchangeType.CREATE_CHILD_SA
    MAX_TEMPORARY_FAILURES = 5

    def __init__(self, cfg: ChildConfig, name: str | None = None):
        self.cfg, self.name = cfg, name or cfg.name
        self.offered = None
        self.spi_in = 0
        self.ni = b""
        self.dh_priv = None
        self.group = 0
        self.local_ts = self.remote_ts = ()
        self.temporary_failures = 0

    def selectors(self, sa: IkeSa):
        return our_selectors(sa, self.cfg)

    def head(self, sa: IkeSa) -> list:
        """Payloads before SA (REKEY_SA for a rekey, §1.3.3)."""
        return [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if self.cfg.mode == "transport" else []

    def build(self, sa: IkeSa, now):
        self.offered, self.spi_in = offer(sa, self.cfg, with_dh=True)
        if self.offered is None:
            sa.engine._event(ChildSaFailed(sa.ike_id, self.name, NO_BOARD_PROPOSAL))
            return None
        self.ni = random_bytes(NONCE_LEN)
        self.local_ts, self.remote_ts = self.selectors(sa)
        payloads = self.head(sa) + [SaPayload(self.offered), NoncePayload(self.ni)]
        groups = [t.tid for t in self.offered[0].transforms if t.ttype == 4 and t.tid]
        if groups:
            self.group = groups[0]
            self.dh_priv, pub = dh_group(self.group).generate()
            payloads.append(KePayload(self.group, pub))
        payloads += [TsPayload(self.local_ts, PayloadType.TSi), TsPayload(self.remote_ts, PayloadType.TSr)]
        return payloads

    def _fail(self, sa, reason, now):
        sa.engine._child_spis.pop(self.spi_in, None)
        sa.engine._event(ChildSaFailed(sa.ike_id, self.name, reason))
        sa.finish_task(now)

    def refused(self, sa, err, now):
        """The peer answered with error ``err`` (a Notify payload)."""
        sa.engine._child_spis.pop(self.spi_in, None)
        if err.notify_type == Notify.TEMPORARY_FAILURE and \
                self.temporary_failures < self.MAX_TEMPORARY_FAILURES:
            self.temporary_failures += 1
            sa.engine._delay_task(sa, self, now + sa.engine._retry_delay())
            sa.finish_task(now)
            return
        self._fail(sa, f"peer refused: {notify_error_name(err.notify_type)}", now)

    def accept(self, sa: IkeSa, msg):
        """Check the peer's answer: (chosen, nonce, g_ir, tsi, tsr), or (None, chosen) if it is
        unacceptable."""
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
        if ok and not (covered(tsi.selectors, self.local_ts) and covered(tsr.selectors, self.remote_ts)):
            ok = False
        self.dh_priv = None
        return (chosen, nonce, g_ir, tsi, tsr) if ok else (None, chosen)

    def unacceptable(self, sa, chosen, now):
        # The peer may have installed its half: delete it (§1.4.1).
        sa.engine._child_spis.pop(self.spi_in, None)
        sa.engine._event(ChildSaFailed(sa.ike_id, self.name, "unacceptable CREATE_CHILD_SA response"))
        if chosen is not None:
            sa.add_task(DeleteSpisTask([self.spi_in]), now, first=True)
        sa.finish_task(now)

    def make_child(self, sa, msg, res) -> ChildSa:
        chosen, nonce, g_ir, tsi, tsr = res
        child = new_child(sa, self.cfg, self.name)
        child.chosen = chosen
        child.spi_in, child.spi_out = self.spi_in, int.from_bytes(chosen.spi, "big")
        child.mode = "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and self.cfg.mode == "transport" \
            else "tunnel"
        child.local_ts, child.remote_ts = tsi.selectors, tsr.selectors
        child.exchange_initiator = True
        set_keys(sa, child, self.ni, nonce.data, g_ir)
        return child

    def on_response(self, sa: IkeSa, msg, raw, now) -> bool:
        res = self.accepted(sa, msg, now)
        if res is not None:
            initiator_install(sa, self.make_child(sa, msg, res), now)
        return False

    def accepted(self, sa: IkeSa, msg, now):
        """The response's accepted proposal, nonce and selectors, or None once an error notify
        (refused) or an unacceptable answer (RFC 7296 §1.3, §2.9) has been dealt with."""
        err = msg.error_notify()
        if err is not None:
            self.refused(sa, err, now)
            return None
        res = self.accept(sa, msg)
        if res[0] is None:
            self.unacceptable(sa, res[1], now)
            return None
        return res


def initiator_install(sa: IkeSa, child: ChildSa, now, then=None):
    """Phase two for an initiator: the exchange counts as complete only after the install.
    ``then(ok, now)`` runs before the next exchange may start (a rekey queues its Delete there)."""
    def done(ok, reason, now2):
        if ok:
            installed_ok(sa, child, now2)
        else:
            install_failed(sa, child, f"board refused the Child SA ({reason or 'no reason given'})")
            sa.add_task(DeleteSpisTask([child.spi_in]), now2, first=True)   # the peer has it: delete
        if then is not None:
            then(ok, now2)
        sa.finish_task(now2)
    request_install(sa, child, done)


# ---------------------------------------------------------------- CREATE_CHILD_SA, responder

def respond(sa: IkeSa, msg, reply, now):
    """Answer a CREATE_CHILD_SA request; ``reply(payloads, now)`` sends the response. Returns
    PENDING while the board installs. Rekeying (REKEY_SA, or an IKE proposal) goes to the
    ``engine.rekey_responder`` hook (rekey.py), else we refuse cleanly."""
    if msg.notify(Notify.REKEY_SA) is not None or _proposes_ike(msg):
        hook = sa.engine.rekey_responder
        if hook is not None:
            return hook(sa, msg, reply, now)
        return reply([NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], now)
    busy = ike_busy(sa)
    if busy is not None:
        return reply([NotifyPayload(busy)], now)
    return respond_child(sa, msg, reply, now)


def respond_child(sa: IkeSa, msg, reply, now, rekey_of: ChildSa | None = None, on_created=None):
    """Negotiate, install and answer one Child SA (new, or replacing ``rekey_of``).
    ``on_created(child, ni, nr)`` runs once the Child SA object exists, before the board answers."""
    nonce = msg.get(PayloadType.NONCE)
    if nonce is None:
        return reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
    res = negotiate(sa, msg, ignore_dh=False, prefer=rekey_of.cfg if rekey_of is not None else None)
    if isinstance(res, int):
        return reply([NotifyPayload(res)], now)
    chosen = res[1]
    nr = random_bytes(NONCE_LEN)
    tail = [NoncePayload(nr)]
    g_ir = None
    if chosen.dh:
        ke = msg.get(PayloadType.KE)
        if ke is None or ke.group != chosen.dh:
            return reply([NotifyPayload(Notify.INVALID_KE_PAYLOAD, chosen.dh.to_bytes(2, "big"))], now)
        try:
            grp = dh_group(chosen.dh)
            priv, pub = grp.generate()
            g_ir = grp.shared(priv, ke.data)
        except CryptoError:
            return reply([NotifyPayload(Notify.INVALID_SYNTAX)], now)
        tail.append(KePayload(chosen.dh, pub))

    def finish(payloads, child, tsi, tsr, now2):
        if child is None:
            reply(payloads, now2)
            return
        reply(payloads + tail + [TsPayload(tsi, PayloadType.TSi), TsPayload(tsr, PayloadType.TSr)], now2)
        installed_ok(sa, child, now2)

    return responder_child(sa, msg, res, nonce.data, nr, g_ir, finish, rekey_of=rekey_of,
                           on_created=on_created)


def _proposes_ike(msg) -> bool:
    sap = msg.get(PayloadType.SA)
    return sap is not None and any(p.protocol == ProtocolId.IKE for p in sap.proposals)
