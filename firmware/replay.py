"""Anti-replay window (RFC 4303 §3.4.3) with extended sequence numbers (§2.2.1, Appendix A).

Use: seq = w.infer(seq_lo) (ESN only; identity otherwise), then w.check(seq) before the ICV
check, and w.update(seq) only after the ICV verified — a forged packet must not move the
window (§3.4.3: "the receive window is updated only if the integrity verification succeeds").

`top` is the highest authenticated sequence number (64 bits with ESN) and bit i of `bits`
says that top - i was received. Bit 0 starts set with top = 0: sequence number 0 is never
sent (§3.3.3 starts at 1), so it reads as a duplicate. A window of 0 turns the check off
(§3.4.3 lets a receiver do that); ESN needs a window to infer the high bits, so an ESN SA
with window 0 is refused at SA_ADD.
"""

MAX_WINDOW = 1024
_MASKS = {}


class ReplayWindow:
    __slots__ = ("size", "esn", "top", "bits", "mask")

    def __init__(self, size=64, esn=False):
        if size < 0 or size > MAX_WINDOW:
            raise ValueError("replay window must be 0..%d" % MAX_WINDOW)
        self.size = size
        self.esn = esn
        self.top = 0
        self.bits = 1
        mask = _MASKS.get(size)
        if mask is None:   # one int per window size, shared (64 bits and up are heap ints)
            mask = _MASKS[size] = (1 << size) - 1 if size else 1
        self.mask = mask

    def infer(self, seql):
        """The full 64-bit sequence number of a packet carrying low bits `seql` (RFC 4303
        Appendix A2.2), or -1 if it would fall before sequence number 0 or past 2^64 - 1."""
        if not self.esn:
            return seql
        w = self.size
        th = self.top >> 32
        tl = self.top & 0xFFFFFFFF
        if tl >= w - 1:                       # Case A: the window lies within one subspace
            seqh = th if seql >= tl - w + 1 else th + 1
        else:                                 # Case B: the window spans two subspaces
            seqh = th - 1 if seql >= ((tl - w + 1) & 0xFFFFFFFF) else th
        if seqh < 0 or seqh > 0xFFFFFFFF:
            return -1
        return (seqh << 32) | seql

    def check(self, seq):
        """True if `seq` is new and not left of the window (no state change)."""
        if seq <= 0:
            return False
        if not self.size:
            return True
        top = self.top
        if seq > top:
            return True
        d = top - seq
        if d >= self.size:
            return False
        return not (self.bits >> d) & 1

    def update(self, seq):
        """Record an authenticated `seq` (call only after the ICV verified)."""
        top = self.top
        if seq > top:
            d = seq - top
            if d >= self.size:
                self.bits = 1
            else:
                self.bits = ((self.bits << d) | 1) & self.mask
            self.top = seq
        else:
            self.bits |= 1 << (top - seq)

    def __repr__(self):
        return "ReplayWindow(size=%d, esn=%s, top=%d)" % (self.size, self.esn, self.top)
