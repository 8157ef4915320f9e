"""Events the engine hands to its driver (``IkeEngine.next_event()``), one small class each.

Child SA installation is two-phase: :class:`ChildSaInstall` asks the driver to put the SA on the
offload board; the exchange that creates it is answered (responder) or finished (initiator) only
when the driver reports back with ``IkeEngine.child_sa_installed(handle, ok, now)``.
Key material in these events is never shown by ``repr``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Event:
    """Base class of all engine events."""


@dataclass(slots=True)
class IkeSaUp(Event):
    """An IKE SA is established (both sides authenticated, RFC 7296 §1.2)."""
    ike_id: int
    conn: str
    initiator: bool
    local_addr: tuple
    remote_addr: tuple
    local_id: str
    remote_id: str
    proposal: str


@dataclass(slots=True)
class IkeSaDown(Event):
    """An IKE SA is gone: deleted by either side, timed out, or failed before it was established
    (``established`` False). Its Child SAs each got a :class:`ChildSaDelete` first.

    ``replaced_by``: the IKE SA that took over after a rekey (its Child SAs moved there, see
    :class:`IkeSaRekeyed`). ``restart_ike_id``: the engine is re-initiating the connection itself
    (``dpd_action = "restart"`` after a liveness failure, or the next ``keyingtries`` attempt) as
    this new IKE SA id; nothing for the driver to do but expect its events."""
    ike_id: int
    conn: str
    reason: str
    established: bool = True
    replaced_by: int | None = None
    restart_ike_id: int | None = None


@dataclass(slots=True)
class IkeSaRekeyed(Event):
    """IKE SA ``old_ike_id`` was rekeyed (RFC 7296 §2.18): ``new_ike_id`` replaces it, with the same
    peer, identities and placement; every Child SA moved to it unchanged (same handles, SPIs and
    board entries). Later events for those Child SAs carry ``new_ike_id``. The old IKE SA ends
    with an IkeSaDown(replaced_by=new_ike_id) once its Delete is through. When a peer whose
    rekey we answered turns out not to have taken the new IKE SA (§2.21.3), the move is undone
    with an IkeSaRekeyed from the new one back to the old, and the new one ends with
    IkeSaDown(replaced_by=old)."""
    old_ike_id: int
    new_ike_id: int
    conn: str
    initiator: bool
    proposal: str


@dataclass(slots=True, repr=False)
class ChildSaInstall(Event):
    """Install request for one Child SA (both directions) on the ESP processor.

    Answer it with ``engine.child_sa_installed(handle, ok, now, reason)``. ``*_in`` keys protect
    traffic from the peer to us (decrypt with ``spi_in``), ``*_out`` traffic we send (``spi_out``).
    ``salt_*`` is the 4-byte AEAD salt (RFC 4106 §8.1), empty for AES-CBC. Integrity transform id 0
    means none (AEAD). ``encap`` gives ESP-in-UDP (RFC 3948) with ``local_port``/``remote_port``.
    ``rekey_of`` names the handle this SA replaces (rekeying, RFC 7296 §2.8), else None: install
    the new SA next to the old one; the old one goes with its own ChildSaDelete once the new one
    is in place. ``defer_outbound`` (we answered the peer's rekey): keep sending on ``rekey_of``
    until its ChildSaDelete, then switch; otherwise send on the new SA at once. Inbound, both
    decrypt until the old one is deleted, so no packet is lost across a rekey.
    ``lifetime`` is the hard life time in seconds (0 = none): the board may expire it itself and
    report it with ``engine.child_sa_expired``.
    """
    handle: int
    ike_id: int
    name: str
    protocol: int
    mode: str
    spi_in: int
    spi_out: int
    encr: int
    encr_key_bits: int
    integ: int
    key_in: bytes
    salt_in: bytes
    integ_key_in: bytes
    key_out: bytes
    salt_out: bytes
    integ_key_out: bytes
    esn: bool
    local_ts: list
    remote_ts: list
    local_addr: str
    remote_addr: str
    encap: bool
    local_port: int
    remote_port: int
    initiator: bool
    lifetime: float = 0.0
    rekey_of: int | None = None
    defer_outbound: bool = False

    def __repr__(self):
        return (f"ChildSaInstall(handle={self.handle}, rekey_of={self.rekey_of}, ike_id={self.ike_id}, "
                f"name={self.name!r}, "
                f"spi_in={self.spi_in:08x}, spi_out={self.spi_out:08x}, encr={self.encr}/"
                f"{self.encr_key_bits}, integ={self.integ}, esn={self.esn}, mode={self.mode}, "
                f"encap={self.encap} {self.local_addr}:{self.local_port}->{self.remote_addr}:"
                f"{self.remote_port}, ts={self.local_ts}=={self.remote_ts}, keys=<redacted>)")


@dataclass(slots=True)
class ChildSaUp(Event):
    """The exchange that created Child SA ``handle`` completed and the SA is installed."""
    handle: int
    ike_id: int
    name: str
    spi_in: int
    spi_out: int
    rekey_of: int | None = None


@dataclass(slots=True)
class ChildSaOutbound(Event):
    """Send on Child SA ``handle`` from now on instead of ``replaces`` (a rekey we answered, or a
    simultaneous rekey, was installed with ``defer_outbound``; its predecessor is gone or lost)."""
    handle: int
    ike_id: int
    replaces: int | None


@dataclass(slots=True)
class IkeSaMoved(Event):
    """The peer of IKE SA ``ike_id`` now sends from another address or port: a NAT in the path
    gave it a new mapping (RFC 7296 §2.23). IKE goes to ``remote`` = (ip, port) from ``local``
    from now on, and so must the ESP-in-UDP of every Child SA of this IKE SA."""
    ike_id: int
    local: tuple
    remote: tuple


@dataclass(slots=True)
class ChildSaDelete(Event):
    """Remove Child SA ``handle`` from the ESP processor (it was installed before).

    ``replaced``: a rekey or a reauthentication put a successor in its place and outbound traffic
    already moved there. The peer may still have packets on the old SA in flight, so the ESP
    processor may keep its inbound half a few seconds longer (RFC 7296 §2.8 leaves the timing
    of the switch to each end)."""
    handle: int
    ike_id: int
    spi_in: int
    spi_out: int
    reason: str
    replaced: bool = False


@dataclass(slots=True)
class TrapRequested(Event):
    """From now on set up the Child SAs ``children`` of connection ``conn`` on demand: route their
    selectors into the tunnel and initiate on the first packet for them — ``close_action =
    "trap"`` after the peer closed them (``cause`` "closed"), ``dpd_action = "trap"`` after a
    liveness check went unanswered ("timeout"). ``start_action = "trap"`` needs no event: the
    driver traps those from the start (``Connection.trapped_children``)."""
    conn: str
    children: list
    cause: str


@dataclass(slots=True)
class ChildSaFailed(Event):
    """A Child SA could not be created (peer refused, no proposal, TS unacceptable, board refused).
    Nothing is installed for it."""
    ike_id: int
    name: str
    reason: str


@dataclass(slots=True)
class IkeWarning(Event):
    """Something the operator should see (authentication failure, malformed peer answers)."""
    ike_id: int | None
    text: str
    details: dict = field(default_factory=dict)
