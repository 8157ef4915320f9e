"""The task protocol: one class per exchange, both roles (as charon's task_t and status_t).

An IKE SA runs one exchange of its own at a time (window size 1, RFC 7296 §2.3): its queue holds
tasks; ``IkeSa.kick`` takes the next one, ``build`` makes the request, and the response goes to
``on_response``. A request from the peer makes a fresh task of the exchange's class, and
``on_request`` answers it with ``reply(payloads, now)``. Each step says what follows with an
:class:`Outcome`.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable


class Outcome(Enum):
    DONE = "done"           # the exchange is complete (answered): the next queued one may start
    PENDING = "pending"     # the board's verdict on a Child SA install completes it (two-phase install)
    RESENT = "resent"       # the request went out again, changed (IKE_SA_INIT with COOKIE or another group)
    IGNORED = "ignored"     # not a usable answer and not authenticated: keep waiting and retransmitting
    FAILED = "failed"       # the IKE SA was given up (it is dead)


Reply = Callable[[list, float], None]


class Task:
    """One exchange. Initiator: ``build`` -> ``on_response``; responder: ``on_request``.

    The class attributes are what the IKE SA and the rules read of any task."""
    exchange: int = 0
    retransmit = None                   # a RetransmitPolicy of its own (None: the engine's)
    rekeys_ike = False                  # it replaces the IKE SA (CREATE_CHILD_SA is refused meanwhile)
    down_cause: str | None = "timeout"  # what the after-down rules see if the request goes unanswered

    def build(self, sa, now: float) -> list | None:
        """The request's payloads, or None: nothing to do after all (the next task goes)."""
        raise NotImplementedError

    def on_response(self, sa, msg, raw: bytes, now: float) -> Outcome:
        raise NotImplementedError

    def on_request(self, sa, msg, reply: Reply, now: float) -> Outcome:
        """Answer the peer's request: DONE once ``reply`` was called, PENDING if it will be."""
        raise NotImplementedError

    def timeout_reason(self) -> str:
        return "retransmit timeout (peer not responding)"

    def abort(self, sa):
        """The IKE SA goes away while this exchange runs: release what it holds."""
