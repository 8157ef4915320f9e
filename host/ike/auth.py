"""Authentication: identities (RFC 7296 §3.5), the signed octets and PSK AUTH (§2.15), digital
signatures with RFC 7427 (and RFC 4754 ECDSA as a fallback), certificate checks via ``cryptography``.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

from .constants import AuthMethod, HashAlgorithm, IdType

KEY_PAD = b"Key Pad for IKEv2"      # §2.15


class AuthError(Exception):
    """Authentication of the peer failed (answered with AUTHENTICATION_FAILED, §2.21.2)."""


# ---------------------------------------------------------------- identities

@dataclass(frozen=True)
class Identity:
    """An IKE identity: ID type and data. ``any`` matches every peer identity (config "%any")."""
    id_type: int
    data: bytes
    any: bool = False

    @classmethod
    def parse(cls, text: str) -> "Identity":
        """strongSwan-like: an IP address, ``user@host`` (RFC822), a DN with ``=`` (``CN=x, O=y``),
        ``%any``, else an FQDN. Prefixes ``fqdn:``, ``email:``, ``dn:``, ``ip:`` force the type."""
        t = text.strip()
        if t in ("%any", "*", ""):
            return cls(0, b"", True)
        low = t.lower()
        for pfx, kind in (("fqdn:", IdType.FQDN), ("email:", IdType.RFC822_ADDR), ("dn:", IdType.DER_ASN1_DN),
                          ("ip:", None)):
            if low.startswith(pfx):
                return cls._typed(kind, t[len(pfx):])
        try:
            ip = ipaddress.ip_address(t)
            return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)
        except ValueError:
            pass
        if "=" in t:
            return cls._typed(IdType.DER_ASN1_DN, t)
        if "@" in t:
            return cls(IdType.RFC822_ADDR, t.encode())
        return cls(IdType.FQDN, t.encode())

    @classmethod
    def _typed(cls, kind, value):
        if kind is None:
            ip = ipaddress.ip_address(value)
            return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)
        if kind == IdType.DER_ASN1_DN:
            return cls(IdType.DER_ASN1_DN, parse_dn(value).public_bytes())
        return cls(kind, value.encode())

    @classmethod
    def from_cert(cls, cert: x509.Certificate) -> "Identity":
        return cls(IdType.DER_ASN1_DN, cert.subject.public_bytes())

    def matches(self, other: "Identity") -> bool:
        """Does the peer identity ``other`` satisfy this configured identity?"""
        if self.any:
            return True
        if self.id_type == IdType.DER_ASN1_DN and other.id_type == IdType.DER_ASN1_DN:
            try:
                return _load_name(self.data) == _load_name(other.data)
            except ValueError:
                return self.data == other.data
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR) and other.id_type == self.id_type:
            return self.data.lower() == other.data.lower()
        return self.id_type == other.id_type and self.data == other.data

    def __str__(self):
        if self.any:
            return "%any"
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        if self.id_type == IdType.DER_ASN1_DN:
            try:
                return format_dn(_load_name(self.data))
            except ValueError:
                return "dn:" + self.data.hex()
        return f"{self.id_type}:{self.data.hex()}"

    def body(self) -> bytes:
        """The ID payload body (ID Type | RESERVED | data) that §2.15 MACs."""
        return bytes((self.id_type, 0, 0, 0)) + self.data


_DN_KEYS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
    "E": NameOID.EMAIL_ADDRESS, "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "DC": NameOID.DOMAIN_COMPONENT,
    "SN": NameOID.SURNAME, "SERIALNUMBER": NameOID.SERIAL_NUMBER, "UID": NameOID.USER_ID,
}
_DN_NAMES = {v: k for k, v in _DN_KEYS.items() if k not in ("EMAILADDRESS",)}


def parse_dn(text: str) -> x509.Name:
    """A DN written strongSwan-style, outermost RDN first: ``C=CH, O=Example, CN=gw``.
    Backslash escapes a comma."""
    parts, cur, esc = [], "", False
    for ch in text:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch in ",/" and cur.strip():
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    rdns = []
    for part in parts:
        key, sep, val = part.partition("=")
        oid = _DN_KEYS.get(key.strip().upper())
        if not sep or oid is None or not val.strip():
            raise ValueError(f"not a distinguished name: {text!r} (at {part.strip()!r})")
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, val.strip())]))
    if not rdns:
        raise ValueError(f"not a distinguished name: {text!r}")
    return x509.Name(rdns)


def format_dn(name: x509.Name) -> str:
    out = []
    for rdn in name.rdns:
        for a in rdn:
            out.append(f"{_DN_NAMES.get(a.oid, a.oid.dotted_string)}={a.value}")
    return ", ".join(out)


_NAME_CACHE: dict = {}


def _load_name(der: bytes) -> x509.Name:
    """Decode a DER-encoded Name (cryptography parses names only inside certificates)."""
    hit = _NAME_CACHE.get(der)
    if hit is None:
        hit = _parse_rdn_sequence(der)
        if len(_NAME_CACHE) < 1024:
            _NAME_CACHE[der] = hit
    return hit


def _der_len(data: bytes, off: int):
    first = data[off]
    if first < 0x80:
        return first, off + 1
    n = first & 0x7F
    if n == 0 or n > 3 or off + 1 + n > len(data):
        raise ValueError("bad DER length")
    return int.from_bytes(data[off + 1:off + 1 + n], "big"), off + 1 + n


def _der_tlv(data: bytes, off: int, end: int):
    if off + 2 > end:
        raise ValueError("truncated DER")
    tag = data[off]
    ln, voff = _der_len(data, off + 1)
    if voff + ln > end:
        raise ValueError("truncated DER")
    return tag, voff, voff + ln


def _parse_oid(b: bytes) -> str:
    if not b:
        raise ValueError("empty OID")
    first = b[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    v = 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


_STRING_TAGS = {0x0C: "utf8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


def _parse_rdn_sequence(der: bytes) -> x509.Name:
    """A small strict DER reader for Name = SEQUENCE OF SET OF AttributeTypeAndValue (RFC 5280)."""
    tag, off, end = _der_tlv(der, 0, len(der))
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER Name")
    rdns = []
    while off < end:
        stag, soff, send = _der_tlv(der, off, end)
        if stag != 0x31:
            raise ValueError("RDN is not a SET")
        attrs = []
        while soff < send:
            atag, aoff, aend = _der_tlv(der, soff, send)
            if atag != 0x30:
                raise ValueError("attribute is not a SEQUENCE")
            otag, ooff, oend = _der_tlv(der, aoff, aend)
            if otag != 0x06:
                raise ValueError("attribute type is not an OID")
            vtag, voff, vend = _der_tlv(der, oend, aend)
            enc = _STRING_TAGS.get(vtag)
            if enc is None:
                raise ValueError("unsupported attribute value type")
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(_parse_oid(der[ooff:oend])),
                                            der[voff:vend].decode(enc)))
            soff = aend
        rdns.append(x509.RelativeDistinguishedName(attrs))
        off = send
    return x509.Name(rdns)


# ---------------------------------------------------------------- signed octets, PSK (§2.15)

def signed_octets(real_message: bytes, peer_nonce: bytes, prf, sk_p: bytes, id_body: bytes) -> bytes:
    """<SignedOctets> = RealMessage | NonceData(peer) | prf(SK_p, RestOfIDPayload) (§2.15)."""
    return real_message + peer_nonce + prf(sk_p, id_body)


_PADDED: dict = {}


def psk_auth(prf, psk: bytes, octets: bytes) -> bytes:
    """§2.15: AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>). The inner value
    depends only on the PSK and the PRF, so it is computed once per pair."""
    key = (prf.prf_id, psk)
    padded = _PADDED.get(key)
    if padded is None:
        if len(_PADDED) >= 256:
            _PADDED.clear()
        padded = _PADDED[key] = prf(psk, KEY_PAD)
    return prf(padded, octets)


# ---------------------------------------------------------------- signatures (RFC 7427)

def _der_oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    body = bytes((40 * parts[0] + parts[1],))
    for p in parts[2:]:
        enc = [p & 0x7F]
        p >>= 7
        while p:
            enc.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(enc))
    return b"\x06" + bytes((len(body),)) + body


def _alg_id(oid: str, null_params: bool) -> bytes:
    inner = _der_oid(oid) + (b"\x05\x00" if null_params else b"")
    return b"\x30" + bytes((len(inner),)) + inner


# AlgorithmIdentifier DER of the schemes we sign and verify (RFC 7427 Appendix A)
SIG_SCHEMES = {
    "ecdsa-sha256": (_alg_id("1.2.840.10045.4.3.2", False), hashes.SHA256, "ec", HashAlgorithm.SHA2_256),
    "ecdsa-sha384": (_alg_id("1.2.840.10045.4.3.3", False), hashes.SHA384, "ec", HashAlgorithm.SHA2_384),
    "ecdsa-sha512": (_alg_id("1.2.840.10045.4.3.4", False), hashes.SHA512, "ec", HashAlgorithm.SHA2_512),
    "rsa-sha256": (_alg_id("1.2.840.113549.1.1.11", True), hashes.SHA256, "rsa", HashAlgorithm.SHA2_256),
    "rsa-sha384": (_alg_id("1.2.840.113549.1.1.12", True), hashes.SHA384, "rsa", HashAlgorithm.SHA2_384),
    "rsa-sha512": (_alg_id("1.2.840.113549.1.1.13", True), hashes.SHA512, "rsa", HashAlgorithm.SHA2_512),
}
_BY_ALGID = {v[0]: (k, v) for k, v in SIG_SCHEMES.items()}


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((tag, len(body))) + body


def _pss_alg_ids(hash_oid: str, salt: int) -> list[bytes]:
    """RSASSA-PSS AlgorithmIdentifiers (RFC 4055 §3.1, as RFC 7427 A.4 shows them) for one hash
    with MGF1 over the same hash and salt = hash length: with the hash's NULL parameters and
    without (RFC 4055 §2.1: both encodings are legal)."""
    out = []
    for null in (True, False):
        h = _alg_id(hash_oid, null)
        params = _tlv(0x30, _tlv(0xA0, h) + _tlv(0xA1, _alg_id_with("1.2.840.113549.1.1.8", h)) +
                      _tlv(0xA2, bytes((0x02, 1, salt))))
        out.append(_tlv(0x30, _der_oid("1.2.840.113549.1.1.10") + params))
    return out


def _alg_id_with(oid: str, params: bytes) -> bytes:
    return _tlv(0x30, _der_oid(oid) + params)


_PSS_SEND = {}      # hash name -> the AlgorithmIdentifier we send (RFC 7427 A.4, NULL parameters)


def _add_pss():
    """RSASSA-PSS (RFC 7427 A.4.1-A.4.3): verified always (peers such as strongSwan with
    ``rsa_pss = yes`` sign with it), sent with EngineSettings.rsa_pss."""
    for name, oid, h, hid in (("rsa-pss-sha256", "2.16.840.1.101.3.4.2.1", hashes.SHA256, HashAlgorithm.SHA2_256),
                              ("rsa-pss-sha384", "2.16.840.1.101.3.4.2.2", hashes.SHA384, HashAlgorithm.SHA2_384),
                              ("rsa-pss-sha512", "2.16.840.1.101.3.4.2.3", hashes.SHA512, HashAlgorithm.SHA2_512)):
        blobs = _pss_alg_ids(oid, h.digest_size)
        _PSS_SEND[h.name] = blobs[0]
        for blob in blobs:
            _BY_ALGID[blob] = (name, (blob, h, "rsa-pss", hid))


_add_pss()
OUR_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
_ECDSA_CLASSIC = {  # RFC 4754: method -> (curve name, hash, coordinate length)
    AuthMethod.ECDSA_256: ("secp256r1", hashes.SHA256, 32),
    AuthMethod.ECDSA_384: ("secp384r1", hashes.SHA384, 48),
    AuthMethod.ECDSA_521: ("secp521r1", hashes.SHA512, 66),
}


_OUR_HASHES_DATA = b"".join(struct.pack("!H", h) for h in OUR_HASHES)


def hash_algorithms_notify_data() -> bytes:
    """SIGNATURE_HASH_ALGORITHMS data (RFC 7427 §4): the hashes we accept."""
    return _OUR_HASHES_DATA


@functools.lru_cache(maxsize=64)
def parse_hash_algorithms(data: bytes) -> frozenset:
    return frozenset(struct.unpack_from("!H", data, i)[0] for i in range(0, len(data) - 1, 2))


def sign(key, octets: bytes, peer_hashes: set[int] | None, rsa_pss: bool = False) -> tuple[int, bytes]:
    """Sign the octets. With RFC 7427 (the peer sent SIGNATURE_HASH_ALGORITHMS) returns
    (DIGITAL_SIGNATURE, ASN.1 length | AlgorithmIdentifier | signature), RSA keys with RSASSA-PSS
    if ``rsa_pss`` (RFC 7427 A.4 identifiers); otherwise falls back to RFC 4754 ECDSA or RSA
    PKCS#1 v1.5 (method 1, SHA-1 as §3.8 requires)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        pref = {256: "ecdsa-sha256", 384: "ecdsa-sha384", 521: "ecdsa-sha512"}.get(size, "ecdsa-sha256")
        if peer_hashes:
            scheme = pref if SIG_SCHEMES[pref][3] in peer_hashes else next(
                (k for k, v in SIG_SCHEMES.items() if v[2] == "ec" and v[3] in peer_hashes), None)
            if scheme is None:
                raise AuthError("no common signature hash with the peer")
            algid, h, _k, _hid = SIG_SCHEMES[scheme]
            sig = key.sign(octets, ec.ECDSA(h()))
            return AuthMethod.DIGITAL_SIGNATURE, bytes((len(algid),)) + algid + sig
        for method, (curve, h, clen) in _ECDSA_CLASSIC.items():
            if key.curve.name == curve:
                r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(h())))
                return method, r.to_bytes(clen, "big") + s.to_bytes(clen, "big")
        raise AuthError("unsupported curve")
    if isinstance(key, rsa.RSAPrivateKey):
        if peer_hashes:
            scheme = next((k for k in ("rsa-sha256", "rsa-sha384", "rsa-sha512")
                           if SIG_SCHEMES[k][3] in peer_hashes), None)
            if scheme is None:
                raise AuthError("no common signature hash with the peer")
            algid, h, _k, _hid = SIG_SCHEMES[scheme]
            if rsa_pss:
                algid = _PSS_SEND[h.name]
                sig = key.sign(octets, padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size), h())
            else:
                sig = key.sign(octets, padding.PKCS1v15(), h())
            return AuthMethod.DIGITAL_SIGNATURE, bytes((len(algid),)) + algid + sig
        return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    raise AuthError("unsupported private key type")


