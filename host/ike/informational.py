"""INFORMATIONAL exchanges (RFC 7296 §1.4): Delete of Child SAs and IKE SAs, empty requests
(liveness, answered with an empty response), and the notifications that arrive in them.

The initiator's tasks are one class each (DeleteChildTask, DeleteSpisTask, DeleteIkeTask,
LivenessTask); the responder half, common to all of them, is ``InformationalTask.on_request``.
"""
from __future__ import annotations

from .constants import ExchangeType, Notify, PayloadType, ProtocolId
from .lifetimes import retry_child_rekey
from .payloads import DeletePayload
from .states import ChildSaState, IkeSaState, RekeyState
from .task import Outcome, Task


def _spi4(v: int) -> bytes:
    return v.to_bytes(4, "big")


def _rekey_refused(sa, child):
    """The Child SA that ``child``, made answering the peer's rekey, was to replace, if the peer
    deletes ``child`` before it: the peer could not use our answer (§1.3.3, §2.21.3). Not for the
    redundant SA of a simultaneous rekey (§2.8.1), nor one still undecided."""
    if child.exchange_initiator or child.rekey_of is None or child.rekey_state is not None:
        return None
    old = sa.children.get(child.rekey_of)
    if old is None or old.state != ChildSaState.INSTALLED or old.rekey_state != RekeyState.REKEYED or \
            old.collisions:
        return None
    return old


class InformationalTask(Task):
    """Responder: process Deletes, answer with the Deletes of the paired SAs (§1.4.1), pass
    notifications to the context's ``notify_hooks``; an empty request is answered empty (§1.4)."""
    exchange = ExchangeType.INFORMATIONAL

    def on_request(self, sa, msg, reply, now) -> Outcome:
        ctx = sa.ctx
        deletes = msg.all(PayloadType.DELETE)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            reply([], now)          # §1.4.1: an empty response, then the IKE SA and its children go
            ctx.peer_deletes_ike(sa, now)
            return Outcome.DONE
        if not msg.payloads:
            ctx.stats["liveness_answered"] += 1
        out, reopen = [], []
        for d in deletes:
            if d.protocol not in (ProtocolId.ESP, ProtocolId.AH) or d.spi_size != 4:
                continue
            ours = []
            for spi in d.spis:
                out_spi = int.from_bytes(spi, "big")
                child = next((c for c in sa.children.values()
                              if c.spi_out == out_spi and c.state != ChildSaState.DEAD), None)
                if child is None:
                    continue
                if child.state == ChildSaState.DELETING:
                    # simultaneous delete: do not answer with a Delete of our own half (§1.4.1)
                    ctx.remove_child(sa, child, "deleted by both peers")
                elif child.state == ChildSaState.INSTALLING:
                    child.doomed = "deleted by peer"
                    ours.append(_spi4(child.spi_in))
                else:
                    ours.append(_spi4(child.spi_in))
                    ctx.remove_child(sa, child, "rekeyed by peer" if child.rekey_state == RekeyState.REKEYED
                                     else "deleted by peer")
                    replaced = _rekey_refused(sa, child)
                    if replaced is not None:
                        replaced.rekey_state = None     # it stays, and may be rekeyed again
                        retry_child_rekey(sa, replaced, now)
                    elif child.rekey_state is None:     # closed, not replaced by a rekey (§2.8)
                        reopen.append(child.cfg)
            if ours:
                out.append(DeletePayload(d.protocol, ours))
        for n in msg.notifies():
            hook = ctx.notify_hooks.get(n.notify_type)
            if hook is not None:
                hook(sa, n, now)
            elif n.notify_type == Notify.INVALID_SPI:
                ctx.warn(sa, "peer reports INVALID_SPI (no handler installed)")
        reply(out, now)
        for cfg in reopen:
            ctx.reopen_child(sa, cfg, now)
        return Outcome.DONE


class DeleteChildTask(InformationalTask):
    """Delete Child SAs (by handle) with one INFORMATIONAL exchange (§1.4.1). The SAs are removed
    from the board when the peer has answered (or the IKE SA dies)."""

    def __init__(self, handles, reason="deleted locally"):
        self.handles, self.reason = list(handles), reason
        self.children = []

    def build(self, sa, now):
        self.children = [c for h in self.handles if (c := sa.children.get(h)) is not None
                         and c.state == ChildSaState.INSTALLED]
        if not self.children:
            return None
        for c in self.children:
            c.state = ChildSaState.DELETING
        return [DeletePayload(ProtocolId.ESP, [_spi4(c.spi_in) for c in self.children])]

    def on_response(self, sa, msg, raw, now) -> Outcome:
        for c in self.children:
            if c.state == ChildSaState.DELETING:
                sa.ctx.remove_child(sa, c, self.reason)
        return Outcome.DONE


class DeleteSpisTask(InformationalTask):
    """Tell the peer to delete Child SAs that were never installed here (our inbound SPIs): used
    when a Child SA the peer created is unacceptable or the board refused it. ``release``: the
    SPIs were only offered, and are free again once the peer has deleted what they name."""

    def __init__(self, spis, release=False):
        self.spis = list(spis)
        self.release = release

    def build(self, sa, now):
        return [DeletePayload(ProtocolId.ESP, [_spi4(s) for s in self.spis])]

    def on_response(self, sa, msg, raw, now) -> Outcome:
        self.abort(sa)
        return Outcome.DONE

    def abort(self, sa):
        if self.release:
            for s in self.spis:
                sa.ctx.release_child_spi(s)


class DeleteIkeTask(InformationalTask):
    """Delete the IKE SA and with it all its Child SAs (§1.4.1). ``down_cause`` is what the
    after-down rules see (None: a deliberate delete, nothing follows)."""

    def __init__(self, reason="deleted locally", down_cause=None):
        self.reason = reason
        self.down_cause = down_cause

    def build(self, sa, now):
        sa.state = IkeSaState.DELETING
        return [DeletePayload(ProtocolId.IKE)]

    def on_response(self, sa, msg, raw, now) -> Outcome:
        sa.ctx.destroy(sa, self.reason, now, cause=self.down_cause)
        return Outcome.DONE

    def timeout_reason(self) -> str:
        return f"{self.reason} (the peer did not answer our Delete)"


class LivenessTask(InformationalTask):
    """An empty INFORMATIONAL request: any protected answer proves the peer is alive (§1.4, §2.4).
    ``retransmit`` overrides the engine's RetransmitPolicy for this request."""

    def __init__(self, on_alive=None, retransmit=None):
        self.on_alive = on_alive
        self.retransmit = retransmit

    def build(self, sa, now):
        return []

    def on_response(self, sa, msg, raw, now) -> Outcome:
        if self.on_alive is not None:
            self.on_alive(sa, now)
        return Outcome.DONE
