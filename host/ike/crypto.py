"""Cryptographic primitives for IKEv2, all from the ``cryptography`` package.

* key exchange methods: Diffie-Hellman groups 14, 15, 16 (MODP-2048/3072/4096, RFC 3526), 19, 20,
  21 (ECP-256/384/521, RFC 5903), 31, 32 (Curve25519/448, RFC 8031) and ML-KEM-768/1024 (FIPS
  203, draft-ietf-ipsecme-ikev2-mlkem; for RFC 9370's additional key exchanges)
* PRF_HMAC_SHA2_256/384/512 (RFC 4868), PRF_HMAC_SHA1 (legacy peers) and prf+ (RFC 7296 §2.13)
* the Encrypted payload ciphers (§3.14): ENCR_AES_GCM_16 (RFC 5282), ENCR_CHACHA20_POLY1305
  (RFC 7634) and ENCR_AES_CBC with AUTH_HMAC_SHA2_256_128/384_192/512_256 (RFC 4868) or
  AUTH_HMAC_SHA1_96 (RFC 2404, legacy peers)

Nothing here logs or returns key material other than to its caller.
"""
from __future__ import annotations

import os
from secrets import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives import serialization as _ser
from cryptography.hazmat.primitives.asymmetric import dh, ec, mlkem, x448, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .constants import DhGroup, Encr, Integ, Prf


class CryptoError(Exception):
    """A peer value that fails validation (bad public key, all-zero shared secret, ...)."""


# ---------------------------------------------------------------- key exchange methods

# RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ( [2^(n-130) pi] + k ), g = 2; k = 124476 (group 14,
# §3), 1690314 (group 15, §4), 240904 (group 16, §5). tests/test_crypto_kat.py recomputes them.
MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)

MODP_3072_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF", 16)

MODP_4096_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6"
    "287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF", 16)


class KeyExchange:
    """One key exchange method (RFC 7296 §1.2, §3.4; RFC 9370 calls them all Key Exchange
    Methods). The initiator sends ``generate()``'s data and finishes with ``shared(state, peer)``;
    the responder answers with ``respond(peer) -> (its data, shared secret)``. A Diffie-Hellman
    group answers with its own public value, a KEM (ML-KEM) with a ciphertext.
    ``public_len`` / ``response_len``: the KE data each side sends."""
    group = 0
    public_len = 0
    response_len = 0

    def generate(self):
        raise NotImplementedError

    def shared(self, state, peer: bytes) -> bytes:
        raise NotImplementedError

    def respond(self, peer: bytes):
        priv, pub = self.generate()
        return pub, self.shared(priv, peer)


class _Modp(KeyExchange):
    """RFC 3526 MODP groups: the KE data is y padded to the prime's length (§3.4)."""

    def __init__(self, group: int, prime: int):
        self.group = group
        self.prime = prime
        self.public_len = self.response_len = (prime.bit_length() + 7) // 8
        self._params = None

    def generate(self):
        if self._params is None:
            self._params = dh.DHParameterNumbers(self.prime, 2).parameters()
        priv = self._params.generate_private_key()
        return priv, priv.public_key().public_numbers().y.to_bytes(self.public_len, "big")

    def shared(self, priv, peer: bytes) -> bytes:
        # 1 < y < p-1 (SP 800-56A): the peer's value must not be degenerate
        n = self.public_len
        if len(peer) != n:
            raise CryptoError(f"MODP-{8 * n} public value has the wrong length")
        y = int.from_bytes(peer, "big")
        if not 1 < y < self.prime - 1:
            raise CryptoError(f"MODP-{8 * n} public value out of range")
        pub = dh.DHPublicNumbers(y, priv.parameters().parameter_numbers()).public_key()
        return priv.exchange(pub).rjust(n, b"\0")


class _Ecp(KeyExchange):
    """RFC 5903 §7: KE data is x | y, each the curve's size; the shared secret is the x
    coordinate (§9: rather than the whole point)."""

    def __init__(self, group: int, curve, coord_len: int):
        self.group = group
        self.curve = curve
        self.public_len = self.response_len = 2 * coord_len
        self.name = f"ECP-{curve.key_size}"

    def generate(self):
        priv = ec.generate_private_key(self.curve)
        return priv, priv.public_key().public_bytes(
            _ser.Encoding.X962, _ser.PublicFormat.UncompressedPoint)[1:]

    def shared(self, priv, peer: bytes) -> bytes:
        if len(peer) != self.public_len:
            raise CryptoError(f"{self.name} public value has the wrong length")
        try:
            pub = ec.EllipticCurvePublicKey.from_encoded_point(self.curve, b"\x04" + peer)
            return priv.exchange(ec.ECDH(), pub)
        except ValueError as e:           # not on the curve
            raise CryptoError(f"{self.name} point is invalid") from e


