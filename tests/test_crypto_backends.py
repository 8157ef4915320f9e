"""The three crypto backends agree byte for byte (property tests), and the cryptolib backend
(run here on a cryptolib stand-in) keeps the real module's rules."""
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import crypto
from firmware.crypto import cryptography_backend as ossl
from firmware.crypto import hmac256
from firmware.crypto import pure
from tests.fake_cryptolib import load_backend

clib = load_backend()
BACKENDS = (ossl, pure, clib)
keys = st.sampled_from((16, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@settings(max_examples=60, deadline=None)
@given(key=keys, nonce=st.binary(min_size=12, max_size=12), data=st.binary(max_size=200),
       aad=st.binary(max_size=12))
def test_gcm_agrees(key, nonce, data, aad):
    outs = [be.aes_gcm(key).encrypt(nonce, data, aad) for be in BACKENDS]
    assert outs[0] == outs[1] == outs[2]
    for be in BACKENDS:
        assert be.aes_gcm(key).decrypt(nonce, outs[0], aad) == data


@settings(max_examples=60, deadline=None)
@given(key=keys, iv=st.binary(min_size=16, max_size=16), blocks=st.integers(0, 8),
       seed=st.binary(max_size=128))
def test_cbc_agrees(key, iv, blocks, seed):
    data = (seed * 200)[:16 * blocks] if seed else bytes(16 * blocks)
    outs = [be.aes_cbc(key).encrypt(iv, data) for be in BACKENDS]
    assert outs[0] == outs[1] == outs[2]
    c = BACKENDS[0].aes_cbc(key)
    for be in BACKENDS:
        assert be.aes_cbc(key).decrypt(iv, outs[0]) == data
        c2 = be.aes_cbc(key)   # one object encrypts and decrypts (cryptolib objects cannot)
        assert c2.decrypt(iv, c2.encrypt(iv, data)) == data
    assert c.decrypt(iv, outs[0]) == data


@settings(max_examples=60, deadline=None)
@given(key=st.binary(max_size=100), data=st.binary(max_size=300), tail=st.binary(max_size=4))
def test_hmac_agrees(key, data, tail):
    outs = [be.hmac_sha256(key).digest(data, tail) for be in BACKENDS]
    assert outs[0] == outs[1] == outs[2]
    # MicroPython's variant (no sha256.copy(): pads made per message from the key) runs here too
    assert hmac256.HmacPads(key).digest(data, tail) == outs[0]
    assert hmac.new(key, data + tail, hashlib.sha256).digest() == outs[0]


@settings(max_examples=80, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       data=st.binary(max_size=300), aad=st.binary(max_size=20), off=st.integers(0, 5))
def test_chacha20_poly1305_agrees(key, nonce, data, aad, off):
    """The small-int ChaCha20-Poly1305 (pure, cryptolib) gives OpenSSL's bytes, also in place at
    any offset; a wrong tag writes nothing."""
    want = ossl.chacha20_poly1305(key).encrypt(nonce, data, aad)
    for be in (pure, clib):
        c = be.chacha20_poly1305(key)
        assert c.encrypt(nonce, data, aad) == want
        assert c.decrypt(nonce, want, aad) == data
        buf = bytearray(off) + data + bytes(16)
        c.seal_into(nonce, aad, buf, off, off + len(data))
        assert buf[off:] == want
        buf[-1] ^= 1
        out = bytearray(len(data))
        with pytest.raises(be.AuthError):
            c.open_into(nonce, aad, buf, off, off + len(data), out, 0)
        assert out == bytes(len(data))


@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80, 0x7F])
def test_poly1305_limbs_carry_at_the_extremes(fill):
    """Poly1305 in radix 2^10 against OpenSSL's, with r and s and the message at their largest
    (clamped r all ones, every block all ones) and smallest: the carries and the final
    reduction (h >= p) are right."""
    from cryptography.hazmat.primitives.poly1305 import Poly1305
    from firmware.crypto import chachapoly as cp
    for key in (bytes((fill,)) * 32, bytes(16) + bytes((fill,)) * 16, bytes((fill,)) * 16 + bytes(16)):
        for n in (16, 32, 160, 1408):
            msg = bytes((fill,)) * n
            h, rs, sk = cp.poly_state()
            cp._poly_init(key, h, rs, sk)
            cp._poly_update(h, rs, msg, 0, n)
            out = bytearray(16)
            cp._poly_tag(h, rs, sk, out, 0)
            assert bytes(out) == Poly1305.generate_tag(key, msg), (fill, n)


