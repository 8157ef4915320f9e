"""ESP engine (firmware/esp.py): RFC 4303 encapsulation and decapsulation, RFC 4106 and RFC 3602
+ 4868 known answers at the packet level, anti-replay, sequence exhaustion, lifetimes,
selectors, malformed input. Runs on every backend the runtime has (only `pure` on MicroPython,
so packet counts stay small)."""
import struct

from firmware import esp, sad
from firmware.crypto import pure
from firmware.link import messages as m
from firmware.tests import espdata as d
from firmware.tests.espdata import A1, A2, A3, backends, det, h, ipv4, ipv6

GCM = m.ENCR_AES_GCM_16
CBC = m.ENCR_AES_CBC
FLAG_SETS = (0, m.SAF_ESN, m.SAF_UDP_ENCAP)


def _ping(n=40, src=A1, dst=A2):
    return ipv4(src, dst, 1, d.icmp_echo(7, 1, det(n)))


CHACHA = m.ENCR_CHACHA20_POLY1305


def test_round_trip_every_transform_mode_and_flag():
    pkt4 = _ping(33)
    pkt6 = ipv6(payload=d.udp(1000, 2000, det(21)))
    for be in backends():
        for encr, bits, integ in d.transforms(be):
            for flags in FLAG_SETS:
                o, i = d.pair(be, 0x2000 + bits, encr, bits, m.MODE_TUNNEL, flags, integ=integ)
                for pkt in (pkt4, pkt6):
                    st, wire = o.encrypt(pkt)
                    assert st == m.P_OK, (be.NAME, encr, bits, integ, flags)
                    assert wire[:4] == struct.pack(">I", 0x2000 + bits)
                    st, out = i.decrypt(wire)
                    assert (st, out) == (m.P_OK, pkt), (be.NAME, encr, bits, integ, flags)
                assert o.seq == 2 and i.stats().seq == 2
                assert o.packets == i.packets == 2
                assert o.octets == i.octets == len(pkt4) + len(pkt6)


def test_every_backend_runs_chacha20_poly1305_and_hmac_sha2_where_hashlib_has_it():
    """ChaCha20-Poly1305 everywhere; HMAC-SHA-384/512 only with the hash (stock MicroPython has
    none: a board must not advertise them)."""
    import hashlib
    for be in backends():
        ts = d.transforms(be)
        assert (CHACHA, 256, m.AUTH_NONE) in ts, be.NAME
        for integ, name in ((m.AUTH_HMAC_SHA2_384_192, "sha384"), (m.AUTH_HMAC_SHA2_512_256, "sha512")):
            assert ((CBC, 256, integ) in ts) == hasattr(hashlib, name), (be.NAME, name)
            if not hasattr(hashlib, name):
                try:
                    d.pair(be, 0x2100, CBC, 256, integ=integ)
                    raise AssertionError((be.NAME, name))
                except sad.UnsupportedSa:
                    pass


def test_chacha_and_sha2_icv_sizes_and_layout():
    """RFC 7634 §2: 8-byte IV (the sequence number), padding to 4, 16-byte ICV; RFC 4868: the ICV
    is 24 / 32 bytes for HMAC-SHA-384-192 / -512-256; a changed ICV byte fails."""
    pkt = _ping(33)
    for be in backends():
        cases = [(t, 16) for t in d.transforms(be) if t[0] == CHACHA]
        cases += [(t, {m.AUTH_HMAC_SHA2_384_192: 24, m.AUTH_HMAC_SHA2_512_256: 32}[t[2]])
                  for t in d.transforms(be) if t[2] in (m.AUTH_HMAC_SHA2_384_192, m.AUTH_HMAC_SHA2_512_256)]
        for (encr, bits, integ), icv in cases:
            o, i = d.pair(be, 0x2200, encr, bits, integ=integ)
            st, wire = o.encrypt(pkt)
            assert st == m.P_OK
            if encr == CHACHA:
                assert wire[8:16] == struct.pack(">II", 0, 1)      # IV = the 64-bit sequence number
                assert (len(wire) - 16 - icv) % 4 == 0
            else:
                assert (len(wire) - 24 - icv) % 16 == 0
            bad = bytearray(wire)
            bad[-icv] ^= 1
            assert i.decrypt(bytes(bad)) == (m.P_AUTH_FAIL, b""), (be.NAME, encr, integ)
            bad = bytearray(wire)
            bad[-icv - 1] ^= 1                                    # the last byte before the ICV
            assert i.decrypt(bytes(bad)) == (m.P_AUTH_FAIL, b""), (be.NAME, encr, integ)
            assert i.decrypt(wire) == (m.P_OK, pkt)


