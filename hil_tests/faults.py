"""Byte faults on the host side of a real transport: drop or flip each byte with probability
p, in both directions. Works the same against the simulator and against a real board."""
import random

from host.offload.transport import SerialTransport


class FaultyTransport(SerialTransport):
    def __init__(self, *a, fault=0.01, seed=1, **kw):
        super().__init__(*a, **kw)
        self.fault = fault
        self.rng = random.Random(seed)
        self.dropped = 0
        self.flipped = 0
        inner = self.on_data
        self.on_data = lambda data: inner(self.corrupt(data))

    def corrupt(self, data):
        out = bytearray()
        rnd, p = self.rng.random, self.fault
        for b in data:
            r = rnd()
            if r < p / 2:
                self.dropped += 1
                continue
            if r < p:
                self.flipped += 1
                b ^= self.rng.randrange(1, 256)
            out.append(b)
        return bytes(out)

    def write(self, data):
        super().write(self.corrupt(data))
