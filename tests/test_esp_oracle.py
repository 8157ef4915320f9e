"""The board's ESP checked against scapy's independent implementation (scapy.layers.ipsec):
the board encrypts -> scapy decrypts, scapy encrypts -> the board decrypts, for AES-GCM-128/256,
ChaCha20-Poly1305 (RFC 7634; also with the pure backend, the boards' small-int implementation)
and AES-CBC + HMAC-SHA-256-128 / -384-192 / -512-256, tunnel and transport mode, with and
without RFC 3948 UDP encapsulation, and with ESN across 2^32. The board side runs through Board._decrypt_one, so
the RFC 3948 classification is exercised too."""
import os
import struct
import tempfile

import pytest

_cache = tempfile.mkdtemp(prefix="scapy-cache-")
os.environ.setdefault("XDG_CACHE_HOME", _cache)   # scapy writes a cache on import
os.environ.setdefault("HOME", _cache)

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402

from firmware import esp  # noqa: E402
from firmware.link import messages as m  # noqa: E402
from firmware.tests import espdata as d  # noqa: E402

pytestmark = pytest.mark.esp_oracle

BOARD = "10.0.0.1"      # our outer address (A_SRC)
PEER = "10.0.0.2"       # the peer (A_DST)
GCM, CBC, CHACHA = m.ENCR_AES_GCM_16, m.ENCR_AES_CBC, m.ENCR_CHACHA20_POLY1305
SHA256, SHA384, SHA512 = m.AUTH_HMAC_SHA2_256_128, m.AUTH_HMAC_SHA2_384_192, m.AUTH_HMAC_SHA2_512_256
# (encr, bits, integ, the board's crypto backend)
SUITES = [(GCM, 128, 0, "cryptography"), (GCM, 256, 0, "cryptography"), (CBC, 128, SHA256, "cryptography"),
          (CBC, 256, SHA256, "cryptography"), (CHACHA, 256, 0, "cryptography"), (CHACHA, 256, 0, "pure"),
          (CBC, 128, SHA384, "cryptography"), (CBC, 256, SHA512, "cryptography")]
SUITE_IDS = ["gcm128", "gcm256", "cbc128", "cbc256", "chacha", "chacha-pure", "cbc128-sha384", "cbc256-sha512"]
_SCAPY_AUTH = {SHA256: "SHA2-256-128", SHA384: "SHA2-384-192", SHA512: "SHA2-512-256"}
MODES = [m.MODE_TUNNEL, m.MODE_TRANSPORT]
ENCAPS = [False, True]


def _ip(s):
    return bytes(int(x) for x in s.split("."))


def _board(backend="cryptography"):
    return esp.make_board({}, 0, backend=backend)


def _specs(encr, bits, mode, flags, spi, seq_out=0, seq_in=0, integ=SHA256):
    """Our outbound SA (to PEER) and inbound SA (from PEER), same keys as the scapy SAs."""
    kw = dict(mode=mode, flags=flags, integ=integ or SHA256)
    out = d.spec(spi, m.DIR_OUT, encr, bits, src=(_ip(BOARD), 4500), dst=(_ip(PEER), 4500),
                 initial_seq=seq_out, **kw)
    inn = d.spec(spi + 1, m.DIR_IN, encr, bits, src=(_ip(BOARD), 4500), dst=(_ip(PEER), 4500),
                 initial_seq=seq_in, **kw)
    return out, inn