@settings(max_examples=40, deadline=None)
@given(key=st.binary(max_size=200), data=st.binary(max_size=300), tail=st.binary(max_size=4),
       name=st.sampled_from(("sha384", "sha512")))
def test_hmac_sha384_512_agree(key, data, tail, name):
    want = hmac.new(key, data + tail, getattr(hashlib, name)).digest()
    for be in BACKENDS:
        assert be.hmac(name, key).digest(data, tail) == want
    # MicroPython's way (no copy()), with the 128-byte block
    assert hmac256.HmacPads(key, getattr(hashlib, name), 128).digest(data, tail) == want
    out = bytearray(40)
    hmac256.HmacPads(key, getattr(hashlib, name), 128).digest_into(b"xy" + data, 2, 2 + len(data), tail, out, 1, 24)
    assert out[1:25] == want[:24] and out[0] == 0


def test_tampered_gcm_raises_each_backends_auth_error():
    for be in BACKENDS:
        g = be.aes_gcm(bytes(16))
        ct = bytearray(g.encrypt(bytes(12), b"payload", b"aad"))
        ct[0] ^= 1
        with pytest.raises(be.AuthError):
            g.decrypt(bytes(12), bytes(ct), b"aad")


def test_speed_classes_follow_what_runs_in_c():
    from firmware.link import messages as m
    assert clib.speed(m.ENCR_AES_CBC) == m.SPEED_FAST and clib.speed(m.ENCR_AES_GCM_16) == m.SPEED_SLOW
    assert clib.speed(m.ENCR_CHACHA20_POLY1305) == m.SPEED_SLOW      # cryptolib has no ChaCha20: Python
    assert pure.speed(m.ENCR_AES_CBC) == m.SPEED_SLOW
    assert ossl.speed(m.ENCR_AES_GCM_16) == ossl.speed(m.ENCR_CHACHA20_POLY1305) == m.SPEED_FAST


def test_selection_order_and_explicit_choice():
    assert crypto.load().NAME == "cryptography"
    assert crypto.load("pure").NAME == "pure"
    assert crypto.available() == ["cryptography", "pure"]     # no cryptolib on CPython
    with pytest.raises(ImportError):
        crypto.load("cryptolib")
    with pytest.raises(ValueError):
        crypto.load("nonesuch")


@settings(max_examples=30, deadline=None)
@given(key=keys, packets=st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 6),
                                            st.integers(0, 255)), min_size=1, max_size=6))
def test_cbc_objects_are_stateless_across_packets(key, packets):
    """The cryptography backend runs CBC on long-lived contexts: packet after packet, each with
    its own IV, must come out as from a fresh context (pure's reference)."""
    enc, dec = ossl.aes_cbc(key), ossl.aes_cbc(key)
    for iv, blocks, fill in packets:
        data = bytes([fill]) * (16 * blocks)
        ct = enc.encrypt(iv, data)
        assert ct == pure.aes_cbc(key).encrypt(iv, data)
        assert dec.decrypt(iv, ct) == data


def test_cryptolib_backend_known_answers():
    """The firmware's known-answer vectors, run on the cryptolib backend (a real board runs
    the same file under MicroPython with the real cryptolib)."""
    from firmware.tests.espdata import h
    from firmware.tests.test_crypto_kat import CBC_CASES, GCM_CASES, HMAC_CASES
    for key, nonce, aad, pt, ct in GCM_CASES:
        assert clib.aes_gcm(h(key)).encrypt(h(nonce), h(pt), h(aad)) == h(ct)
        assert clib.aes_gcm(h(key)).decrypt(h(nonce), h(ct), h(aad)) == h(pt)
    for key, iv, pt, ct in CBC_CASES:
        assert clib.aes_cbc(h(key)).encrypt(h(iv), h(pt)) == h(ct)
        assert clib.aes_cbc(h(key)).decrypt(h(iv), h(ct)) == h(pt)
    for key, data, mac in HMAC_CASES:
        assert clib.hmac_sha256(h(key)).digest(h(data))[:16] == h(mac)


