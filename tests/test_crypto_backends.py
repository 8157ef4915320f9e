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
    assert pure.speed(m.ENCR_AES_CBC) == m.SPEED_SLOW
    assert ossl.speed(m.ENCR_AES_GCM_16) == m.SPEED_FAST


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
