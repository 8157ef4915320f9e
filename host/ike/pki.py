"""Certificates of IKE peers: path validation, revocation, keys, and where the files live.

The path (RFC 7296 §3.6, profiled by RFC 4945) is built and checked by
``cryptography.x509.verification``: signatures, validity periods, basicConstraints with path
lengths, name constraints (RFC 5280 §6.1), at most MAX_CHAIN intermediates from the peer's CERT
payloads. IKE's own rules on extensions are its extension policies:
* an end entity's keyUsage, if present, asserts digitalSignature or nonRepudiation (RFC 4945
  §5.1.3.2); a CA's asserts keyCertSign (RFC 5280 §4.2.1.3);
* an extendedKeyUsage, if present, names id-kp-ipsecIKE or anyExtendedKeyUsage (RFC 4945
  §5.1.3.12) — or serverAuth/clientAuth, which CAs commonly issue to IKE gateways and clients.
Revocation comes from CRL files (RFC 5280 §6.3, complete CRLs): a certificate of the path whose
serial its issuer's CRL lists is refused; an issuer without a CRL is trusted as before (the
relaxed policy strongSwan applies by default). A CRL counts only if the issuer's key signed it
and, when the issuer has keyUsage, it asserts cRLSign.

Files follow swanctl's layout under the configuration's directory: a relative name is looked up
in x509/ (our certificates), x509ca/ (trust anchors), x509crl/ (CRLs) or private/ (keys and their
passphrase files), then in the directory itself.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from cryptography.x509.verification import (
    Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError,
)

MAX_CHAIN = 4                 # intermediates a peer may send before its trust anchor
ID_KP_IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")
IKE_EKUS = frozenset({ID_KP_IPSEC_IKE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
                      ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})
LAYOUT = {"cert": "x509", "cacerts": "x509ca", "crls": "x509crl", "key": "private", "key_passphrase_file": "private",
          "link_key": "private"}


class PathError(Exception):
    """The peer's certificate path is not acceptable (the caller answers AUTHENTICATION_FAILED)."""


class TrustStore(list):
    """Trust anchors for a peer (a list of certificates) and the CRLs that go with them."""

    def __init__(self, anchors=(), crls=()):
        super().__init__(anchors)
        self.crls = list(crls)


# ---------------------------------------------------------------- extension policies

def _ee_key_usage(_policy, _cert, ku):
    if ku is not None and not (ku.digital_signature or ku.content_commitment):
        raise ValueError("keyUsage asserts neither digitalSignature nor nonRepudiation (RFC 4945 §5.1.3.2)")


def _ca_key_usage(_policy, _cert, ku):
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("a CA's keyUsage without keyCertSign (RFC 5280 §4.2.1.3)")


def _eku(_policy, _cert, eku):
    if eku is not None and not IKE_EKUS.intersection(eku):
        raise ValueError("extendedKeyUsage %s allows no IKE use (RFC 4945 §5.1.3.12)"
                         % ", ".join(getattr(o, "_name", o.dotted_string) for o in eku))


CA_POLICY = (ExtensionPolicy.permit_all()
             .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
             .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
             .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku))
EE_POLICY = (ExtensionPolicy.permit_all()
             .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ee_key_usage)
             .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku))


# ---------------------------------------------------------------- path and revocation

def verify_chain(end_entity: x509.Certificate, intermediates: list[x509.Certificate], anchors,
                 now: datetime.datetime | None = None, crls=None) -> list[x509.Certificate]:
    """Validate ``end_entity`` up to one of ``anchors`` through ``intermediates``; then check
    revocation against ``crls`` (default: the anchors' own, if they are a TrustStore). Returns the
    path, end entity first; raises PathError."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not anchors:
        raise PathError("no trust anchors for the peer's certificate")
    builder = (PolicyBuilder().store(Store(list(anchors))).time(now).max_chain_depth(MAX_CHAIN)
               .extension_policies(ca_policy=CA_POLICY, ee_policy=EE_POLICY))
    try:
        chain = builder.build_client_verifier().verify(end_entity, list(intermediates)).chain
    except VerificationError as e:
        raise PathError("certificate chain: %s" % _short(e)) from None
    check_revocation(chain, getattr(anchors, "crls", ()) if crls is None else crls, now)
    return chain


def _short(e):
    """VerificationError's text without the certificate dump it appends."""
    text = str(e)
    return text.split(" (encountered processing", 1)[0]


def check_revocation(chain, crls, now):
    """RFC 5280 §6.3 with complete CRLs: each certificate below the anchor against its issuer's."""
    for cert, issuer in zip(chain, chain[1:]):
        for crl in crls:
            if crl.issuer != issuer.subject or not _crl_from(crl, issuer):
                continue
            if crl.last_update_utc > now:
                continue                      # not yet in force
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None and entry.revocation_date_utc <= now:
                raise PathError("certificate %s (serial %x) was revoked on %s by its issuer %s"
                                % (cert.subject.rfc4514_string(), cert.serial_number,
                                   entry.revocation_date_utc.strftime("%Y-%m-%d %H:%M:%SZ"),
                                   issuer.subject.rfc4514_string()))


def _crl_from(crl, issuer) -> bool:
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.crl_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        return crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- files

def load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def load_private_key(data: bytes, passphrase: bytes | None = None):
    """A PEM or DER private key, encrypted (PKCS#8, or traditional PEM) if ``passphrase`` is given.
    Raises TypeError for an encrypted key without a passphrase (or the reverse), ValueError for a
    wrong passphrase or a damaged key."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return serialization.load_pem_private_key(data, passphrase)
    return serialization.load_der_private_key(data, passphrase)


def read_passphrase(data: bytes) -> bytes:
    """A passphrase file's content without its line end."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def locate(base: Path | None, key: str, name: str) -> Path:
    """Where the file ``name`` given for setting ``key`` (cert, cacerts, crls, key,
    key_passphrase_file) is: absolute as written; else in its layout directory under ``base``
    if it is there; else relative to ``base``."""
    p = Path(name)
    if p.is_absolute() or base is None:
        return p
    sub = LAYOUT.get(key)
    if sub and (base / sub / p).exists():
        return base / sub / p
    return base / p