def test_transport_mode_round_trip_rebuilds_the_header():
    for be in backends():
        for encr in (GCM, CBC):
            o, i = d.pair(be, 0x3000, encr, 128, m.MODE_TRANSPORT)
            seg = d.udp(5000, 53, det(17))
            pkt = ipv4(A1, A2, 17, seg, ttl=9, ident=77)
            st, wire = o.encrypt(pkt)
            assert st == m.P_OK
            st, out = i.decrypt(wire)
            assert st == m.P_OK
            assert out[20:] == seg                        # only the payload travelled
            assert out[9] == 17 and out[12:16] == A1 and out[16:20] == A2
            assert (out[2] << 8 | out[3]) == len(out)
            assert d.cksum(out[:20]) == 0                 # valid IPv4 header checksum


def test_sequence_numbers_start_at_one_and_gcm_iv_is_the_sequence_number():
    be = backends()[0]
    o, i = d.pair(be)
    for n in (1, 2, 3):
        st, wire = o.encrypt(_ping())
        assert struct.unpack(">I", wire[4:8])[0] == n
        assert wire[8:16] == struct.pack(">II", 0, n)     # RFC 4106 §3.1: unique per key
    o, i = d.pair(be, flags=m.SAF_ESN, initial_seq=(5 << 32) | 9)
    st, wire = o.encrypt(_ping())
    assert wire[4:8] == struct.pack(">I", 10) and wire[8:16] == struct.pack(">II", 5, 10)


def test_mcgrew_gcm_esp_packets_decapsulate():
    """draft-mcgrew-gcm-test-01 cases as received ESP packets (next header 1 there, so a
    transport-mode SA): SPI and sequence number come from the AAD, salt || IV from the nonce."""
    from firmware.tests.test_crypto_kat import GCM_CASES
    picks = ((GCM_CASES[0], m.SAF_ESN, (0x87654320 << 32) | 0xFFFFFFF6),   # seq-hi inferred + 1
             (GCM_CASES[1], 0, 0), (GCM_CASES[2], m.SAF_ESN, 0),
             (GCM_CASES[4], m.SAF_ESN, 0xFFFFFFFFFFFFFFF0), (GCM_CASES[3], 0, 0))
    for be in backends():
        for (key, nonce, aad, pt, ct), flags, top in picks:
            aad, nonce, pt = h(aad), h(nonce), h(pt)
            spi = struct.unpack(">I", aad[:4])[0]
            spec = m.SaSpec(spi, m.DIR_IN, GCM, h(key) + nonce[:4], mode=m.MODE_TRANSPORT,
                            flags=flags, src=(A2, 0), dst=(A1, 0), initial_seq=top)
            rec = esp.new_sa(spec, be)
            wire = aad[:4] + aad[-4:] + nonce[4:] + h(ct)
            st, out = rec.decrypt(wire)
            assert st == m.P_OK, (be.NAME, spi, st)
            assert out[9] == pt[-1] == 1 and out[20:] == pt[:-2 - pt[-2]]
            assert out[12:16] == A1 and out[16:20] == A2


def test_rfc3602_case5_transport_packet_encapsulates_byte_exact():
    """RFC 3602 §4 case #5 (SPI 0x4321, seq 1), with an HMAC-SHA-256-128 ICV: the RFC's padded
    ESP payload encrypted under our IV, E_K(0^64 || 1) (the RFC's own IV and ciphertext are
    test_crypto_kat's CBC case)."""
    from firmware.tests.test_crypto_kat import CBC_CASES
    key, _iv, esp_pt, _esp_ct = CBC_CASES[2]
    ikey = det(32, 9)
    hdr = h("4500005408f200004001f9fec0a87b03c0a87b64")
    pkt = hdr + h(esp_pt)[:64]
    iv = pure.Aes(h(key)).encrypt_block(struct.pack(">IIII", 0, 0, 0, 1))
    for be in backends():
        kw = dict(mode=m.MODE_TRANSPORT, src=(hdr[12:16], 0), dst=(hdr[16:20], 0))
        o = esp.new_sa(m.SaSpec(0x4321, m.DIR_OUT, CBC, h(key), m.AUTH_HMAC_SHA2_256_128, ikey, **kw), be)
        st, wire = o.encrypt(pkt)
        assert st == m.P_OK
        body = h("0000432100000001") + iv + pure.AesCbc(h(key)).encrypt(iv, h(esp_pt))
        assert wire == body + pure.hmac_sha256(ikey).digest(body)[:16], be.NAME
        kw = dict(mode=m.MODE_TRANSPORT, src=(hdr[16:20], 0), dst=(hdr[12:16], 0))
        i = esp.new_sa(m.SaSpec(0x4321, m.DIR_IN, CBC, h(key), m.AUTH_HMAC_SHA2_256_128, ikey, **kw), be)
        st, out = i.decrypt(wire)
        assert st == m.P_OK and out[20:] == pkt[20:] and out[9] == 1


