"""A throwaway PKI made with ``cryptography``: one CA and end-entity certificates whose
subjectAltName carries the IKE identity (FQDN, e-mail or IP)."""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def new_key(kind: str = "ecdsa"):
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa4096":           # big certificates and signatures: IKE_AUTH past 1280 bytes
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise ValueError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ikeoffload test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory, stem: str) -> tuple[Path, Path]:
        d = Path(directory)
        c, k = d / f"{stem}.crt", d / f"{stem}.key"
        c.write_bytes(self.cert_pem())
        k.write_bytes(self.key_pem())
        k.chmod(0o600)
        return c, k


class TestCa:
    """A CA valid for a day around now. ``issue(identity)`` makes an end-entity certificate."""
    __test__ = False            # not a pytest class

    def __init__(self, kind: str = "ecdsa", cn: str = "ikeoffload test CA"):
        self.key = new_key(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
                     .sign(self.key, hashes.SHA256()))

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, identity: str, kind: str = "ecdsa", valid_days: float = 1.0,
              not_before: datetime.datetime | None = None) -> Issued:
        key = new_key(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        nb = not_before or (now - datetime.timedelta(hours=1))
        try:
            san = x509.IPAddress(ipaddress.ip_address(identity))
        except ValueError:
            san = x509.RFC822Name(identity) if "@" in identity else x509.DNSName(identity)
        cert = (x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(nb).not_valid_after(nb + datetime.timedelta(days=valid_days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return Issued(cert, key)
