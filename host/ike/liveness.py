"""Liveness (RFC 7296 §2.4) and what follows when a peer stops answering.

* Proof of liveness: any authentic IKE message (``IkeSa.last_heard``, stamped by the engine) and
  inbound ESP on any Child SA of the IKE SA (the driver reports board counters through
  ``IkeEngine.esp_received``): "receipt of a fresh cryptographically protected message on an SA or
  any of its Child SAs" (§2.4).
* The check: with ``dpd_delay`` set, an empty INFORMATIONAL request once nothing was heard for that
  long. Any request of ours that is in flight already is a check (§2.4), so none is added then.
  An unprotected INVALID_SPI or INVALID_IKE_SPI starts one at once or hastens the one in flight,
  on the hint schedule (invalid_spi.py, rate-limited there).
* No answer: the request is retransmitted on the exponential schedule (§2.1, §2.4); after the last
  retransmission the IKE SA and all its Child SAs are deleted locally, and the connection's
  ``dpd_action`` applies: ``clear`` (or ``none``) ends there, ``restart`` initiates it anew — the
  engine does that itself and says so in ``IkeSaDown.restart_ike_id``.
* Initiations made by ``start()``, by a restart, or with ``initiate(..., retry=True)`` are tried
  again when they fail before the IKE SA is established, up to ``keyingtries`` attempts (0 = no
  limit), each after an exponentially growing pause (capped by ``restart_delay_max``).
"""
from __future__ import annotations

from .events import TrapRequested
from .informational import LivenessTask
from .states import ChildSaState, IkeSaState

DPD = ("dpd",)
START = ("start",)
CLOSE_DELAY = 0.5       # close_action = start waits this long: a peer that reauthenticates
                        # break-before-make (charon 5.9's default) deletes, then initiates itself


def arm(sa, now: float):
    """Start the ``dpd_delay`` timer of a freshly established IKE SA."""
    d = sa.conn.dpd_delay if sa.conn is not None else 0.0
    if d > 0:
        sa.set_timer(DPD, max(sa.last_heard, now) + d)


def on_dpd(sa, key, now: float):
    """``dpd_delay`` elapsed: check unless something was heard meanwhile or a request is running."""
    d = sa.conn.dpd_delay
    if d <= 0 or sa.state != IkeSaState.ESTABLISHED or sa.successor is not None:
        return
    due = sa.last_heard + d
    if now < due:
        sa.set_timer(DPD, due)
        return
    if sa.active is None and not sa.queue:
        sa.ctx.stats["dpd_checks"] += 1
        sa.add_task(LivenessTask(), now)
    sa.set_timer(DPD, now + d)


def check_running(sa) -> bool:
    """A request of ours is in flight (it proves or disproves liveness), or a check is queued."""
    return sa.outstanding is not None or isinstance(sa.active, LivenessTask) or \
        any(isinstance(t, LivenessTask) for t in sa.queue)


def request_check(sa, now: float, retransmit=None) -> bool:
    """Start a liveness check at once unless one is already running or queued (at most one in
    flight per IKE SA). Returns whether a new check was queued."""
    if sa.state != IkeSaState.ESTABLISHED or sa.successor is not None or check_running(sa):
        return False
    sa.add_task(LivenessTask(retransmit=retransmit), now, first=True)
    return True


def proof(sa, now: float):
    """Inbound ESP on one of ``sa``'s Child SAs (§2.4)."""
    sa.last_heard = max(sa.last_heard, now)


def request_timed_out(sa, task, reason: str, now: float):
    """The last retransmission of ``task`` went unanswered: the peer is taken for dead (§2.4). A
    Delete we sent ourselves ends quietly (the task's ``down_cause`` says what follows)."""
    sa.ctx.stats["liveness_failures" if sa.state == IkeSaState.ESTABLISHED else "initiations_timed_out"] += 1
    sa.ctx.destroy(sa, reason, now, cause=task.down_cause)


def child_names(sa) -> list[str]:
    """The Child SA configurations ``sa`` carried (what a restart brings back)."""
    out = []
    for c in sa.children.values():
        if c.cfg is not None and c.cfg.name not in out and c.state != ChildSaState.DEAD:
            out.append(c.cfg.name)
    return out