@settings(max_examples=30, deadline=None)
@given(key=keys, packets=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.binary(max_size=8)),
                                  min_size=1, max_size=6))
def test_in_place_cbc_agrees_packet_after_packet(key, packets):
    """encrypt_into/decrypt_into (CBC under a zero IV, in place) on one object per direction, as
    an SA uses them: every backend gives CBC's answer for every packet, whatever the object
    carried over from the packet before (cryptolib's chaining block, OpenSSL's context)."""
    encs = [be.aes_cbc(key) for be in BACKENDS]
    decs = [be.aes_cbc(key) for be in BACKENDS]
    for lead, blocks, seed in packets:
        plain = bytes(lead) + (seed * 200 + bytes(200))[:16 * blocks - lead]   # IV seed block + data
        want = pure.aes_cbc(key).encrypt(bytes(16), plain)
        for enc, dec in zip(encs, decs):
            buf = bytearray(b"\xAA" * 8 + plain + b"\xBB" * 8)
            enc.encrypt_into(buf, 8, 8 + len(plain))
            assert buf[8:-8] == want and buf[:8] == b"\xAA" * 8 and buf[-8:] == b"\xBB" * 8
            dec.decrypt_into(buf, 8, 8 + len(plain))
            assert buf[24:-8] == plain[16:]


@settings(max_examples=40, deadline=None)
@given(key=keys, nonce=st.binary(min_size=12, max_size=12), data=st.binary(max_size=120),
       aad=st.binary(max_size=12), off=st.integers(0, 5))
def test_in_place_gcm_agrees(key, nonce, data, aad, off):
    """seal_into/open_into (the boards' backends) give AESGCM's bytes, at any offset, and a
    wrong tag writes nothing."""
    want = ossl.aes_gcm(key).encrypt(nonce, data, aad)
    for be in (pure, clib):
        g = be.aes_gcm(key)
        buf = bytearray(off) + data + bytes(16)
        g.seal_into(nonce, aad, buf, off, off + len(data))
        assert buf[off:] == want
        out = bytearray(b"\x55" * (len(data) + 3))
        g.open_into(nonce, aad, buf, off, off + len(data), out, 3)
        assert out[3:] == data
        buf[-1] ^= 1
        out2 = bytearray(len(data))
        with pytest.raises(be.AuthError):
            g.open_into(nonce, aad, buf, off, off + len(data), out2, 0)
        assert out2 == bytes(len(data))


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=300), tail=st.binary(max_size=4),
       off=st.integers(0, 9))
def test_hmac_digest_into_agrees(key, data, tail, off):
    want = hmac.new(key, data + tail, hashlib.sha256).digest()[:16]
    for mac in [be.hmac_sha256(key) for be in BACKENDS] + [hmac256.HmacPads(key)]:
        buf = bytes(off) + data
        out = bytearray(20)
        mac.digest_into(buf, off, len(buf), tail, out, 2, 16)
        assert out[2:18] == want and out[:2] == b"\0\0" and out[18:] == b"\0\0"


