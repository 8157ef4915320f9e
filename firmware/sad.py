"""Security Association Database of the board (RFC 4301 §4.4.2).

Keyed by (SPI, direction). Every change bumps `gen`, the SAD generation, which the host
compares with its own books on each heartbeat: a SAD that changed without the host asking
(reset, fail-closed flush) shows as a generation or count the host did not expect.

An installed SA owns its spec: its keys are zeroed when it leaves the SAD (SaRecord.wipe).

The SAD changes only by host command (SA_ADD, SA_DEL, SA_FLUSH) or by the board's own
fail-closed flush. A hard-expired SA stays in the SAD, refusing traffic, until the host
deletes it — so that the host's books and the board never disagree silently.
"""
from firmware.link import messages as m


class UnsupportedSa(ValueError):
    """The board cannot run this SA (transform, key size, mode or flag it does not do)."""


class SaRecord:
    """One SA with its counters. The ESP engine (firmware/esp.py) subclasses it; this base
    keeps the bookkeeping the link needs and refuses traffic."""
    # Slots down the class tree: attribute access on the data path is then a fixed offset
    # (CPython; MicroPython ignores them). Without them CPython 3.11 gives an instance with
    # more than 30 attributes a dict of its own and every attribute access a hashed lookup.
    __slots__ = ("auth_fail", "octets", "packets", "replay", "seq", "spec", "state")
    # True: a packet is worked on in slices, begin_encrypt/begin_decrypt(pkt) then resume()
    # (firmware/esp.py ChaChaBufSa; the board drives them, firmware/board.py)
    sliced = False

    def __init__(self, spec):
        self.spec = spec
        self.packets = 0
        self.octets = 0
        self.auth_fail = 0
        self.replay = 0
        self.seq = spec.initial_seq
        self.state = m.SaStats.STATE_ACTIVE

    def stats(self):
        s = self.spec
        return m.SaStats(s.spi, s.direction, self.state, self.packets, self.octets,
                         self.auth_fail, self.replay, self.seq, s.reqid)

    def encrypt(self, packet):
        return m.P_UNSUPPORTED, b""

    def decrypt(self, packet):
        return m.P_UNSUPPORTED, b""

    def encrypt_batch(self, packets):
        """[encrypt(p) for p in packets]; an engine may do it faster (GcmSa)."""
        return [self.encrypt(p) for p in packets]

    def decrypt_batch(self, packets):
        """[decrypt(p) for p in packets]; an engine may do it faster (GcmSa)."""
        return [self.decrypt(p) for p in packets]

    def pop_expiry(self):
        """Lifetime events raised since the last call: list of (hard, reason)."""
        return []

    def wipe(self):
        """Zero the SA's keys (its spec's bytearrays): the SA has left the SAD. An engine
        zeroes what it derived from them too."""
        s = self.spec
        for k in (s.encr_key, s.integ_key):
            if type(k) is bytearray:
                for i in range(len(k)):
                    k[i] = 0


class Sad:
    def __init__(self, max_sas, factory=SaRecord):
        self.max_sas = max_sas
        self.factory = factory
        self.by_key = {}
        self.gen = 0

    def __len__(self):
        return len(self.by_key)

    def add(self, spec):
        """Install an SA; returns a reply status (OK, EXISTS, SAD_FULL, UNSUPPORTED)."""
        key = (spec.spi, spec.direction)
        if key in self.by_key:
            return m.EXISTS
        if len(self.by_key) >= self.max_sas:
            return m.SAD_FULL
        try:
            rec = self.factory(spec)
        except UnsupportedSa:
            return m.UNSUPPORTED
        self.by_key[key] = rec
        self.gen += 1
        return m.OK

    def delete(self, spi, direction):
        rec = self.by_key.pop((spi, direction), None)
        if rec is None:
            return m.NOT_FOUND
        rec.wipe()
        self.gen += 1
        return m.OK

    def flush(self):
        """Remove every SA (their keys zeroed); returns how many were removed. An empty SAD
        stays at its generation."""
        n = len(self.by_key)
        if n:
            for rec in self.by_key.values():
                rec.wipe()
            self.by_key = {}
            self.gen += 1
        return n

    def get(self, spi, direction):
        return self.by_key.get((spi, direction))

    def records(self):
        """SAs in a stable order (sorted by SPI, then direction) for paged SA_STATS."""
        keys = sorted(self.by_key)
        return [self.by_key[k] for k in keys]
