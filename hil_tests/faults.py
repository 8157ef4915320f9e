"""Byte faults on the host side of a real transport: drop or flip each byte with probability
p, in both directions. Wraps whatever transport the bench uses (serial, pty, socket://, SPI), so
the same test runs against the simulator, the virtual board and a real board."""
import random


class FaultyTransport:
    def __init__(self, inner, fault=0.01, seed=1):
        self.inner = inner
        self.fault = fault
        self.rng = random.Random(seed)
        self.dropped = 0
        self.flipped = 0
        deliver = inner.on_data
        inner.on_data = lambda data: deliver(self.corrupt(data))

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

    def open(self):
        self.inner.open()

    @property
    def is_open(self):
        return self.inner.is_open

    def write(self, data):
        self.inner.write(self.corrupt(data))

    def close(self):
        self.inner.close()
