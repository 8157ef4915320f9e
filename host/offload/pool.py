"""Board pool: several offload boards, each its own failure domain (RFC 7296 §2.4).

Every Child SA of one IKE SA lives on one board, so a board that fails takes exactly its own
IKE SAs with it. New IKE SAs are placed on the ready board with the most room that can run the
transforms the connection needs; `owner_of` and `ike_sas_on` answer what the flush must remove.
Room counts what a board has promised as well as what it holds: when hundreds of IKE SAs are
placed at once (start-up, a flush's re-establishment) their Child SAs are not installed yet,
and each will need at least a pair of SA slots.
"""
from dataclasses import dataclass, field

from host.offload.events import BoardLost, BoardReady


@dataclass
class BoardState:
    name: str
    client: object                       # BoardClient
    ike_sas: set = field(default_factory=set)
    ready: bool = False
    losses: int = 0
    last_loss: BoardLost | None = None
    ready_at: float | None = None
    promised: set = field(default_factory=set)   # (spi, direction) of installs in flight

    def reserve(self, keys):
        """Claim SA slots for the (spi, direction) ``keys`` of an install, so that concurrent
        installs cannot overcommit the board's SAD and fail each other half-way; False if they
        are not there."""
        keys = set(keys)
        h = self.hello
        if h is None or self.client.sa_count() + self.reserved + len(keys - self.promised) > h.max_sas:
            return False
        self.promised |= keys
        return True

    def unreserve(self, keys):
        self.promised -= set(keys)

    @property
    def reserved(self):
        """SA slots promised and not yet in the board's books: a half the board has acked counts
        once (in its books), whether or not its install has finished."""
        return sum(1 for spi, d in self.promised if not self.client.has_sa(spi, d))

    @property
    def hello(self):
        s = self.client.session
        return s.hello if s is not None else None

    def capabilities(self):
        """(encr, key_bits, integ) tuples the board runs, fastest backends first."""
        h = self.hello
        if h is None:
            return []
        ts = sorted(h.transforms, key=lambda t: -t.speed)
        return [t.key() for t in ts]

    def committed(self):
        """SA slots in use or promised: the SAs the host installed there and the installs in
        flight, or a pair for each IKE SA placed there if that is more (their Child SAs may not
        be installed yet)."""
        return max(self.client.sa_count() + self.reserved, 2 * len(self.ike_sas))

    def load(self):
        """Fraction of the board's SAD in use or promised."""
        h = self.hello
        return self.committed() / h.max_sas if h and h.max_sas else 1.0

    def free_slots(self):
        """SA slots neither in use nor promised."""
        h = self.hello
        return max(0, h.max_sas - self.committed()) if h is not None else 0

    def has_room(self, n=2):
        h = self.hello
        return h is not None and self.committed() + n <= h.max_sas


class NoBoard(RuntimeError):
    """No ready board can take this IKE SA's Child SAs."""


class BoardPool:
    def __init__(self):
        self.boards = {}      # name -> BoardState
        self._owner = {}      # ike_id -> board name

    def add(self, name, client):
        self.boards[name] = BoardState(name, client)
        return self.boards[name]

    def on_event(self, ev):
        """Feed BoardReady/BoardLost; returns the IKE SAs that lost their board (for the flush)."""
        b = self.boards.get(ev.board)
        if b is None:
            return set()
        if isinstance(ev, BoardReady):
            b.ready = True
            b.ready_at = ev.at
            return set()
        if isinstance(ev, BoardLost):
            b.ready = False
            b.losses += 1
            b.last_loss = ev
            gone = set(b.ike_sas)
            for ike_id in gone:
                self._owner.pop(ike_id, None)
            b.ike_sas.clear()
            return gone
        return set()

    def place(self, ike_id, need=None):
        """Choose the board for a new IKE SA (or the one it already has). `need`: an iterable of
        acceptable (encr, key_bits, integ) transforms; the board must run at least one."""
        if ike_id in self._owner:
            return self.boards[self._owner[ike_id]]
        need = set(need) if need is not None else None
        best = None
        for b in self.boards.values():
            if not b.ready:
                continue
            if need is not None and not need.intersection(b.capabilities()):
                continue
            # boards with room first; if none has any, the least loaded (its install says "full"
            # if it really is: IKE SAs without Child SAs need no slots)
            rank = (not b.has_room(), b.load(), len(b.ike_sas))
            if best is None or rank < best[0]:
                best = (rank, b)
        if best is None:
            raise NoBoard("no ready board can take IKE SA %d" % ike_id)
        best = best[1]
        best.ike_sas.add(ike_id)
        self._owner[ike_id] = best.name
        return best

    def release(self, ike_id):
        """The IKE SA is gone: its board no longer counts it."""
        name = self._owner.pop(ike_id, None)
        if name is not None:
            self.boards[name].ike_sas.discard(ike_id)

    def transfer(self, old_ike_id, new_ike_id):
        """An IKE SA was rekeyed (RFC 7296 §2.18): its successor lives on the same board."""
        name = self._owner.pop(old_ike_id, None)
        if name is not None:
            b = self.boards[name]
            b.ike_sas.discard(old_ike_id)
            b.ike_sas.add(new_ike_id)
            self._owner[new_ike_id] = name

    def owner_of(self, ike_id):
        name = self._owner.get(ike_id)
        return self.boards[name] if name is not None else None

    def ike_sas_on(self, name):
        return set(self.boards[name].ike_sas)

    def ready_boards(self):
        return [b for b in self.boards.values() if b.ready]