def test_cbc_ivs_differ_per_packet():
    for be in backends():
        o, i = d.pair(be, encr=CBC)
        ivs = set()
        for _ in range(3):
            st, wire = o.encrypt(_ping())
            ivs.add(bytes(wire[8:24]))
        assert len(ivs) == 3


def test_cbc_iv_is_the_encrypted_sequence_number_on_every_backend():
    for be in backends():
        o, i = d.pair(be, encr=CBC)
        for seq in (1, 2):
            st, wire = o.encrypt(_ping())
            assert wire[8:24] == pure.Aes(o.spec.encr_key).encrypt_block(struct.pack(">IIII", 0, 0, 0, seq))
            assert i.decrypt(wire) == (m.P_OK, _ping())

def test_replay_duplicates_window_and_reordering():
    be = backends()[0]
    o, i = d.pair(be, replay_window=64)
    wires = [o.encrypt(_ping(8))[1] for _ in range(5)]
    for k in (0, 3, 1):
        assert i.decrypt(wires[k])[0] == m.P_OK
    assert i.decrypt(wires[3])[0] == m.P_REPLAY          # duplicate
    assert i.decrypt(wires[2])[0] == m.P_OK              # late, inside the window
    assert i.decrypt(wires[4])[0] == m.P_OK
    assert i.replay == 1 and i.packets == 5
    # a sender far ahead: packets left of the window are refused
    far = d.pair(be, replay_window=64, initial_seq=99)[0]
    assert i.decrypt(far.encrypt(_ping(8))[1])[0] == m.P_OK   # seq 100
    old = d.pair(be, replay_window=64, initial_seq=35)[0]
    assert i.decrypt(old.encrypt(_ping(8))[1])[0] == m.P_REPLAY  # seq 36 = 100 - 64
    assert i.replay == 2


def test_forged_icv_does_not_advance_the_window():
    for be in backends():
        for encr in (GCM, CBC):
            o, i = d.pair(be, encr=encr, replay_window=64)
            held = [o.encrypt(_ping(8))[1] for _ in range(3)]
            assert i.decrypt(held[0])[0] == m.P_OK
            ahead = d.pair(be, encr=encr, initial_seq=199)[0].encrypt(_ping(8))[1]   # seq 200
            forged = bytearray(ahead)
            forged[-1] ^= 1
            assert i.decrypt(bytes(forged)) == (m.P_AUTH_FAIL, b"")
            assert i.auth_fail == 1 and i.stats().seq == 1 and i.packets == 1
            assert i.decrypt(held[2])[0] == m.P_OK       # the window did not move to 200
            assert i.decrypt(ahead)[0] == m.P_OK         # and 200 itself was not marked seen
            assert i.decrypt(held[1])[0] == m.P_REPLAY   # now it has moved


def test_sequence_overflow_stops_sending_and_hard_expires():
    be = backends()[0]
    for encr in (GCM, CBC):
        o, i = d.pair(be, encr=encr, initial_seq=0xFFFFFFFE)
        st, wire = o.encrypt(_ping())
        assert st == m.P_OK and wire[4:8] == b"\xff\xff\xff\xff"
        ev = o.pop_expiry()
        assert (True, m.EXP_SEQ) in ev                    # hard at the last number
        assert o.encrypt(_ping()) == (m.P_EXPIRED, b"")   # never cycles to 0
        assert o.seq == 0xFFFFFFFF and o.state == m.SaStats.STATE_HARD_EXPIRED
        assert o.pop_expiry() == []                       # reported once


def test_sequence_soft_warning_before_exhaustion():
    be = backends()[0]
    o, i = d.pair(be, initial_seq=0xF0000000 - 2)
    o.encrypt(_ping())
    assert o.pop_expiry() == []
    o.encrypt(_ping())
    assert o.pop_expiry() == [(False, m.EXP_SEQ)]


