"""Authentication (host/ike/auth.py): identities as configured and as peers send them (RFC 7296
§3.5), which certificate vouches for which identity, and AUTH payloads that must not verify — a
signature over other octets, under an algorithm we do not know or that does not fit the key, in a
method we do not take, or malformed (RFC 7427, RFC 4754, §3.8). Then through two engines'
IKE_AUTH: each such AUTH is answered AUTHENTICATION_FAILED and no IKE SA comes up (§2.21.2)."""
import dataclasses
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from host.ike import auth
from host.ike.auth import AuthError, Identity, cert_matches_identity, parse_dn, sign, verify
from host.ike.constants import AuthMethod, HashAlgorithm, IdType
from host.ike.events import ChildSaInstall, IkeSaDown, IkeSaUp
from tests.test_cert_chains import NOW, DAY, HOUR, _cert_pair
from tests.test_engine import A, B, kinds

OCTETS = b"the octets RFC 7296 section 2.15 signs" * 4
RFC7427 = {HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys():
    return {c.name: ec.generate_private_key(c) for c in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1())}


def _refused(pub, method, data, match, octets=OCTETS):
    with pytest.raises(AuthError, match=match):
        verify(pub, method, data, octets)


# ---------------------------------------------------------------- identities (§3.5)

@pytest.mark.parametrize("text,id_type,data", [
    ("fqdn:10.0.0.1", IdType.FQDN, b"10.0.0.1"),          # a prefix forces the type
    ("email:gw", IdType.RFC822_ADDR, b"gw"),
    ("ip:2001:db8::1", IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
    ("192.0.2.7", IdType.IPV4_ADDR, bytes([192, 0, 2, 7])),
    ("vpn@example.org", IdType.RFC822_ADDR, b"vpn@example.org"),
    ("gw.example", IdType.FQDN, b"gw.example"),
])
def test_identity_parse_picks_the_type_strongswan_would(text, id_type, data):
    ident = Identity.parse(text)
    assert (ident.id_type, ident.data, ident.any) == (id_type, data, False)


def test_identity_any_matches_every_peer_and_prints_as_any():
    for text in ("%any", "*", ""):
        any_ = Identity.parse(text)
        assert any_.any and str(any_) == "%any"
        assert any_.matches(Identity.parse("gw.example")) and any_.matches(Identity(IdType.KEY_ID, b"\x01"))


def test_identity_matching_ignores_case_of_names_but_not_of_types():
    assert Identity.parse("GW.Example").matches(Identity.parse("gw.example"))
    assert Identity.parse("email:Ops@Example.org").matches(Identity.parse("ops@example.org"))
    assert not Identity.parse("fqdn:ops@example.org").matches(Identity.parse("email:ops@example.org"))
    assert not Identity.parse("192.0.2.7").matches(Identity.parse("192.0.2.8"))
    assert Identity.parse("ip:192.0.2.7").matches(Identity(IdType.IPV4_ADDR, bytes([192, 0, 2, 7])))


def test_a_dn_identity_matches_the_same_name_however_written():
    cfg = Identity.parse("C=CH, O=Example\\, Inc, CN=gw")
    assert cfg.id_type == IdType.DER_ASN1_DN
    assert cfg.matches(Identity.parse("dn:C=CH/O=Example\\, Inc/CN=gw"))
    assert not cfg.matches(Identity.parse("C=CH, O=Example\\, Inc, CN=other"))
    assert str(cfg) == "C=CH, O=Example, Inc, CN=gw"
    assert cfg.body() == bytes((IdType.DER_ASN1_DN, 0, 0, 0)) + cfg.data        # what §2.15 MACs


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x05\x31\x03\x30\x01\x06", b"\x31\x00",
                                     b"\x30\x84\x00\x00\x00\x01\x00", b"\x30\x03\x30\x01\x00",
                                     b"\x30\x05\x31\x03\x31\x01\x00", b"\x30\x07\x31\x05\x30\x03\x04\x01\x00",
                                     b"\x30\x0b\x31\x09\x30\x07\x06\x00\x0c\x03abc",
                                     b"\x30\x0c\x31\x0a\x30\x08\x06\x03\x55\x04\x03\x02\x01\x01"])
def test_a_malformed_dn_from_the_peer_matches_nothing_and_still_prints(garbage):
    """A peer's ID payload of type DER_ASN1_DN whose data is not a DER Name: no match against a
    configured DN (so AUTHENTICATION_FAILED, not a crash), and a printable name for the logs."""
    peer = Identity(IdType.DER_ASN1_DN, garbage)
    assert not Identity.parse("CN=gw").matches(peer)
    assert str(peer) == "dn:" + garbage.hex()


def test_a_malformed_dn_matches_only_its_own_bytes():
    peer = Identity(IdType.DER_ASN1_DN, b"\x30\x03\x30\x01\x00")
    assert Identity(IdType.DER_ASN1_DN, b"\x30\x03\x30\x01\x00").matches(peer)


