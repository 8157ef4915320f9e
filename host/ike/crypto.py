"""Cryptographic primitives for IKEv2, all from the ``cryptography`` package.

* Diffie-Hellman groups 14 (MODP-2048, RFC 3526), 19 (ECP-256, RFC 5903), 31 (Curve25519, RFC 8031)
* PRF_HMAC_SHA2_256/384/512 (RFC 4868) and prf+ (RFC 7296 §2.13)
* the Encrypted payload ciphers (§3.14): ENCR_AES_GCM_16 (RFC 5282) and ENCR_AES_CBC with
  AUTH_HMAC_SHA2_256_128 (RFC 4868)

Nothing here logs or returns key material other than to its caller.
"""
from __future__ import annotations

import os
from secrets import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives import serialization as _ser
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .constants import DhGroup, Encr, Integ, Prf


class CryptoError(Exception):
    """A peer value that fails validation (bad public key, all-zero shared secret, ...)."""


# ---------------------------------------------------------------- Diffie-Hellman

# RFC 3526 §3, group 14: p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ), g = 2.
# tests/test_crypto_kat.py recomputes it from that formula.
MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


class _Modp2048:
    group = DhGroup.MODP_2048
    public_len = 256
    _params = None

    def generate(self):
        if _Modp2048._params is None:
            _Modp2048._params = dh.DHParameterNumbers(MODP_2048_P, 2).parameters()
        priv = self._params.generate_private_key()
        return priv, priv.public_key().public_numbers().y.to_bytes(256, "big")

    def shared(self, priv, peer: bytes) -> bytes:
        # §3.4 / RFC 3526: the value is padded to the prime's length; 1 < y < p-1 (SP 800-56A).
        if len(peer) != 256:
            raise CryptoError("MODP-2048 public value has the wrong length")
        y = int.from_bytes(peer, "big")
        if not 1 < y < MODP_2048_P - 1:
            raise CryptoError("MODP-2048 public value out of range")
        pub = dh.DHPublicNumbers(y, priv.parameters().parameter_numbers()).public_key()
        return priv.exchange(pub).rjust(256, b"\0")


class _Ecp256:
    """RFC 5903 §7: KE data is x | y, the shared secret is the x coordinate."""
    group = DhGroup.ECP_256
    public_len = 64

    def generate(self):
        priv = ec.generate_private_key(ec.SECP256R1())
        return priv, priv.public_key().public_bytes(
            _ser.Encoding.X962, _ser.PublicFormat.UncompressedPoint)[1:]

    def shared(self, priv, peer: bytes) -> bytes:
        if len(peer) != 64:
            raise CryptoError("ECP-256 public value has the wrong length")
        try:
            pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
            return priv.exchange(ec.ECDH(), pub)
        except ValueError as e:           # not on the curve
            raise CryptoError("ECP-256 point is invalid") from e


class _Curve25519:
    """RFC 8031: 32-byte public values; an all-zero result must be rejected."""
    group = DhGroup.CURVE25519
    public_len = 32

    def generate(self):
        priv = x25519.X25519PrivateKey.generate()
        return priv, priv.public_key().public_bytes_raw()

    def shared(self, priv, peer: bytes) -> bytes:
        if len(peer) != 32:
            raise CryptoError("Curve25519 public value has the wrong length")
        try:
            out = priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError as e:
            raise CryptoError("Curve25519 exchange failed") from e
        if out == bytes(32):
            raise CryptoError("Curve25519 shared secret is all zero")
        return out


DH_GROUPS = {g.group: g for g in (_Modp2048(), _Ecp256(), _Curve25519())}


def dh_group(group: int):
    try:
        return DH_GROUPS[group]
    except KeyError:
        raise CryptoError(f"unsupported DH group {group}") from None


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


def encr_key_bytes(encr: int, key_bits: int) -> int:
    """Bytes of keying material an encryption transform takes: key + salt for AEADs
    (RFC 5282 §7.1: 4 bytes of salt follow the key)."""
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


class AesGcmSk(SkCipher):
    """ENCR_AES_GCM_16 for IKE (RFC 5282 §3): 8-byte explicit IV, nonce = salt | IV, 16-byte ICV,
    AAD = IKE header .. SK payload header."""
    iv_len = 8
    icv_len = 16

    def __init__(self, key_out: bytes, key_in: bytes):
        self._out, self._salt_out = AESGCM(key_out[:-4]), key_out[-4:]
        self._in, self._salt_in = AESGCM(key_in[:-4]), key_in[-4:]
        self._counter = int.from_bytes(os.urandom(4), "big") << 32

    def padded_len(self, inner_len: int) -> int:
        return inner_len + 1        # no padding needed, one Pad Length octet

    def pad(self, inner: bytes) -> bytes:
        return inner + b"\0"

    def seal(self, aad: bytes, plain: bytes) -> bytes:
        # §3.14 / RFC 5282 §3.1: the IV must never repeat for a key; a counter guarantees that.
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
