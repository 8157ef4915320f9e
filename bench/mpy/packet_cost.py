# Runs on the wasm MicroPython (bench/mpy_cost.py, bench/esp.py copy it in): the firmware's ESP
# engine, time per packet per transform, with the pure backend and with the cryptolib backend over a
# cryptolib whose AES costs nothing (so that what is timed is the Python part; a board's AES runs in
# C, or in hardware). Arguments: repetitions, backends ("pure,cryptolib"). One JSON line per
# measurement.
import json
import sys
import time

from firmware.crypto import pure
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, det, ipv4


class _FreeAes:
    MODE_ECB = 1
    MODE_CBC = 2

    class aes:
        def __init__(self, key, mode, IV=None):
            pass

        def encrypt(self, data, out=None):
            return bytes(data)

        def decrypt(self, data, out=None):
            return bytes(data)


BACKENDS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["pure", "cryptolib"]
backends = [pure]
if "cryptolib" in BACKENDS:
    sys.modules["cryptolib"] = _FreeAes
    from firmware.crypto import cryptolib_backend  # noqa: E402
    backends.append(cryptolib_backend)

TRANSFORMS = ((m.ENCR_AES_GCM_16, 128), (m.ENCR_AES_GCM_16, 256), (m.ENCR_AES_CBC, 128), (m.ENCR_AES_CBC, 256),
              (m.ENCR_CHACHA20_POLY1305, 256))
reps_big = int(sys.argv[1]) if len(sys.argv) > 1 else 10
for be in backends:
    for encr, bits in TRANSFORMS:
        for n in (64, 1400):
            o, i = d.pair(be, 0x4000, encr, bits, m.MODE_TUNNEL, 0)
            pkt = ipv4(A1, A2, 17, d.udp(1, 2, det(n - 28)))
            o.encrypt(pkt)
            reps = reps_big if n > 100 else 5 * reps_big
            t0 = time.ticks_us()
            for _ in range(reps):
                o.encrypt(pkt)
            us = time.ticks_diff(time.ticks_us(), t0) / reps
            print(json.dumps({"backend": be.NAME, "encr": encr, "bits": bits, "bytes": n, "us": us}))
