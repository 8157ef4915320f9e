"""Test data and packet builders for the firmware ESP tests (CPython and MicroPython alike).

No os.urandom here (the wasm MicroPython has none): data comes from det().
"""
import binascii
import struct

from firmware import crypto
from firmware.link import messages as m


def h(s):
    """Bytes from hex text with spaces and newlines (as RFCs print it)."""
    return binascii.unhexlify(s.replace(" ", "").replace("\n", ""))


def hx(b):
    return binascii.hexlify(b).decode()


def det(n, seed=1):
    """n deterministic bytes (a small LCG)."""
    out = bytearray(n)
    x = seed & 0x7FFF
    for i in range(n):
        x = (x * 1103 + 12345) & 0x7FFF
        out[i] = x & 0xFF
    return bytes(out)


def backends():
    """Every crypto backend this runtime has (tests name their backend explicitly)."""
    return [crypto.load(n) for n in crypto.available()]


def fast_backend():
    return crypto.load(crypto.available()[0])


def cksum(data):
    if len(data) & 1:
        data = data + b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


A1 = bytes((10, 0, 0, 1))
A2 = bytes((10, 0, 0, 2))
A3 = bytes((192, 0, 2, 7))
A6_1 = h("20010db8000000000000000000000001")
A6_2 = h("20010db8000000000000000000000002")


def ipv4(src=A1, dst=A2, proto=17, payload=b"", ttl=64, ident=0, frag=0):
    hdr = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0) + src + dst
    c = cksum(hdr)
    return hdr[:10] + struct.pack(">H", c) + hdr[12:] + payload


def ipv6(src=A6_1, dst=A6_2, nh=17, payload=b"", hlim=64):
    return struct.pack(">IHBB", 0x60000000, len(payload), nh, hlim) + src + dst + payload


def udp(sport, dport, data=b""):
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport, dport, data=b""):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 8192, 0, 0) + data


def icmp_echo(ident=1, seq=1, data=b""):
    return struct.pack(">BBHHH", 8, 0, 0, ident, seq) + data


def gcm_key(bits=128, seed=3):
    return det(bits // 8 + 4, seed)


INTEG_KEY = {m.AUTH_HMAC_SHA2_256_128: 32, m.AUTH_HMAC_SHA2_384_192: 48, m.AUTH_HMAC_SHA2_512_256: 64}


def spec(spi, direction, encr=m.ENCR_AES_GCM_16, bits=128, mode=m.MODE_TUNNEL, flags=0,
         integ=m.AUTH_HMAC_SHA2_256_128, **kw):
    """An SaSpec with deterministic keys; both directions of one SPI get the same keys. ChaCha20-
    Poly1305 takes 32 bytes and a salt whatever `bits` says; `integ` is AES-CBC's."""
    if encr == m.ENCR_AES_GCM_16:
        return m.SaSpec(spi, direction, encr, gcm_key(bits, spi & 0xFF), mode=mode, flags=flags, **kw)
    if encr == m.ENCR_CHACHA20_POLY1305:
        return m.SaSpec(spi, direction, encr, det(36, spi & 0xFF), mode=mode, flags=flags, **kw)
    return m.SaSpec(spi, direction, encr, det(bits // 8, spi & 0xFF), integ,
                    det(INTEG_KEY[integ], (spi >> 8) & 0xFF), mode=mode, flags=flags, **kw)


def transforms(be):
    """(encr, bits, integ) of every transform backend `be` runs (what its HELLO lists)."""
    from firmware import esp
    return [t.key() for t in esp.transforms(be)]


def pair(be, spi=0x1000, encr=m.ENCR_AES_GCM_16, bits=128, mode=m.MODE_TUNNEL, flags=0, **kw):
    """(outbound, inbound) SAs that talk to each other: A1 is the sender, A2 the receiver."""
    from firmware import esp
    out_kw = dict(kw)
    in_kw = dict(kw)
    out_kw.setdefault("src", (A1, 4500))
    out_kw.setdefault("dst", (A2, 4500))
    in_kw.setdefault("src", (A2, 4500))
    in_kw.setdefault("dst", (A1, 4500))
    if "ts_out" in kw:
        out_kw["ts_local"], out_kw["ts_remote"] = kw["ts_out"]
        in_kw["ts_remote"], in_kw["ts_local"] = kw["ts_out"]
        del out_kw["ts_out"]
        del in_kw["ts_out"]
    o = esp.new_sa(spec(spi, m.DIR_OUT, encr, bits, mode, flags, **out_kw), be)
    i = esp.new_sa(spec(spi, m.DIR_IN, encr, bits, mode, flags, **in_kw), be)
    return o, i