def carried_elsewhere(sa, name: str) -> bool:
    """Another live IKE SA of ``sa``'s connection has an installed Child SA ``name``."""
    return any(other is not sa and other.announced and other.conn is not None and
               other.conn.name == sa.conn.name and other.state == IkeSaState.ESTABLISHED and
               any(c.cfg is not None and c.cfg.name == name and c.state == ChildSaState.INSTALLED
                   for c in other.children.values())
               for other in sa.ctx.ike_sas_with_conn_ids(sa.conn.local.id, sa.conn.remote.id))


def default_children(conn) -> list[str] | bool:
    marked = [n for n, cfg in conn.children.items() if cfg.start_action == "start"]
    if marked:
        return marked
    return [next(iter(conn.children))] if conn.children else False


def _trapped_after(conn, cause, children) -> list[str]:
    """The Child SAs an IKE SA that went for ``cause`` leaves on demand (``close_action`` or
    ``dpd_action`` = trap)."""
    if cause == "closed":
        return [n for n in children if n in conn.children and conn.children[n].close_action == "trap"]
    if cause == "timeout" and conn.dpd_action == "trap":
        names = children or default_children(conn)
        return list(names) if names else []
    return []


def after_down(sa, cause, children, now: float) -> int | None:
    """Policy after an IKE SA went away for ``cause`` ("timeout": a request went unanswered;
    "failed": the peer refused the initiation; "expired": hard lifetime; "closed": the peer
    deleted it, and Child SAs with ``close_action = start`` come back). Returns the id of the IKE
    SA the engine initiates in its place, if any."""
    ctx = sa.ctx
    conn = ctx.connections.get(sa.conn.name) if sa.conn is not None else None
    if conn is None or sa.successor is not None or cause is None:
        return None
    if sa.established_at is not None:
        trap = _trapped_after(conn, cause, children)
        if trap:
            ctx.emit(TrapRequested(conn.name, trap, cause))
        if cause == "closed":
            # the peer deleted it (§1.4.1): only Child SAs configured with close_action = start, and
            # only those no other IKE SA carries (a peer that reauthenticates makes the new one first)
            names = [n for n in children if n in conn.children and conn.children[n].close_action == "start"
                     and not carried_elsewhere(sa, n)]
            if not names:
                return None
        elif (cause == "timeout" and conn.dpd_action == "restart") or \
                (cause == "expired" and (conn.dpd_action == "restart" or conn.start_action == "start")):
            names = children or default_children(conn)      # §2.4: dead peer; or hard lifetime
        else:
            return None
        attempt = 1
        if cause == "closed":
            ctx.stats["restarts"] += 1
            new = ctx.initiate(conn.name, now, names, retry=True, start_at=now + CLOSE_DELAY)
            new.reopening = names
            return new.ike_id
    else:
        if not sa.initiator or sa.attempt is None or cause not in ("timeout", "failed"):
            return None
        attempt, names = sa.attempt.number + 1, sa.attempt.children
        if conn.keyingtries and attempt > conn.keyingtries:
            ctx.warn(sa, f"connection {conn.name}: giving up after {conn.keyingtries} attempts")
            return None
    if conn.remote_host is None:
        ctx.warn(sa, f"connection {conn.name}: cannot restart, no specific remote address")
        return None
    delay = 0.0 if attempt == 1 else min(ctx.retransmit.delay(attempt - 2), ctx.settings.restart_delay_max)
    ctx.stats["restarts"] += 1
    return ctx.initiate(conn.name, now, names, retry=True, start_at=now + delay, attempt=attempt).ike_id


def on_start(sa, key, now: float):
    """A delayed (re-)initiation is due: send its IKE_SA_INIT — unless it brings back what the
    peer closed and the peer has set all of it up again meanwhile (close_action)."""
    if sa.state != IkeSaState.CONNECTING:
        return
    names = sa.reopening
    if names and all(carried_elsewhere(sa, n) for n in names):
        sa.ctx.stats["reopen_not_needed"] += 1
        sa.ctx.destroy(sa, "the peer set it up again itself", now)
        return
    sa.ctx.start_initiation(sa, now)
