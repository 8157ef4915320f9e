"""What the daemon does when a board is lost, and the recovery timeline of each loss.

RFC 7296 §2.4: an IKE SA must not outlive the IPsec SA processor its Child SAs depend on. When a
board resets, hangs or loses SAs, every IKE SA placed on it is dropped — with a Delete to the peer
if it was established (the IKE SA is still authentic) — nothing more is sent on its Child SAs,
and the connections that say so (start_action = start, dpd_action = restart) are initiated again
as soon as a board is ready. Each loss is a BoardIncident: when it was detected, flushed, when the
board came back, when the new IKE SA and Child SA were up.
"""
import asyncio
import collections
import logging
import time

log = logging.getLogger("ikeoffloadd")

INCIDENTS_KEPT = 50
# IKE SAs a flush drops before it lets the event loop serve other work (the other boards'
# traffic, the board link, IKE): a few milliseconds each slice.
FLUSH_SLICE = 32


class BoardIncident:
    """One board loss and what the daemon did about it (the recovery timeline)."""

    def __init__(self, board, lost):
        self.board = board
        self.reason = lost.reason
        self.detail = lost.detail
        self.detected_at = lost.at            # time.monotonic()
        self.last_ack_at = lost.last_ack_at
        self.flushed_at = None
        self.ike_sas = []
        self.deletes_sent = 0
        self.ready_at = None
        self.reinitiated = []                 # (conn, ike_id, at)
        self.ike_up_at = None
        self.child_up_at = None               # the first re-established connection's Child SA
        self.recovered = set()                # connections whose Child SA is back
        self.all_up_at = None                 # ... all of them

    def as_dict(self):
        return {"board": self.board, "reason": self.reason, "detail": self.detail,
                "detected_at": self.detected_at, "last_ack_at": self.last_ack_at,
                "flushed_at": self.flushed_at, "ike_sas_flushed": len(self.ike_sas),
                "deletes_sent": self.deletes_sent, "board_ready_at": self.ready_at,
                "reinitiated": [c for c, _, _ in self.reinitiated],
                "ike_up_at": self.ike_up_at, "child_up_at": self.child_up_at,
                "recovered": len(self.recovered), "all_up_at": self.all_up_at}