class _Montgomery(KeyExchange):
    """RFC 8031: Curve25519 (32-byte values) and Curve448 (56); an all-zero result must be
    rejected (§2.3)."""

    def __init__(self, group: int, module, size: int, name: str):
        self.group = group
        self.module = module
        self.public_len = self.response_len = size
        self.name = name
        self._priv = getattr(module, name.replace("Curve", "X") + "PrivateKey")
        self._pub = getattr(module, name.replace("Curve", "X") + "PublicKey")

    def generate(self):
        priv = self._priv.generate()
        return priv, priv.public_key().public_bytes_raw()

    def shared(self, priv, peer: bytes) -> bytes:
        if len(peer) != self.public_len:
            raise CryptoError(f"{self.name} public value has the wrong length")
        try:
            out = priv.exchange(self._pub.from_public_bytes(peer))
        except ValueError as e:
            raise CryptoError(f"{self.name} exchange failed") from e
        if out == bytes(self.public_len):
            raise CryptoError(f"{self.name} shared secret is all zero")
        return out


class _MlKem(KeyExchange):
    """ML-KEM (FIPS 203) as a key exchange method (draft-ietf-ipsecme-ikev2-mlkem §2): the
    initiator sends its encapsulation key, the responder encapsulates to it and sends the
    ciphertext; the 32-byte shared secret is both ends' key exchange result. The responder
    checks the encapsulation key (FIPS 203 §7.2, done by ``from_public_bytes``); a ciphertext of
    the right length always decapsulates (implicit rejection: a forged one gives a secret the
    peer does not have, and the next message fails its ICV)."""

    def __init__(self, group: int, priv_cls, pub_cls, ek_len: int, ct_len: int, name: str):
        self.group = group
        self._priv, self._pub = priv_cls, pub_cls
        self.public_len, self.response_len = ek_len, ct_len
        self.name = name

    def generate(self):
        priv = self._priv.generate()
        return priv, priv.public_key().public_bytes_raw()

    def shared(self, priv, peer: bytes) -> bytes:
        if len(peer) != self.response_len:
            raise CryptoError(f"{self.name} ciphertext has the wrong length")
        try:
            return priv.decapsulate(peer)
        except ValueError as e:
            raise CryptoError(f"{self.name} decapsulation failed") from e

    def respond(self, peer: bytes):
        if len(peer) != self.public_len:
            raise CryptoError(f"{self.name} encapsulation key has the wrong length")
        try:
            secret, ct = self._pub.from_public_bytes(peer).encapsulate()
        except ValueError as e:           # not a valid encapsulation key
            raise CryptoError(f"{self.name} encapsulation key is invalid") from e
        return ct, secret


DH_GROUPS = {g.group: g for g in (
    _Modp(DhGroup.MODP_2048, MODP_2048_P), _Modp(DhGroup.MODP_3072, MODP_3072_P),
    _Modp(DhGroup.MODP_4096, MODP_4096_P),
    _Ecp(DhGroup.ECP_256, ec.SECP256R1(), 32), _Ecp(DhGroup.ECP_384, ec.SECP384R1(), 48),
    _Ecp(DhGroup.ECP_521, ec.SECP521R1(), 66),
    _Montgomery(DhGroup.CURVE25519, x25519, 32, "Curve25519"),
    _Montgomery(DhGroup.CURVE448, x448, 56, "Curve448"),
    _MlKem(DhGroup.MLKEM_768, mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088, "ML-KEM-768"),
    _MlKem(DhGroup.MLKEM_1024, mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568, "ML-KEM-1024"),
)}
KEMS = frozenset((DhGroup.MLKEM_768, DhGroup.MLKEM_1024))


def dh_group(group: int) -> KeyExchange:
    """The key exchange method with transform id ``group`` (a DH group or a KEM)."""
    try:
        return DH_GROUPS[group]
    except KeyError:
        raise CryptoError(f"unsupported key exchange method {group}") from None


# ---------------------------------------------------------------- PRF and prf+

_HASHES = {
    Prf.HMAC_SHA1: hashes.SHA1, Prf.HMAC_SHA2_256: hashes.SHA256,
    Prf.HMAC_SHA2_384: hashes.SHA384, Prf.HMAC_SHA2_512: hashes.SHA512,
}