def test_esn_continues_past_2_32():
    be = backends()[0]
    for encr in (GCM, CBC):
        o, i = d.pair(be, encr=encr, flags=m.SAF_ESN, initial_seq=0xFFFFFFFE)
        i.window.top = 0xFFFFFFF0
        wires = [o.encrypt(_ping(8))[1] for _ in range(3)]    # 2^32 - 1, 2^32, 2^32 + 1
        assert [w[4:8] for w in wires] == [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x00\x01"]
        assert o.pop_expiry() == []             # with ESN 2^32 is no limit: neither soft nor hard
        for w in (wires[1], wires[0], wires[2]):
            assert i.decrypt(w)[0] == m.P_OK, encr
        assert i.stats().seq == (1 << 32) + 1
        assert o.state != m.SaStats.STATE_HARD_EXPIRED


def test_packet_and_byte_lifetimes_both_directions():
    be = backends()[0]
    pkt = _ping(12)
    o, i = d.pair(be, soft_packets=2, hard_packets=3)
    results = []
    for _ in range(4):
        st, wire = o.encrypt(pkt)
        results.append((st, o.pop_expiry()))
        if st == m.P_OK:
            assert i.decrypt(wire)[0] == m.P_OK
    assert results == [(m.P_OK, []), (m.P_OK, [(False, m.EXP_PACKETS)]),
                       (m.P_OK, [(True, m.EXP_PACKETS)]), (m.P_EXPIRED, [])]
    assert i.pop_expiry() == [(False, m.EXP_PACKETS), (True, m.EXP_PACKETS)]
    assert o.packets == 3 and o.stats().state == m.SaStats.STATE_HARD_EXPIRED
    o, i = d.pair(be, soft_bytes=len(pkt) + 1, hard_bytes=3 * len(pkt))
    o.encrypt(pkt)
    assert o.pop_expiry() == []
    o.encrypt(pkt)
    assert o.pop_expiry() == [(False, m.EXP_BYTES)] and o.state == m.SaStats.STATE_SOFT_EXPIRED
    o.encrypt(pkt)
    assert o.pop_expiry() == [(True, m.EXP_BYTES)]
    assert o.encrypt(pkt)[0] == m.P_EXPIRED and o.octets == 3 * len(pkt)


def test_hard_expired_inbound_sa_refuses_and_keeps_counters():
    be = backends()[0]
    o, i = d.pair(be, hard_packets=1)
    w1 = o.encrypt(_ping())[1]
    o2 = d.pair(be, initial_seq=1)[0]
    w2 = o2.encrypt(_ping())[1]
    assert i.decrypt(w1)[0] == m.P_OK
    assert i.decrypt(w2) == (m.P_EXPIRED, b"")
    assert i.packets == 1


def test_inbound_selectors_checked_after_decryption():
    """RFC 4301 §5.2: an authentic packet outside the SA's selectors is dropped."""
    be = backends()[0]
    ts_a1 = [(A1, A1, 17, 53, 53)]           # the peer side: A1, UDP source port 53
    ts_net = [(A2, bytes((10, 0, 0, 255)), 0, 0, 0xFFFF)]
    for mode in (m.MODE_TUNNEL, m.MODE_TRANSPORT):
        o, i = d.pair(be, mode=mode)          # the sender has no selectors: it sends anything
        i2 = esp.new_sa(d.spec(0x1000, m.DIR_IN, mode=mode, ts_remote=ts_a1, ts_local=ts_net,
                               src=(A2, 0), dst=(A1, 0)), be)
        good = ipv4(A1, A2, 17, d.udp(53, 999, b"x"))
        assert i2.decrypt(o.encrypt(good)[1]) [0] == m.P_OK
        for bad in (ipv4(A1, A2, 17, d.udp(54, 999, b"x")), ipv4(A1, A2, 6, d.tcp(53, 999))):
            assert i2.decrypt(o.encrypt(bad)[1]) == (m.P_POLICY, b""), mode
        if mode == m.MODE_TUNNEL:
            assert i2.decrypt(o.encrypt(ipv4(A3, A2, 17, d.udp(53, 9)))[1])[0] == m.P_POLICY
            assert i2.decrypt(o.encrypt(ipv6(payload=d.udp(53, 9)))[1])[0] == m.P_POLICY
        assert i2.policy >= 2


def test_outbound_selectors_refuse_foreign_packets_without_using_a_sequence_number():
    be = backends()[0]
    ts_local = [(A1, A1, 0, 0, 0xFFFF)]
    ts_remote = [(A2, A2, 1, 0x0800, 0x08FF)]   # ICMP echo request only (type 8 << 8 | code)
    o = esp.new_sa(d.spec(0x1000, m.DIR_OUT, ts_local=ts_local, ts_remote=ts_remote), be)
    assert o.encrypt(_ping())[0] == m.P_OK
    assert o.encrypt(ipv4(A1, A2, 17, d.udp(1, 2))) == (m.P_POLICY, b"")
    assert o.encrypt(_ping(src=A3)) == (m.P_POLICY, b"")
    assert o.seq == 1 and o.policy == 2


def test_ipv6_extension_headers_and_fragments_in_selectors():
    frag = ipv6(nh=44, payload=struct.pack(">BBHI", 17, 0, 8, 1) + b"\x00" * 8)   # non-first
    assert esp.flow_of(frag)[2:] == (17, None, None)
    first = ipv6(nh=44, payload=struct.pack(">BBHI", 17, 0, 1, 1) + d.udp(7, 9))
    assert esp.flow_of(first)[2:] == (17, 7, 9)
    assert _ts_ok([(A1, A2, 17, 0, 0xFFFF)], A1, 17, None)
    assert not _ts_ok([(A1, A2, 17, 7, 7)], A1, 17, None)


def _ts_ok(sels, addr, proto, port):
    """esp.ts_ok for a packet from `addr` (its source port `port`) leaving an outbound SA whose
    local selectors are `sels` (the remote side takes anything)."""
    other = bytes(len(addr))
    spec = d.spec(0x1000, m.DIR_OUT, ts_local=sels, src=(other, 4500), dst=(other, 4500))
    return esp.ts_ok(spec.wire_tlvs, False, (addr, other, proto, port, port))


def test_selector_ranges_compare_as_numbers():
    """ts_ok compares big-endian address bytes: the same answers as comparing the numbers,
    across byte boundaries, for IPv4 and IPv6, with protocol and port ranges."""
    def num(b):
        return int.from_bytes(b, "big")

    v4 = [bytes((10, 1, a, b)) for a in (0, 1, 2, 255) for b in (0, 1, 127, 128, 255)]
    v6 = [bytes(14) + bytes((a, b)) for a in (0, 1, 255) for b in (0, 255)] + [b"\xff" * 16]
    for addrs in (v4, v6):
        for lo in addrs[0::3]:          # mpy-ok: a list
            for hi in addrs[1::4]:      # mpy-ok: a list
                sels = [(lo, hi, 17, 1000, 2000), (lo, lo, 0, 0, 0xFFFF)]
                for a in addrs:
                    for proto, port in ((17, 1500), (17, 999), (6, 1500), (17, None), (6, None)):
                        want = ((num(lo) <= num(a) <= num(hi) and proto == 17 and port is not None
                                 and 1000 <= port <= 2000) or a == lo)
                        assert _ts_ok(sels, a, proto, port) == want, (lo, hi, a, proto, port)
    # an address of the other family never matches; no selectors take anything
    assert not _ts_ok([(bytes(16), b"\xff" * 16, 0, 0, 0xFFFF)], v4[0], 17, 1)
    assert _ts_ok([], v4[0], 17, 1)
    # the sides by direction: local selectors hold the source outbound, the destination inbound
    sels = d.spec(0x1000, m.DIR_OUT, ts_local=[(A1, A1, 0, 0, 0xFFFF)], ts_remote=[(A2, A2, 0, 0, 0xFFFF)])
    for inbound, flow, want in ((False, (A1, A2), True), (False, (A2, A1), False),
                                (True, (A2, A1), True), (True, (A1, A2), False)):
        assert esp.ts_ok(sels.wire_tlvs, inbound, flow + (17, 1, 2)) == want, (inbound, flow)


def test_malformed_input_is_refused_and_changes_nothing():
    be = backends()[0]
    for encr in (GCM, CBC):
        o, i = d.pair(be, encr=encr)
        good = o.encrypt(_ping())[1]
        for bad in (b"", good[:8], good[:33], good[:-1]):
            assert i.decrypt(bad)[0] in (m.P_MALFORMED, m.P_AUTH_FAIL)
        assert i.packets == 0 and i.stats().seq == 0
        assert i.decrypt(good)[0] == m.P_OK
        seq = o.seq
        for bad in (b"", b"\x45" * 19, b"\x55" + bytes(30), ipv4(payload=b"abc") + b"x",
                    ipv6(payload=b"ab")[:-1]):
            assert o.encrypt(bad) == (m.P_MALFORMED, b"")
        assert o.seq == seq


def _gcm_raw(rec_out, seq, plaintext):
    """An authentic GCM ESP packet around an arbitrary plaintext (to test the trailer checks)."""
    spi = rec_out.spi_b
    iv = struct.pack(">II", 0, seq)
    aad = spi + struct.pack(">I", seq)
    key = rec_out.spec.encr_key
    aead = rec_out.backend.aes_gcm(bytes(key[:-4]))
    return aad + iv + aead.encrypt(bytes(key[-4:]) + iv, plaintext, aad)


def test_trailer_checks_padding_next_header_dummy_and_tfc():
    be = backends()[0]
    o, i = d.pair(be)
    pkt = _ping(10)
    assert i.decrypt(_gcm_raw(o, 1, pkt + b"\x01\x02\x02\x04")) == (m.P_OK, pkt)
    assert i.decrypt(_gcm_raw(o, 2, pkt + b"\x00\x00\x02\x04"))[0] == m.P_MALFORMED  # not 1, 2
    assert i.decrypt(_gcm_raw(o, 3, pkt + b"\x09\x04"))[0] == m.P_MALFORMED          # pad > data
    assert i.decrypt(_gcm_raw(o, 4, pkt + b"\x00\x06"))[0] == m.P_MALFORMED          # not IP
    assert i.decrypt(_gcm_raw(o, 5, pkt + b"\x00\x29"))[0] == m.P_MALFORMED          # says IPv6
    assert i.decrypt(_gcm_raw(o, 6, det(30) + b"\x00\x3b")) == (esp.P_DUMMY, b"")     # §2.6
    assert i.decrypt(_gcm_raw(o, 7, pkt + bytes(6) + b"\x00\x04")) == (m.P_OK, pkt)  # TFC, §2.7
    assert i.packets == 5       # bad padding is refused before it counts
    assert i.decrypt(_gcm_raw(o, 2, pkt + b"\x01\x02\x02\x04"))[0] == m.P_REPLAY     # seq 2 seen


def test_transport_udp_encap_fixes_l4_checksums():
    """RFC 3948 §3.1.2: TCP checksums are recomputed over the rebuilt header, UDP/IPv4 zeroed."""
    be = backends()[0]
    o, i = d.pair(be, mode=m.MODE_TRANSPORT, flags=m.SAF_UDP_ENCAP)
    seg = d.tcp(1234, 80, b"hello")
    seg = seg[:16] + b"\xde\xad" + seg[18:]           # checksum as computed behind a NAT
    st, out = i.decrypt(o.encrypt(ipv4(A1, A2, 6, seg))[1])
    assert st == m.P_OK
    pseudo = out[12:20] + struct.pack(">BBH", 0, 6, len(out) - 20)
    assert d.cksum(pseudo + out[20:]) == 0 and out[36:38] != b"\xde\xad"
    st, out = i.decrypt(o.encrypt(ipv4(A1, A2, 17, d.udp(1, 2, b"x")[:6] + b"\x12\x34x"))[1])
    assert st == m.P_OK and out[26:28] == b"\x00\x00"
    # without UDP encapsulation nothing is touched
    o, i = d.pair(be, spi=0x1001, mode=m.MODE_TRANSPORT)
    assert i.decrypt(o.encrypt(ipv4(A1, A2, 6, seg))[1])[1][20:] == seg


def test_transport_mode_refuses_fragments_and_ipv6_extension_headers():
    be = backends()[0]
    o, i = d.pair(be, mode=m.MODE_TRANSPORT)
    assert o.encrypt(ipv4(A1, A2, 17, d.udp(1, 2), frag=0x2000))[0] == m.P_UNSUPPORTED   # MF
    assert o.encrypt(ipv4(A1, A2, 17, d.udp(1, 2), frag=5))[0] == m.P_UNSUPPORTED
    o6 = esp.new_sa(d.spec(0x1000, m.DIR_OUT, mode=m.MODE_TRANSPORT, src=(d.A6_1, 0), dst=(d.A6_2, 0)), be)
    assert o6.encrypt(ipv6(nh=0, payload=bytes(8)))[0] == m.P_UNSUPPORTED
    assert o6.encrypt(ipv6(payload=d.udp(1, 2)))[0] == m.P_OK
    assert o6.encrypt(_ping())[0] == m.P_POLICY        # IPv4 packet on an IPv6 SA
    assert o.seq == 0 and o6.seq == 1


def test_unsupported_and_bad_sa_specs():
    be = backends()[0]
    cases = [
        m.SaSpec(0x100, m.DIR_OUT, GCM, det(20), m.AUTH_HMAC_SHA2_256_128, det(32)),   # GCM + integ
        m.SaSpec(0x100, m.DIR_OUT, GCM, det(28)),                                      # GCM-192
        m.SaSpec(0x100, m.DIR_OUT, GCM, det(16)),                                      # no salt
        m.SaSpec(0x100, m.DIR_OUT, CBC, det(16)),                                      # CBC, no integ
        m.SaSpec(0x100, m.DIR_OUT, CBC, det(16), m.AUTH_HMAC_SHA2_256_128, det(20)),   # short key
        m.SaSpec(0x100, m.DIR_OUT, 3, det(24)),                                        # 3DES
        m.SaSpec(0x100, m.DIR_OUT, GCM, det(20), flags=0x80),                          # unknown flag
        m.SaSpec(0x100, m.DIR_OUT, CHACHA, det(32)),                                   # ChaCha, no salt
        m.SaSpec(0x100, m.DIR_OUT, CHACHA, det(20)),                                   # ChaCha, short key
        m.SaSpec(0x100, m.DIR_OUT, CHACHA, det(36), m.AUTH_HMAC_SHA2_256_128, det(32)),  # AEAD + integ
        m.SaSpec(0x100, m.DIR_OUT, CBC, det(16), m.AUTH_HMAC_SHA2_256_128, det(48)),   # key for SHA-384
        m.SaSpec(0x100, m.DIR_IN, GCM, det(20), flags=m.SAF_ESN, replay_window=0),    # ESN, no window
    ]
    for spec in cases:
        try:
            esp.new_sa(spec, be)
            raise AssertionError(spec)
        except sad.UnsupportedSa:
            pass
    for spec in (m.SaSpec(0x100, m.DIR_OUT, GCM, det(20), mode=m.MODE_TRANSPORT),
                 m.SaSpec(0x100, m.DIR_OUT, GCM, det(20), initial_seq=1 << 32)):
        try:
            esp.new_sa(spec, be)
            raise AssertionError(spec)
        except m.MessageError:
            pass


def test_repr_never_shows_keys():
    for be in backends():
        for encr in (GCM, CBC, CHACHA):
            o, i = d.pair(be, encr=encr)
            secrets = [d.hx(k[:8]) for k in (o.spec.encr_key, o.spec.integ_key) if k]
            for obj in (o.spec, o, i, getattr(o, "cbc", None), getattr(o, "mac", None), o.stats()):
                if obj is not None:
                    r = repr(obj)
                    for sec in secrets:
                        assert sec not in r, (be.NAME, type(obj))


def test_fast_path_and_general_path_agree():
    """GcmSa has a short path for tunnel-mode IPv4 without selectors; an SA whose selectors
    admit everything takes the general path and must produce the same bytes and state."""
    be = backends()[0]
    anything = [(bytes(4), b"\xff" * 4, 0, 0, 0xFFFF)]
    for flags in (0, m.SAF_ESN):
        fo, fi = d.pair(be, 0x900, flags=flags)
        so, si = d.pair(be, 0x900, flags=flags, ts_out=(anything, anything))
        assert fo._fast == fi._fast == (flags == 0) and not so._fast and not si._fast
        for n in (20, 21, 22, 23, 100):
            pkt = ipv4(payload=det(n - 20, n)) if n > 20 else ipv4()
            a, b = fo.encrypt(pkt), so.encrypt(pkt)
            assert a == b and a[0] == m.P_OK
            assert fi.decrypt(a[1]) == si.decrypt(b[1]) == (m.P_OK, pkt)
        assert fi.decrypt(a[1]) == si.decrypt(b[1]) == (m.P_REPLAY, b"")
        assert (fo.seq, fo.packets, fo.octets) == (so.seq, so.packets, so.octets)
        assert (fi.packets, fi.octets, fi.window.top, fi.window.bits) == \
            (si.packets, si.octets, si.window.top, si.window.bits)


def _state(sa):
    st = (sa.packets, sa.octets, sa.auth_fail, sa.replay, sa.policy, sa.state)
    if sa.window is not None:
        st += (sa.window.top, sa.window.bits)
    return st


def test_fast_decrypt_equals_general_path_on_crafted_trailers():
    """The inbound fast path accepts a packet only when the inner IPv4 length and the trailer
    our encrypt() writes after it compare equal; everything else must fall through to the
    general path and give what the general path gives (status, packet and counters)."""
    be = backends()[0]
    anything = [(bytes(4), b"\xff" * 4, 0, 0, 0xFFFF)]
    fo, fi = d.pair(be, 0x901)
    _, si = d.pair(be, 0x901, ts_out=(anything, anything))
    assert fi._fast and not si._fast

    def tr(padlen, nh, pad=None):
        return (d.det(padlen, 5) if pad == "bad" else bytes(range(1, padlen + 1))) + bytes((padlen, nh))

    p24, p25, p40 = ipv4(payload=det(4, 2)), ipv4(payload=det(5, 2)), ipv4(payload=det(20, 2))
    cases = [p24 + tr(2, 4), p25 + tr(1, 4), p40 + tr(2, 4),      # default padding: fast
             p24 + tr(6, 4), p24 + tr(10, 4), p25 + tr(253, 4),    # longer (legal) padding
             p24 + tr(2, 4, "bad"), p24 + tr(6, 4, "bad"),         # broken padding
             p24 + tr(2, 41), p24 + tr(2, 59), p24 + tr(2, 17),    # other next headers
             p24 + b"\x00" * 4 + tr(2, 4),                         # TFC padding
             p24 + b"\x00" * 4 + tr(2, 59),                        # dummy with padding
             p40[:-4] + tr(2, 4), p40[:-4] + tr(6, 4),             # inner length beyond the payload
             p24[:3] + b"\x13" + p24[4:] + tr(2, 4),               # inner length 19
             p24[:3] + b"\x13" + p24[4:19] + tr(3, 4),             # ... with its trailer after it
             b"\x65" + p24[1:] + tr(2, 4),                         # version 6 under next header 4
             ipv6(payload=det(2, 3)) + tr(0, 41) + bytes(8)]       # IPv6 with TFC padding
    general = []
    deliver = esp.EspSa._deliver
    fast_path = type(fi) is esp.GcmSa    # the boards' in-place SAs have one path for all

    def spy(self, pt):
        if self is fi:
            general.append(pt)
        return deliver(self, pt)

    seq = 0
    esp.EspSa._deliver = spy
    try:
        for k, pt in enumerate(cases):
            seq += 1 + (k % 3)                                      # gaps move the window by more
            pkt = _gcm_raw(fo, seq, pt)
            assert len(pkt) > 53, k                                 # long enough for the fast path
            del general[:]
            got, want = fi.decrypt(pkt), si.decrypt(pkt)
            assert got == want, (k, got, want)
            assert len(general) == (0 if k < 3 or not fast_path else 1), k   # only the first three are fast
            assert _state(fi) == _state(si), (k, _state(fi), _state(si))
            assert fi.decrypt(pkt) == si.decrypt(pkt) == (m.P_REPLAY, b""), k
    finally:
        esp.EspSa._deliver = deliver
    # a forged packet right of the window, then the authentic one
    pkt = _gcm_raw(fo, seq + 70, cases[0])
    forged = pkt[:-1] + bytes((pkt[-1] ^ 1,))
    assert fi.decrypt(forged) == si.decrypt(forged) == (m.P_AUTH_FAIL, b"")
    assert fi.decrypt(pkt) == si.decrypt(pkt) == (m.P_OK, p24)
    assert _state(fi) == _state(si)


def test_batches_equal_packet_by_packet_calls():
    """encrypt_batch/decrypt_batch (the board's path) give what encrypt()/decrypt() give packet
    by packet, in results, counters, window and lifetime events: fast and general packets
    mixed, limits and sequence exhaustion reached in the middle of a batch, replays, forgeries."""
    be = backends()[0]
    ps = [ipv4(payload=det(k, k)) for k in range(9)]                # 20..28 bytes: every padding
    mixed = (ps[:3] + [b"", b"\x45" * 19, ipv6(payload=d.udp(1, 2, det(5))), ps[0][:-1] + b"\x00"]
             + ps[3:])
    configs = [{}, {"flags": m.SAF_ESN}, {"flags": m.SAF_UDP_ENCAP}, {"mode": m.MODE_TRANSPORT},
               {"soft_packets": 3, "hard_packets": 7}, {"soft_bytes": 60, "hard_bytes": 200},
               {"initial_seq": 0xFFFFFFFF - 4}, {"replay_window": 0}]
    for encr in (GCM, CBC):
        for kw in configs:
            (o1, i1), (o2, i2) = d.pair(be, 0x902, encr, **kw), d.pair(be, 0x902, encr, **kw)
            want = [o1.encrypt(x) for x in mixed]
            got = o2.encrypt_batch(mixed)
            assert got == want, (encr, kw, got, want)
            assert _state(o1) == _state(o2) and o1.pop_expiry() == o2.pop_expiry(), (encr, kw)
            esps = [e for st, e in want if st == m.P_OK]
            assert len(esps) > 3, (encr, kw)
            last = esps[-1]
            inbound = (esps[:2] + [esps[0], last[:-1] + bytes((last[-1] ^ 1,))] + esps[3:]
                       + [esps[2], esps[1][:30], b"", esps[1][:8]])
            if encr == GCM and o1.seq < 0xFFFF0000:
                p24 = ps[4]
                inbound += [_gcm_raw(o1, o1.seq + 5, p24 + b"\x01\x02\x03\x04\x05\x06\x06\x04"),
                            _gcm_raw(o1, o1.seq + 6, p24 + bytes(8) + b"\x01\x02\x02\x04")]
            want = [i1.decrypt(x) for x in inbound]
            got = i2.decrypt_batch(inbound)
            assert got == want, (encr, kw, got, want)
            assert _state(i1) == _state(i2) and i1.pop_expiry() == i2.pop_expiry(), (encr, kw)
            assert o2.encrypt_batch([]) == i2.decrypt_batch([]) == []
    # limits reached on the fast path in the middle of a run of fast packets: the rest refused
    lim = {"soft_packets": 2, "hard_packets": 4, "soft_bytes": 50}
    o1, o2 = [esp.new_sa(d.spec(0x903, m.DIR_OUT, src=(A1, 4500), dst=(A2, 4500), **lim), be)
              for _ in range(2)]
    want = [o1.encrypt(x) for x in ps[:6]]
    assert o2.encrypt_batch(ps[:6]) == want and want[-1] == (m.P_EXPIRED, b"")
    assert o1.pop_expiry() == o2.pop_expiry() != []
    o = d.pair(be, 0x903)[0]
    esps = [o.encrypt(x)[1] for x in ps[:6]]
    i1, i2 = [esp.new_sa(d.spec(0x903, m.DIR_IN, src=(A2, 4500), dst=(A1, 4500), **lim), be)
              for _ in range(2)]
    want = [i1.decrypt(x) for x in esps]
    assert i2.decrypt_batch(esps) == want and want[-1] == (m.P_EXPIRED, b"")
    assert _state(i1) == _state(i2) and i1.pop_expiry() == i2.pop_expiry() != []
