"""Random bytes on every runtime: os.urandom where the port has it (CPython, ESP32, RP2040 —
hardware RNG), else the `random` module (the wasm MicroPython, used for tests only)."""
try:
    from os import urandom
except ImportError:
    urandom = None

if urandom is None:
    import random

    def urandom(n):
        return bytes(random.getrandbits(8) for _ in range(n))