class BoardLossRecovery:
    def __init__(self, engine, call, pool, datapath, *, flush=True, stats=None, active=None):
        """engine: the IkeEngine; call(fn, *args, **kw): runs an engine command and sends what it
        queued (IkeUdpEndpoint.call); flush: daemon.flush_on_board_loss; stats: the daemon's
        counters (board_losses, ike_sas_flushed, deletes_sent); active(): may this router initiate
        (False on an HA standby, host/ha.py)."""
        self.active = active or (lambda: True)
        self.engine = engine
        self.call = call
        self.pool = pool
        self.datapath = datapath
        self.flush = flush
        self.stats = stats if stats is not None else {"board_losses": 0, "ike_sas_flushed": 0, "deletes_sent": 0}
        self.incidents = []
        self.counts = collections.Counter()   # (board, reason) -> incidents, since the start
        self.on_flushed = None       # on_flushed(incident) and on_recovered(incident): the
        self.on_recovered = None     # flush and the recovery timings (host/metrics.py)
        self._open = {}              # board -> BoardIncident awaiting recovery
        self._restart_pending = {}   # conn -> (BoardIncident, Child SA names)
        self._restart_of = {}        # ike_id -> BoardIncident
        self._restart_soon = False   # a restart() is scheduled

    def last_incident(self, board):
        return next((i for i in reversed(self.incidents) if i.board == board), None)

    # ---- a board goes -------------------------------------------------------------------------
    def board_lost(self, ev, now):
        """BoardLost from a board's session."""
        self.stats["board_losses"] += 1
        return self.flush_board(ev, self.pool.on_event(ev), now)

    def flush_board(self, ev, gone, now):
        """Drop the IKE SAs ``gone`` that lived on board ``ev.board`` (RFC 7296 §2.4), tell their
        peers, and re-establish what should come back; returns the incident. Nothing more is
        sent on the board's Child SAs from here on; the IKE SAs go FLUSH_SLICE at a time, the
        event loop serving the other boards' traffic between slices, and each slice's
        connections are re-initiated as it goes (``inc.flushed_at`` marks the last slice)."""
        inc = BoardIncident(ev.board, ev)
        self.incidents.append(inc)
        self.counts[(ev.board, ev.reason)] += 1
        del self.incidents[:-INCIDENTS_KEPT]
        self._open[ev.board] = inc
        self.datapath.set_usable(ev.board, False)
        ids = sorted(i for i in gone if self.engine.ike_sa(i) is not None)
        inc.ike_sas = ids
        if not self.flush:
            log.error("board %s lost (%s: %s): %d IKE SA(s) keep running WITHOUT their Child SAs because "
                      "flush_on_board_loss = false; nothing is sent on them, the peer is not told",
                      ev.board, ev.reason, ev.detail, len(ids))
            return inc
        self._flush_slice(inc, ev, ids, 0, [])
        return inc

    def _flush_slice(self, inc, ev, ids, start, conns):
        for ike_id in ids[start:start + FLUSH_SLICE]:
            sa = self.engine.ike_sa(ike_id)
            if sa is None:                  # gone meanwhile (the peer's Delete, a timeout)
                continue
            conn = sa.conn.name if sa.conn else None
            established = sa.established_at is not None
            children = self.call(self.engine.drop_ike, ike_id,
                                 reason="board %s lost: %s" % (ev.board, ev.reason), send_delete=established)
            inc.deletes_sent += 1 if established else 0
            if conn and sa.conn.remote_host and (sa.conn.start_action == "start" or sa.conn.dpd_action == "restart"):
                conns.append(conn)
                self._restart_pending[conn] = (inc, children or None)
        self.restart(time.monotonic())
        if start + FLUSH_SLICE < len(ids):
            asyncio.get_running_loop().call_soon(self._flush_slice, inc, ev, ids, start + FLUSH_SLICE, conns)
            return
        inc.flushed_at = time.monotonic()
        if self.on_flushed is not None:
            self.on_flushed(inc)
        self.stats["ike_sas_flushed"] += len(ids)
        self.stats["deletes_sent"] += inc.deletes_sent
        log.warning("board %s lost (%s: %s), detected %.0f ms after its last ack: flushed %d IKE SA(s), "
                    "sent %d Delete(s) in %.1f ms%s", ev.board, ev.reason, ev.detail,
                    (ev.at - ev.last_ack_at) * 1000 if ev.last_ack_at else 0, len(ids), inc.deletes_sent,
                    (inc.flushed_at - ev.at) * 1000, "; re-establishing %d connection(s)%s" % (
                        len(conns), ": " + ", ".join(conns) if len(conns) <= 8 else "") if conns else "")

    async def flushed(self, inc, timeout=30.0):
        """Wait until the flush of ``inc`` has dropped its last IKE SA."""
        deadline = time.monotonic() + timeout
        while inc.flushed_at is None and self.flush and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return inc

    def forget(self, conns):
        """Connections a reload removed, or re-establishes itself: none of them is restarted here."""
        for conn in conns:
            self._restart_pending.pop(conn, None)

    # ---- and comes back ---------------------------------------------------------------------
    def board_ready(self, ev, now):
        """BoardReady (after the pool saw it): mark the timeline, re-initiate what waits for a board."""
        inc = self._open.get(ev.board)
        if inc is not None and inc.ready_at is None:
            inc.ready_at = ev.at
        self.restart(now)

    def cancel_restarts(self):
        """The router goes standby: what waits for a board is not re-initiated here."""
        self._restart_pending.clear()

    def restart(self, now):
        """Re-initiate the connections waiting for a board, as many as the ready boards have SA
        slots for (a Child SA takes two); the rest wait for the next board that says HELLO (the
        lost one, when it comes back) rather than fail for want of room."""
        ready = self.pool.ready_boards()
        if not self._restart_pending or not ready or not self.active():
            return
        room = sum(b.free_slots() for b in ready) - self._unplaced_slots()
        for conn, (inc, children) in list(self._restart_pending.items()):
            need = 2 * (len(children) if children else 1)
            if need > room:
                break
            room -= need
            del self._restart_pending[conn]
            ike_id = self.call(self.engine.initiate, conn, child=children, retry=True)
            inc.reinitiated.append((conn, ike_id, time.monotonic()))
            self._restart_of[ike_id] = inc

    def _unplaced_slots(self):
        """SA slots the re-initiated IKE SAs not yet placed on a board will need (placement
        comes with their first Child SA's proposal)."""
        return sum(2 for i in self._restart_of if self.pool.owner_of(i) is None)

    # ---- the timeline, from the engine's events ---------------------------------------------
    def ike_sa_up(self, ev):
        inc = self._restart_of.get(ev.ike_id)
        if inc is not None and inc.ike_up_at is None:
            inc.ike_up_at = time.monotonic()

    def child_sa_up(self, ev):
        inc = self._restart_of.get(ev.ike_id)
        if inc is None or inc.all_up_at is not None:
            return
        now = time.monotonic()
        if inc.child_up_at is None:
            inc.child_up_at = now
            if self.on_recovered is not None:
                self.on_recovered(inc)
            log.info("board %s recovery: new Child SA %s up %.0f ms after the loss was detected",
                     inc.board, ev.name, (inc.child_up_at - inc.detected_at) * 1000)
            self._open.pop(inc.board, None)
        sa = self.engine.ike_sa(ev.ike_id)
        if sa is not None and sa.conn is not None:
            inc.recovered.add(sa.conn.name)
        if len(inc.recovered) >= len(inc.reinitiated):
            inc.all_up_at = now
        if inc.all_up_at is not None and len(inc.recovered) > 1:
            log.info("board %s recovery: all %d connections back %.0f ms after the loss was detected",
                     inc.board, len(inc.recovered), (now - inc.detected_at) * 1000)

    def ike_sa_down(self, ev):
        inc = self._restart_of.pop(ev.ike_id, None)
        if ev.restart_ike_id is not None and inc is not None:
            self._restart_of[ev.restart_ike_id] = inc    # the engine retries the connection itself
        if self._restart_pending and not self._restart_soon:
            # its SA slots may be what they wait for: look once after this burst of events
            self._restart_soon = True
            asyncio.get_running_loop().call_soon(self._deferred_restart)

    def _deferred_restart(self):
        self._restart_soon = False
        self.restart(time.monotonic())
