"""When SAs are rekeyed and when they end (swanctl.conf names): a rekey at ``rekey_time`` minus
a random part of ``rand_time``; a Child SA ends at ``life_time``, an IKE SA at ``rekey_time +
over_time``. These are the IKE SA's named timers; rekey.py handles them when they fire, and the
board's own soft/hard expiry (SA_EXPIRE) arrives through ``IkeEngine.child_sa_expired``."""
from __future__ import annotations

from .states import ChildSaState, IkeSaState

CHILD_REKEY = "child_rekey"         # timer (CHILD_REKEY, handle)
CHILD_EXPIRE = "child_expire"       # timer (CHILD_EXPIRE, handle)
IKE_REKEY = ("ike_rekey",)
IKE_EXPIRE = ("ike_expire",)
REAP = ("reap",)                    # a replaced IKE SA the peer should have deleted by then


def soft(sa, now: float, rekey: float, rand: float) -> float:
    """``now + rekey``, less a random part of ``rand`` (so both ends do not rekey at once)."""
    return now + rekey - (sa.ctx.jitter.uniform(0.0, rand) if rand else 0.0)


def arm_child(sa, child, now: float):
    """Timers of a freshly installed Child SA: rekey (jittered) and hard end."""
    cfg = child.cfg
    if cfg is None:
        return
    if cfg.rekey_time > 0:
        sa.set_timer((CHILD_REKEY, child.handle), soft(sa, now, cfg.rekey_time, cfg.rand_time))
    if cfg.life_time > 0:
        sa.set_timer((CHILD_EXPIRE, child.handle), now + cfg.life_time)


def retry_child_rekey(sa, child, now: float):
    """A rekey of ``child`` that did not happen is tried again after 0.5..1 x ``retry_delay``
    (§2.25: never at once)."""
    if child.state == ChildSaState.INSTALLED and child.rekey_state is None and sa.state == IkeSaState.ESTABLISHED:
        sa.set_timer((CHILD_REKEY, child.handle), now + sa.ctx.retry_delay())


def arm_ike(sa, now: float):
    c = sa.conn
    if c is not None and c.rekey_time > 0:
        sa.set_timer(IKE_REKEY, soft(sa, now, c.rekey_time, c.rand_time))
        if c.over_time > 0:
            sa.set_timer(IKE_EXPIRE, now + c.rekey_time + c.over_time)


def clear_child_timers(sa, handle: int):
    sa.timers.pop((CHILD_REKEY, handle), None)
    sa.timers.pop((CHILD_EXPIRE, handle), None)
