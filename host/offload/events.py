"""Events of the offload layer: one small class each (what the daemon's flush acts on)."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """A reply to request `seq`; `rtt` is None when the request was retransmitted (Karn)."""
    seq: int
    type: int
    body: bytes
    rtt: float | None


@dataclass(frozen=True)
class RequestFailed:
    """No reply to request `seq` before its deadline, or the board was lost meanwhile."""
    seq: int
    type: int
    reason: str


@dataclass(frozen=True)
class BoardFrame:
    """An unsolicited frame (event) from the board, not yet interpreted. `proof` (HELLO events on
    an authenticated link): True when it echoes a frame of the host's current session (the board
    lost that session just now), False for a boot announcement (authentic, maybe replayed); None
    on an open link."""
    type: int
    seq: int
    body: bytes
    proof: bool | None = None


@dataclass(frozen=True)
class BoardReady:
    """The board answered HELLO and its SAD is empty (flushed by us): it may take SAs.

    `at` is a time.monotonic() timestamp, like every `at` here."""
    board: str
    boot_id: bytes
    hello: object
    at: float


@dataclass(frozen=True)
class BoardLost:
    """The board reset, hung, or lost SAs: every SA the host installed there is gone or
    untrustworthy (RFC 7296 §2.4 — the IKE SAs depending on them must go too).

    reason: boot-id-changed | unsolicited-hello | missed-heartbeats | sa-count-mismatch |
    sad-generation-mismatch | board-flushed | request-timeout | transport-error | closed
    """
    board: str
    reason: str
    detail: str
    at: float
    last_ack_at: float | None
    sas: tuple = field(default=())  # the (spi, direction) keys the host had installed there


@dataclass(frozen=True)
class UnknownSpiReport:
    """The board saw ESP for SPIs it does not have: entries of (spi, (ip, port) or None, packets)."""
    board: str
    entries: tuple
    suppressed: int
    at: float


@dataclass(frozen=True)
class SaExpired:
    """A lifetime ran out on the board (soft: rekey now; hard: the SA refuses traffic)."""
    board: str
    spi: int
    direction: int
    hard: bool
    reason: int
    reqid: int
    at: float