def test_esp_packets_are_the_same_on_every_backend():
    """With IVs derived from the key and the sequence number, every backend (CPython fast
    paths, the in-place path of the boards) puts the same bytes on the wire, and each decrypts
    what the others made, in every SA shape."""
    from firmware import esp
    from firmware.link import messages as m
    from firmware.tests import espdata as d
    pkts = [d.ipv4(payload=d.udp(1, 2, d.det(n, n))) for n in (0, 1, 30, 61, 1300)]
    for encr, key, integ, ikey in ((m.ENCR_AES_GCM_16, d.det(20, 1), m.AUTH_NONE, b""),
                                   (m.ENCR_AES_GCM_16, d.det(36, 2), m.AUTH_NONE, b""),
                                   (m.ENCR_CHACHA20_POLY1305, d.det(36, 7), m.AUTH_NONE, b""),
                                   (m.ENCR_AES_CBC, d.det(16, 3), m.AUTH_HMAC_SHA2_256_128, d.det(32, 4)),
                                   (m.ENCR_AES_CBC, d.det(32, 5), m.AUTH_HMAC_SHA2_256_128, d.det(32, 6)),
                                   (m.ENCR_AES_CBC, d.det(16, 8), m.AUTH_HMAC_SHA2_384_192, d.det(48, 9)),
                                   (m.ENCR_AES_CBC, d.det(32, 10), m.AUTH_HMAC_SHA2_512_256, d.det(64, 11))):
        for kw in ({}, {"flags": m.SAF_ESN, "initial_seq": 0xFFFFFFFE}, {"flags": m.SAF_UDP_ENCAP},
                   {"mode": m.MODE_TRANSPORT, "src": (d.A1, 0), "dst": (d.A2, 0)}):
            def sa(direction, be, kw=kw, encr=encr, key=key, integ=integ, ikey=ikey):
                k = dict(kw)
                if direction == m.DIR_IN and "src" in k:
                    k["src"], k["dst"] = k["dst"], k["src"]
                return esp.new_sa(m.SaSpec(0x777, direction, encr, key, integ, ikey, **k), be)
            outs = [sa(m.DIR_OUT, be) for be in BACKENDS]
            wires = [[o.encrypt(p) for p in pkts] for o in outs]
            assert wires[0] == wires[1] == wires[2], (encr, kw)
            for be in BACKENDS:
                i = sa(m.DIR_IN, be)
                got = [i.decrypt(w) for st_, w in wires[0]]
                if kw.get("mode") == m.MODE_TRANSPORT:
                    assert [(s, bytes(p[20:])) for s, p in got] == [(0, p[20:]) for p in pkts], (be.NAME, kw)
                else:
                    assert got == [(0, p) for p in pkts], (be.NAME, encr, kw)


def test_deleted_sa_keys_are_zeroed():
    """SA_DEL and the flushes zero the SA's keys and what the backend keeps of them that
    Python can reach (round keys, H, GHASH tables)."""
    from firmware import esp
    from firmware.crypto import gcm
    from firmware.link import messages as m
    from firmware.sad import Sad
    for be in BACKENDS:
        sad = Sad(8, lambda spec, be=be: esp.new_sa(spec, be))
        g = m.SaSpec(0x100, m.DIR_OUT, m.ENCR_AES_GCM_16, bytes(range(1, 21)))
        c = m.SaSpec(0x101, m.DIR_IN, m.ENCR_AES_CBC, bytes(range(1, 17)), m.AUTH_HMAC_SHA2_256_128,
                     bytes(range(1, 33)))
        assert sad.add(g) == m.OK and sad.add(c) == m.OK
        gr, cr = sad.get(0x100, m.DIR_OUT), sad.get(0x101, m.DIR_IN)
        st_, w = gr.encrypt(bytes((0x45, 0, 0, 20)) + bytes(16))
        assert st_ == 0
        derived, held = [], []
        if be is not ossl:
            derived = [gr._aead._h, gr.salt]
            if be is pure:
                derived.append(gr._aead._rk)
            held = [sl for sl in gcm._slots if sl[3] and sl[0] == gr._aead._h]
            assert len(held) == 1
        assert sad.delete(0x100, m.DIR_OUT) == m.OK
        assert g.encr_key == bytes(20)
        for x in derived:
            assert not any(x), (be.NAME, x)
        for sl in held:                              # the GHASH tables made from its H
            assert sl[3] == 0 and not any(sl[0]) and not any(sl[1])
        cr.cbc.decrypt_into(bytearray(32), 0, 32)      # the decryption schedule exists
        dk = cr.cbc._dk if be is pure else None
        assert sad.flush() == 1
        assert c.encr_key == bytes(16) and c.integ_key == bytes(32)
        if be is pure:
            assert len(dk) == 88 and not any(dk)