def test_other_identities_print_without_failing():
    assert str(Identity(IdType.IPV4_ADDR, b"\x01\x02")) == "0102"               # a short address
    assert str(Identity(IdType.KEY_ID, b"\xab\xcd")) == f"{IdType.KEY_ID}:abcd"


@pytest.mark.parametrize("text", ["CN", "XX=gw", "CN=", " , "])
def test_a_configured_dn_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a distinguished name"):
        parse_dn(text)


# ---------------------------------------------------------------- which certificate vouches for whom

def _cert(cn, san):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(NOW - HOUR).not_valid_after(NOW + DAY))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(key, hashes.SHA256())


def test_a_certificate_vouches_for_its_subject_and_subject_alt_names_only():
    cert = _cert("gw", [x509.DNSName("GW.example"), x509.RFC822Name("ops@example.org"),
                        x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
    for yes in ("gw.example", "ops@example.org", "192.0.2.7", "CN=gw"):
        assert cert_matches_identity(cert, Identity.parse(yes)), yes
    for no in ("other.example", "root@example.org", "192.0.2.8", "CN=other", "fqdn:gw"):
        assert not cert_matches_identity(cert, Identity.parse(no)), no
    assert not cert_matches_identity(cert, Identity(IdType.KEY_ID, b"gw"))
    assert Identity.from_cert(cert).matches(Identity.parse("CN=gw"))
    bare = _cert("gw.example", None)
    assert not cert_matches_identity(bare, Identity.parse("gw.example"))       # a CN is no FQDN


# ---------------------------------------------------------------- AUTH payloads (RFC 7427, RFC 4754, §3.8)

def test_what_we_sign_verifies_and_other_octets_do_not(rsa_key, ec_keys):
    for key in (rsa_key, *ec_keys.values()):
        for hashes_ in (RFC7427, None):
            method, data = sign(key, OCTETS, hashes_)
            verify(key.public_key(), method, data, OCTETS)
            _refused(key.public_key(), method, data, "does not verify|bad signature", OCTETS + b"!")


def test_without_rfc7427_ecdsa_uses_the_method_of_its_curve_and_rsa_method_1(rsa_key, ec_keys):
    """§3.8 / RFC 4754: a peer that sent no SIGNATURE_HASH_ALGORITHMS gets ECDSA with the
    curve's method (r | s, fixed length) or RSA PKCS#1 v1.5 over SHA-1."""
    want = {"secp256r1": (AuthMethod.ECDSA_256, 64), "secp384r1": (AuthMethod.ECDSA_384, 96),
            "secp521r1": (AuthMethod.ECDSA_521, 132)}
    for curve, key in ec_keys.items():
        method, data = sign(key, OCTETS, None)
        assert (method, len(data)) == want[curve]
    method, data = sign(rsa_key, OCTETS, set())
    assert method == AuthMethod.RSA_SIG
    rsa_key.public_key().verify(data, OCTETS, padding.PKCS1v15(), hashes.SHA1())


def test_a_key_larger_than_the_peers_hashes_signs_with_one_it_accepts(ec_keys):
    method, data = sign(ec_keys["secp384r1"], OCTETS, {HashAlgorithm.SHA2_256})
    assert method == AuthMethod.DIGITAL_SIGNATURE
    assert data[1:1 + data[0]] == auth.SIG_SCHEMES["ecdsa-sha256"][0]
    verify(ec_keys["secp384r1"].public_key(), method, data, OCTETS)


def test_no_common_hash_or_an_unusable_key_is_an_auth_error(rsa_key, ec_keys):
    sha1_only = {HashAlgorithm.SHA1}
    for key in (rsa_key, ec_keys["secp256r1"]):
        with pytest.raises(AuthError, match="no common signature hash"):
            sign(key, OCTETS, sha1_only)
    with pytest.raises(AuthError, match="unsupported curve"):
        sign(ec.generate_private_key(ec.SECP256K1()), OCTETS, None)
    with pytest.raises(AuthError, match="unsupported private key type"):
        sign(ed25519.Ed25519PrivateKey.generate(), OCTETS, RFC7427)


def test_rfc7427_auth_that_does_not_fit_is_refused(rsa_key, ec_keys):
    ec_key = ec_keys["secp256r1"]
    _m, ec_sig = sign(ec_key, OCTETS, RFC7427)
    _m, rsa_sig = sign(rsa_key, OCTETS, RFC7427)
    sig = AuthMethod.DIGITAL_SIGNATURE
    _refused(ec_key.public_key(), sig, b"", "empty signature")
    _refused(ec_key.public_key(), sig, b"\x40" + ec_sig[1:], "unsupported signature algorithm")  # length past the id
    sha1_rsa = auth._alg_id("1.2.840.113549.1.1.5", True)                        # sha1WithRSAEncryption
    _refused(rsa_key.public_key(), sig, bytes((len(sha1_rsa),)) + sha1_rsa + rsa_sig[1 + rsa_sig[0]:],
             "unsupported signature algorithm")
    _refused(rsa_key.public_key(), sig, ec_sig, "does not fit the key")              # ECDSA id, RSA key
    _refused(ec_key.public_key(), sig, rsa_sig, "does not fit the key")              # RSA id, EC key
    flipped = bytearray(rsa_sig)
    flipped[-1] ^= 1
    _refused(rsa_key.public_key(), sig, bytes(flipped), "does not verify")
    n = 1 + ec_sig[0]
    _refused(ec_key.public_key(), sig, ec_sig[:n] + b"\x30\x02\x02\x00", "does not verify|bad signature")


def test_rfc4754_auth_that_does_not_fit_is_refused(ec_keys, rsa_key):
    p256, p384 = ec_keys["secp256r1"], ec_keys["secp384r1"]
    method, data = sign(p256, OCTETS, None)
    _refused(p256.public_key(), method, data[:-1], "does not fit the key")            # r | s too short
    _refused(p384.public_key(), method, data, "does not fit the key")                 # another curve's method
    _refused(rsa_key.public_key(), method, data, "does not fit the key")
    _refused(p256.public_key(), method, data[32:] + data[:32], "does not verify")     # s | r
    _refused(p256.public_key(), method, bytes(64), "does not verify|bad signature")   # r = s = 0


def test_method_1_with_an_ec_key_and_methods_we_do_not_take_are_refused(rsa_key, ec_keys):
    method, data = sign(rsa_key, OCTETS, None)
    _refused(ec_keys["secp256r1"].public_key(), method, data, "non-RSA key")
    for other in (AuthMethod.PSK, 3, 13, 201):                                        # PSK, DSS, NULL, private
        _refused(rsa_key.public_key(), other, data, "unsupported auth method")


def test_the_peers_hash_list_is_read_two_bytes_at_a_time():
    assert auth.parse_hash_algorithms(b"\x00\x02\x00\x03\x00") == {2, 3}            # odd trailing byte ignored
    assert auth.parse_hash_algorithms(auth.hash_algorithms_notify_data()) == set(auth.OUR_HASHES)


def test_psk_auth_is_the_prf_of_the_padded_secret_and_the_octets():
    from host.ike.crypto import prf_alg
    prf = prf_alg(5)                                                                   # PRF_HMAC_SHA2_256
    assert auth.psk_auth(prf, b"secret", OCTETS) == prf(prf(b"secret", b"Key Pad for IKEv2"), OCTETS)
    assert auth.psk_auth(prf, b"secret", OCTETS) != auth.psk_auth(prf, b"secreT", OCTETS)


# ---------------------------------------------------------------- through IKE_AUTH (§2.21.2)

def _auth_fails_at_both_ends(a, b, net, why):
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[A], IkeSaUp) and not kinds(net.events[B], IkeSaUp)
    assert not kinds(net.events[A], ChildSaInstall) and not kinds(net.events[B], ChildSaInstall)
    (da,), (db,) = kinds(net.events[A], IkeSaDown), kinds(net.events[B], IkeSaDown)
    assert "AUTHENTICATION_FAILED" in da.reason, da
    assert why in db.reason, db
    assert a.ike_sas() == [] and b.ike_sas() == []


def _a_signs_with(monkeypatch, a, change):
    """a's AUTH payloads go out as ``change(method, data)`` makes them."""
    from host.ike import ike_auth
    real = ike_auth.sign
    a_key = a.connections["gw"].local.key

    def signing(key, octets, peer_hashes, rsa_pss=False):
        method, data = real(key, octets, peer_hashes, rsa_pss)
        return change(method, data) if key is a_key else (method, data)
    monkeypatch.setattr(ike_auth, "sign", signing)


def test_a_signature_that_does_not_verify_fails_ike_auth(tmp_path, monkeypatch):
    a, b, net = _cert_pair(tmp_path)
    _a_signs_with(monkeypatch, a, lambda m, d: (m, d[:-1] + bytes((d[-1] ^ 1,))))
    _auth_fails_at_both_ends(a, b, net, "does not verify")


def test_a_signature_with_a_hash_we_do_not_take_fails_ike_auth(tmp_path, monkeypatch):
    sha1_ecdsa = auth._alg_id("1.2.840.10045.4.1", False)                             # ecdsa-with-SHA1
    a, b, net = _cert_pair(tmp_path)
    _a_signs_with(monkeypatch, a, lambda m, d: (m, bytes((len(sha1_ecdsa),)) + sha1_ecdsa + d[1 + d[0]:]))
    _auth_fails_at_both_ends(a, b, net, "unsupported signature algorithm")


def test_a_psk_where_a_signature_is_required_fails_ike_auth(tmp_path):
    a, b, net = _cert_pair(tmp_path)
    gw = a.connections["gw"]
    a.connections["gw"] = dataclasses.replace(gw, psk=b"a-psk-of-at-least-20-bytes",
                                              local=dataclasses.replace(gw.local, auth="psk"))
    _auth_fails_at_both_ends(a, b, net, "PSK where a signature is required")
