"""Certificate paths (host/ike/auth.py verify_chain through pki.py; RFC 7296 §3.6, RFC 5280 §6.1): a peer's end-entity
certificate must chain to a configured trust anchor through CA certificates only, each within its
validity period, each signature verifying, no CA's path length constraint exceeded and no CA
without keyCertSign; the peer's CERT payloads may carry intermediates in any order. Then the
same through two engines' IKE_AUTH: a certificate that expired while the connection was
configured is refused with AUTHENTICATION_FAILED."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from host.ike.auth import AuthError, verify_chain
from host.ike.pki import MAX_CHAIN
from host.ike.events import IkeSaDown, IkeSaUp
from testbed.pki import TestCa
from tests.test_engine import A_NET, B_NET, A, B, conn, kinds, pair

NOW = datetime.datetime.now(datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


class Node:
    """A certificate and its key."""

    def __init__(self, cert, key):
        self.cert, self.key = cert, key


def make(cn, issuer=None, ca=True, path_length=None, basic=True, key_usage=True, not_before=None,
         not_after=None, signer_key=None):
    """A certificate for ``cn`` signed by ``issuer`` (a Node; None: self-signed). ``ca``: the
    BasicConstraints cA flag (``basic=False``: no BasicConstraints at all); ``key_usage``: for a
    CA, keyCertSign present (True), absent from a KeyUsage extension (False) or no extension
    (None). ``signer_key``: sign with another key than the issuer's (a forged issuer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.cert.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before or NOW - HOUR).not_valid_after(not_after or NOW + DAY))
    if basic:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    if ca and key_usage is not None:
        b = b.add_extension(x509.KeyUsage(digital_signature=not key_usage, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                                          key_cert_sign=key_usage, crl_sign=key_usage, encipher_only=False,
                                          decipher_only=False), critical=True)
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    sign_with = signer_key or (issuer.key if issuer else key)
    return Node(b.sign(sign_with, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki():
    root = make("root")
    mid = make("mid", root)
    low = make("low", mid)
    return root, mid, low


def test_end_entity_directly_under_the_anchor(pki):
    root, _mid, _low = pki
    ee = make("gw.example", root, ca=False)
    verify_chain(ee.cert, [], [root.cert])


def test_intermediates_in_any_order_and_unrelated_ones_ignored(pki):
    root, mid, low = pki
    ee = make("gw.example", low, ca=False)
    other = make("other-ca", make("other-root"))
    for pool in ([low.cert, mid.cert], [mid.cert, low.cert], [other.cert, mid.cert, low.cert]):
        verify_chain(ee.cert, pool, [root.cert])
    # the anchor may also be an intermediate a gateway trusts directly
    verify_chain(ee.cert, [], [low.cert])


def test_a_missing_intermediate_breaks_the_chain(pki):
    root, mid, low = pki
    ee = make("gw.example", low, ca=False)
    with pytest.raises(AuthError, match="candidates exhausted"):
        verify_chain(ee.cert, [low.cert], [root.cert])
    with pytest.raises(AuthError, match="candidates exhausted"):
        verify_chain(ee.cert, [mid.cert, low.cert], [make("elsewhere").cert])


@pytest.mark.parametrize("which", ["end entity", "intermediate", "anchor"])
@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_every_certificate_on_the_path_must_be_within_its_validity(which, when):
    window = dict(not_before=NOW - 2 * DAY, not_after=NOW - DAY) if when == "expired" else \
        dict(not_before=NOW + HOUR, not_after=NOW + DAY)
    root = make("root", **(window if which == "anchor" else {}))
    mid = make("mid", root, **(window if which == "intermediate" else {}))
    ee = make("gw.example", mid, ca=False, **(window if which == "end entity" else {}))
    with pytest.raises(AuthError, match="not valid at validation time"):
        verify_chain(ee.cert, [mid.cert], [root.cert])
    # the same path at a time inside every window passes: the date was the only fault
    inside = (NOW - DAY - HOUR / 2) if when == "expired" else (NOW + 2 * HOUR)
    if when == "not yet valid":
        verify_chain(ee.cert, [mid.cert], [root.cert], now=inside)


@pytest.mark.parametrize("issuer_kind", ["end entity", "no basic constraints", "forged signature"])
def test_a_certificate_that_is_not_a_ca_cannot_issue(pki, issuer_kind):
    root, _mid, _low = pki
    if issuer_kind == "end entity":
        fake = make("fake-ca", root, ca=False)              # a leaf certificate used as a CA
    elif issuer_kind == "no basic constraints":
        fake = make("fake-ca", root, basic=False)
    else:
        fake = make("fake-ca", root, signer_key=ec.generate_private_key(ec.SECP256R1()))
    ee = make("gw.example", fake, ca=False)
    why = {"end entity": "basicConstraints.cA must be asserted", "no basic constraints": "no basicConstraints",
           "forged signature": "signature does not match"}[issuer_kind]
    with pytest.raises(AuthError, match=why):
        verify_chain(ee.cert, [fake.cert], [root.cert])


def test_an_anchor_that_is_not_a_ca_anchors_nothing():
    leaf_anchor = make("not-a-ca", ca=False)
    ee = make("gw.example", leaf_anchor, ca=False)
    with pytest.raises(AuthError, match="basicConstraints.cA must be asserted"):
        verify_chain(ee.cert, [], [leaf_anchor.cert])


def test_path_length_constraints_are_enforced():
    """RFC 5280 §4.2.1.9: pathLenConstraint n allows at most n intermediate CAs below it."""
    root0 = make("root0", path_length=0)
    mid = make("mid", root0, path_length=None)
    ee = make("gw.example", mid, ca=False)
    with pytest.raises(AuthError, match="path length"):
        verify_chain(ee.cert, [mid.cert], [root0.cert])
    verify_chain(make("gw2.example", root0, ca=False).cert, [], [root0.cert])      # 0 intermediates: fine
    root1 = make("root1", path_length=1)
    mid1 = make("mid1", root1, path_length=0)
    verify_chain(make("gw.example", mid1, ca=False).cert, [mid1.cert], [root1.cert])
    low = make("low", mid1)
    with pytest.raises(AuthError, match="path length"):                 # mid1's own constraint
        verify_chain(make("gw.example", low, ca=False).cert, [low.cert, mid1.cert], [root1.cert])


def test_a_ca_without_key_cert_sign_cannot_issue():
    """RFC 5280 §4.2.1.3: a CA certificate with a KeyUsage extension must assert keyCertSign."""
    root = make("root")
    no_sign = make("mid", root, key_usage=False)
    ee = make("gw.example", no_sign, ca=False)
    with pytest.raises(AuthError, match="keyCertSign"):
        verify_chain(ee.cert, [no_sign.cert], [root.cert])
    no_ku = make("mid", root, key_usage=None)                          # no KeyUsage at all: allowed
    verify_chain(make("gw.example", no_ku, ca=False).cert, [no_ku.cert], [root.cert])


def test_chains_longer_than_the_limit_are_refused():
    root = make("root")
    cas, parent = [], root
    for i in range(MAX_CHAIN + 1):
        parent = make(f"ca{i}", parent)
        cas.append(parent)
    ee = make("gw.example", parent, ca=False)
    with pytest.raises(AuthError, match="max depth"):
        verify_chain(ee.cert, [c.cert for c in cas], [root.cert])
    verify_chain(ee.cert, [c.cert for c in cas[1:]], [cas[0].cert])      # MAX_CHAIN intermediates: fine


def _cert_pair(tmp_path, a_valid_days=1.0, a_not_before=None):
    ca = TestCa("ecdsa")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    ca.issue("a.example", valid_days=a_valid_days, not_before=a_not_before).write(tmp_path, "a")
    ca.issue("b.example").write(tmp_path, "b")

    def c(me, peer, lts, rts, who, other):
        d = conn(me, peer, who, other, lts, rts, auth="pubkey", psk=None)
        d["local"].update(cert=str(tmp_path / f"{who[0]}.crt"), key=str(tmp_path / f"{who[0]}.key"))
        d["remote"]["cacerts"] = [str(tmp_path / "ca.crt")]
        return d
    return pair(c(A, B, A_NET, B_NET, "a.example", "b.example"), c(B, A, B_NET, A_NET, "b.example", "a.example"))


def test_an_expired_peer_certificate_fails_ike_auth_on_both_sides(tmp_path):
    a, b, net = _cert_pair(tmp_path, a_valid_days=0.5, a_not_before=NOW - DAY)    # expired 12 h ago
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[A], IkeSaUp) and not kinds(net.events[B], IkeSaUp)
    assert any("not valid at validation time" in d.reason for d in kinds(net.events[B], IkeSaDown)), net.events[B]
    assert any("AUTHENTICATION_FAILED" in d.reason for d in kinds(net.events[A], IkeSaDown)), net.events[A]
    # the same pair with a valid certificate comes up (the failure was the date, nothing else)
    a, b, net = _cert_pair(tmp_path)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp) and kinds(net.events[B], IkeSaUp)