class PrfAlg:
    """An HMAC-based PRF (RFC 4868 §2.1). ``key_len`` is the preferred key size = output size."""
    __slots__ = ("prf_id", "hash", "out_len", "key_len")

    def __init__(self, prf_id: int):
        try:
            self.hash = _HASHES[prf_id]()
        except KeyError:
            raise CryptoError(f"unsupported PRF {prf_id}") from None
        self.prf_id = prf_id
        self.out_len = self.key_len = self.hash.digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self.hash)
        h.update(data)
        return h.finalize()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (§2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks."""
        if length > 255 * self.out_len:
            raise CryptoError("prf+ cannot produce that much keying material")
        keyed = hmac.HMAC(key, self.hash)           # the key schedule once, then a copy per block
        out, t, n = [], b"", 1
        got = 0
        while got < length:
            h = keyed.copy()
            h.update(t + seed + bytes((n,)))
            t = h.finalize()
            out.append(t)
            got += len(t)
            n += 1
        return b"".join(out)[:length]


_PRF_CACHE: dict[int, PrfAlg] = {}


def prf_alg(prf_id: int) -> PrfAlg:
    p = _PRF_CACHE.get(prf_id)
    if p is None:
        p = _PRF_CACHE[prf_id] = PrfAlg(prf_id)
    return p


# ---------------------------------------------------------------- transform sizes

# (key bytes, ICV/truncation bytes) of integrity algorithms (RFC 4868 §2.2)
INTEG_INFO = {
    Integ.HMAC_SHA2_256_128: (32, 16, hashes.SHA256),
    Integ.HMAC_SHA2_384_192: (48, 24, hashes.SHA384),
    Integ.HMAC_SHA2_512_256: (64, 32, hashes.SHA512),
    Integ.HMAC_SHA1_96: (20, 12, hashes.SHA1),
}

AEAD_SALT = {Encr.AES_GCM_16: 4, Encr.AES_GCM_12: 4, Encr.AES_GCM_8: 4, Encr.CHACHA20_POLY1305: 4}


def is_aead(encr: int) -> bool:
    return encr in AEAD_SALT


CHACHA_KEY_BITS = 256       # RFC 7634 §2: the only key size; its transform has no Key Length


def encr_key_bytes(encr: int, key_bits: int) -> int:
    """Bytes of keying material an encryption transform takes: key + salt for AEADs
    (RFC 5282 §7.1, RFC 7634 §2: 4 bytes of salt follow the key)."""
    return key_bits // 8 + AEAD_SALT.get(encr, 0)


def integ_key_bytes(integ: int) -> int:
    if integ == Integ.NONE:
        return 0
    try:
        return INTEG_INFO[integ][0]
    except KeyError:
        raise CryptoError(f"unsupported integrity algorithm {integ}") from None


# ---------------------------------------------------------------- Encrypted payload ciphers (§3.14)

class SkCipher:
    """Protects the Encrypted payload in one direction pair.

    ``seal(aad, plain)`` returns IV | ciphertext | ICV for a plaintext that already carries its
    padding, and ``open_(msg, iv_off)`` verifies and decrypts an SK payload whose IV starts at
    ``iv_off`` and which runs to the end of ``msg``; it returns the plaintext (payloads | padding |
    pad length) or None if the ICV does not verify.
    """
    iv_len = 0
    icv_len = 0
    block = 1

    def padded_len(self, inner_len: int) -> int:
        raise NotImplementedError


class AeadSk(SkCipher):
    """An AEAD for IKE with an 8-byte explicit IV, nonce = salt | IV, a 16-byte ICV and AAD = IKE
    header .. SK payload header: ENCR_AES_GCM_16 (RFC 5282 §3) and ENCR_CHACHA20_POLY1305
    (RFC 7634 §3-4). Neither needs padding: one Pad Length octet."""
    iv_len = 8
    icv_len = 16
    aead = AESGCM

    def __init__(self, key_out: bytes, key_in: bytes):
        self._out, self._salt_out = self.aead(key_out[:-4]), key_out[-4:]
        self._in, self._salt_in = self.aead(key_in[:-4]), key_in[-4:]
        self._counter = int.from_bytes(os.urandom(4), "big") << 32

    def padded_len(self, inner_len: int) -> int:
        return inner_len + 1        # no padding needed, one Pad Length octet

    def pad(self, inner: bytes) -> bytes:
        return inner + b"\0"

    def seal(self, aad: bytes, plain: bytes) -> bytes:
        # §3.14 / RFC 5282 §3.1, RFC 7634 §2: the IV must never repeat for a key; a counter
        # guarantees that.
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        iv = self._counter.to_bytes(8, "big")
        return iv + self._out.encrypt(self._salt_out + iv, plain, aad)

    def open_(self, msg: bytes, iv_off: int):
        if len(msg) - iv_off < self.iv_len + self.icv_len + 1:
            return None
        iv = msg[iv_off:iv_off + 8]
        try:
            return self._in.decrypt(self._salt_in + iv, msg[iv_off + 8:], msg[:iv_off])
        except InvalidTag:
            return None


class AesGcmSk(AeadSk):
    """ENCR_AES_GCM_16 (RFC 5282)."""
    aead = AESGCM


class ChaChaPolySk(AeadSk):
    """ENCR_CHACHA20_POLY1305 (RFC 7634 §4): a 32-byte key and a 4-byte salt each way."""
    aead = ChaCha20Poly1305


class AesCbcHmacSk(SkCipher):
    """ENCR_AES_CBC (RFC 3602) with an HMAC integrity transform (RFC 4868), ICV over the whole
    message up to the ICV itself. The 16-byte IV must be unpredictable (RFC 7296 §3.14): it is a
    message counter encrypted under the SA's own key (NIST SP 800-38A, Appendix C), so it never
    repeats and depends on no RNG's quality."""
    iv_len = 16
    block = 16

    def __init__(self, ekey_out: bytes, ekey_in: bytes, integ: int, akey_out: bytes, akey_in: bytes):
        self._ek_out, self._ek_in = algorithms.AES(ekey_out), algorithms.AES(ekey_in)
        self._ivs = Cipher(self._ek_out, modes.ECB()).encryptor()
        self._count = 0
        _kl, self.icv_len, h = INTEG_INFO[integ]
        self._hash = h()
        self._ak_out, self._ak_in = akey_out, akey_in

    def padded_len(self, inner_len: int) -> int:
        return (inner_len + 1 + 15) // 16 * 16

    def pad(self, inner: bytes) -> bytes:
        padn = self.padded_len(len(inner)) - len(inner) - 1
        return inner + bytes(padn) + bytes((padn,))

    def seal(self, aad: bytes, plain: bytes) -> bytes:
        self._count += 1
        iv = self._ivs.update(self._count.to_bytes(16, "big"))
        enc = Cipher(self._ek_out, modes.CBC(iv)).encryptor()
        body = iv + enc.update(plain) + enc.finalize()
        h = hmac.HMAC(self._ak_out, self._hash)
        h.update(aad)
        h.update(body)
        return body + h.finalize()[:self.icv_len]

    def open_(self, msg: bytes, iv_off: int):
        ct_len = len(msg) - iv_off - 16 - self.icv_len
        if ct_len < 16 or ct_len % 16:
            return None
        h = hmac.HMAC(self._ak_in, self._hash)
        h.update(msg[:-self.icv_len])
        want = h.finalize()[:self.icv_len]
        if not compare_digest(want, msg[-self.icv_len:]):
            return None
        iv = msg[iv_off:iv_off + 16]
        dec = Cipher(self._ek_in, modes.CBC(iv)).decryptor()
        return dec.update(msg[iv_off + 16:len(msg) - self.icv_len]) + dec.finalize()


def make_sk_cipher(encr: int, integ: int, ek_out, ek_in, ak_out, ak_in) -> SkCipher:
    if encr == Encr.AES_GCM_16:
        return AesGcmSk(ek_out, ek_in)
    if encr == Encr.CHACHA20_POLY1305:
        return ChaChaPolySk(ek_out, ek_in)
    if encr == Encr.AES_CBC and integ in INTEG_INFO:
        return AesCbcHmacSk(ek_out, ek_in, integ, ak_out, ak_in)
    raise CryptoError(f"unsupported SK transform {encr}/{integ}")


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def nat_hash(spi_i: bytes, spi_r: bytes, ip_packed: bytes, port: int) -> bytes:
    """NAT_DETECTION_*_IP data (§2.23): SHA-1(SPIi | SPIr | IP | Port)."""
    h = hashes.Hash(hashes.SHA1())
    h.update(spi_i + spi_r + ip_packed + port.to_bytes(2, "big"))
    return h.finalize()
