"""Certificate paths through cryptography.x509.verification with IKE's extension rules (RFC 4945),
CRLs, encrypted keys and the swanctl-like layout (host/ike/pki.py): certificates made here with
`cryptography`, checked directly and in an IKE_AUTH between two engines."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host.ike import pki
from host.ike.config import ConfigError, parse_connections
from host.ike.engine import IkeEngine
from host.ike.events import IkeSaDown, IkeSaUp
from host.ike.loopback import Network
from host.ike.proposals import OffloadCapabilities

NOW = datetime.datetime.now(datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(digital_signature=False, key_cert_sign=False, key_encipherment=False, crl_sign=None):
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=key_cert_sign if crl_sign is None else crl_sign,
                         encipher_only=False, decipher_only=False)


class Ca:
    def __init__(self, cn, issuer=None, path_length=None, name_constraints=None, ku=None):
        self.key = key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        signer = issuer or self
        b = (x509.CertificateBuilder().subject_name(self.name).issuer_name(signer.name)
             .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW - HOUR).not_valid_after(NOW + 24 * HOUR)
             .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
             .add_extension(ku or key_usage(key_cert_sign=True), critical=True))
        if name_constraints:
            b = b.add_extension(name_constraints, critical=True)
        self.cert = b.sign(signer.key, hashes.SHA256())
        self.revoked = []

    def issue(self, dns, eku=None, ku=None, valid=(NOW - HOUR, NOW + 24 * HOUR)):
        k = key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
             .issuer_name(self.name).public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(valid[0]).not_valid_after(valid[1])
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False))
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if ku:
            b = b.add_extension(ku, critical=True)
        return b.sign(self.key, hashes.SHA256()), k

    def crl(self, *certs, when=NOW - HOUR, signer=None):
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(NOW - 2 * HOUR).next_update(NOW + 24 * HOUR))
        for c in certs:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                          .revocation_date(when).build())
        return b.sign((signer or self).key, hashes.SHA256())


def refused(cert, intermediates, anchors, says, crls=None):
    with pytest.raises(pki.PathError) as e:
        pki.verify_chain(cert, intermediates, anchors, crls=crls)
    assert says in str(e.value), str(e.value)


def test_good_paths_direct_and_through_an_intermediate():
    root = Ca("root", path_length=1)
    sub = Ca("sub", issuer=root)
    for eku in (None, [pki.ID_KP_IPSEC_IKE], [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]):
        leaf, _ = sub.issue("gw.example", eku=eku, ku=key_usage(digital_signature=True))
        assert pki.verify_chain(leaf, [sub.cert], [root.cert]) == [leaf, sub.cert, root.cert]
    leaf, _ = root.issue("gw.example")
    assert len(pki.verify_chain(leaf, [], [root.cert])) == 2


def test_wrong_extended_key_usage_is_refused():
    root = Ca("root")
    leaf, _ = root.issue("gw.example", eku=[ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION])
    refused(leaf, [], [root.cert], "allows no IKE use (RFC 4945")


def test_wrong_key_usage_is_refused():
    root = Ca("root")
    leaf, _ = root.issue("gw.example", ku=key_usage(key_encipherment=True))
    refused(leaf, [], [root.cert], "neither digitalSignature nor nonRepudiation")
    # a CA whose keyUsage does not allow certificate signing
    bad = Ca("bad-ca", issuer=root, ku=key_usage(digital_signature=True, crl_sign=True))
    leaf, _ = bad.issue("gw.example")
    refused(leaf, [bad.cert], [root.cert], "chain")


def test_exceeded_path_length_is_refused():
    root = Ca("root", path_length=0)
    sub = Ca("sub", issuer=root)
    leaf, _ = sub.issue("gw.example")
    refused(leaf, [sub.cert], [root.cert], "path length constraint violated")
    too_deep = [Ca("r", path_length=None)]
    for i in range(pki.MAX_CHAIN + 1):
        too_deep.append(Ca("i%d" % i, issuer=too_deep[-1]))
    leaf, _ = too_deep[-1].issue("gw.example")
    refused(leaf, [c.cert for c in reversed(too_deep[1:])], [too_deep[0].cert], "chain")


def test_name_constraints_are_enforced():
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("branch.example")], excluded_subtrees=None)
    root = Ca("root", name_constraints=nc)
    ok, _ = root.issue("gw.branch.example")
    pki.verify_chain(ok, [], [root.cert])
    leaf, _ = root.issue("gw.other.example")
    refused(leaf, [], [root.cert], "name constraint")


def test_revoked_certificates_are_refused():
    root = Ca("root", path_length=1)
    sub = Ca("sub", issuer=root)
    leaf, _ = sub.issue("gw.example")
    other, _ = sub.issue("other.example")
    refused(leaf, [sub.cert], [root.cert], "serial %x) was revoked" % leaf.serial_number, crls=[sub.crl(leaf)])
    pki.verify_chain(other, [sub.cert], [root.cert], crls=[sub.crl(leaf)])      # only what it lists
    # the intermediate revoked by the root: everything below it goes
    refused(other, [sub.cert], [root.cert], "was revoked", crls=[root.crl(sub.cert)])
    # a CRL in the anchors' TrustStore, as the configuration hands it over
    refused(leaf, [sub.cert], pki.TrustStore([root.cert], [sub.crl(leaf)]), "was revoked")
    # not signed by the issuer: ignored; revoked only from tomorrow: not yet
    forged = sub.crl(leaf, signer=Ca("sub"))
    pki.verify_chain(leaf, [sub.cert], [root.cert], crls=[forged])
    pki.verify_chain(leaf, [sub.cert], [root.cert], crls=[sub.crl(leaf, when=NOW + 24 * HOUR)])


def test_untrusted_and_expired_are_refused():
    root, rogue = Ca("root"), Ca("rogue")
    leaf, _ = rogue.issue("gw.example")
    refused(leaf, [], [root.cert], "chain")
    old, _ = root.issue("gw.example", valid=(NOW - 48 * HOUR, NOW - 24 * HOUR))
    refused(old, [], [root.cert], "chain")
    with pytest.raises(pki.PathError, match="no trust anchors"):
        pki.verify_chain(old, [], [])


# ---------------------------------------------------------------- files, config, engine

def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def encrypted(k, passphrase, fmt=serialization.PrivateFormat.PKCS8):
    return k.private_bytes(serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(passphrase))


def layout(d, ca, me, peer_id, passphrase=b"correct horse battery", crls=(), fmt=serialization.PrivateFormat.PKCS8):
    """A swanctl-like directory: x509/, x509ca/, x509crl/, private/ (encrypted key, passphrase file)."""
    for sub in ("x509", "x509ca", "x509crl", "private"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cert, k = ca.issue(me)
    (d / "x509" / "me.pem").write_bytes(pem(cert))
    (d / "x509ca" / "ca.pem").write_bytes(pem(ca.cert))
    (d / "private" / "me.key").write_bytes(encrypted(k, passphrase, fmt))
    (d / "private" / "me.pass").write_bytes(passphrase + b"\n")
    for i, crl in enumerate(crls):
        (d / "x509crl" / ("%d.crl" % i)).write_bytes(crl.public_bytes(serialization.Encoding.DER))
    return cert


def conn_data(me, peer, me_id, peer_id, crls=0):
    return {"local_addrs": [me], "remote_addrs": [peer], "proposals": ["aes256gcm16-prfsha256-x25519"],
            "local": {"auth": "pubkey", "id": me_id, "cert": "me.pem", "key": "me.key",
                      "key_passphrase_file": "me.pass"},
            "remote": {"auth": "pubkey", "id": peer_id, "cacerts": ["ca.pem"],
                       **({"crls": ["%d.crl" % i for i in range(crls)]} if crls else {})},
            "children": {"net": {"local_ts": ["198.51.100.0/24" if me.endswith(".1") else "203.0.113.0/24"],
                                 "remote_ts": ["203.0.113.0/24" if me.endswith(".1") else "198.51.100.0/24"],
                                 "esp_proposals": ["aes256gcm16"]}}}


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
def test_encrypted_key_loads_with_its_passphrase_file(tmp_path, fmt):
    ca = Ca("root")
    cert = layout(tmp_path, ca, "a.example", "b.example", fmt=fmt)
    c = parse_connections({"gw": conn_data("192.0.2.1", "192.0.2.2", "a.example", "b.example")}, tmp_path)["gw"]
    assert c.local.cert == cert and isinstance(c.local.key, ec.EllipticCurvePrivateKey)
    assert c.local.key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert list(c.remote.cacerts) == [ca.cert]


def test_key_passphrase_errors_name_the_key(tmp_path):
    layout(tmp_path, Ca("root"), "a.example", "b.example")
    data = conn_data("192.0.2.1", "192.0.2.2", "a.example", "b.example")
    (tmp_path / "private" / "wrong.pass").write_bytes(b"not it\n")
    for edit, key, says in ((("key_passphrase_file", "wrong.pass"), "key_passphrase_file", "wrong passphrase"),
                            (("key_passphrase_file", None), "key", "is encrypted"),
                            (("key_passphrase_file", "nosuch.pass"), "key_passphrase_file", "cannot read")):
        d = {**data, "local": dict(data["local"])}
        if edit[1] is None:
            del d["local"][edit[0]]
        else:
            d["local"][edit[0]] = edit[1]
        with pytest.raises(ConfigError) as e:
            parse_connections({"gw": d}, tmp_path)
        assert e.value.key == "connections.gw.local." + key and says in str(e.value), str(e.value)
    d = {**data, "remote": {**data["remote"], "crls": ["ca.pem"]}}     # a certificate where a CRL goes
    (tmp_path / "x509crl" / "ca.pem").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"remote\.crls\[0\]: .* is not a CRL"):
        parse_connections({"gw": d}, tmp_path)


def engines(tmp_path, crls_for_b):
    """Two engines authenticating with certificates of one CA and encrypted keys; b checks a's
    certificate against the CRLs ``crls_for_b(ca, a's certificate)``. a initiates."""
    ca = Ca("root")
    a_cert = layout(tmp_path / "a", ca, "a.example", "b.example")
    crls = crls_for_b(ca, a_cert)
    layout(tmp_path / "b", ca, "b.example", "a.example", crls=crls)
    caps = OffloadCapabilities.from_proposals(["aes256gcm16"])
    a = IkeEngine(parse_connections({"gw": conn_data("192.0.2.1", "192.0.2.2", "a.example", "b.example")},
                                    tmp_path / "a"), caps)
    b = IkeEngine(parse_connections({"gw": conn_data("192.0.2.2", "192.0.2.1", "b.example", "a.example",
                                                     len(crls))}, tmp_path / "b"), caps)
    net = Network()
    net.add("192.0.2.1", a)
    net.add("192.0.2.2", b)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    return net


def test_ike_auth_with_encrypted_keys_and_a_crl(tmp_path):
    net = engines(tmp_path / "ok", lambda ca, a_cert: [ca.crl()])           # an empty CRL
    assert [type(e) for e in net.events["192.0.2.2"] if isinstance(e, (IkeSaUp, IkeSaDown))] == [IkeSaUp]
    net = engines(tmp_path / "revoked", lambda ca, a_cert: [ca.crl(a_cert)])
    assert not [e for e in net.events["192.0.2.2"] if isinstance(e, IkeSaUp)]
    downs = [e for e in net.events["192.0.2.2"] if isinstance(e, IkeSaDown)]
    assert downs and "revoked" in downs[0].reason, [d.reason for d in downs]
    assert not [e for e in net.events["192.0.2.1"] if isinstance(e, IkeSaUp)]


def test_locate_follows_the_swanctl_layout(tmp_path):
    (tmp_path / "x509ca").mkdir()
    (tmp_path / "x509ca" / "ca.pem").write_text("")
    assert pki.locate(tmp_path, "cacerts", "ca.pem") == tmp_path / "x509ca" / "ca.pem"
    assert pki.locate(tmp_path, "cert", "ca.pem") == tmp_path / "ca.pem"
    assert pki.locate(tmp_path, "cacerts", "/abs/ca.pem").as_posix() == "/abs/ca.pem"


def test_crls_that_do_not_count():
    """RFC 5280 §6.3.3: a CRL counts only from its issuer when that issuer may sign CRLs (cRLSign,
    §4.2.1.3) and once it is in force (thisUpdate); the same serial on the other CRLs changes nothing."""
    root = Ca("root", path_length=1)
    no_crl_sign = Ca("sub", issuer=root, ku=key_usage(key_cert_sign=True, crl_sign=False))
    leaf, _ = no_crl_sign.issue("gw.example")
    pki.verify_chain(leaf, [no_crl_sign.cert], [root.cert], crls=[no_crl_sign.crl(leaf)])
    sub = Ca("sub", issuer=root)
    leaf, _ = sub.issue("gw.example")
    future = (x509.CertificateRevocationListBuilder().issuer_name(sub.name)
              .last_update(NOW + HOUR).next_update(NOW + 24 * HOUR)
              .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(leaf.serial_number)
                                       .revocation_date(NOW - HOUR).build())
              .sign(sub.key, hashes.SHA256()))
    pki.verify_chain(leaf, [sub.cert], [root.cert], crls=[future])
    refused(leaf, [sub.cert], [root.cert], "was revoked", crls=[future, sub.crl(leaf)])   # the one in force


def test_certificates_and_crls_load_from_der_and_passphrases_lose_their_line_end():
    root = Ca("root")
    der = root.cert.public_bytes(serialization.Encoding.DER)
    assert pki.load_cert(der) == root.cert == pki.load_cert(root.cert.public_bytes(serialization.Encoding.PEM))
    crl = root.crl()
    assert pki.load_crl(crl.public_bytes(serialization.Encoding.DER)) == crl
    assert [pki.read_passphrase(x) for x in (b"s3cret\r\n", b"s3cret\n", b"s3cret", b"s3cret\n\n")] == [
        b"s3cret", b"s3cret", b"s3cret", b"s3cret\n"]