def verify(public_key, method: int, data: bytes, octets: bytes) -> None:
    """Verify an AUTH payload made with a signature method; raises AuthError."""
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            if not data:
                raise AuthError("empty signature")
            n = data[0]
            algid, sig = data[1:1 + n], data[1 + n:]
            hit = _BY_ALGID.get(algid)
            if hit is None:
                raise AuthError("unsupported signature algorithm")
            _name, (_a, h, kind, _hid) = hit
            if kind == "ec" and isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(sig, octets, ec.ECDSA(h()))
            elif kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(sig, octets, padding.PKCS1v15(), h())
            elif kind == "rsa-pss" and isinstance(public_key, rsa.RSAPublicKey):
                pss = padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size)
                public_key.verify(sig, octets, pss, h())
            else:
                raise AuthError("signature algorithm does not fit the key")
        elif method in _ECDSA_CLASSIC:
            curve, h, clen = _ECDSA_CLASSIC[method]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve \
                    or len(data) != 2 * clen:
                raise AuthError("ECDSA signature does not fit the key")
            sig = encode_dss_signature(int.from_bytes(data[:clen], "big"), int.from_bytes(data[clen:], "big"))
            public_key.verify(sig, octets, ec.ECDSA(h()))
        elif method == AuthMethod.RSA_SIG:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise AuthError("RSA signature with a non-RSA key")
            public_key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
        else:
            raise AuthError(f"unsupported auth method {method}")
    except InvalidSignature:
        raise AuthError("signature does not verify") from None
    except (ValueError, TypeError) as e:
        raise AuthError(f"bad signature: {e}") from None


