"""RFC 7427 digital signatures in AUTH payloads: what we sign verifies, RSASSA-PSS from peers such
as strongSwan (rsa_pss = yes) is accepted with the AlgorithmIdentifiers RFC 7427 A.4 gives, and
anything that does not fit is refused."""
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from host.ike import auth
from host.ike.constants import AuthMethod

OCTETS = b"the signed octets of RFC 7296 section 2.15" * 3
# RFC 7427 A.4.1: RSASSA-PSS with SHA-256, MGF1 with SHA-256, salt 32
RFC7427_A41 = bytes.fromhex(
    "304106092A864886F70D01010A3034A00F300D06096086480165030402010500A11C301A06092A864886F70D010108"
    "300D06096086480165030402010500A203020120")


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pss_auth(key, h, algid, salt=None):
    sig = key.sign(OCTETS, padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size if salt is None else salt),
                   h())
    return bytes((len(algid),)) + algid + sig


def _pss_ids(name):
    return [k for k, v in auth._BY_ALGID.items() if v[0] == name]


def test_rfc7427_a41_is_among_the_pss_identifiers():
    assert RFC7427_A41 in _pss_ids("rsa-pss-sha256")


@pytest.mark.parametrize("name,h", [("rsa-pss-sha256", hashes.SHA256), ("rsa-pss-sha384", hashes.SHA384),
                                    ("rsa-pss-sha512", hashes.SHA512)])
def test_rsassa_pss_verifies_with_and_without_null_hash_parameters(rsa_key, name, h):
    ids = _pss_ids(name)
    assert len(ids) == 2
    for algid in ids:
        auth.verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, _pss_auth(rsa_key, h, algid), OCTETS)


def test_rsassa_pss_refusals(rsa_key):
    pub = rsa_key.public_key()
    good = _pss_auth(rsa_key, hashes.SHA256, RFC7427_A41)
    with pytest.raises(auth.AuthError):
        auth.verify(pub, AuthMethod.DIGITAL_SIGNATURE, good, OCTETS + b"x")           # other octets
    with pytest.raises(auth.AuthError):                                               # salt not as announced
        auth.verify(pub, AuthMethod.DIGITAL_SIGNATURE, _pss_auth(rsa_key, hashes.SHA256, RFC7427_A41, 20), OCTETS)
    pkcs1 = rsa_key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(auth.AuthError):                                               # PKCS#1 v1.5 under a PSS id
        auth.verify(pub, AuthMethod.DIGITAL_SIGNATURE, bytes((len(RFC7427_A41),)) + RFC7427_A41 + pkcs1, OCTETS)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(auth.AuthError):                                               # PSS id, EC key
        auth.verify(other, AuthMethod.DIGITAL_SIGNATURE, good, OCTETS)
    salt20 = RFC7427_A41[:-1] + bytes((20,))
    with pytest.raises(auth.AuthError):                                               # an id we do not know
        auth.verify(pub, AuthMethod.DIGITAL_SIGNATURE, _pss_auth(rsa_key, hashes.SHA256, salt20, 20), OCTETS)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_what_we_sign_verifies_under_rfc7427_and_without_it(rsa_key, kind):
    key = rsa_key if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    for peer_hashes in ({2, 3, 4}, None):
        method, data = auth.sign(key, OCTETS, peer_hashes)
        assert (method == AuthMethod.DIGITAL_SIGNATURE) == bool(peer_hashes)
        auth.verify(key.public_key(), method, data, OCTETS)
        with pytest.raises(auth.AuthError):
            auth.verify(key.public_key(), method, data, OCTETS[:-1])


def test_with_rsa_pss_we_sign_rfc7427_a41_and_it_verifies(rsa_key):
    method, data = auth.sign(rsa_key, OCTETS, {2, 3, 4}, rsa_pss=True)
    assert method == AuthMethod.DIGITAL_SIGNATURE and data[1:1 + data[0]] == RFC7427_A41
    auth.verify(rsa_key.public_key(), method, data, OCTETS)
    sig = data[1 + data[0]:]
    rsa_key.public_key().verify(sig, OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                                hashes.SHA256())                     # independently: cryptography itself
    # PSS is RSA only, and only with RFC 7427; an EC key signs as before
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert auth.sign(ec_key, OCTETS, {2}, rsa_pss=True)[1][1:1 + 12] == auth.SIG_SCHEMES["ecdsa-sha256"][0][:12]
    assert auth.sign(rsa_key, OCTETS, None, rsa_pss=True)[0] == AuthMethod.RSA_SIG
