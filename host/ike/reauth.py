"""Reauthentication (RFC 7296 §2.8.3), make-before-break: at ``reauth_time`` (minus a random part
of ``rand_time``) a new IKE SA is set up from scratch — IKE_SA_INIT, IKE_AUTH with fresh
credentials, no INITIAL_CONTACT since the old one still exists — carrying the same Child SAs. Once
its exchanges are done with every one of them installed, the old IKE SA is deleted with its Child
SAs; the data path has been sending on the newest SAs since they were installed. If the new IKE SA
fails, or comes up without all of them, it is dropped, the old one stays, and reauthentication is
tried again after ``retry_delay``. The hard end (``over_time`` past ``reauth_time`` when the
connection does not rekey) still applies.
"""
from __future__ import annotations

from . import liveness
from .informational import DeleteIkeTask
from .lifetimes import IKE_EXPIRE, soft
from .states import ChildSaState, IkeSaState, RekeyState

REAUTH = ("ike_reauth",)

DRAIN = 0.25                            # seconds between moving to the new SAs and deleting the old


def arm(sa, now: float):
    c = sa.conn
    if c is not None and c.reauth_time > 0:
        rand = c.rand_time if c.rand_time < c.reauth_time else 0.0
        sa.set_timer(REAUTH, soft(sa, now, c.reauth_time, rand))
        if c.rekey_time <= 0 and c.over_time > 0:
            sa.set_timer(IKE_EXPIRE, now + c.reauth_time + c.over_time)


def on_timer(sa, key, now: float):
    """``reauth_time`` is due: start the new IKE SA next to this one."""
    ctx = sa.ctx
    if sa.state != IkeSaState.ESTABLISHED or sa.successor is not None or sa.reauth_by is not None:
        return
    if sa.conn.remote_host is None:
        ctx.warn(sa, f"connection {sa.conn.name}: cannot reauthenticate, no specific remote address")
        return
    names = liveness.child_names(sa)
    new = ctx.initiate(sa.conn.name, now, names or False)
    new.reauth_of, new.reauth_children = sa.ike_id, set(names)
    sa.reauth_by = new.ike_id
    ctx.stats["reauths_started"] += 1


def progress(sa, now: float):
    """Called after each exchange of ``sa`` completes: if it is a reauthentication that has done
    all its work, delete the old IKE SA (everything arrived) or give this one up (something is
    missing)."""
    if sa.reauth_of is None or sa.state != IkeSaState.ESTABLISHED or sa.active is not None or sa.queue:
        return
    if any(c.state == ChildSaState.INSTALLING for c in sa.children.values()):
        return
    ctx = sa.ctx
    old = ctx.ike_sa(sa.reauth_of)
    sa.reauth_of = None
    up = {c.cfg.name for c in sa.children.values() if c.state == ChildSaState.INSTALLED and c.cfg is not None}
    if old is None or old.state != IkeSaState.ESTABLISHED:
        return                                  # nothing left to replace: this one simply stays
    old.reauth_by = None
    if sa.reauth_children <= up:
        ctx.stats["reauths_done"] += 1
        old.queue.clear()
        old.clear_timer(REAUTH)
        for c in old.children.values():
            c.rekey_state = RekeyState.REKEYED  # replaced by the new IKE SA's: not reopened, and not
                                                # rekeyed again meanwhile
        # the new Child SAs carry our traffic from now on; what is already on its way under the
        # old ones (at the ESP processor, on the wire) arrives before the peer deletes them
        ctx.delay_task(old, DeleteIkeTask("reauthenticated"), now + DRAIN)
    else:
        ctx.stats["reauths_failed"] += 1
        ctx.warn(sa, "reauthentication brought up only %s of %s; keeping the old IKE SA"
                 % (sorted(up), sorted(sa.reauth_children)))
        sa.add_task(DeleteIkeTask("reauthentication incomplete"), now, first=True)
        old.set_timer(REAUTH, now + ctx.retry_delay())


def failed(sa, now: float):
    """``sa`` went away before finishing a reauthentication: the old IKE SA tries again later."""
    ctx = sa.ctx
    old = ctx.ike_sa(sa.reauth_of) if sa.reauth_of is not None else None
    sa.reauth_of = None
    if old is not None and old.state != IkeSaState.DEAD and old.reauth_by == sa.ike_id:
        old.reauth_by = None
        ctx.stats["reauths_failed"] += 1
        if old.state == IkeSaState.ESTABLISHED:
            old.set_timer(REAUTH, now + ctx.retry_delay())