def _scapy_sa(spec, mode, encap, src, dst, esn_hi=None, seq=1):
    kw = dict(spi=spec.spi, seq_num=seq)
    if spec.encr == GCM:
        kw.update(crypt_algo="AES-GCM", crypt_key=spec.encr_key)     # key || salt (RFC 4106 §8.1)
    elif spec.encr == CHACHA:
        kw.update(crypt_algo="CHACHA20-POLY1305", crypt_key=spec.encr_key)     # key || salt (RFC 7634 §2)
    else:
        kw.update(crypt_algo="AES-CBC", crypt_key=spec.encr_key, auth_algo=_SCAPY_AUTH[spec.integ],
                  auth_key=spec.integ_key)
    if mode == m.MODE_TUNNEL:
        kw["tunnel_header"] = IP(src=src, dst=dst)
    if encap:
        kw["nat_t_header"] = UDP(sport=4500, dport=4500)
    if esn_hi is not None:
        kw.update(esn_en=True, esn=esn_hi)
    return SecurityAssociation(ESP, **kw)


def _inner(mode, n=0):
    if mode == m.MODE_TUNNEL:
        return [IP(src="192.168.1.10", dst="192.168.2.20", ttl=33, id=7) / ICMP(id=5, seq=n)
                / (b"x" * (n + 1)),
                IPv6(src="2001:db8:1::1", dst="2001:db8:2::2") / UDP(sport=1000, dport=2000) / (b"y" * 30)]
    return [IP(src=BOARD, dst=PEER, id=9) / UDP(sport=5000, dport=53) / (b"q" * (n + 3)),
            IP(src=BOARD, dst=PEER) / TCP(sport=4000, dport=80, flags="PA") / b"GET / HTTP/1.0\r\n\r\n"]


@pytest.mark.parametrize("encap", ENCAPS, ids=["esp", "udp"])
@pytest.mark.parametrize("mode", MODES, ids=["tunnel", "transport"])
@pytest.mark.parametrize("encr,bits,integ,backend", SUITES, ids=SUITE_IDS)
def test_board_encrypts_scapy_decrypts(encr, bits, integ, backend, mode, encap):
    b = _board(backend)
    out, _ = _specs(encr, bits, mode, m.SAF_UDP_ENCAP if encap else 0, 0x4000, integ=integ)
    assert b.sad.add(out) == m.OK
    rec = b.sad.get(out.spi, m.DIR_OUT)
    sa = _scapy_sa(out, mode, encap, BOARD, PEER)
    for k, pkt in enumerate(_inner(mode, 3) * 2):
        raw = bytes(pkt)
        st, wire = rec.encrypt(raw)
        assert st == m.P_OK
        # what the host does: outer IP (and UDP on 4500) from the SA's addresses
        outer = IP(src=BOARD, dst=PEER) / UDP(sport=4500, dport=4500) / wire if encap \
            else IP(src=BOARD, dst=PEER, proto=50) / wire
        got = sa.decrypt(IP(bytes(outer)))
        if mode == m.MODE_TUNNEL:
            assert bytes(got) == raw
        else:
            assert got.proto == raw[9] and bytes(got.payload) == raw[20:]
        assert struct.unpack(">I", wire[4:8])[0] == k + 1


@pytest.mark.parametrize("encap", ENCAPS, ids=["esp", "udp"])
@pytest.mark.parametrize("mode", MODES, ids=["tunnel", "transport"])
@pytest.mark.parametrize("encr,bits,integ,backend", SUITES, ids=SUITE_IDS)
def test_scapy_encrypts_board_decrypts(encr, bits, integ, backend, mode, encap):
    b = _board(backend)
    _, inn = _specs(encr, bits, mode, m.SAF_UDP_ENCAP if encap else 0, 0x4000, integ=integ)
    assert b.sad.add(inn) == m.OK
    sa = _scapy_sa(inn, mode, encap, PEER, BOARD)
    src = (_ip(PEER), 4500 if encap else 0)
    for k, pkt in enumerate(_inner(mode, 5) * 2):
        if mode == m.MODE_TRANSPORT:
            pkt = pkt.copy()
            pkt[IP].src, pkt[IP].dst = PEER, BOARD
        raw = bytes(pkt)
        iv = os.urandom(16 if encr == CBC else 8)
        wire = bytes(sa.encrypt(IP(raw) if raw[0] >> 4 == 4 else IPv6(raw), iv=iv))
        ihl = (wire[0] & 15) * 4
        data = wire[ihl + 8:] if encap else wire[ihl:]
        st, spi, got = b._decrypt_one(src, data)
        assert (st, spi) == (m.P_OK, inn.spi), (k, st)
        if mode == m.MODE_TUNNEL:
            assert got == raw
        else:
            want = raw[20:]
            if encap and raw[9] == 17:      # RFC 3948 §3.1.2: UDP/IPv4 checksum zeroed
                want = want[:6] + b"\x00\x00" + want[8:]
            # TCP: recomputed over the rebuilt header, which here has the same addresses
            assert got[9] == raw[9] and got[20:] == want
            assert got[12:16] == _ip(PEER) and got[16:20] == _ip(BOARD)
        assert b._decrypt_one(src, data)[0] == m.P_REPLAY