# ---------------------------------------------------------------- certificates

def load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_private_key(data: bytes):
    if data.lstrip().startswith(b"-----BEGIN"):
        return serialization.load_pem_private_key(data, None)
    return serialization.load_der_private_key(data, None)


@functools.lru_cache(maxsize=256)
def spki_sha1(cert: x509.Certificate) -> bytes:
    """CERTREQ content: SHA-1 of the CA's SubjectPublicKeyInfo (§3.7)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA1())
    h.update(spki)
    return h.finalize()


def cert_matches_identity(cert: x509.Certificate, ident: Identity) -> bool:
    """An end-entity certificate vouches for the identity in its subject DN or subjectAltName."""
    if ident.id_type == IdType.DER_ASN1_DN:
        return ident.matches(Identity.from_cert(cert))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ident.id_type == IdType.FQDN:
        want = ident.data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.DNSName))
    if ident.id_type == IdType.RFC822_ADDR:
        want = ident.data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.RFC822Name))
    if ident.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return any(ip.packed == ident.data for ip in san.get_values_for_type(x509.IPAddress))
    return False


MAX_CHAIN = 4


def verify_chain(end_entity: x509.Certificate, intermediates: list[x509.Certificate],
                 anchors: list[x509.Certificate], now: datetime.datetime | None = None) -> None:
    """Check that ``end_entity`` chains to one of ``anchors`` (via at most MAX_CHAIN intermediates
    from the peer's CERT payloads): signatures, validity periods, and the CA rules of RFC 5280:
    every issuer a CA with keyCertSign (§4.2.1.3, §4.2.1.9), no pathLenConstraint exceeded."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = end_entity
    pool = list(intermediates)
    for below in range(MAX_CHAIN + 1):           # intermediate CAs between ``cert``'s issuer and the EE
        _check_validity(cert, now)
        for ca in anchors:
            if _issued_by(cert, ca):
                _check_validity(ca, now)
                _check_path_length(ca, below)
                return
        nxt = next((c for c in pool if _issued_by(cert, c)), None)
        if nxt is None:
            raise AuthError("certificate does not chain to a trusted CA")
        _check_path_length(nxt, below)
        pool.remove(nxt)
        cert = nxt
    raise AuthError("certificate chain too long")


def _issued_by(cert, ca) -> bool:
    if cert.issuer != ca.subject or not _is_ca(ca):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _is_ca(cert) -> bool:
    """RFC 5280 §4.2.1.9 cA, and §4.2.1.3: a CA whose KeyUsage lacks keyCertSign signs no certificate."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _check_path_length(ca, below: int):
    """RFC 5280 §4.2.1.9: at most pathLenConstraint intermediate CAs may follow ``ca``."""
    limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if limit is not None and below > limit:
        raise AuthError(f"path length constraint of {format_dn(ca.subject)} exceeded ({below} > {limit})")


def _check_validity(cert, now):
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthError("certificate outside its validity period")
