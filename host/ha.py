"""Active/standby: the role keepalived (VRRP, RFC 5798) gives this router, as a sans-I/O state.

keepalived's notify hooks tell the daemon MASTER, BACKUP, FAULT or STOP (`ikeoffloadctl ha
<state>`); its track script asks whether the daemon can serve (`ikeoffloadctl ha check`), and its
track file hears it from the daemon the moment that changes (host/ha_track_file.py). This module
decides what each change means; host/standby.py does it.

* MASTER (active): IKE on the virtual address. Every ``start_action = "start"`` connection is
  initiated at once with INITIAL_CONTACT (RFC 7296 §2.4: the peer drops the IKE SAs the old
  active side left behind), requests for IKE SAs we do not have get INVALID_IKE_SPI (§2.21.4)
  and ESP for SPIs we do not have an unprotected INVALID_SPI (§1.5; on by default with [ha]),
  which make a peer check its IKE SA at once instead of after its liveness timeout.
* BACKUP, FAULT, STOP (standby): no IKE initiated or answered, boards flushed and kept ready
  (heartbeats go on) so that the next MASTER costs one IKE exchange. Leaving MASTER, every IKE
  SA gets a best-effort Delete (where it can still go: a dead link or a lost address drops it)
  and is dropped with its Child SAs — RFC 7296 §2.4 again: the other router now owns the
  address, and an IKE SA must not outlive the IPsec processor its Child SAs live on.
* Nothing is synchronised between the two routers: the new active side negotiates new SAs.

Before keepalived has said anything the role is UNKNOWN: standby. If the address is here all the
same (a daemon restarted while its keepalived is MASTER: keepalived will not say MASTER again), it
is unhealthy, so that the track script fails, keepalived moves to FAULT and says so, and the two
agree again. Otherwise it is healthy: keepalived leaves FAULT or stays BACKUP, and says so.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

# the states keepalived's notify passes ($3); STOP: keepalived itself stopped (the address is gone)
STATES = ("master", "backup", "fault", "stop")
# a board reset recovers in milliseconds: only a longer absence of every board makes us unhealthy
NO_BOARD_GRACE = 0.5
HISTORY_KEPT = 20


class Role(enum.Enum):
    UNKNOWN = "unknown"
    MASTER = "master"
    BACKUP = "backup"
    FAULT = "fault"
    STOP = "stop"


@dataclass(frozen=True)
class Activate:
    """Become the active side: initiate the start connections, answer IKE on the address."""
    reason: str


@dataclass(frozen=True)
class Deactivate:
    """Become standby: drop every IKE SA (with a best-effort Delete when ``deletes``), stop
    initiating and answering, flush the boards."""
    reason: str
    deletes: bool


@dataclass(frozen=True)
class Change:
    at: float
    old: Role
    new: Role


class HaState:
    """The role and its history. ``enabled`` False: a lone router, always active."""

    def __init__(self, enabled: bool, now: float, no_board_grace: float = NO_BOARD_GRACE):
        self.enabled = enabled
        self.role = Role.UNKNOWN if enabled else Role.MASTER
        self.since = now
        self.no_board_grace = no_board_grace
        self._no_board_since: float | None = now
        self.history: list[Change] = []

    @property
    def active(self) -> bool:
        """IKE may be initiated and answered (and ESP carried) on our addresses."""
        return self.role is Role.MASTER

    def set(self, state: str, now: float) -> list:
        """keepalived says ``state`` (one of STATES, any case). Returns the actions, in order.
        Raises ValueError for anything else (and changes nothing)."""
        if not self.enabled:
            raise ValueError("HA is off ([ha] enabled = false): this router is always active")
        s = state.lower() if isinstance(state, str) else state
        if s not in STATES:
            raise ValueError("unknown HA state %r (keepalived's: %s)" % (state, ", ".join(STATES)))
        new, old = Role(s), self.role
        if new is old:
            return []           # a repeated notify (keepalived re-sends on reload) changes nothing
        self.role, self.since = new, now
        self.history.append(Change(now, old, new))
        del self.history[:-HISTORY_KEPT]
        if new is Role.MASTER:
            return [Activate("%s -> master" % old.value)]
        return [Deactivate("%s -> %s" % (old.value, new.value), deletes=old is Role.MASTER)]

    def boards(self, any_ready: bool, now: float):
        """Whether any board is ready, as of ``now`` (called on every board event)."""
        if any_ready:
            self._no_board_since = None
        elif self._no_board_since is None:
            self._no_board_since = now

    def unhealthy_at(self) -> float | None:
        """When the absence of every board will make this router unhealthy (None: a board is ready)."""
        return None if self._no_board_since is None else self._no_board_since + self.no_board_grace

    def health(self, now: float, address_here: bool = False) -> tuple[bool, str]:
        """Can this router serve as the active side? (healthy, why) for keepalived's track script.
        ``address_here``: the virtual address is on one of our interfaces."""
        if self.enabled and self.role is Role.UNKNOWN and address_here:
            return False, "the virtual address is here but keepalived has not told the daemon its role"
        if self._no_board_since is not None and now - self._no_board_since >= self.no_board_grace:
            return False, "no board ready for %.1f s" % (now - self._no_board_since)
        return True, "ok"

    def status(self, now: float, address_here: bool = False) -> dict:
        ok, why = self.health(now, address_here)
        return {"enabled": self.enabled, "state": self.role.value, "active": self.active,
                "since": self.since, "healthy": ok, "reason": why,
                "history": [{"at": c.at, "from": c.old.value, "to": c.new.value} for c in self.history]}