@pytest.mark.parametrize("encr,backend", [(GCM, "cryptography"), (CBC, "cryptography"),
                                          (CHACHA, "cryptography"), (CHACHA, "pure")],
                         ids=["gcm", "cbc", "chacha", "chacha-pure"])
def test_esn_across_2_32_both_ways(encr, backend):
    """RFC 4303 §2.2.1: seq-hi is in the ICV (CBC) or the AAD (GCM, ChaCha20-Poly1305: RFC 7634
    §2.1), never on the wire."""
    b = _board(backend)
    start = 0xFFFFFFFE
    out, inn = _specs(encr, 128, m.MODE_TUNNEL, m.SAF_ESN, 0x5000, seq_out=start, seq_in=0xFFFFFFF0)
    assert b.sad.add(out) == m.OK and b.sad.add(inn) == m.OK
    rec = b.sad.get(out.spi, m.DIR_OUT)
    pkt = _inner(m.MODE_TUNNEL)[0]
    for k in range(3):                       # 2^32 - 1, 2^32, 2^32 + 1
        seq = start + 1 + k
        theirs = _scapy_sa(out, m.MODE_TUNNEL, False, BOARD, PEER, esn_hi=seq >> 32, seq=seq & 0xFFFFFFFF)
        st, wire = rec.encrypt(bytes(pkt))
        assert st == m.P_OK
        assert bytes(theirs.decrypt(IP(bytes(IP(src=BOARD, dst=PEER, proto=50) / wire)))) == bytes(pkt)
        mine = _scapy_sa(inn, m.MODE_TUNNEL, False, PEER, BOARD, esn_hi=seq >> 32, seq=seq & 0xFFFFFFFF)
        w = bytes(mine.encrypt(IP(bytes(pkt)), iv=os.urandom(16 if encr == CBC else 8)))
        assert b._decrypt_one((_ip(PEER), 0), w[20:])[:2] == (m.P_OK, inn.spi)
    # a packet whose seq-hi the sender got wrong does not authenticate
    bad = _scapy_sa(inn, m.MODE_TUNNEL, False, PEER, BOARD, esn_hi=7, seq=(start + 4) & 0xFFFFFFFF)
    w = bytes(bad.encrypt(IP(bytes(pkt)), iv=os.urandom(16 if encr == CBC else 8)))
    assert b._decrypt_one((_ip(PEER), 0), w[20:])[0] == m.P_AUTH_FAIL


def test_scapy_tampering_is_caught():
    b = _board()
    _, inn = _specs(GCM, 128, m.MODE_TUNNEL, 0, 0x6000)
    b.sad.add(inn)
    sa = _scapy_sa(inn, m.MODE_TUNNEL, False, PEER, BOARD)
    w = bytearray(bytes(sa.encrypt(IP(bytes(_inner(m.MODE_TUNNEL)[0])), iv=b"\x00" * 8))[20:])
    w[20] ^= 0x40
    assert b._decrypt_one((_ip(PEER), 0), bytes(w))[0] == m.P_AUTH_FAIL
